"""scripts/text_matching.py (the README's probe of what the tiny LLM can learn) runs end to end on a tiny LLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_probe_prints_one_line_per_report_with_every_task(tiny):
    out = subprocess.run([sys.executable, "scripts/text_matching.py", str(tiny.llm_dir), "--tasks", "mc,yesno",
                          "--lm-steps", "2", "--steps", "4", "--every", "2", "--batch", "4", "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["phase"], r["step"]) for r in rows] == [("reading", 2), ("answers", 2), ("answers", 4)]
    for r in rows:
        assert set(r) == {"phase", "step", "loss", "short", "mc", "yesno", "seconds", "reading/yesno",
                          "reading/options", "reading/word"}
        assert all(0.0 <= r[t] <= 1.0 for t in ("short", "mc", "yesno", "reading/yesno"))
    bad = subprocess.run([sys.executable, "scripts/text_matching.py", str(tiny.llm_dir), "--tasks", "mc,maths"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1].endswith(
        "error: unknown task(s) maths; tasks are short, mc, yesno")
