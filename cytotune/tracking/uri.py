"""Where runs are tracked: one rule (flag, environment, YAML, ./mlflow.db), checked before anything starts."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from cytotune.errors import CytotuneError

CHECK_TIMEOUT_S = 5.0
TRACKING_ENV = "MLFLOW_TRACKING_URI"


def default_tracking_uri(directory: Path | None = None) -> str:
    """The embedded default: an SQLite file mlflow.db in the working directory (or `directory`)."""
    return f"sqlite:///{(directory or Path.cwd()).resolve() / 'mlflow.db'}"


@dataclass(frozen=True)
class TrackingChoice:
    """The tracking URI a command uses and where it came from."""

    uri: str
    source: str

    def line(self) -> str:
        """How commands announce it at start (on stderr)."""
        return f"MLflow tracking: {self.uri} (from {self.source})"


def choose_tracking_uri(given: str | None = None, study: str | None = None) -> TrackingChoice:
    """The one rule of every command, the notebook and infra: `--tracking-uri` (`given`), else
    $MLFLOW_TRACKING_URI, else the study YAML's `tracking_uri`, else ./mlflow.db."""
    env = os.environ.get(TRACKING_ENV)
    for uri, source in ((given, "--tracking-uri"), (env, f"${TRACKING_ENV}"), (study, "the study YAML")):
        if uri:
            return TrackingChoice(uri, source)
    return TrackingChoice(default_tracking_uri(), "the default ./mlflow.db")


def resolve_tracking_uri(uri: str | None) -> str:
    """The given tracking URI, else $MLFLOW_TRACKING_URI, else the embedded default."""
    return choose_tracking_uri(uri).uri


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where an experiment's artifacts go: beside an SQLite file (DB_FOLDER/mlruns/EXPERIMENT), else the
    server's or store's default (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
    return (folder / "mlruns" / experiment).as_uri()


def check_tracking(uri: str, must_exist: bool = False) -> None:
    """Raise CytotuneError (one line) when runs cannot be tracked at `uri`: server down, bad scheme or path;
    with `must_exist` (for reading), also when an SQLite file is not there yet."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri, must_exist)
    elif scheme in ("", "file"):
        raise CytotuneError(
            f"tracking URI {uri}: MLflow's file store is not supported; expected sqlite:///PATH.db or http://HOST:PORT"
        )
    elif not (scheme.startswith("postgresql") or scheme.startswith("mysql") or scheme.startswith("mssql")):
        raise CytotuneError(
            f"tracking URI {uri}: unknown scheme {scheme!r}; expected http://HOST:PORT, sqlite:///PATH.db "
            "or a database URL"
        )


def _credentials_header() -> dict[str, str]:
    """The Authorization header MLflow's client would send, from its own environment variables."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check_server(uri: str) -> None:
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url, headers=_credentials_header())
    try:
        with urllib.request.urlopen(request, timeout=CHECK_TIMEOUT_S) as response:
            json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise CytotuneError(
                f"MLflow tracking server {uri} refused the credentials (HTTP {err.code}); expected "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) it accepts"
            ) from err
        raise CytotuneError(
            f"MLflow tracking server {uri} answered HTTP {err.code}; expected an `mlflow server` there"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CytotuneError(
            f"MLflow tracking server {uri} is unreachable ({reason}); expected a running `mlflow server`"
        ) from err
    except ValueError as err:
        raise CytotuneError(
            f"{uri} did not answer like an MLflow tracking server; expected an `mlflow server` there"
        ) from err


def _check_sqlite(uri: str, must_exist: bool) -> None:
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.parent.is_dir():
        raise CytotuneError(
            f"tracking URI {uri}: folder {path.parent} does not exist; expected an existing folder"
        )
    if must_exist and not path.is_file():
        raise CytotuneError(
            f"tracking URI {uri}: no such file; expected the MLflow database of a study (run `cytotune "
            "run` in this folder or pass --tracking-uri)"
        )
