"""The application: the services a process shares, the HTTP API, the command
line and the runtime that starts workers and servers."""
