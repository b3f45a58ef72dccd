"""The PostgreSQL the tracking-server tests use: the machine's own on 127.0.0.1:5432 where it answers (trust
auth, user postgres), else a throwaway server from the `pgserver` wheel (dev extra) on a Unix socket, started
once per test process and deleted at its exit. Never a skip: a machine without PostgreSQL still runs them."""

from __future__ import annotations

import contextlib
import functools
import socket
import tempfile

LOCAL = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


@functools.cache
def connection_params() -> dict:
    """psycopg2.connect keyword arguments (without dbname) of the PostgreSQL to use."""
    if _answers(LOCAL["host"], LOCAL["port"]):
        return dict(LOCAL)
    import pgserver

    server = pgserver.get_server(tempfile.mkdtemp(prefix="cytotune-pg-"), cleanup_mode="delete")
    info = server.get_postmaster_info()
    return {"host": str(info.socket_dir), "port": int(info.port), "user": "postgres"}


def sqlalchemy_uri(dbname: str) -> str:
    """The SQLAlchemy URI (psycopg2 driver) of a database on that server."""
    params = connection_params()
    if params["host"].startswith("/"):
        return f"postgresql+psycopg2://{params['user']}@/{dbname}?host={params['host']}&port={params['port']}"
    return f"postgresql+psycopg2://{params['user']}@{params['host']}:{params['port']}/{dbname}"


def describe() -> str:
    """Where the server is, for error messages."""
    params = connection_params()
    return f"{params['host']}:{params['port']} (user {params['user']}, trust auth)"
