"""A backbone a study YAML defines by its source (a timm or open_clip model on the hub, or a local folder)
rather than by a registry name; it travels in each trial's config, so any Ray worker can rebuild it.

Pure data: reading the model's own config files and building it is cytotune.models.hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

HF_HUB_PREFIX = "hf-hub:"
HUB_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
FEATURES = {"timm": ("cls", "avg"), "open_clip": ("image_embedding",)}


class YamlBackbone(BaseModel):
    """`{name: N, timm: SOURCE}` or `{name: N, open_clip: SOURCE}`, SOURCE being `hf-hub:owner/repo` (read
    from the Hugging Face hub cache, never downloaded) or a local folder holding the files of such a repo.

    A local path may also be a weights file in such a folder. feature: for timm, "cls" (the class token) or
    "avg" (the mean of the patch tokens), as the model's own pooling computes them, before any classifier;
    default: the model's own pooling. For open_clip, "image_embedding" (the projected image embedding, the
    only one).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    timm: str | None = None
    open_clip: str | None = None
    feature: Literal["cls", "avg", "image_embedding"] | None = None

    @field_validator("timm", "open_clip", mode="after")
    @classmethod
    def _source(cls, source: str | None, info: ValidationInfo) -> str | None:
        """hf-hub:owner/repo as given; a local path made absolute (relative to the study YAML's folder)."""
        if source is None:
            return None
        if source.startswith(HF_HUB_PREFIX):
            if not HUB_REPO.match(source.removeprefix(HF_HUB_PREFIX)):
                raise ValueError(f"expected hf-hub:owner/repo or a local folder, got {source!r}")
            return source
        if not source.strip():
            raise ValueError("expected hf-hub:owner/repo or a local folder, got ''")
        path = Path(source).expanduser()
        base = (info.context or {}).get("source_dir")
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        return os.path.normpath(path)

    @model_validator(mode="after")
    def _one_source(self) -> YamlBackbone:
        if (self.timm is None) == (self.open_clip is None):
            given = "both" if self.timm is not None else "neither"
            raise ValueError(f"expected one source, `timm` or `open_clip`, got {given}")
        allowed = FEATURES[self.library]
        if self.feature is not None and self.feature not in allowed:
            raise ValueError(
                f"feature: {self.feature!r} is not among the {self.library} features; "
                f"expected {' or '.join(allowed)}"
            )
        return self

    @property
    def library(self) -> Literal["timm", "open_clip"]:
        """The library that builds the model."""
        return "timm" if self.timm is not None else "open_clip"

    @property
    def source(self) -> str:
        """Where the model comes from, as given: hf-hub:owner/repo or a local folder."""
        return self.timm if self.timm is not None else self.open_clip  # type: ignore[return-value]

    @property
    def hub_repo(self) -> str | None:
        """owner/repo for a hub source, None for a local folder."""
        return self.source.removeprefix(HF_HUB_PREFIX) if self.source.startswith(HF_HUB_PREFIX) else None


def backbone_name(entry: str | YamlBackbone) -> str:
    """The name of a `backbones:` entry: a registry name, or a YAML backbone's `name`."""
    return entry if isinstance(entry, str) else entry.name
