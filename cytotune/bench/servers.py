"""Throwaway tracking servers for benchmarks and tests: a PostgreSQL (the `pgserver` wheel) and an `mlflow
server` on it (or on any backend store), on 127.0.0.1, stopped (and the database folder deleted) at the end;
the server can be restarted in place."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from cytotune.errors import CytotuneError

MLFLOW = Path(sys.executable).with_name("mlflow")
WORKERS = 4  # what `mlflow server` starts by default


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new PostgreSQL server (pgserver, Unix socket) for the block; the SQLAlchemy URI of its database."""
    try:
        import pgserver
    except ImportError as err:
        raise CytotuneError(
            "bench scale: the pgserver package is not installed (dev extra); expected `pip install pgserver` "
            "or --tracking-uri of an MLflow server"
        ) from err
    folder = tempfile.mkdtemp(prefix="cytotune-bench-pg-")
    server = pgserver.get_server(folder, cleanup_mode="delete")
    try:
        server.psql("CREATE DATABASE mlflow;")
        info = server.get_postmaster_info()
        yield f"postgresql+psycopg2://postgres@/mlflow?host={info.socket_dir}&port={info.port}"
    finally:
        server.cleanup()


class MlflowServer:
    """An `mlflow server` subprocess on 127.0.0.1 over `backend` (its own process group), restartable on its
    port with the same store."""

    def __init__(self, backend: str, folder: Path, workers: int = WORKERS):
        self.backend = backend
        self.folder = folder
        self.workers = workers
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / "mlflow-server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> str:
        """Start the server and wait until it answers /health; its URI."""
        self.launch()
        return self.wait(timeout)

    def launch(self) -> None:
        """Start the server process without waiting for it (`wait` does): servers start side by side."""
        command = [
            str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--backend-store-uri", self.backend,
            "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,
            )

    def wait(self, timeout: float = 180.0) -> str:
        """Block until the launched server answers /health; its URI (CytotuneError with the log's tail when
        it exits or does not answer in time: it is stopped then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CytotuneError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return self.uri
            time.sleep(0.3)
        self.stop()
        raise CytotuneError(f"mlflow server not up after {timeout:g} s: {self.log.read_text()[-2000:]}")

    def restart(self, down_s: float = 5.0) -> None:
        """Stop the server, leave it down `down_s` seconds, start it again on the same port and store."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        """Stop the server and its workers (SIGTERM, then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


@contextlib.contextmanager
def tracking_server(folder: Path, workers: int = WORKERS) -> Iterator[MlflowServer]:
    """A throwaway `mlflow server` on a throwaway PostgreSQL, started for the block and stopped after it."""
    with postgres_database() as backend:
        server = MlflowServer(backend, folder, workers)
        server.start()
        try:
            yield server
        finally:
            server.stop()
