"""scripts/named_answer.py (the README's check of whether the demo model uses a word it was told) runs end to
end on a tiny VoRA model and the held-out split of a synthetic source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vora_core.catalog import parse_catalog
from vora_core.data.sources import connect, synthetic_rows

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, "scripts/named_answer.py"]


def test_every_format_and_condition_is_scored(tmp_path, tiny_eval):
    catalog = parse_catalog({"name": "t", "workdir": str(tmp_path / "run"), "sources": {
        "shapes": {"kind": "synthetic_shapes", "n": 2, "heldout": 3, "min_side": 24, "max_side": 48}}})
    con = connect()
    synthetic_rows(catalog.sources["shapes"], catalog.run.sources("shapes"), con)
    con.close()
    out = subprocess.run([*SCRIPT, str(tmp_path / "run"), "--model", str(tiny_eval["vora"])], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["format"], r["condition"]) for r in rows] == [
        (f, c) for f in ("mc", "yesno") for c in ("alone", "colour named", "shape named")]
    for r in rows:
        assert r["questions"] == 6 and 0.0 <= r["accuracy"] <= 1.0  # 3 pictures: 2 questions each
        assert sum(r["answers"].values()) == 6

    bad = subprocess.run([*SCRIPT, str(tmp_path / "nowhere")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1].endswith(
        f"error: {tmp_path / 'nowhere'}/sources/shapes/heldout/labels.parquet not found; "
        "give a run directory whose download stage has run")


def test_the_named_turn_comes_first_and_holds_the_picture(tiny_eval):
    import importlib.util

    from transformers import AutoTokenizer

    from vora_core.model.config import VoRAConfig

    spec = importlib.util.spec_from_file_location("named_answer", ROOT / "scripts" / "named_answer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_eval["vora"]))
    encoder = module.NamedEncoder(tokenizer, VoRAConfig.from_pretrained(str(tiny_eval["vora"])))
    encoder.before = ("<image>\nWhat colour is the shape?", "red")
    text = encoder.render("<image>\nIs there a red circle in the image?")
    assert text.count("<image>") == 1
    assert text.index("<image>\nWhat colour is the shape?") < text.index("red") < text.index("Is there a red circle")
    assert text.endswith(tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                       add_generation_prompt=True).rsplit("x", 1)[1])
