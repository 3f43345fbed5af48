"""Loaders read tiny files written in each public benchmark's layout (docs/benchmarks.md)."""

from __future__ import annotations

import base64
import json

import pytest

from tests.eval.conftest import png
from vora_core.errors import DataError
from vora_core.eval.loaders import load_benchmark


def test_pope(tmp_path):
    for cat in ("random", "adversarial"):
        lines = [{"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a dog in the image?",
                  "label": "yes"},
                 {"question_id": 2, "image": "COCO_val2014_000000000002.jpg", "text": "Is there a cat in the image?",
                  "label": "no"}]
        (tmp_path / f"coco_pope_{cat}.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    png(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg")  # image 2 is missing
    bench = load_benchmark("pope", "pope", tmp_path)
    assert bench.format == "yesno"
    assert [(s.id, s.answer, s.meta["category"]) for s in bench.samples] == [
        ("adversarial-1", "yes", "adversarial"), ("random-1", "yes", "random")]
    assert [r["id"] for r in bench.rejects] == ["adversarial-2", "random-2"]
    assert bench.rejects[0] == {"id": "adversarial-2", "reason": "missing_image",
                                "detail": f"image not found: {tmp_path / 'val2014' / 'COCO_val2014_000000000002.jpg'}"}
    assert load_benchmark("pope", "pope", tmp_path, split="random").samples[0].id == "random-1"


def test_mme_both_folder_layouts(tmp_path):
    flat = tmp_path / "existence"
    png(flat / "000.png")
    (flat / "000.txt").write_text("Is there a dog in this image? Please answer yes or no.\tYes\n"
                                  "Is there a cat in this image? Please answer yes or no.\tNo\n")
    nested = tmp_path / "artwork"
    png(nested / "images" / "10002.jpg")
    (nested / "questions_answers_YN").mkdir(parents=True)
    (nested / "questions_answers_YN" / "10002.txt").write_text("Is this by Monet?\tNo\nIs this by Manet?\tYes\n"
                                                               "broken line without tab\n")
    bench = load_benchmark("mme", "mme", tmp_path)
    assert bench.format == "mme"
    got = [(s.id, s.meta["subtask"], s.meta["image"], s.answer) for s in bench.samples]
    assert got == [
        ("artwork/10002-0", "artwork", "artwork/10002.jpg", "no"),
        ("artwork/10002-1", "artwork", "artwork/10002.jpg", "yes"),
        ("existence/000-0", "existence", "existence/000.png", "yes"),
        ("existence/000-1", "existence", "existence/000.png", "no"),
    ]
    assert bench.samples[0].images == [str(nested / "images" / "10002.jpg")]
    assert bench.rejects == [{"id": "artwork/10002-2", "reason": "malformed",
                              "detail": f"{nested / 'questions_answers_YN' / '10002.txt'}: line 3 is not "
                                        "'question<TAB>Yes|No'"}]


def test_mmbench_tsv_base64_and_image_references(tmp_path):
    img = png(colour=(1, 2, 3))
    b64 = base64.b64encode(img).decode()
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsplit\n"
    rows = [
        f"7\tWhat colour?\tLook closely.\tred\tblue\tgreen\t\tC\tattribute\t{b64}\tdev\n",
        "8\tWhich shape?\tnan\tcircle\tsquare\t\t\tA\tshape\t7\tdev\n",  # image stored on row 7
        "9\tBad?\tnan\tx\ty\t\t\tE\tshape\tAAAA\tdev\n",
        "x1\tBad index?\tnan\tx\ty\t\t\tA\tshape\t7\tdev\n",
    ]
    tsv = tmp_path / "mmbench_dev.tsv"
    tsv.write_text(header + "".join(rows))
    bench = load_benchmark("mmbench", "mmbench", tsv)
    assert (bench.format, bench.protocol) == ("mc", "mmbench")
    got = [(s.id, s.options, s.answer, s.meta["group"], s.meta["copy"]) for s in bench.samples]
    assert got == [("7", ["red", "blue", "green"], "C", "7", 0), ("8", ["circle", "square"], "A", "8", 0)]
    assert bench.samples[0].question == "Look closely.\nWhat colour?"
    assert bench.samples[1].question == "Which shape?"
    assert bench.samples[0].images == [img] and bench.samples[1].images == [img]
    assert bench.rejects == [
        {"id": "9", "reason": "bad_answer", "detail": "answer 'E' is not one of the 2 option letters"},
        {"id": "x1", "reason": "bad_index", "detail": "index 'x1' is not a whole number"}]


def test_scienceqa_img_only(tmp_path):
    problems = {
        "1": {"question": "Which is a mammal?", "choices": ["shark", "whale"], "answer": 1, "hint": "",
              "image": "image.png", "subject": "natural science", "split": "test"},
        "2": {"question": "Text only?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None,
              "subject": "language science", "split": "test"},
        "3": {"question": "Which map?", "choices": ["x", "y", "z"], "answer": 2, "hint": "Look at the map.",
              "image": "image.png", "subject": "social science", "split": "test"},
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3"], "train": []}))
    png(tmp_path / "test" / "1" / "image.png")
    png(tmp_path / "test" / "3" / "image.png")
    bench = load_benchmark("sqa", "scienceqa", tmp_path)
    assert [(s.id, s.answer, s.options, s.meta["category"]) for s in bench.samples] == [
        ("1", "B", ["shark", "whale"], "natural science"), ("3", "C", ["x", "y", "z"], "social science")]
    assert bench.samples[1].question == "Context: Look at the map.\nWhich map?"
    with pytest.raises(DataError, match="split 'val' not in"):
        load_benchmark("sqa", "scienceqa", tmp_path, split="val")


def test_seedbench_images_only(tmp_path):
    data = {"questions": [
        {"question_id": "101", "question": "What is here?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "D", "data_id": "1.jpg", "data_type": "image", "question_type_id": 1},
        {"question_id": "102", "question": "What happens?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "A", "data_id": "v.mp4", "data_type": "video", "question_type_id": 10},
    ], "question_type": {"Scene Understanding": 1, "Action Recognition": 10}}
    path = tmp_path / "SEED-Bench.json"
    path.write_text(json.dumps(data))
    png(tmp_path / "SEED-Bench-image" / "1.jpg")
    bench = load_benchmark("seed", "seedbench", path)
    assert [(s.id, s.answer, s.meta["category"]) for s in bench.samples] == [("101", "D", "Scene Understanding")]
    assert bench.rejects == [{"id": "102", "reason": "filtered_video",
                              "detail": "video question (only image questions are evaluated)"}]


def test_ai2d_with_test_split(tmp_path):
    for n in (1, 2):
        q = {"imageName": f"{n}.png", "questions": {
            f"Which label is the sun ({n})?": {"abcLabel": True, "answerTexts": ["A", "B", "C", "D"],
                                              "correctAnswer": 2, "questionId": f"{n}.png-0"}}}
        (tmp_path / "questions").mkdir(exist_ok=True)
        (tmp_path / "questions" / f"{n}.png.json").write_text(json.dumps(q))
        png(tmp_path / "images" / f"{n}.png")
    (tmp_path / "ai2d_test_ids.csv").write_text("2\n")
    assert [s.id for s in load_benchmark("ai2d", "ai2d", tmp_path).samples] == ["1.png-0", "2.png-0"]
    bench = load_benchmark("ai2d", "ai2d", tmp_path, split="test")
    assert [(s.id, s.answer, s.meta["category"]) for s in bench.samples] == [("2.png-0", "C", "abc_label")]


def test_textvqa_and_vqav2(tmp_path):
    tv = {"data": [{"question_id": 5, "question": "What brand?", "image_id": "abc", "answers": ["nike"] * 10}]}
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps(tv))
    png(tmp_path / "train_images" / "abc.jpg")
    bench = load_benchmark("textvqa", "textvqa", tmp_path / "TextVQA_0.5.1_val.json")
    assert bench.format == "vqa" and bench.samples[0].answer == ["nike"] * 10

    qs = {"questions": [{"image_id": 42, "question": "How many?", "question_id": 420},
                        {"image_id": 43, "question": "What?", "question_id": 430}]}
    anns = {"annotations": [{"question_id": 420, "image_id": 42, "answer_type": "number",
                             "answers": [{"answer": "2", "answer_id": i + 1} for i in range(10)]}]}
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(qs))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(anns))
    png(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    bench = load_benchmark("vqav2", "vqav2", tmp_path)
    assert [(s.id, s.meta["category"]) for s in bench.samples] == [("420", "number")]
    assert bench.rejects == [{"id": "430", "reason": "malformed", "detail": "no annotation for this question"}]


def test_jsonl_and_limit(tmp_path):
    png(tmp_path / "a.png")
    rows = [{"id": f"q{i}", "format": "short", "question": "Colour?", "image": "a.png", "answer": "red"}
            for i in range(3)]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    bench = load_benchmark("mine", "jsonl", tmp_path / "b.jsonl", limit=2)
    assert bench.format == "short" and [s.id for s in bench.samples] == ["q0", "q1"]
    assert bench.samples[0].images == [str(tmp_path / "a.png")]


def test_missing_files_name_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"vqav2: file .*v2_OpenEnded_mscoco_val2014_questions.json not found; "
                                        r"see docs/benchmarks.md"):
        load_benchmark("v", "vqav2", tmp_path)
    with pytest.raises(DataError, match="unknown layout 'coco'"):
        load_benchmark("v", "coco", tmp_path)
    (tmp_path / "x.jsonl").write_text('{"id": 1, "question": "q"}\n')
    with pytest.raises(DataError, match=r"jsonl: x.jsonl line 1: no 'format' field"):
        load_benchmark("v", "jsonl", tmp_path / "x.jsonl")
