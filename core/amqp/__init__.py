"""The broker: connection, publishing, topology, the header protocol, the
management API, queue migration and the parking lot."""
