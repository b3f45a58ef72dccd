"""Typed configuration of one trial, validated with pydantic (the study schema is in study/spec.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from cytotune.yaml_backbone import YamlBackbone

LoraTarget = Literal["q", "k", "v", "o"]
Method = Literal["linear_probe", "lora", "knn", "simpleshot", "zero_shot"]
TRAINED_METHODS = ("linear_probe", "lora")  # methods that train with a learning rate (and a head)
FEATURE_METHODS = ("linear_probe", "knn", "simpleshot", "zero_shot")  # methods on the cached probe features
HeadInit = Literal["random", "text"]
DEFAULT_SPLIT = (0.7, 0.1, 0.2)  # train, val, test fractions of a dataset without an official split


def default_cache_dir() -> Path:
    """Where manifests of read-only data, image and feature caches live: $CYTOTUNE_CACHE or ~/.cache."""
    return Path(os.environ.get("CYTOTUNE_CACHE", Path.home() / ".cache" / "cytotune"))


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraSettings(Frozen):
    """Where and how LoRA is injected: h = Wx + scale * B A dropout(x)."""

    rank: int = Field(2, ge=1)
    alpha: float = Field(1.0, gt=0)
    dropout: float = Field(0.25, ge=0, lt=1)
    targets: tuple[LoraTarget, ...] = ("q", "v")
    scaling: Literal["rslora", "standard"] = "rslora"
    blocks: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _distinct_targets(self) -> LoraSettings:
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError("targets must be a non-empty subset of q, k, v, o without repeats")
        return self


class TrainSettings(Frozen):
    """Optimisation and evaluation settings shared by both trainers (search_spaces/README.md gives each
    default's source).

    validation: "full" validates every trial on the whole validation split; "fewshot" validates a few-shot
    trial on min(shots, 4) images per class of the validation split, seeded and nested like its train shots
    (the authors' code, Experiment 2); trials without shots always use the whole validation split.
    short_class: a class with fewer train images than the shots is an "error" naming it, or ("repeat") its
    images are repeated up to the shots (the authors' code drew such a class with replacement).
    """

    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    base_steps: int = Field(50, ge=0)
    steps_per_shot: int = Field(100, ge=1)
    epochs: int = Field(100, ge=1)
    probe_epochs: int = Field(100, ge=1)
    eval_every: int = Field(50, ge=1)
    max_steps: int | None = Field(None, ge=1)
    image_cache_size: int = Field(256, ge=8)
    augment: bool = True  # LoRA training batches: random resized crop + flip; False: the evaluation view
    validation: Literal["full", "fewshot"] = "full"
    short_class: Literal["error", "repeat"] = "error"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class PromptSettings(Frozen):
    """How the classes of a dataset are put into words for a vision-language backbone's text tower.

    templates: sentences with one `{}` where a class's text goes (default: data/prompts.py);
    classes: class name -> its text, or a list of texts (default: the dataset's own descriptions, else the
    class name). Each class's prompts are every template filled with each of its texts.
    """

    templates: tuple[str, ...] | None = Field(None, min_length=1)
    classes: dict[str, str | tuple[str, ...]] = Field(default_factory=dict)

    def __hash__(self) -> int:  # trial configs are hashed (cells): the class texts as sorted pairs
        return hash((self.templates, tuple(sorted(self.classes.items()))))

    @field_validator("templates", mode="after")
    @classmethod
    def _one_slot(cls, templates: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for template in templates or ():
            if template.count("{}") != 1:
                raise ValueError(f"expected each template to hold `{{}}` once, got {template!r}")
        return templates

    @field_validator("classes", mode="after")
    @classmethod
    def _texts(cls, classes: dict[str, str | tuple[str, ...]]) -> dict[str, str | tuple[str, ...]]:
        for name, text in classes.items():
            texts = (text,) if isinstance(text, str) else text
            if not texts or not all(t.strip() for t in texts):
                raise ValueError(f"{name}: expected a non-empty text or a non-empty list of texts")
        return classes


class TrialTemplate(Frozen):
    """A trial's settings, each field checked on its own: what a study cell fixes before its searched values
    and seed are set (the checks across fields, e.g. an lr for trained methods, come with TrialConfig)."""

    method: Method
    backbone: str
    backbone_definition: YamlBackbone | None = None  # a backbone defined in the study YAML, named `backbone`
    weights: Path | None = None
    dataset: str  # the dataset's name (its identity in keys, params and reports)
    layout: str | None = None  # the registered layout the root follows; None: the name is the layout
    root: Path
    level: Literal[1, 2, 3] = 3
    split: tuple[float, float, float] = DEFAULT_SPLIT
    split_seed: int = 0
    shots: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    lr: float | None = Field(None, gt=0)
    k: int | None = Field(None, ge=1)
    seed: int = 0
    head_init: HeadInit = "random"  # text: the head starts from the prompts' text embeddings
    prompts: PromptSettings | None = None  # the dataset's class prompts (zero_shot, head_init: text)
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings()
    cache_dir: Path = Field(default_factory=default_cache_dir)

    @property
    def uses_text(self) -> bool:
        """Whether the trial needs the backbone's text tower (zero_shot, or a text-initialised head)."""
        return self.method == "zero_shot" or self.head_init == "text"

    @property
    def backbone_ref(self) -> str | YamlBackbone:
        """The backbone as cytotune.models takes it: its YAML definition, else its registry name."""
        return self.backbone_definition if self.backbone_definition is not None else self.backbone

    @property
    def dataset_layout(self) -> str:
        """The registered layout (loader) that lists the root."""
        return self.layout or self.dataset

    def with_local_cache(self) -> Self:
        """The same settings with this machine's cache folder ($CYTOTUNE_CACHE or ~/.cache/cytotune): a
        study is planned on the driver, and each machine that prepares or runs its trials uses its own."""
        return self.model_copy(update={"cache_dir": default_cache_dir()})


class TrialConfig(TrialTemplate):
    """Everything one trial needs; trainers take this and nothing from Ray or MLflow."""

    @model_validator(mode="after")
    def _one_data_budget(self) -> TrialConfig:
        if self.backbone_definition is not None and self.backbone_definition.name != self.backbone:
            raise ValueError(
                f"backbone {self.backbone!r} but its definition is named {self.backbone_definition.name!r}"
            )
        if self.shots is not None and self.fraction is not None:
            raise ValueError("give shots or fraction, not both")
        trained = self.method in TRAINED_METHODS
        if trained != (self.lr is not None):
            raise ValueError(f"{self.method}: expected {'an lr' if trained else 'no lr (it does not train)'}")
        if (self.method == "knn") != (self.k is not None):
            raise ValueError(f"{self.method}: expected {'k' if self.method == 'knn' else 'no k (knn only)'}")
        if self.method == "zero_shot" and (self.shots is not None or self.fraction is not None):
            raise ValueError("zero_shot: uses no train images; expected no shots or fraction")
        if self.head_init == "text" and not trained:
            raise ValueError(f"{self.method}: has no head; expected head_init: random (text: probe, LoRA)")
        return self
