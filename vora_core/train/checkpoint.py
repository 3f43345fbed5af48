"""Training checkpoints: `checkpoints/step-NNNNNNN/`, written atomically by rank 0.

A checkpoint holds the trainable weights (`trainable.safetensors`; the frozen base is rebuilt from
its source), the optimizer (`optimizer.pt`), and `state.pt`: scheduler, loop counters, the loader
position and every rank's RNG states. The directory is assembled under a temporary name and renamed
into place (`workdir.atomic_path`), so a directory named `step-*` is always complete; `latest`
picks the highest one. Full (unsharded) state dicts come from `torch.distributed.checkpoint`'s
state-dict helpers, which serve DDP and FSDP2 alike.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from vora_core.errors import StageError
from vora_core.workdir import atomic_path

STEP_DIR = re.compile(r"^step-(\d{7,})$")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint (temporary directories never match `step-*`)."""
    done = [p for p in list_checkpoints(root) if (p / "state.pt").exists()]
    return done[-1] if done else None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def trainable_names(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def save(root: str | Path, step: int, model: torch.nn.Module, module: torch.nn.Module, optimizer, scheduler,
         loop_state: dict, rank: int, world: int) -> Path | None:
    """Collective: every rank calls it (gathers RNG states and full state dicts); rank 0 writes."""
    rngs = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    weights = get_model_state_dict(model, options=FULL)
    optim = get_optimizer_state_dict(model, optimizer, options=FULL)
    if rank != 0:
        return None
    names = trainable_names(module)
    tensors = {n: weights[n].detach().contiguous() for n in names}
    target = step_dir(Path(root), step)
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "trainable.safetensors"))
        torch.save(optim, tmp / "optimizer.pt")
        torch.save({"step": step, "scheduler": scheduler.state_dict(), "loop": loop_state, "rng": rngs,
                    "world": world}, tmp / "state.pt")
    return target


def load(path: str | Path, model: torch.nn.Module, module: torch.nn.Module, optimizer, scheduler,
         rank: int, world: int) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG; returns the loop state."""
    path = Path(path)
    state = torch.load(path / "state.pt", weights_only=False)
    if state["world"] != world:
        raise StageError(
            f"checkpoint {path} was written by {state['world']} ranks but this run has {world}; the data "
            "order and RNG streams are per rank, so resume with the same world size (or delete the checkpoints)"
        )
    tensors = load_file(str(path / "trainable.safetensors"))
    names = set(trainable_names(module))
    if set(tensors) != names:
        missing, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
        raise StageError(f"checkpoint {path} does not match the model's trainable parameters "
                         f"(missing {missing[:3]}, unexpected {extra[:3]}); delete it or fix the settings")
    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))
    optim = torch.load(path / "optimizer.pt", weights_only=False)
    set_optimizer_state_dict(model, optimizer, optim, options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"][rank])
    return state["loop"]


def rotate(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; returns the deleted ones."""
    done = list_checkpoints(root)
    old = done[:-keep_last] if keep_last > 0 else done
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old
