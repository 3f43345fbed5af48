"""`metrics.jsonl` (one JSON object per optimizer step) and `loss.png`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from vora_core.workdir import atomic_path, atomic_write_text


def read_metrics(path: str | Path) -> list[dict]:
    """Every complete line (a line cut by a crash is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep steps ≤ `last_step` (a resumed run rewrites what came after its checkpoint)."""
    rows = [r for r in read_metrics(path) if r["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


class MetricsLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed by close()

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def plot_loss(rows: Iterable[dict], out: str | Path, title: str = "") -> Path | None:
    """Loss, LM loss and distillation loss against the step (skipped steps left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not r.get("skipped")]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [r["loss"] for r in rows], label="loss", linewidth=1.5)
    ax.plot(steps, [r["lm_loss"] for r in rows], label="lm_loss", linewidth=1)
    if any(r.get("distill") for r in rows):
        ax.plot(steps, [r.get("distill") or 0.0 for r in rows], label="distill", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)
