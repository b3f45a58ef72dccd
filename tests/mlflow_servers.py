"""Databases on the test PostgreSQL for real `mlflow server` processes (cytotune.bench.servers.MlflowServer),
made and dropped by the tests."""

from __future__ import annotations

import contextlib
import uuid

import postgres


def _postgres(dbname: str = "postgres"):
    import psycopg2

    connection = psycopg2.connect(dbname=dbname, **postgres.connection_params())
    connection.autocommit = True
    return connection


def create_database() -> str:
    """A new, uniquely named database on the test PostgreSQL (see postgres.py); its name."""
    name = f"cytotune_test_{uuid.uuid4().hex[:12]}"
    with contextlib.closing(_postgres()) as connection, connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    """Drop a database made by create_database (even with connections left open)."""
    with contextlib.closing(_postgres()) as connection, connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_uri(name: str) -> str:
    """The SQLAlchemy URI of a database on the test PostgreSQL."""
    return postgres.sqlalchemy_uri(name)
