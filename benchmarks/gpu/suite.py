"""The GPU suite: one run on a fresh GPU machine, one JSON + markdown report (benchmarks/gpu/run.sh runs it).

Sections (each reports status ok | skipped | failed; one failing section does not stop the others):
  flex_vs_sdpa  FlexAttention BlockMask vs dense-mask SDPA: loss and LoRA gradients of one packed batch
                with images, forward + backward (CUDA only: FlexAttention has no CPU backward)
  step          the pretraining step at Qwen2.5-7B dimensions with random weights (fp32 master weights +
                bf16 autocast, as the train stage runs): eager vs compiled (vora_core.model.compile) x
                flex vs sdpa; tokens/s, MFU (FLOPs counted explicitly, formula in the report), peak memory
  recaption     the recaption engine `vllm` on the tiny captioner saved to disk: images/s
  demo          `vora run catalogs/demo.yaml` on the GPU, fresh workdir: wall time

    .venv/bin/python benchmarks/gpu/suite.py --out gpu-report            # on the GPU machine
    .venv/bin/python benchmarks/gpu/suite.py --cpu-smoke --out /tmp/r    # reduced sizes on CPU (a test runs it)
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import platform
import random
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

SECTIONS = ("flex_vs_sdpa", "step", "recaption", "demo")
IMAGE_TOKEN = 3
# Dense bf16 tensor-core peak (TFLOP/s) by device name, for MFU; --peak-tflops overrides.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}

FLOPS_FORMULA = (
    "FLOPs per step, counted for the work the step does (frozen weights get no weight gradient): "
    "LLM blocks 2·N_base·T (fwd) + 2·N_base·T (bwd, activation grads) + 6·N_lora·T; "
    "attention 4·d·P per layer fwd + 8·d·P bwd, d = heads·head_dim, P = visible (query, key) pairs of the "
    "packed, image-bidirectional mask (not the L² a dense mask computes); LM head 4·V·H·T_label (fwd + "
    "activation grad); vision embedding 6·N_ve·T_vis; aux heads 6·H·W·T_vis per distilled block; teacher "
    "forward 2·N_teacher·T_vis + 4·W·Σ_img n_img² per block. N_base/N_lora/N_teacher = their linear-layer "
    "weights; T = tokens, T_vis = vision tokens. MFU = FLOPs / (step seconds × peak bf16 dense FLOP/s)."
)


@dataclass
class StepConfig:
    hidden: int = 3584
    layers: int = 28
    heads: int = 28
    kv_heads: int = 4
    intermediate: int = 18944
    vocab: int = 152064
    lora_rank: int = 1024
    lora_layers: int = 24
    teacher_hidden: int = 1536
    teacher_layers: int = 24
    teacher_heads: int = 12
    teacher_intermediate: int = 4096
    image_size: int = 448
    patch_size: int = 14
    row_tokens: int = 4096
    batch: int = 1
    image_share: float = 0.7


SMOKE = StepConfig(hidden=64, layers=3, heads=4, kv_heads=2, intermediate=128, vocab=512, lora_rank=8,
                   lora_layers=2, teacher_hidden=32, teacher_layers=2, teacher_heads=2, teacher_intermediate=64,
                   image_size=56, patch_size=14, row_tokens=1024)


# ------------------------------------------------------------------------------------------ model + batch


def build_model(c: StepConfig, attn: str, device: str):
    from transformers import Aimv2VisionConfig, Qwen2Config

    from vora_core.model.config import VoRAConfig
    from vora_core.model.lora import configure_trainable
    from vora_core.model.modeling import VoRAForCausalLM

    text = Qwen2Config(vocab_size=c.vocab, hidden_size=c.hidden, intermediate_size=c.intermediate,
                       num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.kv_heads,
                       tie_word_embeddings=False)
    teacher = Aimv2VisionConfig(hidden_size=c.teacher_hidden, intermediate_size=c.teacher_intermediate,
                                num_hidden_layers=c.teacher_layers, num_attention_heads=c.teacher_heads,
                                image_size=c.image_size, patch_size=c.patch_size, use_head=False)
    config = VoRAConfig(text_config=text, teacher_config=teacher, lora_rank=c.lora_rank, lora_layers=c.lora_layers,
                        image_size=c.image_size, patch_size=c.patch_size, image_token_id=IMAGE_TOKEN,
                        attn_implementation=attn)
    torch.manual_seed(0)
    with torch.device(device):
        model = VoRAForCausalLM(config)
    configure_trainable(model, "pretrain")
    return model.train()


def make_batch(c: StepConfig, model, device: str, seed: int = 0):
    from train_step import build_batch

    args = argparse.Namespace(batch=c.batch, row_tokens=c.row_tokens, vocab=c.vocab, image_share=c.image_share,
                              image_size=c.image_size)
    per_image = model.config.num_image_tokens(c.image_size, c.image_size)
    ids, docs, labels, images = build_batch(args, random.Random(seed), per_image)
    return {"input_ids": ids.to(device), "doc_ids": docs.to(device), "labels": labels.to(device),
            "pixel_values": [i.to(device) for i in images] or None}


def step_flops(c: StepConfig, model, batch: dict) -> float:
    """The FLOPs of one forward + backward of `batch` (FLOPS_FORMULA)."""
    from vora_core.model import masks

    ids, docs = batch["input_ids"], batch["doc_ids"]
    tokens = ids.numel()
    is_image = ids == IMAGE_TOKEN
    t_vis = int(is_image.sum())
    t_label = int(((batch["labels"][:, 1:] != -100) & (docs[:, 1:] == docs[:, :-1])).sum())
    n_images = len(batch["pixel_values"] or [])
    per_image = t_vis // max(1, n_images)
    image_ids = masks.image_ids_from_input_ids(ids, IMAGE_TOKEN, torch.full((n_images,), per_image))
    limit = masks.visibility_limit(image_ids, n_images, True)
    pairs = int((masks.dense_mask(docs, limit, torch.float32) == 0).sum())

    lora, base = 0, 0
    for name, p in model.llm.get_decoder().layers.named_parameters():
        if name.endswith("weight") and p.dim() == 2:
            if ".lora_" in name:
                lora += p.numel()
            else:
                base += p.numel()
    d_attn = c.heads * (c.hidden // c.heads)
    ve = sum(m.weight.numel() for m in model.vision_embedding.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                         torch.nn.Linear)))
    aux = len(model.config.distill_blocks) * c.hidden * c.teacher_hidden
    teacher = sum(p.numel() for n, p in model.teacher.named_parameters() if p.dim() == 2 and "embed" not in n)
    flops = 4 * base * tokens + 6 * lora * tokens
    flops += 12 * d_attn * pairs * c.layers
    flops += 4 * c.vocab * c.hidden * t_label
    flops += 6 * ve * t_vis + 6 * aux * t_vis
    flops += 2 * teacher * t_vis + 4 * c.teacher_hidden * n_images * per_image**2 * c.teacher_layers
    return float(flops)


def peak_tflops(override: float | None) -> float | None:
    if override is not None:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


# ------------------------------------------------------------------------------------------ sections


def section_flex_vs_sdpa(args) -> dict:
    c = SMOKE if args.cpu_smoke else StepConfig(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512,
                                                vocab=4096, lora_rank=16, lora_layers=2, teacher_hidden=128,
                                                teacher_layers=2, teacher_heads=2, teacher_intermediate=256,
                                                image_size=224, row_tokens=1024, batch=2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    attns = ("sdpa", "flex_attention") if device == "cuda" else ("sdpa",)
    for attn in attns:
        model = build_model(c, attn, device)
        with torch.no_grad():  # non-zero LoRA B, so that LoRA takes part
            for name, p in model.named_parameters():
                if ".lora_B." in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.02)
        batch = make_batch(c, model, device)
        out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if ".lora_" in n and p.grad is not None}
        results[attn] = (out.loss.detach().float(), grads)
        del model
    report = {"config": asdict(c), "device": device, "loss_sdpa": float(results["sdpa"][0])}
    if device != "cuda":
        return {**report, "status": "skipped", "reason": "FlexAttention needs CUDA (no CPU backward); sdpa ran"}
    (loss_s, g_s), (loss_f, g_f) = results["sdpa"], results["flex_attention"]
    max_diff = max(float((g_s[n] - g_f[n]).abs().max()) for n in g_s)
    scale = max(float(g.abs().max()) for g in g_s.values())
    equal = abs(float(loss_s - loss_f)) <= 1e-4 * abs(float(loss_s)) + 1e-5 and max_diff <= 1e-3 * scale + 1e-6
    return {**report, "status": "ok" if equal else "failed", "loss_flex": float(loss_f),
            "loss_abs_diff": abs(float(loss_s - loss_f)), "lora_grad_max_abs_diff": max_diff,
            "lora_grad_max_abs": scale, "equal": equal}


def _time_steps(model, batch: dict, steps: int, device: str) -> tuple[float, float]:
    """Mean seconds of forward + backward (after one warm-up step) and peak memory in GiB (CUDA)."""
    autocast = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else torch.autocast(
        device, enabled=False)
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for k in range(steps + 1):
        start = time.perf_counter()
        with autocast:
            out = model(**batch)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if k:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return sum(times) / len(times), peak


def section_step(args) -> dict:
    from vora_core.model.compile import compile_blocks

    c = SMOKE if args.cpu_smoke else StepConfig()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    attns = ["sdpa", "flex_attention"] if device == "cuda" else ["sdpa"]
    modes = ["eager", "compiled"] if (device == "cuda" or args.smoke_compile) else ["eager"]
    peak = peak_tflops(args.peak_tflops)
    runs = []
    for attn in attns:
        model = build_model(c, attn, device)
        batch = make_batch(c, model, device)
        flops = step_flops(c, model, batch)
        for mode in modes:
            if mode == "compiled":
                compile_blocks(model)
            try:
                seconds, mem = _time_steps(model, batch, args.steps, device)
            except Exception as err:  # one variant failing (e.g. flex + compile) leaves the others
                runs.append({"attn": attn, "mode": mode, "status": "failed", "error": f"{type(err).__name__}: {err}"})
                continue
            tokens = batch["input_ids"].numel()
            runs.append({"attn": attn, "mode": mode, "status": "ok", "step_s": seconds, "tokens_per_s": tokens / seconds,
                         "tflops_per_s": flops / seconds / 1e12,
                         "mfu": flops / seconds / (peak * 1e12) if peak else None, "peak_memory_gib": mem,
                         "flops_per_step": flops, "tokens": tokens,
                         "images": len(batch["pixel_values"] or [])})
        del model, batch
        torch._dynamo.reset()  # compiled code holds the blocks: free the model before building the next
        if device == "cuda":
            torch.cuda.empty_cache()
    status = "ok" if all(r["status"] == "ok" for r in runs) else "failed"
    return {"status": status, "config": asdict(c), "device": device, "steps": args.steps, "peak_tflops": peak,
            "flops_formula": FLOPS_FORMULA, "runs": runs}


def section_recaption(args) -> dict:
    if importlib.util.find_spec("vllm") is None:
        other = ROOT / ".venv-vllm" / "bin" / "python"  # vllm pins its own torch: its own environment
        if not other.exists():
            return {"status": "skipped", "reason": "vllm is not installed (INSTALL_VLLM=1 benchmarks/gpu/run.sh)"}
        sub_out = Path(args.out) / "vllm"
        subprocess.run([str(other), __file__, "--out", str(sub_out), "--sections", "recaption",
                        "--images", str(args.images)], cwd=ROOT, check=False)
        return json.loads((sub_out / "report.json").read_text())["sections"]["recaption"]
    from recaption import images, requests

    from vora_core.caption.engines import VllmEngine
    from vora_core.caption.models import build_tiny_captioner
    from vora_core.catalog import RecaptionSettings, TinyCaptionerSettings

    model_dir = build_tiny_captioner(Path(args.out) / "captioner", TinyCaptionerSettings())
    reqs = requests(images(args.images), RecaptionSettings().prompts)
    settings = RecaptionSettings(engine="vllm", model=str(model_dir), max_new_tokens=16, vllm={"max_model_len": 4096})
    engine = VllmEngine(settings, str(model_dir))
    engine.caption(reqs[:8])
    start = time.perf_counter()
    out = engine.caption(reqs)
    seconds = time.perf_counter() - start
    return {"status": "ok", "images": len(reqs), "seconds": seconds, "images_per_s": len(reqs) / seconds,
            "tokens_per_s": sum(r.n_tokens for r in out) / seconds}


def section_demo(args) -> dict:
    if args.cpu_smoke:
        return {"status": "skipped", "reason": "not run in --cpu-smoke (make demo runs it on CPU)"}
    import yaml

    workdir = Path(args.out).resolve() / "demo-run"
    catalog = yaml.safe_load((ROOT / "catalogs" / "demo.yaml").read_text())
    catalog["workdir"] = str(workdir)
    path = Path(args.out).resolve() / "demo.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    vora = Path(sys.executable).with_name("vora")
    start = time.perf_counter()
    done = subprocess.run([str(vora), "run", str(path)], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (Path(args.out) / "demo.log").write_text(done.stdout + done.stderr)
    summary = workdir / "eval" / "summary.json"
    return {"status": "ok" if done.returncode == 0 else "failed", "wall_s": seconds, "returncode": done.returncode,
            "log": "demo.log", "eval_summary": json.loads(summary.read_text()) if summary.exists() else None}


# ------------------------------------------------------------------------------------------ report


def markdown(report: dict) -> str:
    lines = [f"# GPU suite report ({report['date']})", "",
             f"device: {report['device']}; torch {report['torch']}; cpu_smoke: {report['cpu_smoke']}", ""]
    for name in SECTIONS:
        sec = report["sections"].get(name)
        if sec is None:
            continue
        lines.append(f"## {name}: {sec['status']}")
        if sec.get("reason") or sec.get("error"):
            lines.append(f"{sec.get('reason') or sec.get('error')}")
        if name == "step":
            lines += ["", sec["flops_formula"], "",
                      "| attn | mode | status | step s | tokens/s | TFLOP/s | MFU | peak GiB |", "|---|---|---|---|---|---|---|---|"]
            for r in sec["runs"]:
                if r["status"] != "ok":
                    lines.append(f"| {r['attn']} | {r['mode']} | {r['status']}: {r['error']} | | | | | |")
                    continue
                mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
                mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
                lines.append(f"| {r['attn']} | {r['mode']} | ok | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | "
                             f"{r['tflops_per_s']:.1f} | {mfu} | {mem} |")
        else:
            shown = {k: v for k, v in sec.items() if k not in ("status", "reason", "error", "config", "traceback")}
            lines += [f"- {k}: {v}" for k, v in shown.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu-report", help="report directory (report.json, report.md)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--cpu-smoke", action="store_true", help="reduced sizes on CPU: checks the suite itself")
    parser.add_argument("--smoke-compile", action="store_true", help="--cpu-smoke: time the compiled step too (slow)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--images", type=int, default=256, help="recaption: images")
    parser.add_argument("--peak-tflops", type=float, default=None, help="MFU denominator (default: by device name)")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or 'cpu'})"
    report = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "device": device,
              "torch": torch.__version__, "cpu_smoke": args.cpu_smoke, "sections": {}}
    functions = {"flex_vs_sdpa": section_flex_vs_sdpa, "step": section_step, "recaption": section_recaption,
                 "demo": section_demo}
    for name in sections:
        started = time.perf_counter()
        try:
            result = functions[name](args)
        except Exception as err:  # the report still gets written, with what went wrong
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - started, 1)
        report["sections"][name] = result
        print(f"[gpu-suite] {name}: {result['status']} ({result['seconds']} s)", flush=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))  # after each section: partial results survive
    (out / "report.md").write_text(markdown(report))
    print(f"[gpu-suite] report: {out / 'report.json'}, {out / 'report.md'}")
    return 0 if all(s["status"] != "failed" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
