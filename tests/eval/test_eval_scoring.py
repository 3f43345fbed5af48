"""Scoring against hand-computed cases: VQA normalisation and soft accuracy, POPE, MME, choices."""

from __future__ import annotations

import pytest

from vora_core.eval import scoring
from vora_core.eval.formats import MC_SUFFIX, SHORT_SUFFIX, Sample, judge, prompt_text, score_benchmark

# ------------------------------------------------------------------------------ VQA normalisation


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("two", "2"),
        ("2", "2"),
        ("a dog", "dog"),
        ("The Dog", "dog"),
        ("an apple", "apple"),
        ("yes.", "yes"),
        ("Yes", "yes"),
        ("dont", "don't"),
        ("doesnt know", "doesn't know"),
        ("3.5", "3.5"),
        ("1,000", "1000"),           # a digit,digit group: commas removed, not spaced
        ("dog, cat", "dog cat"),      # a mark next to a space is removed
        ("black/white", "black white"),  # otherwise it becomes a space
        ("  Two Dogs.\n", "2 dogs"),
        ("none", "0"),
        ("it's", "it's"),             # apostrophes are kept
        ("(left)", "left"),
        ("...", ""),
    ],
)
def test_normalize_answer(raw, normal):
    assert scoring.normalize_answer(raw) == normal


def test_vqa_equivalent_forms_match():
    assert scoring.vqa_accuracy("two", ["2"] * 10) == 1.0
    assert scoring.vqa_accuracy("2", ["two"] * 10) == 1.0
    assert scoring.vqa_accuracy("a dog", ["dog"] * 10) == 1.0
    assert scoring.vqa_accuracy("yes.", ["yes"] * 10) == 1.0
    assert scoring.vqa_accuracy("cat", ["dog"] * 10) == 0.0


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        # k of 10 humans agree. Leaving out a matching one leaves k-1, a non-matching one leaves k:
        # mean over the 10 subsets of min(count/3, 1).
        (1, (1 * 0 + 9 * (1 / 3)) / 10),          # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),    # 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),          # 0.9
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_soft_accuracy_over_ten_subsets(matching, expected):
    answers = ["red"] * matching + ["blue"] * (10 - matching)
    assert scoring.vqa_accuracy("Red.", answers) == pytest.approx(expected)
    assert scoring.vqa_accuracy("red", answers) == pytest.approx({1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 10: 1.0}[matching])


def test_exact_match():
    assert scoring.exact_match("The top left.", "top left")
    assert scoring.exact_match("Three", ["3", "three"])
    assert not scoring.exact_match("top", "top left")


# ------------------------------------------------------------------------------------------ POPE


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("Yes, there is a dog in the image.", "yes"),
        ("There is not a dog.", "no"),
        ("Yes. There is no cat though.", "yes"),   # only the first sentence counts
        ("No, there is none.", "no"),            # the comma is dropped before splitting
        ("Nothing like that", "yes"),            # "Nothing" is not the word "no"
        ("", "yes"),
    ],
)
def test_pope_parsing(text, parsed):
    assert scoring.pope_answer(text) == parsed


def test_pope_metrics_hand_computed():
    preds = ["yes", "yes", "yes", "no", "no", "yes"]
    labels = ["yes", "yes", "no", "no", "yes", "no"]
    m = scoring.pope_metrics(preds, labels)
    # TP=2 (0,1), FP=2 (2,5), TN=1 (3), FN=1 (4)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 2, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 4/7
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["yes_ratio"] == pytest.approx(4 / 6)


def test_pope_metrics_no_positive_predictions():
    m = scoring.pope_metrics(["no", "no"], ["yes", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.5, 0.0)


# ------------------------------------------------------------------------------------------- MME


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("Yes", "yes"), ("no", "no"), ("Yes, it is.", "yes"), ("No.", "no"), ("Not sure", "no"),
     ("maybe yes", "other"), ("I think so", "other")],
)
def test_mme_parsing(text, parsed):
    assert scoring.mme_answer(text) == parsed


def test_mme_acc_plus_and_totals_hand_computed():
    records = [
        # existence: image a both right, image b one right → acc 3/4, acc+ 1/2 → 125
        ("existence", "a", "yes", "Yes"), ("existence", "a", "no", "No"),
        ("existence", "b", "yes", "Yes"), ("existence", "b", "yes", "No"),
        # count: both images all right → 200
        ("count", "c", "yes", "Yes"), ("count", "c", "no", "No"),
        ("count", "d", "yes", "Yes"), ("count", "d", "no", "No"),
        # code_reasoning (cognition): "other" is wrong → acc 1/2, acc+ 0 → 50
        ("code_reasoning", "e", "yes", "Yes"), ("code_reasoning", "e", "other", "No"),
    ]
    s = scoring.mme_scores(records)
    assert s["subtasks"]["existence"]["acc"] == 0.75
    assert s["subtasks"]["existence"]["acc_plus"] == 0.5
    assert s["subtasks"]["existence"]["score"] == pytest.approx(125.0)
    assert s["subtasks"]["count"]["score"] == pytest.approx(200.0)
    assert s["subtasks"]["code_reasoning"]["score"] == pytest.approx(50.0)
    assert s["perception"] == pytest.approx(325.0)
    assert s["cognition"] == pytest.approx(50.0)
    assert s["total"] == pytest.approx(375.0)


# ------------------------------------------------------------------------------- multiple choice

OPTS = ["red", "blue", "green", "yellow"]


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"), ("B.", "B"), ("(C)", "C"), ("C) green", "C"), ("D: yellow", "D"),
        ("The answer is B.", "B"), ("answer: (A)", "A"), ("blue", "B"), ("B blue", "B"),
        ("A red circle", None),   # the article, not option A
        ("E", None),              # no option E
        ("purple", None), ("", None),
    ],
)
def test_parse_choice(text, letter):
    assert scoring.parse_choice(text, OPTS) == letter


# ------------------------------------------------------------------------------ formats/aggregate


def test_prompts_carry_the_protocol_suffixes():
    mc = Sample("1", "mc", "What colour?", ["x.png"], "B", options=["red", "blue"])
    assert prompt_text(mc) == f"<image>\nWhat colour?\nA. red\nB. blue\n{MC_SUFFIX}"
    yn = Sample("2", "yesno", "Is there a dog?", ["a.png", "b.png"], "yes")
    assert prompt_text(yn) == f"<image>\n<image>\nIs there a dog?\n{SHORT_SUFFIX}"
    text_only = Sample("3", "short", "What is 2+2?", [], "4")
    assert prompt_text(text_only) == f"What is 2+2?\n{SHORT_SUFFIX}"


def test_circular_mc_needs_every_rotation_right():
    samples = [
        Sample("q1-0", "mc", "q", [], "A", options=["x", "y"], meta={"group": "q1", "category": "c1"}),
        Sample("q1-1", "mc", "q", [], "B", options=["y", "x"], meta={"group": "q1", "category": "c1"}),
        Sample("q2-0", "mc", "q", [], "A", options=["u", "v"], meta={"group": "q2", "category": "c2"}),
        Sample("q2-1", "mc", "q", [], "B", options=["v", "u"], meta={"group": "q2", "category": "c2"}),
    ]
    preds = ["A", "B", "A", "A"]  # q1 right in both rotations, q2 in one
    verdicts = [judge(s, p) for s, p in zip(samples, preds, strict=True)]
    scores = score_benchmark("mc", samples, verdicts)
    assert scores["accuracy"] == 0.75
    assert scores["circular_accuracy"] == 0.5
    assert (scores["main"], scores["value"]) == ("circular_accuracy", 0.5)
    assert scores["by_category"] == {"c1": 1.0, "c2": 0.5}
    assert scores["unparsed"] == 0


def test_pope_benchmark_headline_is_mean_category_f1():
    samples = [Sample(str(i), "yesno", "q", [], lab, meta={"category": cat})
               for i, (lab, cat) in enumerate([("yes", "random"), ("no", "random"), ("yes", "popular"),
                                               ("no", "popular")])]
    preds = ["Yes", "No", "Yes", "Yes, I think"]
    scores = score_benchmark("yesno", samples, [judge(s, p) for s, p in zip(samples, preds, strict=True)])
    assert scores["by_category"]["random"]["f1"] == 1.0
    assert scores["by_category"]["popular"]["f1"] == pytest.approx(2 / 3)  # P=1/2, R=1
    assert scores["value"] == pytest.approx((1 + 2 / 3) / 2)
    assert scores["accuracy"] == 0.75 and scores["yes_ratio"] == 0.75


def test_mme_benchmark_uses_image_pairs():
    samples = [Sample(f"{i}", "mme", "q", [], ans, meta={"subtask": "color", "image": img})
               for i, (ans, img) in enumerate([("Yes", "a"), ("No", "a"), ("Yes", "b"), ("No", "b")])]
    preds = ["Yes", "No", "Yes", "Yes"]
    scores = score_benchmark("mme", samples, [judge(s, p) for s, p in zip(samples, preds, strict=True)])
    assert scores["subtasks"]["color"]["score"] == pytest.approx(125.0)
    assert (scores["main"], scores["value"]) == ("total", pytest.approx(125.0))
