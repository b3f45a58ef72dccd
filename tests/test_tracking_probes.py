"""MLflow's per-request Databricks probes find their modules absent at once once cytotune's tracking layer
is loaded: no import search per request, and the same request headers."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from cytotune.tracking.probes import PROBED, mark_absent_probes

# counts the import searches for the probed modules while MLflow builds 10 requests' headers, before and
# after cytotune.tracking is imported; prints both counts and both headers as JSON
SCRIPT = """
import collections, json, sys
from mlflow.tracking.request_header.registry import resolve_request_headers

searched = collections.Counter()

class Spy:
    def find_spec(self, name, path=None, target=None):
        searched[name] += 1
        return None

def ten_requests():
    searched.clear()
    sys.meta_path.insert(0, Spy())
    headers = [resolve_request_headers() for _ in range(10)][-1]
    sys.meta_path.pop(0)
    return dict(searched), headers

resolve_request_headers()  # its first call imports what it needs
before = ten_requests()
import cytotune.tracking
after = ten_requests()
print(json.dumps({"before": before, "after": after}))
"""


def test_mlflow_requests_search_no_import_once_cytotune_tracking_is_loaded():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    (searched_before, headers_before), (searched_after, headers_after) = figures["before"], figures["after"]
    # the premise: MLflow searches for its probes at each request (MLflow 3.17: dbruntime five times a
    # request, pyspark twice; neither is installed here)
    assert searched_before.get("dbruntime", 0) >= 10
    assert not set(searched_after) & set(PROBED)
    assert headers_after == headers_before


def test_only_modules_that_cannot_be_found_are_marked_absent():
    absent = "cytotune_probe_that_is_not_installed"
    try:
        assert mark_absent_probes(("json", "wave", absent)) == [absent]
        assert sys.modules.get("wave", "not imported") is not None  # installed: left to import as usual
        with pytest.raises(ModuleNotFoundError, match="halted"):
            importlib.import_module(absent)
    finally:
        sys.modules.pop(absent, None)
