# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SHIPCAST_CONFIG ?= deploy/partners.example.yaml

.PHONY: run test test-fast services tools install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# A real (not editable) install: the suite tests what `pip install .` gives.
install: $(BIN)/python
	rm -rf build  # setuptools would pack a module since removed from the tree
	$(BIN)/pip install -q '.[test]'

services:
	deploy/services.sh

# Runtimes the tests use besides Python (the partner guide's programs).
tools:
	deploy/test-tools.sh

# Development mode (SHIPCAST_DEVELOPMENT=1): `shipcast run` prints an operator's
# sign-in link, serves the demo partner's webhook receiver, and keeps SMS and
# email in the development outbox while no Twilio or SMTP settings are given.
run: services install
	@test -n "$$SHIPCAST_API_TOKEN" || echo "SHIPCAST_API_TOKEN not set: using the development token 'dev-token'"
	SHIPCAST_DEVELOPMENT=$${SHIPCAST_DEVELOPMENT:-1} SHIPCAST_API_TOKEN=$${SHIPCAST_API_TOKEN:-dev-token} $(BIN)/shipcast run

# The suite, with the fault-injection scenarios of tests/reliability/, in
# TEST_PROCESSES processes: most tests wait on sockets, not on the CPU.
TEST_PROCESSES ?= 4
test: services tools install
	$(BIN)/mypy -p shipcast
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist worksteal

# The inner loop: the tests that need no RabbitMQ or PostgreSQL, in seconds.
test-fast: install
	$(BIN)/pytest -m fast -q

clean:
	rm -rf $(VENV) build *.egg-info shipcast.db*

# Benchmarks against the floor and Celery (not part of `make test`); QUICK=1 for small counts.
bench: services $(BIN)/python
	$(BIN)/pip install -q '.[test,bench]'
	$(BIN)/python -m tests.benchmarks.run $(if $(QUICK),--quick,)
