"""The mix stage's failures report: the text sources' rejected rows by reason (no Prefect)."""

from __future__ import annotations

from tests.mix.conftest import rejecting_text_catalog
from vora_core.catalog import load_catalog
from vora_core.stages import mix
from vora_core.workdir import run_unit_with_marker


def test_failure_report_counts_rejects_over_rows_read(tmp_path):
    catalog = load_catalog(rejecting_text_catalog(tmp_path))
    for unit in mix.plan(catalog):
        if unit.params["kind"] == "text":
            run_unit_with_marker(unit, lambda u: mix.run_unit(catalog, u))
    report = mix.failure_report(catalog)
    # rows = written + rejected over both sources: (2 + 3) + (1 + 2)
    assert {k: report[k] for k in ("stage", "rows", "failed", "share", "view")} == {
        "stage": "mix", "rows": 8, "failed": 5, "share": 0.625, "view": "text_rejects"}
    assert [(r["reason"], r["count"], r["share"]) for r in report["reasons"]] == [
        ("malformed", 3, 0.375), ("unknown_role", 2, 0.25)]
    malformed, unknown = report["reasons"]
    assert [(e["source"], e["row"], e["id"]) for e in malformed["examples"]] == [
        ("sg", 3, None), ("sg", 4, "e"), ("smol", 2, "000000002")]
    assert [e["detail"] for e in malformed["examples"]][1:] == ["no `conversations` list", "no `messages` list"]
    assert malformed["examples"][0]["detail"].endswith("sg.jsonl: Expecting property name enclosed in double "
                                                       "quotes: line 1 column 2 (char 1)")
    assert unknown["examples"] == [{"source": "sg", "row": 2, "id": "c", "detail": "alien"},
                                   {"source": "smol", "row": 1, "id": "000000001", "detail": "tool"}]
    # A text source no longer in the catalog is not counted (its files stay on disk).
    del catalog.text_sources["smol"]
    report = mix.failure_report(catalog)
    assert (report["rows"], report["failed"], report["share"]) == (5, 3, 0.6)
