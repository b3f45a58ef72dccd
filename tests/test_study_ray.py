"""Real Ray Tune runs of studies on a two-node local cluster (head: 2 CPU; node: 2 CPU + 2 declared GPUs),
with the real trainers on tiny backbones forced to CPU: the demo, GPU shares, a killed trial worker,
an interrupted driver resumed, and bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import ray
from ray import tune
from ray.cluster_utils import Cluster

from cytotune.config import load_study
from cytotune.errors import CytotuneError
from cytotune.study import run_demo, run_study
from cytotune.study.demo import demo_spec

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CYTOTUNE = [sys.executable, "-c", "from cytotune.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """Head node with 2 CPUs and a second node with 2 CPUs and 2 declared GPUs, shared by this module."""
    if ray.is_initialized():
        ray.shutdown()
    small = 100 * 1024**2
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": False,
            "object_store_memory": small,
            "gcs_server_port": free_port(),
        },
    )
    try:
        cluster.add_node(num_cpus=2, num_gpus=2, object_store_memory=small)
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The synthetic demo dataset, generated once for the module."""
    out = tmp_path_factory.mktemp("demo_out")
    demo_spec(out)
    return out


def study_yaml(path: Path, data: Path, body: str) -> Path:
    path.write_text(
        f"name: {path.stem}\nbackbones: [tiny_clip]\ndatasets: [{{name: synthetic, root: {data / 'synthetic'}}}]\n"
        "seeds: [1, 2]\ntrain: {device: cpu, image_cache_size: 32, batch_size: 16, eval_batch_size: 64, "
        f"warmup_steps: 5}}\nmax_failures: 1\nmethods:\n{body}"
    )
    return path


def overlap(intervals: list[tuple[float, float, float]]) -> tuple[int, float]:
    """Most intervals open at once, and the most of their weights open at once."""
    events = sorted([(s, 1, w) for s, _, w in intervals] + [(e, -1, -w) for _, e, w in intervals])
    most = load = 0
    most_weight = weight = 0.0
    for _, step, w in events:
        load += step
        weight += w
        most, most_weight = max(most, load), max(most_weight, weight)
    return most, most_weight


def test_demo_study_runs_on_tuner(cluster, demo_data):
    outcome = run_demo(demo_data, say=lambda _: None)
    keys = Counter(t.trial_key for t in outcome.trials)
    assert len(keys) == 24 and set(keys.values()) == {1}
    counts = outcome.counts()
    assert counts["failed"] == counts["unfinished"] == 0
    assert counts["finished"] >= 8 + 4  # every probe; at least one LoRA trial per cell survives ASHA
    assert not outcome.interrupted
    table = outcome.best_per_cell()
    assert len(table) == 6 and table["test_acc_mean"].notna().all()
    lora = next(t for t in outcome.trials if t.status == "finished" and t.trial["method"] == "lora")
    files = {p.name for p in Path(lora.checkpoint).iterdir()}
    assert {"adapter", "result.json", "trial_manifest.csv"} <= files
    assert lora.metrics["done_trial"] == 1 and "test_macro_f1" in lora.metrics


def test_lora_holds_one_gpu_and_probes_a_quarter(cluster, demo_data, tmp_path):
    body = (
        "  - method: linear_probe\n    search: {lr: [1.0e-2, 3.0e-3, 1.0e-3, 3.0e-4]}\n"
        "    train: {probe_epochs: 300}\n    resources: {cpus: 0.25, gpus: 0.25}\n"
        "  - method: lora\n    shots: [2]\n    search: {lr: [1.0e-2, 1.0e-3]}\n"
        "    train: {base_steps: 60, steps_per_shot: 5, eval_every: 20}\n    resources: {cpus: 0.25, gpus: 1}\n"
    )
    spec = load_study(study_yaml(tmp_path / "gpus.yaml", demo_data, body))
    outcome = run_study(spec, storage=tmp_path / "ray", say=lambda _: None)
    assert outcome.counts()["finished"] == 12
    spans = {"linear_probe": [], "lora": []}
    for t in outcome.trials:
        gpus = t.metrics["assigned_gpus"]
        assert gpus == (1.0 if t.trial["method"] == "lora" else 0.25)
        spans[t.trial["method"]].append((t.metrics["started_at"], t.metrics["ended_at"], gpus))
    lora_most, _ = overlap(spans["lora"])
    probe_most, _ = overlap(spans["linear_probe"])
    _, gpu_most = overlap(spans["lora"] + spans["linear_probe"])
    assert lora_most <= 2 and gpu_most <= 2.0
    assert probe_most > 2  # more probes at once than there are GPUs: they share them


class KillFirstCheckpointedTrial(tune.Callback):
    """Kills the worker process of the first trial that reports a checkpoint (once)."""

    def __init__(self):
        self.killed: list[int] = []

    def on_trial_save(self, iteration, trials, trial, **info):
        pid = trial.last_result.get("pid")
        if not self.killed and pid:
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)


def test_killed_trial_worker_resumes_from_its_checkpoint(cluster, demo_data, tmp_path):
    body = (
        "  - method: lora\n    shots: [2]\n    lr: 1.0e-3\n"
        "    train: {base_steps: 40, steps_per_shot: 5, eval_every: 10}\n    resources: {cpus: 1, gpus: 0}\n"
    )
    path = study_yaml(tmp_path / "kill.yaml", demo_data, body.replace("seeds: [1, 2]", ""))
    spec = load_study(path).model_copy(update={"seeds": (1,)})
    killer = KillFirstCheckpointedTrial()
    outcome = run_study(spec, storage=tmp_path / "ray", callbacks=[killer], say=lambda _: None)
    assert len(killer.killed) == 1
    [trial] = outcome.trials
    assert trial.status == "finished"
    assert trial.metrics["resumed"] == 1
    assert trial.metrics["steps"] == 50
    assert trial.metrics["iterations_since_restore"] < trial.metrics["training_iteration"]


def test_interrupted_driver_resumes_every_trial_once(cluster, demo_data, tmp_path):
    body = "  - method: linear_probe\n    search: {lr: [1.0e-2, 3.0e-3, 1.0e-3, 3.0e-4]}\n    train: {probe_epochs: 30}\n"
    path = study_yaml(tmp_path / "resume.yaml", demo_data, body)
    args = [*CYTOTUNE, "run", str(path), "--address", cluster.address, "--storage", str(tmp_path / "ray")]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen([*args, "--max-concurrent", "1"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in driver.stderr:
            if " 3/8 trials ended" in line:
                driver.send_signal(signal.SIGINT)
                break
        driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    resumed_at = time.time()
    again = subprocess.run([*args, "--resume"], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "8 trials (8 finished" in again.stdout
    trials = tune.ExperimentAnalysis(str(tmp_path / "ray" / "resume")).trials
    keys = Counter(t.config["trial_key"] for t in trials)
    assert len(keys) == 8 and set(keys.values()) == {1}
    assert all(t.last_result.get("done_trial") == 1 for t in trials)
    rerun = [t for t in trials if t.last_result["started_at"] >= resumed_at]
    assert 0 < len(rerun) <= 8 - 3


def test_bad_input_fails_before_trials_start(cluster, demo_data, tmp_path):
    too_many = "  - method: lora\n    shots: [50]\n    lr: 1.0e-3\n"
    spec = load_study(study_yaml(tmp_path / "shots.yaml", demo_data, too_many))
    with pytest.raises(
        CytotuneError, match=r"methods\[0\]\.shots: 50 shots per class, but class '.*' of synthetic"
    ):
        run_study(spec, storage=tmp_path / "ray", say=lambda _: None)
    unknown = study_yaml(tmp_path / "unknown.yaml", demo_data, "  - method: lora\n    lr: 1.0e-3\n")
    unknown.write_text(unknown.read_text().replace("[tiny_clip]", "[tiny_clip, resnet50]"))
    with pytest.raises(
        CytotuneError, match=r"unknown\.yaml: backbones\[1\]: unknown backbone 'resnet50'; expected"
    ):
        run_study(load_study(unknown), storage=tmp_path / "ray")
    assert not (tmp_path / "ray").exists()


def test_gpus_asked_of_a_gpu_less_machine_fail_in_one_line(tmp_path):
    space = ROOT / "search_spaces" / "exp2_lora_fewshot.yaml"
    plan = subprocess.run(
        [*CYTOTUNE, "run", str(space), "--dry-run"], capture_output=True, text=True, cwd=tmp_path
    )
    assert plan.returncode == 0 and "can run: no" in plan.stdout and "120 cells, 1800 trials" in plan.stdout
    run = subprocess.run([*CYTOTUNE, "run", str(space)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"cytotune: error: {space}: methods[0].resources.gpus: 1 GPU per trial asked, but the cluster has no "
        "GPU; expected gpus: 0 or allow_cpu_fallback: true"
    ]
