"""The training loop of one rank (what `python -m vora_core.train.worker` runs under torchrun).

Per optimizer step: `grad_accum` micro-batches come from the loader; their label and vision token
counts (host-side, from `collate`) are all-reduced over ranks first, so every micro-batch's loss is
normalised by the *step's global* counts:

    loss_k = Σ_tokens CE_k / N_labels + λ · distill_k · V_k / N_vision

(`distill_k` is the mean over micro-batch k's V_k vision tokens). The backward of `world × loss_k`
under DDP's gradient averaging then gives exactly the gradient of one big batch — one batch of 4
rows and 4 micro-batches of 1 row give the same gradient.

No host–device synchronisation inside the step: counts travel host → device, the NaN/inf guard is
evaluated on the device and handed to fused AdamW as `found_inf` (the update, weight decay and step
count are skipped on the device), and each step's metrics are read back one step later, when the
next step is already queued. A skipped step is counted; `nan_tolerance` of them in a row stop the
run with `TrainingDiverged` (the checkpoints stay: skipped steps never change the weights). A sample
whose image fails to load is left out of its row by the loader and counted (`skipped_images`); more
than `max_skipped_share` of the mixture's samples per epoch begun stop the run with a `DataError`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vora_core.catalog import TrainSettings
from vora_core.errors import DataError, StageError
from vora_core.model import frozen_weights
from vora_core.train import checkpoint
from vora_core.train.loader import EpochPlans, PackDataset, build_loader
from vora_core.train.metrics import MetricsLog, plot_loss, read_metrics, truncate_metrics
from vora_core.train.samples import SampleBuilder, open_index
from vora_core.train.spec import PartsInit, RunSpec
from vora_core.workdir import atomic_path

log = logging.getLogger(__name__)


class TrainingDiverged(StageError):
    """Too many non-finite steps in a row."""


# ------------------------------------------------------------------------------------ environment


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_setting: str = "auto") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_setting == "auto" else device_setting.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise StageError(f"device={device_setting!r} but CUDA is not available; use device: cpu or auto")
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, device)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- model


def compile_wanted(setting: bool | str, device_type: str) -> bool:
    """`compile: auto` compiles where it was measured to pay: on CUDA, not on CPU (README Performance)."""
    return device_type == "cuda" if setting == "auto" else bool(setting)


def build_model(spec: RunSpec, device_type: str = "cpu"):
    """The VoRA model of the spec, in float32 (master weights), with the stage's trainable set; its
    decoder blocks compiled when `compile` asks for it on `device_type`."""
    from vora_core.model.lora import configure_trainable
    from vora_core.model.modeling import VoRAForCausalLM, load_vora

    m = spec.model
    if isinstance(m, PartsInit):
        model = VoRAForCausalLM.from_parts(m.llm, m.teacher, dtype=torch.float32,
                                           attn_implementation=spec.attn_implementation, **m.fields)
    else:
        model = load_vora(m.path, dtype=torch.float32, attn_implementation=spec.attn_implementation)
    model.config.lm_loss_chunk = spec.settings.lm_loss_chunk
    counts = configure_trainable(model, spec.stage)
    if compile_wanted(spec.settings.compile, device_type):
        from vora_core.model.compile import compile_blocks

        compile_blocks(model)
    return model, counts


def wrap(model: nn.Module, strategy: str, dist: Dist) -> nn.Module:
    model.to(dist.device)
    if dist.world == 1:
        return model
    if strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        # FSDP2 reduce-scatters a block's gradients from a hook on the block's *inputs*. With a frozen
        # embedding table, a text-only micro-batch feeds block 0 an input without grad: its hook never
        # fires and its reduce-scatter moves to the end of the backward, after the root's — while a rank
        # whose micro-batch holds an image (vision embeddings spliced in) keeps the usual order. The
        # ranks' collectives then disagree and gloo/NCCL abort or hang. Inputs that always require
        # grad keep every rank's order the same.
        model.llm.enable_input_require_grads()
        for layer in model.llm.get_decoder().layers:
            fully_shard(layer)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float):
    """Multiplier of the base lr at optimizer step s (0-based): linear warmup to 1 by step `warmup`-1."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (s - warmup) / max(1, total - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def make_optimizer(params: list[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    kwargs = dict(lr=s.lr, betas=tuple(s.adam_betas), eps=s.adam_eps, weight_decay=s.weight_decay)
    try:  # fused: reads `found_inf` and skips a bad step on the device
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, foreach=True, **kwargs)


# ------------------------------------------------------------------------------------------ step


def grad_norm(params: list[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Total grad norm (clipping to `max_norm` if given), as a device tensor (no sync)."""
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def guarded_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], loss: torch.Tensor,
                 max_norm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip, then step unless the loss or the grad norm is non-finite. Returns (grad norm, finite flag).

    Fused AdamW skips on the device (`found_inf`); the foreach fallback has to read the flag (one sync)."""
    norm = grad_norm(params, max_norm)
    finite = torch.isfinite(loss.detach()) & torch.isfinite(norm)
    if getattr(optimizer, "defaults", {}).get("fused"):
        optimizer.found_inf = (~finite).to(torch.float32)
        optimizer.step()
    elif bool(finite):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, finite


def to_device(batch: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {
        "input_ids": batch["input_ids"].to(device, non_blocking=nb),
        "labels": batch["labels"].to(device, non_blocking=nb),
        "doc_ids": batch["doc_ids"].to(device, non_blocking=nb),
        "position_ids": batch["position_ids"].to(device, non_blocking=nb),
        "pixel_values": [p.to(device, non_blocking=nb) for p in batch["pixel_values"]] or None,
    }


COUNT_KEYS = ("labels", "vision_tokens", "tokens", "slots", "samples", "skipped")


def global_counts(micro: list[dict], dist: Dist) -> torch.Tensor:
    counts = torch.tensor([[mb["counts"][k] for k in COUNT_KEYS] for mb in micro], dtype=torch.float64)
    totals = counts.sum(0).to(dist.device)
    if dist.world > 1:
        torch.distributed.all_reduce(totals)
    return totals


def accumulate(model: nn.Module, micro: list[dict], totals: torch.Tensor, dist: Dist, blocks: list[int],
               distill_weight: float, autocast, ddp: bool) -> torch.Tensor:
    """Forward/backward of the step's micro-batches. Returns [lm, distill, per-block...] (this rank's share)."""
    n_labels = totals[0].clamp(min=1).float()
    n_vision = totals[1].clamp(min=1).float()
    out_vec = torch.zeros(2 + len(blocks), device=dist.device)
    for k, mb in enumerate(micro):
        sync = not ddp or k == len(micro) - 1
        with (nullcontext() if sync else model.no_sync()), autocast():
            out = model(**to_device(mb, dist.device))
        lm = out.lm_loss.float() * out.num_label_tokens / n_labels
        loss = lm + 0.0 * out.loss  # the zero keeps every trainable tied to the graph (DDP)
        parts = [lm.detach()]
        if out.distill_losses:
            share = mb["counts"]["vision_tokens"] / n_vision
            distill = out.distill_loss.float() * share
            loss = loss + distill_weight * distill
            parts += [distill.detach()] + [out.distill_losses[i].detach().float() * share for i in blocks]
        else:
            parts += [torch.zeros((), device=dist.device)] * (1 + len(blocks))
        (loss * dist.world).backward()
        out_vec += torch.stack(parts)
    if dist.world > 1:
        torch.distributed.all_reduce(out_vec)
    return out_vec


# ------------------------------------------------------------------------------------------ loop


def _record(step: int, vec: list[float], blocks: list[int], host: dict, distill_weight: float) -> dict:
    lm, distill = vec[0], vec[1]
    finite = bool(vec[-1])
    return {
        "step": step,
        "loss": lm + distill_weight * distill,
        "lm_loss": lm,
        "distill": distill if blocks else None,
        "distill_blocks": {str(b): v for b, v in zip(blocks, vec[2:2 + len(blocks)], strict=True)},
        "grad_norm": vec[-2],
        "skipped": not finite,
        "skipped_images": int(vec[-3]),  # samples of the step (all ranks) whose image failed to load
        **host,
    }


def cpu_threads_note(device: torch.device) -> str:
    """How the step's CPU threads wait (libgomp's settings, which decide the speed of small ops on a quiet
    or a busy machine: README "Training speed on CPU"); nothing on an accelerator."""
    if device.type != "cpu":
        return ""
    policy, spin = os.environ.get("OMP_WAIT_POLICY", "unset"), os.environ.get("GOMP_SPINCOUNT", "unset")
    return f", {torch.get_num_threads()} CPU threads (OMP_WAIT_POLICY {policy}, GOMP_SPINCOUNT {spin})"


class Trainer:
    """One rank's training run (torchtitan's `Trainer` is the model): `__init__` builds the model, the
    data, the optimizer and resumes from the newest checkpoint; `run` repeats `step` (one optimizer step),
    `log` (the previous step's metrics, read one step late so no step waits on the device) and
    `checkpoint`, then writes `final/`. Rank 0 writes metrics, checkpoints and `final/`."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        s = self.settings = spec.settings
        self.dist = dist = init_distributed(s.device)
        if dist.device.type == "cpu" and s.cpu_threads:
            torch.set_num_threads(s.cpu_threads)
        seed_all(s.seed)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
        self.module, self.trainable_counts = build_model(spec, dist.device.type)
        module = self.module
        use_bf16 = s.precision == "bf16" or (s.precision == "auto" and dist.device.type == "cuda")
        # FSDP2 shards a block's parameters as one flat dtype: there they stay fp32.
        self.lean_frozen: list[str] = []
        if use_bf16 and s.frozen_bf16 and not (s.strategy == "fsdp2" and dist.world > 1):
            module.to(dist.device)  # the exactness check of a 7B model is quick there, slow on the host
            self.lean_frozen = frozen_weights.store_exact(module)
        if s.grad_checkpointing:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.wrapped = wrap(module, s.strategy, dist)
        module.train()
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.blocks = list(module.config.distill_blocks) if spec.stage == "pretrain" else []
        self.distill_weight = float(module.config.distill_weight)

        builder = SampleBuilder(self.tokenizer, module.config, spec.transform, s.seq_len, s.system_prompt)
        self.lengths = open_index(spec.index).column("length").to_numpy()
        rows_per_step = s.micro_batch * s.grad_accum
        self.plans = EpochPlans(self.lengths, s.seq_len, s.packing, s.seed, dist.rank, dist.world, rows_per_step)
        steps_per_epoch = self.plans.steps_per_epoch(0)
        self.total = s.steps if s.steps is not None else max(1, math.ceil(s.epochs * steps_per_epoch))

        self.optimizer = make_optimizer(self.params, s)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(s.schedule, s.warmup_steps, self.total, s.min_lr_ratio))
        self.state: dict[str, Any] = {"step": 0, "position": [0, 0], "nan_run": 0, "nan_steps": 0, "tokens": 0,
                                      "samples": 0, "seconds": 0.0, "skipped_images": 0}
        resume_from = checkpoint.latest(spec.checkpoints)
        if resume_from is not None:
            self.state = checkpoint.load(resume_from, self.wrapped, module, self.optimizer, self.scheduler,
                                         dist.rank, dist.world)
            if dist.main:
                truncate_metrics(spec.metrics, self.state["step"])
            log.info("rank %d: resumed from %s (step %d)", dist.rank, resume_from, self.state["step"])
        elif dist.main and spec.metrics.exists():
            spec.metrics.unlink()  # a fresh run: no stale lines from a run without checkpoints

        self.autocast = (lambda: torch.autocast(dist.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
        dataset = PackDataset(spec.index, builder)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        loader = build_loader(dataset, self.plans, tuple(self.state["position"]), s.micro_batch, s.num_workers, pad,
                              pin_memory=dist.device.type == "cuda")
        self.batches: Any = iter(loader)
        self.metrics = MetricsLog(spec.metrics) if dist.main else None
        self.ddp = dist.world > 1 and s.strategy == "ddp"
        # Audit trail (tests, debugging): which samples each rank trained on, and its weights at the end.
        self.trace_dir = Path(spec.out_dir) / "data_trace" if spec.extra.get("trace_data") else None
        self.trace = MetricsLog(self.trace_dir / f"rank-{dist.rank}.jsonl") if self.trace_dir is not None else None
        self.pending: tuple | None = None  # (step, device vector, host figures) of the step not logged yet
        if dist.main:
            lean = f", {len(self.lean_frozen)} frozen linear tensors in bf16" if self.lean_frozen else ""
            print(f"[train] {spec.stage}: {self.total} steps ({steps_per_epoch} per epoch), world {dist.world}, "
                  f"trainable {self.trainable_counts['trainable']:,} / frozen {self.trainable_counts['frozen']:,}, "
                  f"start at step {self.state['step']}{lean}{cpu_threads_note(dist.device)}", flush=True)

    def step(self) -> None:
        """One optimizer step (its metrics stay on the device until the next `log`)."""
        s, dist, state = self.settings, self.dist, self.state
        started = time.perf_counter()
        micro = [next(self.batches) for _ in range(s.grad_accum)]
        data_wait = time.perf_counter() - started
        totals = global_counts(micro, dist)
        lr = self.scheduler.get_last_lr()[0]
        vec = accumulate(self.wrapped, micro, totals, dist, self.blocks, self.distill_weight, self.autocast, self.ddp)
        loss = vec[0] + self.distill_weight * vec[1]
        norm, finite = guarded_step(self.optimizer, self.params, loss, s.max_grad_norm)
        self.scheduler.step()
        state["step"] += 1
        epoch, index = micro[-1]["positions"][-1]
        state["position"] = [epoch, index + 1]
        if self.trace is not None:
            self.trace.write({"step": state["step"], "rank": dist.rank,
                              "samples": [i for mb in micro for e, k in mb["positions"] for i in self.plans(e)[k]]})
        self.log()  # the previous step's metrics: this step is already queued
        host_counts = {k: sum(mb["counts"][k] for mb in micro) for k in COUNT_KEYS}
        elapsed = time.perf_counter() - started
        # Host counts of all ranks ~ this rank's × world (ranks get equal rows; the exact global
        # label/vision counts are in `totals`, used for the loss).
        tokens = host_counts["tokens"] * dist.world
        samples = host_counts["samples"] * dist.world
        state["tokens"] += tokens
        state["samples"] += samples
        state["seconds"] += elapsed
        host = {
            "lr": lr, "epoch": epoch, "total_steps": self.total, "tokens": tokens, "samples": samples,
            "padding_fraction": 1.0 - host_counts["tokens"] / max(1, host_counts["slots"]),
            "tokens_per_s": tokens / elapsed, "samples_per_s": samples / elapsed,
            "step_s": elapsed, "data_wait_s": data_wait,
        }
        self.pending = (state["step"], torch.cat([vec, totals[5:6].float(), norm.reshape(1).float(),
                                                  finite.reshape(1).float()]), host)

    def log(self) -> None:
        """Write the pending step's metrics; stop the run on too many non-finite steps or skipped images."""
        if self.pending is None:
            return
        s, spec, state = self.settings, self.spec, self.state
        step, vec, host = self.pending
        self.pending = None
        record = _record(step, vec.tolist(), self.blocks, host, self.distill_weight)
        state["nan_run"] = state["nan_run"] + 1 if record["skipped"] else 0
        state["nan_steps"] += int(record["skipped"])
        record["nan_steps"] = state["nan_steps"]
        state["skipped_images"] = state.get("skipped_images", 0) + record["skipped_images"]  # older checkpoints
        record["skipped_images_total"] = state["skipped_images"]
        if self.metrics is not None:
            self.metrics.write(record)
            if step % 10 == 0 or step == self.total:
                print(f"[train] step {step}/{self.total} loss {record['loss']:.4f} lm {record['lm_loss']:.4f} "
                      f"lr {record['lr']:.3g} tok/s {record['tokens_per_s']:.0f}", flush=True)
        if state["nan_run"] >= s.nan_tolerance:
            last = checkpoint.latest(spec.checkpoints)
            raise TrainingDiverged(
                f"{spec.stage}: {state['nan_run']} non-finite steps in a row (up to step {step}; nan_tolerance "
                f"{s.nan_tolerance}); stopped. Last good checkpoint: {last or 'none'}. Lower the lr, check the "
                "data, or raise nan_tolerance"
            )
        allowed = s.max_skipped_share * len(self.lengths) * (record["epoch"] + 1)
        if state["skipped_images"] > allowed:
            raise DataError(
                f"{spec.stage}: {state['skipped_images']} samples skipped because their image failed to load (up to "
                f"step {step}), more than max_skipped_share {s.max_skipped_share:g} of the {len(self.lengths)} "
                f"samples per epoch; the shards changed or were damaged after the mix stage: rerun download/mix (the "
                f"loader's warnings name the samples), or raise {spec.stage}.max_skipped_share"
            )

    def checkpoint(self) -> None:
        """Log the pending step, then save (every rank), rotate, and redraw the loss curve (rank 0)."""
        spec, dist = self.spec, self.dist
        self.log()
        saved = checkpoint.save(spec.checkpoints, self.state["step"], self.wrapped, self.module, self.optimizer,
                                self.scheduler, dict(self.state), dist.rank, dist.world)
        if dist.main:
            checkpoint.rotate(spec.checkpoints, self.settings.keep_last)
            self.metrics.sync()
            plot_loss(read_metrics(spec.metrics), spec.loss_png, f"{spec.stage}")
            print(f"[train] checkpoint {saved}", flush=True)

    def run(self) -> dict:
        """Train to the last step (checkpointing every `checkpoint_every` and at the end), then `final/`."""
        try:
            while self.state["step"] < self.total:
                self.step()
                if self.state["step"] % self.settings.checkpoint_every == 0 or self.state["step"] == self.total:
                    self.checkpoint()
            self.log()
        finally:
            self.batches = None  # stops the loader's workers
            if self.metrics is not None:
                self.metrics.close()
            if self.trace is not None:
                self.trace.close()
        frozen_weights.restore(self.module, self.lean_frozen)  # what is saved is what was loaded
        if self.trace_dir is not None:
            self.save_trace(self.trace_dir)
        dist, state = self.dist, self.state
        save_final(self.spec, self.wrapped, self.module, self.tokenizer, dist)
        stats = {"steps": state["step"], "tokens": state["tokens"], "samples": state["samples"],
                 "nan_steps": state["nan_steps"], "world": dist.world, "trainable": self.trainable_counts["trainable"]}
        if dist.world > 1:
            torch.distributed.barrier()
        return stats

    def save_trace(self, trace_dir: Path) -> None:
        """This rank's trainable weights at the end (the audit trail's last part)."""
        from safetensors.torch import save_file

        full = {n: p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2: gather (collective)
                for n, p in self.module.named_parameters() if p.requires_grad}
        save_file({n: t.detach().contiguous().cpu() for n, t in full.items()},
                  str(trace_dir / f"rank-{self.dist.rank}.safetensors"))


def train(spec: RunSpec) -> dict:
    """Run (or resume) the spec's training on this rank."""
    return Trainer(spec).run()


def save_final(spec: RunSpec, model: nn.Module, module: nn.Module, tokenizer, dist: Dist) -> Path | None:
    """`final/`: an HF directory (pretrain: the VoRA model with LoRA + teacher + heads, what merge reads;
    finetune: the full merged-architecture model), written atomically by rank 0."""
    from vora_core.model.image_processing import save_image_processor
    from vora_core.model.modeling import save_vora

    state_dict: dict[str, Any] | None = None
    if spec.settings.strategy == "fsdp2" and dist.world > 1:
        state_dict = checkpoint.get_model_state_dict(model, options=checkpoint.FULL)
        # The gathered copies of tied weights (lm_head = embed_tokens) no longer share storage, so
        # save_pretrained would write both; keep the first name only, as it does for the unsharded model.
        unique = {n for n, _ in module.named_parameters()}
        tied = {n for n, _ in module.named_parameters(remove_duplicate=False)} - unique
        state_dict = {k: v for k, v in state_dict.items() if k not in tied}
    if not dist.main:
        return None
    with atomic_path(spec.final) as tmp:
        if state_dict is None:
            save_vora(module, tmp, tokenizer)
        else:
            module.save_pretrained(str(tmp), state_dict=state_dict)
            tokenizer.save_pretrained(str(tmp))
            save_image_processor(module.config, tmp)
    return spec.final
