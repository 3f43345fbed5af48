"""The run directory: layout, atomic writes, completion markers and fingerprints.

The stage contract (DESIGN.md): a unit writes its outputs under a temporary name, renames them into
place, then writes `<output>.done.json` holding its stats and the fingerprint of its inputs and
settings. A unit whose marker holds the same fingerprint is skipped, so a crash at any instant leaves
either nothing or a complete unit.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER_SUFFIX = ".done.json"


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able values (dict key order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tmp_sibling(path: Path) -> Path:
    # Hidden and unique, in the same directory so the final rename is atomic (same filesystem).
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `path` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = _tmp_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` atomically; a file that already holds exactly `data` is left alone (a rerun that
    changes nothing rewrites nothing, and mtime-based identities stay put)."""
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size == len(data) and p.read_bytes() == data:
            return p
    except OSError:
        pass
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def marker_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + MARKER_SUFFIX)


def read_marker(output: str | Path) -> dict | None:
    path = marker_path(output)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(output: str | Path, fp: str) -> bool:
    marker = read_marker(output)
    return marker is not None and marker.get("fingerprint") == fp


def write_marker(output: str | Path, fp: str, stats: dict) -> dict:
    marker = {"fingerprint": fp, "finished_at": time.time(), "stats": stats}
    atomic_write_json(marker_path(output), marker)
    return marker


def upgrade_marker(output: str | Path, marker: dict, fp: str) -> None:
    """Record `fp`, today's form of the fingerprint a done unit's marker holds in an earlier form, so that
    the unit stays done where only today's form matches (a copied run). Its `identity`, what the units
    downstream fingerprint (`dir_identity`), stays the original: nothing downstream is redone."""
    atomic_write_json(marker_path(output), {**marker, "fingerprint": fp,
                                            "identity": marker.get("identity", marker.get("fingerprint"))})


def clear_marker(output: str | Path) -> None:
    marker_path(output).unlink(missing_ok=True)


def files_identity(paths: Iterable[str | Path], full_path: bool = False) -> list[list]:
    """[name (or the path as given), size, mtime_ns] per file: a cheap identity of a unit's inputs."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([str(p) if full_path else Path(p).name, st.st_size, st.st_mtime_ns])
    return out


# The content digests of the run's own files (RunDir.content_identity): a cache, safe to delete.
DIGESTS_FILE = ".digests.json"


# The last parsed digests file per path, by its (inode, size, mtime): a plan identifies many file groups
# one after another, and each would otherwise parse the whole file again.
_PARSED_DIGESTS: dict[Path, tuple[tuple[int, int, int], dict[str, list]]] = {}


def _load_digests(path: Path) -> dict[str, list]:
    """The digests file's entries (a copy: the caller may add to it); {} when it is missing or unreadable."""
    try:
        st = path.stat()
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if path not in _PARSED_DIGESTS or _PARSED_DIGESTS[path][0] != key:
            data = json.loads(path.read_text())
            _PARSED_DIGESTS[path] = (key, data if isinstance(data, dict) else {})
    except (OSError, ValueError):
        return {}
    return dict(_PARSED_DIGESTS[path][1])


def dir_identity(path: Path) -> list:
    """A model or output directory: its completion marker's fingerprint (as first written: see
    `upgrade_marker`) when it has one, else its files' identity (top level only), or `["missing", path]`."""
    marker = read_marker(path)
    if marker is not None:
        return ["marker", marker.get("identity", marker.get("fingerprint"))]
    if not path.is_dir():
        return ["missing", str(path)]
    return files_identity(sorted(p for p in path.iterdir() if p.is_file()))


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Unit:
    """One resumable piece of a stage. Small and picklable: it carries paths and settings, not data."""

    stage: str
    id: str
    output: str
    fingerprint: str
    params: dict[str, Any] = field(default_factory=dict)
    # The same inputs' fingerprint in an earlier format: a run made before the format changed stays done.
    earlier_fingerprints: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        """Marker matches and the output is still there (a deleted output is redone)."""
        if not Path(self.output).exists():
            return False
        marker = read_marker(self.output)
        return marker is not None and marker.get("fingerprint") in (self.fingerprint, *self.earlier_fingerprints)


def run_unit_with_marker(unit: Unit, work: Callable[[Unit], dict], force: bool = False) -> dict:
    """Skip `unit` if its marker matches; otherwise run `work(unit)` and write the marker.

    Returns the unit's stats with `status` = "skipped" | "done" and the `unit` id.
    """
    if not force and unit.done:
        marker = read_marker(unit.output) or {}
        if marker.get("fingerprint") != unit.fingerprint:  # done under an earlier fingerprint form
            with contextlib.suppress(OSError):
                upgrade_marker(unit.output, marker, unit.fingerprint)
        return {**marker.get("stats", {}), "status": "skipped", "unit": unit.id}
    clear_marker(unit.output)
    output = Path(unit.output)  # the temporaries of a killed earlier attempt: the output's and its marker's
    for name in (output.name, marker_path(output).name):
        remove_stale_temporaries(output.parent, f".{glob.escape(name)}.tmp-*")
    started = time.perf_counter()
    stats = dict(work(unit))
    stats.setdefault("seconds", round(time.perf_counter() - started, 3))
    write_marker(unit.output, unit.fingerprint, stats)
    return {**stats, "status": "done", "unit": unit.id}


class RunDir:
    """Paths of one run directory (see DESIGN.md "The run directory").

    `stages_root` (default: `root`) holds the model stages' outputs and the lock: an ablation variant
    keeps its own there while it shares the run's data (sources, shards, mixtures, models/)."""

    def __init__(self, root: str | Path, stages_root: str | Path | None = None):
        self.root = Path(root).resolve()
        self.stages_root = Path(stages_root).resolve() if stages_root else self.root

    def relative(self, path: str | Path) -> str:
        """`path` named under the root when it lies inside the run (as fingerprints name the run's own
        files, so that a copied or moved run stays done), else as given."""
        return str(path).removeprefix(str(self.root) + "/")

    @property
    def digests_file(self) -> Path:
        return self.root / DIGESTS_FILE

    def content_identity(self, paths: Iterable[str | Path]) -> list[list]:
        """[path under the run, size, sha256] per file: the identity of the run's own files in fingerprints.
        It survives what a copy changes (`cp -r`, rsync or an object-store sync reset mtimes; a move
        changes paths) and a rebuild that writes the same bytes (a forced mix does), so neither redoes
        what follows. Digests are cached in `DIGESTS_FILE` by (size, mtime): a file is read once after
        it is written or copied."""
        cache = _load_digests(self.digests_file)
        out, changed = [], False
        for p in paths:
            name, st = self.relative(p), os.stat(p)
            cached = cache.get(name)
            if cached is None or cached[:2] != [st.st_size, st.st_mtime_ns]:
                cached = cache[name] = [st.st_size, st.st_mtime_ns, sha256_file(p)]
                changed = True
            out.append([name, st.st_size, cached[2]])
        if changed:
            with contextlib.suppress(OSError):  # a read-only run directory: digests are recomputed next time
                atomic_write_json(self.digests_file, cache)
        return out

    @property
    def lock_file(self) -> Path:
        return self.stages_root / "catalog.lock.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.duckdb"

    def sources(self, source: str) -> Path:
        return self.root / "sources" / source

    def shards(self, source: str) -> Path:
        return self.root / "shards" / source

    def captions(self, source: str) -> Path:
        return self.root / "captions" / source

    def text(self, source: str) -> Path:
        return self.root / "text" / source

    def mixture(self, stage: str) -> Path:
        return self.root / "mixture" / stage

    @property
    def models(self) -> Path:
        """Models a run builds and shares (the demo's tiny LLM, teacher and captioner)."""
        return self.root / "models"

    def outputs(self, stage: str) -> Path:
        """Where a stage writes: shards/, captions/, mixture/, or its `stage_dir`."""
        named = {"download": "shards", "recaption": "captions", "mix": "mixture"}
        return self.root / named[stage] if stage in named else self.stage_dir(stage)

    def stage_dir(self, stage: str) -> Path:
        """pretrain/, merged/, finetune/, eval/."""
        return self.stages_root / {"merge": "merged", "evaluate": "eval"}.get(stage, stage)

    def ensure(self) -> RunDir:
        self.root.mkdir(parents=True, exist_ok=True)
        self.stages_root.mkdir(parents=True, exist_ok=True)
        return self


_TMP_PID = re.compile(r"\.tmp-(\d+)(?:-[0-9a-f]+)?$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: Path, pattern: str) -> list[Path]:
    """Remove the temporaries (`.<name>.tmp-<pid>-…`, see `atomic_path`) matching `pattern` in `folder`
    that a killed process left: those whose process no longer runs. Callers scope `pattern` to the unit
    they are about to redo, so a unit another machine is running (on shared storage) is never touched."""
    removed = []
    for path in folder.glob(pattern) if folder.is_dir() else []:
        match = _TMP_PID.search(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
