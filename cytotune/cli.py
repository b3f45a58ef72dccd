"""The `cytotune` command line: parse, call, print. No logic of its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cytotune import __version__
from cytotune.errors import CytotuneError

app = typer.Typer(
    help="cytotune: hyperparameter studies adapting vision foundation models to cytology.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(
    help="Datasets: generate synthetic data, prepare manifests, inspect.", no_args_is_help=True
)
bench_app = typer.Typer(
    help="Benchmarks, printed as ratios measured side by side in one run.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
SPLIT_TEXT = "0.7,0.1,0.2"  # config.DEFAULT_SPLIT as --split reads it (written out: no pydantic at start-up)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """cytotune: hyperparameter studies adapting vision foundation models to cytology. Results go to stdout,
    progress and logs to stderr."""


@app.command()
def version() -> None:
    """Print the cytotune version."""
    typer.echo(__version__)


def echo_json(data: object) -> None:
    """Machine-readable output of a command (`--json`) on stdout."""
    import json

    typer.echo(json.dumps(data, indent=1, default=str))


def say(message: str) -> None:
    """Progress of a command, on stderr."""
    typer.echo(message, err=True)


# --- data -----------------------------------------------------------------------------------------


@data_app.command("synth")
def data_synth(
    out: str = typer.Argument(..., metavar="OUT", help="Folder to write the dataset into."),
    classes: int = typer.Option(4, "--classes", help="Number of classes."),
    per_class: int = typer.Option(40, "--per-class", help="Images per class."),
    size: int = typer.Option(64, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same images)."),
    image_format: str = typer.Option("png", "--format", help="png or jpg."),
) -> None:
    """Generate a synthetic cytology dataset (one folder per class); prepare it as dataset 'synthetic'."""
    from cytotune.data.synthetic import generate_synthetic

    path = generate_synthetic(out, classes, per_class, size, seed, image_format)
    typer.echo(f"wrote {classes} classes x {per_class} {image_format} images of {size}px to {path}")


@data_app.command("prepare")
def data_prepare(
    dataset: str = typer.Argument(..., help="sipakmed, mlcc, bcfc, hicervix, folder or synthetic."),
    root: str = typer.Option(..., "--root", metavar="PATH", help="The dataset folder as downloaded."),
    level: int = typer.Option(3, "--level", help="HiCervix label level: 1, 2 or 3."),
    skip_corrupt: bool = typer.Option(False, "--skip-corrupt", help="Drop unreadable images, don't fail."),
    cache_size: int = typer.Option(256, "--cache-size", help="Side of the decoded-image cache, pixels."),
    split: str = typer.Option(SPLIT_TEXT, "--split", help="train,val,test fractions (no official split)."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the split."),
    cache_dir: str = typer.Option(None, "--cache-dir", metavar="PATH", help="Cache [$CYTOTUNE_CACHE]."),
) -> None:
    """Write the manifest (classes, splits, hashes), build the image cache; print images per class, split."""
    from cytotune.data import open_image_cache, prepare_dataset
    from cytotune.data.summary import manifest_summary, parse_split

    manifest = prepare_dataset(
        dataset,
        root,
        level=level,
        split=parse_split(split),
        split_seed=split_seed,
        skip_corrupt=skip_corrupt,
        cache_dir=cache_dir,
    )
    typer.echo(manifest_summary(manifest))
    cache = open_image_cache(manifest, cache_size, cache_dir)
    how = "reused" if cache.build_seconds is None else f"built in {cache.build_seconds:.1f} s"
    typer.echo(f"image cache: {len(cache)} images at {cache_size}px, {how}: {cache.path}")


@data_app.command("info")
def data_info(
    dataset: str = typer.Argument(..., help="Dataset name."),
    root: str = typer.Option(..., "--root", metavar="PATH", help="The dataset folder."),
    level: int = typer.Option(3, "--level", help="HiCervix label level: 1, 2 or 3."),
    split: str = typer.Option(SPLIT_TEXT, "--split", help="train,val,test fractions."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the split."),
    cache_dir: str = typer.Option(None, "--cache-dir", metavar="PATH", help="Cache [$CYTOTUNE_CACHE]."),
    json_output: bool = typer.Option(False, "--json", help="Print the facts as JSON."),
) -> None:
    """Show what is in a dataset folder, and its manifest and image caches if prepared."""
    from cytotune.data.summary import parse_split, survey_dataset

    survey = survey_dataset(
        dataset, root, level=level, split=parse_split(split), split_seed=split_seed, cache_dir=cache_dir
    )
    if json_output:
        echo_json(survey.facts())
        return
    typer.echo(survey.text())


# --- backbones and one trial ----------------------------------------------------------------------


@app.command()
def backbones(
    json_output: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    study: Annotated[
        Path | None, typer.Option(help="Also list the backbones this study YAML defines by their source.")
    ] = None,
) -> None:
    """List the backbone registry: library, identifier, input size, feature width, where weights stand."""
    from cytotune.models import backbone_rows, format_backbone_table
    from cytotune.models.table import backbone_records
    from cytotune.study.spec import load_study

    spec = load_study(study) if study is not None else None
    definitions = [] if spec is None else spec.backbone_definitions()
    if json_output:
        echo_json(backbone_records(definitions))
        return
    typer.echo(format_backbone_table(backbone_rows(definitions)))


@app.command("cost")
def cost_command(
    space: Annotated[Path, typer.Argument(metavar="SPACE.yaml", help="The study YAML (see search_spaces/).")],
    size: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=IMAGES:CLASSES for a dataset not at hand (repeatable; else its root is listed)."
        ),
    ] = None,
    tflops: Annotated[
        float, typer.Option(help="Sustained 10^12 FLOP/s of one GPU (measure yours: cytotune bench gpu).")
    ] = 300.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the lines as JSON.")] = False,
) -> None:
    """Estimate a study's backbone FLOPs and GPU-hours from its plan and its datasets' sizes; nothing runs.

    Counted on each backbone's architecture: LoRA training images as forward + backward (about two forwards),
    evaluation images and probe features as one forward. Few-shot batches (4-32 images) run well below a GPU's
    sustained rate unless packed: read the GPU-hours as a lower bound for them."""
    from cytotune.study.cost import (
        cost_table,
        forward_flops,
        parse_size,
        planned_trials,
        study_cost,
        study_sizes,
    )
    from cytotune.study.grid import expand_cells
    from cytotune.study.spec import load_study

    if tflops <= 0:
        raise CytotuneError(f"--tflops {tflops:g}: expected a positive rate")
    spec = load_study(space)
    trials = list(planned_trials(expand_cells(spec)))
    sizes = study_sizes(spec, dict(parse_size(text) for text in size or ()))
    backbones = {cfg.backbone: cfg.backbone_ref for _, cfg in trials}  # YAML backbones by their definition
    forward = {name: forward_flops(ref) for name, ref in sorted(backbones.items())}
    lines = study_cost(trials, sizes, forward)
    if json_output:
        echo_json([{**vars(line), "gpu_hours": line.gpu_hours(tflops), "tflops": tflops} for line in lines])
        return
    typer.echo(f"study {spec.name}: {len(trials)} trials; GPU-hours at {tflops:g} TFLOP/s sustained")
    typer.echo(cost_table(lines, tflops))


@app.command()
def train(
    method: Annotated[str, typer.Option(help="linear_probe, lora, knn, simpleshot or zero_shot.")],
    backbone: Annotated[
        str,
        typer.Option(
            help="Backbone name (see `cytotune backbones`), or the name given to --timm/--open-clip."
        ),
    ],
    dataset: Annotated[str, typer.Option(help="Dataset: bcfc, mlcc, sipakmed, hicervix, folder, synthetic.")],
    root: Annotated[Path, typer.Option(help="The dataset folder.")],
    lr: Annotated[float | None, typer.Option(help="Learning rate (linear_probe and lora).")] = None,
    k: Annotated[int | None, typer.Option(help="Neighbours voting (knn).")] = None,
    head_init: Annotated[
        str, typer.Option(help="random, or text: the head starts from the class prompts' text embeddings.")
    ] = "random",
    layout: Annotated[
        str | None, typer.Option(help="The layout of --root when --dataset is a name of your own (folder).")
    ] = None,
    shots: Annotated[int | None, typer.Option(help="Few-shot: training images per class.")] = None,
    fraction: Annotated[float | None, typer.Option(help="Fraction of the train split, in (0, 1].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of sampling, head init and training order.")] = 0,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 2,
    targets: Annotated[str, typer.Option(help="LoRA targets, a comma-separated subset of q,k,v,o.")] = "q,v",
    alpha: Annotated[float, typer.Option(help="LoRA alpha (scale alpha/sqrt(rank), rsLoRA).")] = 1.0,
    weights: Annotated[Path | None, typer.Option(help="Local checkpoint file of the backbone.")] = None,
    timm_source: Annotated[
        str | None,
        typer.Option("--timm", help="Define --backbone as this timm model: hf-hub:owner/repo or a folder."),
    ] = None,
    open_clip_source: Annotated[
        str | None,
        typer.Option(
            "--open-clip", help="Define --backbone as this open_clip model: hf-hub:owner/repo or a folder."
        ),
    ] = None,
    feature: Annotated[
        str | None, typer.Option(help="Feature of a --timm backbone: cls or avg (default: the model's own).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Cap on LoRA optimisation steps.")] = None,
    probe_epochs: Annotated[int, typer.Option(help="Linear-probe epochs over cached features.")] = 100,
    level: Annotated[int, typer.Option(help="HiCervix label level (1, 2 or 3).")] = 3,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    cache_dir: Annotated[Path | None, typer.Option(help="Image and feature caches.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the trial's artifacts here.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the final metrics as JSON.")] = False,
) -> None:
    """Run one trial (linear probe, LoRA, knn, simpleshot or zero-shot) and print its final metrics."""
    import json

    from pydantic import ValidationError
    from rich.console import Console
    from rich.table import Table

    from cytotune.config import TrialConfig
    from cytotune.study.spec import format_validation_error
    from cytotune.train import run_trial

    fields = dict(
        method=method,
        backbone=backbone,
        weights=weights,
        dataset=dataset,
        layout=layout,
        root=root,
        level=level,
        shots=shots,
        fraction=fraction,
        lr=lr,
        k=k,
        head_init=head_init,
        seed=seed,
        lora=dict(rank=rank, alpha=alpha, targets=tuple(t.strip() for t in targets.split(",") if t.strip())),
        train=dict(max_steps=max_steps, probe_epochs=probe_epochs, device=device),
    )
    if cache_dir is not None:
        fields["cache_dir"] = cache_dir
    if timm_source is not None or open_clip_source is not None or feature is not None:
        sources = {"timm": timm_source, "open_clip": open_clip_source}
        fields["backbone_definition"] = {"name": backbone, "feature": feature, **sources}
    try:
        cfg = TrialConfig.model_validate(fields, context={"source_dir": Path.cwd()})
    except ValidationError as err:
        raise CytotuneError(format_validation_error("cytotune train", err)) from err
    result = run_trial(cfg, out_dir=out)
    if json_output:
        typer.echo(json.dumps(result.to_dict(), indent=1))
        return
    chosen = "".join(f"{name}={value:g} " for name, value in (("lr", lr), ("k", k)) if value is not None)
    table = Table(title=f"{method} {backbone} on {dataset}, {chosen}seed={seed}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics().items():
        table.add_row(name, f"{value:.4f}" if not float(value).is_integer() else f"{int(value)}")
    for name, recall in zip(result.classes, result.test_per_class_recall, strict=True):
        table.add_row(f"test recall {name}", f"{recall:.4f}")
    for name, row in zip(result.classes, result.confusion_matrix, strict=True):
        table.add_row(f"confusion {name}", " ".join(str(count) for count in row))
    for name, path in result.artifacts.items():
        table.add_row(name, str(path))
    Console().print(table)


# --- study ----------------------------------------------------------------------------------------


@app.command("run")
def run_command(
    space: Annotated[Path, typer.Argument(metavar="SPACE.yaml", help="The study YAML (see search_spaces/).")],
    address: Annotated[str | None, typer.Option(help="Ray: auto or HOST:PORT (default: local).")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI [$MLFLOW_TRACKING_URI, the YAML's, ./mlflow.db].")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Ray storage: a folder or a URI, s3://, gs://, file:// (default: YAML's)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue a stopped study with its launch's tracking and storage.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Print cells, trials, resources, fit; run nothing.")] = False,
    max_concurrent: Annotated[int | None, typer.Option(help="At most this many trials at once.")] = None,
    reuse_actors: Annotated[
        bool, typer.Option(help="Run a trial in a finished trial's Ray actor (its node) when one is free.")
    ] = True,
    connect_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the Ray cluster at --address to answer.")
    ] = 30.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the final summary (with --dry-run: the plan) as JSON.")
    ] = False,
) -> None:
    """Run a study: every trial of SPACE.yaml on Ray Tune, early stopping and search per cell.

    Exit status: 0 every trial finished or was stopped early; 1 a trial failed after its retries; 2 bad
    input, nothing started; 130 (SIGINT) or 143 (SIGTERM) stopped, continue with --resume.
    """
    from cytotune.study.signals import StopSignals, StudyInterrupted

    tracking = None
    with StopSignals() as signals:
        try:
            from cytotune.study.grid import expand_cells
            from cytotune.study.launch import resume_tracking_uri, study_callback
            from cytotune.study.runner import describe_plan, experiment_path, run_study
            from cytotune.study.runner import dry_run as plan_only
            from cytotune.study.spec import load_study
            from cytotune.study.storage import study_storage
            from cytotune.study.summary import outcome_dict, plan_dict

            spec = load_study(space)
            cells = expand_cells(spec)  # the launch's one plan: the runner and MLflow get this object
            if dry_run:
                plan = plan_only(spec, cells=cells, address=address, connect_timeout_s=connect_timeout)
                if json_output:
                    echo_json(plan_dict(plan))
                else:
                    typer.echo(describe_plan(plan))
                return
            path = experiment_path(spec, storage)
            launch = resume_tracking_uri(spec, path, tracking_uri) if resume else None
            choice = tracking_choice(tracking_uri, spec.tracking_uri, launch=launch)
            tracking = study_callback(
                spec,
                cells,
                choice.uri,
                resume=resume,
                address=address,
                announcement=choice.line(),
            )
            outcome = run_study(
                spec,
                cells=cells,
                address=address,
                tracking_uri=tracking.tracking_uri,
                storage=storage,
                resume=resume,
                max_concurrent=max_concurrent,
                callbacks=[tracking],
                reuse_actors=reuse_actors,
                connect_timeout_s=connect_timeout,
                signals=signals,
                say=say,
            )
            tracking.close(interrupted=outcome.interrupted)
            if json_output:
                echo_json(outcome_dict(outcome, tracking.tracking_uri))
            (say if json_output else typer.echo)(_study_summary(outcome, tracking.tracking_uri))
            if outcome.interrupted:
                say(
                    _resume_line(
                        outcome, space.resolve(), path, study_storage(spec.name, storage, spec.storage)
                    )
                )
            code = signals.exit_code or (1 if outcome.failed() or outcome.interrupted else 0)
        except StudyInterrupted as stop:
            if tracking is not None:
                tracking.close(interrupted=True)
            typer.echo(f"cytotune: {stop}; nothing was left running", err=True)
            code = 128 + stop.signum
        except BaseException:
            if tracking is not None:
                tracking.close(interrupted=True)
            raise
    if code:
        raise typer.Exit(code)


def _resume_line(outcome, space: Path, record_dir: Path, store) -> str:
    """How to go on after a stop: the launch record sits in `record_dir` (the study's folder on this machine,
    also for remote storage), and `--storage` names the storage root (a folder or a URI)."""
    import signal

    from cytotune.study.launch import RECORD_FILE

    stop = outcome.stop_signal
    how = "interrupted" if stop is None else f"stopped by {signal.Signals(stop).name}"
    if not (record_dir / RECORD_FILE).is_file():
        return f"{how} before the study was launched; start it with: cytotune run {space}"
    again = f"cytotune run {space} --storage {store.root} --resume"
    return f"{how} before every trial ended; continue with: {again}"


def _study_summary(outcome, tracking_uri: str) -> str:
    counts = outcome.counts()
    lines = [
        f"study {outcome.name}: {len(outcome.trials)} trials ({counts['finished']} finished, "
        f"{counts['stopped']} stopped early, {counts['failed']} failed) in {outcome.wall_s:.0f} s; "
        f"Ray results in {outcome.path}",
        f"MLflow: experiment {outcome.name} at {tracking_uri} (see `cytotune best`)",
    ]
    if outcome.failed():
        lines.append(f"failed trials (error.txt in their MLflow runs): {', '.join(outcome.failed())}")
    return "\n".join(lines)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for synthetic data and Ray results.")] = Path("demo_out"),
) -> None:
    """Run search_spaces/demo.yaml on synthetic data with tiny backbones, tracked in ./mlflow.db; print the
    validation-selected result per cell from MLflow and write the report."""
    from cytotune.report import best_text, build_report
    from cytotune.study.demo import demo_spec, run_demo
    from cytotune.study.grid import expand_cells
    from cytotune.study.launch import study_callback
    from cytotune.tracking import best_configs
    from cytotune.tracking.uri import choose_tracking_uri

    spec = demo_spec(out)
    cells = expand_cells(spec)
    choice = choose_tracking_uri(None)
    tracking = study_callback(spec, cells, choice.uri, announcement=choice.line())
    outcome = run_demo(out, spec=spec, cells=cells, callbacks=[tracking], say=say)
    counts = outcome.counts()
    typer.echo(
        f"demo: {len(outcome.trials)} trials ({counts['finished']} finished, {counts['stopped']} stopped "
        f"early, {counts['failed']} failed) in {outcome.wall_s:.0f} s"
    )
    best = best_configs(outcome.name, tracking.tracking_uri)
    typer.echo(f"best configuration per cell (MLflow experiment {outcome.name} at {tracking.tracking_uri}):")
    typer.echo(best_text(best, best.attrs["searched"]), nl=False)
    report = build_report(outcome.name, tracking.tracking_uri, out / "report")
    typer.echo(f"report: {report.out_dir / 'report.md'}")


# --- tracking and reports -------------------------------------------------------------------------

TRACKING_HELP = (
    "MLflow tracking URI: http://HOST:PORT or sqlite:///PATH.db [$MLFLOW_TRACKING_URI, ./mlflow.db]."
)


def tracking_choice(given: str | None, study: str | None = None, launch: str | None = None):
    """The tracking store by the one rule (flag, $MLFLOW_TRACKING_URI, YAML, ./mlflow.db); a resumed
    study's `launch` URI (recorded in its storage) comes first."""
    from cytotune.tracking.uri import TrackingChoice, choose_tracking_uri

    if launch and launch != given:
        return TrackingChoice(launch, "the launch being resumed")
    return choose_tracking_uri(given, study)


def announce_tracking(given: str | None) -> str:
    """The tracking URI of a query command, said on stderr."""
    choice = tracking_choice(given)
    typer.echo(choice.line(), err=True)
    return choice.uri


@app.command("best")
def best_command(
    experiment: Annotated[str, typer.Option(help="The study's MLflow experiment (the study name).")],
    tracking_uri: Annotated[str | None, typer.Option(help=TRACKING_HELP)] = None,
    where: Annotated[str | None, typer.Option(help='Only runs matching "dataset=sipakmed,shots=4".')] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, csv, json or markdown.")] = "table",
    config_out: Annotated[
        Path | None, typer.Option(help="Also write a study YAML rerunning the chosen configurations.")
    ] = None,
) -> None:
    """Per cell, the searched values with the best mean validation accuracy over seeds, and their test
    accuracy (mean +- std, seeds); cells short of seeds are flagged. JSON adds bootstrap intervals, test NLL
    and ECE, and each cell's paired comparisons."""
    from cytotune.report.tables import best_text
    from cytotune.tracking import best_configs, check_tracking
    from cytotune.tracking.rerun import write_rerun
    from cytotune.tracking.runs import runs_frame

    uri = announce_tracking(tracking_uri)
    check_tracking(uri, must_exist=True)
    frame = runs_frame(experiment, uri, where)
    chosen = best_configs(experiment, uri, where, frame=frame)
    best = chosen
    if output_format == "json":
        from cytotune.report.uncertainty import study_uncertainty

        best = study_uncertainty(experiment, uri, chosen, where, frame=frame)[0]
    typer.echo(best_text(best, best.attrs["searched"], output_format), nl=False)
    if config_out is not None:
        path = write_rerun(experiment, config_out, uri, where, frame=frame, best=chosen)
        typer.echo(f"rerun study written to {path}", err=True)


@app.command("report")
def report_command(
    experiment: Annotated[str, typer.Option(help="The study's MLflow experiment (the study name).")],
    tracking_uri: Annotated[str | None, typer.Option(help=TRACKING_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: reports/EXPERIMENT).")] = None,
    reference: Annotated[
        str, typer.Option(help="Reference line of the data-fraction figure: LABEL=ACCURACY or none.")
    ] = "HierSwin=78.35",
) -> None:
    """Write the study's tables (best configs, Table 1 beside the paper) and figures (accuracy vs shots, vs
    data fraction, trainable parameters vs accuracy), and log them to the study's latest launch run."""
    from cytotune.report import build_report
    from cytotune.report.paper import parse_reference
    from cytotune.tracking import check_tracking

    uri = announce_tracking(tracking_uri)
    check_tracking(uri, must_exist=True)
    report = build_report(experiment, uri, out, reference=parse_reference(reference))
    for path in report.files:
        typer.echo(str(path))
    typer.echo(f"report: {report.out_dir / 'report.md'} (logged to MLflow run {report.launch_run_id})")


# --- benchmarks -----------------------------------------------------------------------------------


@bench_app.command("study")
def bench_study_command(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data and Ray results.")] = Path("demo_out"),
) -> None:
    """Time the demo study with and without Ray actor reuse: wall time against the trials' own time."""
    import os

    from cytotune.bench.study import bench_study

    rows = bench_study(out, slots=os.cpu_count() or 1)
    typer.echo("study benchmark: demo.yaml on a local Ray (own time: trainable start to last report)")
    for row in rows:
        typer.echo(row.line())


@bench_app.command("data")
def bench_data_command(
    root: str = typer.Option(None, "--root", metavar="PATH", help="A dataset (default: synthetic, temp)."),
    dataset: str = typer.Option("folder", "--dataset", help="Dataset name of --root."),
    size: int = typer.Option(256, "--size", help="Image-cache side, pixels."),
    input_size: int = typer.Option(224, "--input-size", help="Model input side, pixels."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per batch."),
    image_size: int = typer.Option(448, "--image-size", help="Synthetic image side, pixels."),
    per_class: int = typer.Option(64, "--per-class", help="Synthetic images per class (4 classes)."),
    image_format: str = typer.Option("jpg", "--format", help="Synthetic image format: jpg or png."),
    device: str = typer.Option("cpu", "--device", help="Where eval_transform runs: cpu or cuda."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    repeats: int = typer.Option(2, "--repeats", help="Epochs timed per method; the fastest counts."),
) -> None:
    """Time an epoch from the image and eval caches against PIL + torchvision per item; print ratio."""
    from cytotune.bench.data import bench_data

    result = bench_data(
        root,
        dataset=dataset,
        cache_size=size,
        input_size=input_size,
        batch_size=batch_size,
        image_size=image_size,
        per_class=per_class,
        image_format=image_format,
        device=device,
        threads=threads,
        repeats=repeats,
    )
    typer.echo("\n".join(result.lines()))


@bench_app.command("probe")
def bench_probe(
    backbone: Annotated[str, typer.Option(help="A backbone (a tiny one runs anywhere).")] = "tiny_clip",
    per_class: Annotated[int, typer.Option(help="Synthetic images per class (4 classes).")] = 250,
    image_size: Annotated[int, typer.Option(help="Synthetic image and image-cache size, pixels.")] = 64,
    epochs: Annotated[int, typer.Option(help="Probe epochs per trial.")] = 100,
    naive_epochs: Annotated[int, typer.Option(help="Epochs timed for the naive sweep (extrapolated).")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Keep data and caches here (default: temp).")] = None,
) -> None:
    """Time a linear-probe sweep (5 lr x 3 seeds) on cached features against one feature extraction and
    against the naive sweep that runs the backbone every epoch."""
    from cytotune.bench.common import set_threads, work_folder
    from cytotune.bench.probe import bench_probe as run_bench

    set_threads(threads)
    with work_folder(work_dir) as folder:
        b = run_bench(
            folder,
            backbone=backbone,
            per_class=per_class,
            image_size=image_size,
            epochs=epochs,
            naive_epochs=naive_epochs,
            device=device,
        )
    typer.echo("\n".join(b.lines()))


@bench_app.command("asha")
def bench_asha_command(
    work_dir: Annotated[Path, typer.Option(help="Data, caches and recorded curves.")] = Path("asha_bench"),
    curves: Annotated[
        Path | None, typer.Option(help="Replay curves recorded earlier (WORK_DIR/curves.json) instead.")
    ] = None,
    orders: Annotated[int, typer.Option(min=1, help="Arrival orders replayed.")] = 6,
    workers: Annotated[
        list[int] | None, typer.Option(help="Trials running at a time in the replay (repeat for several).")
    ] = None,
    grace: Annotated[int, typer.Option(min=1, help="ASHA grace period (steps).")] = 10,
    factor: Annotated[float, typer.Option(min=1.01, help="ASHA reduction factor.")] = 3.0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")] = None,
) -> None:
    """The bench study (6 LoRA cells x 5 lr x 3 seeds) as a full grid and with seed-grouped early stopping:
    training steps of each, and the share of cells choosing as the full grid does."""
    from cytotune.bench import asha as asha_bench
    from cytotune.bench.common import set_threads
    from cytotune.study.grid import expand_cells

    set_threads(threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    cells = expand_cells(asha_bench.bench_spec(work_dir, grace, factor))
    if curves is None:
        recorded = asha_bench.record_curves(cells, work_dir / "cache")
        curves = asha_bench.save_curves(recorded, work_dir / "curves.json")
    else:
        recorded = asha_bench.load_curves(curves)
    typer.echo(
        f"asha benchmark: {len(cells)} cells, {len(recorded)} LoRA trials recorded as a full grid "
        f"({curves}); early stopping (grace {grace}, factor {factor:g}) replayed offline through the "
        f"scheduler's decision logic in {orders} arrival orders (order 0: grid order, equal speeds; others: "
        "shuffled configurations, per-trial speeds)"
    )
    typer.echo("each order: steps with early stopping / full grid, share of cells choosing as the full grid")
    typer.echo("(same configuration, or within the full grid's seed std of its test accuracy)")
    for count in workers or [3, 6, 15, 30]:
        rows = asha_bench.bench_asha(recorded, cells, orders, count)
        ratio = sum(r.ratio for r in rows) / len(rows)
        agreement = sum(r.agreement for r in rows) / len(rows)
        each = "  ".join(f"{r.ratio:.2f}x/{100 * r.agreement:.0f}%" for r in rows)
        typer.echo(
            f"{count:3d} trials at a time: mean {ratio:.2f}x the steps (full grid: {rows[0].full_steps}) at "
            f"{100 * agreement:.0f}% agreement | {each}"
        )
    typer.echo("target: <= 0.50x the steps at >= 90% agreement")


@bench_app.command("scale")
def bench_scale_command(
    space: Annotated[
        list[Path] | None,
        typer.Option(help="Study YAMLs, one column each (repeatable; default: Experiment 2)."),
    ] = None,
    work_dir: Annotated[Path, typer.Option(help="Ray storage, events and reports.")] = Path("scale_bench"),
    tracking_uri: Annotated[
        str | None, typer.Option(help="An MLflow server to log to (default: a throwaway one on PostgreSQL).")
    ] = None,
    slots: Annotated[int, typer.Option(help="GPUs the local Ray node declares (trials at once).")] = 64,
    seconds: Annotated[float, typer.Option(help="Simulated seconds of a whole trial.")] = 1.0,
    trials: Annotated[int | None, typer.Option(help="At most this many trials (axes trimmed).")] = None,
    checkpoint_every: Annotated[
        float | None, typer.Option(help="Seconds between a trial's checkpoints (default: the YAML's).")
    ] = None,
    fault: Annotated[str, typer.Option(help="none, driver-kill, mlflow-restart or node-loss.")] = "none",
    queries: Annotated[bool, typer.Option(help="Time `cytotune best` and `cytotune report`.")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """The real runner (seed-grouped ASHA, cell searcher, MLflow callback, Ray Tune) over a simulated
    trainable on a node declaring many GPUs, logging to an MLflow server on PostgreSQL: driver CPU and wall
    overhead per trial, wall vs ideal, MLflow calls, peak memory, runs and lost metrics counted, `best` and
    `report` timed."""
    from contextlib import nullcontext

    from cytotune.bench.scale import bench_scale, figures_json, table
    from cytotune.bench.servers import tracking_server

    columns = []
    for index, path in enumerate(space or [Path("search_spaces/exp2_lora_fewshot.yaml")]):
        work = work_dir.resolve() / f"{index}_{path.stem}"
        if work.exists():
            raise CytotuneError(f"bench scale: {work} exists; expected a new --work-dir")
        work.mkdir(parents=True)
        own = tracking_server(work) if tracking_uri is None else nullcontext(None)
        with own as server:
            uri = server.uri if server is not None else tracking_uri
            restart = None if server is None else server.restart
            columns.append(
                bench_scale(
                    path,
                    work,
                    uri,
                    slots=slots,
                    seconds=seconds,
                    trials=trials,
                    checkpoint_every_s=checkpoint_every,
                    fault=fault,
                    restart=restart,
                    queries=queries,
                    say=say,
                )
            )
    if json_output:
        echo_json(figures_json(columns))
    else:
        typer.echo(table(columns))


@bench_app.command("gpu")
def bench_gpu_command(
    out: Annotated[Path, typer.Option(help="JSON file of the figures (rewritten after each case).")] = Path(
        "gpu_bench.json"
    ),
    backbone: Annotated[
        list[str] | None, typer.Option(help="Backbones (repeatable; default: B/16 and L/14 sizes).")
    ] = None,
    batch: Annotated[list[int] | None, typer.Option(help="LoRA batch sizes (repeatable).")] = None,
    feature_batch: Annotated[int, typer.Option(help="Feature-extraction batch size.")] = 256,
    seconds: Annotated[float, typer.Option(help="Timed seconds per case, after warm-up.")] = 5.0,
    compile_cases: Annotated[
        bool, typer.Option("--compile/--no-compile", help="Include torch.compile.")
    ] = True,
    device: Annotated[str, typer.Option(help="cuda, or cpu to try the cases on a small model.")] = "cuda",
    pack: Annotated[
        int, typer.Option(help="Configurations of the packed cases at few-shot batches (0: none).")
    ] = 15,
) -> None:
    """Feature extraction and LoRA training images/s of B/16- and L/14-sized random backbones in bf16, with
    SDPA, channels-last and torch.compile on and off, packed cells beside separate trials at few-shot
    batches, and peak memory: one prepared run for a GPU machine."""
    import torch

    from cytotune.bench.gpu import BACKBONES, HEADER, LORA_BATCHES, pack_ratios, plan_cases, run_gpu_bench

    if device == "cuda" and not torch.cuda.is_available():
        raise CytotuneError(
            "bench gpu: no CUDA device here (torch.cuda.is_available() is False); "
            "expected a machine with a GPU"
        )
    cases = plan_cases(backbone or BACKBONES, batch or LORA_BATCHES, feature_batch, compile_cases, pack)
    typer.echo(f"gpu benchmark: {len(cases)} cases, ~{seconds:g} s each after warm-up; figures -> {out}")
    typer.echo(HEADER)
    figures = run_gpu_bench(cases, out, device=torch.device(device), seconds=seconds, say=typer.echo)
    for line in pack_ratios(figures):
        typer.echo(line)


@bench_app.command("pack")
def bench_pack_command(
    backbone: Annotated[
        str, typer.Option(help="A backbone; NAME@random needs no weights.")
    ] = "vit_b16@random",
    batch_sizes: Annotated[str, typer.Option(help="Few-shot batch sizes, comma-separated.")] = "4,16,32",
    steps: Annotated[int, typer.Option(help="Optimisation steps per trial.")] = 3,
    max_images_per_pass: Annotated[
        int, typer.Option(help="Images in one packed backbone pass; bigger sweeps split into packs.")
    ] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Keep data and caches here (default: temp).")] = None,
) -> None:
    """Train a cell's LoRA sweep (5 lr x 3 seeds) as 15 separate trials and packed, side by side: training
    images per second, wall and CPU seconds, at each few-shot batch size."""
    import torch

    from cytotune.bench.common import set_threads, work_folder
    from cytotune.bench.pack import HEADER, bench_pack
    from cytotune.train.runtime import resolve_device

    try:
        sizes = [int(size) for size in batch_sizes.split(",")]
    except ValueError:
        raise CytotuneError(
            f"--batch-sizes {batch_sizes!r}: expected whole numbers separated by commas"
        ) from None
    set_threads(threads)
    with work_folder(work_dir) as folder:
        rows = bench_pack(
            folder,
            backbone=backbone,
            batch_sizes=sizes,
            steps=steps,
            max_images_per_pass=max_images_per_pass,
            device=device,
        )
    typer.echo(
        f"pack benchmark: {backbone} on {resolve_device(device)}, {torch.get_num_threads()} torch threads, "
        f"{rows[0].configurations} configurations (5 lr x 3 seeds), {steps} steps each, synthetic 4 classes"
    )
    typer.echo(HEADER)
    for row in rows:
        typer.echo(row.line())


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except CytotuneError as err:
        typer.echo(f"cytotune: error: {err}", err=True)
        sys.exit(2)
