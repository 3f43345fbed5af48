"""benchmarks/gpu/suite.py on CPU (--cpu-smoke), so that the first GPU run does not fail on a typo."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu" / "suite.py"


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
    assert set(report) == {"date", "device", "torch", "cpu_smoke", "environment", "sections"}
    assert report["cpu_smoke"] is True
    assert report["environment"]["executable"] == sys.executable and report["environment"]["carried_wheels"] == []
    sections = report["sections"]
    assert list(sections) == ["flex_vs_sdpa", "step", "recaption", "demo"]
    flex = sections["flex_vs_sdpa"]
    assert flex["status"] == "skipped" and flex["reason"].startswith("FlexAttention needs CUDA")
    assert flex["loss_sdpa"] > 0 and flex["lora_tensors"] == 2 * 7 * 2  # A and B of 7 projections in 2 blocks
    per_document = flex["per_document"]  # SDPA per document against the dense mask, on CPU too
    assert per_document["equal"] is True and per_document["loss_abs_diff"] < 1e-5
    assert 0 < per_document["score_cells_fraction"] < 1  # regrouped: fewer score cells than the dense mask
    step = sections["step"]
    assert step["status"] == "ok" and step["config"]["hidden"] == 64 and step["flops_formula"] == suite.FLOPS_FORMULA
    [run] = step["runs"]
    assert {k: run[k] for k in ("attn", "mode", "frozen", "rows", "status", "tokens", "mfu", "peak_memory_gib")} == {
        "attn": "sdpa", "mode": "eager", "frozen": "bf16", "rows": 1, "status": "ok", "tokens": 1024, "mfu": None,
        "peak_memory_gib": None}
    # the frozen linears kept in bf16: q, k, v (weight + bias), o, gate, up, down of 3 blocks; the 7 linears
    # (no bias) of 2 teacher blocks; the untied LM head
    assert run["frozen_bf16_tensors"] == 3 * 10 + 2 * 7 + 1
    assert run["tokens_per_s"] > 0 and run["flops_per_step"] > 0 and run["images"] >= 1 and run["loss"] > 0
    # 1,024 tokens in 128-token tiles: 8 x 8 = 64 tiles; a causal mask skips the 28 above the diagonal
    sparsity = step["block_sparsity"]
    assert (sparsity["tiles"], sparsity["causal_skipped_fraction"]) == (64, 28 / 64)
    assert sparsity["documents"] >= 2 and sparsity["images"] == run["images"]
    assert sparsity["skipped_fraction"] == 1 - sparsity["tiles_computed"] / 64 > sparsity["causal_skipped_fraction"]
    assert sections["demo"] == {"status": "skipped", "reason": "not run in --cpu-smoke (make demo runs it on CPU)",
                                "seconds": 0.0}
    assert sections["recaption"]["status"] == "skipped"
    md = (out / "report.md").read_text()
    for line in ("## flex_vs_sdpa: skipped", "## step: ok", "| sdpa | eager | bf16 | 1 | ok |", "## demo: skipped"):
        assert line in md


def test_block_sparsity_counts_the_tiles_of_two_documents(suite) -> None:
    """Two documents of 256 tokens in a 512-token row (128-token tiles): of 16 tiles a causal mask computes
    10; the document rule drops the 4 where document 2 would see document 1; an image inside document 1
    (tokens 0-199, bidirectional) makes the tile (0, 1) above the diagonal visible."""
    ids = torch.full((1, 512), 7)
    ids[0, :200] = suite.IMAGE_TOKEN
    batch = {"input_ids": ids, "doc_ids": torch.tensor([[0] * 256 + [1] * 256]),
             "pixel_values": [torch.zeros(3, 14, 14)]}
    assert suite.block_sparsity(batch) == {
        "block_size": [128, 128], "tiles": 16, "tiles_computed": 7, "skipped_fraction": 9 / 16,
        "causal_skipped_fraction": 6 / 16, "cross_document_skipped_fraction": 3 / 16,
        "visible_pairs_fraction": (200 * 200 + 56 * 200 + 56 * 57 // 2 + 256 * 257 // 2) / 512**2,
        "documents": 2, "images": 1}


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel (a module with VALUE = 42), built by hand: no index, no build tool."""
    files = {f"{name}/__init__.py": b"VALUE = 42\n",
             f"{name}-{version}.dist-info/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for member, data in {**files, f"{name}-{version}.dist-info/RECORD": record.encode()}.items():
            whl.writestr(member, data)
    return path


def test_run_sh_preinstalled_mode_runs_the_given_python_with_carried_wheels(tmp_path) -> None:
    """SUITE_PYTHON: no `make setup`; the wheels in WHEELS are installed offline into SITE_DIR, which is on the
    suite's path (the report names them), and vora_core comes from the checkout."""
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels, "vora_probe", "1.0")
    site, out = tmp_path / "site", tmp_path / "report"
    env = {**os.environ, "SUITE_PYTHON": sys.executable, "WHEELS": str(wheels), "SITE_DIR": str(site),
           "PYTHONPATH": ""}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), str(out), "--cpu-smoke",
                           "--sections", "recaption,demo"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (site / "vora_probe" / "__init__.py").read_text() == "VALUE = 42\n"
    report = json.loads((out / "report.json").read_text())
    assert report["environment"]["executable"] == sys.executable
    assert report["environment"]["carried_wheels"] == ["vora_probe-1.0"]
    assert [s["status"] for s in report["sections"].values()] == ["skipped", "skipped"]
    assert "[gpu-suite] demo: skipped" in done.stdout


def test_demo_pretrain_steps_take_the_demo_catalogs_model(suite, tmp_path) -> None:
    """The demo section's fallback (no Prefect on the GPU machine): the demo's model and micro-batch,
    one step on CPU."""
    result = suite.demo_pretrain_steps(suite.Run(tmp_path, {"sections": {}}))
    assert {k: result["config"][k] for k in ("hidden", "layers", "vocab", "lora_rank", "lora_layers", "teacher_hidden",
                                             "image_size", "row_tokens", "batch")} == {
        "hidden": 128, "layers": 4, "vocab": 1024, "lora_rank": 64, "lora_layers": 2, "teacher_hidden": 64,
        "image_size": 112, "row_tokens": 512, "batch": 4}
    assert (result["status"], result["device"], result["steps"], result["tokens_per_step"]) == ("ok", "cpu", 1, 2048)
    assert result["step_s"] > 0 and 0 < result["final_loss"] < 20


def test_budget_skips_what_would_start_after_it(suite, tmp_path) -> None:
    out = tmp_path / "report"
    assert suite.main(["--cpu-smoke", "--out", str(out), "--sections", "step,demo", "--budget-s", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sections"] == {
        "step": {"status": "skipped", "reason": "time budget (--budget-s 0) spent", "seconds": 0.0},
        "demo": {"status": "skipped", "reason": "time budget (--budget-s 0) spent", "seconds": 0.0}}
    assert "## step: skipped\ntime budget (--budget-s 0) spent" in (out / "report.md").read_text()


def test_unknown_section_is_one_clear_line(suite, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--cpu-smoke", "--out", str(tmp_path), "--sections", "step,stepp"])
    assert exit_info.value.code == 2
    assert "unknown sections ['stepp']; choose from flex_vs_sdpa, step, recaption, demo" in capsys.readouterr().err


def test_step_variants_parse_and_bad_ones_exit_2(suite, tmp_path, capsys) -> None:
    V = suite.StepVariant
    assert V.parse("flex_attention:compiled") == V("flex_attention", "compiled", "bf16", 1)
    assert V.parse("sdpa:eager:fp32:2") == V("sdpa", "eager", "fp32", 2, "auto")
    assert V.parse("sdpa:eager:bf16:1:never") == V("sdpa", "eager", "bf16", 1, "never")
    assert suite.default_variants("cuda", False) == [V("flex_attention", "eager"), V("flex_attention", "compiled"),
                                                      V("sdpa", "eager"), V("sdpa", "compiled")]
    assert suite.default_variants("cpu", False) == [V("sdpa", "eager")]
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--cpu-smoke", "--out", str(tmp_path), "--variants", "sdpa:eager,sdpa:fast"])
    assert exit_info.value.code == 2
    assert ("step variant 'sdpa:fast': write ATTN:MODE[:FROZEN[:ROWS[:PER_DOCUMENT]]] with ATTN flex_attention|sdpa, "
            "MODE eager|compiled, FROZEN bf16|fp32, ROWS >= 1, PER_DOCUMENT auto|always|never"
            ) in capsys.readouterr().err


def test_step_variants_switch_the_frozen_weights_and_rows(suite, tmp_path) -> None:
    out = tmp_path / "report"
    assert suite.main(["--cpu-smoke", "--out", str(out), "--steps", "1", "--sections", "step",
                       "--variants", "sdpa:eager:fp32:1,sdpa:eager:bf16:1,sdpa:eager:bf16:2,"
                       "sdpa:eager:fp32:1:always"]) == 0
    runs = json.loads((out / "report.json").read_text())["sections"]["step"]["runs"]
    assert [(r["frozen"], r["rows"], r["tokens"], r["frozen_bf16_tensors"], r["status"]) for r in runs] == [
        ("fp32", 1, 1024, 0, "ok"), ("bf16", 1, 1024, 45, "ok"), ("bf16", 2, 2048, 45, "ok"),
        ("fp32", 1, 1024, 0, "ok")]
    # the same batch: bf16 storage and its restoring change no number (per document: within rounding)
    assert runs[0]["loss"] == runs[1]["loss"] != runs[2]["loss"]
    assert abs(runs[3]["loss"] - runs[0]["loss"]) < 1e-5
    assert runs[0]["per_document_cells_fraction"] is None  # auto at 1,024 tokens: the dense mask
    assert 0 < runs[3]["per_document_cells_fraction"] < 1


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
