"""Where a backbone's weights come from: a local file, or the Hugging Face hub cache. Never downloads."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from cytotune.errors import CytotuneError
from cytotune.models.registry import BackboneSpec


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub reads, from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(os.environ.get("HF_HOME", str(Path(xdg) / "huggingface"))).expanduser() / "hub"


def find_cached_weights(spec: BackboneSpec) -> Path | None:
    """The first of the spec's weight files present in the hub cache, or None."""
    if spec.hub_repo is None:
        return None
    cache = hub_cache_dir()
    for filename in spec.hub_files:
        found = try_to_load_from_cache(spec.hub_repo, filename, cache_dir=cache)
        if isinstance(found, str):
            return Path(found)
    return None


def _fetch_hint(spec: BackboneSpec) -> str:
    """One line saying which file to fetch, where it goes, and the alternative."""
    filename = spec.hub_files[0]
    access = f"request access at https://huggingface.co/{spec.hub_repo}, then " if spec.gated else ""
    return (
        f"{access}fetch {filename} from the Hugging Face repo {spec.hub_repo} into the hub cache "
        f"{hub_cache_dir()} (`hf download {spec.hub_repo} {filename}`), "
        f"or pass --weights PATH to a local copy (`weights: {{{spec.name}: PATH}}` in a study YAML)"
    )


def resolve_weights(spec: BackboneSpec, weights: Path | str | None) -> Path | None:
    """The weights file to load for `spec`: `weights` (a file, or a folder holding one of the hub files),
    else the hub cache; None for a test-size backbone without `weights`. CytotuneError when none is found.
    A YAML backbone with a local source loads the weights of that source."""
    if weights is None and spec.definition is not None and spec.definition.hub_repo is None:
        weights = spec.definition.source
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            for filename in spec.hub_files:
                if (path / filename).is_file():
                    return path / filename
            expected = ", ".join(spec.hub_files) or "a state dict file"
            raise CytotuneError(f"{spec.name}: weights folder {path} holds none of: {expected}")
        if not path.is_file():
            raise CytotuneError(f"{spec.name}: weights file {path} not found: expected a checkpoint file")
        return path
    if spec.test_size:
        return None
    cached = find_cached_weights(spec)
    if cached is None:
        raise CytotuneError(f"{spec.name}: weights not found: {_fetch_hint(spec)}")
    return cached


def weights_status(spec: BackboneSpec) -> str:
    """ "test-size", "cached" (in the hub cache), "local folder" (a YAML backbone's) or "local file needed",
    for listings."""
    if spec.test_size:
        return "test-size"
    if spec.definition is not None and spec.definition.hub_repo is None:
        return "local folder"
    return "cached" if find_cached_weights(spec) is not None else "local file needed"
