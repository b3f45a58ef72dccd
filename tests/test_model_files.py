"""A trial's model files: the probe head saved like the LoRA adapter, the adapter in peft's own format (peft
loads it), and the README's way to load either gives the trial's own logits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from cytotune.config import TrialConfig
from cytotune.data.synthetic import generate_synthetic
from cytotune.models import get_backbone_spec, load_backbone
from cytotune.models.attention import split_attention
from cytotune.models.lora import load_adapter
from cytotune.train import run_trial
from cytotune.train.features import cached_features
from cytotune.train.trial_data import trial_data

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def trials(tmp_path_factory, one_torch_thread):
    """A linear probe (tiny_clip) and a short LoRA trial (tiny_vit) with their model files."""
    tmp = tmp_path_factory.mktemp("model-files")
    root = generate_synthetic(tmp / "synthetic", classes=3, per_class=12, size=32, seed=4)
    train = {"device": "cpu", "image_cache_size": 32, "batch_size": 8, "eval_batch_size": 64}
    base = dict(dataset="synthetic", root=root, seed=1, cache_dir=tmp / "cache")
    probe_cfg = TrialConfig(
        method="linear_probe", backbone="tiny_clip", lr=0.1, train={**train, "probe_epochs": 5}, **base
    )
    lora_cfg = TrialConfig(
        method="lora",
        backbone="tiny_vit",
        lr=0.05,
        shots=2,
        lora={"rank": 2, "targets": ("q", "v")},
        train={**train, "max_steps": 6, "eval_every": 3, "warmup_steps": 1},
        **base,
    )
    probe = run_trial(probe_cfg, out_dir=tmp / "probe")
    lora = run_trial(lora_cfg, out_dir=tmp / "lora")
    return probe_cfg, probe, lora_cfg, lora


def test_the_probe_head_is_the_chosen_one(trials):
    cfg, result, _, _ = trials
    folder = result.artifacts["head"]
    config = json.loads((folder / "cytotune_model.json").read_text())
    spec = get_backbone_spec("tiny_clip")
    assert (config["method"], config["backbone"], config["lora"]) == ("linear_probe", "tiny_clip", None)
    assert config["preprocess"]["input_size"] == spec.input_size and config["preprocess"]["cache_size"] == 32
    assert config["classes"] == result.classes and not (folder / "adapter_config.json").exists()
    head = load_file(str(folder / "head.safetensors"))
    data = trial_data(cfg)
    features = cached_features(
        data.manifest,
        "tiny_clip",
        None,
        cache_dir=cfg.cache_dir,
        batch_size=64,
        device=torch.device("cpu"),
    ).features
    logits = torch.from_numpy(features[data.test]) @ head["weight"].T + head["bias"]
    accuracy = float(np.mean(logits.argmax(1).numpy() == data.labels(data.test)))
    assert accuracy == pytest.approx(result.test_acc, abs=1e-12)


def test_peft_loads_the_lora_adapter_it_wrote(trials):
    _, _, _, result = trials
    folder = result.artifacts["adapter"]
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
    ours, head, config = load_adapter(folder)
    plain = load_backbone(config["backbone"])
    split_attention(plain)
    peft_model = PeftModel.from_pretrained(plain, str(folder)).eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(peft_model(images), ours.eval()(images))
        assert not torch.equal(peft_model(images), load_backbone("tiny_vit")(images))


def readme_loading_snippet() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    (snippet,) = [block for block in blocks if "cytotune_model.json" in block]
    return snippet


@pytest.mark.parametrize("kind", ["probe", "lora"])
def test_the_readme_s_way_to_load_a_model_gives_its_logits(trials, kind):
    _, probe, _, lora = trials
    folder = probe.artifacts["head"] if kind == "probe" else lora.artifacts["adapter"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    scope = {"folder": str(folder), "images": images}
    exec(readme_loading_snippet(), scope)
    config = json.loads((folder / "cytotune_model.json").read_text())
    head = torch.nn.Linear(config["head"]["in_features"], config["head"]["out_features"])
    head.load_state_dict(load_file(str(folder / "head.safetensors")))
    backbone = load_adapter(folder)[0] if kind == "lora" else load_backbone(config["backbone"])
    with torch.no_grad():
        expected = head(backbone.eval()(images))
    assert scope["logits"].shape == (2, 3)
    assert torch.equal(scope["logits"], expected)
