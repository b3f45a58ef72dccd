"""Backbones defined in a study YAML: tiny timm and open_clip models saved in the Hugging Face hub-cache
layout under a temporary HF_HUB_CACHE, read back (outputs, preprocessing), split for LoRA, trained, and
refused where they should be (bad entries, missing cache entries, attention LoRA cannot split)."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from test_own_data_ray import small_ray  # noqa: F401  (fixture: a one-node Ray on a free port)
from timm.models._hub import save_for_hf
from typer.testing import CliRunner

from cytotune.cli import app
from cytotune.config import LoraSettings
from cytotune.data.synthetic import generate_synthetic
from cytotune.errors import CytotuneError
from cytotune.models import get_backbone_spec, load_backbone
from cytotune.models.hub import check_yaml_backbone
from cytotune.models.lora import add_lora, load_adapter, lora_target_modules
from cytotune.study.cost import forward_flops
from cytotune.study.grid import expand_cells, expand_trials
from cytotune.study.launch import study_callback
from cytotune.study.prepare import check_registries
from cytotune.study.runner import run_study
from cytotune.study.spec import load_study
from cytotune.tracking.runs import runs_frame
from cytotune.tracking.schema import flatten_trial
from cytotune.train.features import weights_identity
from cytotune.yaml_backbone import YamlBackbone

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TIMM_REPO, CLIP_REPO, BEIT_REPO = "owner/tiny-vit", "owner/tiny-clip", "owner/tiny-beit"
TRUNK_REPO = "owner/tiny-biomedclip"
MEAN, STD = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
}
TRUNK_CFG = {  # BiomedCLIP's kind of tower: open_clip TimmModel, timm ViT trunk, CLS token, linear projection
    **CLIP_CFG,
    "vision_cfg": {
        "timm_model_name": "cytotune_tiny_vit",
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 32,
    },
}
VIT = YamlBackbone(name="tiny_hub_vit", timm=f"hf-hub:{TIMM_REPO}")
CLIP = YamlBackbone(name="tiny_hub_clip", open_clip=f"hf-hub:{CLIP_REPO}")
BEIT = YamlBackbone(name="tiny_hub_beit", timm=f"hf-hub:{BEIT_REPO}")
TRUNK = YamlBackbone(name="tiny_hub_trunk", open_clip=f"hf-hub:{TRUNK_REPO}")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def snapshot(hub: Path, repo: str) -> Path:
    """A repo's snapshot folder in huggingface_hub's cache layout, refs/main naming its commit."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    (folder / "snapshots" / COMMIT).mkdir(parents=True)
    return folder / "snapshots" / COMMIT


@dataclass
class Saved:
    """The hub cache and the models saved in it (random weights, eval mode)."""

    hub: Path
    vit: torch.nn.Module
    clips: dict[str, torch.nn.Module]  # by definition name


def save_open_clip(hub: Path, repo: str, model_cfg: dict) -> torch.nn.Module:
    """A random open_clip CLIP saved as open_clip's hub repos hold it, with its own mean and std."""
    clip = open_clip.model.CLIP(**model_cfg).eval()
    folder = snapshot(hub, repo)
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    preprocess = {"mean": list(STD), "std": list(MEAN), "interpolation": "bicubic", "resize_mode": "shortest"}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return clip


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Saved:
    hub = tmp_path_factory.mktemp("hf") / "hub"
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_base_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5
    ).eval()
    folder = snapshot(hub, TIMM_REPO)
    save_for_hf(vit, str(folder), safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(mean=list(MEAN), std=list(STD))
    (folder / "config.json").write_text(json.dumps(config))

    clips = {
        CLIP.name: save_open_clip(hub, CLIP_REPO, CLIP_CFG),
        TRUNK.name: save_open_clip(hub, TRUNK_REPO, TRUNK_CFG),
    }

    beit = timm.create_model(
        "beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0
    )
    save_for_hf(beit, str(snapshot(hub, BEIT_REPO)), safe_serialization=True)
    return Saved(hub, vit, clips)


@pytest.fixture
def hub(saved, monkeypatch) -> Saved:
    monkeypatch.setenv("HF_HUB_CACHE", str(saved.hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return saved


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_timm_preprocessing_and_shape_come_from_its_config(hub):
    config = json.loads((hub.hub / f"models--owner--tiny-vit/snapshots/{COMMIT}/config.json").read_text())
    spec = get_backbone_spec(VIT)
    assert spec.input_size == config["pretrained_cfg"]["input_size"][-1] == 32
    assert (spec.mean, spec.std) == (MEAN, STD)
    assert (spec.library, spec.feature, spec.feature_dim, spec.width, spec.layers) == (
        "timm",
        "cls",
        64,
        64,
        2,
    )
    assert spec.identifier == f"hf-hub:{TIMM_REPO}" and spec.definition == VIT


@pytest.mark.parametrize("feature", ["cls", "avg"])
def test_timm_outputs_equal_the_saved_model(hub, feature):
    definition = VIT.model_copy(update={"feature": feature})
    backbone = load_backbone(definition)
    x = images()
    with torch.no_grad():
        tokens = hub.vit.forward_features(x)  # after the final norm, (B, 1 + patches, 64)
        expected = tokens[:, 0] if feature == "cls" else tokens[:, 1:].mean(dim=1)
        assert torch.equal(backbone(x), expected)
    assert backbone.weights_path == hub.hub / f"models--owner--tiny-vit/snapshots/{COMMIT}/model.safetensors"


@pytest.mark.parametrize("definition", [CLIP, TRUNK], ids=["vision_transformer", "timm_trunk"])
def test_open_clip_preprocessing_and_outputs_equal_the_saved_model(hub, definition):
    spec = get_backbone_spec(definition)
    assert (spec.input_size, spec.mean, spec.std) == (32, STD, MEAN)  # preprocess_cfg's, not the defaults
    assert (spec.library, spec.feature, spec.feature_dim, spec.layers) == (
        "open_clip",
        "image_embedding",
        32,
        2,
    )
    backbone = load_backbone(definition)
    x = images()
    with torch.no_grad():
        assert torch.equal(backbone(x), hub.clips[definition.name].encode_image(x))


@pytest.mark.parametrize("definition", [VIT, CLIP, TRUNK], ids=["timm", "open_clip", "open_clip_timm_trunk"])
def test_lora_split_equals_the_original_before_training(hub, definition):
    original = load_backbone(definition)
    settings = LoraSettings(targets=("q", "k", "v", "o"), rank=2)
    adapted = add_lora(load_backbone(definition), settings)
    assert len([n for n, _ in adapted.named_modules() if n.endswith(".q.lora_A")]) == 2
    x = images()
    with torch.no_grad():
        assert (adapted(x) - original(x)).abs().max().item() <= 1e-5


def test_unknown_attention_is_refused_in_one_line(hub):
    assert check_yaml_backbone(BEIT, lora=False).layers == 1  # a probe needs no split
    with pytest.raises(CytotuneError) as err:
        check_yaml_backbone(BEIT, lora=True)
    message = str(err.value)
    assert "\n" not in message and message.startswith("tiny_hub_beit: LoRA is not available")
    assert "timm.models.beit.Attention" in message
    with pytest.raises(CytotuneError, match="timm.models.beit.Attention"):
        lora_target_modules(load_backbone(BEIT), LoraSettings())


def test_missing_config_or_weights_say_where_and_what(hub, tmp_path, monkeypatch):
    absent = YamlBackbone(name="absent", timm="hf-hub:owner/absent")
    with pytest.raises(CytotuneError) as err:
        get_backbone_spec(absent)
    expected = f"{hub.hub}/models--owner--absent/snapshots/<commit>/config.json"
    assert "\n" not in str(err.value) and expected in str(err.value) and "never downloads" in str(err.value)

    partial = tmp_path / "hub"
    shutil.copy(
        hub.hub / f"models--owner--tiny-vit/snapshots/{COMMIT}/config.json", snapshot(partial, TIMM_REPO)
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(partial))
    with pytest.raises(CytotuneError) as err:
        load_backbone(VIT)
    assert "\n" not in str(err.value)
    assert (
        f"fetch model.safetensors from the Hugging Face repo {TIMM_REPO} into the hub cache {partial}"
        in str(err.value)
    )


def test_local_folder_or_file_source(hub, tmp_path):
    folder = tmp_path / "dino"
    shutil.copytree(hub.hub / f"models--owner--tiny-vit/snapshots/{COMMIT}", folder)
    x = images()
    expected = hub.vit.forward_features(x)[:, 0].detach()
    for source in (folder, folder / "model.safetensors"):
        backbone = load_backbone(YamlBackbone(name="dino", timm=str(source)))
        assert backbone.weights_path == folder / "model.safetensors"
        with torch.no_grad():
            assert torch.equal(backbone(x), expected)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CytotuneError, match=f"^dino: {empty}/config.json not found: expected a folder"):
        get_backbone_spec(YamlBackbone(name="dino", timm=str(empty)))


@pytest.mark.parametrize(
    ("repo", "file", "section", "key", "value"),
    [
        (TIMM_REPO, "config.json", "pretrained_cfg", "interpolation", "bilinear"),
        (CLIP_REPO, "open_clip_config.json", "preprocess_cfg", "resize_mode", "squash"),
    ],
)
def test_a_resize_the_pipeline_does_not_do_is_refused(hub, tmp_path, repo, file, section, key, value):
    folder = tmp_path / "model"
    shutil.copytree(hub.hub / f"models--{repo.replace('/', '--')}/snapshots/{COMMIT}", folder)
    config = json.loads((folder / file).read_text())
    config[section][key] = value
    (folder / file).write_text(json.dumps(config))
    library = "timm" if file == "config.json" else "open_clip"
    with pytest.raises(CytotuneError) as err:
        get_backbone_spec(YamlBackbone(name="odd", **{library: str(folder)}))
    assert str(err.value).startswith(f"odd: {folder / file} asks for {key} {value!r}; cytotune's image")


def write_study(tmp_path: Path, backbones: list, methods: list | None = None, name: str = "hub") -> Path:
    study = {
        "name": name,
        "backbones": backbones,
        "datasets": [{"name": "synthetic", "root": str(tmp_path / "synthetic")}],
        "seeds": [1],
        "methods": methods or [{"method": "linear_probe", "lr": 0.1}],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "x", "timm": "hf-hub:a/b", "open_clip": "hf-hub:a/b"},
            "backbones[1]: expected one source, `timm` or `open_clip`, got both",
        ),
        ({"name": "x"}, "backbones[1]: expected one source, `timm` or `open_clip`, got neither"),
        (
            {"name": "x", "timm": "hf-hub:a/b", "feature": "mean"},
            "backbones[1].feature: expected 'cls', 'avg' or 'image_embedding', got 'mean'",
        ),
        (
            {"name": "x", "open_clip": "hf-hub:a/b", "feature": "cls"},
            "backbones[1]: feature: 'cls' is not among the open_clip features; expected image_embedding",
        ),
        (
            {"name": "x", "timm": "hf-hub:nope"},
            "backbones[1].timm: expected hf-hub:owner/repo or a local folder, got 'hf-hub:nope'",
        ),
        (
            {"name": "x", "tim": "hf-hub:a/b"},
            "backbones[1].tim: unknown field; expected one of: name, timm, open_clip, feature",
        ),
        ({"name": "x y", "timm": "hf-hub:a/b"}, "backbones[1].name: expected a string matching"),
        (7, "backbones[1]: expected a valid string, got 7"),
    ],
)
def test_bad_entries_give_one_line(tmp_path, entry, message):
    path = write_study(tmp_path, ["tiny_clip", entry])
    with pytest.raises(CytotuneError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


def test_a_name_has_one_definition_and_not_a_registry_name(tmp_path, hub):
    other = {"name": "tiny_hub_vit", "timm": "hf-hub:owner/other"}
    methods = [{"method": "linear_probe", "lr": 0.1, "backbones": [other]}]
    path = write_study(tmp_path, [VIT.model_dump(exclude_none=True)], methods)
    with pytest.raises(
        CytotuneError, match=r"methods\[0\].backbones\[0\]: backbone 'tiny_hub_vit' is also defined"
    ):
        load_study(path)
    clash = load_study(write_study(tmp_path, [{"name": "tiny_clip", "timm": f"hf-hub:{TIMM_REPO}"}]))
    with pytest.raises(
        CytotuneError, match=r"backbones\[0\]: tiny_clip: a registered backbone has this name"
    ):
        check_registries(clash)
    beit = write_study(tmp_path, [BEIT.model_dump(exclude_none=True)], [{"method": "lora", "lr": 0.1}])
    with pytest.raises(CytotuneError, match=r"backbones\[0\]: tiny_hub_beit: LoRA is not available"):
        check_registries(load_study(beit))


def test_cells_and_trial_configs_carry_the_definition(tmp_path, hub):
    local = tmp_path / "models" / "clip"
    shutil.copytree(hub.hub / f"models--owner--tiny-clip/snapshots/{COMMIT}", local)
    entries = [
        "tiny_clip",
        VIT.model_dump(exclude_none=True),
        {"name": "local_clip", "open_clip": "models/clip"},
    ]
    methods = [
        {"method": "linear_probe", "lr": 0.1},
        {
            "method": "lora",
            "lr": 0.1,
            "backbones": ["tiny_hub_vit"],
        },  # the plain name refers to the definition
    ]
    spec = load_study(write_study(tmp_path, entries, methods))
    check_registries(spec)
    keys = [cell.cell_key for cell in expand_cells(spec)]
    assert keys[:3] == [
        f"linear_probe/{name}/synthetic/full" for name in ("tiny_clip", "tiny_hub_vit", "local_clip")
    ]
    trials = {
        plan.config.backbone: plan for plan in expand_trials(spec) if plan.config.method == "linear_probe"
    }
    lora = [plan for plan in expand_trials(spec) if plan.config.method == "lora"]
    assert lora[0].config.backbone_definition == VIT
    config = pickle.loads(pickle.dumps(trials["local_clip"].ray_config()))["trial"]  # what a Ray worker gets
    assert config.backbone_definition == YamlBackbone(name="local_clip", open_clip=str(local))  # resolved
    assert get_backbone_spec(config.backbone_ref).mean == STD
    assert trials["tiny_clip"].config.backbone_definition is None
    params = flatten_trial(trials["tiny_hub_vit"].config)
    assert (params["backbone"], params["backbone_definition.name"]) == ("tiny_hub_vit", "tiny_hub_vit")
    assert params["backbone_definition.timm"] == f"hf-hub:{TIMM_REPO}"
    assert not any(name.startswith("backbone_def") for name in flatten_trial(trials["tiny_clip"].config))
    identity = weights_identity(VIT, None)
    assert identity["file"] == str(hub.hub / f"models--owner--tiny-vit/snapshots/{COMMIT}/model.safetensors")


def test_cytotune_train_with_a_yaml_backbone(tmp_path, hub):
    root = generate_synthetic(tmp_path / "synthetic", classes=2, per_class=12, size=32, seed=0)
    common = [
        "--dataset",
        "synthetic",
        "--root",
        str(root),
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    runner = CliRunner()
    probe = ["train", "--method", "linear_probe", "--backbone", "dino", "--timm", f"hf-hub:{TIMM_REPO}"]
    result = runner.invoke(app, [*probe, "--lr", "0.1", "--probe-epochs", "2", "--json", *common])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["test_acc"] >= 0
    out = tmp_path / "out"
    lora = ["train", "--method", "lora", "--backbone", "plip_like", "--open-clip", f"hf-hub:{CLIP_REPO}"]
    result = runner.invoke(
        app, [*lora, "--lr", "0.01", "--max-steps", "2", "--out", str(out), "--json", *common]
    )
    assert result.exit_code == 0, result.output
    backbone, head, meta = load_adapter(out / "adapter")
    assert meta["backbone_definition"] == {
        "name": "plip_like",
        "timm": None,
        "open_clip": f"hf-hub:{CLIP_REPO}",
        "feature": None,
    }
    assert backbone.spec.mean == STD and head.in_features == 32
    bad = runner.invoke(app, [*probe[:-2], "--feature", "cls", "--lr", "0.1", *common])
    assert isinstance(bad.exception, CytotuneError)  # the console entry point prints it, exits 2
    assert str(bad.exception) == (
        "cytotune train: backbone_definition: expected one source, `timm` or `open_clip`, got neither"
    )


def test_backbones_lists_a_study_s_definitions(tmp_path, hub):
    local = tmp_path / "clip"
    shutil.copytree(hub.hub / f"models--owner--tiny-clip/snapshots/{COMMIT}", local)
    entries = [
        VIT.model_dump(exclude_none=True),
        {"name": "local_clip", "open_clip": str(local)},
        {"name": "absent", "timm": "hf-hub:owner/absent"},
    ]
    path = write_study(tmp_path, entries)
    result = CliRunner().invoke(app, ["backbones", "--study", str(path), "--json"])
    assert result.exit_code == 0, result.output
    records = {record["name"]: record for record in json.loads(result.output)}
    assert records["tiny_hub_vit"]["input_size"] == 32 and records["tiny_hub_vit"]["feature"] == "cls"
    assert (records["tiny_hub_vit"]["mean"], records["tiny_hub_vit"]["weights"]) == (list(MEAN), "cached")
    assert (records["local_clip"]["std"], records["local_clip"]["weights"]) == (list(MEAN), "local folder")
    assert records["absent"] == {
        "name": "absent",
        "library": "timm",
        "identifier": "hf-hub:owner/absent",
        "weights": "config not found",
    }
    table = CliRunner().invoke(app, ["backbones", "--study", str(path)]).output.splitlines()
    assert [line.split()[0] for line in table[-3:]] == ["tiny_hub_vit", "local_clip", "absent"]


def test_cost_counts_a_yaml_backbone_s_forward(hub, tmp_path):
    from test_study_cost import vit_forward_flops

    hand = vit_forward_flops(tokens=17, width=64, hidden=256, depth=2, patch=8, patches=16)
    assert forward_flops(VIT) == hand
    path = write_study(tmp_path, [VIT.model_dump(exclude_none=True)])
    result = CliRunner().invoke(app, ["cost", str(path), "--size", "synthetic=100:2", "--json"])
    assert result.exit_code == 0, result.output
    lines = json.loads(result.output)
    assert {line["backbone"] for line in lines} == {"tiny_hub_vit"}
    features = next(line for line in lines if line["part"] == "features")
    assert features["flops"] == features["forwards"] * hand


STUDY = """
name: hub_study
backbones:
  - {{name: tiny_hub_vit, timm: "hf-hub:{timm}", feature: avg}}
  - {{name: tiny_hub_clip, open_clip: "hf-hub:{clip}"}}
datasets: [{{name: synthetic, root: {root}}}]
seeds: [1]
train: {{device: cpu, image_cache_size: 32, batch_size: 8, probe_epochs: 2, max_steps: 2}}
methods:
  - {{method: linear_probe, lr: 0.1}}
  - {{method: lora, lr: 0.01, backbones: [tiny_hub_clip]}}
"""


@pytest.mark.slow
@pytest.mark.usefixtures("hub", "small_ray")  # in this order: the workers inherit HF_HUB_CACHE
def test_a_study_on_ray_with_yaml_backbones(tmp_path, mlflow_sqlite_uri):
    """The workers get only the trial configs (and their own environment's hub cache)."""
    root = generate_synthetic(tmp_path / "synthetic", classes=2, per_class=12, size=32, seed=0)
    path = tmp_path / "hub.yaml"
    path.write_text(STUDY.format(timm=TIMM_REPO, clip=CLIP_REPO, root=root))
    spec = load_study(path)
    tracking = study_callback(spec, expand_cells(spec), mlflow_sqlite_uri)
    outcome = run_study(spec, storage=tmp_path / "ray", callbacks=[tracking], say=lambda _: None)
    assert outcome.counts()["finished"] == 3 and not outcome.interrupted
    runs = runs_frame("hub_study", mlflow_sqlite_uri).set_index("cell_key")
    assert set(runs.index) == {
        "linear_probe/tiny_hub_vit/synthetic/full",
        "linear_probe/tiny_hub_clip/synthetic/full",
        "lora/tiny_hub_clip/synthetic/full/rank=2,targets=qv",
    }
    vit = runs.loc["linear_probe/tiny_hub_vit/synthetic/full"]
    definition = (vit["backbone_definition.timm"], vit["backbone_definition.feature"])
    assert definition == (f"hf-hub:{TIMM_REPO}", "avg")
    assert runs["test_acc"].between(0, 1).all()


def test_a_rerun_study_keeps_the_definition(tmp_path, mlflow_sqlite_uri):
    """`cytotune best --rerun` writes the YAML backbone's definition, not just its name (no hub cache needed:
    the fake study only tracks)."""
    from tracking_fakes import run_fake_study

    from cytotune.tracking.callback import MlflowCallback
    from cytotune.tracking.rerun import write_rerun

    entry = {"name": "dino", "timm": "hf-hub:owner/dino", "feature": "avg"}
    path = write_study(tmp_path, [entry], name="defined")
    text = path.read_text()
    callback = MlflowCallback("defined", mlflow_sqlite_uri, study_yaml=text)
    run_fake_study(callback, expand_trials(load_study(path)), tmp_path / "ckpt")
    again = expand_trials(load_study(write_rerun("defined", tmp_path / "rerun.yaml", mlflow_sqlite_uri)))
    expected = YamlBackbone(name="dino", timm="hf-hub:owner/dino", feature="avg")
    assert again and {t.config.backbone_definition for t in again} == {expected}
