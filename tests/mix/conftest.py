"""Shared inputs of the mix tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml


def rejecting_text_catalog(tmp_path: Path, file: str = "rejects.yaml", **mix) -> Path:
    """Two text sources, 5 of their 8 rows rejected: `sg` (sharegpt: 2 written; unknown_role 1,
    malformed 2) and `smol` (messages: 1 written; unknown_role 1, malformed 1). Its pretrain mixture is
    `sg` once, no captions (the image source is never downloaded)."""
    good = {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    lines = [json.dumps(good), json.dumps({**good, "id": "b"}),
             json.dumps({"id": "c", "conversations": [{"from": "alien", "value": "x"}, {"from": "gpt", "value": "y"}]}),
             "{not json", json.dumps({"id": "e"})]
    (tmp_path / "sg.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.Table.from_pylist([
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]},
        {"messages": None},
    ]), tmp_path / "smol.parquet")
    path = tmp_path / file
    path.write_text(yaml.safe_dump({
        "name": "rejects", "workdir": str(tmp_path / "run"),
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": 4, "heldout": 0}},
        "text_sources": {"sg": {"format": "sharegpt", "path": str(tmp_path / "sg.jsonl")},
                         "smol": {"format": "messages", "path": str(tmp_path / "smol.parquet")}},
        "mix": {"pretrain": {"captions": None, "text": {"sg": {"repeat": 1}}}, **mix},
    }))
    return path
