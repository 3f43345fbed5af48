"""Reporting never fails the work: a real Prefect server stops while a unit runs; the unit still
completes and writes its marker, and the next run against a live server skips it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from flows.localserver import free_port, server_env, start_server, stop
from vora_core.workdir import is_done

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# A stage flow whose one unit waits for a gate file, then reports progress the way the training and
# recaption runners do (flows.common.report_progress) and writes its output.
PROBE = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path

    from prefect import flow
    from prefect.artifacts import create_progress_artifact

    from flows.common import best_effort, map_units, report_progress
    from vora_core.catalog import load_catalog
    from vora_core.workdir import Unit


    def run_unit(catalog, unit, progress):
        Path(unit.params["started"]).touch()
        while not Path(unit.params["gate"]).exists():
            time.sleep(0.2)
        for step in range(1, 4):
            report_progress(progress, 100.0 * step / 3)
        Path(unit.output).write_text("trained")
        return {"steps": 3}


    @flow(name="probe")
    def probe(catalog_path: str, run_dir: str) -> list[dict]:
        catalog = load_catalog(catalog_path)
        progress = best_effort("progress artifact", create_progress_artifact, 0.0, key="probe-steps")
        unit = Unit(stage="pretrain", id="probe", output=f"{run_dir}/final", fingerprint="fp-1",
                    params={"started": f"{run_dir}/started", "gate": f"{run_dir}/gate"})
        return map_units(sys.modules[__name__], catalog, "probe", [unit], hooks={"progress": progress})


    if __name__ == "__main__":
        print("RESULTS " + json.dumps(probe(sys.argv[1], sys.argv[2])))
''')


def test_server_gone_mid_unit_the_unit_completes_and_a_rerun_skips_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    catalog = tmp_path / "probe.yaml"
    catalog.write_text(yaml.safe_dump({"name": "probe", "workdir": str(run_dir),
                                       "sources": {"s": {"kind": "synthetic_shapes", "n": 2}}}))
    (tmp_path / "probe_flow.py").write_text(PROBE)
    port, home = free_port(), tmp_path / "prefect-home"
    env = {**server_env(home, port), "PYTHONPATH": f"{tmp_path}:{ROOT}", "PREFECT_CLIENT_MAX_RETRIES": "1"}
    cmd = [sys.executable, str(tmp_path / "probe_flow.py"), str(catalog), str(run_dir)]

    server = start_server(home, port, tmp_path / "server.log", timeout=180)
    try:
        flow_log = (tmp_path / "flow1.log").open("w")
        proc = subprocess.Popen(cmd, env=env, stdout=flow_log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while not (run_dir / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "flow1.log").read_text()[-3000:]
            time.sleep(0.2)
        stop(server)  # the server goes away while the unit runs
        (run_dir / "gate").touch()
        try:
            proc.wait(300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        log1 = (tmp_path / "flow1.log").read_text()
        assert (run_dir / "final").read_text() == "trained", log1[-3000:]
        assert is_done(run_dir / "final", "fp-1"), log1[-3000:]  # the marker depends only on the work
        assert "progress update failed (the work carries on" in log1

        # The next run, against a live server (same database), skips the unit.
        server = start_server(home, port, tmp_path / "server2.log", timeout=180)
        (run_dir / "started").unlink()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        [results] = [json.loads(line[len("RESULTS "):]) for line in out.stdout.splitlines()
                     if line.startswith("RESULTS ")]
        assert [(r["unit"], r["status"], r["steps"]) for r in results] == [("probe", "skipped", 3)]
        assert not (run_dir / "started").exists()  # the work did not run again
    finally:
        stop(server)
