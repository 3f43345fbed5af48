"""The mixture SQL: caption policies, dedup across sources, exact proportions, determinism, and the
training loader reading what it writes."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vora_core.caption.recaption import SCHEMA as CAPTION_SCHEMA
from vora_core.catalog import parse_catalog
from vora_core.data.mixture import build_mixture, largest_remainder, mixture_table, permutation
from vora_core.data.shards import ShardWriter
from vora_core.errors import DataError
from vora_core.stages.mix import plan, run_unit
from vora_core.workdir import RunDir

# (source, key, sha, alt text, recaption, flags, side)
IMAGES = [
    ("a", "000000000", "s1", "alt a0", "recap a0", [], 64),
    ("a", "000000001", "s2", "alt a1", "recap a1", ["truncated"], 64),
    ("a", "000000002", "s3", None, None, None, 64),
    ("a", "000000003", "s4", "alt a3", "recap a3", [], 16),
    ("b", "000000000", "s1", "alt b0", "recap b0", [], 64),  # the same image as a/000000000
    ("b", "000000001", "s5", "", "recap b1", ["repetitive"], 64),
]


def write_world(root, text_rows: int = 10):
    run = RunDir(root / "run").ensure()
    for source in ("a", "b"):
        rows, captions = [], []
        with ShardWriter(run.shards(source) / "00000.tar") as w:
            for src, key, sha, alt, recap, flags, side in IMAGES:
                if src != source:
                    continue
                buf = io.BytesIO()
                Image.new("RGB", (side, side)).save(buf, "PNG")
                w.write(key, {"png": buf.getvalue()})
                rows.append({"key": key, "row_id": key, "url": f"file:///{key}", "caption": alt, "status": "success",
                             "error_message": None, "width": side, "height": side, "original_width": side,
                             "original_height": side, "sha256": sha})
                if flags is not None:
                    captions.append({"sample_id": f"{source}/{key}", "key": key, "caption": recap, "flags": flags})
            w.commit(pa.Table.from_pylist(rows))
        table = pa.Table.from_pylist([{**{f.name: None for f in CAPTION_SCHEMA}, **c} for c in captions],
                                     schema=CAPTION_SCHEMA)
        (run.root / "captions" / source).mkdir(parents=True)
        pq.write_table(table, run.root / "captions" / source / "00000.parquet")
    for name, n in (("t1", text_rows), ("t2", 7)):
        lines = [json.dumps({"id": f"{name}-{i}", "conversations": [{"from": "human", "value": f"q{i}"},
                                                                     {"from": "gpt", "value": f"a{i}"}]})
                 for i in range(n)]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return run


def catalog(root, pretrain=None, finetune=None, **extra):
    return parse_catalog({
        "name": "m", "workdir": str(root / "run"),
        "sources": {"a": {"kind": "url_list", "path": "x.parquet"}, "b": {"kind": "url_list", "path": "y.parquet"}},
        "text_sources": {"t1": {"format": "sharegpt", "path": str(root / "t1.jsonl")},
                         "t2": {"format": "sharegpt", "path": str(root / "t2.jsonl")}},
        "mix": {"pretrain": pretrain or {}, "finetune": finetune or {"captions": None}, **extra},
    })


def run_all(c):
    results = {}
    for unit in plan(c):
        if unit.params["kind"] == "text":
            from vora_core.workdir import run_unit_with_marker

            run_unit_with_marker(unit, lambda u: run_unit(c, u))
    for unit in plan(c):
        if unit.params["kind"] == "mixture":
            results[unit.params["name"]] = build_mixture(c, unit.params["name"], c.run.mixture(unit.params["name"]))
    return results


def rows(c, stage):
    """The mixture as users see it: the manifest's `mixture` view (caption rows' messages resolved)."""
    from vora_core.manifest import open_manifest

    con = open_manifest(c.run)
    try:
        table = con.sql(f"SELECT * FROM mixture WHERE stage = '{stage}'").to_arrow_table()
    finally:
        con.close()
    return table.to_pylist()


@pytest.mark.parametrize("policy, expected", [
    ("recap", {"a/000000000": "recap a0"}),
    ("alt", {"a/000000000": "alt a0", "a/000000001": "alt a1"}),
    ("recap_or_alt", {"a/000000000": "recap a0", "a/000000001": "alt a1"}),
])
def test_caption_policies_filters_and_dedup(tmp_path, policy, expected):
    write_world(tmp_path)
    c = catalog(tmp_path, pretrain={"captions": {"policy": policy, "min_side": 32, "prompts": ["P1", "P2"]}})
    run_all(c)
    got = {r["image"]: r["messages"][1]["content"] for r in rows(c, "pretrain")}
    # b/000000000 is a/000000000's duplicate: the copy with the smaller hash(sample_id), a/000000000, stays
    assert got == expected  # a/000000003 is too small
    stats = json.loads((c.run.mixture("pretrain") / "stats.json").read_text())
    assert stats["captions"]["images"] == 6 and stats["captions"]["too_small"] == 1
    funnel = stats["captions"]
    assert funnel["too_small"] + funnel["no_caption"] + funnel["duplicates"] + funnel["used"] == funnel["images"]
    if policy == "recap_or_alt":  # a/2 and b/1 have nothing usable; b/0 repeats a/0's sha256
        assert funnel == {"images": 6, "too_small": 1, "no_caption": 2, "duplicates": 1, "used": 2}
    for r in rows(c, "pretrain"):
        assert r["kind"] == "caption" and r["messages"][0]["content"] in ("<image>\nP1", "<image>\nP2")


def test_exact_weights_and_repeats(tmp_path):
    write_world(tmp_path)
    c = catalog(tmp_path, pretrain={"captions": {"policy": "alt", "repeat": 3},
                                    "text": {"t1": {"weight": 0.5}, "t2": {"weight": 0.25}}},
                finetune={"captions": None, "text": {"t1": {"repeat": 2.5}, "t2": {"repeat": 0.5}}})
    run_all(c)
    pre = rows(c, "pretrain")
    # 3 usable alt captions × 3 = 9 caption rows = 25 % of 36: t1 18 rows (50 %), t2 9 rows (25 %)
    counts = {k: sum(r["weight_source"] == k for r in pre) for k in ("a", "t1", "t2")}
    assert counts == {"a": 9, "t1": 18, "t2": 9}
    # The mixture's own table: per source rows, share, estimated tokens; then the caption funnel in order.
    table = [(r["part"], r["name"], r["rows"], r["share"]) for r in mixture_table(c, "pretrain")]
    assert table == [
        ("source", "a/caption", 9, "25.0%"), ("source", "t1/text", 18, "50.0%"), ("source", "t2/text", 9, "25.0%"),
        ("total", "pretrain", 36, "100.0%"), ("caption funnel", "images", 6, None),
        ("caption funnel", "too_small", 0, None), ("caption funnel", "no_caption", 2, None),
        ("caption funnel", "duplicates", 1, None), ("caption funnel", "used", 3, None)]
    table = mixture_table(c, "pretrain")
    assert sum(r["est_tokens"] for r in table[:3]) == table[3]["est_tokens"]
    fine = rows(c, "finetune")
    assert sum(r["weight_source"] == "t1" for r in fine) == 25 and sum(r["weight_source"] == "t2" for r in fine) == 4
    t1 = [r["sample_id"] for r in fine if r["weight_source"] == "t1"]
    assert len(set(t1)) == 25  # repeats get distinct ids
    assert sorted(s.split("#")[0] for s in t1 if s.endswith("#2")) == sorted(
        s for s in {x.split("#")[0] for x in t1} if f"{s}#2" in t1)
    assert len(t1) - 20 == sum(s.endswith("#2") for s in t1)  # two whole copies + half of a third


def test_same_seed_same_bytes_other_seed_other_rows(tmp_path):
    write_world(tmp_path)
    spec = {"captions": {"policy": "recap_or_alt"}, "text": {"t1": {"repeat": 0.5}, "t2": {"weight": 0.2}}}
    c = catalog(tmp_path, pretrain=spec)
    run_all(c)
    first = {p.name: p.read_bytes() for p in c.run.mixture("pretrain").glob("*")}
    run_all(c)
    assert {p.name: p.read_bytes() for p in c.run.mixture("pretrain").glob("*")} == first
    seed0 = {r["sample_id"] for r in rows(c, "pretrain") if r["weight_source"] == "t1"}
    c2 = catalog(tmp_path, pretrain={**spec, "seed": 7})
    run_all(c2)
    seed7 = {r["sample_id"] for r in rows(c2, "pretrain") if r["weight_source"] == "t1"}
    assert len(seed0) == len(seed7) == 5 and seed0 != seed7  # half of t1, another half under another seed


def test_permutation_is_a_bijection_and_remainders_add_up():
    for n in (1, 2, 10, 97, 1000):
        a, b = permutation(n, 3, "x")
        assert sorted((a * i + b) % n for i in range(n)) == list(range(n))
    assert largest_remainder({"x": 1, "y": 1, "z": 1}, 10) == {"x": 4, "y": 3, "z": 3}
    assert sum(largest_remainder({"x": 0.3, "y": 0.45}, 17).values()) == 17


def test_weights_without_a_base_and_empty_sources_are_errors(tmp_path):
    write_world(tmp_path)
    c = catalog(tmp_path, pretrain={"captions": None, "text": {"t1": {"weight": 0.5}}})
    run_all_text = [u for u in plan(c) if u.params["kind"] == "text"]
    for u in run_all_text:
        run_unit(c, u)
    with pytest.raises(DataError, match="mixture weights are shares of a mixture with nothing else in it"):
        build_mixture(c, "pretrain", c.run.mixture("pretrain"))


def test_training_reads_the_mixture(tmp_path):
    from vora_core.train.samples import read_mixture

    write_world(tmp_path)
    c = catalog(tmp_path, pretrain={"captions": {"policy": "alt"}, "text": {"t2": {"repeat": 1}}})
    run_all(c)
    table = read_mixture(c.run.mixture("pretrain"), c.run)
    assert table.num_rows == 3 + 7
    images = [r for r in table.to_pylist() if r["image"] is not None]
    assert sorted((r["image"], r["shard"], r["key"], r["width"]) for r in images) == [
        ("a/000000000", "00000", "000000000", 64), ("a/000000001", "00000", "000000001", 64),
        ("a/000000003", "00000", "000000003", 16)]


def test_fingerprints_redo_only_what_changed(tmp_path):
    from vora_core.workdir import run_unit_with_marker

    write_world(tmp_path)
    pre = {"captions": {"policy": "recap"}, "text": {"t1": {"repeat": 1}}}
    fine = {"captions": None, "text": {"t2": {"repeat": 1}}}
    c = catalog(tmp_path, pretrain=pre, finetune=fine)

    def run(c):
        out = {}
        for kind in ("text", "mixture"):  # what the flow does: text units, then the mixtures planned again
            for u in plan(c):
                if u.params["kind"] == kind:
                    out[u.id] = run_unit_with_marker(u, lambda u: run_unit(c, u))["status"]
        return out

    assert set(run(c).values()) == {"done"}
    assert set(run(c).values()) == {"skipped"}
    (tmp_path / "t2.jsonl").write_text('{"id": "x", "conversations": [{"from": "human", "value": "q"}, '
                                       '{"from": "gpt", "value": "a"}]}\n')
    assert run(c) == {"text:t1": "skipped", "text:t2": "done", "mixture:pretrain": "skipped",
                      "mixture:finetune": "done"}
    c2 = catalog(tmp_path, pretrain={**pre, "captions": {"policy": "recap", "prompts": ["Other."]}}, finetune=fine)
    assert run(c2) == {"text:t1": "skipped", "text:t2": "skipped", "mixture:pretrain": "done",
                       "mixture:finetune": "skipped"}
    # a new recaption file changes the pretrain mixture's inputs (its policy reads captions)
    (c.run.root / "captions" / "a" / "00001.parquet").write_bytes(
        (c.run.root / "captions" / "a" / "00000.parquet").read_bytes())
    assert run(c2)["mixture:pretrain"] == "done"


def test_caption_repeat_and_sources(tmp_path):
    write_world(tmp_path)
    c = catalog(tmp_path, pretrain={"captions": {"policy": "alt", "repeat": 2, "sources": ["b"]}})
    run_all(c)
    got = sorted((r["sample_id"], r["source"]) for r in rows(c, "pretrain"))
    # b's only alt text is empty, except b/000000000 (the duplicate of a/000000000, which is not a source here)
    assert got == [("cap/b/000000000", "b"), ("cap/b/000000000#1", "b")]
    stats = json.loads((c.run.mixture("pretrain") / "stats.json").read_text())
    assert stats["captions"] == {"images": 2, "too_small": 0, "no_caption": 1, "duplicates": 0, "used": 1}


def test_parts_reference_their_text_and_readers_resolve_it(tmp_path):
    from vora_core.data.text_views import MIXTURE_COLUMNS
    from vora_core.train.samples import read_mixture

    write_world(tmp_path)
    c = catalog(tmp_path, pretrain={"captions": {"policy": "recap_or_alt", "min_side": 32, "prompts": ["P1"]},
                                    "text": {"t2": {"repeat": 1}}})
    run_all(c)
    parts = sorted(c.run.mixture("pretrain").glob("part-*.parquet"))
    raw = [r for p in parts for r in pq.read_table(p).to_pylist()]
    assert list(raw[0]) == list(MIXTURE_COLUMNS)
    assert all(r["messages"] is None for r in raw)  # nothing copied
    captions = {r["image"]: (r["caption_from"], r["prompt"], r["chars"], r["text_idx"]) for r in raw
                if r["kind"] == "caption"}
    assert captions == {"a/000000000": ("recap", "P1", len("<image>\nP1recap a0"), None),
                        "a/000000001": ("alt", "P1", len("<image>\nP1alt a1"), None)}
    text = sorted((r["sample_id"], r["text_idx"], r["chars"]) for r in raw if r["kind"] == "text")
    assert text == [(f"t2/t2-{i}", i, len(f"q{i}a{i}")) for i in range(7)]
    stats = json.loads((c.run.mixture("pretrain") / "stats.json").read_text())
    assert stats["est_text_tokens"] == sum(r["chars"] for r in raw) // 4

    # the training stage's reader and the `mixture` view build the same messages, in file order
    table = read_mixture(c.run.mixture("pretrain"), c.run).to_pylist()
    assert [r["sample_id"] for r in table] == [r["sample_id"] for r in raw]
    messages = {r["sample_id"]: r["messages"] for r in table}
    assert messages["cap/a/000000001"] == [{"role": "user", "content": "<image>\nP1"},
                                           {"role": "assistant", "content": "alt a1"}]
    assert messages["t2/t2-3"] == [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]
    assert {r["sample_id"]: r["messages"] for r in rows(c, "pretrain")} == messages

    # a mixture made elsewhere may carry its conversations inline, without the reference columns
    inline = pa.Table.from_pylist([{"sample_id": "x/1", "kind": "text", "source": "x", "image": None,
                                    "messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "yo"}]}])
    (tmp_path / "other").mkdir()
    pq.write_table(inline, tmp_path / "other" / "part-00000.parquet")
    assert read_mixture(tmp_path / "other", c.run).to_pylist()[0]["messages"] == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_views_open_over_files_an_older_version_wrote(tmp_path):
    """Text parts without `chars` and mixture parts with inline messages only: the manifest still opens
    (the mix stage must be able to rebuild them) and the views read them."""
    from vora_core.manifest import open_manifest

    write_world(tmp_path)
    c = catalog(tmp_path, pretrain={"captions": None, "text": {"t2": {"repeat": 1}}})
    run_all(c)
    for part in c.run.root.glob("text/*/part-*.parquet"):
        pq.write_table(pq.read_table(part).drop(["chars"]), part)
    mixture = c.run.mixture("pretrain")
    old = pa.Table.from_pylist([{"sample_id": "t2/x", "kind": "text", "source": "t2", "image": None,
                                 "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                 "weight_source": "t2"}])
    for part in mixture.glob("part-*.parquet"):
        part.unlink()
    pq.write_table(old, mixture / "part-00000.parquet")
    con = open_manifest(c.run)
    try:
        assert con.execute("SELECT count(*), count(chars) FROM text").fetchall() == [(17, 0)]
        assert con.execute("SELECT sample_id, messages[2].content, text_idx FROM mixture").fetchall() == [
            ("t2/x", "a", None)]
    finally:
        con.close()
