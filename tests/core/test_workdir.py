import os
from pathlib import Path

import pytest

from vora_core.workdir import (
    RunDir,
    Unit,
    atomic_path,
    atomic_write_text,
    dir_identity,
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
    # ... and its marker now holds today's form (a copy where only that matches stays done), while what
    # the units downstream fingerprint, its identity, stays the original: they are not redone
    marker = read_marker(unit.output)
    assert (marker["fingerprint"], marker["identity"], marker["stats"]["rows"]) == ("f3", "f2", 3)
    assert Unit(stage="s", id="u1", output=unit.output, fingerprint="f3").done
    assert dir_identity(Path(unit.output)) == ["marker", "f2"]
    assert run_unit_with_marker(Unit(stage="s", id="u1", output=unit.output, fingerprint="f4",
                                     earlier_fingerprints=("f3",)), work)["status"] == "skipped"
    assert read_marker(unit.output)["identity"] == "f2"  # still the original through a second upgrade
    assert run_unit_with_marker(Unit(stage="s", id="u1", output=unit.output, fingerprint="f5"), work)["status"] == \
        "done"
    assert "identity" not in read_marker(unit.output)  # redone: downstream sees the new fingerprint
    assert dir_identity(Path(unit.output)) == ["marker", "f5"]


def test_content_identity_survives_a_copy_that_resets_mtimes(tmp_path, monkeypatch):
    """`cp -r`, rsync without -t or an object-store sync: same bytes, new mtimes, another place."""
    import shutil

    import vora_core.workdir as workdir

    run = RunDir(tmp_path / "run")
    (run.root / "mixture").mkdir(parents=True)
    for name, data in (("part-00000.parquet", b"rows a"), ("part-00001.parquet", b"rows bb")):
        (run.root / "mixture" / name).write_bytes(data)
    parts = sorted((run.root / "mixture").glob("part-*"))
    reads = []
    monkeypatch.setattr(workdir, "sha256_file", lambda p: reads.append(Path(p).name) or sha256_bytes(Path(p)))
    first = run.content_identity(parts)
    assert [row[:2] for row in first] == [["mixture/part-00000.parquet", 6], ["mixture/part-00001.parquet", 7]]
    assert run.content_identity(parts) == first and len(reads) == 2  # cached by size and mtime: read once

    shutil.copytree(run.root, tmp_path / "copy" / "run", copy_function=shutil.copy)  # mtimes reset
    copy = RunDir(tmp_path / "copy" / "run")
    copied = sorted((copy.root / "mixture").glob("part-*"))
    assert os.stat(copied[0]).st_mtime_ns != os.stat(parts[0]).st_mtime_ns
    assert copy.content_identity(copied) == first and len(reads) == 4  # re-read once, same identity
    (copy.root / "mixture" / "part-00001.parquet").write_bytes(b"rows cc")  # same size, other bytes
    assert copy.content_identity(copied)[1] != first[1]
    # the cache is only a cache: unreadable, it is rebuilt; where it cannot be written, nothing fails
    copy.digests_file.write_text("{not json")
    assert copy.content_identity(copied)[0] == first[0]
    copy.digests_file.unlink()
    copy.digests_file.mkdir()  # neither readable nor replaceable as a file
    assert copy.content_identity(copied)[0] == first[0]


def sha256_bytes(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def test_checkpoints_resume_under_an_earlier_fingerprint_form_and_go_when_inputs_change(tmp_path):
    """A training run killed before its fingerprint's form changed resumes from its checkpoints."""
    from vora_core.train.prepare import fresh_start_if_stale

    out = tmp_path / "pretrain"
    (out / "checkpoints" / "step-0000002").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (out / "run.fingerprint").write_text("old-form\n")
    unit = Unit(stage="pretrain", id="pretrain", output=str(out / "final"), fingerprint="new-form",
                earlier_fingerprints=("old-form",))
    fresh_start_if_stale(out, unit)
    assert (out / "checkpoints" / "step-0000002").is_dir() and (out / "metrics.jsonl").exists()
    assert (out / "run.fingerprint").read_text() == "new-form\n"
    fresh_start_if_stale(out, Unit(stage="pretrain", id="pretrain", output=str(out / "final"), fingerprint="other"))
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
