"""Test harness: a real Ray cluster of separate processes on 127.0.0.1 with token authentication, and an
MLflow tracking server (infra/mlflow/start_server.sh) on a throw-away PostgreSQL database.

Every process started here carries a unique marker in its environment; `stop()` ends the process groups it
started and then any process still carrying the marker (Ray's workers and agents), and nothing else. It never
runs `ray stop`, which would end every Ray process on the machine, other tests' included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import postgres
import psutil

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_SERVER = REPO / "infra" / "mlflow" / "start_server.sh"
MARK = "CYTOTUNE_TEST_PROCESS_MARK"
HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports free on 127.0.0.1 right now."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(closing(socket.socket())) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def http_status(url: str, token: str | None = None, timeout: float = 5.0) -> int:
    """HTTP status of a GET (0 when nothing answers), with a bearer token when given."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return 0


def http_json(url: str, token: str | None = None, timeout: float = 10.0) -> dict:
    """JSON body of a GET, with a bearer token when given."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_until(check, timeout: float, what: str, interval: float = 0.5, logs: list[Path] = ()):
    """Poll `check()` until it returns something truthy; fail with `what` and the logs' tails on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    tails = "\n".join(f"--- {path}\n{tail(path)}" for path in logs)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s\n{tails}")


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file (empty when missing)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Processes:
    """Processes started for one test, each leading its own process group, all tagged with one marker."""

    root: Path
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: list[subprocess.Popen] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of a started process: this venv first on PATH, the marker, no inherited Ray address."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "MLFLOW_"))
        }
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONUNBUFFERED="1",
            **{MARK: self.mark},
        )
        env.update(extra)
        return env

    def start(self, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        """Start `args` in a new session (its own process group), output to `log`."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True
            )
        self.started.append(proc)
        return proc

    def marked(self) -> list[psutil.Process]:
        """Live processes carrying this run's marker."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get(MARK) == self.mark:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def stop(self, grace: float = 10.0) -> list[int]:
        """End every started process group, then any marked process left; return the pids killed so."""
        for proc in reversed(self.started):
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        left = self.marked()
        for proc in left:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(left, timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        return [proc.pid for proc in left]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class RayCluster:
    """A head and worker nodes started with `ray start --block`, bound to 127.0.0.1, token auth on."""

    procs: Processes
    token_path: Path
    gcs_port: int = 0
    dashboard_port: int = 0
    node_env: dict[str, str] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)
    node_count: int = 0

    @property
    def token(self) -> str:
        """The cluster's token."""
        return self.token_path.read_text().strip()

    @property
    def gcs_address(self) -> str:
        """host:port of the GCS."""
        return f"{HOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard and job server."""
        return f"http://{HOST}:{self.dashboard_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of every Ray process and client of this cluster: token mode with the token file, plus
        node_env (what the nodes' jobs need: tracking server, caches)."""
        return self.procs.env(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), **{**self.node_env, **extra}
        )

    def _node_ports(self) -> list[str]:
        agent, agent_grpc, runtime_env, metrics, manager, objects = free_ports(6)
        return [
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--metrics-export-port={metrics}",
            f"--node-manager-port={manager}",
            f"--object-manager-port={objects}",
        ]

    def start_head(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> None:
        """Start the head node (GCS, dashboard and job server on 127.0.0.1)."""
        self.gcs_port, self.dashboard_port, client_port = free_ports(3)
        log = self.procs.root / "ray-head.log"
        self.logs.append(log)
        args = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--node-ip-address={HOST}",
            f"--port={self.gcs_port}",
            f"--dashboard-host={HOST}",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={client_port}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources or {})}",
            f"--object-store-memory={100 * 1024**2}",
            f"--temp-dir={self.procs.root / 'h'}",
            "--disable-usage-stats",
            *self._node_ports(),
        ]
        self.procs.start(args, log, self.env())
        self.node_count = 1

    def add_worker(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> None:
        """Start one more node joining the head."""
        index = self.node_count
        log = self.procs.root / f"ray-worker{index}.log"
        self.logs.append(log)
        args = [
            str(BIN / "ray"),
            "start",
            "--block",
            f"--address={self.gcs_address}",
            f"--node-ip-address={HOST}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources or {})}",
            f"--object-store-memory={100 * 1024**2}",
            f"--temp-dir={self.procs.root / f'w{index}'}",
            *self._node_ports(),
        ]
        self.procs.start(args, log, self.env())
        self.node_count += 1

    def wait_dashboard(self, timeout: float = 90.0) -> None:
        """Wait until the job server answers an authenticated request."""
        wait_until(
            lambda: http_status(f"{self.dashboard_url}/api/version", self.token) == 200,
            timeout,
            "Ray dashboard",
            logs=self.logs,
        )

    def alive_nodes(self) -> list[dict]:
        """The cluster's alive nodes from the state API (node_id, resources_total, ...)."""
        body = http_json(f"{self.dashboard_url}/api/v0/nodes?limit=100&detail=1", self.token)
        return [node for node in body["data"]["result"]["result"] if node["state"] == "ALIVE"]

    def wait_nodes(self, count: int, timeout: float = 90.0) -> list[dict]:
        """Wait until `count` nodes are alive; return them."""
        return wait_until(
            lambda: (nodes := self.alive_nodes()) and len(nodes) >= count and nodes,
            timeout,
            f"{count} Ray nodes",
            interval=1.0,
            logs=self.logs,
        )

    def actors(self) -> list[dict]:
        """Every actor the cluster has known (alive and dead) from the state API, with node_id and pid."""
        body = http_json(f"{self.dashboard_url}/api/v0/actors?limit=10000&detail=1", self.token)
        return body["data"]["result"]["result"]

    def ray(
        self, *args: str, timeout: float, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run the `ray` CLI against this cluster with its token; output captured."""
        return subprocess.run(
            [str(BIN / "ray"), *args],
            env=env or self.env(),
            cwd=self.procs.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def new_token(path: Path) -> Path:
    """Write a fresh Ray token readable only by this user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return path


@dataclass
class PostgresDatabase:
    """A uniquely named database on the machine's PostgreSQL, dropped by `drop()`."""

    name: str = field(default_factory=lambda: f"cytotune_infra_{uuid.uuid4().hex[:12]}")

    @property
    def uri(self) -> str:
        """SQLAlchemy URI (psycopg2 driver)."""
        return postgres.sqlalchemy_uri(self.name)

    def _execute(self, sql: str, dbname: str = "postgres") -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(dbname=dbname, connect_timeout=5, **postgres.connection_params())
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall() if cursor.description else []
        finally:
            conn.close()

    def query(self, sql: str) -> list[tuple]:
        """Rows of a query on this database."""
        return self._execute(sql, dbname=self.name)

    def create(self) -> None:
        """Create the database; fail with what is needed when PostgreSQL is not there."""
        import psycopg2

        try:
            self._execute(f'CREATE DATABASE "{self.name}"')
        except psycopg2.OperationalError as err:
            raise RuntimeError(f"this test needs PostgreSQL at {postgres.describe()}: {err}") from err

    def drop(self) -> None:
        """Drop the database, closing whatever is still connected to it."""
        self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@dataclass
class MlflowServer:
    """infra/mlflow/start_server.sh on 127.0.0.1, backed by a PostgreSQL database, with MLflow's basic-auth
    app (auth="basic-auth") or none (auth="proxy": loopback only, as behind an authenticating proxy)."""

    procs: Processes
    database: PostgresDatabase
    auth: str = "basic-auth"
    port: int = 0
    username: str = "admin"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    log: Path | None = None

    @property
    def uri(self) -> str:
        """Tracking URI."""
        return f"http://{HOST}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """What an MLflow client needs to reach this server."""
        env = {"MLFLOW_TRACKING_URI": self.uri}
        if self.auth == "basic-auth":
            env.update(MLFLOW_TRACKING_USERNAME=self.username, MLFLOW_TRACKING_PASSWORD=self.password)
        return env

    def start(self) -> None:
        """Start the server (returns at once; see wait)."""
        (self.port,) = free_ports(1)
        self.log = self.procs.root / "mlflow.log"
        state = self.procs.root / "mlflow-state"
        env = self.procs.env(
            HOME=str(self.procs.root),
            MLFLOW_BACKEND_STORE_URI=self.database.uri,
            MLFLOW_STATE_DIR=str(state),
            MLFLOW_HOST=HOST,
            MLFLOW_PORT=str(self.port),
            MLFLOW_WORKERS="1",
            MLFLOW_AUTH=self.auth,
            MLFLOW_AUTH_ADMIN_USERNAME=self.username,
            MLFLOW_AUTH_ADMIN_PASSWORD=self.password,
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        )
        self.procs.start(["bash", str(START_SERVER)], self.log, env)

    def wait(self, timeout: float = 120.0) -> None:
        """Wait until the server answers an authenticated REST call."""
        url = f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1"
        authenticated = self.auth == "basic-auth"
        wait_until(lambda: self._status(url, authenticated) == 200, timeout, "MLflow server", logs=[self.log])

    def _status(self, url: str, auth: bool) -> int:
        request = urllib.request.Request(url)
        if auth:
            import base64

            basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {basic}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except (urllib.error.URLError, OSError):
            return 0

    def anonymous_status(self) -> int:
        """HTTP status of an unauthenticated REST call (401 with basic-auth)."""
        return self._status(f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1", auth=False)


def short_tempdir() -> Path:
    """A fresh directory with a short path under /tmp (Ray's socket paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="ct", dir="/tmp"))


def remove_tree(path: Path) -> None:
    """Remove a test directory, ignoring files Ray may still be releasing."""
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class ClusterStudy:
    """What a study submitted to a two-node cluster left behind, for the tests to check."""

    study: str
    mlflow: MlflowServer
    job_returncode: int
    job_output: str
    node_ids: list[str]
    trial_nodes: dict[str, str]
    dashboard_anonymous_status: int
    dashboard_wrong_token_status: int
    wall_s: float

    @property
    def tracking_uri(self) -> str:
        """The MLflow server the study logged to (still running while the session lasts)."""
        return self.mlflow.uri


def demo_space(root: Path) -> Path:
    """search_spaces/demo.yaml with one seed (12 trials), pointed at a synthetic dataset and Ray storage under
    root."""
    import yaml

    from cytotune.data.synthetic import generate_synthetic

    data = root / "data"
    generate_synthetic(data / "synthetic")
    spec = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    spec.update(data_dir=str(data), storage=str(root / "ray_results"), seeds=[1])
    space = root / "demo.yaml"
    space.write_text(yaml.safe_dump(spec, sort_keys=False))
    return space


def trial_pids(experiment: Path) -> dict[str, int]:
    """Ray Tune trial id -> pid of the process that ran it, from each trial's last result in the saved
    experiment state."""
    from cytotune.study.runner import saved_trials

    trials = saved_trials(str(experiment))
    return {t.trial_id: t.last_result["pid"] for t in trials if (t.last_result or {}).get("pid")}


def run_cluster_study(root: Path, ray_procs: Processes, mlflow: MlflowServer) -> ClusterStudy:
    """Start a head and a worker node (1 CPU each), submit `cytotune run` as a Ray job, wait for it, and
    record which node ran each trial. Two trials at a time, each in a fresh actor (no reuse), so that the
    second node gets trials however short they are. The MLflow server must be started already; Ray is left
    running."""
    start = time.monotonic()
    space = demo_space(root)
    cluster = RayCluster(
        ray_procs,
        new_token(root / "secrets" / "auth_token"),
        node_env={**mlflow.client_env(), "CYTOTUNE_CACHE": str(root / "cache")},
    )
    cluster.start_head(num_cpus=1, resources={"cytotune_head": 1})
    cluster.wait_dashboard()
    cluster.add_worker(num_cpus=1, resources={"cytotune_worker": 1})
    nodes = cluster.wait_nodes(2)
    anonymous = http_status(f"{cluster.dashboard_url}/api/version")
    wrong = http_status(f"{cluster.dashboard_url}/api/version", token=secrets.token_hex(32))
    mlflow.wait()
    job = cluster.ray(
        "job",
        "submit",
        f"--address={cluster.dashboard_url}",
        f"--submission-id=cytotune-e2e-{uuid.uuid4().hex[:8]}",
        "--",
        "cytotune",
        "run",
        str(space),
        "--address",
        "auto",
        "--tracking-uri",
        mlflow.uri,
        "--max-concurrent",
        "2",
        "--no-reuse-actors",
        timeout=780,  # the whole demo on a 3-node cluster of 2 cores: ~4-7 min
    )
    study = "demo"
    pids = trial_pids(root / "ray_results" / study)
    by_pid = {actor["pid"]: actor["node_id"] for actor in cluster.actors() if actor.get("pid")}
    return ClusterStudy(
        study=study,
        mlflow=mlflow,
        job_returncode=job.returncode,
        job_output=job.stdout + job.stderr,
        node_ids=sorted(node["node_id"] for node in nodes),
        trial_nodes={trial: by_pid.get(pid, "") for trial, pid in pids.items()},
        dashboard_anonymous_status=anonymous,
        dashboard_wrong_token_status=wrong,
        wall_s=time.monotonic() - start,
    )


@contextmanager
def cluster_study_session(auth: str = "basic-auth") -> Iterator[ClusterStudy]:
    """Run the demo study on a fresh two-node cluster (stopped once the job ends) tracked by a fresh MLflow
    server on a fresh PostgreSQL database (both kept until exit); all is stopped and dropped on exit."""
    root = short_tempdir()
    ray_procs, mlflow_procs = Processes(root), Processes(root)
    database = PostgresDatabase()
    created = False
    try:
        database.create()
        created = True
        mlflow = MlflowServer(mlflow_procs, database, auth=auth)
        mlflow.start()
        try:
            study = run_cluster_study(root, ray_procs, mlflow)
        finally:
            ray_procs.stop()
        yield study
    finally:
        mlflow_procs.stop()
        if created:
            database.drop()
        left = ray_procs.marked() + mlflow_procs.marked()
        remove_tree(root)
        if left:
            raise RuntimeError(f"processes left running after the cluster test: {[p.pid for p in left]}")
