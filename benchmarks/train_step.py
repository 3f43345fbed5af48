"""Pretraining step throughput of VoRA (LoRA + block-wise distillation) on a packed, mixed batch.

Builds a random model from configs (no downloads), packs caption samples (one image + 32–480 text
tokens) and text-only samples into rows of --row-tokens tokens (no padding), and times forward +
backward. Also reports the share of the step spent building attention masks and splicing vision
embeddings (target: < 3 % at a 4k-token batch).

    .venv/bin/python benchmarks/train_step.py                      # DESIGN's reference-sized config
    .venv/bin/python benchmarks/train_step.py --hidden 128 --layers 4 --steps 2   # quick
    .venv/bin/python benchmarks/train_step.py --compile --lm-loss-chunk 0   # compiled blocks, plain LM loss
    .venv/bin/python benchmarks/train_step.py --loader   # packing vs padding, loader vs step
                                                         # (benchmarks/train_loader.py)
    .venv/bin/python benchmarks/train_step.py --compare --vocab 4096 --teacher-hidden 256 --row-tokens 4096 \
        --image-share 1 --steps 3    # eager vs compiled, plain vs chunked LM loss; pretrain and finetune
    .venv/bin/python benchmarks/train_step.py --documents ...   # SDPA per document vs the dense mask
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Aimv2VisionConfig, Qwen2Config

from vora_core.model import masks, modeling
from vora_core.model.config import VoRAConfig
from vora_core.model.lora import configure_trainable
from vora_core.model.modeling import VoRAForCausalLM

IMAGE_TOKEN = 3
TIMED = defaultdict(float)


def timed(module, name: str, bucket: str) -> None:
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMED[bucket] += time.perf_counter() - start

    setattr(module, name, wrapper)


def build_batch(args, rng: random.Random, tokens_per_image: int):
    """Rows of exactly --row-tokens packed tokens: ~--image-share caption samples, the rest text."""
    rows_ids, rows_docs, rows_labels, images = [], [], [], []
    for _ in range(args.batch):
        ids, docs, labels, doc = [], [], [], 0
        while len(ids) < args.row_tokens:
            text = [rng.randrange(10, args.vocab) for _ in range(rng.randint(32, 480))]
            if rng.random() < args.image_share:
                sample = [text[0]] + [IMAGE_TOKEN] * tokens_per_image + text[1:]
                label = [-100] * (1 + tokens_per_image) + text[1:]
                image = torch.randn(3, args.image_size, args.image_size)
            else:
                sample, label, image = text, [-100] + text[1:], None
            room = args.row_tokens - len(ids)
            if len(sample) > room:
                if image is not None:  # never cut an image: fill the rest with text
                    sample = text[:room]
                    label, image = [-100] + sample[1:], None
                sample, label = sample[:room], label[:room]
            ids += sample
            labels += label
            docs += [doc] * len(sample)
            if image is not None:
                images.append(image)
            doc += 1
        rows_ids.append(ids)
        rows_docs.append(docs)
        rows_labels.append(labels)
    return torch.tensor(rows_ids), torch.tensor(rows_docs), torch.tensor(rows_labels), images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--teacher-hidden", type=int, default=512)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--lora-rank", type=int, default=256)
    parser.add_argument("--distill", default="blockwise", choices=["blockwise", "last", "none"])
    parser.add_argument("--batch", type=int, default=1, help="packed rows per step")
    parser.add_argument("--row-tokens", type=int, default=4096)
    parser.add_argument("--image-share", type=float, default=0.7, help="fraction of samples with an image")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flex_attention"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile each decoder block (regional)")
    parser.add_argument("--lm-loss-chunk", type=int, default=4096, help="label positions per LM-loss chunk; 0: plain")
    parser.add_argument("--compare", action="store_true",
                        help="instead: eager vs compiled and plain vs chunked LM loss, pretrain and finetune, "
                             "steps interleaved so every variant sees the same machine load")
    parser.add_argument("--documents", action="store_true",
                        help="instead: SDPA per document vs SDPA with the dense mask, pretrain and finetune, "
                             "taking turns on the same batches")
    parser.add_argument("--loader", action="store_true",
                        help="instead: packing vs padding and the data loader vs the step, through the stage code")
    args = parser.parse_args()
    if args.loader:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from train_loader import run

        run()
        return

    if args.compare or args.documents:
        compare(args, DOCUMENT_VARIANTS if args.documents else COMPILE_VARIANTS)
        return
    torch.manual_seed(args.seed)
    text = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=max(1, args.heads // 2), tie_word_embeddings=False)
    teacher = Aimv2VisionConfig(hidden_size=args.teacher_hidden, intermediate_size=args.teacher_hidden * 11 // 4,
                                num_hidden_layers=args.teacher_layers,
                                num_attention_heads=max(1, args.teacher_hidden // 64),
                                image_size=args.image_size, patch_size=args.patch_size, use_head=False)
    config = VoRAConfig(text_config=text, teacher_config=teacher, lora_rank=args.lora_rank, distill=args.distill,
                        image_size=args.image_size, patch_size=args.patch_size, image_token_id=IMAGE_TOKEN,
                        attn_implementation=args.attn, lm_loss_chunk=args.lm_loss_chunk)
    model = VoRAForCausalLM(config).to(args.device)
    counts = configure_trainable(model, "pretrain")
    if args.compile:  # the warm-up step (step 0) pays the compilation
        from vora_core.model.compile import compile_blocks

        compile_blocks(model)
    model.train()

    for name in ("build_attention_mask", "visibility_limit", "image_ids_from_input_ids", "padding_doc_ids",
                 "positions_from_doc_ids", "check_image_token_count"):
        timed(masks, name, "masks")
    timed(modeling, "splice_vision", "splice")

    rng = random.Random(args.seed)
    tokens_per_image = config.num_image_tokens(args.image_size, args.image_size)
    step_times, prep, n_images = [], [], 0
    for step in range(args.steps + 1):  # step 0 warms up allocators and kernels
        ids, docs, labels, images = build_batch(args, rng, tokens_per_image)
        ids, docs, labels = ids.to(args.device), docs.to(args.device), labels.to(args.device)
        images = [img.to(args.device) for img in images]
        TIMED.clear()
        start = time.perf_counter()
        out = model(input_ids=ids, pixel_values=images or None, doc_ids=docs, labels=labels)
        out.loss.backward()
        if args.device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        if step == 0:
            continue
        step_times.append(elapsed)
        prep.append(TIMED["masks"] + TIMED["splice"])
        n_images += len(images)
        print(f"step {step}: {elapsed:.2f} s, loss {out.loss.item():.3f} (lm {out.lm_loss.item():.3f}, "
              f"distill {0.0 if out.distill_loss is None else out.distill_loss.item():.3f}), "
              f"masks {TIMED['masks'] * 1e3:.1f} ms, "
              f"splice {TIMED['splice'] * 1e3:.1f} ms, {len(images)} images")
    tokens = args.batch * args.row_tokens
    mean = sum(step_times) / len(step_times)
    print(f"config: LLM {args.hidden}x{args.layers} (vocab {args.vocab}), teacher {args.teacher_hidden}x"
          f"{args.teacher_layers} at {args.image_size}px/{args.patch_size} ({tokens_per_image} tokens/image), "
          f"LoRA r={args.lora_rank}, distill={args.distill}, attn={args.attn}, device={args.device}, "
          f"compile={args.compile}, lm_loss_chunk={args.lm_loss_chunk}, "
          f"threads={torch.get_num_threads()}")
    print(f"trainable {counts['trainable'] / 1e6:.2f} M, frozen {counts['frozen'] / 1e6:.2f} M parameters")
    print(f"batch: {args.batch} x {args.row_tokens} packed tokens (0 padding), {n_images / len(step_times):.1f} "
          f"images/step")
    print(f"forward+backward: {mean:.2f} s/step, {tokens / mean:.0f} tokens/s")
    print(f"mask building + splicing: {sum(prep) / len(prep) * 1e3:.1f} ms/step = "
          f"{100 * sum(prep) / sum(step_times):.2f} % of the step (target < 3 %)")


def build(args, stage: str, compiled: bool, chunk: int, per_document: str = "auto") -> VoRAForCausalLM:
    """The benchmark's model for a stage (finetune: the merged shape, no LoRA, no teacher), seeded."""
    torch.manual_seed(args.seed)
    text = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=max(1, args.heads // 2), tie_word_embeddings=False)
    teacher = None if stage == "finetune" else Aimv2VisionConfig(
        hidden_size=args.teacher_hidden, intermediate_size=args.teacher_hidden * 11 // 4,
        num_hidden_layers=args.teacher_layers, num_attention_heads=max(1, args.teacher_hidden // 64),
        image_size=args.image_size, patch_size=args.patch_size, use_head=False)
    config = VoRAConfig(text_config=text, teacher_config=teacher,
                        lora_rank=args.lora_rank if stage == "pretrain" else 0,
                        distill=args.distill if stage == "pretrain" else "none", image_size=args.image_size,
                        patch_size=args.patch_size, image_token_id=IMAGE_TOKEN, attn_implementation=args.attn,
                        lm_loss_chunk=chunk, per_document_attention=per_document)
    model = VoRAForCausalLM(config).to(args.device)
    configure_trainable(model, stage)
    if compiled:
        from vora_core.model.compile import compile_blocks

        compile_blocks(model)
    return model.train()


# (blocks, LM-loss chunk: None = --lm-loss-chunk, per_document_attention); the first is the ratios' base
COMPILE_VARIANTS = [("eager", None, "auto"), ("eager", 0, "auto"), ("compiled", None, "auto")]
DOCUMENT_VARIANTS = [("eager", None, "always"), ("eager", None, "never")]


def compare(args, variants: list[tuple[str, int | None, str]]) -> None:
    """Tokens/s of model variants per stage (eager vs compiled blocks, plain vs chunked LM loss, SDPA per
    document vs the dense mask); the variants take turns step by step on the same batches. Step 0
    (compilation, allocator warm-up) is reported apart."""
    variants = [(mode, args.lm_loss_chunk if chunk is None else chunk, per_doc) for mode, chunk, per_doc in variants]
    rng = random.Random(args.seed)
    print(f"LLM {args.hidden}x{args.layers} vocab {args.vocab}, ViT {args.teacher_hidden}x{args.teacher_layers} at "
          f"{args.image_size}/{args.patch_size}, LoRA r{args.lora_rank}, "
          f"{args.batch} x {args.row_tokens} packed tokens, "
          f"image share {args.image_share}, {args.device}, {torch.get_num_threads()} threads, fp32")
    print("| stage | blocks | LM loss | attention | step 0 (s) | s/step | tokens/s | vs the first |")
    print("|---|---|---|---|---|---|---|---|")
    for stage in ("pretrain", "finetune"):
        models = [build(args, stage, mode == "compiled", chunk, per_doc) for mode, chunk, per_doc in variants]
        tokens_per_image = models[0].config.num_image_tokens(args.image_size, args.image_size)
        times: list[list[float]] = [[] for _ in variants]
        for _ in range(args.steps + 1):
            ids, docs, labels, images = build_batch(args, rng, tokens_per_image)
            for k, model in enumerate(models):
                start = time.perf_counter()
                model(input_ids=ids.to(args.device), pixel_values=[im.to(args.device) for im in images] or None,
                      doc_ids=docs.to(args.device), labels=labels.to(args.device)).loss.backward()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times[k].append(time.perf_counter() - start)
                model.zero_grad(set_to_none=True)
        base = sorted(times[0][1:])[len(times[0][1:]) // 2]
        for (mode, chunk, per_doc), t in zip(variants, times, strict=True):
            step_s = sorted(t[1:])[len(t[1:]) // 2]  # median of the timed steps
            attention = (args.attn if args.attn != "sdpa" or per_doc == "auto"
                         else "per document" if per_doc == "always" and mode == "eager" else "dense mask")
            print(f"| {stage} | {mode} | {'chunked ' + str(chunk) if chunk else 'plain'} | {attention} | "
                  f"{t[0]:.1f} | {step_s:.2f} | "
                  f"{args.batch * args.row_tokens / step_s:.0f} | {base / step_s:.2f}x |", flush=True)
        del models


if __name__ == "__main__":
    main()
