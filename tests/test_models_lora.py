"""peft LoRA on split attention: exact at injection, only LoRA trains, counts, merge, export and reload."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from torch import nn

from cytotune.config import LoraSettings
from cytotune.errors import CytotuneError
from cytotune.models import build_backbone, load_backbone
from cytotune.models.attention import split_attention
from cytotune.models.lora import (
    add_lora,
    has_lora,
    load_adapter,
    load_lora_state_dict,
    lora_state_dict,
    lora_target_modules,
    merge_lora,
    save_adapter,
)
from cytotune.models.params import count_parameters, lora_parameter_count

TOL = 1e-5
FAMILIES = ["tiny_clip", "tiny_vit", "tiny_biomedclip"]
SUBSETS = [("q", "v"), ("q",), ("k", "o"), ("q", "k", "v", "o")]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def perturb_lora(backbone: nn.Module, seed: int = 0) -> None:
    """Give LoRA B non-zero values so the adapter changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in backbone.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("targets", SUBSETS)
def test_injected_equals_split_equals_original(name, targets):
    original = build_backbone(name)
    split = copy.deepcopy(original)
    split_attention(split)
    adapted = add_lora(copy.deepcopy(original), LoraSettings(targets=targets, rank=3, dropout=0.25))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = original(x)
        assert max_diff(reference, split(x)) <= TOL
        assert torch.equal(split(x), adapted(x))  # B = 0: the LoRA term adds exact zeros
        adapted.train()
        assert torch.equal(split(x), adapted(x))  # dropout acts on the LoRA input only
    layers = [m for m in adapted.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 2 * len(targets)
    for layer in layers:
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
        assert torch.count_nonzero(layer.lora_A["default"].weight) > 0
        assert layer.lora_dropout["default"].p == 0.25


def test_lora_layers_take_the_backbone_mode():
    assert not any(m.training for m in add_lora(build_backbone("tiny_clip"), LoraSettings()).modules())
    assert all(m.training for m in add_lora(build_backbone("tiny_vit").train(), LoraSettings()).modules())


def test_lora_a_is_kaiming_uniform_and_scaling_follows_settings():
    backbone = add_lora(build_backbone("tiny_vit"), LoraSettings(rank=4, alpha=2.0, scaling="rslora"))
    layer = next(m for m in backbone.modules() if isinstance(m, LoraLayer))
    a = layer.lora_A["default"].weight
    bound = 1 / math.sqrt(
        a.shape[1]
    )  # kaiming_uniform(a=sqrt(5)) on fan_in: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert a.abs().max().item() <= bound and a.abs().max().item() > 0.5 * bound
    assert layer.scaling["default"] == pytest.approx(2.0 / math.sqrt(4))
    standard = add_lora(build_backbone("tiny_vit"), LoraSettings(rank=4, alpha=2.0, scaling="standard"))
    layer = next(m for m in standard.modules() if isinstance(m, LoraLayer))
    assert layer.scaling["default"] == pytest.approx(2.0 / 4)


def test_only_lora_trains_and_frozen_weights_stay_put():
    torch.manual_seed(0)
    backbone = add_lora(build_backbone("tiny_clip"), LoraSettings(rank=2, targets=("q", "v"), dropout=0.0))
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in backbone.named_parameters() if not p.requires_grad}
    b_before = {n: p.detach().clone() for n, p in backbone.named_parameters() if "lora_B" in n}
    head = nn.Linear(backbone.spec.feature_dim, 3)
    optimizer = torch.optim.AdamW(
        [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-2
    )
    backbone.train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(backbone(x)), y).backward()
        optimizer.step()
    for name, parameter in backbone.named_parameters():
        if name in frozen_before:
            assert torch.equal(parameter, frozen_before[name]), name
    assert all(not torch.equal(dict(backbone.named_parameters())[n], b) for n, b in b_before.items())


def test_chosen_blocks_only():
    backbone = build_backbone("tiny_biomedclip")
    targets = lora_target_modules(backbone, LoraSettings(targets=("q", "o"), blocks=(1,)))
    assert targets == ["encoder.trunk.blocks.1.attn.q", "encoder.trunk.blocks.1.attn.o"]
    add_lora(backbone, LoraSettings(targets=("q", "o"), blocks=(1,)))
    assert sorted({n.split(".lora_")[0] for n in lora_state_dict(backbone)}) == sorted(targets)
    with pytest.raises(CytotuneError, match="out of range"):
        add_lora(build_backbone("tiny_vit"), LoraSettings(blocks=(2,)))
    with pytest.raises(CytotuneError, match="already carries LoRA"):
        add_lora(backbone, LoraSettings())


def test_vit_b16_q_v_rank_2_trains_73728_parameters():
    backbone = add_lora(build_backbone("clip_vit_b16"), LoraSettings(rank=2, targets=("q", "v")))
    trainable, total = count_parameters(backbone)
    assert trainable == 73_728 == lora_parameter_count(12, 768, ("q", "v"), 2)
    assert total == 86_192_640 + trainable


def test_vit_l14_qkvo_rank_16_trains_3_1_million_parameters():
    # Built on the meta device: shapes only, no 1.2 GB of random weights.
    backbone = add_lora(
        build_backbone("clip_vit_l14", device="meta"), LoraSettings(rank=16, targets=("q", "k", "v", "o"))
    )
    trainable, _ = count_parameters(backbone)
    assert trainable == 3_145_728 == lora_parameter_count(24, 1024, ("q", "k", "v", "o"), 16)


def test_count_parameters_counts_shared_tensors_once():
    layer = nn.Linear(4, 3)
    model = nn.Sequential(layer, layer)
    layer.bias.requires_grad_(False)
    assert count_parameters(model) == (12, 15)


@pytest.mark.parametrize("name", FAMILIES)
def test_merged_equals_adapted(name):
    backbone = add_lora(build_backbone(name), LoraSettings(rank=2, targets=("q", "k", "v", "o")))
    perturb_lora(backbone)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        adapted = backbone(x)
        assert max_diff(adapted, split_forward(name, x)) > 1e-3  # the adapter does change the output
        merged = merge_lora(backbone)
        assert not has_lora(merged) and not lora_state_dict(merged)
        assert max_diff(adapted, merged(x)) <= TOL


def split_forward(name: str, x: torch.Tensor) -> torch.Tensor:
    backbone = build_backbone(name)
    split_attention(backbone)
    return backbone(x)


def test_lora_state_dict_round_trip_and_mismatch():
    settings = LoraSettings(rank=2, targets=("q", "v"))
    source = add_lora(build_backbone("tiny_vit"), settings)
    perturb_lora(source, seed=5)
    target = add_lora(build_backbone("tiny_vit"), settings)
    load_lora_state_dict(target, lora_state_dict(source))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))
    other = add_lora(build_backbone("tiny_vit"), LoraSettings(rank=2, targets=("q",)))
    with pytest.raises(CytotuneError, match="do not fit"):
        load_lora_state_dict(other, lora_state_dict(source))


@pytest.mark.parametrize("name", FAMILIES)
def test_adapter_export_and_reload_give_the_same_outputs(tmp_path, name):
    settings = LoraSettings(
        rank=3, alpha=2.0, targets=("q", "k", "v", "o"), blocks=(0, 1), scaling="standard"
    )
    backbone = add_lora(load_backbone(name), settings)
    perturb_lora(backbone, seed=7)
    head = nn.Linear(backbone.spec.feature_dim, 3)
    classes = ("benign", "malignant", "other")
    folder = save_adapter(tmp_path / "adapter", backbone, head, settings, classes, name)
    meta = json.loads((folder / "cytotune_model.json").read_text())
    assert meta["backbone"] == name and meta["classes"] == list(classes) and meta["lora"]["rank"] == 3
    assert set(load_file(str(folder / "head.safetensors"))) == {"weight", "bias"}
    assert len(load_file(str(folder / "adapter_model.safetensors"))) == len(lora_state_dict(backbone))
    loaded, loaded_head, loaded_meta = load_adapter(folder)
    assert loaded_meta == meta
    x = torch.randn(2, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        assert torch.equal(head(backbone(x)), loaded_head(loaded(x)))


def test_save_adapter_checks_its_inputs_and_load_needs_an_adapter(tmp_path):
    settings = LoraSettings()
    backbone = add_lora(build_backbone("tiny_clip"), settings)
    head = nn.Linear(backbone.spec.feature_dim, 2)
    with pytest.raises(CytotuneError, match="backbone_name"):
        save_adapter(tmp_path, backbone, head, settings, ("a", "b"), "tiny_vit")
    with pytest.raises(CytotuneError, match="Linear head with 3 outputs"):
        save_adapter(tmp_path, backbone, head, settings, ("a", "b", "c"), "tiny_clip")
    with pytest.raises(CytotuneError, match="not a model folder"):
        load_adapter(tmp_path)
