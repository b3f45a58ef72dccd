"""The `cytotune` command line: parse, call, print. No logic of its own."""

from __future__ import annotations

import sys

import typer

from cytotune import __version__
from cytotune.errors import CytotuneError

app = typer.Typer(
    help="cytotune: hyperparameter studies adapting vision foundation models to cytology.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Datasets: generate synthetic data, prepare manifests, inspect.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks, printed as ratios measured side by side in one run.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")


@app.command()
def version() -> None:
    """Print the cytotune version."""
    typer.echo(__version__)


# --- data -----------------------------------------------------------------------------------------------------

# --- backbones and one trial ----------------------------------------------------------------------------------

# --- study ----------------------------------------------------------------------------------------------------

# --- tracking and reports -------------------------------------------------------------------------------------

# --- benchmarks -----------------------------------------------------------------------------------------------


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except CytotuneError as err:
        typer.echo(f"cytotune: error: {err}", err=True)
        sys.exit(2)
