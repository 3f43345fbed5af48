"""Merge a pretrained VoRA (LoRA) directory into a plain LLM + vision embedding, streamed.

W ← W + (B·A)·scale, computed in fp32 and cast once to the output dtype. Tensors are read one at a
time with plain file reads (no mmap) and written one at a time into output shards whose headers
are computed up front, so peak memory is about one tensor in fp32, far below one shard. Teacher,
distillation heads and LoRA factors are dropped; `base_layer` names become the plain names, so the
result loads with `VoRAForCausalLM.from_pretrained` / `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from vora_core.errors import ModelError

log = logging.getLogger(__name__)

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_CODES = {v: k for k, v in _DTYPES.items()}
_COPY_CHUNK = 64 << 20
_DROP_PREFIXES = ("teacher.", "aux_heads.")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class TensorRef:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> dict[str, TensorRef]:
    """Tensor name → location, from a safetensors file's JSON header."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    base = 8 + size
    return {
        name: TensorRef(path, meta["dtype"], tuple(meta["shape"]), base + meta["data_offsets"][0],
                        base + meta["data_offsets"][1])
        for name, meta in header.items()
    }


def read_tensor(ref: TensorRef) -> torch.Tensor:
    buf = bytearray(ref.nbytes)
    with open(ref.path, "rb") as f:
        f.seek(ref.start)
        f.readinto(buf)
    if not buf:
        return torch.empty(ref.shape, dtype=_DTYPES[ref.dtype])
    return torch.frombuffer(buf, dtype=_DTYPES[ref.dtype]).reshape(ref.shape)


class ShardWriter:
    """Writes one safetensors file tensor by tensor: the header is fixed first from names/shapes/dtypes."""

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]]) -> None:
        self.path = path
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        self.expected: list[tuple[str, int]] = []
        for name, dtype, shape in entries:
            nbytes = _numel(shape) * torch.empty((), dtype=_DTYPES[dtype]).element_size()
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.expected.append((name, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(raw)) + raw)
        self.index = 0
        self.total = offset

    def write_tensor(self, name: str, tensor: torch.Tensor) -> None:
        expected_name, nbytes = self.expected[self.index]
        if name != expected_name:
            raise RuntimeError(f"shard writer expected {expected_name}, got {name}")
        data = (tensor.contiguous().view(torch.uint8).reshape(-1) if tensor.numel()
                else torch.empty(0, dtype=torch.uint8))
        if data.numel() != nbytes:
            raise RuntimeError(f"{name}: {data.numel()} bytes written, {nbytes} declared")
        self.file.write(memoryview(data.numpy()))
        self.index += 1

    def copy_bytes(self, name: str, ref: TensorRef) -> None:
        """Copy a tensor verbatim in bounded chunks (never the whole tensor in memory)."""
        expected_name, nbytes = self.expected[self.index]
        if name != expected_name or nbytes != ref.nbytes:
            raise RuntimeError(f"shard writer expected {expected_name} ({nbytes} bytes), got {name}")
        with open(ref.path, "rb") as f:
            f.seek(ref.start)
            left = ref.nbytes
            while left:
                chunk = f.read(min(left, _COPY_CHUNK))
                self.file.write(chunk)
                left -= len(chunk)
        self.index += 1

    def close(self) -> None:
        self.file.close()
        if self.index != len(self.expected):
            raise RuntimeError(f"{self.path}: {self.index} of {len(self.expected)} tensors written")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _shards(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in dict.fromkeys(weight_map.values())]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise ModelError(f"{model_dir} has no model.safetensors(.index.json); is it a saved VoRA model directory?")


def _output_name(name: str) -> str | None:
    """Merged name of a pretrain tensor, or None when the tensor is dropped."""
    if name.startswith(_DROP_PREFIXES) or ".lora_" in name:
        return None
    return name.replace(".base_layer.", ".")


def _dtype_code(dtype: torch.dtype | str | None) -> str | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    return _CODES[dtype]


def merge_lora(pretrain_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | str | None = None,
               overwrite: bool = False) -> Path:
    """Merge `pretrain_dir` (a VoRA directory with LoRA) into `out_dir`; returns `out_dir`.

    `dtype`: storage dtype of floating-point tensors in the output (default: as stored). The
    directory is written under a temporary name and renamed into place (atomic for readers).
    """
    src, out = Path(pretrain_dir), Path(out_dir)
    config_path = src / "config.json"
    if not config_path.exists():
        raise ModelError(f"{src} is not a model directory (no config.json); run the pretrain stage first")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"{out} already exists and is not empty; remove it or pass overwrite=True")
    config = json.loads(config_path.read_text())
    rank, alpha = int(config.get("lora_rank", 0)), config.get("lora_alpha")
    scale = (alpha if alpha is not None else rank) / rank if rank > 0 else 0.0
    out_code = _dtype_code(dtype)

    refs: dict[str, TensorRef] = {}
    shard_keys: list[list[str]] = []
    for shard in _shards(src):
        header = read_header(shard)
        refs.update(header)
        shard_keys.append(sorted(header, key=lambda k: header[k].start))

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    merged_count = 0
    weight_map: dict[str, str] = {}
    total_size = 0
    plans = [[(k, _output_name(k)) for k in keys] for keys in shard_keys]
    plans = [[(k, o) for k, o in plan if o is not None] for plan in plans]
    plans = [plan for plan in plans if plan]
    for n, plan in enumerate(plans):
        file_name = "model.safetensors" if len(plans) == 1 else f"model-{n + 1:05d}-of-{len(plans):05d}.safetensors"
        entries = []
        for key, new in plan:
            ref = refs[key]
            code = out_code if out_code and _DTYPES[ref.dtype].is_floating_point else ref.dtype
            entries.append((new, code, ref.shape))
        writer = ShardWriter(tmp / file_name, entries)
        for (key, new), (_, code, _) in zip(plan, entries, strict=True):
            ref = refs[key]
            lora_a = key.replace(".base_layer.weight", ".lora_A.default.weight")
            lora_b = key.replace(".base_layer.weight", ".lora_B.default.weight")
            if key.endswith(".base_layer.weight") and lora_a in refs and lora_b in refs:
                weight = read_tensor(ref).float()
                a, b = read_tensor(refs[lora_a]).float(), read_tensor(refs[lora_b]).float()
                weight.addmm_(b, a, alpha=scale)  # W + (B·A)·scale, all fp32
                writer.write_tensor(new, weight.to(_DTYPES[code]))
                merged_count += 1
            elif code == ref.dtype:
                writer.copy_bytes(new, ref)
            else:
                writer.write_tensor(new, read_tensor(ref).to(_DTYPES[code]))
            weight_map[new] = file_name
        writer.close()
        total_size += writer.total

    if len(plans) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    merged_config = dict(config)
    merged_config.update(lora_rank=0, lora_alpha=None, lora_layers=None, distill="none", teacher_config=None)
    merged_config.pop("auto_map", None)
    if out_code is not None:
        merged_config["dtype"] = str(_DTYPES[out_code]).removeprefix("torch.")
    (tmp / "config.json").write_text(json.dumps(merged_config, indent=2, sort_keys=True))
    for item in src.iterdir():  # tokenizer, image processor, generation config, chat template
        if item.is_file() and item.name not in _WEIGHT_FILES and item.suffix != ".safetensors" \
                and item.name != "config.json":
            shutil.copy2(item, tmp / item.name)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    log.info("merged %d LoRA weights from %s into %s", merged_count, src, out)
    return out
