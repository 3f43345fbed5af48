"""The `vora` command as a user runs it: clear one-line errors, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_catalog_not_utf8_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_bytes("name: café\nworkdir: r\n".encode("latin-1"))
    out = vora("status", "c.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == "error: c.yaml: not UTF-8 (byte 0xe9 at offset 9); save the catalog as UTF-8\n"


def test_catalog_key_given_twice_names_both_lines(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "name: c\nworkdir: r\nsources:\n  s: {kind: synthetic_shapes, n: 10}\n  s: {kind: synthetic_shapes}\n")
    out = vora("status", "c.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == "error: c.yaml: key 's' is given twice (lines 4 and 5); keep one\n"


def test_mix_naming_an_unknown_text_source_does_not_dump_the_catalog(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "name": "c", "workdir": "r", "sources": {"s": {"kind": "synthetic_shapes"}},
        "mix": {"pretrain": {"text": {"nope": {"weight": 0.1}}}}}))
    out = vora("status", "c.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == ("error: c.yaml: invalid catalog:\n  mix.pretrain.text: 'nope' is not in text_sources; "
                          "name one of: none yet, or add it to text_sources\n")


SHAPES = {"s": {"kind": "synthetic_shapes"}}
TEXT = {"a": {"format": "sharegpt", "path": "a.jsonl"}, "b": {"format": "sharegpt", "path": "b.jsonl"}}


@pytest.mark.parametrize("catalog, line", [
    ({"text_sources": TEXT, "mix": {"pretrain": {"text": {"a": {"weight": 0.6}, "b": {"weight": 0.5}}}}},
     "mix.pretrain.text: the weights add up to 1.1; each is a share of the whole mixture, so together they must "
     "stay below 1 (lower them, or give a source `repeat` instead)"),
    ({"text_sources": {"s": TEXT["a"]}},
     "text_sources.s: sources.s has this name too (both would write shards/s/); rename one of them"),
    ({"mix": {"finetune": {"captions": {"sources": ["web"]}}}},
     "mix.finetune.captions.sources: 'web' is not an image source; name one of: s"),
    ({"text_sources": {"q": {"format": "shapes_vqa", "source": "web"}}},
     "text_sources.q.source: 'web' is not a synthetic_shapes source; name one of: s"),
    ({"download": [{"image_size": 64}]}, "download: expected a mapping of keys, got a list"),
    ({"mix": {"pretrain": {"captions": "recap"}}}, "mix.pretrain.captions: expected a mapping of keys, got 'recap'"),
    ({"model": {"llm": {"name": "Qwen/Qwen2.5-0.5B"}}}, "model.llm: Input should be a valid string (got a mapping)"),
    ({"sources": {"s": {"kind": "url_list"}}}, "sources.s.path: required key is missing (add it)"),
], ids=["weights", "name_taken", "caption_source", "shapes_source", "section_list", "section_text", "value_mapping",
        "missing_key"])
def test_each_catalog_error_is_one_line_naming_the_key_and_the_fix(tmp_path, catalog, line):
    """Checks over whole sections (the catalog's own, a mix's) name their key and never dump the input."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "c", "workdir": "r", "sources": SHAPES, **catalog}))
    out = vora("status", "c.yaml", cwd=tmp_path)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"error: c.yaml: invalid catalog:\n  {line}\n"
