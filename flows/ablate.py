"""ablate: the data stages once (shared), the shared tiny models, then one task per variant (its
pretrain → merge → finetune → evaluate, vora_core.ablation.chain), then the figures and the table
(vora_core.ablation.report) as files under <workdir>/ablations/ and as artifacts."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import artifact_key, map_units, png_markdown, run_name
from flows.pipeline import vora_pipeline
from flows.train import step_progress
from vora_core.ablation import chain, report
from vora_core.ablation.variants import Grid, check_stages, load_grid
from vora_core.catalog import Catalog, load_catalog
from vora_core.train.launch import trainers_side_by_side


def publish_report(catalog: Catalog, grid: Grid) -> dict | None:
    """Write the figures and the table, and publish them; a reporting failure is logged, never raised."""
    logger = get_run_logger()
    try:
        written = report.write_report(catalog, grid)
        rows = [{k: v for k, v in r.items() if k != "scores"} | r["scores"] for r in written["rows"]]
        create_table_artifact(rows, key=artifact_key(catalog.name, "ablate"),
                              description="ablate: final pretraining loss and held-out scores per variant")
        root = catalog.run.root / "ablations"
        markdown = (root / "table.md").read_text() + "\n" + "\n".join(
            png_markdown(title, root / name, heading="##") for title, name in
            (("Pretraining loss", "loss.png"), ("Distillation loss per block", "distill.png"),
             ("Data efficiency", "efficiency.png")))
        create_markdown_artifact(markdown, key=artifact_key(catalog.name, "ablate", "report"),
                                 description="ablate: table and figures")
        return written
    except Exception as e:  # reporting never fails the work
        logger.warning("ablate: report not written: %s: %s", type(e).__name__, e)
        return None


def variant_progress(record: dict) -> None:
    """The `on_progress` hook of a variant: a `<variant> <stage>: n/N steps` meter per training run
    (log lines in the flow's log and the UI while a variant trains)."""
    step_progress(f"{record['variant']} {record['stage']}", None)(record)


@flow(name="ablate", log_prints=True, flow_run_name=run_name("ablate"))
def ablate_flow(catalog_path: str, variants_path: str | None = None, only: list[str] | None = None,
                parallel: int = 1, full_llm: bool = False) -> dict[str, object]:
    catalog = load_catalog(catalog_path)
    grid = load_grid(variants_path, full_llm)
    check_stages(only)
    vora_pipeline(catalog_path, until_stage="mix")  # download, recaption, mix: once, for every variant
    chain.prepare_shared(catalog, on_progress=step_progress("ablate", None))  # the teacher's minutes, shown
    units = chain.plan(catalog, grid, only)
    get_run_logger().info("ablate: variants %s", ", ".join(u.id for u in units))
    try:
        with trainers_side_by_side(min(parallel, len(units))):
            results = map_units(chain, catalog, "ablate", units, parallel=parallel,
                                hooks={"on_progress": variant_progress})
    finally:
        written = publish_report(catalog, grid)
    return {"variants": results, "report": written}
