"""Terminal progress: the text of a progress line (rate, ETA), plain log lines off a terminal, and a
live display under a pseudo-terminal for a real `vora stage download`."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows import progress

VORA = str(Path(sys.executable).with_name("vora"))


def test_duration_and_rate_text():
    assert progress.duration_text(0) == "0:00:00"
    assert progress.duration_text(65.4) == "0:01:05"
    assert progress.duration_text(3 * 3600 + 7) == "3:00:07"
    assert progress.rate_text(2.5, "units") == "2.5 units/s"
    assert progress.rate_text(0.2, "steps") == "12.0 steps/min"
    assert progress.rate_text(0.0005, "units") == "1.8 units/h"


def test_progress_text():
    assert progress.progress_text(0, 4, "units", 0.0) == "0/4 units, ETA ?"
    assert progress.progress_text(1, 4, "units", 2.0) == "1/4 units, 30.0 units/min, ETA 0:00:06"
    assert progress.progress_text(3, 4, "units", 2.0, extra="1 skipped") == \
        "3/4 units (1 skipped), 1.5 units/s, ETA 0:00:01"
    # what was done before this run is not in the rate
    assert progress.progress_text(60, 100, "images", 10.0, start=50) == "60/100 images, 1.0 images/s, ETA 0:00:40"
    assert progress.progress_text(50, 100, "images", 10.0, start=50) == "50/100 images, ETA ?"
    assert progress.progress_text(4, 4, "units", 3.2) == "4/4 units, done in 0:00:03"


def test_plain_lines_off_a_terminal(caplog):
    """Not a terminal (pytest captures stdout): one log line per update; a throttled meter logs at most
    once per `plain_every_s`, and always its last."""
    now = [100.0]
    caplog.set_level(logging.INFO, logger="vora")
    units = progress.Meter("download", "units", 2, clock=lambda: now[0])
    rows = progress.Meter("download", "rows", 8, plain_every_s=30.0, clock=lambda: now[0])
    assert units.task is None and rows.task is None
    now[0] = 102.0
    units.update(1)
    rows.update(4)
    now[0] = 104.0
    rows.update(6)  # within 30 s of the last line: not logged
    units.update(2, "1 skipped")
    rows.update(8)
    assert [r.getMessage() for r in caplog.records] == [
        "download: 1/2 units, 30.0 units/min, ETA 0:00:02",
        "download: 4/8 rows, 2.0 rows/s, ETA 0:00:02",
        "download: 2/2 units (1 skipped), done in 0:00:04",
        "download: 8/8 rows, done in 0:00:04",
    ]


def test_display_failure_never_fails_the_work(monkeypatch, caplog):
    monkeypatch.setattr(progress, "live_console", lambda: (_ for _ in ()).throw(OSError("tty gone")))
    monkeypatch.setattr(progress.common, "_reporting_paused_until", 0.0)
    meter = progress.Meter("mix", "units", 1)
    meter.update(1)  # reporting is paused after the failure: no line, no error
    assert meter.task is None
    assert "progress display failed (the work carries on; reporting pauses 60s): OSError: tty gone" in caplog.text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a pseudo-terminal")
def test_live_display_under_a_terminal(tmp_path):
    """`vora stage download` under a pseudo-terminal draws bars with units and rows (rate, ETA, done)."""
    doc = {"name": "tiny", "workdir": "run",
           "sources": {"shapes": {"kind": "synthetic_shapes", "n": 4, "heldout": 0}},
           "download": {"processes_count": 1, "thread_count": 2, "number_sample_per_shard": 100}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TERM": "xterm", "COLUMNS": "120"}
    out = subprocess.run(["script", "-q", "-e", "-c", f"{VORA} stage download c.yaml", "/dev/null"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-3000:]
    screen = out.stdout
    assert "download units" in screen and "1/1 units, done in 0:00:" in screen, screen[-3000:]
    assert "download rows" in screen and "4/4 rows, done in 0:00:" in screen, screen[-3000:]
    # live, not plain: the meters' own log lines are not printed
    assert "download: 1/1 units" not in screen
    assert "download finished" in screen
