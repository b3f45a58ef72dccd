"""Fault injection into `cytotune run`: a tiny study launched in a session of its own, a signal sent to the
driver when a phase begins, then the printed `--resume` from another directory; what is left is counted
(exit codes, trials, MLflow runs, duplicates, runs left RUNNING, processes left in the launch's session, over
the driver's process group and those Ray's workers make in it). Everything started is stopped by process
group, never machine-wide. As a script it prints the matrix: `python tests/fault_matrix.py [SIG:PHASE]`."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CYTOTUNE = [sys.executable, "-c", "from cytotune.cli import main; main()"]
TRIALS = 4
# the line the driver prints (stdout) or its progress line (stderr) when each phase begins
PHASES = {
    "start-up": "starting a local Ray",
    "preparing": "preparing synthetic (",
    "before-first-trial": f"running {TRIALS} trials on Ray Tune",
    "mid-study": f"1/{TRIALS} trials ended",
}
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


def tiny_study(folder: Path, data: Path | None = None) -> Path:
    """A four-trial linear-probe study on synthetic data (`data`, else made in FOLDER/synthetic)."""
    from cytotune.data.synthetic import generate_synthetic

    if data is None:
        data = folder / "synthetic"
        if not data.exists():
            generate_synthetic(data, per_class=12, size=32)
    path = folder / "tiny.yaml"
    path.write_text(
        f"name: tiny\nbackbones: [tiny_clip]\ndatasets: [{{name: synthetic, root: {data}}}]\nseeds: [1, 2]\n"
        "train: {device: cpu, image_cache_size: 32, batch_size: 16, eval_batch_size: 64, warmup_steps: 5}\n"
        "max_failures: 0\nmethods:\n  - method: linear_probe\n    search: {lr: [1.0e-2, 1.0e-3]}\n"
        "    train: {probe_epochs: 20}\n    resources: {cpus: 1, gpus: 0}\n"
    )
    return path


@dataclass
class Launch:
    """A finished `cytotune run`: exit status, its output lines, the processes its session left."""

    returncode: int
    lines: list[str]
    seconds: float
    left_in_session: int
    signal_at: str | None = None
    stop_s: float | None = None


def session_members(sid: int) -> list[int]:
    """Live processes (not zombies) of the session `sid`: the launch's process group and the groups Ray's
    workers make for themselves inside it."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry))
    return out


def launch(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    *,
    phase: str | None = None,
    signum: int | None = None,
    settle_s: float = 10.0,
    timeout_s: float = 400.0,
) -> Launch:
    """Run `cytotune ARGS` in a new session; send `signum` to the driver when `phase` begins; wait for the
    session to empty (at most `settle_s` after the driver ends), count who is left, kill them by group."""
    start = time.monotonic()
    driver = subprocess.Popen(
        [*CYTOTUNE, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    feed: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in driver.stdout:
            feed.put(line.rstrip("\n"))
        feed.put(None)

    threading.Thread(target=pump, daemon=True).start()
    signal_at = sent = None
    try:
        while True:
            try:
                line = feed.get(timeout=max(0.1, timeout_s - (time.monotonic() - start)))
            except queue.Empty:
                break
            if line is None:
                break
            lines.append(line)
            if sent is None and phase is not None and PHASES[phase] in line:
                driver.send_signal(signum)
                sent, signal_at = time.monotonic(), line
        driver.wait(timeout=max(1.0, timeout_s - (time.monotonic() - start)))
        ended = time.monotonic()
        while session_members(driver.pid) and time.monotonic() - ended < settle_s:
            time.sleep(0.5)
        left = len(session_members(driver.pid))
    finally:
        for group in {driver.pid, *(_group(pid) for pid in session_members(driver.pid))} - {None}:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if driver.poll() is None:
            driver.wait(timeout=30)
    stop_s = None if sent is None else ended - sent
    return Launch(driver.returncode, lines, time.monotonic() - start, left, signal_at, stop_s)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@dataclass
class Case:
    """One cell of the matrix: the interrupted launch, its resume, and what MLflow holds afterwards."""

    signal: str
    phase: str
    interrupted: Launch
    resumed: Launch
    trials: int = 0
    trial_runs: int = 0
    duplicates: int = 0
    running_runs: int = 0
    launch_statuses: list[str] = field(default_factory=list)
    stray_store: bool = False

    def row(self) -> str:
        """A row of the matrix table."""
        first = self.interrupted
        return (
            f"| {self.signal} | {self.phase} | {first.returncode} | "
            f"{'-' if first.stop_s is None else f'{first.stop_s:.1f}'} | {first.left_in_session} | "
            f"{self.resumed.returncode} | {self.trials} | {self.trial_runs} | {self.duplicates} | "
            f"{self.running_runs} | {self.resumed.left_in_session} | {','.join(self.launch_statuses)} |"
        )


HEADER = (
    "| signal | phase | exit | stop s | left in session | resume exit | trials | trial runs | duplicates | "
    "RUNNING runs | left after resume | launch runs |\n|" + "---|" * 12
)


def resume_args(lines: list[str], space: Path, storage: Path) -> list[str]:
    """The `--resume` command the driver printed (else the one it would print)."""
    for line in lines:
        if "continue with: cytotune run " in line:
            return shlex.split(line.split("continue with: cytotune ", 1)[1])
    return ["run", str(space), "--storage", str(storage), "--resume"]


def run_case(folder: Path, signal_name: str, phase: str, data: Path | None = None) -> Case:
    """Interrupt the tiny study with `signal_name` when `phase` begins, resume it from another folder, and
    count trials and MLflow runs."""
    from mlflow import MlflowClient

    from cytotune.tracking import schema

    launch_dir, other_dir = folder / "launch", folder / "elsewhere"
    launch_dir.mkdir(parents=True)
    other_dir.mkdir()
    space = tiny_study(folder, data)
    storage = folder / "ray"
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        "CYTOTUNE_CACHE": str(folder / "cache"),
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
        "PYTHONPATH": str(ROOT),
    }
    args = ["run", str(space), "--storage", str(storage), "--max-concurrent", "1"]
    first = launch(args, launch_dir, env, phase=phase, signum=SIGNALS[signal_name])
    resumed = launch(resume_args(first.lines, space, storage), other_dir, env)
    case = Case(signal_name, phase, first, resumed)
    case.stray_store = (other_dir / "mlflow.db").exists()
    uri = f"sqlite:///{launch_dir / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    if experiment is None:
        return case
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trial_runs = [r for r in runs if r.data.tags.get(schema.KIND) == schema.KIND_TRIAL]
    keys = Counter(r.data.tags[schema.TRIAL_KEY] for r in trial_runs)
    case.trials = sum(1 for r in trial_runs if r.data.tags.get(schema.STATUS) == "finished")
    case.trial_runs = len(trial_runs)
    case.duplicates = sum(n - 1 for n in keys.values())
    case.running_runs = sum(r.info.status == "RUNNING" for r in runs)
    launches = sorted(
        (r for r in runs if r.data.tags.get(schema.KIND) == schema.KIND_LAUNCH),
        key=lambda r: r.info.start_time,
    )
    case.launch_statuses = [r.info.status for r in launches]
    return case


def main(cells: list[str]) -> None:
    """Print the matrix table for the given SIGNAL:PHASE cells (default: all)."""
    import tempfile

    wanted = cells or [f"{s}:{p}" for s in SIGNALS for p in PHASES]
    with tempfile.TemporaryDirectory(prefix="ct-faults-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        tiny_study(data)
        print(HEADER, flush=True)
        for cell in wanted:
            signal_name, phase = cell.split(":")
            case = run_case(Path(tmp) / cell.replace(":", "-"), signal_name, phase, data / "synthetic")
            print(case.row() + (" stray mlflow.db" if case.stray_store else ""), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(sys.argv[1:])
