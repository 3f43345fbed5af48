"""The CLI's Prefect environment, set before anything imports Prefect.

* The embedded (ephemeral) server gets a start-up timeout with margin for a loaded machine, one
  retry, and a one-line error if it still does not answer; its uvicorn process dies with the CLI,
  even under `kill -9` (Linux parent-death signal).
* A run's fresh database starts as a copy of an empty one already migrated by this Prefect version
  (`~/.cache/vora/prefect-db/<version>/`, made by the first fresh run): migrating a new SQLite file
  is most of the server's start-up (14.5 s on 2 cores for the demo's fresh run; 6.3 s with the copy).
  Any trouble with the copy, and the server starts on a new file as before.
* A `PREFECT_API_URL` that does not answer is one line naming it, before any work starts.
* The terminal shows one line per log record; tracebacks go to `<workdir>/logs/vora.log` only.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vora_core.errors import VoraError
from vora_core.train.launch import die_with_parent, openmp_defaults

log = logging.getLogger(__name__)

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
    # Before torch loads OpenMP: how its threads wait (README "Performance").
    os.environ.update(openmp_defaults(os.environ))


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


DATABASE_FILES = ("prefect.db", "memo_store.toml")  # the database, and Prefect's note of the blocks it registered


def database_template() -> Path:
    """Where the migrated empty database of this Prefect version is kept."""
    import prefect

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "vora" / "prefect-db" / prefect.__version__


def _own_sqlite(settings) -> Path | None:
    """The SQLite file of the embedded server when it is the default one under PREFECT_HOME, else None."""
    url = settings.server.database.connection_url
    database = Path(settings.home) / "prefect.db"
    return database if url is not None and url.get_secret_value().endswith(f"//{database}") else None


def seed_database(database: Path) -> bool:
    """Copy the template into a PREFECT_HOME that has no database yet; True when it did."""
    template = database_template()
    if database.exists() or not (template / DATABASE_FILES[0]).is_file():
        return False
    try:  # a damaged template would cost the server's whole start-up timeout: check it first
        db = sqlite3.connect(f"file:{template / DATABASE_FILES[0]}?mode=ro", uri=True)
        try:
            db.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        log.debug("database template %s unusable (%s): dropped", template, e)
        shutil.rmtree(template, ignore_errors=True)
        return False
    try:
        for name in DATABASE_FILES:
            if (template / name).is_file():
                shutil.copyfile(template / name, database.parent / name)
        return True
    except OSError as e:
        log.debug("no database template copied (%s); Prefect migrates a new one", e)
        drop_database(database)
        return False


def save_database_template(database: Path) -> None:
    """Keep a consistent copy of a just-migrated database (SQLite's online backup: the server may be
    writing) as the template, unless there is one. Never fails the run."""
    template = database_template()
    drop_stale_partials(template)
    if (template / DATABASE_FILES[0]).is_file():
        return
    partial = template.with_name(f".{template.name}.{os.getpid()}")
    try:
        partial.mkdir(parents=True, exist_ok=True)
        src, dst = sqlite3.connect(database), sqlite3.connect(partial / DATABASE_FILES[0])
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file (the server's is in WAL mode)
        finally:
            src.close()
            dst.close()
        if (database.parent / DATABASE_FILES[1]).is_file():
            shutil.copyfile(database.parent / DATABASE_FILES[1], partial / DATABASE_FILES[1])
        partial.rename(template)  # atomic; another process's template may have won the race
    except (OSError, sqlite3.Error) as e:
        log.debug("database template not saved: %s", e)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def drop_stale_partials(template: Path) -> None:
    """Remove the half-made templates (`.<version>.<pid>`) of processes that are gone (killed while
    saving: their `finally` never ran)."""
    if not template.parent.is_dir():
        return
    for partial in template.parent.glob(f".{template.name}.*"):
        pid = partial.name.rsplit(".", 1)[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except OSError:  # alive, another user's: not ours to remove
            pass


def drop_database(database: Path) -> None:
    for name in (*DATABASE_FILES, "prefect.db-wal", "prefect.db-shm"):
        (database.parent / name).unlink(missing_ok=True)


def start_embedded_server() -> str:
    """Start Prefect's ephemeral server now, in this (main) thread, so that every later client reuses
    it; returns its API URL. Prefect starts uvicorn with a plain Popen: its module gets a `subprocess`
    whose Popen sets the parent-death signal, so the server cannot outlive this process."""
    from prefect.server.api import server as prefect_server
    from prefect.settings import get_current_settings

    prefect_server.subprocess = SimpleNamespace(**{**vars(subprocess), "Popen": _popen_dying_with_parent})
    settings = get_current_settings()
    timeout = settings.server.ephemeral.startup_timeout_seconds
    database = _own_sqlite(settings)
    fresh = database is not None and not database.exists()
    seeded = fresh and seed_database(database)
    errors = []
    for _attempt in range(2):
        server = prefect_server.SubprocessASGIServer()
        try:
            server.start()
            if fresh and not seeded:
                save_database_template(database)
            return server.api_url
        except Exception as e:  # noqa: BLE001 — reported below, in one line
            errors.append(str(e).split(" stdout:")[0].rstrip(".") or type(e).__name__)
            server.stop()
            if seeded:  # perhaps the copy: retry on a new database, and make the template again
                drop_database(database)
                shutil.rmtree(database_template(), ignore_errors=True)
                seeded = False
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
