"""The ablation's figures and table, from each variant's pretrain/metrics.jsonl and eval/summary.json:

* `ablations/loss.png`        pretraining LM loss of every variant, smoothed, on one plot (paper Figure 6);
* `ablations/distill.png`     mean distillation loss per block per variant over the last quarter of
                              pretraining (Figure 5; variants without distillation have none);
* `ablations/efficiency.json/.png`  steps each variant needs to reach each LM-loss threshold, as a
                              percentage of the baseline's (Figure 7);
* `ablations/table.md/.json`  final pretraining losses and every held-out benchmark score per variant
                              (Table 2), with our ordering next to the paper's.

Variants that have not pretrained yet get a row with empty cells; nothing here fails the ablation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vora_core.ablation.variants import Grid, variant_root
from vora_core.catalog import Catalog
from vora_core.train.metrics import read_metrics
from vora_core.workdir import atomic_path, atomic_write_json, atomic_write_text, read_marker

# The paper's Table 2 average score of the default grid's variants, and its pretraining-loss claims (§5.2).
PAPER_AVERAGE = {"vanilla": 50.6, "bidir": 50.7, "causal-blockwise": 53.2, "bidir-last": 52.9,
                 "bidir-blockwise-half": 55.6, "vora": 55.6}
PAPER_LOSS_ORDER = ["vora", "bidir-blockwise-half", "bidir-last", "bidir", "vanilla"]
PAPER_CLAIMS = [
    "bidirectional beats causal at the same rank and distillation, in loss and in distillation loss",
    "last-block distillation beats none (−0.016 loss, +2.7 points); block-wise beats last-block (another −0.016, +2.7)",
    "rank r/2: +0.006 pretraining loss, the same average score",
    "data efficiency vs vanilla: bidirectional + block-wise needs 95.7 % of the steps to reach loss 1.5 and 64.5 % to "
    "reach 1.1; bidirectional without distillation 102.2 % and 84.3 %",
]
EFFICIENCY_POINTS = 5


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def curves(catalog: Catalog, grid: Grid) -> dict[str, list[dict]]:
    """Each variant's pretraining metrics (finite steps only; a variant not started has [])."""
    out = {}
    for name in grid.variants:
        rows = read_metrics(variant_root(catalog, name) / "pretrain" / "metrics.jsonl")
        out[name] = [r for r in rows if not r.get("skipped")]
    return out


def window_of(grid: Grid, runs: dict[str, list[dict]]) -> int:
    longest = max((len(r) for r in runs.values()), default=0)
    return grid.smooth or max(1, round(longest / 20))


def smoothed_lm(rows: list[dict], window: int) -> tuple[list[int], list[float]]:
    return [r["step"] for r in rows], smooth([r["lm_loss"] for r in rows], window)


def block_distill(rows: list[dict]) -> dict[str, float]:
    """Mean distillation loss per block over the last quarter of the run."""
    tail = [r for r in rows[len(rows) * 3 // 4:] if r.get("distill_blocks")]
    blocks = sorted({b for r in tail for b in r["distill_blocks"]}, key=int)
    return {b: sum(r["distill_blocks"][b] for r in tail) / len(tail) for b in blocks}


def default_thresholds(steps: list[int], lm: list[float]) -> list[float]:
    """Evenly spaced between the baseline's smoothed loss a quarter of the way in and its final one."""
    if len(lm) < 2:
        return []
    hi, lo = lm[len(lm) // 4], lm[-1]
    if hi <= lo:
        return [round(lo, 4)]
    return [round(hi - (hi - lo) * k / (EFFICIENCY_POINTS - 1), 4) for k in range(EFFICIENCY_POINTS)]


def steps_to(steps: list[int], lm: list[float], threshold: float) -> int | None:
    return next((s for s, v in zip(steps, lm, strict=True) if v <= threshold), None)


def efficiency(grid: Grid, runs: dict[str, list[dict]], window: int) -> dict[str, Any]:
    smoothed = {n: smoothed_lm(rows, window) for n, rows in runs.items()}
    thresholds = grid.thresholds or default_thresholds(*smoothed[grid.baseline])
    base = {t: steps_to(*smoothed[grid.baseline], t) for t in thresholds}
    table = {}
    for name, (steps, lm) in smoothed.items():
        table[name] = []
        for t in thresholds:
            s = steps_to(steps, lm, t)
            rel = round(100.0 * s / base[t], 1) if s is not None and base[t] else None
            table[name].append({"threshold": t, "steps": s, "percent_of_baseline": rel})
    return {"baseline": grid.baseline, "smooth": window, "thresholds": thresholds, "variants": table}


def scores(catalog: Catalog, name: str) -> dict[str, float]:
    path = variant_root(catalog, name) / "eval" / "summary.json"
    if not path.exists():
        return {}
    benchmarks = json.loads(path.read_text()).get("benchmarks", {})
    return {b: row["value"] for b, row in benchmarks.items() if row.get("value") is not None}


def data_order(catalog: Catalog, name: str) -> str | None:
    """The fingerprint of the variant's sample index (mixture, tokenizer, geometry, sequence settings):
    with the same training seed, the same fingerprint means the same samples in the same order."""
    marker = read_marker(variant_root(catalog, name) / "pretrain" / "samples.arrow")
    return marker.get("fingerprint") if marker else None


def table_rows(catalog: Catalog, grid: Grid, runs: dict[str, list[dict]], window: int) -> list[dict]:
    rows = []
    for name, variant in grid.variants.items():
        derived = variant.model_overrides(catalog.model.lora_rank)
        model = {**catalog.model.model_dump(), **derived}
        metrics = runs[name]
        blocks = block_distill(metrics)
        got = scores(catalog, name)
        row: dict[str, Any] = {
            "variant": name, "mask": model["vision_attention"], "distill": model["distill"],
            "lora_rank": model["lora_rank"], "steps": metrics[-1]["step"] if metrics else None,
            "final_lm_loss": _round(metrics[-1]["lm_loss"]) if metrics else None,
            "final_lm_loss_smoothed": _round(smoothed_lm(metrics, window)[1][-1]) if metrics else None,
            "avg_distill": _round(sum(blocks.values()) / len(blocks)) if blocks else None,
            "scores": {b: _round(v) for b, v in sorted(got.items())},
            "average": _round(sum(got.values()) / len(got)) if got else None,
            "data_order": data_order(catalog, name), "paper_average": PAPER_AVERAGE.get(name),
        }
        rows.append(row)
    return rows


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, digits)


def ordering(rows: list[dict], key: str, reverse: bool) -> list[str]:
    """Variant names sorted by `key` (those without a value left out)."""
    have = [r for r in rows if r.get(key) is not None]
    return [r["variant"] for r in sorted(have, key=lambda r: r[key], reverse=reverse)]


def table_markdown(rows: list[dict], eff: dict[str, Any]) -> str:
    benches = sorted({b for r in rows for b in r["scores"]})
    head = ["variant", "mask", "distillation", "rank", "steps", "final LM loss", "smoothed", "avg distill",
            *benches, "average", "paper avg"]
    lines = ["# Ablation (paper Table 2 at this catalog's scale)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], r["mask"], r["distill"], r["lora_rank"], r["steps"], r["final_lm_loss"],
                 r["final_lm_loss_smoothed"], r["avg_distill"], *(r["scores"].get(b) for b in benches),
                 r["average"], r["paper_average"]]
        lines.append("| " + " | ".join("–" if c is None else str(c) for c in cells) + " |")
    orders = {r["data_order"] for r in rows if r["data_order"]}
    lines += ["", f"Data order: {'the same for every variant' if len(orders) == 1 else 'DIFFERS between variants'}"
              f" (sample index {', '.join(sorted(orders)) or 'not built yet'}, same training seed).", "",
              "## Ordering", "",
              "* ours, by final smoothed LM loss (lowest first): "
              f"{', '.join(ordering(rows, 'final_lm_loss_smoothed', False)) or '–'}",
              f"* paper, by pretraining loss (lowest first, §5.2): {', '.join(PAPER_LOSS_ORDER)}",
              f"* ours, by average held-out score (highest first): {', '.join(ordering(rows, 'average', True)) or '–'}",
              f"* paper, by Table 2 average (highest first): {', '.join(ordering(rows, 'paper_average', True)) or '–'}",
              "", "The paper's conclusions, to compare with:", ""]
    lines += [f"* {c}" for c in PAPER_CLAIMS]
    lines += ["", f"## Data efficiency (steps to reach a smoothed LM loss, % of {eff['baseline']})", ""]
    if eff["thresholds"]:
        lines += ["| variant | " + " | ".join(str(t) for t in eff["thresholds"]) + " |",
                  "|---|" + "---|" * len(eff["thresholds"])]
        for name, cells in eff["variants"].items():
            lines.append(f"| {name} | " + " | ".join(
                "not reached" if c["steps"] is None else f"{c['steps']} ({c['percent_of_baseline']} %)"
                for c in cells) + " |")
    else:
        lines.append(f"no thresholds yet: {eff['baseline']} has not pretrained")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ plots


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(runs: dict[str, list[dict]], window: int, out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, rows in runs.items():
        if rows:
            ax.plot(*smoothed_lm(rows, window), label=name, linewidth=1.2)
    ax.set(xlabel="step", ylabel=f"LM loss (moving average, {window} steps)", title="Pretraining loss per variant")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_distill(runs: dict[str, list[dict]], out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, rows in runs.items():
        blocks = block_distill(rows)
        if blocks:
            ax.plot([int(b) for b in blocks], list(blocks.values()), marker="o", label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="LLM block", ylabel="distillation loss (mean, last quarter)",
           title="Distillation loss per block (variants with distillation)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_efficiency(eff: dict[str, Any], out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, cells in eff["variants"].items():
        pts = [(c["threshold"], c["percent_of_baseline"]) for c in cells if c["percent_of_baseline"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.axhline(100, color="grey", linewidth=0.8)
    ax.invert_xaxis()  # lower loss targets to the right, as training goes
    ax.set(xlabel="LM loss threshold (smoothed)", ylabel=f"steps needed, % of {eff['baseline']}",
           title="Data efficiency")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, out)


def write_report(catalog: Catalog, grid: Grid) -> dict[str, Any]:
    """Write every figure and the table under `<workdir>/ablations/`; return the table rows and paths."""
    root = catalog.run.root / "ablations"
    runs = curves(catalog, grid)
    window = window_of(grid, runs)
    eff = efficiency(grid, runs, window)
    rows = table_rows(catalog, grid, runs, window)
    files = {
        "loss": plot_losses(runs, window, root / "loss.png"),
        "distill": plot_distill(runs, root / "distill.png"),
        "efficiency": atomic_write_json(root / "efficiency.json", eff),
        "efficiency_png": plot_efficiency(eff, root / "efficiency.png"),
        "table": atomic_write_json(root / "table.json", {"rows": rows, "smooth": window,
                                                          "paper_claims": PAPER_CLAIMS,
                                                          "paper_loss_order": PAPER_LOSS_ORDER}),
        "table_md": atomic_write_text(root / "table.md", table_markdown(rows, eff)),
    }
    return {"rows": rows, "files": {k: str(v) for k, v in files.items()}}
