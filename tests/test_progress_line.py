"""The study's progress line: counts by hand over trials a resumed study ended before and new events."""

from __future__ import annotations

from dataclasses import dataclass, field

from ray.tune.experiment import Trial

from cytotune.study.progress_line import ProgressLine


@dataclass
class Saved:
    trial_id: str
    status: str
    last_result: dict = field(default_factory=dict)


def _line(capsys) -> str:
    """The last line without its clock."""
    return capsys.readouterr().err.strip().splitlines()[-1].split("] ", 1)[1]


def test_counts_follow_events_and_count_earlier_ended_trials_once(capsys):
    earlier = [
        Saved("a", Trial.TERMINATED, {"done_trial": 1, "best_val_acc": 0.5}),
        Saved("b", Trial.TERMINATED, {"best_val_acc": 0.7}),  # stopped by ASHA
        Saved("c", Trial.ERROR),
        Saved("d", Trial.PENDING),  # interrupted: runs again
    ]
    new = [Saved("e", Trial.PENDING), Saved("f", Trial.PENDING)]
    trials = earlier + new
    line = ProgressLine(total=6)
    line.on_trial_start(0, trials, trials[3])
    assert _line(capsys) == (
        "3/6 trials ended (1 finished, 1 stopped, 1 failed), 1 running | best val_acc 0.7000"
    )
    line.on_trial_start(0, trials, trials[4])
    line.on_trial_result(0, trials, trials[4], {"best_val_acc": 0.9})
    trials[4].last_result = {"done_trial": 1, "best_val_acc": 0.9}
    line.on_trial_complete(0, trials, trials[4])
    assert _line(capsys) == (
        "4/6 trials ended (2 finished, 1 stopped, 1 failed), 1 running | best val_acc 0.9000"
    )
    line.on_trial_start(0, trials, trials[5])
    trials[5].last_result = {"best_val_acc": 0.2}
    line.on_trial_complete(0, trials, trials[5])
    line.on_trial_error(0, trials, trials[3])
    assert _line(capsys) == (
        "6/6 trials ended (2 finished, 2 stopped, 2 failed), 0 running | best val_acc 0.9000"
    )


def test_a_retried_trial_is_running_again_not_ended(capsys):
    trials = [Saved("a", Trial.PENDING)]
    line = ProgressLine(total=1)
    line.on_trial_start(0, trials, trials[0])
    line.on_trial_start(0, trials, trials[0])  # restarted after a recoverable failure
    assert _line(capsys).startswith("0/1 trials ended (0 finished, 0 stopped, 0 failed), 1 running")
