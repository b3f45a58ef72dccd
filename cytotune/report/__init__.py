"""Reports of a study read back from MLflow: the best-config table, Table 1, Figures 1 and 2, parameters."""

from cytotune.report.build import Report, build_report
from cytotune.report.figures import fraction_figure, params_figure, shots_figure
from cytotune.report.tables import best_text, linear_probe_table, table1_latex, table1_markdown

__all__ = [
    "Report",
    "best_text",
    "build_report",
    "fraction_figure",
    "linear_probe_table",
    "params_figure",
    "shots_figure",
    "table1_latex",
    "table1_markdown",
]
