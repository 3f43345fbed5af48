"""Deployments of the pipeline on a real Prefect server: served by this process, or on a work pool."""

from __future__ import annotations

import os
from pathlib import Path

from flows.pipeline import vora_pipeline
from vora_core.errors import VoraError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/pipeline.py:vora_pipeline"


def deployment_parameters(catalog_path: str, only: list[str] | None = None) -> dict:
    return {"catalog_path": str(Path(catalog_path).resolve()), "only": only}


def deploy(
    catalog_path: str,
    name: str,
    cron: str | None = None,
    pool: str | None = None,
    only: list[str] | None = None,
) -> str | None:
    """With `pool`: register a deployment that the pool's workers run from this checkout and return
    its id. Without: serve the deployment from this process until interrupted (`flow.serve`)."""
    if not os.environ.get("PREFECT_API_URL"):
        raise VoraError(
            "deployments need a running Prefect server: set PREFECT_API_URL (e.g. "
            "http://127.0.0.1:4200/api after `prefect server start`, or the docker-compose server)"
        )
    params = deployment_parameters(catalog_path, only)
    if pool:
        flow = vora_pipeline.from_source(source=str(PROJECT_ROOT), entrypoint=ENTRYPOINT)
        return str(flow.deploy(name=name, work_pool_name=pool, parameters=params, cron=cron, build=False,
                               push=False, print_next_steps=False))
    vora_pipeline.serve(name=name, parameters=params, cron=cron)
    return None
