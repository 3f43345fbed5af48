"""scripts/ui_screenshot.py against a real server and headless Chromium (skipped without Chromium)."""

import importlib.util
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("ui_screenshot", ROOT / "scripts" / "ui_screenshot.py")
ui = importlib.util.module_from_spec(spec)
sys.modules["ui_screenshot"] = ui
spec.loader.exec_module(ui)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ui.find_browser() is None,
                       reason="Debian's chromium is not installed (apt-get install chromium)"),
]


def test_screenshots_of_a_run_its_artifacts_and_a_deployment(tmp_path):
    outs = ui.main(["--out-dir", str(tmp_path), "--until", "download", "--n", "8", "--size", "800x600",
                    "--wait-ms", "8000"])
    assert outs == [tmp_path / name for name in ui.SHOTS.values()]
    for out in outs:
        with Image.open(out) as img:
            assert img.size == (800, 600)
            # a rendered page, not a blank one: more than a handful of distinct colours
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20, out
