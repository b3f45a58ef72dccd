"""A one-node local Ray cluster for tests (2 CPUs, no dashboard, a small object store, a free GCS port), and
a Tune callback that interrupts a study."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.cluster_utils import Cluster
from ray.tune import Callback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def one_node_ray(num_cpus: int = 2) -> Iterator[Cluster]:
    """Ray connected to a fresh one-node cluster, shut down (driver and cluster) on the way out."""
    if ray.is_initialized():
        ray.shutdown()
    head = {
        "num_cpus": num_cpus,
        "include_dashboard": False,
        "object_store_memory": 100 * 1024**2,
        "gcs_server_port": free_port(),
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


class InterruptAfter(Callback):
    """Interrupts the Tune run like Ctrl+C (Tune also takes SIGUSR1) once `count` trials have ended."""

    def __init__(self, count: int):
        self.count, self.ended = count, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended += 1
        if self.ended == self.count:
            os.kill(os.getpid(), signal.SIGUSR1)
