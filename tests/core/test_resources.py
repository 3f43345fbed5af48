"""Catalog `orchestration` and per-stage `resources`: defaults, overrides, the fit check, fingerprints."""

import pytest

from vora_core.catalog import parse_catalog
from vora_core.errors import CatalogError, StageError
from vora_core.resources import unfit_message, unit_resources

BASE = {"name": "res", "workdir": "/shared/runs/res", "sources": {"web": {"kind": "url_list", "path": "u.parquet"}}}


def test_the_default_is_the_local_runner():
    c = parse_catalog(BASE)
    assert c.orchestration.runner == "local"
    assert c.orchestration.ray.model_dump() == {"address": None, "runtime_env": {}, "connect_timeout_s": 10,
                                                "max_retries": 3, "check_resources": True}
    assert c.recaption.resources.model_dump() == {"num_cpus": None, "num_gpus": None, "memory": None, "custom": {}}


def test_defaults_per_stage_on_gpu_and_cpu_clusters():
    c = parse_catalog({**BASE, "download": {"processes_count": 16},
                       "recaption": {"engine": "vllm", "vllm": {"tensor_parallel_size": 4}},
                       "pretrain": {"nproc_per_node": 8}, "mix": {"threads": 4}})
    on_gpus = {s: unit_resources(c, s, True) for s in ("download", "recaption", "mix", "pretrain", "merge",
                                                       "finetune", "evaluate")}
    assert on_gpus == {
        "download": {"num_cpus": 16, "num_gpus": 0}, "recaption": {"num_cpus": 1, "num_gpus": 4},
        "mix": {"num_cpus": 4, "num_gpus": 0}, "pretrain": {"num_cpus": 1, "num_gpus": 8},
        "merge": {"num_cpus": 1, "num_gpus": 0}, "finetune": {"num_cpus": 1, "num_gpus": 1},
        "evaluate": {"num_cpus": 1, "num_gpus": 1}}
    assert unit_resources(c, "recaption", False) == {"num_cpus": 1, "num_gpus": 0}  # a CPU cluster: no GPUs
    hf = parse_catalog({**BASE, "recaption": {"engine": "hf", "cpu_threads": 2}})
    assert unit_resources(hf, "recaption", True) == {"num_cpus": 2, "num_gpus": 1}
    on_cpu = parse_catalog({**BASE, "evaluate": {"device": "cpu"}})
    assert unit_resources(on_cpu, "evaluate", True) == {"num_cpus": 1, "num_gpus": 0}


def test_a_stage_resources_section_overrides_the_defaults():
    c = parse_catalog({**BASE, "recaption": {"resources": {"num_gpus": 8, "memory": 64 << 30,
                                                           "custom": {"a100": 1}}}})
    assert unit_resources(c, "recaption", False) == {"num_cpus": 1, "num_gpus": 8, "memory": 64 << 30,
                                                     "resources": {"a100": 1}}
    with pytest.raises(StageError, match="'ablate' is not a stage"):
        unit_resources(c, "ablate", False)


def test_bad_orchestration_is_a_catalog_error(tmp_path):
    from vora_core.catalog import load_catalog

    path = tmp_path / "c.yaml"
    path.write_text("name: x\nworkdir: w\nsources: {web: {kind: url_list, path: u.parquet}}\n"
                    "orchestration: {runner: spark}\n")
    with pytest.raises(CatalogError, match="orchestration.runner"):
        load_catalog(path)
    path.write_text("name: x\nworkdir: w\nsources: {web: {kind: url_list, path: u.parquet}}\n"
                    "download: {resources: {num_gpu: 1}}\n")
    with pytest.raises(CatalogError, match="download.resources.num_gpu"):
        load_catalog(path)


NODES = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 0.0, "memory": 16e9}},
         {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0, "memory": 8e9, "a100": 2.0}},
         {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]


def test_the_fit_check_needs_one_live_node_with_everything():
    assert unfit_message("recaption", {"num_cpus": 4, "num_gpus": 2, "resources": {"a100": 1}}, NODES, "c") is None
    assert unfit_message("download", {"num_cpus": 8, "num_gpus": 0}, NODES, "c") is None
    # 8 CPUs and 2 GPUs exist, but not on one node; the dead node's 8 GPUs do not count
    assert unfit_message("recaption", {"num_cpus": 8, "num_gpus": 2}, NODES, "the cluster") == (
        "recaption.resources: a unit asks CPU=8, GPU=2 but no node of the Ray cluster (the cluster, 2 live node(s)) "
        "has that much (the most one node has: CPU=8, GPU=2); lower recaption.resources (or the setting its "
        "default follows), or add such a node")
    assert "memory=3.2e+10" in unfit_message("mix", {"num_cpus": 1, "memory": 32e9}, NODES, "c")


def test_resources_never_change_a_fingerprint():
    from vora_core.caption import recaption
    from vora_core.data.download import OUTPUT_SETTINGS as DOWNLOAD_OUTPUT
    from vora_core.stages.merge import OUTPUT_SETTINGS as MERGE_OUTPUT
    from vora_core.train.prepare import OPERATIONAL

    plain = parse_catalog(BASE)
    asked = parse_catalog({**BASE, "recaption": {"resources": {"num_gpus": 8}}})
    assert recaption.settings_fingerprint(plain) == recaption.settings_fingerprint(asked)
    assert "resources" not in DOWNLOAD_OUTPUT and "resources" not in MERGE_OUTPUT
    assert "resources" in OPERATIONAL  # training fingerprints every setting but these
