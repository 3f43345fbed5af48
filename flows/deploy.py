"""Deployments of the pipeline on a real Prefect server: served by this process, or on a work pool.

A work-pool deployment is portable: its entrypoint is the installed module `flows.pipeline` (no pull
step, no path of this host), and a catalog under the project root is registered relative to it, so a
worker whose working directory is the project root (`/app` in the docker-compose image) finds it; the
pipeline resolves the path inside the worker."""

from __future__ import annotations

import os
from pathlib import Path

from flows.pipeline import DESCRIPTION, vora_pipeline
from vora_core.errors import VoraError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows.pipeline.vora_pipeline"  # a module path: importable wherever the project is installed


def portable_path(catalog_path: str) -> str:
    """The catalog relative to the project root when it lies under it, else absolute."""
    path = Path(catalog_path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def deployment_parameters(catalog_path: str, only: list[str] | None = None) -> dict:
    return {"catalog_path": portable_path(catalog_path), "only": only}


def deploy(
    catalog_path: str,
    name: str,
    cron: str | None = None,
    pool: str | None = None,
    only: list[str] | None = None,
) -> str | None:
    """With `pool`: register a deployment that the pool's workers run and return its id. Without:
    serve the deployment from this process until interrupted (`flow.serve`)."""
    if not os.environ.get("PREFECT_API_URL"):
        raise VoraError(
            "deployments need a running Prefect server: set PREFECT_API_URL (e.g. "
            "http://127.0.0.1:4200/api after `prefect server start`, or the docker-compose server)"
        )
    if pool:
        return register(name, pool, deployment_parameters(catalog_path, only), cron)
    params = {"catalog_path": str(Path(catalog_path).resolve()), "only": only}
    vora_pipeline.serve(name=name, parameters=params, cron=cron, description=DESCRIPTION)
    return None


def register(name: str, pool: str, params: dict, cron: str | None) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(vora_pipeline.name)
        schedules = [DeploymentScheduleCreate(schedule=CronSchedule(cron=cron))] if cron else []
        deployment_id = client.create_deployment(
            flow_id, name, work_pool_name=pool, parameters=params, description=DESCRIPTION,
            entrypoint=ENTRYPOINT, pull_steps=[], schedules=schedules, enforce_parameter_schema=True,
            parameter_openapi_schema=vora_pipeline.parameters.model_dump(mode="json"),
        )
    return str(deployment_id)
