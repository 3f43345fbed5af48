"""Cross-source dedup keeps the copy that has a caption: the same real photographs downloaded by two
sources, recaptioned in one and blank (flagged `empty`) in the other."""

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from realdata import photos

from vora_core.caption.recaption import SCHEMA as CAPTION_SCHEMA
from vora_core.catalog import parse_catalog
from vora_core.data.mixture import build_mixture
from vora_core.data.shards import ShardWriter
from vora_core.manifest import open_manifest

NAMES = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]


def write_source(run, source: str, captions: dict[str, str]) -> None:
    """A downloaded shard of the photos in `captions` (name → recaption; '' = a blank one) and its captions."""
    rows, caps = [], []
    with ShardWriter(run.shards(source) / "00000.tar") as w:
        for n, name in enumerate(NAMES):
            if name not in captions:
                continue
            key = f"00000{n:04d}"
            data = photos.jpeg(name)
            img = photos.photo(name, 256)
            w.write(key, {"jpg": data})
            rows.append({"key": key, "row_id": name, "url": f"https://{source}.example/{name}", "caption": None,
                         "status": "success", "error_message": None, "width": img.width, "height": img.height,
                         "original_width": img.width, "original_height": img.height,
                         "sha256": hashlib.sha256(data).hexdigest()})
            text = captions[name]
            caps.append({"sample_id": f"{source}/{key}", "key": key, "caption": text,
                         "flags": [] if text else ["empty"]})
        w.commit(pa.Table.from_pylist(rows))
    (run.root / "captions" / source).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{**{f.name: None for f in CAPTION_SCHEMA}, **c} for c in caps],
                                        schema=CAPTION_SCHEMA), run.root / "captions" / source / "00000.parquet")


def mixture(tmp_path, web: dict[str, str], recap: dict[str, str], policy: str = "recap"):
    c = parse_catalog({
        "name": "d", "workdir": str(tmp_path / "run"),
        "sources": {"web": {"kind": "url_list", "path": "x.parquet"},
                    "recap": {"kind": "url_list", "path": "y.parquet"}},
        "mix": {"pretrain": {"captions": {"policy": policy}}, "finetune": {"captions": None}},
    })
    run = c.run.ensure()
    write_source(run, "web", web)
    write_source(run, "recap", recap)
    build_mixture(c, "pretrain", c.run.mixture("pretrain"))
    con = open_manifest(c.run)
    try:
        got = con.sql("SELECT i.row_id, m.source, m.messages[2].content FROM mixture m "
                      "JOIN images i ON i.sample_id = m.image").fetchall()
    finally:
        con.close()
    stats = json.loads((c.run.mixture("pretrain") / "stats.json").read_text())
    return sorted(got), stats["captions"]


@pytest.mark.parametrize("captioned", ["web", "recap"])  # whichever copy hashes first: the captioned one wins
def test_the_captioned_copy_of_a_duplicate_is_kept(tmp_path, captioned):
    blank = {name: "" for name in NAMES}  # every copy in one source has a blank recaption
    good = {name: f"a photo: {name}" for name in NAMES[:3]}
    web, recap = (good, blank) if captioned == "web" else (blank, good)
    got, funnel = mixture(tmp_path, web, recap)
    assert got == [(name, captioned, f"a photo: {name}") for name in sorted(NAMES[:3])]
    assert funnel == {"images": 7, "too_small": 0, "no_caption": 1, "duplicates": 3, "used": 3}


@pytest.mark.parametrize("policy", ["recap", "recap_or_alt"])
def test_ties_are_broken_the_same_way_every_time(tmp_path, policy):
    both = {name: f"caption of {name}" for name in NAMES}
    first = mixture(tmp_path / "a", both, both, policy)
    assert first == mixture(tmp_path / "b", both, both, policy)
    got, funnel = first
    assert [name for name, _, _ in got] == sorted(NAMES)
    assert funnel == {"images": 8, "too_small": 0, "no_caption": 0, "duplicates": 4, "used": 4}
    neither = {name: "" for name in NAMES}
    got, funnel = mixture(tmp_path / "c", neither, neither, policy)
    assert got == [] and funnel == {"images": 8, "too_small": 0, "no_caption": 4, "duplicates": 4, "used": 0}
