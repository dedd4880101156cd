#!/usr/bin/env bash
# Make sure the services shipcast and its tests need are up on this machine:
# RabbitMQ with its management and Prometheus plugins, PostgreSQL, and
# MariaDB where it is installed (an OMS's database, for the outbox tests).
# Safe to run again: it starts only what is down.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "$what did not come up in ${seconds}s"; return 1
}

if ! command -v rabbitmq-server >/dev/null; then
  log "installing RabbitMQ"; apt-get update -qq && apt-get install -y -qq rabbitmq-server >/dev/null
fi
if ! rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
  log "starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_for 60 "RabbitMQ" rabbitmq-diagnostics -q check_running
fi
enabled=$(rabbitmq-plugins list -e -m 2>/dev/null || true)
if ! grep -qx rabbitmq_management <<<"$enabled" || ! grep -qx rabbitmq_prometheus <<<"$enabled"; then
  log "enabling the management and Prometheus plugins"
  rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus >/dev/null
fi
wait_for 60 "the RabbitMQ management API" curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview

if command -v pg_ctlcluster >/dev/null; then
  if ! pg_isready -h 127.0.0.1 -q; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
    wait_for 60 "PostgreSQL" pg_isready -h 127.0.0.1 -q
  fi
  # The tests create their own databases from the `test` database.
  if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
    log "creating the PostgreSQL database 'test'"
    su postgres -c "createdb test" 2>/dev/null || psql -h 127.0.0.1 -U postgres -c 'create database test' >/dev/null
  fi
else
  log "PostgreSQL is not installed: the store runs on SQLite; PostgreSQL tests need it"
fi
if command -v mariadb-admin >/dev/null; then
  if ! mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
    log "starting MariaDB"
    service mariadb start >/dev/null 2>&1 || true
    wait_for 60 "MariaDB" mariadb-admin -h 127.0.0.1 -u root ping
  fi
  mariadb -h 127.0.0.1 -u root -e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null
else
  log "MariaDB is not installed: the outbox tests on MariaDB need it"
fi
log "RabbitMQ and PostgreSQL are up"
