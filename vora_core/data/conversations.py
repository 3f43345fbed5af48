"""Text-instruction and VQA sources → canonical conversations.

A canonical conversation (DESIGN, "Canonical records") is `sample_id` (`<source>/<id>`), `source`,
`idx` (0..n-1 in file order: the mix stage selects rows through a permutation of it, no sort),
`image` (an `images`-view sample_id or null) and `messages`: `[{role, content}]` with roles
system | user | assistant and the image as a literal `<image>` in a user turn.

Every input row is either written or rejected with one reason (`REASONS`); the counts add up.
"""

from __future__ import annotations

import codecs
import glob
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vora_core.catalog import TextSource
from vora_core.errors import DataError

IMAGE = "<image>"
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
REASONS = ("unknown_role", "empty_content", "non_text_content", "first_turn_not_user", "last_turn_not_assistant",
           "roles_not_alternating", "image_count_mismatch", "missing_image", "bad_image", "not_utf8", "malformed")

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
# `chars`: the length of every message's content, summed (the mixture's token estimate reads it, not
# the messages). TEXT_FORMAT is part of a text unit's fingerprint: a change re-ingests old runs.
TEXT_SCHEMA = pa.schema([("sample_id", pa.string()), ("source", pa.string()), ("idx", pa.int64()),
                         ("image", pa.string()), ("messages", pa.list_(MESSAGE)), ("chars", pa.int32())])
TEXT_FORMAT = 3  # 3: llava rows are their row number; llava images decoded like downloads
REJECT_SCHEMA = pa.schema([("source", pa.string()), ("row", pa.int64()), ("id", pa.string()),
                           ("reason", pa.string()), ("detail", pa.string())])


class Reject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(reason)
        self.reason, self.detail = reason, detail


# ----------------------------------------------------------------------------------------- reading


def input_files(path: str) -> list[str]:
    """A file, a directory (its json/jsonl/parquet files) or a glob; fsspec URLs are listed as given."""
    if "://" in path and not path.startswith("file://"):
        import fsspec

        fs, _, paths = fsspec.get_fs_token_paths(path)
        return sorted(fs.unstrip_protocol(p) for p in paths)
    path = path.removeprefix("file://")
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.suffix in (".json", ".jsonl", ".parquet"))
    else:
        files = sorted(glob.glob(path))
    if not files:
        raise DataError(f"no input files at {path}; check the text source's `path`")
    return files


def _open(path: str, mode: str = "rb"):
    if "://" in path:
        import fsspec

        return fsspec.open(path, mode).open()
    return open(path, mode)


def _file_format(path: str, given: str | None) -> str:
    if given:
        return given
    for suffix, fmt in ((".jsonl", "jsonl"), (".json", "json"), (".parquet", "parquet")):
        if path.endswith(suffix):
            return fmt
    raise DataError(f"cannot tell the format of {path} from its suffix; set `file_format` (jsonl, json, parquet)")


def read_rows(src: TextSource) -> Iterator[dict | Reject]:
    """Every row of the source's files, in order; a row that cannot be read is a `Reject`."""
    n = 0
    for path in input_files(src.path or ""):
        fmt = _file_format(path, src.file_format)
        if fmt == "parquet":
            with _open(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=10_000):
                    for row in batch.to_pylist():
                        yield row
                        n += 1
                        if src.limit and n >= src.limit:
                            return
            continue
        with _open(path) as f:
            raw = f.read()
        if fmt == "json":
            try:
                rows = json.loads(raw.decode("utf-8-sig"))  # a BOM is accepted
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 ({e}); convert it first") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path} is not valid JSON ({e}); is it jsonl? set file_format: jsonl") from None
            if not isinstance(rows, list):
                raise DataError(f"{path}: a json source must hold an array of objects")
            lines: Iterable[Any] = rows
        else:
            lines = raw.removeprefix(codecs.BOM_UTF8).split(b"\n")  # a BOM is accepted
        for item in lines:
            if fmt == "jsonl":
                if not item.strip():
                    continue
                try:
                    item = json.loads(item.decode("utf-8"))
                except UnicodeDecodeError:
                    item = Reject("not_utf8", f"{path}: a line is not UTF-8")
                except json.JSONDecodeError as e:
                    item = Reject("malformed", f"{path}: {e}")
            if not isinstance(item, dict | Reject):
                item = Reject("malformed", f"{path}: a row is not an object")
            yield item
            n += 1
            if src.limit and n >= src.limit:
                return


# ------------------------------------------------------------------------------------- conversion


def _turns_sharegpt(row: dict, col: str) -> list[dict]:
    turns = row.get(col)
    if not isinstance(turns, list):
        raise Reject("malformed", f"no `{col}` list")
    out = []
    for t in turns:
        if not isinstance(t, dict) or "from" not in t:
            raise Reject("malformed", "a turn without `from`")
        role = ROLES.get(str(t["from"]).lower())
        if role is None:
            raise Reject("unknown_role", str(t["from"]))
        out.append({"role": role, "content": t.get("value")})
    return out


def _turns_messages(row: dict, col: str) -> list[dict]:
    turns = row.get(col)
    if not isinstance(turns, list):
        raise Reject("malformed", f"no `{col}` list")
    out = []
    for t in turns:
        if not isinstance(t, dict) or "role" not in t:
            raise Reject("malformed", "a message without `role`")
        role = ROLES.get(str(t["role"]).lower())
        if role is None:
            raise Reject("unknown_role", str(t["role"]))
        out.append({"role": role, "content": t.get("content")})
    return out


def _turns_prompt_response(row: dict, src: TextSource) -> list[dict]:
    for col in (src.prompt_col, src.response_col):
        if col not in row:
            raise Reject("malformed", f"no column `{col}`")
    prompt = row[src.prompt_col]
    if src.context_col and isinstance(row.get(src.context_col), str) and row[src.context_col].strip():
        prompt = f"{prompt}\n\n{row[src.context_col]}" if isinstance(prompt, str) else prompt
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row[src.response_col]}]
    system = row.get(src.system_col) if src.system_col else None
    if isinstance(system, str) and system.strip():
        turns.insert(0, {"role": "system", "content": system})
    return turns


def validate(turns: list[dict], images: int) -> list[dict]:
    """The checks every format shares; returns the turns with stripped contents."""
    for t in turns:
        content = t["content"]
        if isinstance(content, int | float) and not isinstance(content, bool):
            t["content"] = content = str(content)  # a number is an answer (`18`): kept as its text
        if content is not None and not isinstance(content, str):
            raise Reject("non_text_content", f"{t['role']}: {type(content).__name__}")
        if content is None or not content.strip():
            raise Reject("empty_content", t["role"])
    body = turns[1:] if turns and turns[0]["role"] == "system" else turns
    if not body or body[0]["role"] != "user":
        raise Reject("first_turn_not_user")
    if body[-1]["role"] != "assistant":
        raise Reject("last_turn_not_assistant")
    for i, t in enumerate(body):
        if t["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise Reject("roles_not_alternating", f"turn {i} is {t['role']}")
    found = sum(t["content"].count(IMAGE) for t in turns)
    if found != images:
        raise Reject("image_count_mismatch", f"{found} {IMAGE} markers for {images} images")
    if any(IMAGE in t["content"] for t in turns if t["role"] != "user"):
        raise Reject("image_count_mismatch", f"{IMAGE} outside a user turn")
    return [{"role": t["role"], "content": t["content"].strip()} for t in turns]


def convert(row: dict, src: TextSource) -> list[dict]:
    """One input row → validated canonical messages (text formats; llava images are checked by the caller)."""
    if src.format == "sharegpt" or src.format == "llava":
        turns = _turns_sharegpt(row, src.conversations_col)
    elif src.format == "messages":
        turns = _turns_messages(row, src.messages_col)
    elif src.format == "prompt_response":
        turns = _turns_prompt_response(row, src)
    else:
        raise ValueError(f"{src.format} is not a file format")
    images = 1 if src.format == "llava" and row.get("image") else 0  # LLaVA's text-only rows have none
    return validate(turns, images)


def row_id(row: dict, src: TextSource, n: int) -> str:
    """The row's id within its source: `id_col`, else `id` when present, else the row number. LLaVA's `id`
    names the image, which several rows share (one COCO image: a conversation, a detail and VQA rows),
    so a llava row is its row number unless `id_col` is set."""
    col = src.id_col or ("id" if "id" in row and src.format != "llava" else None)
    if col is None:
        return f"{n:09d}"
    value = row.get(col)
    if value is None or str(value) == "":
        raise Reject("malformed", f"no `{col}`")
    return str(value)


# ----------------------------------------------------------------------------------------- writing


@dataclass
class PartWriter:
    """Canonical conversations into `part-NNNNN.parquet` files of `rows_per_part` rows, plus rejects."""

    out_dir: Path
    source: str
    rows_per_part: int
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    parts: int = 0
    written: int = 0
    reasons: Counter = field(default_factory=Counter)
    seen: set = field(default_factory=set)

    def add(self, sid: str, messages: list[dict], image: str | None = None) -> None:
        sample_id = f"{self.source}/{sid}"
        if sample_id in self.seen:
            raise Reject("malformed", f"duplicate id {sid}")
        self.seen.add(sample_id)
        self.rows.append({"sample_id": sample_id, "source": self.source, "idx": self.written, "image": image,
                          "messages": messages, "chars": sum(len(m["content"]) for m in messages)})
        self.written += 1
        if len(self.rows) >= self.rows_per_part:
            self.flush()

    def reject(self, n: int, sid: str | None, e: Reject) -> None:
        self.reasons[e.reason] += 1
        self.rejects.append({"source": self.source, "row": n, "id": sid, "reason": e.reason, "detail": e.detail})

    def flush(self) -> None:
        if self.rows or self.parts == 0:
            pq.write_table(pa.Table.from_pylist(self.rows, schema=TEXT_SCHEMA),
                           self.out_dir / f"part-{self.parts:05d}.parquet")
            self.parts += 1
            self.rows = []

    def close(self) -> dict:
        self.flush()
        pq.write_table(pa.Table.from_pylist(self.rejects, schema=REJECT_SCHEMA), self.out_dir / "rejects.parquet")
        return {"rows": self.written + sum(self.reasons.values()), "written": self.written,
                "rejected": sum(self.reasons.values()), "rejected_by_reason": dict(sorted(self.reasons.items())),
                "parts": self.parts}
