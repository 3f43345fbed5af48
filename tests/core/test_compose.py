"""docker-compose.yml and Dockerfile structure (Docker cannot run on this machine)."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_dependencies():
    services = compose()["services"]
    assert set(services) == {"postgres", "prefect-server", "worker", "vllm", "ray-head", "ray-worker"}
    assert services["prefect-server"]["build"] == "."
    assert services["worker"]["image"] == services["prefect-server"]["image"]
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert services["vllm"]["profiles"] == ["vllm"]
    for name in ("postgres", "prefect-server", "worker", "vllm", "ray-head", "ray-worker"):
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["restart"] == "unless-stopped", name
    # The worker's healthcheck asks the health server that --with-healthcheck starts (port 8080).
    assert "--with-healthcheck" in services["worker"]["command"]
    assert "http://127.0.0.1:8080/health" in services["worker"]["healthcheck"]["test"][-1]
    assert services["worker"]["working_dir"] == "/app"
    assert set(compose()["volumes"]) == {"pgdata", "runs", "hf-cache"}
    assert "runs:/app/runs" in services["worker"]["volumes"]


def test_ray_profile_is_a_head_and_workers_from_the_project_image():
    services = compose()["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["profiles"] == worker["profiles"] == ["ray"]
    assert head["image"] == worker["image"] == services["prefect-server"]["image"]
    assert head["command"][:5] == ["ray", "start", "--head", "--block", "--port=6379"]
    assert worker["command"] == ["ray", "start", "--address=ray-head:6379", "--block"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    for svc in (head, worker):  # every node sees the run directory and reports to the Prefect server
        assert "runs:/app/runs" in svc["volumes"]
        assert svc["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_no_default_secrets_and_localhost_only():
    text = (ROOT / "docker-compose.yml").read_text()
    # Every use of a secret is `${VAR:?message}`: compose refuses to start without it.
    for var in ("POSTGRES_PASSWORD", "PREFECT_SERVER_API_AUTH_STRING"):
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), var
    services = compose()["services"]
    server_env = services["prefect-server"]["environment"]
    assert "postgresql+asyncpg://" in server_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_dockerfile_builds_the_make_setup_install():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM python:3.11" in text
    assert re.search(r"^RUN make setup VENV=/opt/vora .*TORCH_SPEC=", text, re.M)
    for path in ("pyproject.toml", "vora_core", "flows", "catalogs"):
        assert f"COPY {path}" in text or f" {path} " in text.split("COPY", 1)[1]


def test_portable_catalog_paths():
    from flows.deploy import PROJECT_ROOT, portable_path

    assert portable_path(str(PROJECT_ROOT / "catalogs" / "demo.yaml")) == "catalogs/demo.yaml"
    assert portable_path("/srv/elsewhere/c.yaml") == "/srv/elsewhere/c.yaml"
