"""download stage: sources → url partitions → img2dataset → webdataset shards + manifest."""

from __future__ import annotations

from prefect import flow
from prefect.states import State

from flows.common import check_failures, map_units, publish_table, run_name
from vora_core.catalog import load_catalog
from vora_core.manifest import open_manifest
from vora_core.stages import download


@flow(name="download", log_prints=True, flow_run_name=run_name("download"))
def download_flow(catalog_path: str, force: bool = False) -> list[dict] | State:
    catalog = load_catalog(catalog_path)
    catalog.write_lock()
    settings = catalog.download
    map_units(download, catalog, "download-prepare", download.prepare_units(catalog), force=force)
    results = map_units(download, catalog, "download", download.plan(catalog), force=force,
                        retries=settings.unit_retries, parallel=settings.parallel_units)
    open_manifest(catalog.run).close()  # rebuild the views over what is on disk now
    rows = download.summary(catalog)
    publish_table(catalog, "download", rows, "download: rows, successes, failures by reason, images/s")
    return check_failures(catalog, download.failure_report(catalog), settings.max_failure_rate, results)
