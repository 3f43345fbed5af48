"""The scale-out settings the README names exist in the catalog and reach the code that uses them."""

import sys

import pytest

from vora_core.catalog import parse_catalog
from vora_core.errors import StageError
from vora_core.train.launch import torchrun_command, training_command

SCALED = {
    "name": "scaled",
    "workdir": "/shared/runs/scaled",
    "sources": {"web": {"kind": "url_list", "path": "/shared/urls.parquet"}},
    "download": {"distributor": "pyspark", "processes_count": 64, "thread_count": 64, "parallel_units": 4},
    "recaption": {"engine": "openai", "concurrency_limit": "vora-gpu", "parallel_units": 8,
                  "openai": {"base_urls": ["http://gpu-0:8000/v1", "http://gpu-1:8000/v1"], "concurrency": 256},
                  "vllm": {"tensor_parallel_size": 8}},
    "pretrain": {"nproc_per_node": 8, "nnodes": 4, "node_rank": 2, "rdzv_endpoint": "node-0:29500",
                 "strategy": "fsdp2"},
}


def test_scale_out_settings_parse():
    c = parse_catalog(SCALED)
    assert c.download.distributor == "pyspark" and c.download.parallel_units == 4
    assert c.recaption.openai.base_urls == ["http://gpu-0:8000/v1", "http://gpu-1:8000/v1"]
    assert (c.recaption.vllm.tensor_parallel_size, c.recaption.concurrency_limit) == (8, "vora-gpu")
    assert (c.pretrain.nnodes, c.pretrain.strategy, c.pretrain.rdzv_endpoint) == (4, "fsdp2", "node-0:29500")
    assert parse_catalog({**SCALED, "download": {"distributor": "ray"}}).download.distributor == "ray"


def test_multi_node_torchrun_command():
    settings = parse_catalog(SCALED).pretrain
    cmd = torchrun_command("/shared/runs/scaled/pretrain/spec.json", settings, run_id="scaled-pretrain")
    assert cmd[3:] == ["--nproc-per-node=8", "--nnodes=4", "--rdzv-backend=c10d", "--rdzv-endpoint=node-0:29500",
                       "--rdzv-id=scaled-pretrain", "--node-rank=2", "-m", "vora_core.train.worker", "--spec",
                       "/shared/runs/scaled/pretrain/spec.json"]
    single = parse_catalog({**SCALED, "pretrain": {"nproc_per_node": 2}}).pretrain
    assert "--standalone" in torchrun_command("spec.json", single)
    with pytest.raises(StageError, match="nnodes=2 needs rdzv_endpoint"):
        torchrun_command("spec.json", single.model_copy(update={"nnodes": 2}))


def test_one_rank_on_one_machine_starts_without_torchrun():
    one = parse_catalog({**SCALED, "pretrain": {"nproc_per_node": 1}}).pretrain
    assert training_command("spec.json", one) == [sys.executable, "-m", "vora_core.train.worker", "--spec", "spec.json"]
    two = one.model_copy(update={"nproc_per_node": 2})
    assert training_command("spec.json", two) == torchrun_command("spec.json", two)
    across = one.model_copy(update={"nnodes": 2, "rdzv_endpoint": "node-0:29500"})
    assert training_command("spec.json", across)[1:3] == ["-m", "torch.distributed.run"]
