"""A real Prefect server + process worker on 127.0.0.1: deploy the pipeline, trigger it through the
REST API, and check flow-run and task-run states. Every process started here is stopped by pid."""

import json
import subprocess

import httpx
import pytest
import yaml

from flows.localserver import BIN, free_port, server_env, start, start_server, stop, wait_for

pytestmark = pytest.mark.slow


def test_deploy_and_run_on_a_real_server(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = server_env(tmp_path / "prefect-home", port)
    catalog = {
        "name": "served",
        "workdir": str(tmp_path / "run"),
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": 8, "heldout": 2}},
        "download": {"image_size": 64, "processes_count": 1, "thread_count": 2,
                     "number_sample_per_shard": 8, "rows_per_unit": 8},
    }
    catalog_path = tmp_path / "served.yaml"
    catalog_path.write_text(yaml.safe_dump(catalog))
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server = start_server(tmp_path / "prefect-home", port, server_log)
    worker = None
    try:
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", "vora-test", "--type", "process"],
                       env=env, check=True, capture_output=True, timeout=120)
        out = subprocess.run([str(BIN / "vora"), "deploy", str(catalog_path), "--pool", "vora-test",
                              "--name", "served-test", "--only", "download"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        deployment = httpx.get(f"{api}/deployments/name/vora-pipeline/served-test", timeout=10).json()
        assert deployment["parameters"] == {"catalog_path": str(catalog_path.resolve()), "only": ["download"]}
        # Portable: the installed module is the entrypoint, no pull step names a path of this host.
        assert (deployment["entrypoint"], deployment["pull_steps"]) == ("flows.pipeline.vora_pipeline", [])
        assert deployment["description"].startswith("VoRA (Vision as LoRA): download → recaption → mix")
        # The UI's parameter form: typed, documented, the stage parameters list the stage names.
        schema = deployment["parameter_openapi_schema"]["properties"]
        stages = ["download", "recaption", "mix", "pretrain", "merge", "finetune", "evaluate"]
        assert schema["only"]["anyOf"][0] == {"items": {"enum": stages, "type": "string"}, "type": "array"}
        assert schema["force"]["anyOf"][0] == schema["only"]["anyOf"][0]
        assert schema["from_stage"]["anyOf"][0] == {"enum": stages, "type": "string"}
        assert schema["until_stage"]["anyOf"][0] == {"enum": stages, "type": "string"}
        assert schema["from_stage"]["description"] == "run this stage and every later one."
        assert schema["catalog_path"]["type"] == "string" and "worker" in schema["catalog_path"]["description"]

        worker = start([str(BIN / "prefect"), "worker", "start", "--pool", "vora-test", "--type", "process"],
                       env, worker_log)
        answers: list[str] = []

        def created():
            # A freshly started server once answered this with a body that was no flow run: try again, and
            # say what it answered if it never creates one.
            r = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json={}, timeout=10)
            answers.append(f"{r.status_code} {r.text[:300]}")
            return r.json() if r.is_success and "id" in r.json() else None

        try:
            run = wait_for(created, 60, "the flow run's creation", [server_log])
        except TimeoutError as e:
            raise AssertionError(f"{e}\nlast answers: {answers[-3:]}") from e

        def finished():
            state = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()["state"]
            return state if state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

        state = wait_for(finished, 400, "the flow run", [server_log, worker_log])
        assert state["type"] == "COMPLETED", json.dumps(state) + worker_log.read_text()[-3000:]

        flow_runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        assert {fr["name"] for fr in flow_runs} == {"served-pipeline", "served-download"}
        assert {fr["state"]["type"] for fr in flow_runs} == {"COMPLETED"}
        subflows = {fr["flow_id"] for fr in flow_runs if fr["id"] != run["id"]}
        assert len(subflows) == 1  # the download stage ran as a subflow
        task_runs = httpx.post(f"{api}/task_runs/filter", json={}, timeout=10).json()
        names = sorted(tr["name"] for tr in task_runs if not tr["name"].startswith("download-prepare"))
        assert names and {tr["state"]["type"] for tr in task_runs} == {"COMPLETED"}
        assert (tmp_path / "run" / "shards" / "shapes").is_dir()
    finally:
        for proc in (worker, server):
            if proc is not None:
                stop(proc)
    assert server.poll() is not None and (worker is None or worker.poll() is not None)
