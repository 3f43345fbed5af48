"""Launch a training run as a subprocess (`torchrun` for more than one rank) and follow it.

The spec is written to `<out_dir>/spec.json`; torchrun starts `nproc_per_node` ranks of
`vora_core.train.worker` (standalone rendezvous on one node, c10d at `rdzv_endpoint` across nodes —
run the same command on every node); a single rank on one machine is started directly. Output goes to
`<out_dir>/train.log`. While it runs, the last line of `metrics.jsonl` is handed to `on_progress`
every `poll_s` seconds. The child runs in its own process group: if the caller is interrupted the
whole group is killed, never left behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from vora_core.catalog import TrainSettings
from vora_core.errors import StageError
from vora_core.train.spec import RunSpec

log = logging.getLogger(__name__)
EXIT_DIVERGED_MARK = "[train] DIVERGED"  # what vora_core.train.worker prints when it stops on NaN/inf


class TrainingFailed(StageError):
    """The torchrun child exited with an error (the message holds the log's tail)."""


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so a killed orchestrator (or torchrun agent)
    never leaves a trainer writing checkpoints behind the rerun's back. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def training_command(spec_path: str | Path, settings: TrainSettings, run_id: str = "vora") -> list[str]:
    """One process on one machine runs the rank directly (world 1 needs no rendezvous, and torchrun's
    agent costs ~2 s of start-up per stage on 2 cores); anything larger goes through torchrun."""
    if settings.nproc_per_node == 1 and settings.nnodes == 1 and not settings.rdzv_endpoint:
        return [sys.executable, "-m", "vora_core.train.worker", "--spec", str(spec_path)]
    return torchrun_command(spec_path, settings, run_id)


def torchrun_command(spec_path: str | Path, settings: TrainSettings, run_id: str = "vora") -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={settings.nproc_per_node}"]
    if settings.nnodes == 1 and not settings.rdzv_endpoint:
        cmd.append("--standalone")
    else:
        if not settings.rdzv_endpoint:
            raise StageError(f"nnodes={settings.nnodes} needs rdzv_endpoint (host:port of node 0) in the catalog")
        cmd += [f"--nnodes={settings.nnodes}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={settings.rdzv_endpoint}", f"--rdzv-id={run_id}",
                f"--node-rank={settings.node_rank}"]
    cmd += ["-m", "vora_core.train.worker", "--spec", str(spec_path)]
    return cmd


def last_record(path: Path) -> dict | None:
    """The last complete JSON line of a metrics file (reads only its tail)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def _causes(path: Path, start: int = 0) -> list[str]:
    """The workers' own one-line reports of why they stopped (first of each kind), from byte `start` on."""
    found: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            f.seek(start)
            for raw in f:
                line = raw.decode(errors="replace")
                for mark in (EXIT_DIVERGED_MARK, "[train] ERROR"):
                    if mark in line and mark not in found:
                        found[mark] = line.strip()
    except FileNotFoundError:
        pass
    return list(found.values())


def _tail(path: Path, start: int = 0, chars: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(start, path.stat().st_size - chars))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


# libgomp (torch's OpenMP here) reads these once, when torch loads it. Threads that wait sleep, after a
# short spin: sleeping at once costs a wake-up on every small op of a quiet machine, spinning long holds
# the core a descheduled partner needs (benchmarks/openmp_wait.py; figures in README "Training speed on CPU").
OPENMP_SPIN_COUNT = "3000"


def openmp_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """The OpenMP wait settings to add to `env`: none where its owner chose either variable."""
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": OPENMP_SPIN_COUNT}


@contextmanager
def trainers_side_by_side(count: int) -> Iterator[None]:
    """While `count` > 1 training ranks run at once on this machine, the ones started here wait without
    spinning (unless GOMP_SPINCOUNT is not ours): two spinning trainers slow each other down."""
    ours = os.environ.get("GOMP_SPINCOUNT") == OPENMP_SPIN_COUNT
    if count <= 1 or not ours:
        yield
        return
    os.environ["GOMP_SPINCOUNT"] = "0"
    try:
        yield
    finally:
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT


def child_environment(env: dict[str, str] | None = None, ranks: int = 1) -> dict[str, str]:
    """The training ranks' environment: ours, `env` over it, and defaults a user's own values override.
    Several ranks on this node wait without spinning (see `trainers_side_by_side`)."""
    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    child_env.update(openmp_defaults(child_env))
    if ranks > 1 and child_env.get("GOMP_SPINCOUNT") == OPENMP_SPIN_COUNT:
        child_env["GOMP_SPINCOUNT"] = "0"
    return child_env


def launch(spec: RunSpec, on_progress: Callable[[dict], None] | None = None, poll_s: float = 1.0,
           env: dict[str, str] | None = None, run_id: str = "vora") -> dict:
    """Run the spec to completion; returns the stats rank 0 wrote. Raises `TrainingFailed` on failure."""
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = spec.save(out / "spec.json")
    log_path = out / "train.log"
    cmd = training_command(spec_path, spec.settings, run_id)
    child_env = child_environment(env, ranks=spec.settings.nproc_per_node)
    log.info("launching: %s", " ".join(cmd))
    stats_path = out / "run_stats.json"
    stats_path.unlink(missing_ok=True)
    seen = None
    start = log_path.stat().st_size if log_path.exists() else 0  # this attempt's part of the log
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env,
                                 start_new_session=True, preexec_fn=die_with_parent)
        try:
            while child.poll() is None:
                time.sleep(poll_s)
                if on_progress is not None:
                    record = last_record(spec.metrics)
                    if record is not None and record != seen:
                        seen = record
                        on_progress(record)
        finally:
            if child.poll() is None:  # interrupted: take the whole group (torchrun, ranks, loaders) down
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.wait()
    rc = child.returncode
    if on_progress is not None and (record := last_record(spec.metrics)) is not None and record != seen:
        on_progress(record)
    if rc != 0:
        causes = _causes(log_path, start)
        reason = "diverged (non-finite losses)" if any(EXIT_DIVERGED_MARK in c for c in causes) else \
            f"exited with code {rc}"
        head = "\n".join(causes) + "\n" if causes else ""
        raise TrainingFailed(f"{spec.stage} training {reason}; log {log_path}\n{head}--- log tail ---\n"
                             f"{_tail(log_path, start)}")
    if not stats_path.exists():
        raise TrainingFailed(f"{spec.stage} training exited cleanly but wrote no {stats_path}; see {log_path}")
    return json.loads(stats_path.read_text())

