"""Lanes: calls in order within a lane, lanes at once, wait() until all ran, a failing call skipped."""

from __future__ import annotations

import pickle
import threading
import time

from cytotune.tracking.lanes import Lanes


def test_calls_of_a_lane_run_in_the_order_submitted():
    lanes = Lanes(threads=4)
    seen: list[int] = []
    for i in range(200):
        lanes.submit("a", lambda i=i: (time.sleep(0.0005 if i % 7 == 0 else 0), seen.append(i)))
    lanes.wait()
    assert seen == list(range(200))
    lanes.close()


def test_lanes_run_at_once():
    """Lane "a" blocks until lane "b" has run: serial execution would time out."""
    lanes = Lanes(threads=2)
    b_ran = threading.Event()
    order: list[str] = []
    lanes.submit("a", lambda: order.append("a" if b_ran.wait(timeout=10) else "a timed out"))
    lanes.submit("b", lambda: (order.append("b"), b_ran.set()))
    lanes.wait()
    assert order == ["b", "a"]
    lanes.close()


def test_wait_returns_after_every_submitted_call_and_a_failing_call_does_not_stop_its_lane(capsys):
    lanes = Lanes(threads=3)
    done: list[str] = []

    def fail() -> None:
        raise ConnectionError("server down")

    for lane in ("x", "y", "z"):
        lanes.submit(lane, lambda lane=lane: (time.sleep(0.05), done.append(lane + "1")))
        lanes.submit(lane, fail)
        lanes.submit(lane, lambda lane=lane: done.append(lane + "2"))
    lanes.wait()
    assert sorted(done) == ["x1", "x2", "y1", "y2", "z1", "z2"]
    assert capsys.readouterr().err.count("ConnectionError('server down')") == 3
    lanes.close()


def test_a_pickled_pool_is_idle_and_works():
    lanes = Lanes(threads=2)
    lanes.submit("a", lambda: None)
    lanes.wait()
    copy = pickle.loads(pickle.dumps(lanes))
    seen: list[int] = []
    copy.submit("a", lambda: seen.append(1))
    copy.close()
    assert seen == [1]
    lanes.close()
