"""The outbox table's DDL, printed by ``shipcast relay sql``: the names the
relay and ``shipcast.client`` both rely on, for PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

import re

from shipcast.exceptions import ConfigError

DIALECTS = ("postgresql", "mysql")
#: A table name the DDL and the relay can use unquoted on both databases
#: (PostgreSQL folds to lower case: a name with capitals would need quotes everywhere).
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")


def checked_table(name: str, field: str = "SHIPCAST_RELAY_TABLE") -> str:
    """``name`` if it can name the outbox table.

    :raises ConfigError: naming ``field``.
    """
    if not TABLE_NAME.match(name):
        raise ConfigError(f"{field}: {name!r} is not a table name this relay uses "
                          "(lower-case letters, digits and _, not starting with a digit, at most 51)")
    return name


def dialect_of(url: str) -> str:
    """``postgresql`` or ``mysql``, from a SQLAlchemy URL (``mariadb`` is MySQL here).

    :raises ConfigError: another database, naming ``SHIPCAST_RELAY_DATABASE_URL``.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme in ("mysql", "mariadb"):
        return "mysql"
    raise ConfigError(f"SHIPCAST_RELAY_DATABASE_URL: {scheme!r} is not a database the relay reads "
                      "(postgresql+asyncpg://… or mysql+aiomysql://…)")


def outbox_ddl(dialect: str, table: str = "shipcast_outbox") -> str:
    """The statements that make the outbox ``table``, ``;``-terminated.

    PostgreSQL's statement-level trigger notifies the channel named after the
    table once per inserting statement, so the relay wakes within
    milliseconds of the OMS's commit (NOTIFY is delivered at commit, never
    for a rolled-back insert).
    """
    table = checked_table(table, "--table")
    if dialect == "postgresql":
        return f"""CREATE TABLE {table} (
    id BIGSERIAL PRIMARY KEY,
    event_id VARCHAR(100) NOT NULL,
    partner_id VARCHAR(64) NOT NULL,
    order_id VARCHAR(100) NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    failed_at TIMESTAMPTZ NULL,
    error TEXT NULL
);
CREATE INDEX {table}_pending ON {table} (id) WHERE failed_at IS NULL;
CREATE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{table}', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER {table}_notify AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
"""
    if dialect == "mysql":
        return f"""CREATE TABLE {table} (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id VARCHAR(100) NOT NULL,
    partner_id VARCHAR(64) NOT NULL,
    order_id VARCHAR(100) NOT NULL,
    payload LONGTEXT NOT NULL,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    failed_at TIMESTAMP(6) NULL,
    error TEXT NULL,
    KEY {table}_pending (failed_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
"""
    raise ConfigError(f"--dialect: {dialect!r} is not one of {', '.join(DIALECTS)}")


def statements(ddl: str) -> list[str]:
    """The DDL's statements one by one (a driver runs one at a time); the
    PostgreSQL function's ``$$`` body is kept whole."""
    found: list[str] = []
    current: list[str] = []
    quoted = False
    for line in ddl.splitlines():
        quoted ^= line.count("$$") % 2 == 1
        current.append(line)
        if not quoted and line.rstrip().endswith(";"):
            found.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    return [statement for statement in found if statement.strip()]
