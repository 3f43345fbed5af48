"""Awkward text-source files: a BOM, numbers as content, a configured column no row has."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from vora_core.catalog import parse_catalog
from vora_core.data.text import ingest
from vora_core.errors import DataError

BOM = b"\xef\xbb\xbf"
CHAT = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
        for i in range(3)]


def catalog(tmp_path, **text_sources):
    return parse_catalog({"name": "t", "workdir": str(tmp_path / "run"),
                          "sources": {"shapes": {"kind": "synthetic_shapes"}}, "text_sources": text_sources})


def read(out):
    rows = [r for p in sorted(out.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    return rows, pq.read_table(out / "rejects.parquet").to_pylist()


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_utf8_bom_is_accepted(tmp_path, fmt):
    body = "".join(json.dumps(r) + "\n" for r in CHAT) if fmt == "jsonl" else json.dumps(CHAT)
    (tmp_path / f"chat.{fmt}").write_bytes(BOM + body.encode())
    c = catalog(tmp_path, chat={"format": "sharegpt", "path": str(tmp_path / f"chat.{fmt}")})
    stats = ingest(c, "chat", tmp_path / "out")
    rows, _ = read(tmp_path / "out")
    assert (stats["written"], stats["rejected"]) == (3, 0)
    assert [r["sample_id"] for r in rows] == ["chat/r0", "chat/r1", "chat/r2"]


def test_numbers_are_kept_as_text_other_non_text_content_is_its_own_reason(tmp_path):
    rows = [{"id": "int", "question": "2+2?", "answer": 4},
            {"id": "float", "question": "1/4?", "answer": 0.25},
            {"id": "bool", "question": "True?", "answer": True},
            {"id": "list", "question": "Which?", "answer": ["a", "b"]},
            {"id": "null", "question": "Nothing?", "answer": None}]
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = catalog(tmp_path, math={"format": "prompt_response", "path": str(tmp_path / "math.jsonl"),
                                "response_col": "answer"})
    stats = ingest(c, "math", tmp_path / "out")
    out, rejects = read(tmp_path / "out")
    assert [(r["sample_id"], r["messages"][1]["content"]) for r in out] == [("math/int", "4"), ("math/float", "0.25")]
    assert [(r["id"], r["reason"], r["detail"]) for r in rejects] == [
        ("bool", "non_text_content", "assistant: bool"), ("list", "non_text_content", "assistant: list"),
        ("null", "empty_content", "assistant")]
    assert stats["rejected_by_reason"] == {"empty_content": 1, "non_text_content": 2}


def test_numeric_message_content_becomes_text(tmp_path):
    row = {"messages": [{"role": "user", "content": "How many legs has a spider?"},
                        {"role": "assistant", "content": 8}]}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    c = catalog(tmp_path, m={"format": "messages", "path": str(tmp_path / "m.jsonl")})
    stats = ingest(c, "m", tmp_path / "out")
    out, _ = read(tmp_path / "out")
    assert stats["written"] == 1 and out[0]["messages"][1] == {"role": "assistant", "content": "8"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_response_column_missing_from_the_whole_file_is_a_configuration_error(tmp_path, fmt):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]
    path = tmp_path / f"qa.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    c = catalog(tmp_path, qa={"format": "prompt_response", "path": str(path)})
    with pytest.raises(DataError) as e:
        ingest(c, "qa", tmp_path / "out")
    assert str(e.value) == (f"{path}: no response column 'response' in any row; columns found: question, answer "
                            "(set `response_col` in text_sources.qa)")


def test_response_column_missing_in_some_rows_only_rejects_those(tmp_path):
    rows = [{"question": "q0", "response": "a0"}, {"question": "q1"}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = catalog(tmp_path, qa={"format": "prompt_response", "path": str(tmp_path / "qa.jsonl")})
    stats = ingest(c, "qa", tmp_path / "out")
    assert (stats["written"], stats["rejected_by_reason"]) == (1, {"malformed": 1})


@pytest.mark.slow
def test_cli_mix_with_a_missing_response_column_exits_2_naming_file_and_columns(tmp_path):
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"question": f"q{i}", "output": f"a{i}"}) + "\n"
                                               for i in range(3)))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "name": "c", "workdir": "r", "sources": {"s": {"kind": "synthetic_shapes", "n": 4, "heldout": 0}},
        "text_sources": {"qa": {"format": "prompt_response", "path": "qa.jsonl"}},
        "mix": {"pretrain": {"captions": None, "text": {"qa": {"repeat": 1}}}, "finetune": {"captions": None}}}))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # a loaded machine starts it slowly
    out = subprocess.run([str(Path(sys.executable).with_name("vora")), "stage", "mix", "c.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: mix-text: 1 of 1 units failed — text:qa: DataError: qa.jsonl: no response column "
                      "'response' in any row; columns found: question, output (set `response_col` in "
                      f"text_sources.qa) (full log: {(tmp_path / 'r' / 'logs' / 'vora.log').resolve()})"]
