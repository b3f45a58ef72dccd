"""A one-node local Ray cluster for tests: 2 CPUs, no dashboard, a small object store, a free GCS port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.cluster_utils import Cluster


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
