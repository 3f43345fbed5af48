"""`vora status`: per stage and per source, units done / pending, samples, failures by reason.

`vora_core.stages.status` gathers the figures (also `vora status --json`); `render` lays them out for a terminal
of any width down to 80 columns: per stage a narrow table when one fits, else one block of
`key: value` rows per source or unit — values wrap under themselves, names are never cut.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

HEADS = ("benchmark", "unit", "source")  # the field that names a row, first found (a merge's source is a path)


def cell(value: object, root: str = "") -> str:
    """One value as text: run paths relative to the run directory, floats with the decimals that matter."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v, root)}" for k, v in value.items()) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):  # scores and losses need their decimals; seconds and rates do not
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, str) and root and value.startswith(root + "/"):
        return value[len(root) + 1:]
    return "-" if value is None or value == "" else str(value)


def _table(rows: list[dict], head: str | None, root: str, width: int) -> list[str] | None:
    """A narrow table (one line per row), or None when it would not fit `width` or hold a dict."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    if any(isinstance(row.get(f), dict) and row.get(f) for row in rows for f in fields):
        return None
    if head:
        fields.remove(head)
        fields.insert(0, head)
    cells = [[cell(row.get(f), root) for f in fields] for row in rows]
    widths = [max(len(f), *(len(c[i]) for c in cells)) for i, f in enumerate(fields)]
    if 2 + sum(widths) + 2 * (len(widths) - 1) > width:
        return None

    def line(values: list[str]) -> str:
        return "  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                                enumerate(zip(values, widths, strict=True))).rstrip()
    return [line(fields), *(line(c) for c in cells)]


def _block(row: dict, head: str | None, root: str, width: int) -> list[str]:
    """`key: value` rows (figures not known yet left out); a dict value gets one indented row per key;
    long values wrap under themselves."""
    items: list[tuple[str, str]] = []
    for key, value in row.items():
        if key == head or value is None:
            continue
        if isinstance(value, dict) and value:
            items.append((key, ""))
            items += [(f"  {k}", cell(v, root)) for k, v in value.items()]
        else:
            items.append((key, cell(value, root)))
    # keys longer than this (a failure reason, say) take a line of their own, their value under them
    key_width = max((len(k) + 1 for k, _ in items if len(k) < 28), default=0)
    indent = 4 if head else 2
    lines = textwrap.wrap(cell(row[head], root), width - 2, initial_indent="  ", subsequent_indent="    ",
                          break_on_hyphens=False) if head else []
    for key, value in items:
        label = f"{key}:".ljust(key_width) if value else f"{key}:"
        room = max(width - indent - key_width - 1, 10)
        if len(label) > key_width:  # a long key (e.g. a failure reason): its value on the next line
            lines += textwrap.wrap(label, width - indent, initial_indent=" " * indent,
                                   subsequent_indent=" " * (indent + 2), break_on_hyphens=False)
            label = " " * key_width
        wrapped = textwrap.wrap(value, room, break_on_hyphens=False) or [""]
        lines.append(" " * indent + f"{label} {wrapped[0]}".rstrip())
        lines += [" " * (indent + key_width + 1) + w for w in wrapped[1:]]
    return lines


def render(name: str, workdir: str | Path, status: dict[str, list[dict]], width: int = 80) -> list[str]:
    """The status as lines of at most `width` characters (`width` >= 40)."""
    root = str(Path(workdir).resolve())
    lines = textwrap.wrap(f"{name} — run directory {workdir}", width, break_on_hyphens=False)
    for stage, rows in status.items():
        lines.append("")
        if not rows:
            lines.append(f"{stage}: nothing planned yet")
            continue
        lines.append(stage)
        head = next((k for k in HEADS if k in rows[0]), None)
        table = _table(rows, head, root, width)
        if table is not None:
            lines += table
            continue
        for i, row in enumerate(rows):
            if i:
                lines.append("")
            lines += _block(row, head, root, width)
    return lines


# ----------------------------------------------------------------------------- a unit's headline


def _counts(counts: dict | None, top: int = 3, longest: int = 60) -> str:
    """`{"bad_url": 3, "timeout": 1}` → "bad_url 3, timeout 1": the `top` most frequent (a log line is a
    glance; the failures artifact and `vora status` hold every reason in full), each cut at `longest`."""
    items = sorted((counts or {}).items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{k if len(k) <= longest else k[:longest - 1] + '…'} {v:,}" for k, v in items[:top])
    return text + (f", {len(items) - top} more reasons" if len(items) > top else "")


def _with(text: str, extra: str, label: str = "") -> str:
    return f"{text} ({label}{extra})" if extra else text


def _training_headline(stats: dict) -> str:
    parts = [f"{stats.get('steps', 0):,} steps"]
    if stats["final_loss"] is not None:
        first = f"{stats['first_loss']:.3f} → " if stats.get("first_loss") is not None else ""
        parts.append(f"loss {first}{stats['final_loss']:.3f}")
    if stats.get("final_distill") is not None:
        parts.append(f"distill {stats['final_distill']:.3f}")
    if stats.get("nan_steps"):
        parts.append(f"{stats['nan_steps']:,} non-finite steps skipped")
    return ", ".join(parts)


def headline(stats: dict) -> str:
    """A finished (or skipped) unit's figures in one short phrase for the run's log line — what an operator
    looks for first: a benchmark's score, a training run's final loss, a merge's check, a unit's counts.
    "" when the stats hold none of them (reporting never fails the work: see flows.common). A unit whose
    stats compose their own (`headline`: an ablation variant's losses and scores) gives that."""
    if stats.get("headline"):
        return str(stats["headline"])
    if "value" in stats and "main" in stats:  # evaluate
        value = stats["value"]
        score = "no score" if value is None else f"{stats['main']} {value:.3f}"
        return _with(f"{score} on {stats.get('scored', 0):,} questions", f"{stats.get('rejected', 0):,} rejected"
                     if stats.get("rejected") else "")
    if "final_loss" in stats:  # pretrain, finetune
        return _training_headline(stats)
    if "max_abs_logit_diff" in stats:  # merge
        passed = bool(stats.get("passed"))
        return (f"check {'passed' if passed else 'FAILED'}: max |Δ logit| {stats['max_abs_logit_diff']:.2e} "
                f"{'≤' if passed else '>'} bound {stats.get('bound') or 0:.2e} ({stats.get('dtype', '?')})")
    if "successes" in stats:  # download shard unit
        return _with(f"{stats['successes']:,} images, {stats.get('failures', 0):,} failed",
                     _counts(stats.get("failures_by_reason")))
    if "input_rows" in stats:  # download-prepare
        left = {**stats.get("filtered", {}), **stats.get("rejected", {})}
        return _with(f"{stats.get('rows', 0):,} of {stats['input_rows']:,} rows kept", _counts(left))
    if "captions" in stats:  # recaption
        return _with(f"{stats['captions']:,} captions of {stats.get('images', 0):,} images",
                     _counts(stats.get("flags")), "flagged: ")
    if "written" in stats:  # mix: a text source
        return _with(f"{stats['written']:,} rows, {stats.get('rejected', 0):,} rejected",
                     _counts(stats.get("rejected_by_reason")))
    if "by_source" in stats:  # mix: a mixture
        return _with(f"{stats.get('rows', 0):,} rows from {len(stats['by_source'])} sources",
                     _counts(stats.get("left_out")), "left out: ")
    return ""
