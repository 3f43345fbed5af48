"""Each benchmark scored by its reference protocol, from small files in the benchmark's official layout."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.eval.conftest import png
from vora_core.data.questions import SHORT_SUFFIX, prompt_text
from vora_core.eval.formats import judge, score_benchmark
from vora_core.eval.loaders import Benchmark, load_benchmark


def _score(bench: Benchmark, answers: dict[str, str]) -> tuple[list[dict], dict]:
    """Judge every sample with `answers[id]` as the model's answer, the way the runner does."""
    assert set(answers) == {s.id for s in bench.samples}
    verdicts = [judge(s, answers[s.id], bench.protocol) for s in bench.samples]
    return verdicts, score_benchmark(bench.format, bench.samples, verdicts, bench.protocol)


# ------------------------------------------------------------------------------------------ MMBench

# mmbench_dev_20230712.tsv's layout: the file itself holds each question's circular copies (options
# shifted by one per copy) at index + k·1,000,000; 2-option questions have one copy, 3-option two.
_MMBENCH_HEADER = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\tsource\tl2-category\tcomment\tsplit\timage\n"


def _mmbench_rows(b64: str) -> list[str]:
    rows = []
    questions = [  # (index, question, options, answer index, category)
        (11, "What colour is the car?", ["red", "blue", "green", "white"], 1, "attribute_recognition"),
        (12, "How many cats?", ["one", "two", "three"], 2, "object_localization"),
        (13, "Is it day?", ["yes", "no"], 0, "attribute_recognition"),
    ]
    for index, question, options, answer, category in questions:
        for k in range(len(options)):
            shifted = options[k:] + options[:k]
            cells = shifted + [""] * (4 - len(shifted))
            letter = "ABCD"[shifted.index(options[answer])]
            rows.append("\t".join([str(index + k * 1_000_000), question, "nan", *cells, letter, category, "src",
                                   "l2", "nan", "dev", b64]) + "\n")
    return rows


def test_mmbench_circular_eval_on_the_official_layout(tmp_path):
    b64 = base64.b64encode(png()).decode()
    tsv = tmp_path / "mmbench_dev_20230712.tsv"
    tsv.write_text(_MMBENCH_HEADER + "".join(_mmbench_rows(b64)))
    bench = load_benchmark("mmbench-dev", "mmbench", tsv)
    # Every row is asked once, as written: 4 + 3 + 2 rows, no further rotation.
    assert [(s.id, s.meta["group"], s.answer) for s in bench.samples] == [
        ("11", "11", "B"), ("1000011", "11", "A"), ("2000011", "11", "D"), ("3000011", "11", "C"),
        ("12", "12", "C"), ("1000012", "12", "B"), ("2000012", "12", "A"),
        ("13", "13", "A"), ("1000013", "13", "B"),
    ]
    assert bench.samples[1].options == ["blue", "green", "white", "red"]
    assert bench.samples[8].options == ["no", "yes"]
    answers = {s.id: s.answer for s in bench.samples}
    answers["2000012"] = "The answer is C"  # one copy of question 12 wrong: the question is wrong
    answers["1000011"] = "Option A"         # MMBench's matcher reads these as the letter
    answers["13"] = "**A**"
    verdicts, scores = _score(bench, answers)
    assert [v["score"] for v in verdicts] == [1, 1, 1, 1, 1, 1, 0, 1, 1]
    assert (scores["main"], scores["value"], scores["questions"]) == ("circular_accuracy", pytest.approx(2 / 3), 3)
    assert scores["row_accuracy"] == pytest.approx(8 / 9)
    assert scores["by_category"] == {"attribute_recognition": 1.0, "object_localization": 0.0}
    assert scores["protocol"]["name"] == "mmbench"
    assert "accuracy" not in scores

    vanilla = load_benchmark("mmbench-dev", "mmbench", tsv, circular=False)
    assert [s.id for s in vanilla.samples] == ["11", "12", "13"]
    _, plain = _score(vanilla, {"11": "B", "12": "A", "13": "A"})
    assert (plain["main"], plain["value"]) == ("accuracy", pytest.approx(2 / 3))


# ---------------------------------------------------------------------------------- ScienceQA, SEED


def test_scienceqa_follows_llavas_rule(tmp_path):
    problems = {str(pid): {"question": f"Question {pid}?", "choices": ["cat", "dog", "fish"], "answer": 1,
                           "hint": "", "image": "image.png", "subject": "natural science", "split": "test"}
                for pid in range(1, 9)}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    for pid in problems:
        png(tmp_path / "test" / pid / "image.png")
    bench = load_benchmark("sqa", "scienceqa", tmp_path)
    assert bench.protocol == "llava-sqa"
    answers = {"1": "B", "2": "B. dog", "3": "The answer is B.", "4": "(B)", "5": "B) dog", "6": "Answer: B",
               "7": "dog", "8": "The answer is B"}
    verdicts, scores = _score(bench, answers)
    assert [v["score"] for v in verdicts] == [1, 1, 1, 0, 0, 0, 0, 0]
    assert (scores["main"], scores["value"], scores["unparsed"]) == ("accuracy", 3 / 8, 5)
    assert scores["accuracy_lenient"] == 1.0  # the second, clearly named metric reads all eight as B
    assert scores["protocol"] == {"name": "llava-sqa", "format": "mc", "parsing": scores["protocol"]["parsing"],
                                  "reference": "LLaVA-1.5 llava/eval/eval_science_qa.py"}


def test_seedbench_needs_the_bare_letter(tmp_path):
    questions = [{"question_id": str(100 + i), "question": "What is here?", "choice_a": "a cat", "choice_b": "a dog",
                  "choice_c": "a car", "choice_d": "a bus", "answer": "C", "data_id": "1.jpg", "data_type": "image",
                  "question_type_id": 1} for i in range(3)]
    path = tmp_path / "SEED-Bench.json"
    path.write_text(json.dumps({"questions": questions, "question_type": {"Scene Understanding": 1}}))
    png(tmp_path / "SEED-Bench-image" / "1.jpg")
    bench = load_benchmark("seed", "seedbench", path)
    verdicts, scores = _score(bench, {"100": "C", "101": "C. a car", "102": "a car"})
    assert [v["score"] for v in verdicts] == [1, 0, 0]
    assert (scores["value"], scores["protocol"]["name"]) == (pytest.approx(1 / 3), "llava-seed")


# ---------------------------------------------------------------------------------------------- MME


def test_mme_prompt_and_perception_headline(tmp_path):
    for task, answers in (("existence", ("Yes", "No")), ("code_reasoning", ("Yes", "No"))):
        png(tmp_path / task / "0001.png")
        (tmp_path / task / "0001.txt").write_text(
            f"Is there a dog in this image? Please answer yes or no.\t{answers[0]}\n"
            f"Is there a cat in this image? Please answer yes or no.\t{answers[1]}\n")
    bench = load_benchmark("mme", "mme", tmp_path)
    sample = next(s for s in bench.samples if s.id == "existence/0001-0")
    assert sample.question == "Is there a dog in this image? Please answer yes or no."  # kept as MME writes it
    assert prompt_text(sample) == f"<image>\nIs there a dog in this image?\n{SHORT_SUFFIX}"
    answers = {"existence/0001-0": "Yes", "existence/0001-1": "No",
               "code_reasoning/0001-0": "Yes", "code_reasoning/0001-1": "Yes"}
    _, scores = _score(bench, answers)
    assert (scores["main"], scores["value"]) == ("perception", pytest.approx(200.0))
    assert scores["cognition"] == pytest.approx(50.0)  # acc 1/2, acc+ 0
    assert "total" not in scores and scores["protocol"]["name"] == "mme"


# ------------------------------------------------------------------------------------ VQAv2, TextVQA


def _vqav2(tmp_path: Path, answers_by_question: dict[int, list[str]]) -> Benchmark:
    qs = {"questions": [{"image_id": 42, "question": "What?", "question_id": qid} for qid in answers_by_question]}
    anns = {"annotations": [{"question_id": qid, "image_id": 42, "answer_type": "other", "question_type": "what",
                             "multiple_choice_answer": answers[0],
                             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                         for i, a in enumerate(answers)]}
                            for qid, answers in answers_by_question.items()]}
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(qs))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(anns))
    png(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    return load_benchmark("vqav2", "vqav2", tmp_path)


def test_vqav2_scores_as_the_official_script(tmp_path):
    bench = _vqav2(tmp_path, {1: ["t-shirt"] * 10, 2: ["t-shirt"] * 9 + ["shirt"], 3: ["2"] * 10,
                              4: ["im"] * 10, 5: ["whyll"] * 3 + ["why'll"] * 3 + ["x"] * 4})
    assert bench.protocol == "vqav2"
    verdicts, scores = _score(bench, {"1": "t-shirt", "2": "T-shirt", "3": "Two.", "4": "im", "5": "whyll"})
    # 1: ten identical references are compared as written; the prediction becomes "t shirt".
    # 4: "im" is not in the official table, so it stays "im". 5: "whyll" → "why'll" (3 of 10 → 0.9).
    assert [v["score"] for v in verdicts] == [0.0, 1.0, 1.0, 1.0, pytest.approx(0.9)]
    assert [v["parsed"] for v in verdicts] == ["t shirt", "t shirt", "2", "im", "why'll"]
    assert scores["protocol"]["name"] == "vqav2"


def test_textvqa_scores_with_the_m4c_processor(tmp_path):
    data = {"dataset_name": "textvqa", "dataset_type": "val", "dataset_version": "0.5.1", "data": [
        {"question_id": 1, "question": "What brand?", "image_id": "abc", "image_classes": [], "flickr_original_url": "",
         "answers": ["mcdonald's", "mcdonald's", "mcdonald 's"] + ["burger king"] * 7},
        {"question_id": 2, "question": "What word?", "image_id": "abc", "image_classes": [], "flickr_original_url": "",
         "answers": ["cocacola"] * 10}]}
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps(data))
    png(tmp_path / "train_images" / "abc.jpg")
    bench = load_benchmark("textvqa", "textvqa", path)
    verdicts, scores = _score(bench, {"1": "McDonald's", "2": "coca,cola"})
    assert [v["score"] for v in verdicts] == [pytest.approx(0.9), 1.0]
    assert [v["parsed"] for v in verdicts] == ["mcdonald 's", "cocacola"]
    assert (scores["value"], scores["protocol"]["name"]) == (pytest.approx(0.95), "textvqa-m4c")
