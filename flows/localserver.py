"""A real Prefect server (and workers) on 127.0.0.1, started and stopped by pid.

Used by the UI screenshot script and the real-server tests: each process gets its own session (so
stopping it stops its children) and its own log file, and nothing outlives `stop`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, port: int) -> dict[str, str]:
    """The environment of a client (or worker) of the server on `port`, with its own PREFECT_HOME."""
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM the process group, SIGKILL it if it has not gone after 15 s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, logs: list[Path]) -> T:
    """Poll `predicate` each second until it returns something true; on timeout, fail with the logs' tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise TimeoutError(f"timed out waiting for {what}\n{tails}")


def start_server(home: Path, port: int, log: Path, timeout: float = 120) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:`port`; returns once /api/health answers."""
    env = server_env(home, port)
    proc = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout, "the Prefect server", [log])
    except BaseException:
        stop(proc)
        raise
    return proc
