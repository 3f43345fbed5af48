"""The ablation's figures and table from known metrics and scores: smoothing, steps to a loss
threshold relative to the baseline, per-block distillation means, one table row per variant."""

from __future__ import annotations

import json
from pathlib import Path

from vora_core.ablation.report import block_distill, default_thresholds, smooth, steps_to, write_report
from vora_core.ablation.variants import Grid, Variant
from vora_core.catalog import parse_catalog
from vora_core.workdir import write_marker


def test_smooth_is_a_trailing_moving_average():
    assert smooth([4.0, 2.0, 6.0, 0.0], 2) == [4.0, 3.0, 4.0, 3.0]
    assert smooth([1.0, 2.0], 1) == [1.0, 2.0]


def test_thresholds_and_steps_to_reach_them():
    steps, lm = [1, 2, 3, 4, 5, 6, 7, 8], [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]
    assert default_thresholds(steps, lm) == [7.0, 5.75, 4.5, 3.25, 2.0]  # from a quarter in to the end
    assert [steps_to(steps, lm, t) for t in (7.0, 4.5, 2.0, 1.0)] == [3, 6, 8, None]


def test_block_distill_averages_the_last_quarter():
    rows = [{"distill_blocks": {"1": 10.0, "2": 20.0}}] * 6 + [{"distill_blocks": {"1": 1.0, "2": 3.0}},
                                                                {"distill_blocks": {"1": 3.0, "2": 5.0}}]
    assert block_distill(rows) == {"1": 2.0, "2": 4.0}
    assert block_distill([{"distill_blocks": {}}] * 4) == {}


def write_variant(root: Path, name: str, lm: list[float], distill: list[float] | None, scores: dict[str, float]):
    pre = root / "ablations" / name / "pretrain"
    pre.mkdir(parents=True)
    rows = [{"step": i + 1, "loss": v, "lm_loss": v, "distill": None if distill is None else distill[i],
             "distill_blocks": {} if distill is None else {"1": distill[i], "2": 2 * distill[i]}, "skipped": False}
            for i, v in enumerate(lm)]
    (pre / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (pre / "samples.arrow").write_text("index")
    write_marker(pre / "samples.arrow", "same-order", {})
    ev = root / "ablations" / name / "eval"
    ev.mkdir()
    (ev / "summary.json").write_text(json.dumps({"benchmarks": {b: {"value": v} for b, v in scores.items()}}))


def test_report_writes_one_row_per_variant_and_every_figure(tmp_path):
    c = parse_catalog({"name": "r", "workdir": str(tmp_path), "sources": {"s": {"kind": "synthetic_shapes"}},
                       "model": {"lora_rank": 8}})
    grid = Grid(variants={"vanilla": Variant(vision_attention="causal", distill="none"),
                          "vora": Variant(distill="blockwise"), "pending": Variant(lora_rank_factor=0.5)},
                thresholds=[6.0, 3.0], smooth=1)
    write_variant(tmp_path, "vanilla", [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0], None, {"mc": 0.25, "yesno": 0.5})
    write_variant(tmp_path, "vora", [8.0, 6.0, 5.0, 3.0, 2.5, 2.0, 1.5, 1.0], [4, 4, 4, 4, 4, 4, 1, 3],
                  {"mc": 0.5, "yesno": 0.75})
    out = write_report(c, grid)
    root = tmp_path / "ablations"
    for name in ("loss.png", "distill.png", "efficiency.png", "efficiency.json", "table.md", "table.json"):
        assert (root / name).stat().st_size > 0, name
    rows = {r["variant"]: r for r in json.loads((root / "table.json").read_text())["rows"]}
    assert list(rows) == ["vanilla", "vora", "pending"]
    assert rows["vanilla"] == {
        "variant": "vanilla", "mask": "causal", "distill": "none", "lora_rank": 8, "steps": 8, "final_lm_loss": 2.0,
        "final_lm_loss_smoothed": 2.0, "avg_distill": None, "scores": {"mc": 0.25, "yesno": 0.5}, "average": 0.375,
        "data_order": "same-order", "paper_average": 50.6}
    assert rows["vora"]["avg_distill"] == 3.0  # blocks 1 and 2 over the last two steps: (2 + 4) / 2
    assert rows["vora"]["paper_average"] == 55.6 and rows["vora"]["average"] == 0.625
    assert rows["pending"]["lora_rank"] == 4 and rows["pending"]["steps"] is None and rows["pending"]["scores"] == {}
    eff = json.loads((root / "efficiency.json").read_text())
    assert eff["thresholds"] == [6.0, 3.0]
    assert eff["variants"]["vanilla"] == [{"threshold": 6.0, "steps": 3, "percent_of_baseline": 100.0},
                                          {"threshold": 3.0, "steps": 6, "percent_of_baseline": 100.0}]
    assert eff["variants"]["vora"] == [{"threshold": 6.0, "steps": 2, "percent_of_baseline": 66.7},
                                       {"threshold": 3.0, "steps": 4, "percent_of_baseline": 66.7}]
    assert eff["variants"]["pending"] == [{"threshold": 6.0, "steps": None, "percent_of_baseline": None},
                                          {"threshold": 3.0, "steps": None, "percent_of_baseline": None}]
    md = (root / "table.md").read_text()
    assert "| vanilla | causal | none | 8 | 8 | 2.0 | 2.0 | – | 0.25 | 0.5 | 0.375 | 50.6 |" in md
    assert "* ours, by final smoothed LM loss (lowest first): vora, vanilla" in md
    assert "* ours, by average held-out score (highest first): vora, vanilla" in md
    assert "Data order: the same for every variant (sample index same-order, same training seed)." in md
    assert "| vora | 2 (66.7 %) | 4 (66.7 %) |" in md
    assert "| pending | not reached | not reached |" in md
    assert sorted(out["files"]) == ["distill", "efficiency", "efficiency_png", "loss", "table", "table_md"]
