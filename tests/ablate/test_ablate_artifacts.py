"""The ablation's report as Prefect artifacts: the table (one row per variant, scores as columns) and
a markdown report with the table and the three figures inline; a report that cannot be written is a
warning, never a failed flow."""

from __future__ import annotations

import json

from prefect import flow
from test_ablate_report import write_variant

from vora_core.ablation.variants import Grid, Variant
from vora_core.catalog import parse_catalog


def test_report_artifacts(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.ablate import publish_report

    c = parse_catalog({"name": "art", "workdir": str(tmp_path), "sources": {"s": {"kind": "synthetic_shapes"}}})
    grid = Grid(variants={"vanilla": Variant(vision_attention="causal", distill="none"), "vora": Variant()})
    write_variant(tmp_path, "vanilla", [5.0, 4.0, 3.0, 2.0], None, {"mc": 0.25})
    write_variant(tmp_path, "vora", [5.0, 3.0, 2.0, 1.0], [2, 2, 1, 1], {"mc": 0.5})

    @flow
    def report_flow(broken: bool) -> dict | None:
        return publish_report(c if not broken else c.model_copy(update={"workdir": "/proc/nope"}), grid)

    written = report_flow(False)
    assert [r["variant"] for r in written["rows"]] == ["vanilla", "vora"]
    assert report_flow(True) is None  # unwritable: logged, the flow still completes
    with get_client(sync_client=True) as client:
        def latest(key: str):
            return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))[0]

        table = latest("art-ablate")
        report = latest("art-ablate-report")
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert [(r["variant"], r["mc"]) for r in rows] == [("vanilla", 0.25), ("vora", 0.5)]
    assert report.data.startswith("# Ablation (paper Table 2 at this catalog's scale)")
    assert report.data.count("data:image/png;base64,") == 3
