"""Real `mlflow server` processes for tests (SQLite or PostgreSQL backend store), stopped even on failure."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import postgres

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An `mlflow server` subprocess on 127.0.0.1 (its own process group, so its workers stop with it)."""

    def __init__(self, backend: str, folder: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"server-{self.port}.log"
        command = [
            str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", backend, "--artifacts-destination", str(folder / "artifacts"),
        ]  # fmt: skip
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True
            )

    def wait(self, timeout: float = 150.0) -> str:
        """Block until the server answers /health; its URI."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self.uri
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server not up after {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the server and its workers (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


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
