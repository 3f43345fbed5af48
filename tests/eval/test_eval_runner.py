"""End to end: a tiny VoRA model evaluated on the demo's held-out benchmark (+ a jsonl benchmark)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vora_core.catalog import parse_catalog
from vora_core.data.questions import Sample
from vora_core.data.sources import COLOURS, SHAPES, connect, synthetic_rows
from vora_core.errors import StageError
from vora_core.eval import heldout, runner
from vora_core.eval.formats import judge
from vora_core.stages import evaluate, run_stage


def _catalog(tmp_path: Path, model: Path, **evaluate):
    return parse_catalog({
        "name": "t", "workdir": str(tmp_path / "run"),
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": 2, "heldout": 6, "min_side": 24, "max_side": 48}},
        "evaluate": {"model": str(model), "batch_size": 4, "max_new_tokens": 4, **evaluate},
    })


def _download_heldout(catalog) -> Path:
    """What the download stage does for a synthetic source: images + labels of both splits."""
    src_dir = catalog.run.sources("shapes")
    con = connect()
    synthetic_rows(catalog.sources["shapes"], src_dir, con)
    con.close()
    return src_dir


def test_heldout_questions_follow_the_labels(tmp_path, tiny_eval):
    catalog = _catalog(tmp_path, tiny_eval["vora"])
    src_dir = _download_heldout(catalog)
    labels = pq.read_table(src_dir / "heldout" / "labels.parquet").to_pylist()
    mc = heldout.build_heldout("shapes", src_dir, "mc", seed=0)
    yn = heldout.build_heldout("shapes", src_dir, "yesno", seed=0)
    short = heldout.build_heldout("shapes", src_dir, "short", seed=0)
    assert (len(mc.samples), len(yn.samples), len(short.samples)) == (12, 12, 24)
    for row in labels:
        colour, shape = (s for s in mc.samples if s.id.startswith(row["row_id"] + "/"))
        assert colour.options[ord(colour.answer) - 65] == row["colour"] and set(colour.options) <= set(COLOURS)
        assert shape.options[ord(shape.answer) - 65] == row["shape"] and set(shape.options) <= set(SHAPES)
        assert len(set(colour.options)) == 4 and Path(colour.images[0]).is_file()
        yes, no = (s for s in yn.samples if s.id.startswith(row["row_id"] + "/"))
        assert (yes.answer, no.answer) == ("yes", "no")
        assert yes.question == f"Is there a {row['colour']} {row['shape']} in the image?"
        assert no.question != yes.question
        asked = [(s.question, s.answer) for s in short.samples if s.id.startswith(row["row_id"] + "/")]
        assert asked == [("What colour is the shape?", row["colour"]),
                         ("What shape is shown in the image?", row["shape"]),
                         ("Where is the shape in the image?", row["position"]),
                         ("What colour is the background?", row["background"])]
    assert [s.meta["category"] for s in yn.samples[:4]] == ["colour", "colour", "shape", "shape"]
    again = heldout.build_heldout("shapes", src_dir, "mc", seed=0)
    assert [(s.options, s.answer) for s in again.samples] == [(s.options, s.answer) for s in mc.samples]


@pytest.mark.slow
def test_evaluate_stage_end_to_end(tmp_path, tiny_eval):
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    catalog = _catalog(tmp_path, tiny_eval["vora"])
    src_dir = _download_heldout(catalog)
    image = src_dir / "heldout" / "000000.png"
    rows = [{"id": "a", "format": "vqa", "question": "What colour?", "image": str(image), "answer": ["red"] * 10},
            {"id": "b", "format": "vqa", "question": "What shape?", "image": "missing.png", "answer": ["x"] * 10},
            {"id": "c", "format": "vqa", "question": "Which?", "image": str(bench_dir / "bad.png"),
             "answer": ["y"] * 10}]
    (bench_dir / "bad.png").write_bytes(b"<html>not an image</html>")
    (bench_dir / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    catalog = _catalog(tmp_path, tiny_eval["vora"],
                       benchmarks=[{"name": "mine", "format": "jsonl", "path": str(bench_dir / "mine.jsonl")}])

    units = evaluate.plan(catalog)
    assert [u.id for u in units] == ["mine", "shapes-heldout-mc", "shapes-heldout-yesno", "shapes-heldout-short"]
    results = run_stage("evaluate", catalog)
    assert [r["status"] for r in results] == ["done"] * 4
    eval_dir = catalog.run.stage_dir("evaluate")

    for name, fmt, n in (("shapes-heldout-mc", "mc", 12), ("shapes-heldout-yesno", "yesno", 12),
                         ("shapes-heldout-short", "short", 24)):
        lines = [json.loads(x) for x in (eval_dir / name / "predictions.jsonl").read_text().splitlines()]
        scores = json.loads((eval_dir / name / "scores.json").read_text())
        assert len(lines) == n and scores["scored"] == n and scores["rejected"] == 0
        assert scores["format"] == fmt
        bench = heldout.build_heldout("shapes", src_dir, name.rsplit("-", 1)[1], catalog.seed)
        by_id = {s.id: s for s in bench.samples}
        for line in lines:  # every verdict recomputes from the stored answer
            verdict = judge(by_id[line["id"]], line["prediction"])
            assert verdict == {k: line[k] for k in verdict}
        # The held-out benchmarks name no protocol: their format's default is used and recorded.
        assert scores["protocol"]["name"] == {"mc": "llava-sqa", "yesno": "pope", "short": "exact"}[fmt]
        if fmt == "yesno":
            yes = sum(line["parsed"] == "yes" for line in lines)
            assert scores["yes_ratio"] == pytest.approx(yes / n)
            assert set(scores["by_category"]) == {"colour", "shape"}
        else:
            assert scores["accuracy"] == pytest.approx(sum(line["score"] for line in lines) / n)
        assert (eval_dir / f"{name}.done.json").exists()

    mine = json.loads((eval_dir / "mine" / "scores.json").read_text())
    assert (mine["scored"], mine["rejected"]) == (1, 2)
    assert mine["rejected_by_reason"] == {"bad_image": 1, "missing_image": 1}
    # Every rejected question is a row of rejects.parquet (the loader's first, then undecodable images).
    rejects = pq.read_table(eval_dir / "mine" / "rejects.parquet").to_pylist()
    assert [(r["id"], r["reason"]) for r in rejects] == [("b", "missing_image"), ("c", "bad_image")]
    assert rejects[0]["detail"] == f"image not found: {bench_dir / 'missing.png'}"
    assert len(rejects) == mine["rejected"]
    # The stage's failures report: 2 rejected of 51 questions (48 held-out + 1 scored + 2 rejected).
    report = evaluate.failure_report(catalog)
    assert {k: report[k] for k in ("stage", "rows", "failed", "share", "view")} == {
        "stage": "evaluate", "rows": 51, "failed": 2, "share": 0.0392, "view": "eval/<benchmark>/rejects.parquet"}
    assert [(r["reason"], r["count"], r["share"], [(e["benchmark"], e["id"]) for e in r["examples"]])
            for r in report["reasons"]] == [("bad_image", 1, 0.0196, [("mine", "c")]),
                                            ("missing_image", 1, 0.0196, [("mine", "b")])]
    assert report["reasons"][1]["examples"][0]["detail"] == rejects[0]["detail"]
    lines = [json.loads(x) for x in (eval_dir / "mine" / "predictions.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", "c"]  # the missing image never reached the runner
    assert lines[1]["error"].startswith(f"image {bench_dir / 'bad.png'} is unreadable")

    summary = json.loads((eval_dir / "summary.json").read_text())
    assert set(summary["benchmarks"]) == {u.id for u in units}
    assert summary["benchmarks"]["shapes-heldout-yesno"]["main"] == "f1"

    # Reruns skip; a setting that changes answers redoes every benchmark; batch size changes nothing.
    assert [r["status"] for r in run_stage("evaluate", catalog)] == ["skipped"] * 4
    rebatched = _catalog(tmp_path, tiny_eval["vora"], batch_size=1,
                         benchmarks=[{"name": "mine", "format": "jsonl", "path": str(bench_dir / "mine.jsonl")}])
    assert all(u.done for u in evaluate.plan(rebatched))
    longer = _catalog(tmp_path, tiny_eval["vora"], max_new_tokens=5)
    assert not any(u.done for u in evaluate.plan(longer))
    rows = evaluate.summary(catalog)
    assert [r["done"] for r in rows] == [True] * 4
    # The run directory copied elsewhere (`cp -r`: every mtime new): its held-out benchmarks are still done.
    shutil.copytree(tmp_path / "run", tmp_path / "copy" / "run", copy_function=shutil.copy)
    copied = _catalog(tmp_path / "copy", tiny_eval["vora"])
    assert [(u.id, u.done) for u in evaluate.plan(copied)] == [
        ("shapes-heldout-mc", True), ("shapes-heldout-yesno", True), ("shapes-heldout-short", True)]


def test_batched_answers_equal_one_by_one(tmp_path, tiny_eval):
    catalog = _catalog(tmp_path, tiny_eval["pretrain"])
    src_dir = _download_heldout(catalog)
    loaded = runner.load_model(tiny_eval["pretrain"])  # the unmerged model, LoRA and teacher included
    image = str(src_dir / "heldout" / "000001.png")
    samples = heldout.build_heldout("shapes", src_dir, "mc").samples[:5]
    samples.append(Sample("text", "short", "What is two plus two?", [], "4"))  # text only, different length
    samples.append(Sample("two", "short", "Same shapes?", [samples[0].images[0], image], "yes"))
    one, _ = runner.predict(loaded, samples, batch_size=1, max_new_tokens=6)
    many, _ = runner.predict(loaded, samples, batch_size=7, max_new_tokens=6)
    assert one == many and len(one) == 7
    assert any(one.values())  # the model does say something


def test_missing_model_fails_the_unit(tmp_path):
    catalog = _catalog(tmp_path, tmp_path / "no-model")
    _download_heldout(catalog)
    unit = evaluate.plan(catalog)[0]
    with pytest.raises(StageError, match=r"evaluate: model .*no-model not found; run the stage that writes it"):
        evaluate.run_unit(catalog, unit)


def test_duplicate_benchmark_names_are_refused(tmp_path):
    catalog = _catalog(tmp_path, tmp_path / "m", benchmarks=[
        {"name": "shapes-heldout-mc", "format": "jsonl", "path": "x.jsonl"}])
    with pytest.raises(StageError, match="benchmark name\\(s\\) shapes-heldout-mc used twice"):
        evaluate.plan(catalog)
