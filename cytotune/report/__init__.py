"""Reports of a study read back from MLflow: the best-config table, Table 1, Figures 1 and 2, parameters.

The names below load their modules on first use, so `cytotune best` does not import matplotlib.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "Report": "build",
    "build_report": "build",
    "fraction_figure": "figures",
    "params_figure": "figures",
    "shots_figure": "figures",
    "best_text": "tables",
    "linear_probe_table": "tables",
    "table1_latex": "tables",
    "table1_markdown": "tables",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
