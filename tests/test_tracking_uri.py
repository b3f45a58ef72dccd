"""Tracking URIs checked before a study starts, trial params flattened, the report's reference parsed."""

from __future__ import annotations

import pytest

from cytotune.config import TrialConfig
from cytotune.errors import CytotuneError
from cytotune.report.paper import paper_linear_probe, parse_reference
from cytotune.tracking.schema import flatten_trial
from cytotune.tracking.uri import artifact_location, check_tracking, default_tracking_uri


def test_check_tracking_refuses_what_cannot_work(tmp_path):
    check_tracking(default_tracking_uri(tmp_path))
    with pytest.raises(CytotuneError, match="no such file; expected the MLflow database"):
        check_tracking(default_tracking_uri(tmp_path), must_exist=True)
    with pytest.raises(CytotuneError, match="folder .*nope does not exist"):
        check_tracking(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    with pytest.raises(CytotuneError, match="file store is not supported"):
        check_tracking(str(tmp_path / "mlruns"))
    with pytest.raises(CytotuneError, match="unknown scheme 'ftp'"):
        check_tracking("ftp://example.org/x")
    assert (
        artifact_location(default_tracking_uri(tmp_path), "demo") == (tmp_path / "mlruns" / "demo").as_uri()
    )
    assert artifact_location("http://127.0.0.1:5000", "demo") is None


def test_flatten_trial_gives_dotted_params_without_lora_for_probes(tmp_path):
    base = {"backbone": "uni", "dataset": "mlcc", "root": str(tmp_path)}
    lora = flatten_trial(
        TrialConfig.model_validate(
            {**base, "method": "lora", "lr": 1e-3, "shots": 4, "lora": {"rank": 16, "targets": list("qkvo")}}
        )
    )
    assert lora["lora.rank"] == "16" and lora["lora.targets"] == "q,k,v,o" and lora["shots"] == "4"
    assert lora["lr"] == "0.001" and lora["train.batch_size"] == "32" and "fraction" not in lora
    probe = flatten_trial(TrialConfig.model_validate({**base, "method": "linear_probe", "lr": 1e-2}))
    assert not any(name.startswith("lora.") for name in probe) and probe["method"] == "linear_probe"


def test_reference_and_paper_values():
    assert parse_reference("HierSwin=78.35") == ("HierSwin", 78.35)
    assert parse_reference("none") is None
    with pytest.raises(CytotuneError, match="expected LABEL=ACCURACY"):
        parse_reference("HierSwin")
    assert paper_linear_probe("uni", "hicervix") == 64.07
    assert paper_linear_probe("quilt_b32", "bcfc") == 100.0
    assert paper_linear_probe("uni", "hicervix", level=1) is None
    assert paper_linear_probe("tiny_clip", "bcfc") is None
