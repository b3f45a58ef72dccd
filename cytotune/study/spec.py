"""A study YAML validated into StudySpec: grid axes make cells, the `search` block lists searched fields.

`load_study` turns every error into one line naming the file, the field and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cytotune.config import (
    DEFAULT_SPLIT,
    TRAINED_METHODS,
    Frozen,
    HeadInit,
    LoraSettings,
    LoraTarget,
    Method,
    PromptSettings,
    TrainSettings,
    TrialConfig,
)
from cytotune.errors import CytotuneError
from cytotune.metric_names import OBJECTIVE, STEP
from cytotune.study.storage import is_uri
from cytotune.yaml_backbone import YamlBackbone

SEARCHABLE_LORA = ("rank", "alpha", "dropout", "targets", "scaling")
ENTRY_TAGS = ("backbone-name", "backbone-definition")  # pydantic's union tags, left out of error paths


def _entry_kind(value: object) -> str:
    return ENTRY_TAGS[1] if isinstance(value, (dict, YamlBackbone)) else ENTRY_TAGS[0]


# A `backbones:` entry: a registry name, or a mapping defining a backbone by its source
BackboneEntry = Annotated[
    Annotated[str, Tag(ENTRY_TAGS[0])] | Annotated[YamlBackbone, Tag(ENTRY_TAGS[1])],
    Discriminator(_entry_kind),
]


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _grid_of(value: object, check, expected: str) -> tuple:
    """Scalar or non-empty list of scalars passing `check`, as a tuple; else ValueError naming `expected`."""
    values = _as_list(value)
    if not values or not all(check(v) for v in values):
        raise ValueError(f"expected {expected} or a list of them, got {value!r}")
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"expected {expected} or a list of them without repeats, got {value!r}")
    return tuple(values)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_targets(v: object) -> bool:
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(t, str) for t in v):
        return False
    return len(set(v)) == len(v) and all(t in ("q", "k", "v", "o") for t in v)


class OptunaDimension(Frozen):
    """A searched field drawn by Optuna: loguniform/uniform/int between low and high, or categorical."""

    optuna: Literal["loguniform", "uniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> OptunaDimension:
        if self.optuna == "categorical":
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("expected `choices: [...]` (and no low/high) for a categorical distribution")
            return self
        if self.low is None or self.high is None or self.choices is not None:
            raise ValueError(f"expected `low` and `high` (and no choices) for a {self.optuna} distribution")
        if not self.low < self.high:
            raise ValueError(f"expected low < high, got low={self.low} high={self.high}")
        if self.optuna == "loguniform" and self.low <= 0:
            raise ValueError(f"expected low > 0 for a loguniform distribution, got {self.low}")
        if self.optuna == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"expected integer low and high, got low={self.low} high={self.high}")
        return self


class DatasetEntry(Frozen):
    """A dataset axis value: its name (its identity in cell keys, MLflow params and reports; default: the
    root folder's name), the registered layout its root follows (default: the name), root, level, split,
    and the class prompts of vision-language methods (default: data/prompts.py)."""

    root: Path
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    layout: str | None = None
    level: Literal[1, 2, 3] = 3
    split: tuple[float, float, float] = DEFAULT_SPLIT
    split_seed: int = 0
    prompts: PromptSettings | None = None

    @field_validator("root", mode="after")
    @classmethod
    def _resolve_root(cls, root: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("data_dir")
        root = root.expanduser()
        return root if root.is_absolute() or base is None else Path(os.path.normpath(Path(base) / root))

    @property
    def dataset(self) -> str:
        """The dataset's name."""
        return self.name or self.root.name

    @property
    def registered_layout(self) -> str:
        """The registered layout (loader) that lists the root: `layout`, else the name."""
        return self.layout or self.dataset

    @property
    def label(self) -> str:
        """The dataset as it appears in cell keys: the name, with the level when it is not 3."""
        return self.dataset if self.level == 3 else f"{self.dataset}-level{self.level}"

    def identity(self) -> tuple:
        """What a name stands for within a study: layout, root, split and split seed (levels may differ)."""
        return (self.registered_layout, self.root, self.split, self.split_seed)


def _distinct_datasets(entries: tuple[DatasetEntry, ...] | None) -> tuple[DatasetEntry, ...] | None:
    """Entries of one datasets list: no two with the same name (at the same level)."""
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries or ()):
        if entry.label in seen:
            level = "" if entry.level == 3 else f" at level {entry.level}"
            raise ValueError(
                f"name {entry.dataset!r}{level} is given twice ([{seen[entry.label]}] and [{index}]); "
                "expected a distinct `name` for each dataset (the layout goes in `layout`)"
            )
        seen[entry.label] = index
    return entries


class LoraGrid(Frozen):
    """LoRA settings where every field may be one value or a list (a grid axis: one cell per value)."""

    rank: tuple[int, ...] = (LoraSettings.model_fields["rank"].default,)
    alpha: tuple[float, ...] = (LoraSettings.model_fields["alpha"].default,)
    dropout: tuple[float, ...] = (LoraSettings.model_fields["dropout"].default,)
    targets: tuple[tuple[LoraTarget, ...], ...] = (LoraSettings.model_fields["targets"].default,)
    scaling: tuple[Literal["rslora", "standard"], ...] = (LoraSettings.model_fields["scaling"].default,)
    blocks: tuple[int, ...] | None = None

    @field_validator("rank", mode="before")
    @classmethod
    def _rank(cls, v: object) -> tuple:
        return _grid_of(v, lambda x: _is_int(x) and x >= 1, "a positive integer")

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha(cls, v: object) -> tuple:
        return _grid_of(v, lambda x: _is_number(x) and x > 0, "a positive number")

    @field_validator("dropout", mode="before")
    @classmethod
    def _dropout(cls, v: object) -> tuple:
        return _grid_of(v, lambda x: _is_number(x) and 0 <= x < 1, "a number in [0, 1)")

    @field_validator("scaling", mode="before")
    @classmethod
    def _scaling(cls, v: object) -> tuple:
        return _grid_of(v, lambda x: x in ("rslora", "standard"), "'rslora' or 'standard'")

    @field_validator("targets", mode="before")
    @classmethod
    def _targets(cls, v: object) -> tuple:
        grid = [v] if _is_targets(v) else _as_list(v)
        if not grid or not all(_is_targets(t) for t in grid):
            expected = "a list of distinct targets from q, k, v, o or a list of such lists"
            raise ValueError(f"expected {expected}, got {v!r}")
        return tuple(tuple(t) for t in grid)

    def axes(self) -> dict[str, tuple]:
        """The grid fields (name -> values), in a fixed order."""
        return {name: getattr(self, name) for name in SEARCHABLE_LORA}


class AshaSettings(Frozen):
    """Early stopping by ASHA within each cell: rungs at grace_period * reduction_factor**k steps."""

    grace_period: int = Field(ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    max_steps: int = Field(ge=1)
    metric: Literal[OBJECTIVE] = OBJECTIVE
    time_attr: Literal[STEP] = STEP

    @model_validator(mode="after")
    def _grace_below_max(self) -> AshaSettings:
        if self.grace_period > self.max_steps:
            got = f"{self.grace_period} > {self.max_steps}"
            raise ValueError(f"expected grace_period <= max_steps, got {got}")
        return self


class OptunaSettings(Frozen):
    """How an Optuna search draws: `startup` suggestions per cell at random before TPE models the results
    (default: samples / 3 rounded up, at most 10, so a search of 10 samples or fewer is not all random)."""

    startup: int | None = Field(None, ge=0)

    def startup_trials(self, samples: int) -> int:
        """TPE's n_startup_trials for a cell drawing `samples` suggestions."""
        return self.startup if self.startup is not None else default_startup(samples)


def default_startup(samples: int) -> int:
    """Random suggestions before TPE, by default: a third of the samples (rounded up), 1 to 10."""
    return max(1, min(10, -(-samples // 3)))


class TrialResources(Frozen):
    """What one trial of a method asks of the cluster; fractional GPUs below one let trials share a GPU.
    gpu_memory_gb: the memory of the cluster's GPUs, against which a pack's estimate is checked (default: the
    first GPU torch sees on the machine that launches the study; packs are not checked without either)."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)
    allow_cpu_fallback: bool = False
    gpu_memory_gb: float | None = Field(None, gt=0)

    @field_validator("gpus", mode="after")
    @classmethod
    def _whole_above_one(cls, gpus: float) -> float:
        if gpus > 1 and not float(gpus).is_integer():
            raise ValueError(f"expected a fraction below 1 or a whole number of GPUs, got {gpus}")
        return gpus


class MethodBlock(Frozen):
    """One method of a study with its grid axes (overriding the study's), searched fields and settings."""

    method: Method
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    backbones: tuple[BackboneEntry, ...] | None = Field(None, min_length=1)
    datasets: tuple[DatasetEntry, ...] | None = Field(None, min_length=1)
    seeds: tuple[int, ...] | None = Field(None, min_length=1)
    shots: tuple[int, ...] | None = None
    fractions: tuple[float, ...] | None = None
    lr: float | None = Field(None, gt=0)
    k: int | None = Field(None, ge=1)
    head_init: HeadInit = "random"
    search: dict[str, tuple[Any, ...] | OptunaDimension] = Field(default_factory=dict)
    samples: int | None = Field(None, ge=1)
    optuna: OptunaSettings = OptunaSettings()
    lora: LoraGrid = LoraGrid()
    train: TrainSettings = TrainSettings()
    asha: AshaSettings | None = None
    resources: TrialResources = TrialResources()
    pack: bool = False

    _datasets = field_validator("datasets", mode="after")(_distinct_datasets)

    @field_validator("shots", mode="before")
    @classmethod
    def _shots(cls, v: object) -> tuple | None:
        return None if v is None else _grid_of(v, lambda x: _is_int(x) and x >= 1, "a positive integer")

    @field_validator("fractions", mode="before")
    @classmethod
    def _fractions(cls, v: object) -> tuple | None:
        if v is None:
            return None
        return _grid_of(v, lambda x: _is_number(x) and 0 < x <= 1, "a number in (0, 1]")

    @field_validator("search", mode="before")
    @classmethod
    def _search(cls, v: object) -> object:
        if not isinstance(v, dict):
            return v
        out = {}
        for path, dim in v.items():
            if path not in searchable_fields():
                raise ValueError(f"cannot search {path!r}; expected one of: {', '.join(searchable_fields())}")
            out[path] = _optuna_dimension(path, dim) if isinstance(dim, dict) else _as_list(dim)
            if out[path] == []:
                raise ValueError(f"{path}: expected a list of values or an optuna distribution, got []")
            for value in [] if isinstance(dim, dict) else out[path]:
                _check_searched_value(path, value)
        return out

    @model_validator(mode="after")
    def _consistent(self) -> MethodBlock:
        if self.shots is not None and self.fractions is not None:
            raise ValueError("expected shots or fractions, not both")
        uses_optuna = any(isinstance(d, OptunaDimension) for d in self.search.values())
        if uses_optuna and self.samples is None:
            raise ValueError("expected `samples` (Optuna suggestions per cell) with an optuna search")
        if not uses_optuna and self.samples is not None:
            raise ValueError("`samples` is for optuna searches; expected no samples with a grid search")
        if not uses_optuna and "optuna" in self.model_fields_set:
            raise ValueError("`optuna` settings are for optuna searches; expected none with a grid search")
        startup = self.optuna.startup
        if uses_optuna and startup is not None and startup > self.samples:
            raise ValueError(f"optuna.startup: expected at most samples ({self.samples}), got {startup}")
        self._check_method_fields()
        self._check_zero_shot()
        self._check_pack()
        for path in self.search:
            if path.startswith("lora.") and path[5:] in self.lora.model_fields_set:
                raise ValueError(f"{path} is both in `search` and in `lora`; expected it in one of them")
        return self

    def _check_method_fields(self) -> None:
        """lr for the trained methods, k for knn, each fixed or searched, never both, never elsewhere."""
        needs = {"lr": self.method in TRAINED_METHODS, "k": self.method == "knn"}
        for name, needed in needs.items():
            given, searched = getattr(self, name) is not None, name in self.search
            if needed and not (given or searched):
                raise ValueError(f"expected `{name}` or a search over {name}")
            if given and searched:
                raise ValueError(f"{name} is both fixed and searched; expected one of them")
            if not needed and (given or searched):
                users = "linear_probe and lora" if name == "lr" else "knn"
                raise ValueError(f"{name}: {self.method} does not use it ({users} only); expected no {name}")

    def _check_zero_shot(self) -> None:
        """zero_shot uses no train image and no seed; head_init: text is for the methods with a head."""
        if self.head_init == "text" and self.method not in TRAINED_METHODS:
            raise ValueError(f"head_init: {self.method} has no head; expected it with linear_probe or lora")
        if self.head_init == "text" and self.pack and self.method == "lora":
            raise ValueError("pack: a LoRA pack starts its heads at random; expected head_init: random")
        if self.method != "zero_shot":
            return
        if self.shots is not None or self.fractions is not None:
            raise ValueError("zero_shot uses no train images; expected no shots or fractions")
        if self.seeds is not None and len(self.seeds) > 1:
            raise ValueError(f"seeds: zero_shot depends on no seed; expected one, got {list(self.seeds)}")
        if self.search or self.asha is not None:
            raise ValueError("zero_shot searches and trains nothing; expected no search and no asha")

    def _check_pack(self) -> None:
        """`pack: true` only where one pass trains a whole cell: LoRA or linear probe, grid over lr alone,
        no early stopping for probes (their sweep has none)."""
        if not self.pack:
            return
        if self.method not in TRAINED_METHODS:
            raise ValueError(
                f"pack: {self.method} trains nothing to pack; expected pack only with lora or linear_probe"
            )
        others = sorted(set(self.search) - {"lr"})
        if others or any(isinstance(d, OptunaDimension) for d in self.search.values()):
            got = f"a search over {', '.join(others)}" if others else "an optuna search"
            raise ValueError(
                f"pack: a pack trains configurations that differ in lr and seed only; expected a grid search "
                f"over lr alone, got {got}"
            )
        if self.asha is not None and self.method == "linear_probe":
            raise ValueError(
                "pack: a packed linear-probe sweep has no early stopping; expected no asha with pack"
            )

    @property
    def label(self) -> str:
        """The block's name in cell keys: its `name`, else its method."""
        return self.name or self.method


def _optuna_dimension(path: str, dim: dict) -> OptunaDimension:
    try:
        return OptunaDimension.model_validate(dim)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        reason = first["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
        raise ValueError(f"{path}{'.' + where if where else ''}: {reason}") from None


def _check_searched_value(path: str, value: object) -> None:
    section, _, name = path.rpartition(".")
    model = {"": TrialConfig, "lora": LoraSettings, "train": TrainSettings}[section]
    info = model.model_fields[name]
    try:
        TypeAdapter(Annotated[(info.annotation, *info.metadata)]).validate_python(value)
    except ValidationError as err:
        reason = err.errors(include_url=False)[0]["msg"].replace("Input should be", "expected")
        raise ValueError(f"{path}: {reason}, got {value!r}") from None


def searchable_fields() -> tuple[str, ...]:
    """Dotted names of the TrialConfig fields a study may search: lr, k (knn), lora.*, train.*."""
    train = (f"train.{f}" for f in TrainSettings.model_fields)
    return ("lr", "k", *(f"lora.{f}" for f in SEARCHABLE_LORA), *train)


class StudySpec(Frozen):
    """A whole study: name, shared grid axes, method blocks, tracking and Ray storage, fault tolerance."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data_dir: Path | None = None
    backbones: tuple[BackboneEntry, ...] | None = Field(None, min_length=1)
    datasets: tuple[DatasetEntry, ...] | None = Field(None, min_length=1)
    seeds: tuple[int, ...] = Field((1, 2, 3), min_length=1)
    weights: dict[str, Path] = Field(default_factory=dict)
    train: TrainSettings = TrainSettings()
    methods: tuple[MethodBlock, ...] = Field(min_length=1)
    tracking_uri: str | None = None
    storage: str | None = None  # a local folder or a URI (s3://, gs://, file://) that Ray Tune writes to
    max_failures: int = Field(2, ge=0)
    checkpoint_every_s: float = Field(60.0, ge=0)  # a trial saves its state at most this often (0: each eval)
    _source: Path | None = PrivateAttr(None)
    _text: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _axes_given(self) -> StudySpec:
        for i, block in enumerate(self.methods):
            for axis in ("backbones", "datasets"):
                if getattr(block, axis) is None and getattr(self, axis) is None:
                    raise ValueError(f"methods[{i}].{axis}: missing; expected it here or at top level")
        return self

    _datasets = field_validator("datasets", mode="after")(_distinct_datasets)

    @model_validator(mode="after")
    def _one_definition_per_name(self) -> StudySpec:
        """A backbone name stands for one backbone in the whole study: a YAML definition given again (in
        another block) must be the same; elsewhere the plain name refers to it."""
        first: dict[str, tuple[str, YamlBackbone]] = {}
        for where, entry in self._backbone_entries():
            if isinstance(entry, str):
                continue
            seen_at, seen = first.setdefault(entry.name, (where, entry))
            if seen != entry:
                raise ValueError(
                    f"{where}: backbone {entry.name!r} is also defined at {seen_at} with another definition; "
                    "expected one definition per name (elsewhere, the plain name refers to it)"
                )
        return self

    def _backbone_entries(self) -> list[tuple[str, str | YamlBackbone]]:
        scopes = [("", self.backbones)]
        scopes += [(f"methods[{i}].", block.backbones) for i, block in enumerate(self.methods)]
        return [
            (f"{scope}backbones[{j}]", entry)
            for scope, entries in scopes
            for j, entry in enumerate(entries or ())
        ]

    def backbone_definitions(self) -> list[YamlBackbone]:
        """The backbones the study defines by their source, each once, in the order they first appear."""
        found: dict[str, YamlBackbone] = {}
        for _, entry in self._backbone_entries():
            if not isinstance(entry, str):
                found.setdefault(entry.name, entry)
        return list(found.values())

    def backbone_definition(self, name: str) -> YamlBackbone | None:
        """The study's YAML definition of backbone `name`, None when it names a registry backbone."""
        return next((d for d in self.backbone_definitions() if d.name == name), None)

    @model_validator(mode="after")
    def _one_dataset_per_name(self) -> StudySpec:
        """A name stands for one dataset in the whole study (blocks may list it again, at other levels)."""
        first: dict[str, tuple[str, DatasetEntry]] = {}
        scopes = [("", self.datasets)] + [(f"methods[{i}].", b.datasets) for i, b in enumerate(self.methods)]
        for scope, entries in scopes:
            for j, entry in enumerate(entries or ()):
                where, seen = first.setdefault(entry.dataset, (f"{scope}datasets[{j}]", entry))
                if seen.identity() != entry.identity():
                    raise ValueError(
                        f"{scope}datasets[{j}]: name {entry.dataset!r} is also {where} with another "
                        f"{_difference(seen, entry)}; expected one dataset per name"
                    )
        return self

    @property
    def source(self) -> Path | None:
        """The YAML file this study was loaded from (None when built in code)."""
        return self._source

    @property
    def text(self) -> str | None:
        """The YAML text as read by load_study (None when built in code)."""
        return self._text

    def where(self) -> str:
        """How errors name this study: its file, else its name."""
        return str(self._source) if self._source is not None else self.name

    def block_seeds(self, block: MethodBlock) -> tuple[int, ...]:
        """The block's seeds: its own, else the study's (only the first for zero_shot, which has no seed)."""
        seeds = block.seeds or self.seeds
        return seeds[:1] if block.method == "zero_shot" else seeds

    def block_train(self, block: MethodBlock) -> TrainSettings:
        """The block's training settings: the study's `train`, overridden by the block's."""
        merged = self.train.model_dump(include=self.train.model_fields_set)
        merged.update(block.train.model_dump(include=block.train.model_fields_set))
        return TrainSettings(**merged)


def _difference(a: DatasetEntry, b: DatasetEntry) -> str:
    fields = ("registered_layout", "root", "split", "split_seed")
    differing = [f for f in fields if getattr(a, f) != getattr(b, f)]
    return ", ".join(f.replace("registered_", "") for f in differing)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model holding the field at `loc` (to list the fields it accepts)."""
    model: type[BaseModel] | None = StudySpec
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        candidates = list(_type_args(field.annotation))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def _type_args(annotation: Any):
    """An annotation and every type nested in it (optionals, tuples, unions, Annotated)."""
    yield annotation
    for arg in get_args(annotation):
        yield from _type_args(arg)


def format_validation_error(where: str, err: ValidationError) -> str:
    """One line for the first error of a validation: `file: field.path: expected ..., got ...`."""
    first = err.errors(include_url=False)[0]
    loc, kind, msg = first["loc"], first["type"], first["msg"]
    loc = tuple(part for part in loc if part not in ENTRY_TAGS)
    field = _loc(loc)
    if not field:
        return f"{where}: {msg.removeprefix('Value error, ')}"
    if kind == "extra_forbidden":
        model = _model_at(loc)
        known = ", ".join(model.model_fields) if model else "none"
        return f"{where}: {field}: unknown field; expected one of: {known}"
    if kind == "string_pattern_mismatch":
        pattern = first.get("ctx", {}).get("pattern")
        return f"{where}: {field}: expected a string matching {pattern}, got {first.get('input')!r}"
    if kind == "missing":
        return f"{where}: {field}: missing; expected a value"
    if kind == "value_error":
        return f"{where}: {field}: {msg.removeprefix('Value error, ')}"
    text = msg.replace("Input should be", "expected").replace("input should be", "expected")
    return f"{where}: {field}: {text}, got {first.get('input')!r}"


def load_study(path: str | Path) -> StudySpec:
    """Read a study YAML into a StudySpec; relative dataset roots resolve against data_dir or the YAML's
    folder, relative data_dir, storage, weights and YAML backbone sources against the YAML's folder."""
    path = Path(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except OSError as err:
        raise CytotuneError(f"{path}: cannot read the study file: {err.strerror}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CytotuneError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from err
    if not isinstance(raw, dict):
        raise CytotuneError(f"{path}: expected a mapping of study fields, got {type(raw).__name__}")
    base = path.resolve().parent
    data_dir = raw.get("data_dir")
    if isinstance(data_dir, str):
        data_dir = Path(os.path.normpath(base / Path(data_dir).expanduser()))
        raw = {**raw, "data_dir": str(data_dir)}
    if isinstance(raw.get("storage"), str) and not is_uri(raw["storage"]):
        raw = {**raw, "storage": os.path.normpath(base / Path(raw["storage"]).expanduser())}
    if isinstance(raw.get("weights"), dict):
        weights = {k: os.path.normpath(base / Path(str(v)).expanduser()) for k, v in raw["weights"].items()}
        raw = {**raw, "weights": weights}
    try:
        spec = StudySpec.model_validate(raw, context={"data_dir": data_dir or base, "source_dir": base})
    except ValidationError as err:
        raise CytotuneError(format_validation_error(str(path), err)) from err
    spec._source = path
    spec._text = text
    return spec
