"""The registry (and a study's YAML backbones) as rows and as a plain text table (`cytotune backbones`)."""

from __future__ import annotations

from collections.abc import Sequence

from cytotune.errors import CytotuneError
from cytotune.models.registry import BackboneSpec, get_backbone_spec, list_backbones
from cytotune.models.text import has_text_tower
from cytotune.models.weights import weights_status
from cytotune.yaml_backbone import YamlBackbone

COLUMNS = ("name", "library", "identifier", "input", "features", "weights", "text")


def _specs(definitions: Sequence[YamlBackbone]) -> list[BackboneSpec | YamlBackbone]:
    """The registry's specs, then each definition's (the definition itself where its config is not found)."""
    specs: list[BackboneSpec | YamlBackbone] = [get_backbone_spec(name) for name in list_backbones()]
    for definition in definitions:
        try:
            specs.append(get_backbone_spec(definition))
        except CytotuneError:
            specs.append(definition)
    return specs


def _unreadable(definition: YamlBackbone) -> dict:
    return {"name": definition.name, "library": definition.library, "identifier": definition.source}


def backbone_rows(definitions: Sequence[YamlBackbone] = ()) -> list[dict[str, str]]:
    """One row per registered backbone (then per YAML definition): name, library, identifier, input, feature
    width, weights status ("config not found" for a definition whose config file is missing)."""
    rows = []
    for spec in _specs(definitions):
        if isinstance(spec, YamlBackbone):
            rows.append(
                {
                    **_unreadable(spec),
                    "input": "-",
                    "features": "-",
                    "weights": "config not found",
                    "text": "-",
                }
            )
            continue
        tagged = spec.pretrained and spec.pretrained not in spec.identifier
        identifier = f"{spec.identifier} ({spec.pretrained})" if tagged else spec.identifier
        rows.append(
            {
                "name": spec.name,
                "library": spec.library,
                "identifier": identifier,
                "input": str(spec.input_size),
                "features": f"{spec.feature_dim} {spec.feature}",
                "weights": weights_status(spec),
                "text": "yes" if has_text_tower(spec.name) else "-",
            }
        )
    return rows


def backbone_records(definitions: Sequence[YamlBackbone] = ()) -> list[dict]:
    """One record per registered backbone (then per YAML definition) with typed values (what `cytotune
    backbones --json` prints)."""
    out = []
    for spec in _specs(definitions):
        if isinstance(spec, YamlBackbone):
            out.append({**_unreadable(spec), "weights": "config not found"})
            continue
        out.append(
            {
                "name": spec.name,
                "library": spec.library,
                "identifier": spec.identifier,
                "pretrained": spec.pretrained,
                "input_size": spec.input_size,
                "mean": list(spec.mean),
                "std": list(spec.std),
                "feature": spec.feature,
                "feature_dim": spec.feature_dim,
                "hub_repo": spec.hub_repo,
                "gated": spec.gated,
                "test_size": spec.test_size,
                "weights": weights_status(spec),
                "text_tower": has_text_tower(spec.name),
            }
        )
    return out


def format_backbone_table(rows: list[dict[str, str]]) -> str:
    """Rows as a left-aligned text table with a header line."""
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in COLUMNS}
    lines = ["  ".join(column.ljust(widths[column]) for column in COLUMNS).rstrip()]
    lines += ["  ".join(row[column].ljust(widths[column]) for column in COLUMNS).rstrip() for row in rows]
    return "\n".join(lines)
