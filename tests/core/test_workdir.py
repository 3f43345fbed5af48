import os

import pytest

from vora_core.workdir import (
    Unit,
    atomic_path,
    atomic_write_text,
    fingerprint,
    marker_path,
    read_marker,
    run_unit_with_marker,
)


def test_fingerprint_is_order_insensitive_and_content_sensitive():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert len(fingerprint("x")) == 16


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []
    atomic_write_text(target, "whole")
    assert target.read_text() == "whole"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_directory_replace(tmp_path):
    target = tmp_path / "model"
    for version in ("v1", "v2"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(version)
    assert (target / "weights").read_text() == "v2"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_marker_skips_matching_fingerprint_and_reruns_otherwise(tmp_path):
    calls = []

    def work(unit):
        calls.append(unit.id)
        atomic_write_text(unit.output, "data")
        return {"rows": 3}

    unit = Unit(stage="s", id="u1", output=str(tmp_path / "o.parquet"), fingerprint="f1")
    first = run_unit_with_marker(unit, work)
    assert first["status"] == "done" and first["rows"] == 3 and first["unit"] == "u1"
    assert read_marker(unit.output)["fingerprint"] == "f1"
    again = run_unit_with_marker(unit, work)
    assert again["status"] == "skipped" and again["rows"] == 3
    assert calls == ["u1"]
    changed = Unit(stage="s", id="u1", output=unit.output, fingerprint="f2")
    assert run_unit_with_marker(changed, work)["status"] == "done"
    assert run_unit_with_marker(changed, work, force=True)["status"] == "done"
    assert calls == ["u1", "u1", "u1"]
    # a marker in an earlier fingerprint format of the same inputs still counts as done
    newer = Unit(stage="s", id="u1", output=unit.output, fingerprint="f3", earlier_fingerprints=("f2",))
    assert newer.done and run_unit_with_marker(newer, work)["status"] == "skipped"
    assert calls == ["u1", "u1", "u1"]


def test_deleted_output_is_redone_and_failure_leaves_no_marker(tmp_path):
    unit = Unit(stage="s", id="u", output=str(tmp_path / "o.txt"), fingerprint="f")
    run_unit_with_marker(unit, lambda u: (atomic_write_text(u.output, "x"), {})[1])
    os.unlink(unit.output)
    assert not unit.done

    def boom(u):
        raise ValueError("bad shard")

    with pytest.raises(ValueError):
        run_unit_with_marker(unit, boom)
    assert not marker_path(unit.output).exists()
