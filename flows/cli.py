"""The `vora` command line. Prefect is imported only once the run's environment is set."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vora_core.catalog import Catalog, load_catalog
from vora_core.errors import VoraError
from vora_core.stages import check_stage, select_stages
from vora_core.workdir import STAGES

app = typer.Typer(add_completion=False, no_args_is_help=True, help="VoRA pipeline: vision as LoRA, end to end.")
console = Console()
err_console = Console(stderr=True)

StageOpt = Annotated[list[str] | None, typer.Option(help=f"stage name: {', '.join(STAGES)}")]


def prefect_env(catalog: Catalog) -> None:
    """Embedded by default: Prefect's ephemeral server with its SQLite under the run's PREFECT_HOME.
    With PREFECT_API_URL set, runs go to that server instead."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(Path(catalog.workdir).resolve() / ".prefect"))
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes one level only


def _load(catalog_path: str) -> Catalog:
    catalog = load_catalog(catalog_path)
    prefect_env(catalog)
    return catalog


@app.command()
def status(catalog_path: Annotated[str, typer.Argument(metavar="CATALOG")]) -> None:
    """Per stage and per source: units done / pending, samples, failures by reason."""
    from vora_core.status import stage_status

    catalog = load_catalog(catalog_path)
    console.print(f"[bold]{catalog.name}[/bold]  run directory: {catalog.workdir}")
    for stage, rows in stage_status(catalog).items():
        if not rows:
            console.print(f"{stage}: nothing planned yet")
            continue
        # One column per source, one row per figure: readable in 80 columns.
        table = Table(title=stage, title_justify="left")
        table.add_column("")
        head = next((k for k in ("source", "benchmark", "unit") if k in rows[0]), None)
        for row in rows:
            table.add_column(str(row.get(head, "")) if head else "")
        for field in dict.fromkeys(k for row in rows for k in row if k != head):
            table.add_row(field, *(_cell(row.get(field)) for row in rows))
        console.print(table)


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, float):  # scores and losses need their decimals; seconds and rates do not
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return "-" if value is None else str(value)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(metavar="STAGE", help=f"one of: {', '.join(STAGES)}")],
    catalog_path: Annotated[str, typer.Argument(metavar="CATALOG")],
    force: Annotated[bool, typer.Option(help="ignore this stage's completion markers")] = False,
) -> None:
    """Run one stage (its units that are not done yet)."""
    check_stage(name)
    _load(catalog_path)
    from flows.pipeline import STAGE_FLOWS

    if name not in STAGE_FLOWS:
        raise VoraError(f"stage {name!r} is not built yet; available: {', '.join(STAGE_FLOWS)}")
    STAGE_FLOWS[name](str(Path(catalog_path).resolve()), force=force)  # absolute in the UI
    console.print(f"[green]{name} finished[/green] — `vora status {catalog_path}` shows the counts")


@app.command()
def run(
    catalog_path: Annotated[str, typer.Argument(metavar="CATALOG")],
    only: StageOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="run this stage and all after it")] = None,
    until: Annotated[str | None, typer.Option(help="stop after this stage")] = None,
    force: StageOpt = None,
) -> None:
    """Run the pipeline (every unit not yet done), optionally a slice of its stages."""
    select_stages(STAGES, only=only, from_=from_, until=until)  # fail fast, before Prefect starts
    for name in force or []:
        check_stage(name)
    catalog = _load(catalog_path)
    from flows.pipeline import vora_pipeline

    vora_pipeline(str(Path(catalog_path).resolve()), only=only, from_stage=from_, until_stage=until, force=force)
    console.print(f"[green]pipeline finished[/green]; results under {catalog.workdir}")


@app.command()
def deploy(
    catalog_path: Annotated[str, typer.Argument(metavar="CATALOG")],
    name: Annotated[str | None, typer.Option(help="deployment name (default: the catalog's name)")] = None,
    cron: Annotated[str | None, typer.Option(help="schedule, e.g. '0 3 * * *'")] = None,
    pool: Annotated[str | None, typer.Option(help="register on this work pool instead of serving")] = None,
    only: StageOpt = None,
) -> None:
    """Serve the pipeline as a deployment (or register it on a work pool) on PREFECT_API_URL's server."""
    catalog = load_catalog(catalog_path)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.deploy import deploy as do_deploy

    deployment_id = do_deploy(catalog_path, name or catalog.name, cron=cron, pool=pool, only=only)
    if deployment_id:
        console.print(f"deployment vora-pipeline/{name or catalog.name} ({deployment_id}) on pool {pool}")


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="a VoRA model directory (merged or finetuned)")],
    question: Annotated[str, typer.Argument()],
    image: Annotated[list[str] | None, typer.Option("--image", help="an image file; repeat for several")] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
) -> None:
    """Ask a model about images (or text only); the answer streams to the terminal."""
    from vora_core.eval.chat import chat_command

    chat_command(model, question, image or [], max_new_tokens=max_new_tokens, temperature=temperature,
                 top_p=top_p, seed=seed, device=device, dtype=dtype,
                 echo=lambda s: (sys.stdout.write(s), sys.stdout.flush()))


@app.command()
def merge(
    pretrain_dir: Annotated[str, typer.Argument(metavar="PRETRAIN_DIR")],
    out_dir: Annotated[str, typer.Argument(metavar="OUT_DIR")],
    dtype: Annotated[str, typer.Option(help="storage dtype: float32 | bfloat16 | float16")] = "float32",
    force: Annotated[bool, typer.Option(help="redo even if OUT_DIR holds a matching merge")] = False,
) -> None:
    """Merge a pretrained VoRA adapter into its LLM (exact, fp32) and check the logits."""
    from vora_core.catalog import MergeSettings
    from vora_core.merge_stage import merge_command

    result = merge_command(pretrain_dir, out_dir, MergeSettings(dtype=dtype), force=force)
    console.print(result)


def main() -> None:
    try:
        app(standalone_mode=False)
    except VoraError as e:
        err_console.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
