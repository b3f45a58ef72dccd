"""A study's lifecycle: stop signals, one launch at a time, the launch record and what a resume accepts,
an unreachable cluster, and (with Ray) exit codes and the fault-injection matrix of tests/fault_matrix.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cytotune.errors import CytotuneError
from cytotune.study.launch import (
    HOLDER_FILE,
    RECORD_FILE,
    LaunchRecord,
    launch_lock,
    read_record,
    study_fields,
    write_record,
)
from cytotune.study.runner import experiment_path, run_study, wait_for_cluster
from cytotune.study.signals import StopSignals, StudyInterrupted
from cytotune.study.spec import load_study

ROOT = Path(__file__).resolve().parent.parent
CYTOTUNE = [sys.executable, "-c", "from cytotune.cli import main; main()"]
HOLD = (
    "import sys, time\nfrom pathlib import Path\nfrom cytotune.study.launch import launch_lock\n"
    "with launch_lock(Path(sys.argv[1]), 'tiny'):\n    print('held', flush=True)\n    time.sleep(600)\n"
)


@pytest.fixture
def tiny(tmp_path):
    """The four-trial study of the fault matrix (its dataset is not generated: nothing here runs trials)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"name: tiny\nbackbones: [tiny_clip]\ndatasets: [{{name: synthetic, root: {tmp_path / 'data'}}}]\n"
        "seeds: [1, 2]\ntrain: {device: cpu}\nmax_failures: 0\nmethods:\n  - method: linear_probe\n"
        "    search: {lr: [1.0e-2, 1.0e-3]}\n    resources: {cpus: 1, gpus: 0}\n"
    )
    return path


def launched(spec, storage: Path, uri: str) -> Path:
    """Write the launch record an earlier launch of `spec` would have left in `storage`; return its folder."""
    path = experiment_path(spec, storage)
    write_record(path, LaunchRecord(study_fields(spec), uri, str(storage), str(spec.source)))
    return path


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the launch lock of tmp_path/ray/tiny; yield (process, folder)."""
    folder = tmp_path / "ray" / "tiny"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc, folder
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_and_sigint_raise_outside_tune_and_ask_tune_to_stop_inside():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        with pytest.raises(StudyInterrupted) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert stop.value.signum == signal.SIGTERM and signals.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before
    asked = []
    with StopSignals() as signals:
        with signals.tune_phase():
            signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))  # as tune.run does
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            assert asked == [signal.SIGUSR1] and signals.exit_code == 130
            with pytest.raises(StudyInterrupted):  # a second signal does not wait for Tune
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # Tune's handler does not outlive it
        assert signals.exit_code == 130  # the first signal counts


def test_a_second_launch_is_refused_naming_the_running_one_and_a_crash_leaves_no_stale_lock(holder, tiny):
    proc, folder = holder
    holder_info = json.loads((folder / HOLDER_FILE).read_text())
    assert holder_info["pid"] == proc.pid and holder_info["host"] == socket.gethostname()
    with pytest.raises(CytotuneError) as refused:
        run_study(load_study(tiny), storage=folder.parent, say=lambda _: None)
    assert str(refused.value) == (
        f"{folder}: study tiny is already running (host {socket.gethostname()}, pid {proc.pid}, started "
        f"{holder_info['started']}); expected one launch of a study at a time"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with launch_lock(folder, "tiny"):  # the killed holder's lock went with it
        assert json.loads((folder / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert not (folder / HOLDER_FILE).exists()


def test_resume_refuses_a_changed_study_and_another_tracking_store(tiny, tmp_path):
    spec = load_study(tiny)
    uri = f"sqlite:///{tmp_path / 'launch' / 'mlflow.db'}"
    path = launched(spec, tmp_path / "ray", uri)
    tiny.write_text(tiny.read_text().replace("seeds: [1, 2]", "seeds: [1, 2, 3]").replace("1.0e-3", "1.0e-4"))
    with pytest.raises(CytotuneError) as changed:
        run_study(load_study(tiny), storage=tmp_path / "ray", resume=True, say=lambda _: None)
    assert str(changed.value) == (
        f"{tiny}: changed since study tiny was launched into {path} (methods[0].search.lr: [0.01, 0.001] -> "
        "[0.01, 0.0001]; seeds: [1, 2] -> [1, 2, 3]); expected the YAML as launched, or a new study name "
        "(e.g. name: tiny-2) to run it as a new study"
    )
    with pytest.raises(CytotuneError, match=r"tiny\.yaml: tracking URI sqlite:///elsewhere\.db asked, but "):
        run_study(spec, storage=tmp_path / "ray", resume=True, tracking_uri="sqlite:///elsewhere.db")
    with pytest.raises(CytotuneError, match=r"was launched there before; expected --resume to continue it"):
        run_study(spec, storage=tmp_path / "ray", say=lambda _: None)
    assert read_record(path).tracking_uri == uri  # refusals leave the record as it was
    assert sorted(p.name for p in path.iterdir()) == [RECORD_FILE, "launch.lock"]


def test_nothing_to_resume_is_refused_and_leaves_nothing_behind(tiny, tmp_path):
    with pytest.raises(CytotuneError, match=r"/ray/tiny: no study to resume there; expected the storage"):
        run_study(load_study(tiny), storage=tmp_path / "ray", resume=True, say=lambda _: None)
    assert not (tmp_path / "ray").exists()


def test_an_unreachable_cluster_fails_within_the_connect_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        start = time.monotonic()
        with pytest.raises(CytotuneError) as err:
            wait_for_cluster(f"127.0.0.1:{port}", 1.5)
        waited = time.monotonic() - start
    assert 1.5 <= waited < 5
    assert str(err.value).startswith(f"--address 127.0.0.1:{port}: no Ray cluster answered within 1.5 s (")
    assert str(err.value).endswith(
        "; expected a running cluster at that address (or a longer --connect-timeout)"
    )
    with pytest.raises(CytotuneError, match=r"--address nohost:port: expected HOST:PORT or auto"):
        wait_for_cluster("nohost:port", 1.0)


def test_cytotune_run_at_an_unreachable_address_exits_2_in_one_line(tiny, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        args = ["run", str(tiny), "--address", address, "--connect-timeout", "1", "--storage", "ray"]
        run = subprocess.run([*CYTOTUNE, *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"cytotune: error: --address {address}: no Ray cluster answered within 1 s (")
    assert not (tmp_path / "ray").exists()


# --- with Ray: whole `cytotune run` launches, each in a session of its own (tests/fault_matrix.py) -------

FULL_MATRIX = os.environ.get("CYTOTUNE_FAULT_MATRIX") == "1"
IN_SUITE = {("SIGINT", "before-first-trial"), ("SIGTERM", "mid-study")}


@pytest.fixture(scope="module")
def matrix_data(tmp_path_factory):
    """The tiny study's synthetic dataset, generated once for the module."""
    from fault_matrix import tiny_study

    folder = tmp_path_factory.mktemp("matrix_data")
    tiny_study(folder)
    return folder / "synthetic"


@pytest.mark.slow
def test_a_failed_trial_exits_1_names_it_and_fails_the_launch_run(matrix_data, tmp_path):
    from fault_matrix import launch, tiny_study
    from mlflow import MlflowClient

    space = tiny_study(tmp_path, matrix_data)
    space.write_text(space.read_text().replace("lr: [1.0e-2, 1.0e-3]", "lr: [1.0e-2, 1.0e+30]"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    run = launch(["run", str(space), "--storage", str(tmp_path / "ray")], tmp_path, env)
    assert run.returncode == 1, "\n".join(run.lines)
    assert run.left_in_session == 0
    [named] = [line for line in run.lines if line.startswith("failed trials (error.txt in their MLflow ")]
    assert sorted(named.split(": ", 1)[1].split(", ")) == [
        "linear_probe/tiny_clip/synthetic/full/lr=1e+30/seed=1",
        "linear_probe/tiny_clip/synthetic/full/lr=1e+30/seed=2",
    ]
    assert any("4 trials (2 finished, 0 stopped early, 2 failed)" in line for line in run.lines)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED", "FAILED", "FINISHED", "FINISHED"]


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["start-up", "preparing", "before-first-trial", "mid-study"])
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_fault_matrix(signal_name, phase, matrix_data, tmp_path):
    """A signal when a phase begins, then the printed --resume from another directory: the study completes
    with one MLflow run per trial, none left RUNNING, and no process left behind. The whole matrix runs with
    CYTOTUNE_FAULT_MATRIX=1; the suite runs two cells of it."""
    from fault_matrix import run_case

    if not FULL_MATRIX and (signal_name, phase) not in IN_SUITE:
        pytest.skip("set CYTOTUNE_FAULT_MATRIX=1 for the whole matrix")
    case = run_case(tmp_path / "case", signal_name, phase, matrix_data)
    print(case.row())  # pytest -s: the row of the matrix table (tests/fault_matrix.py HEADER)
    first, resumed = case.interrupted, case.resumed
    log = "\n".join(first.lines + ["--- resume ---"] + resumed.lines)
    assert first.signal_at is not None, log
    if signal_name == "SIGKILL":
        assert first.returncode == -signal.SIGKILL
    else:
        assert first.returncode == 128 + signal.Signals[signal_name], log
        assert first.stop_s < 60 and first.left_in_session == 0, log
    assert resumed.returncode == 0, log
    assert (case.trials, case.trial_runs, case.duplicates, case.running_runs) == (4, 4, 0, 0), log
    assert resumed.left_in_session == 0 and not case.stray_store, log
    assert case.launch_statuses[-1] == "FINISHED" and set(case.launch_statuses[:-1]) <= {"KILLED"}, log
