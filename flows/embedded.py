"""The CLI's Prefect environment, set before anything imports Prefect.

* The embedded (ephemeral) server gets a start-up timeout with margin for a loaded machine, one
  retry, and a one-line error if it still does not answer; its uvicorn process dies with the CLI,
  even under `kill -9` (Linux parent-death signal).
* A `PREFECT_API_URL` that does not answer is one line naming it, before any work starts.
* The terminal shows one line per log record; tracebacks go to `<workdir>/logs/vora.log` only.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vora_core.errors import VoraError
from vora_core.train.launch import die_with_parent

# Prefect's default (20 s) is too short for a 2-core machine under load, where start-up takes 30-60 s.
STARTUP_TIMEOUT_S = 180
STARTUP_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
LOG_NAME = "logs/vora.log"


class PrefectUnavailable(VoraError):
    """No Prefect API to talk to: the embedded server did not start, or PREFECT_API_URL does not answer."""


def set_defaults() -> None:
    """Environment defaults for every command (a user's own values win)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault(STARTUP_SETTING, str(STARTUP_TIMEOUT_S))
    # transformers' and huggingface_hub's tqdm bars ("Loading weights", "Writing model shards") would
    # interleave with the log lines (and fill log files with carriage returns).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Before torch loads OpenMP: threads wait by sleeping, not spinning (a busy machine, README "Performance").
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def check_api_url(url: str) -> None:
    """Fail fast, in one line, when the configured server does not answer its health check."""
    import httpx

    health = url.rstrip("/") + "/health"
    try:
        response = httpx.get(health, timeout=15)
        if response.status_code == 200:
            return
        why = f"{health} answered HTTP {response.status_code}"
    except httpx.HTTPError as e:
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    raise PrefectUnavailable(
        f"PREFECT_API_URL={url} does not answer ({why}); start that server (`prefect server start`) "
        "or unset PREFECT_API_URL to run on the embedded server"
    )


def _popen_dying_with_parent(*args: Any, **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen(*args, preexec_fn=die_with_parent, **kwargs)


def start_embedded_server() -> str:
    """Start Prefect's ephemeral server now, in this (main) thread, so that every later client reuses
    it; returns its API URL. Prefect starts uvicorn with a plain Popen: its module gets a `subprocess`
    whose Popen sets the parent-death signal, so the server cannot outlive this process."""
    from prefect.server.api import server as prefect_server
    from prefect.settings import get_current_settings

    prefect_server.subprocess = SimpleNamespace(**{**vars(subprocess), "Popen": _popen_dying_with_parent})
    timeout = get_current_settings().server.ephemeral.startup_timeout_seconds
    errors = []
    for _attempt in range(2):
        server = prefect_server.SubprocessASGIServer()
        try:
            server.start()
            return server.api_url
        except Exception as e:  # noqa: BLE001 — reported below, in one line
            errors.append(str(e).split(" stdout:")[0].rstrip(".") or type(e).__name__)
            server.stop()
    raise PrefectUnavailable(
        f"the embedded Prefect server did not start (tried twice, {timeout} s each: {errors[-1]}); "
        f"on a busy machine raise {STARTUP_SETTING} (now {timeout}), "
        "or start a server (`prefect server start`) and set PREFECT_API_URL to it"
    )


class _NoTraceback(logging.Formatter):
    """Formats a record as its formatter would, minus the traceback."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = copy.copy(record)
            record.exc_info = record.exc_text = record.stack_info = None
        return self.inner.format(record)


def route_logs(workdir: Path) -> Path:
    """Terminal: one line per record. `<workdir>/logs/vora.log`: every record with its traceback."""
    import prefect.main  # noqa: F401 — Prefect configures logging on import: first, or it drops its console
    from prefect.logging.handlers import PrefectConsoleHandler

    path = workdir.resolve() / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                     if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _NoTraceback):
                handler.setFormatter(_NoTraceback(handler.formatter))
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file_handler.setLevel(logging.INFO)
    for name in ("", "uvicorn"):  # the root gets every propagating record; uvicorn's does not propagate
        logger = logging.getLogger(name)
        if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
            logger.addHandler(file_handler)
    return path
