"""`RunSpec`: everything one training run needs (the launcher writes it as JSON, every rank reads it).

Typed end to end: `settings` is the stage's pydantic settings (`PretrainSettings` / `FinetuneSettings`)
and `model` says how the model is made — `PartsInit` (pretrain: an LLM + a teacher + VoRAConfig
fields) or `DirInit` (finetune: a model directory). Plain dicts (the JSON file) are validated into them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from vora_core.catalog import FinetuneSettings, PretrainSettings, TrainSettings
from vora_core.errors import StageError
from vora_core.workdir import atomic_write_json

STAGES = ("pretrain", "finetune")
SETTINGS: dict[str, type[TrainSettings]] = {"pretrain": PretrainSettings, "finetune": FinetuneSettings}


@dataclass
class PartsInit:
    """Pretrain: VoRA built from an LLM and a vision teacher (None: no distillation)."""

    llm: str
    teacher: str | None
    fields: dict[str, Any]  # VoRAConfig fields
    init: Literal["parts"] = "parts"


@dataclass
class DirInit:
    """Finetune: a VoRA model directory (the merged model)."""

    path: str
    init: Literal["dir"] = "dir"


ModelInit = PartsInit | DirInit


def model_init(model: ModelInit | dict[str, Any]) -> ModelInit:
    """A `ModelInit` from itself or from its JSON form (`{"init": "parts" | "dir", ...}`)."""
    if isinstance(model, PartsInit | DirInit):
        return model
    kinds: dict[str, type[PartsInit] | type[DirInit]] = {"parts": PartsInit, "dir": DirInit}
    kind = kinds.get(model.get("init"))  # type: ignore[arg-type]
    if kind is None:
        raise StageError(f"model init {model.get('init')!r} is not 'parts' or 'dir'")
    return kind(**model)


@dataclass
class RunSpec:
    stage: str
    out_dir: str
    index: str  # samples.arrow
    tokenizer: str  # tokenizer directory
    model: ModelInit
    settings: TrainSettings
    transform: str = "square"
    attn_implementation: str = "sdpa"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise StageError(f"training stage {self.stage!r} is not one of {STAGES}")
        self.model = model_init(self.model)
        if isinstance(self.settings, dict):
            self.settings = SETTINGS[self.stage].model_validate(self.settings)

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

    def to_json(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        return doc | {"model": asdict(self.model), "settings": self.settings.model_dump(mode="json")}

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        return cls(**json.loads(Path(path).read_text()))
