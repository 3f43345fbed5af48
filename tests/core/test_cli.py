"""The `vora` command as a user runs it: clear one-line errors, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

VORA = str(Path(sys.executable).with_name("vora"))


def vora(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.run([VORA, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def test_bad_catalog_is_one_clear_line(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"name": "x", "workdir": "r", "sources": {}}))
    out = vora("status", "bad.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: bad.yaml: invalid catalog:\n  sources: ")
    assert "Traceback" not in out.stderr + out.stdout


def test_unknown_stage_and_bad_selection(tmp_path):
    cat = tmp_path / "c.yaml"
    cat.write_text(yaml.safe_dump({"name": "c", "workdir": "r", "sources": {"s": {"kind": "synthetic_shapes"}}}))
    out = vora("stage", "train", "c.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown stage 'train'; stages are: download, recaption, mix" in out.stderr
    out = vora("run", "c.yaml", "--only", "download", "--from", "download", cwd=tmp_path)
    assert out.returncode == 2
    assert "use either --only or --from/--until, not both" in out.stderr
    assert not (tmp_path / "r").exists()  # nothing ran


def test_missing_catalog(tmp_path):
    out = vora("run", "nope.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: nope.yaml: catalog file not found (see catalogs/ for examples)"


def test_status_cells_keep_a_score_s_decimals():
    from vora_core.status import cell as _cell

    assert [_cell(v) for v in (0.2416, 0.865, 0.3, 331.74, 11618.4, None, 7, {"a": 1})] == [
        "0.242", "0.865", "0.300", "331.7", "11,618.4", "-", "7", "a=1"]
