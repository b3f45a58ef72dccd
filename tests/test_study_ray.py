"""Real Ray Tune runs of studies on a two-node local cluster (head: 2 CPU; node: 4 CPU + 2 declared GPUs),
with the real trainers on tiny backbones forced to CPU: the demo, GPU shares, a killed trial worker,
an interrupted driver resumed, and bad input."""

from __future__ import annotations

import itertools
import os
import re
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

from cytotune.errors import CytotuneError
from cytotune.study.demo import demo_spec
from cytotune.study.runner import describe_plan, dry_run, run_study, saved_trials
from cytotune.study.spec import load_study

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CYTOTUNE = [sys.executable, "-c", "from cytotune.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """Head node with 2 CPUs and a second node with 4 CPUs and 2 declared GPUs, shared by this module."""
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
        # 4 declared CPUs: Ray starts at most as many workers at once as a node has CPUs
        cluster.add_node(num_cpus=4, num_gpus=2, object_store_memory=small)
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
        f"name: {path.stem}\nbackbones: [tiny_clip]\n"
        f"datasets: [{{name: synthetic, root: {data / 'synthetic'}}}]\n"
        "seeds: [1, 2]\ntrain: {device: cpu, image_cache_size: 32, batch_size: 16, eval_batch_size: 64, "
        f"warmup_steps: 5}}\nmax_failures: 1\nmethods:\n{body}"
    )
    return path


def at_once(a, b) -> bool:
    """Whether two trials ran at the same time (by the start and end times they recorded)."""
    return a.metrics["started_at"] < b.metrics["ended_at"] and b.metrics["started_at"] < a.metrics["ended_at"]


def most_at_once(intervals: list[tuple[float, float, float]]) -> float:
    """The largest total weight (e.g. GPUs) of the (start, end, weight) intervals open at one time."""
    events = sorted([(s, w) for s, _, w in intervals] + [(e, -w) for _, e, w in intervals])
    most = held = 0.0
    for _, w in events:
        held += w
        most = max(most, held)
    return most


def test_demo_study_runs_on_tuner(cluster, demo_data, tmp_path):
    # two trials at a time (as on a 2-core machine): two reused actors serve all 24 trials
    spec = demo_spec(demo_data)
    outcome = run_study(spec, storage=tmp_path / "ray", max_concurrent=2, say=lambda _: None)
    keys = Counter(t.trial_key for t in outcome.trials)
    assert len(keys) == 24 and set(keys.values()) == {1}
    counts = outcome.counts()
    assert counts["failed"] == counts["unfinished"] == 0
    assert counts["finished"] >= 8 + 4  # every probe; at least one LoRA trial per cell survives ASHA
    assert not outcome.interrupted
    table = outcome.best_per_cell()
    assert len(table) == 6 and table["test_acc_mean"].notna().all()
    assert (table["selection"] == "chosen").all() and (table["n_seeds"] == 2).all()
    # seed-grouped early stopping never stops a trial at its last step (the 4-shot cells end at 40, a rung)
    for t in outcome.trials:
        if t.status == "stopped":
            assert t.trial["method"] == "lora" and t.metrics["step"] < t.metrics["last_step"]
    four_shot = [t for t in outcome.trials if t.trial.get("shots") == 4 and t.status == "finished"]
    assert four_shot and all(t.metrics["step"] == 40 for t in four_shot)
    lora = next(t for t in outcome.trials if t.status == "finished" and t.trial["method"] == "lora")
    files = {p.name for p in Path(lora.checkpoint).iterdir()}
    assert {"adapter", "result.json", "trial_manifest.csv"} <= files
    assert lora.metrics["done_trial"] == 1 and "test_macro_f1" in lora.metrics


def test_lora_holds_one_gpu_and_probes_a_quarter(cluster, demo_data, tmp_path):
    body = (
        "  - method: lora\n    shots: [2]\n    search: {lr: [1.0e-2, 1.0e-3]}\n"
        "    train: {base_steps: 240, steps_per_shot: 5, eval_every: 50}\n"
        "    resources: {cpus: 0.25, gpus: 1}\n"
        "  - method: linear_probe\n    search: {lr: [1.0e-2, 1.0e-3, 1.0e-4]}\n"
        "    train: {probe_epochs: 600}\n    resources: {cpus: 0.25, gpus: 0.25}\n"
    )
    spec = load_study(study_yaml(tmp_path / "gpus.yaml", demo_data, body))
    outcome = run_study(spec, storage=tmp_path / "ray", say=lambda _: None)
    assert outcome.counts()["finished"] == 10
    spans = []
    for t in outcome.trials:
        gpus = t.metrics["assigned_gpus"]
        assert gpus == (1.0 if t.trial["method"] == "lora" else 0.25)
        spans.append((t.metrics["started_at"], t.metrics["ended_at"], gpus))
    assert most_at_once(spans) <= 2.0  # never more GPUs held at once than the cluster has
    together = [(a, b) for a, b in itertools.combinations(outcome.trials, 2) if at_once(a, b)]
    seen = {
        (frozenset((a.trial["method"], b.trial["method"])), a.metrics["gpu_ids"] == b.metrics["gpu_ids"])
        for a, b in together
    }
    assert (frozenset({"lora"}), False) in seen  # two LoRA trials at once, on different GPUs
    assert (frozenset({"lora"}), True) not in seen
    assert (frozenset({"lora", "linear_probe"}), True) not in seen  # no probe on a GPU a LoRA trial holds
    assert (frozenset({"linear_probe"}), True) in seen  # two probes at once share one GPU


def test_optuna_suggestions_run_for_every_seed_and_optuna_learns_the_seed_mean(cluster, demo_data, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    body = (
        "  - method: linear_probe\n"
        "    search:\n      lr: {optuna: loguniform, low: 1.0e-4, high: 1.0e-1}\n    samples: 3\n"
        "    train: {probe_epochs: 5}\n    resources: {cpus: 1, gpus: 0}\n"
    )
    spec = load_study(study_yaml(tmp_path / "optuna.yaml", demo_data, body))
    outcome = run_study(spec, storage=tmp_path / "ray", max_concurrent=2, say=lambda _: None)
    assert outcome.counts()["finished"] == 6
    by_lr: dict[float, list] = {}
    for t in outcome.trials:
        by_lr.setdefault(t.trial["lr"], []).append(t)
    assert len(by_lr) == 3
    assert all(sorted(t.trial["seed"] for t in trials) == [1, 2] for trials in by_lr.values())
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "ray" / "optuna" / "optuna.journal")))
    [summary] = optuna.get_all_study_summaries(journal)
    told = optuna.load_study(study_name=summary.study_name, storage=journal).get_trials()
    assert len(told) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in told)
    for trial in told:
        seeds = by_lr[trial.params["lr"]]
        assert trial.value == pytest.approx(sum(t.metrics["best_val_acc"] for t in seeds) / len(seeds))


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
    spec = load_study(path).model_copy(update={"seeds": (1,), "checkpoint_every_s": 0.0})
    killer = KillFirstCheckpointedTrial()
    outcome = run_study(spec, storage=tmp_path / "ray", callbacks=[killer], say=lambda _: None)
    assert len(killer.killed) == 1
    [trial] = outcome.trials
    assert trial.status == "finished"
    assert trial.metrics["resumed"] == 1
    assert trial.metrics["steps"] == 50
    assert trial.metrics["iterations_since_restore"] < trial.metrics["training_iteration"]


def _finished_runs(uri: str, study: str) -> dict[str, str]:
    """Trial key -> run id of the study's trial runs whose end MLflow holds as finished."""
    from mlflow import MlflowClient

    from cytotune.tracking import schema

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], f"tags.`{schema.STATUS}` = 'finished'")
    return {run.data.tags[schema.TRIAL_KEY]: run.info.run_id for run in runs}


def _run_metrics(client, uri: str, trial_key: str) -> dict[str, float]:
    return client.get_run(_finished_runs(uri, "resume")[trial_key]).data.metrics


def test_killed_driver_resumes_every_trial_once_and_trains_no_finished_trial_again(
    cluster, demo_data, tmp_path
):
    """Ray Tune snapshots the study at its start only here (TUNE_GLOBAL_CHECKPOINT_S), so on resume Tune
    starts again every trial, the finished ones too: those report the end their MLflow run holds, or the end
    the driver's end journal held when its MLflow writes had not caught up."""
    from mlflow import MlflowClient

    from cytotune.study.grid import expand_cells
    from cytotune.study.launch import study_callback
    from cytotune.study.runner import END_JOURNAL
    from cytotune.tracking.end_journal import EndJournal

    body = "  - method: linear_probe\n    search: {lr: [1.0e-2, 3.0e-3, 1.0e-3, 3.0e-4]}\n"
    path = study_yaml(tmp_path / "resume.yaml", demo_data, body + "    train: {probe_epochs: 30}\n")
    storage = tmp_path / "ray"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", str(path), "--address", cluster.address, "--storage", str(storage), "--tracking-uri", uri]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TUNE_GLOBAL_CHECKPOINT_S": "3600"}
    driver = subprocess.Popen([*CYTOTUNE, *args, "--max-concurrent", "1"], stderr=subprocess.DEVNULL, env=env)
    finished: dict[str, str] = {}
    try:
        deadline = time.time() + 120
        while len(finished) < 2 and time.time() < deadline and driver.poll() is None:
            time.sleep(0.5)
            finished = _finished_runs(uri, "resume")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    finished = _finished_runs(uri, "resume")
    assert driver.returncode == -signal.SIGKILL and 2 <= len(finished) < 8
    assert (
        sum(t.status == "TERMINATED" for t in saved_trials(str(storage / "resume"))) == 0
    )  # snapshot: stale
    journal = EndJournal(storage / "resume" / END_JOURNAL).read()
    journaled = {end.trial_key for end in journal if end.run_status == "FINISHED"} - set(finished)
    client = MlflowClient(uri)
    before = {key: client.get_run(run_id) for key, run_id in finished.items()}
    spec = load_study(path)
    callback = study_callback(spec, expand_cells(spec), uri, resume=True)
    resumed_at = time.time()
    outcome = run_study(spec, storage=storage, resume=True, callbacks=[callback], say=lambda _: None)
    callback.close(interrupted=outcome.interrupted)
    assert outcome.counts()["finished"] == 8 and not outcome.interrupted
    keys = Counter(t.trial_key for t in outcome.trials)
    assert len(keys) == 8 and set(keys.values()) == {1}
    replayed = {t.trial_key for t in outcome.trials if t.metrics.get("replayed") == 1}
    assert replayed == set(finished) | journaled  # every finished trial reports its recorded end, only those
    trained = [t for t in outcome.trials if t.trial_key not in replayed]
    assert trained and all(t.metrics["started_at"] >= resumed_at for t in trained)
    for t in outcome.trials:
        if t.trial_key in finished:
            run = before[t.trial_key]
            assert t.metrics["test_acc"] == run.data.metrics["test_acc"]
            assert client.get_run(run.info.run_id).data.metrics == run.data.metrics  # left as it ended
            assert client.get_run(run.info.run_id).info.end_time == run.info.end_time
        elif t.trial_key in journaled:  # its end written from the journal on resume
            assert t.metrics["test_acc"] == _run_metrics(client, uri, t.trial_key)["test_acc"]
    assert sorted(_finished_runs(uri, "resume")) == sorted(keys)  # one finished run per trial


def test_bad_input_fails_before_trials_start(cluster, demo_data, tmp_path):
    too_many = "  - method: lora\n    shots: [500]\n    lr: 1.0e-3\n"
    spec = load_study(study_yaml(tmp_path / "shots.yaml", demo_data, too_many))
    with pytest.raises(
        CytotuneError, match=r"methods\[0\]\.shots: 500 shots per class, but class '.*' of synthetic"
    ):
        run_study(spec, storage=tmp_path / "ray", say=lambda _: None)
    unknown = study_yaml(tmp_path / "unknown.yaml", demo_data, "  - method: lora\n    lr: 1.0e-3\n")
    unknown.write_text(unknown.read_text().replace("[tiny_clip]", "[tiny_clip, resnet50]"))
    with pytest.raises(
        CytotuneError, match=r"unknown\.yaml: backbones\[1\]: unknown backbone 'resnet50'; expected"
    ):
        run_study(load_study(unknown), storage=tmp_path / "ray")
    unknown.write_text(
        unknown.read_text().replace(", resnet50]", "]").replace("name: synthetic", "name: nosuch")
    )
    with pytest.raises(
        CytotuneError, match=r"datasets\[0\]\.name: unknown dataset 'nosuch'; expected one of: "
    ):
        run_study(load_study(unknown), storage=tmp_path / "ray")
    assert not (tmp_path / "ray").exists()


def test_gpus_asked_of_a_gpu_less_machine_fail_in_one_line(tmp_path):
    space = ROOT / "search_spaces" / "exp2_lora_fewshot.yaml"
    run = subprocess.run([*CYTOTUNE, "run", str(space)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"cytotune: error: {space}: methods[0].resources.gpus: 1 GPU per trial asked, but the cluster has no "
        "GPU; expected gpus: 0 or allow_cpu_fallback: true"
    ]


def test_dry_run_says_whether_the_machine_can_run_the_study():
    text = describe_plan(dry_run(load_study(ROOT / "search_spaces" / "exp2_lora_fewshot.yaml")))
    assert "120 cells, 1800 trials" in text
    assert re.search(
        r"\nlora/clip_vit_b16/bcfc/shots=1/rank=2,targets=qv +15  lr 5 x 3 seeds +4 CPU, 1 GPU\n", text
    )
    assert text.splitlines()[-2:] == [
        "can run: no",
        f"{ROOT / 'search_spaces' / 'exp2_lora_fewshot.yaml'}: methods[0].resources.gpus: 1 GPU per trial "
        "asked, but the cluster has no GPU; expected gpus: 0 or allow_cpu_fallback: true",
    ]
    assert "can run: yes" in describe_plan(dry_run(load_study(ROOT / "search_spaces" / "demo.yaml")))


def _snapshot_rungs(experiment: Path) -> dict:
    """The scheduler's rungs (each cell's as plain values) in the callback state of Tune's newest launch (the
    RungsKeeper's): the file with the greatest name, as Tune picks it on resume (names hold the launch's
    time)."""
    import pickle

    newest = max(experiment.glob("callback-states-*.pkl"))
    [kept] = [state for state in pickle.loads(newest.read_bytes()).values() if state]
    return kept["rungs"]


def test_a_resumed_study_keeps_the_rungs_of_its_last_snapshot(cluster, tmp_path):
    """Interrupted after 6 trials ended (Tune snapshots then), then resumed: the configurations whose seeds
    had all ended never report again, yet their means stay in the rungs the resumed launch decides on."""
    from ray_nodes import InterruptAfter

    from cytotune.bench.scale import bench_yaml
    from cytotune.bench.simulated import simulated_trainable
    from cytotune.study.grid import configuration_key, count_trials, expand_cells
    from cytotune.study.storage import study_storage

    space = Path(__file__).resolve().parents[1] / "search_spaces" / "exp2_lora_fewshot.yaml"
    spec = load_study(bench_yaml(space, tmp_path, trials=18))
    trainable = simulated_trainable(0.4, tmp_path / "events.tsv", spec.checkpoint_every_s)
    quiet = {"address": cluster.address, "trainable": trainable, "say": lambda _: None}
    first = run_study(spec, callbacks=[InterruptAfter(6)], **quiet)
    assert first.interrupted
    experiment = Path(study_storage(spec.name, None, spec.storage).experiment)
    kept = _snapshot_rungs(experiment)
    # the test's point: a configuration recorded in the snapshot whose every seed had ended (none of its
    # trials reports after the resume, so only the kept rungs can hold its mean)
    seeds = {cell.cell_key: len(cell.seeds) for cell in expand_cells(spec)}
    ends = [t for t in first.trials if t.status in ("finished", "stopped")]
    ended = Counter((t.cell_key, configuration_key(t.trial_key)) for t in ends)
    done = {config for (cell, config), n in ended.items() if n == seeds[cell]}
    recorded = {config for rungs in kept.values() for means in rungs["recorded"].values() for config in means}
    assert done & recorded
    resumed = run_study(spec, resume=True, **quiet)
    assert not resumed.interrupted and len(resumed.trials) == count_trials(expand_cells(spec))
    final = _snapshot_rungs(experiment)
    for cell, rungs in kept.items():
        for rung, means in rungs["recorded"].items():
            assert means.items() <= final[cell]["recorded"][rung].items()
