"""`RunSpec`: everything one training run needs, as JSON (the launcher writes it, every rank reads it).

`model` says how the model is made:
  {"init": "parts", "llm": DIR, "teacher": DIR | None, "fields": {VoRAConfig fields}}   (pretrain)
  {"init": "dir", "path": DIR}                                                           (finetune)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vora_core.errors import StageError
from vora_core.workdir import atomic_write_json

STAGES = ("pretrain", "finetune")


@dataclass
class RunSpec:
    stage: str
    out_dir: str
    index: str  # samples.arrow
    tokenizer: str  # tokenizer directory
    model: dict[str, Any]
    settings: dict[str, Any]  # TrainSettings (model_dump)
    transform: str = "square"
    attn_implementation: str = "sdpa"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise StageError(f"training stage {self.stage!r} is not one of {STAGES}")
        if self.model.get("init") not in ("parts", "dir"):
            raise StageError(f"model init {self.model.get('init')!r} is not 'parts' or 'dir'")

    @property
    def checkpoints(self) -> Path:
        return Path(self.out_dir) / "checkpoints"

    @property
    def metrics(self) -> Path:
        return Path(self.out_dir) / "metrics.jsonl"

    @property
    def loss_png(self) -> Path:
        return Path(self.out_dir) / "loss.png"

    @property
    def final(self) -> Path:
        return Path(self.out_dir) / "final"

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        return cls(**json.loads(Path(path).read_text()))
