"""The `vora` process and its Prefect machinery on a real machine: a slow or missing server is one line,
and nothing the CLI starts (embedded server, img2dataset, its pool) outlives a `kill -9` of the CLI."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

VORA = str(Path(sys.executable).with_name("vora"))


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    return {**base, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def shapes_catalog(tmp_path: Path) -> Path:
    cat = tmp_path / "c.yaml"
    cat.write_text(yaml.safe_dump({"name": "c", "workdir": "r",
                                   "sources": {"s": {"kind": "synthetic_shapes", "n": 4}}}))
    return cat


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: nothing listens there


def test_every_command_gets_the_start_up_timeout(monkeypatch):
    """`main` sets the embedded server's start-up timeout before any command runs (a user's value wins)."""
    from flows import cli

    commands = [c.name or c.callback.__name__ for c in cli.app.registered_commands]
    assert set(commands) >= {"status", "stage", "run", "deploy", "chat", "merge"}
    for command in commands:
        monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
        monkeypatch.setattr(sys, "argv", ["vora", command, "--help"])
        cli.main()  # prints the command's help and returns
        assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "180", command
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    monkeypatch.setattr(sys, "argv", ["vora", "status", "--help"])
    cli.main()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "300"


def test_dead_api_url_is_one_line(tmp_path):
    shapes_catalog(tmp_path)
    url = f"http://127.0.0.1:{closed_port()}/api"
    for args in (["stage", "download", "c.yaml"], ["run", "c.yaml"]):
        out = subprocess.run([VORA, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             env=env(PREFECT_API_URL=url))
        assert out.returncode == 2
        assert out.stdout == ""
        assert out.stderr == (
            f"error: PREFECT_API_URL={url} does not answer (ConnectError: [Errno 111] Connection refused); "
            "start that server (`prefect server start`) or unset PREFECT_API_URL to run on the embedded server\n")
    assert not (tmp_path / "r" / "sources").exists()  # nothing ran


def test_embedded_server_that_cannot_start_in_time_is_retried_then_one_line(tmp_path):
    shapes_catalog(tmp_path)
    started = time.monotonic()
    out = subprocess.run([VORA, "stage", "download", "c.yaml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1"))
    assert out.returncode == 2
    assert "Traceback" not in out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: the embedded Prefect server did not start (tried twice, 1 s each: Timed out while attempting to "
        "connect to ephemeral Prefect API server); on a busy machine raise "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (now 1), or start a server (`prefect server start`) "
        "and set PREFECT_API_URL to it"]
    assert out.stderr.count("Starting temporary server") == 2  # retried once
    assert time.monotonic() - started < 120
    assert not (tmp_path / "r" / "sources").exists()


def test_a_fresh_run_starts_its_server_on_a_copy_of_a_migrated_database(tmp_path):
    import sqlite3
    from contextlib import closing

    import prefect

    cache = tmp_path / "cache"
    template = cache / "vora" / "prefect-db" / prefect.__version__ / "prefect.db"
    for workdir in ("r1", "r2"):
        (tmp_path / f"{workdir}.yaml").write_text(yaml.safe_dump(
            {"name": "c", "workdir": workdir, "sources": {"s": {"kind": "synthetic_shapes", "n": 4}}}))

    def download(workdir: str) -> None:
        out = subprocess.run([VORA, "stage", "download", f"{workdir}.yaml"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300, env=env(XDG_CACHE_HOME=str(cache)))
        assert out.returncode == 0, out.stderr[-2000:]
        assert (tmp_path / workdir / "shards" / "s" / "00000.tar").exists()

    download("r1")  # migrates a new database, and keeps a copy of it
    with closing(sqlite3.connect(template)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one file, nothing in a WAL
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM flow_run").fetchone() == (0,)  # empty: taken before any run
        db.execute("CREATE TABLE copied_from_the_template (x)")
    download("r2")  # starts from the copy
    with closing(sqlite3.connect(tmp_path / "r2" / ".prefect" / "prefect.db")) as db:
        assert db.execute("SELECT count(*) FROM copied_from_the_template").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM flow_run").fetchone()[0] >= 1


def test_a_damaged_database_template_is_dropped_not_copied(tmp_path, monkeypatch):
    from flows import embedded

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = embedded.database_template()
    template.mkdir(parents=True)
    (template / "prefect.db").write_bytes(b"not a database")  # would cost the whole start-up timeout
    database = tmp_path / "home" / "prefect.db"
    database.parent.mkdir()
    assert embedded.seed_database(database) is False
    assert not database.exists() and not template.exists()  # the next fresh run makes a new one


def test_a_template_half_made_by_a_killed_process_is_removed_at_the_next_save(tmp_path, monkeypatch):
    import sqlite3
    from contextlib import closing

    from flows import embedded

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = embedded.database_template()
    gone = template.with_name(f".{template.name}.{2**31 - 2}")  # above any pid_max: no such process
    alive = template.with_name(f".{template.name}.{os.getppid()}")  # a live process still saving
    for partial in (gone, alive):
        partial.mkdir(parents=True)
        (partial / "prefect.db").write_bytes(b"half")
    database = tmp_path / "home" / "prefect.db"
    database.parent.mkdir()
    with closing(sqlite3.connect(database)) as db:
        db.execute("CREATE TABLE alembic_version (version_num TEXT)")
        db.execute("INSERT INTO alembic_version VALUES ('abc')")
        db.commit()
    embedded.save_database_template(database)
    assert not gone.exists() and alive.exists()
    assert sorted(p.name for p in template.parent.iterdir()) == sorted([template.name, alive.name])
    with closing(sqlite3.connect(template / "prefect.db")) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == ("abc",)


class _Stalling(http.server.BaseHTTPRequestHandler):
    """Answers nothing for a long time: img2dataset's requests hang while the test kills the CLI."""

    def do_GET(self) -> None:
        time.sleep(120)

    def log_message(self, *args: object) -> None:
        pass


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[str]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:150]}")
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.slow
def test_kill_9_of_the_cli_leaves_no_process_behind(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    (tmp_path / "urls.jsonl").write_text("".join(
        json.dumps({"url": f"http://127.0.0.1:{port}/{i}.jpg", "caption": "x"}) + "\n" for i in range(8)))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "name": "k", "workdir": "r", "sources": {"web": {"kind": "url_list", "path": "urls.jsonl"}},
        "download": {"processes_count": 2, "thread_count": 2, "timeout": 100, "retries": 0},
    }))
    log = (tmp_path / "vora.out").open("w")
    proc = subprocess.Popen([VORA, "stage", "download", "c.yaml"], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, env=env())
    try:
        deadline = time.monotonic() + 240
        seen: dict[int, psutil.Process] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            for p in _descendants(proc.pid):
                seen.setdefault(p.pid, p)
            lines = []
            for p in seen.values():
                try:
                    lines.append(" ".join(p.cmdline()))
                except psutil.NoSuchProcess:
                    pass
            # the embedded server, img2dataset's child and at least one of its pool workers all running
            if (any("uvicorn" in c for c in lines) and any("img2dataset_child" in c for c in lines)
                    and len(seen) >= 4):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the download never reached img2dataset: {(tmp_path / 'vora.out').read_text()[-3000:]}")
        time.sleep(2)
        seen.update({p.pid: p for p in _descendants(proc.pid)})
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 30
        while _alive(list(seen.values())) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _alive(list(seen.values())) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in seen.values():  # never leave anything behind, even when the test fails
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        server.shutdown()


def test_stage_options_repeat_or_take_comma_lists(tmp_path):
    from flows.cli import _stages

    assert _stages(["download,mix", " pretrain ", "merge,"]) == ["download", "mix", "pretrain", "merge"]
    assert _stages(None) is None
    help_text = subprocess.run([VORA, "run", "--help"], capture_output=True, text=True, env=env(COLUMNS="300")).stdout
    assert help_text.count("stage(s): repeat the option or give a comma list (download,mix)") == 2  # --only, --force
    shapes_catalog(tmp_path)
    out = subprocess.run([VORA, "run", "c.yaml", "--only", "download,bogus"], cwd=tmp_path, capture_output=True,
                         text=True, env=env(), timeout=120)
    assert (out.returncode, out.stderr) == (
        2, "error: unknown stage 'bogus'; stages are: download, recaption, mix, pretrain, merge, finetune, evaluate\n")
    out = subprocess.run([VORA, "run", "c.yaml", "--only", "download,mix", "--from", "mix"], cwd=tmp_path,
                         capture_output=True, text=True, env=env(), timeout=120)
    assert (out.returncode, out.stderr) == (2, "error: use either --only or --from/--until, not both\n")
