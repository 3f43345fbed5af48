"""Held-out scores along a finetuning run: the learning curve of the demo's multiple choice, yes/no and
short answers, one point per finetune checkpoint (plus the merged model the run started from).

    python scripts/heldout_curve.py RUN_DIR [--finetune DIR] [--out FILE]

RUN_DIR is a run directory (`runs/demo`); `--finetune` the finetune stage directory when it is not
RUN_DIR/finetune (an ablation variant's, an experiment's). The checkpoints hold the trainable weights
only: each is laid over the merged model the finetuning started from. One JSON line per point, on
stdout and in `--out` (default: <finetune>/heldout_curve.jsonl). Keep the checkpoints with
`finetune.keep_last` >= steps / `finetune.checkpoint_every`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from vora_core.data.questions import KINDS
from vora_core.eval.heldout import build_heldout
from vora_core.eval.prompts import PromptEncoder
from vora_core.eval.runner import Loaded, evaluate_benchmark
from vora_core.model.modeling import load_vora
from vora_core.train.checkpoint import STEP_DIR, list_checkpoints


def scores_of(model, tokenizer, source_dir: Path, out: Path) -> dict[str, float]:
    loaded = Loaded(model.eval(), tokenizer, PromptEncoder(tokenizer, model.config))
    row: dict[str, float] = {}
    for kind in KINDS:
        bench = build_heldout(source_dir.name, source_dir, kind)
        s = evaluate_benchmark(loaded, bench, out / kind, batch_size=16, max_new_tokens=12)
        row[kind] = round(s["accuracy"], 4)  # yes/no: accuracy, not POPE's F1 headline
        if kind == "yesno":
            row["yes_ratio"] = round(s["yes_ratio"], 4)
        if kind == "mc":
            row["unparsed"] = s["unparsed"]
        for key, value in s["by_category"].items():
            row[f"{kind}/{key}"] = round(value["accuracy"] if isinstance(value, dict) else value, 4)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--finetune", type=Path, default=None)
    p.add_argument("--merged", type=Path, default=None)
    p.add_argument("--source", default="shapes")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--every", type=int, default=1, help="every n-th checkpoint")
    a = p.parse_args()
    finetune = a.finetune or a.run_dir / "finetune"
    merged = a.merged or finetune.parent / "merged"
    source_dir = a.run_dir / "sources" / a.source
    out_file = a.out or finetune / "heldout_curve.jsonl"
    torch.set_num_threads(1)
    base = load_vora(merged, dtype=torch.float32)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    initial = {k: v.clone() for k, v in base.state_dict().items()}
    checkpoints = list_checkpoints(finetune / "checkpoints")
    points = [(0, None)] + [(int(STEP_DIR.match(c.name).group(1)), c) for c in checkpoints]
    points = points[:: a.every] if a.every > 1 else points
    with open(out_file, "a") as f, tempfile.TemporaryDirectory() as tmp:
        for step, ckpt in points:
            base.load_state_dict(initial)
            if ckpt is not None:
                trainable = load_file(str(ckpt / "trainable.safetensors"))
                missing = base.load_state_dict(trainable, strict=False).unexpected_keys
                if missing:
                    raise SystemExit(f"{ckpt}: weights the merged model does not have: {missing[:3]}")
            row = {"step": step, **scores_of(base, tokenizer, source_dir, Path(tmp) / str(step))}
            line = json.dumps(row)
            print(line, flush=True)
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
