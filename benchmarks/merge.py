"""Streaming LoRA merge: seconds and peak RSS on a ~0.5B-parameter random VoRA saved in bf16 shards.

Writes a pretraining directory with Qwen2-0.5B geometry (hidden 896, 24 blocks, vocab 151936,
tied embeddings) + LoRA on the first --lora-layers blocks + a small teacher and distillation
heads, in bf16 shards of --shard-mb, then merges it in a fresh process and reports the time and
the peak RSS against the target: peak ≤ 1.5 × largest shard + the process's baseline.

    .venv/bin/python benchmarks/merge.py                  # ~1 GB of shards under /tmp
    .venv/bin/python benchmarks/merge.py --layers 4       # quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries that across exec
    from the forked parent, so a child would inherit the shard writer's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_pretrain_dir(out: Path, args) -> tuple[int, int]:
    """Random bf16 VoRA directory with the real parameter names, written tensor by tensor."""
    from transformers import Aimv2VisionConfig, Qwen2Config

    from vora_core.model.config import VoRAConfig
    from vora_core.model.merge import ShardWriter
    from vora_core.model.modeling import VoRAForCausalLM

    text = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
    teacher = Aimv2VisionConfig(hidden_size=256, intermediate_size=704, num_hidden_layers=args.lora_layers,
                                num_attention_heads=4, image_size=448, patch_size=14, use_head=False)
    config = VoRAConfig(text_config=text, teacher_config=teacher, lora_rank=args.lora_rank, image_token_id=151655,
                        dtype="bfloat16")
    with torch.device("meta"):
        model = VoRAForCausalLM(config)
    tied = set(model.all_tied_weights_keys)
    tensors = [(n, tuple(p.shape)) for n, p in model.state_dict().items() if n not in tied]
    n_params = sum(torch.Size(s).numel() for _, s in tensors)
    limit = args.shard_mb << 20
    shards, current, size = [], [], 0
    for name, shape in tensors:
        nbytes = torch.Size(shape).numel() * 2
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    weight_map = {}
    gen = torch.Generator().manual_seed(0)
    for i, shard in enumerate(shards):
        file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        writer = ShardWriter(out / file_name, [(n, "BF16", s) for n, s in shard])
        for name, shape in shard:
            writer.write_tensor(name, (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16))
            weight_map[name] = file_name
        writer.close()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(out)
    largest = max(p.stat().st_size for p in out.glob("*.safetensors"))
    return n_params, largest


def child(src: str, dst: str) -> None:
    """Runs in a fresh process so that ru_maxrss is the merge's own peak."""
    from vora_core.model.merge import merge_lora

    baseline = status_mb("VmRSS")
    start = time.perf_counter()
    merge_lora(src, dst)
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    print(json.dumps({"seconds": seconds, "baseline_mb": baseline, "peak_mb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--lora-layers", type=int, default=12)
    parser.add_argument("--lora-rank", type=int, default=256)
    parser.add_argument("--shard-mb", type=int, default=500)
    parser.add_argument("--workdir", default=None, help="where to write the directories (default: a temp dir)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    root = Path(args.workdir or tempfile.mkdtemp(prefix="vora-merge-bench-"))
    src, dst = root / "pretrain", root / "merged"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(dst, ignore_errors=True)
    src.mkdir(parents=True)
    start = time.perf_counter()
    n_params, largest = write_pretrain_dir(src, args)
    n_shards = len(list(src.glob("*.safetensors")))
    print(f"wrote {n_params / 1e6:.0f} M parameters in {n_shards} bf16 shards (largest {largest / 2**20:.0f} MiB) "
          f"in {time.perf_counter() - start:.1f} s")
    run = subprocess.run([sys.executable, __file__, "--child", str(src), str(dst)], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(run.stderr)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    merged_bytes = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
    over = result["peak_mb"] - result["baseline_mb"]
    budget = 1.5 * largest / 2**20
    print(f"merge: {result['seconds']:.1f} s, output {merged_bytes / 2**20:.0f} MiB")
    print(f"peak RSS {result['peak_mb']:.0f} MiB = baseline {result['baseline_mb']:.0f} MiB + {over:.0f} MiB; "
          f"target ≤ baseline + 1.5 × largest shard = baseline + {budget:.0f} MiB -> "
          f"{'OK' if over <= budget else 'OVER'}")
    if not args.workdir:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
