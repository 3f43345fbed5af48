"""Text formats → canonical conversations: every format, malformed rows of each, counted reasons."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vora_core.catalog import parse_catalog
from vora_core.data.text import ingest
from vora_core.errors import DataError


def catalog(tmp_path, **text_sources):
    return parse_catalog({"name": "t", "workdir": str(tmp_path / "run"),
                          "sources": {"shapes": {"kind": "synthetic_shapes"}}, "text_sources": text_sources})


def read(out):
    parts = sorted(out.glob("part-*.parquet"))
    rows = [r for p in parts for r in pq.read_table(p).to_pylist()]
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    return rows, rejects


def write_jsonl(path, rows):
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return str(path)


def test_sharegpt_with_malformed_rows(tmp_path):
    good = {"id": "a", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                         {"from": "gpt", "value": " Hello. "}]}
    rows = [
        good,
        {"id": "b", "conversations": [{"from": "alien", "value": "x"}, {"from": "gpt", "value": "y"}]},
        {"id": "c", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "x"}]},
        {"id": "e", "conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"},
                                      {"from": "gpt", "value": "z"}]},
        {"id": "f", "conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "z"}]},
        {"id": "g", "conversations": [{"from": "human", "value": "<image>\nx"}, {"from": "gpt", "value": "z"}]},
        b'{"id": "h", "conversations": [{"from": "human", "value": "\xff"}]}',
        b"{not json",
        {"id": "j"},
    ]
    c = catalog(tmp_path, sg={"format": "sharegpt", "path": write_jsonl(tmp_path / "sg.jsonl", rows)})
    stats = ingest(c, "sg", tmp_path / "out")
    out, rejects = read(tmp_path / "out")
    assert out == [{"sample_id": "sg/a", "source": "sg", "idx": 0, "image": None, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}], "chars": len("Be brief.") + len("Hi") + len("Hello.")}]
    assert [(r["row"], r["reason"]) for r in rejects] == [
        (1, "unknown_role"), (2, "first_turn_not_user"), (3, "last_turn_not_assistant"), (4, "roles_not_alternating"),
        (5, "empty_content"), (6, "image_count_mismatch"), (7, "not_utf8"), (8, "malformed"), (9, "malformed")]
    assert stats == {"rows": 10, "written": 1, "rejected": 9, "parts": 1, "rejected_by_reason": {
        "empty_content": 1, "first_turn_not_user": 1, "image_count_mismatch": 1, "last_turn_not_assistant": 1,
        "malformed": 2, "not_utf8": 1, "roles_not_alternating": 1, "unknown_role": 1}}


def test_messages_from_parquet(tmp_path):
    table = pa.Table.from_pylist([
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]},
        {"messages": None},
    ])
    pq.write_table(table, tmp_path / "m.parquet")
    c = catalog(tmp_path, smol={"format": "messages", "path": str(tmp_path / "m.parquet")})
    stats = ingest(c, "smol", tmp_path / "out")
    out, rejects = read(tmp_path / "out")
    assert [r["sample_id"] for r in out] == ["smol/000000000"]
    assert [r["reason"] for r in rejects] == ["unknown_role", "malformed"]
    assert (stats["rows"], stats["written"], stats["rejected"]) == (3, 1, 2)


def test_prompt_response_orca_and_dolly_columns(tmp_path):
    orca = write_jsonl(tmp_path / "orca.jsonl", [
        {"id": "o1", "system_prompt": "Be exact.", "question": "Capital of France?", "response": "Paris."},
        {"id": "o2", "system_prompt": "", "question": "Why?", "response": ""},
        {"id": "o3", "question": "No response column"},
    ])
    (tmp_path / "dolly.json").write_text(json.dumps([
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short."},
        {"instruction": "Say hi.", "context": "", "response": "Hi."},
    ]))
    c = catalog(tmp_path,
                orca={"format": "prompt_response", "path": orca, "system_col": "system_prompt"},
                dolly={"format": "prompt_response", "path": str(tmp_path / "dolly.json"), "prompt_col": "instruction",
                       "context_col": "context"})
    ingest(c, "orca", tmp_path / "o")
    ingest(c, "dolly", tmp_path / "d")
    (o, o_rej), (d, d_rej) = read(tmp_path / "o"), read(tmp_path / "d")
    assert o[0]["messages"] == [{"role": "system", "content": "Be exact."},
                                {"role": "user", "content": "Capital of France?"},
                                {"role": "assistant", "content": "Paris."}]
    assert [r["reason"] for r in o_rej] == ["empty_content", "malformed"]
    assert [m["messages"][0]["content"] for m in d] == ["Summarise.\n\nA long text.", "Say hi."]
    assert d_rej == []


def test_llava_images_go_into_shards(tmp_path):
    images = tmp_path / "coco"
    images.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(images / "a.jpg")
    (tmp_path / "llava.json").write_text(json.dumps([
        {"id": "1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                                         {"from": "gpt", "value": "Red."}]},
        {"id": "2", "conversations": [{"from": "human", "value": "Text only"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "3", "image": "missing.jpg", "conversations": [{"from": "human", "value": "<image>\nx"},
                                                               {"from": "gpt", "value": "y"}]},
        {"id": "4", "image": "a.jpg", "conversations": [{"from": "human", "value": "no marker"},
                                                         {"from": "gpt", "value": "y"}]},
    ]))
    c = catalog(tmp_path, llava={"format": "llava", "path": str(tmp_path / "llava.json"), "image_dir": str(images)})
    ingest(c, "llava", tmp_path / "out")
    out, rejects = read(tmp_path / "out")
    # A llava sample is its row number (LLaVA's `id` names the image and repeats).
    assert [(r["sample_id"], r["image"]) for r in out] == [("llava/000000000", "llava/0000000000"),
                                                           ("llava/000000001", None)]
    assert [(r["id"], r["reason"]) for r in rejects] == [("000000002", "missing_image"),
                                                         ("000000003", "image_count_mismatch")]
    from vora_core.manifest import open_manifest

    con = open_manifest(c.run)
    assert con.sql("SELECT sample_id, width, height FROM images").fetchall() == [("llava/0000000000", 40, 30)]
    con.close()


def test_missing_file_and_bad_json_are_clear_errors(tmp_path):
    c = catalog(tmp_path, x={"format": "sharegpt", "path": str(tmp_path / "nope.jsonl")})
    with pytest.raises(DataError, match=r"no input files at .*nope.jsonl; check the text source's `path`"):
        ingest(c, "x", tmp_path / "out")
    (tmp_path / "bad.json").write_text("{")
    c = catalog(tmp_path, x={"format": "sharegpt", "path": str(tmp_path / "bad.json")})
    with pytest.raises(DataError, match="is not valid JSON"):
        ingest(c, "x", tmp_path / "out2")


def test_catalog_checks_text_sources():
    from vora_core.errors import CatalogError

    base = {"name": "t", "workdir": "/tmp/x", "sources": {"shapes": {"kind": "synthetic_shapes"}}}
    with pytest.raises(CatalogError, match="format llava needs `image_dir`"):
        parse_catalog({**base, "text_sources": {"l": {"format": "llava", "path": "x.json"}}})
    with pytest.raises(CatalogError, match=r"mix.finetune.text: 'nope' is not in text_sources"):
        parse_catalog({**base, "mix": {"finetune": {"text": {"nope": {"repeat": 1}}}}})
    with pytest.raises(CatalogError, match="give exactly one of weight and repeat"):
        parse_catalog({**base, "text_sources": {"a": {"format": "sharegpt", "path": "a"}},
                       "mix": {"pretrain": {"text": {"a": {"weight": 0.1, "repeat": 1}}}}})


def test_fsspec_url_and_the_rejects_view(tmp_path):
    import fsspec

    from vora_core.manifest import open_manifest
    from vora_core.stages.mix import plan, run_unit
    from vora_core.workdir import run_unit_with_marker

    with fsspec.open("memory://texts/orca.jsonl", "wb") as f:
        f.write(b"".join(json.dumps(r).encode() + b"\n" for r in [
            {"question": "1+1?", "response": "2"}, {"question": "", "response": "x"},
            {"question": "q", "response": "r", "extra": 1}]))
    c = catalog(tmp_path, remote={"format": "prompt_response", "path": "memory://texts/orca.jsonl"})
    (unit,) = [u for u in plan(c) if u.params["kind"] == "text"]
    stats = run_unit_with_marker(unit, lambda u: run_unit(c, u))
    assert (stats["rows"], stats["written"], stats["rejected"]) == (3, 2, 1)
    con = open_manifest(c.run)
    assert con.sql("SELECT source, row, reason FROM text_rejects").fetchall() == [("remote", 1, "empty_content")]
    assert con.sql("SELECT sample_id, idx FROM text ORDER BY idx").fetchall() == [
        ("remote/000000000", 0), ("remote/000000002", 1)]
    con.close()


def test_llava_malformed_rows_and_shared_images(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    (images / "broken.png").write_bytes(b"not an image")
    conv = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Black."}]
    (tmp_path / "l.json").write_text(json.dumps([
        {"id": "1", "image": "a.png", "conversations": conv},
        {"id": "2", "image": "a.png", "conversations": conv},  # the same file: stored once
        {"id": "3", "image": "broken.png", "conversations": conv},
        {"id": "4", "image": "a.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                                         {"from": "gpt", "value": "x"}]},
        {"id": "5", "image": "a.png", "conversations": [{"from": "gpt", "value": "<image>"}]},
        {"id": "1", "image": "a.png", "conversations": conv},  # a repeated id is another row: kept
        {"image": "a.png", "conversations": "nope"},
    ]))
    c = catalog(tmp_path, l={"format": "llava", "path": str(tmp_path / "l.json"), "image_dir": str(images)})
    stats = ingest(c, "l", tmp_path / "out")
    out, rejects = read(tmp_path / "out")
    assert [(r["sample_id"], r["image"]) for r in out] == [
        ("l/000000000", "l/0000000000"), ("l/000000001", "l/0000000000"), ("l/000000005", "l/0000000000")]
    assert [(r["row"], r["reason"]) for r in rejects] == [
        (2, "bad_image"), (3, "image_count_mismatch"), (4, "first_turn_not_user"), (6, "malformed")]
    assert stats["rows"] == stats["written"] + stats["rejected"] == 7
    shard_rows = pq.read_table(c.run.shards("l") / "00000.parquet").to_pylist()
    assert [(r["row_id"], r["status"]) for r in shard_rows] == [("a.png", "success"),
                                                               ("broken.png", "failed_to_decode")]


def test_non_utf8_json_array_is_a_clear_error(tmp_path):
    (tmp_path / "bad.json").write_bytes(b'[{"id": "\xff"}]')
    c = catalog(tmp_path, x={"format": "sharegpt", "path": str(tmp_path / "bad.json")})
    with pytest.raises(DataError, match=r"bad.json is not UTF-8 .*; convert it first"):
        ingest(c, "x", tmp_path / "out")


def test_shapes_vqa_layouts():
    from vora_core.data.questions import KINDS, question_samples
    from vora_core.data.text import conversation_order

    label = {"row_id": "r0", "file": "0.png", "shape": "circle", "colour": "red", "background": "white",
             "position": "top left"}
    asked = [(s.question, str(s.answer), kind) for kind in KINDS
             for s in question_samples([label], lambda r: "x", kind)]
    assert [k for _, _, k in asked] == ["mc", "mc", "yesno", "yesno", "short", "short", "short", "short"]
    shuffled = conversation_order(asked, "shuffled", 0, "0/r0")
    assert sorted(shuffled) == sorted(asked) and shuffled == conversation_order(asked, "shuffled", 0, "0/r0")
    # opening: the draw-th question first (cycling), then the other short-answer questions only
    for draw in range(12):
        turns = conversation_order(asked, "opening", draw, f"{draw}/r0")
        assert turns[0] == asked[draw % 8]
        assert sorted(turns[1:]) == sorted(q for q in asked[4:] if q != turns[0])
    assert [len(conversation_order(asked, "opening", d, "s")) for d in range(8)] == [5, 5, 5, 5, 4, 4, 4, 4]
    # single: the draw-th question alone, as evaluation asks it
    assert [conversation_order(asked, "single", d, "s") for d in range(10)] == [[asked[d % 8]] for d in range(10)]
    from vora_core.errors import CatalogError

    with pytest.raises(CatalogError, match=r"text_sources\.shapes_vqa\.layout"):
        catalog(Path("w"), shapes_vqa={"format": "shapes_vqa", "source": "shapes", "layout": "first"})
