"""The `vora` command line. Prefect is imported only once the run's environment is set."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

from flows import embedded

# Before torch or Prefect is imported (vora_core.stages imports torch): libgomp reads its wait policy
# once, when torch loads it, and Prefect its settings when it is imported.
embedded.set_defaults()

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from vora_core.catalog import Catalog, load_catalog  # noqa: E402
from vora_core.errors import VoraError  # noqa: E402
from vora_core.stages import NAMES, check_stage, select_stages  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, help="VoRA pipeline: vision as LoRA, end to end.")
console = Console()
err_console = Console(stderr=True)

StageOpt = Annotated[list[str] | None, typer.Option(
    help=f"stage(s): repeat the option or give a comma list (download,mix); stages: {', '.join(NAMES)}")]


def _stages(values: list[str] | None) -> list[str] | None:
    """Repeated options and comma lists alike: ['download,mix', 'pretrain'] → ['download', 'mix', 'pretrain']."""
    if not values:
        return None
    return [check_stage(name.strip()) for value in values for name in value.split(",") if name.strip()] or None


LOG_FILE: Path | None = None  # where this command's full log (tracebacks included) goes, once known


def prefect_env(catalog: Catalog) -> None:
    """Embedded by default: Prefect's ephemeral server with its SQLite under the run's PREFECT_HOME,
    started here (with margin and a retry). With PREFECT_API_URL set, runs go to that server instead,
    checked first. Either way the terminal gets one line per log record, the run's log file the rest."""
    global LOG_FILE
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        os.environ.setdefault("PREFECT_HOME", str(Path(catalog.workdir).resolve() / ".prefect"))
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes one level only
    LOG_FILE = embedded.route_logs(Path(catalog.workdir))
    if url:
        embedded.check_api_url(url)
    else:
        embedded.start_embedded_server()


def _load(catalog_path: str) -> Catalog:
    catalog = load_catalog(catalog_path)
    prefect_env(catalog)
    return catalog


@app.command()
def status(
    catalog_path: Annotated[str, typer.Argument(metavar="CATALOG")],
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON (for scripts)")] = False,
) -> None:
    """Per stage and per source: units done / pending, samples, failures by reason."""
    from vora_core.stages import status as stage_status
    from vora_core.status import render

    catalog = load_catalog(catalog_path)
    figures = stage_status(catalog)
    if as_json:
        doc = {"catalog": catalog.name, "workdir": str(Path(catalog.workdir).resolve()), "stages": figures}
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        return
    width = max(console.width, 40)
    sys.stdout.write("\n".join(render(catalog.name, catalog.workdir, figures, width)) + "\n")


@app.command()
def sql(
    catalog_path: Annotated[str, typer.Argument(metavar="CATALOG")],
    query: Annotated[str | None, typer.Argument(help="SQL over the run's views; none: an interactive prompt")] = None,
    rows: Annotated[int, typer.Option(help="show at most this many rows")] = 40,
) -> None:
    """Query the run's manifest views (images, text, mixture, ... see README) with DuckDB."""
    from vora_core.manifest import open_manifest
    from vora_core.sql import repl, show

    catalog = load_catalog(catalog_path)
    con = open_manifest(catalog.run)
    try:
        width = max(console.width, 40)
        if query is not None:
            show(con, query, width, rows)
        else:
            repl(con, width, rows)
    finally:
        con.close()


@app.command()
def stage(
    name: Annotated[str, typer.Argument(metavar="STAGE", help=f"one of: {', '.join(NAMES)}")],
    catalog_path: Annotated[str, typer.Argument(metavar="CATALOG")],
    force: Annotated[bool, typer.Option(help="ignore this stage's completion markers")] = False,
) -> None:
    """Run one stage (its units that are not done yet)."""
    check_stage(name)
    _load(catalog_path)
    from flows.pipeline import STAGE_FLOWS

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
    only, force = _stages(only), _stages(force)
    select_stages(NAMES, only=only, from_=from_, until=until)  # fail fast, before Prefect starts
    catalog = _load(catalog_path)
    from flows.pipeline import vora_pipeline

    vora_pipeline(str(Path(catalog_path).resolve()), only=only, from_stage=from_, until_stage=until, force=force)
    console.print(f"[green]pipeline finished[/green]; results under {catalog.workdir}")


@app.command()
def ablate(
    catalog_path: Annotated[str, typer.Argument(metavar="CATALOG")],
    variants: Annotated[str | None, typer.Option(help="variants file (YAML); default: the paper's grid")] = None,
    only: Annotated[list[str] | None,
                    typer.Option(help="per-variant stage: pretrain, merge, finetune, evaluate")] = None,
    parallel: Annotated[int, typer.Option(min=1, help="variants running at once")] = 1,
    full_llm: Annotated[bool, typer.Option(
        help="add the full-LLM variant (no LoRA; the paper found it unstable)")] = False,
) -> None:
    """Run the paper's ablation grid: every variant over the same data, then figures and a table."""
    from vora_core.ablation.variants import check_stages, load_grid

    load_grid(variants, full_llm)  # fail fast, before Prefect starts
    check_stages(only)
    catalog = _load(catalog_path)
    from flows.ablate import ablate_flow

    ablate_flow(catalog_path, variants_path=variants, only=only, parallel=parallel, full_llm=full_llm)
    console.print(f"[green]ablation finished[/green]; table and figures under {catalog.run.root / 'ablations'}")


@app.command()
def deploy(
    catalog_path: Annotated[str, typer.Argument(metavar="CATALOG")],
    name: Annotated[str | None, typer.Option(help="deployment name (default: the catalog's name)")] = None,
    cron: Annotated[str | None, typer.Option(help="schedule, e.g. '0 3 * * *'")] = None,
    pool: Annotated[str | None, typer.Option(help="register on this work pool instead of serving")] = None,
    only: StageOpt = None,
) -> None:
    """Serve the pipeline as a deployment (or register it on a work pool) on PREFECT_API_URL's server."""
    only = _stages(only)
    catalog = load_catalog(catalog_path)
    if os.environ.get("PREFECT_API_URL"):  # without it, deploy says what to do
        prefect_env(catalog)
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
    from vora_core.stages.merge import merge_command

    result = merge_command(pretrain_dir, out_dir, MergeSettings(dtype=dtype), force=force)
    console.print(result)


def main() -> None:
    embedded.set_defaults()  # again for every call (a user's values still win): Prefect reads them as it starts
    try:
        app(standalone_mode=False)
    except VoraError as e:
        where = f" (full log: {LOG_FILE})" if LOG_FILE and not isinstance(e, embedded.PrefectUnavailable) else ""
        err_console.print(f"[red]error:[/red] {e}{where}", highlight=False, soft_wrap=True)
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
