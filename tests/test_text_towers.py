"""Text for vision-language backbones against open_clip itself: zero-shot logits and text-initialised heads
equal a hand computation with open_clip's CLIP.encode_image / encode_text on the same checkpoint; backbones
without a text tower, bad prompts and misplaced fields are refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from pydantic import ValidationError
from safetensors.torch import load_file

from cytotune.config import PromptSettings, TrainSettings, TrialConfig
from cytotune.data import open_eval_cache
from cytotune.data.prompts import class_prompts
from cytotune.data.synthetic import generate_synthetic
from cytotune.data.transforms import eval_transform
from cytotune.errors import CytotuneError
from cytotune.models.registry import get_backbone_spec
from cytotune.models.text import load_text_encoder, text_tower_spec
from cytotune.study.grid import expand_cells
from cytotune.study.prepare import check_registries, prepare_data
from cytotune.study.spec import load_study
from cytotune.tracking.schema import flatten_trial
from cytotune.train import run_trial
from cytotune.train.baselines import run_baseline
from cytotune.train.linear_probe import probe_features
from cytotune.train.lora_finetune import LoraRun
from cytotune.train.packed_lora import check_one_cell
from cytotune.train.text_classifier import text_classifier, text_head, zero_shot_logits
from cytotune.train.trial_data import trial_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# tiny_clip's vision tower (models/zoo.py) with a text tower, written out here as open_clip configs
VISION = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16}
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
LOGIT_SCALE = 30.0
PROMPTS = PromptSettings(
    templates=("a photo of {}.", "a cell with {}."),
    classes={"class_0": "a small pale nucleus", "class_3": ("a large dark nucleus", "an irregular nucleus")},
)


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory) -> tuple[CLIP, Path]:
    """A whole open_clip CLIP (tiny_clip's image tower + a text tower), random but not as cytotune seeds it,
    saved as one checkpoint file: the image and the text tower load from the same file."""
    torch.manual_seed(123)
    model = CLIP(32, VISION, TEXT, quick_gelu=True).eval()
    with torch.no_grad():
        model.logit_scale.fill_(np.log(LOGIT_SCALE))
    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip_full.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_synthetic(root, classes=4, per_class=12, size=40, seed=3)
    return root


def trial(root: Path, cache: Path, weights: Path | None, **fields) -> TrialConfig:
    settings = {"device": "cpu", "image_cache_size": 32, "eval_batch_size": 16, **fields.pop("train", {})}
    return TrialConfig(
        backbone="tiny_clip",
        weights=weights,
        dataset="synthetic",
        root=root,
        prompts=PROMPTS,
        train=TrainSettings(**settings),
        cache_dir=cache,
        **fields,
    )


def hand_class_rows(model: CLIP, classes: list[str]) -> torch.Tensor:
    """CLIP's zero-shot classifier by hand: per class, the normalised mean of normalised prompt embeddings."""
    tokenizer = SimpleTokenizer()
    texts = {
        "class_0": ["a small pale nucleus"],
        "class_3": ["a large dark nucleus", "an irregular nucleus"],
    }
    rows = []
    for name in classes:
        words = texts.get(name, [name.replace("_", " ")])
        prompts = [
            template.replace("{}", w) for w in words for template in ("a photo of {}.", "a cell with {}.")
        ]
        with torch.no_grad():
            embedded = model.encode_text(tokenizer(prompts), normalize=True)
        mean = embedded.mean(0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


def hand_image_embeddings(model: CLIP, cfg: TrialConfig, rows: np.ndarray) -> torch.Tensor:
    spec = get_backbone_spec("tiny_clip")
    data = trial_data(cfg)
    images = open_eval_cache(data.manifest, spec.input_size, cfg.cache_dir).batch(rows)
    with torch.no_grad():
        return model.encode_image(eval_transform(images, spec.input_size, spec.mean, spec.std))


def test_zero_shot_logits_equal_open_clip_on_the_same_checkpoint(clip_checkpoint, synthetic, tmp_path):
    model, path = clip_checkpoint
    cfg = trial(synthetic, tmp_path / "cache", path, method="zero_shot")
    data = trial_data(cfg)
    classes = list(data.manifest.classes)
    classifier = text_classifier(cfg, classes)
    assert classifier.logit_scale == pytest.approx(LOGIT_SCALE, rel=1e-6)
    torch.testing.assert_close(classifier.weight, hand_class_rows(model, classes), atol=1e-5, rtol=1e-5)

    features = torch.from_numpy(probe_features(cfg, data, torch.device("cpu")).features)
    ours = zero_shot_logits(features[torch.from_numpy(data.test)], classifier)
    image = hand_image_embeddings(model, cfg, data.test)
    text = hand_class_rows(model, classes)
    expected = LOGIT_SCALE * (image / image.norm(dim=-1, keepdim=True)) @ text.T
    torch.testing.assert_close(ours.float(), expected, atol=1e-4, rtol=1e-4)

    result = run_baseline(cfg)
    probabilities = torch.softmax(expected.double(), 1)
    labels = torch.from_numpy(data.labels(data.test))
    assert result.test_acc == pytest.approx(float((probabilities.argmax(1) == labels).double().mean()))
    nll = float(-torch.log(probabilities[torch.arange(len(labels)), labels]).mean())
    assert result.test_nll == pytest.approx(nll, rel=1e-4)
    assert result.trainable_params == 0 and result.steps == 0


def test_text_initialised_probe_head_is_the_scaled_text_rows(clip_checkpoint, synthetic, tmp_path):
    model, path = clip_checkpoint
    cfg = trial(synthetic, tmp_path / "cache", path, method="linear_probe", lr=1e-3, head_init="text")
    data = trial_data(cfg)
    classes = list(data.manifest.classes)
    train_images = hand_image_embeddings(model, cfg, data.train)
    weight, bias = text_head(text_classifier(cfg, classes), train_images)
    scale = LOGIT_SCALE / float(train_images.norm(dim=-1).mean())
    torch.testing.assert_close(weight / scale, hand_class_rows(model, classes), atol=1e-5, rtol=1e-5)
    assert torch.equal(bias, torch.zeros(len(classes)))


def test_text_heads_barely_trained_keep_their_start_and_predict_as_zero_shot(
    clip_checkpoint, synthetic, tmp_path
):
    """With a vanishing learning rate, the saved heads of a probe and a LoRA trial are still the scaled text
    rows (built by hand from open_clip), and they predict every test image as zero-shot does."""
    model, path = clip_checkpoint
    cache = tmp_path / "cache"
    zero = run_trial(trial(synthetic, cache, path, method="zero_shot"))
    tiny = {"warmup_steps": 0, "min_lr": 0.0}
    probe_cfg = trial(
        synthetic,
        cache,
        path,
        method="linear_probe",
        lr=1e-12,
        head_init="text",
        train={**tiny, "probe_epochs": 1},
    )
    probe = run_trial(probe_cfg, out_dir=tmp_path / "probe")
    lora_train = {**tiny, "max_steps": 1, "eval_every": 1, "batch_size": 4}
    lora_cfg = trial(synthetic, cache, path, method="lora", lr=1e-12, head_init="text", train=lora_train)
    lora = run_trial(lora_cfg, out_dir=tmp_path / "lora")
    data = trial_data(probe_cfg)
    classes = list(data.manifest.classes)
    rows = hand_class_rows(model, classes)
    for folder, train_rows in (("probe/head", data.train), ("lora/adapter", data.train[:16])):
        head = load_file(tmp_path / folder / "head.safetensors")
        train_images = hand_image_embeddings(model, probe_cfg, train_rows)
        scale = LOGIT_SCALE / float(train_images.norm(dim=-1).mean())
        torch.testing.assert_close(head["weight"], scale * rows, atol=1e-5, rtol=1e-5)
        assert head["bias"].abs().max() < 1e-6
    assert probe.confusion_matrix == zero.confusion_matrix == lora.confusion_matrix
    assert probe.test_correct == zero.test_correct == lora.test_correct


def test_lora_head_starts_from_text_rows_scaled_by_the_train_features(clip_checkpoint, synthetic, tmp_path):
    model, path = clip_checkpoint
    cfg = trial(synthetic, tmp_path / "cache", path, method="lora", lr=1e-3, head_init="text", shots=2)
    data = trial_data(cfg)
    run = LoraRun(cfg, data, torch.device("cpu"))
    classes = list(data.manifest.classes)
    train_images = hand_image_embeddings(model, cfg, data.train)
    scale = LOGIT_SCALE / float(train_images.norm(dim=-1).mean())
    torch.testing.assert_close(
        run.head.weight.detach() / scale, hand_class_rows(model, classes), atol=1e-5, rtol=1e-5
    )
    assert not run.head.bias.detach().any()
    with pytest.raises(CytotuneError, match="head_init: text is for separate LoRA trials"):
        check_one_cell([cfg])


def test_test_size_text_tower_is_seeded_and_a_vision_only_checkpoint_is_refused(clip_checkpoint, tmp_path):
    a, b = load_text_encoder("tiny_clip"), load_text_encoder("tiny_clip")
    torch.testing.assert_close(a.embed(["a cell"]), b.embed(["a cell"]), atol=0, rtol=0)
    assert a.logit_scale == pytest.approx(1 / 0.07)
    model, _ = clip_checkpoint
    vision = tmp_path / "vision_only.pt"
    torch.save({f"visual.{k}": v for k, v in model.visual.state_dict().items()}, vision)
    with pytest.raises(CytotuneError) as err:
        load_text_encoder("tiny_clip", vision)
    message = str(err.value)
    assert "\n" not in message and "holds no text tower" in message and str(vision) in message


@pytest.mark.parametrize("backbone", ["tiny_vit", "uni", "vit_b16", "biomedclip"])
def test_a_backbone_without_a_text_tower_is_refused_before_anything_starts(backbone, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: text\nbackbones: [tiny_clip]\ndatasets: [{name: synthetic, root: /nowhere/synthetic}]\n"
        "methods:\n  - {method: knn, k: 3}\n"
        f"  - {{method: zero_shot, backbones: [tiny_clip, {backbone}]}}\n"
    )
    with pytest.raises(CytotuneError) as err:
        check_registries(load_study(path))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: methods[1].backbones[1]: backbone '{backbone}' has no text tower")
    assert "expected one of: clip_vit_b16, clip_vit_l14, quilt_b16, quilt_b32, tiny_clip" in message
    with pytest.raises(CytotuneError, match="no text tower"):
        text_tower_spec(backbone)
    assert text_tower_spec("clip_vit_b16@random") is text_tower_spec("clip_vit_b16")


def test_zero_shot_cells_take_one_seed_and_misplaced_fields_are_refused(tmp_path):
    head = (
        "name: s\nbackbones: [tiny_clip]\ndatasets: [{name: synthetic, root: /d/synthetic}]\nseeds: [4, 5]\n"
    )
    path = tmp_path / "ok.yaml"
    path.write_text(
        head + "methods:\n  - {method: zero_shot}\n  - {method: linear_probe, lr: 0.1, head_init: text}\n"
    )
    zero, probe = expand_cells(load_study(path))
    assert zero.seeds == (4,) and zero.n_trials == 1 and probe.seeds == (4, 5)
    assert probe.trial({}, 4).config.head_init == "text"
    params = flatten_trial(zero.trial({}, 4).config.model_copy(update={"prompts": PROMPTS}))
    assert json.loads(params["prompts"]) == PROMPTS.model_dump(mode="json")
    assert params["head_init"] == "random"
    assert not any(name.startswith("prompts.") for name in params)
    bad = {
        "{method: zero_shot, shots: [1]}": "zero_shot uses no train images",
        "{method: zero_shot, seeds: [1, 2]}": "zero_shot depends on no seed",
        "{method: zero_shot, lr: 0.1}": "zero_shot does not use it",
        "{method: knn, k: 3, head_init: text}": "knn has no head",
        "{method: lora, lr: 0.1, head_init: words}": "head_init",
    }
    for block, reason in bad.items():
        path.write_text(head + f"methods:\n  - {block}\n")
        with pytest.raises(CytotuneError, match=reason) as err:
            load_study(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_prompts_default_per_dataset_and_unknown_classes_are_refused():
    mlcc = class_prompts("mlcc", "mlcc", ["NILM", "LSIL", "HSIL", "SCC"], None)
    assert mlcc[3] == [
        "a cytology image of squamous cell carcinoma cells.",
        "a microscopy image of squamous cell carcinoma cells.",
    ]
    own = class_prompts("folder", "herlev", ["light_dysplastic"], PromptSettings(templates=("{}",)))
    assert own == [["light dysplastic"]]
    with pytest.raises(CytotuneError) as err:
        class_prompts("bcfc", "bcfc", ["benign", "malignant"], PromptSettings(classes={"malign": "x"}))
    assert str(err.value) == (
        "prompts.classes of dataset 'bcfc': 'malign' not a class of it; expected some of: benign, malignant"
    )
    with pytest.raises(ValidationError, match="`{}` once"):
        PromptSettings(templates=("a photo of a cell.",))


def test_prompts_naming_a_class_the_dataset_lacks_stop_the_study_before_trials(
    synthetic, tmp_path, monkeypatch
):
    monkeypatch.setenv("CYTOTUNE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: s\nbackbones: [tiny_clip]\nseeds: [1]\ntrain: {device: cpu, image_cache_size: 32}\n"
        f"datasets: [{{name: synthetic, root: {synthetic}, prompts: {{classes: {{class_9: x}}}}}}]\n"
        "methods:\n  - {method: knn, k: 1}\n  - {method: lora, lr: 0.1, head_init: text}\n"
    )
    spec = load_study(path)
    with pytest.raises(CytotuneError) as err:
        prepare_data(spec, expand_cells(spec), features=False, say=lambda _: None)
    assert str(err.value) == (
        f"{path}: methods[1]: prompts.classes of dataset 'synthetic': 'class_9' not a class of it; "
        "expected some of: class_0, class_1, class_2, class_3"
    )


def test_a_yaml_defined_backbone_is_refused_for_text_methods_in_one_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: text\nbackbones: [{name: mine, open_clip: /nowhere/model}]\n"
        "datasets: [{name: synthetic, root: /nowhere/synthetic}]\n"
        "methods:\n  - {method: zero_shot}\n"
    )
    with pytest.raises(CytotuneError) as err:
        check_registries(load_study(path))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: backbones[0]: backbone 'mine' is defined in the YAML")
    assert "expected a registry backbone with one" in message
