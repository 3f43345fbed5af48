"""download → recaption → mix on the embedded Prefect server, on a small copy of the demo catalog:
every demo text source (all formats), shapes_vqa in the evaluator's own prompts, exact mixture
counts, a rerun that redoes nothing, `vora status` rows and the training loader reading the result."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def small_demo(tmp_path: Path) -> Path:
    c = yaml.safe_load((ROOT / "catalogs" / "demo.yaml").read_text())
    c["name"], c["workdir"] = "mixflow", str(tmp_path / "run")
    c["sources"]["shapes"].update(n=24, heldout=4)
    c["download"].update(number_sample_per_shard=12, rows_per_unit=24)
    c["recaption"].update(max_new_tokens=4, batch_size=12)
    for text in c["text_sources"].values():  # the demo's paths are relative to the repository
        for key in ("path", "image_dir"):
            if key in text:
                text[key] = str(ROOT / text[key])
    c["text_sources"]["shapes_vqa"].update(draws=2, layout="shuffled")  # every question in each conversation
    path = tmp_path / "mixflow.yaml"
    path.write_text(yaml.safe_dump(c, sort_keys=False))
    return path


def test_download_recaption_mix(prefect_harness, tmp_path):
    from flows.download import download_flow
    from flows.mix import mix_flow
    from flows.recaption import recaption_flow
    from vora_core.catalog import load_catalog
    from vora_core.data.questions import KINDS, prompt_text, question_samples
    from vora_core.manifest import open_manifest
    from vora_core.stages.mix import summary
    from vora_core.train.samples import read_mixture

    path = small_demo(tmp_path)
    download_flow(str(path))
    recaption_flow(str(path))
    results = mix_flow(str(path))
    assert sorted((r["unit"], r["status"]) for r in results) == sorted(
        [(f"text:{n}", "done") for n in ("chat_sharegpt", "chat_messages", "orca", "dolly", "llava_demo",
                                         "shapes_vqa")] + [("mixture:pretrain", "done"), ("mixture:finetune", "done")])
    written = {r["unit"]: (r["written"], r["rejected"]) for r in results if r["unit"].startswith("text:")}
    assert written == {"text:chat_sharegpt": (40, 0), "text:chat_messages": (40, 0), "text:orca": (40, 0),
                       "text:dolly": (40, 0), "text:llava_demo": (30, 0), "text:shapes_vqa": (48, 0)}
    c = load_catalog(path)

    # pretrain: 24 alt-text captions; weights 0.05 + 0.05 of round(24 / 0.9) = 27 rows → 2 + 1
    pre = json.loads((c.run.mixture("pretrain") / "stats.json").read_text())
    assert {(r["source"], r["kind"]): r["rows"] for r in pre["by_source"]} == {
        ("shapes", "caption"): 24, ("chat_sharegpt", "text"): 2, ("orca", "text"): 1}
    assert pre["captions"] == {"images": 24, "too_small": 0, "no_caption": 0, "duplicates": 0, "used": 24}
    # finetune: 48 vqa + 30 llava (24 with an image); 0.02 + 0.02 of round(78 / 0.96) = 81 rows → 2 + 1
    fine = json.loads((c.run.mixture("finetune") / "stats.json").read_text())
    assert {(r["source"], r["kind"]): r["rows"] for r in fine["by_source"]} == {
        ("shapes_vqa", "vqa"): 48, ("llava_demo", "vqa"): 24, ("llava_demo", "text"): 6,
        ("chat_messages", "text"): 2, ("dolly", "text"): 1}

    # shapes_vqa asks exactly the held-out benchmarks' questions, rendered by the evaluator's prompt_text
    labels = pq.read_table(c.run.sources("shapes") / "labels.parquet").to_pylist()
    con = open_manifest(c.run)
    image_of = dict(con.execute("SELECT row_id, sample_id FROM images WHERE source = 'shapes'").fetchall())
    vqa = con.execute("SELECT sample_id, image, messages FROM mixture WHERE stage = 'finetune' "
                      "AND weight_source = 'shapes_vqa'").fetchall()
    assert con.execute("SELECT count(*) FROM text_rejects").fetchall() == [(0,)]
    con.close()
    for draw in range(2):
        expected: dict[str, set[tuple[str, str]]] = {r["row_id"]: set() for r in labels}
        for kind in KINDS:
            for s in question_samples(labels, lambda r: r["row_id"], kind, c.seed * 1000 + draw):
                expected[s.images[0]].add((prompt_text(s), str(s.answer)))
        for sample_id, image, messages in vqa:
            row_id, d = sample_id.split("/")[1:]
            if int(d) != draw:
                continue
            assert image == image_of[row_id]
            # the image is in the first turn only; later turns ask without it
            pairs = {(m["content"] if i == 0 else "<image>\n" + m["content"], messages[i + 1]["content"])
                     for i, m in enumerate(messages) if m["role"] == "user"}
            assert pairs == expected[row_id]
            assert messages[0]["content"].startswith("<image>\n")
            assert sum(m["content"].count("<image>") for m in messages) == 1

    # the training loader resolves every image, the llava ones (ingested into shards) included
    table = read_mixture(c.run.mixture("finetune"), c.run)
    rows = table.to_pylist()
    assert len(rows) == 81 and all(r["key"] is not None for r in rows if r["image"] is not None)

    # a rerun redoes nothing; `vora status` rows come from the markers
    again = mix_flow(str(path))
    assert {r["status"] for r in again} == {"skipped"}
    status = {r["unit"]: (r["done"], r["rows"]) for r in summary(c)}
    assert status["mixture:pretrain"] == (True, 27) and status["mixture:finetune"] == (True, 81)
    assert status["text:llava_demo"] == (True, 30)

    # The UI: the mixture has its own table artifact (the total row first after the sources), and the
    # recaption table marks the tiny captioner's flags above recaption.max_flag_share.
    import httpx
    from prefect.settings import PREFECT_API_URL

    def artifact(key: str) -> dict:
        arts = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", timeout=30,
                          json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"}).json()
        return arts[0]

    mixture = artifact("mixflow-mixture-pretrain")
    table = json.loads(mixture["data"])
    assert [(r["part"], r["name"], r["rows"]) for r in table][:4] == [
        ("source", "chat_sharegpt/text", 2), ("source", "orca/text", 1), ("source", "shapes/caption", 24),
        ("total", "pretrain", 27)]
    assert mixture["description"].endswith(f"outputs: {c.run.mixture('pretrain')}")
    [recap] = json.loads(artifact("mixflow-recaption")["data"])
    assert recap["quality"].startswith("WARNING: ") and "above recaption.max_flag_share=20%" in recap["quality"]
    logs = httpx.post(f"{PREFECT_API_URL.value()}/logs/filter", timeout=30,
                      json={"logs": {"level": {"ge_": 30}}, "limit": 200}).json()
    assert f"recaption shapes: {recap['quality']}" in {log["message"] for log in logs}
