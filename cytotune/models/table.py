"""The registry as rows and as a plain text table (what `cytotune backbones` prints)."""

from __future__ import annotations

from cytotune.models.registry import get_backbone_spec, list_backbones
from cytotune.models.text import has_text_tower
from cytotune.models.weights import weights_status

COLUMNS = ("name", "library", "identifier", "input", "features", "weights", "text")


def backbone_rows() -> list[dict[str, str]]:
    """One row per registered backbone: name, library, identifier, input, feature width, weights status,
    and whether it has a text tower (zero_shot, head_init: text)."""
    rows = []
    for name in list_backbones():
        spec = get_backbone_spec(name)
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
                "text": "yes" if has_text_tower(name) else "-",
            }
        )
    return rows


def backbone_records() -> list[dict]:
    """One record per registered backbone with typed values (what `cytotune backbones --json` prints)."""
    out = []
    for name in list_backbones():
        spec = get_backbone_spec(name)
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
                "text_tower": has_text_tower(name),
            }
        )
    return out


def format_backbone_table(rows: list[dict[str, str]]) -> str:
    """Rows as a left-aligned text table with a header line."""
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in COLUMNS}
    lines = ["  ".join(column.ljust(widths[column]) for column in COLUMNS).rstrip()]
    lines += ["  ".join(row[column].ljust(widths[column]) for column in COLUMNS).rstrip() for row in rows]
    return "\n".join(lines)
