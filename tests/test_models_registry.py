"""Backbone registry: specs, weights resolution (hub cache, local files), errors, the `backbones` command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cytotune.cli import app
from cytotune.errors import CytotuneError
from cytotune.models import (
    Backbone,
    backbone_rows,
    build_backbone,
    get_backbone_spec,
    list_backbones,
    load_backbone,
    weights_status,
)
from cytotune.models.weights import find_cached_weights, resolve_weights

REAL = ["clip_vit_b16", "clip_vit_l14", "quilt_b16", "quilt_b32", "biomedclip", "uni", "vit_b16"]
TINY = ["tiny_clip", "tiny_vit", "tiny_biomedclip"]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in place of the machine's."""
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def put_in_hub_cache(hub: Path, repo: str, filename: str, payload: bytes) -> Path:
    """Lay out a file as huggingface_hub's cache stores it (refs/main -> snapshots/<commit>/file)."""
    commit = "0" * 40
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    target = folder / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    target.write_bytes(payload)
    return target


def test_registry_lists_every_backbone_real_ones_first():
    assert list_backbones() == REAL + TINY
    assert list_backbones(include_test=False) == REAL


@pytest.mark.parametrize(
    ("name", "library", "feature_dim", "feature", "mean", "std"),
    [
        ("clip_vit_b16", "open_clip", 512, "image_embedding", CLIP_MEAN, CLIP_STD),
        ("clip_vit_l14", "open_clip", 768, "image_embedding", CLIP_MEAN, CLIP_STD),
        ("quilt_b16", "open_clip", 512, "image_embedding", CLIP_MEAN, CLIP_STD),
        ("quilt_b32", "open_clip", 512, "image_embedding", CLIP_MEAN, CLIP_STD),
        ("biomedclip", "open_clip", 512, "image_embedding", CLIP_MEAN, CLIP_STD),
        ("uni", "timm", 1024, "pre_logits", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("vit_b16", "timm", 768, "pre_logits", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ],
)
def test_real_specs_follow_each_models_pretrained_config(name, library, feature_dim, feature, mean, std):
    spec = get_backbone_spec(name)
    assert (spec.library, spec.feature_dim, spec.feature, spec.input_size) == (
        library,
        feature_dim,
        feature,
        224,
    )
    assert spec.mean == pytest.approx(mean) and spec.std == pytest.approx(std)
    assert spec.hub_repo and spec.hub_files and not spec.test_size


def test_spec_identifiers_and_hub_repos():
    assert (get_backbone_spec("clip_vit_b16").identifier, get_backbone_spec("clip_vit_b16").pretrained) == (
        "ViT-B-16",
        "openai",
    )
    assert get_backbone_spec("clip_vit_l14").hub_repo == "timm/vit_large_patch14_clip_224.openai"
    # the authors' ViT: google/vit-base-patch16-224, Google's original in21k -> in1k weights (not augreg2)
    vit = get_backbone_spec("vit_b16")
    assert vit.identifier == "vit_base_patch16_224.orig_in21k_ft_in1k"
    assert vit.pretrained == "orig_in21k_ft_in1k"
    assert vit.hub_repo == "timm/vit_base_patch16_224.orig_in21k_ft_in1k"
    # QUILT as the paper states it (ViT-B/16); the authors' code's B/32 stays registered
    assert get_backbone_spec("quilt_b16").hub_repo == "wisdomik/QuiltNet-B-16"
    assert get_backbone_spec("quilt_b32").hub_repo == "wisdomik/QuiltNet-B-32"
    assert get_backbone_spec("uni").hub_files == ("pytorch_model.bin",) and get_backbone_spec("uni").gated


def test_unknown_backbone_error_lists_known_names():
    with pytest.raises(CytotuneError) as err:
        get_backbone_spec("resnet_9000")
    message = str(err.value)
    assert "resnet_9000" in message and "\n" not in message
    assert all(name in message for name in REAL + TINY)
    with pytest.raises(CytotuneError, match="unknown backbone"):
        load_backbone("resnet_9000")


@pytest.mark.parametrize("name", ["clip_vit_b16", "uni", "quilt_b32"])
def test_real_backbone_without_weights_fails_with_one_line_saying_what_to_fetch(empty_hub, name):
    spec = get_backbone_spec(name)
    with pytest.raises(CytotuneError) as err:
        load_backbone(name)
    message = str(err.value)
    assert "\n" not in message
    assert spec.hub_repo in message and spec.hub_files[0] in message
    assert str(empty_hub) in message and "--weights" in message
    if spec.gated:
        assert "request access" in message


def test_missing_local_weights_file_is_an_error(tmp_path):
    with pytest.raises(CytotuneError, match="not found"):
        load_backbone("vit_b16", weights=tmp_path / "nope.safetensors")
    with pytest.raises(CytotuneError, match="holds none of"):
        load_backbone("vit_b16", weights=tmp_path)


def test_hub_cache_lookup_finds_the_file_and_a_bad_file_is_not_loaded_silently(empty_hub):
    spec = get_backbone_spec("clip_vit_b16")
    assert weights_status(spec) == "local file needed"
    cached = put_in_hub_cache(empty_hub, spec.hub_repo, spec.hub_files[1], b"not a checkpoint")
    assert find_cached_weights(spec) == cached
    assert resolve_weights(spec, None) == cached
    assert weights_status(spec) == "cached"
    with pytest.raises(CytotuneError, match="cannot load weights file"):
        load_backbone("clip_vit_b16")


def test_test_size_backbones_are_seeded_and_need_no_weights(empty_hub):
    for name in TINY:
        spec = get_backbone_spec(name)
        assert spec.test_size and spec.input_size == 32 and weights_status(spec) == "test-size"
        first, second = load_backbone(name), load_backbone(name)
        assert isinstance(first, Backbone) and first.spec is spec and not first.training
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            out = first(x)
            assert out.shape == (2, spec.feature_dim)
            assert torch.equal(out, second(x))


def _other_weights(name: str) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        return {k: torch.randn_like(v) * 0.05 for k, v in build_backbone(name).encoder.state_dict().items()}


def test_open_clip_checkpoint_loads_vision_tower_only(tmp_path):
    # A full open_clip checkpoint: visual.* keys plus a text tower that must be dropped.
    for name in ["tiny_clip", "tiny_biomedclip"]:
        vision = _other_weights(name)
        checkpoint = {f"visual.{k}": v for k, v in vision.items()}
        checkpoint["text.token_embedding.weight"] = torch.zeros(10, 4)
        path = tmp_path / f"{name}.bin"
        torch.save(checkpoint, path)
        backbone = load_backbone(name, weights=path)
        assert backbone.weights_path == path
        for key, value in backbone.encoder.state_dict().items():
            assert torch.equal(value, vision[key]), key


def test_timm_checkpoint_with_classifier_loads_into_pre_logits_model(tmp_path):
    vision = _other_weights("tiny_vit")
    checkpoint = {**vision, "head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)}
    folder = tmp_path / "tiny_vit_download"
    folder.mkdir()
    path = folder / "model.safetensors"
    save_file(checkpoint, str(path))
    backbone = load_backbone("tiny_vit", weights=path)
    for key, value in backbone.encoder.state_dict().items():
        assert torch.equal(value, vision[key]), key


def test_checkpoint_that_does_not_fit_is_refused(tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file({"something.else": torch.zeros(3)}, str(path))
    with pytest.raises(CytotuneError, match="does not fit"):
        load_backbone("tiny_vit", weights=path)


def test_backbones_command_lists_the_registry(empty_hub):
    result = CliRunner().invoke(app, ["backbones"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split() == ["name", "library", "identifier", "input", "features", "weights", "text"]
    body = {line.split()[0]: line for line in lines[1:]}
    assert list(body) == REAL + TINY
    assert "local file needed" in body["uni"] and "1024" in body["uni"]
    assert "test-size" in body["tiny_clip"]
    assert "ViT-B-16 (openai)" in body["clip_vit_b16"]
    assert [name for name in REAL + TINY if body[name].endswith("yes")] == [
        "clip_vit_b16",
        "clip_vit_l14",
        "quilt_b16",
        "quilt_b32",
        "tiny_clip",
    ]
    assert [row["name"] for row in backbone_rows()] == REAL + TINY


def test_name_at_random_is_the_real_architecture_with_random_weights_asked_for_by_name():
    from cytotune.models import build_backbone, get_backbone_spec, load_backbone
    from cytotune.models.params import count_parameters

    real = get_backbone_spec("vit_b16")
    spec = get_backbone_spec("vit_b16@random")
    assert spec.name == "vit_b16@random" and spec.test_size and spec.hub_repo is None
    assert (spec.input_size, spec.mean, spec.feature_dim, spec.width) == (
        real.input_size,
        real.mean,
        real.feature_dim,
        real.width,
    )
    meta = build_backbone("clip_vit_b16@random", device="meta")
    assert count_parameters(meta)[1] == count_parameters(build_backbone("clip_vit_b16", device="meta"))[1]
    tiny = load_backbone("tiny_vit@random")
    assert tiny.spec.name == "tiny_vit"
    with pytest.raises(CytotuneError, match="unknown backbone 'resnet50@random'"):
        get_backbone_spec("resnet50@random")
