"""benchmarks/gpu/suite.py on CPU (--cpu-smoke), so that the first GPU run does not fail on a typo."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_suite"]


def test_cpu_smoke_writes_the_report(suite, tmp_path) -> None:
    out = tmp_path / "report"
    assert suite.main(["--cpu-smoke", "--out", str(out), "--steps", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"date", "device", "torch", "cpu_smoke", "sections"}
    assert report["cpu_smoke"] is True
    sections = report["sections"]
    assert list(sections) == ["flex_vs_sdpa", "step", "recaption", "demo"]
    flex = sections["flex_vs_sdpa"]
    assert flex["status"] == "skipped" and flex["reason"].startswith("FlexAttention needs CUDA")
    assert flex["loss_sdpa"] > 0
    step = sections["step"]
    assert step["status"] == "ok" and step["config"]["hidden"] == 64 and step["flops_formula"] == suite.FLOPS_FORMULA
    [run] = step["runs"]
    assert {k: run[k] for k in ("attn", "mode", "status", "tokens", "mfu")} == {
        "attn": "sdpa", "mode": "eager", "status": "ok", "tokens": 1024, "mfu": None}
    assert run["tokens_per_s"] > 0 and run["flops_per_step"] > 0 and run["images"] >= 1
    assert sections["demo"] == {"status": "skipped", "reason": "not run in --cpu-smoke (make demo runs it on CPU)",
                                "seconds": 0.0}
    assert sections["recaption"]["status"] == "skipped"
    md = (out / "report.md").read_text()
    for line in ("## flex_vs_sdpa: skipped", "## step: ok", "| sdpa | eager | ok |", "## demo: skipped"):
        assert line in md


def test_unknown_section_is_one_clear_line(suite, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--cpu-smoke", "--out", str(tmp_path), "--sections", "step,stepp"])
    assert exit_info.value.code == 2
    assert "unknown sections ['stepp']; choose from flex_vs_sdpa, step, recaption, demo" in capsys.readouterr().err


def test_full_size_model_builds_on_meta(suite) -> None:
    """The Qwen2.5-7B-sized config is valid and LoRA r1024 sits on the first 24 of 28 blocks."""
    model = suite.build_model(suite.StepConfig(), "sdpa", "meta")
    layers = model.llm.get_decoder().layers
    assert len(layers) == 28 and len(model.teacher.encoder.layers) == 24
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    # r · (in + out) per projection: q, o 3584+3584; k, v 3584+512; gate, up, down 3584+18944
    assert lora == 24 * 1024 * (2 * 7168 + 2 * 4096 + 3 * 22528)
    assert not any(".lora_" in n for n, _ in layers[24].named_parameters())
    assert model.config.distill_blocks == list(range(1, 25))
