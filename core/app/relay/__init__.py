"""The outbox relay (``shipcast relay``): publishes the events an OMS wrote
into an outbox table of its own database, in the same transaction as the
order's change, through ingest's validation and publisher; a row leaves the
outbox only once RabbitMQ confirmed it. See docs/relay.md."""
