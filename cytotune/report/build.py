"""A study's report: tables and figures from MLflow, written to a folder and logged to the latest launch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from cytotune.report.figures import fraction_figure, params_figure, shots_figure
from cytotune.report.paper import REFERENCE_ACCURACY, REFERENCE_LABEL
from cytotune.report.tables import (
    best_text,
    comparison_display,
    hierarchy_display,
    linear_probe_table,
    markdown,
    table1_latex,
    table1_markdown,
    uncertainty_display,
)
from cytotune.report.uncertainty import ChosenTrials, study_uncertainty
from cytotune.report.uncertainty_figures import forest_figures, reliability_figures
from cytotune.tracking import schema
from cytotune.tracking.runs import best_configs, latest_launch, runs_frame
from cytotune.tracking.uri import resolve_tracking_uri

REPORT_ARTIFACTS = "report"


@dataclass(frozen=True)
class Report:
    """What `build_report` wrote: the folder, its files, and the launch run they were logged to."""

    out_dir: Path
    files: list[Path]
    launch_run_id: str
    best: pd.DataFrame


def build_report(
    experiment: str,
    tracking_uri: str | None = None,
    out_dir: Path | None = None,
    reference: tuple[str, float] | None = (REFERENCE_LABEL, REFERENCE_ACCURACY),
) -> Report:
    """Write the study's report (best configs, Table 1, Figures 1 and 2, parameters vs accuracy, report.md)
    to `out_dir` (default reports/EXPERIMENT) and log it under report/ of the study's latest launch run."""
    uri = resolve_tracking_uri(tracking_uri)
    launch = latest_launch(experiment, uri)
    out = Path(out_dir or Path("reports") / experiment)
    out.mkdir(parents=True, exist_ok=True)
    frame = runs_frame(experiment, uri)
    best, comparisons, chosen = study_uncertainty(
        experiment, uri, best_configs(experiment, uri, frame=frame), frame=frame
    )
    searched = best.attrs["searched"]
    files = [_write(out / "best_configs.csv", best_text(best, searched, "csv"))]
    files.append(_write(out / "best_configs.md", best_text(best, searched, "markdown")))
    sections = [f"# Report: {experiment}\n", _provenance(launch), "## Best configuration per cell\n"]
    sections.append(files[-1].read_text())
    table = linear_probe_table(best)
    if not table.empty:
        files.append(_write(out / "table1_linear_probe.csv", table.to_csv(index=False)))
        files.append(_write(out / "table1_linear_probe.md", table1_markdown(table)))
        files.append(_write(out / "table1_linear_probe.tex", table1_latex(table)))
        sections += ["## Table 1: linear probe (paper's value in parentheses)\n", files[-2].read_text()]
    figures = [
        ("Figure 1: accuracy vs shots", shots_figure(best, out / "figure1_shots.png")),
        (
            "Figure 2: accuracy vs data fraction",
            fraction_figure(best, out / "figure2_fraction.png", reference),
        ),
        ("Trainable parameters vs accuracy", params_figure(best, out / "params_vs_accuracy.png")),
    ]
    for title, path in figures:
        if path is not None:
            files.append(path)
            sections.append(f"## {title}\n\n![{title}]({path.name})\n")
    levels = hierarchy_display(best)
    if not levels.empty:
        files.append(_write(out / "hierarchy_levels.csv", levels.to_csv(index=False)))
        sections += [
            "## HiCervix levels: one model scored at every level\n",
            "Predictions of a level-3 (or level-2) model mapped up the class tree of the dataset's CSV "
            "columns; mean ± std over the chosen configuration's seeds.\n",
            markdown(levels),
        ]
    sections += _uncertainty_sections(out, best, comparisons, chosen, files)
    files.append(_write(out / "report.md", "\n".join(sections)))
    client = MlflowClient(uri)
    for path in files:
        client.log_artifact(launch.info.run_id, str(path), REPORT_ARTIFACTS)
    return Report(out, files, launch.info.run_id, best)


def _uncertainty_sections(
    out: Path, best: pd.DataFrame, comparisons: pd.DataFrame, chosen: ChosenTrials, files: list[Path]
) -> list[str]:
    """The uncertainty part of report.md (intervals, paired comparisons, reliability), its files appended
    to `files`; nothing when no trial holds per-image results."""
    if not chosen.correct:
        return []
    table = uncertainty_display(best)
    files.append(_write(out / "uncertainty.csv", table.to_csv(index=False)))
    sections = [
        "## Uncertainty: bootstrap intervals and calibration\n",
        "Test accuracy of the chosen configuration with a 95% bootstrap interval (resampling test images "
        "and seeds), mean test negative log-likelihood and expected calibration error (15 bins) over seeds."
        "\n",
        markdown(table),
    ]
    if not comparisons.empty:
        files.append(_write(out / "comparisons.csv", comparisons.to_csv(index=False)))
        sections += [
            "## Paired comparisons\n",
            "Differences of test accuracy on the same test images, 95% paired bootstrap interval and "
            "two-sided p-value (bootstrap resamples images, and seeds; cells on one seed list are paired "
            "by seed). The p-values are not corrected for the number of comparisons.\n",
            markdown(comparison_display(comparisons)),
        ]
        forest = forest_figures(comparisons, out / "forest_comparisons.png")
        files += forest
        sections += [f"![Paired comparisons]({path.name})\n" for path in forest]
    for dataset in sorted(best["dataset"].dropna().unique()):
        paths = reliability_figures(best, chosen.reliability, dataset, out / f"reliability_{dataset}.png")
        if paths:
            files += paths
            sections.append(f"## Reliability: {dataset}\n")
            sections += [f"![Reliability {dataset}]({path.name})\n" for path in paths]
    return sections


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _provenance(launch) -> str:
    tags = launch.data.tags
    commit = tags.get(schema.GIT_COMMIT, "unknown")
    return (
        f"Latest launch run {launch.info.run_id} ({launch.info.status}), "
        f"cytotune {tags.get(schema.VERSION)}, "
        f"git {commit[:12]}, study YAML sha256 {tags.get(schema.YAML_SHA256, 'unknown')[:12]}.\n\n"
        "Per trial, test metrics are taken at the best-validation checkpoint (the paper's code took the last "
        "iteration); per cell, the searched values with the best mean validation accuracy over seeds are "
        "chosen "
        "and their test accuracy is given as mean ± sample std over seeds.\n"
    )
