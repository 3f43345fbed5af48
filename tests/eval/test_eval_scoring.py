"""Scoring against hand-computed cases: VQA normalisation and soft accuracy, POPE, MME, choices."""

from __future__ import annotations

import pytest

from vora_core.data.questions import MC_SUFFIX, SHORT_SUFFIX, Sample, prompt_text
from vora_core.eval import scoring
from vora_core.eval.formats import judge, score_benchmark

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
    assert scoring.vqa_accuracy("a dog", ["dog"] * 10) == 1.0
    assert scoring.vqa_accuracy("yes.", ["yes"] * 10) == 1.0
    assert scoring.vqa_accuracy("cat", ["dog"] * 10) == 0.0


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        # Apostrophe-less words the official table does not list stay as they are ...
        ("im", "im"), ("ive", "ive"), ("lets", "lets"), ("shed", "shed"),
        # ... and every entry it does list is applied, quirks included.
        ("whyll", "why'll"), ("oughtnt", "oughtn't"), ("couldnt've", "couldn't've"), ("youd've", "you'd've"),
        ("somebody'd", "somebodyd"), ("hadnt've", "hadn't've"), ("y'allll", "y'all'll"), ("somethingd", "something'd"),
        ("Im", "im"),  # the table's capitalised keys never match a lower-cased word
    ],
)
def test_vqa_contractions_are_the_official_table(raw, normal):
    assert scoring.normalize_answer(raw) == normal


def test_vqa_references_as_the_official_script_takes_them():
    # All ten identical: the references are compared as written, the prediction normalised.
    assert scoring.vqa_accuracy("2", ["two"] * 10) == 0.0
    assert scoring.vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0  # prediction → "t shirt"
    # Disagreeing references get the punctuation rule only (no number words, no articles).
    assert scoring.vqa_accuracy("t-shirt", ["t-shirt"] * 9 + ["shirt"]) == 1.0
    assert scoring.vqa_accuracy("2", ["two"] * 9 + ["2"]) == pytest.approx(0.3)
    assert scoring.vqa_accuracy("the dog", ["the dog"] * 9 + ["dog"]) == pytest.approx(0.3)


def test_textvqa_uses_the_m4c_processor():
    assert scoring.m4c_normalize("McDonald's, Inc?") == "mcdonald 's inc"
    assert scoring.m4c_normalize("coca,cola") == "cocacola"
    answers = ["mcdonald's"] * 2 + ["mcdonald 's"] + ["burger king"] * 7
    assert scoring.textvqa_accuracy("McDonald's", answers) == pytest.approx(0.9)
    assert scoring.vqa_accuracy("McDonald's", answers) == pytest.approx(0.6)  # the VQA script's reading
    assert scoring.textvqa_accuracy("coca,cola", ["cocacola"] * 10) == 1.0
    assert scoring.vqa_accuracy("coca,cola", ["cocacola"] * 10) == 0.0


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
    assert "total" not in s


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
def test_parse_choice_lenient(text, letter):
    assert scoring.parse_choice_lenient(text, OPTS) == letter


@pytest.mark.parametrize(
    ("text", "llava", "seed", "mmbench"),
    [
        ("B", "B", "B", "B"),
        ("B. blue", "B", None, "B"),
        ("The answer is B.", "B", None, "B"),
        ("The answer is B", None, None, "B"),   # LLaVA's pattern wants a character after the letter
        ("(B)", None, None, "B"),
        ("B.", None, None, "B"),
        ("B) blue", None, None, "B"),
        ("Answer: B", None, None, "B"),
        ("Option B", None, None, "B"),
        ("B is correct", None, None, "B"),
        ("**B**", None, None, "B"),
        ("blue", None, None, "B"),              # MMBench: exactly one option's text in the answer
        ("A red circle", None, None, "A"),      # MMBench reads the article as option A
        ("B or C", None, None, None),
        ("E", None, None, None),
        ("Cannot determine the answer", None, None, "Z"),
        ("", None, None, None),
    ],
)
def test_parse_choice_per_protocol(text, llava, seed, mmbench):
    assert scoring.parse_choice_llava(text, len(OPTS)) == llava
    assert scoring.parse_choice_exact(text, len(OPTS)) == seed
    assert scoring.parse_choice_mmbench(text, OPTS) == mmbench


# ------------------------------------------------------------------------------ formats/aggregate


def test_prompts_carry_the_protocol_suffixes():
    mc = Sample("1", "mc", "What colour?", ["x.png"], "B", options=["red", "blue"])
    assert prompt_text(mc) == f"<image>\nWhat colour?\nA. red\nB. blue\n{MC_SUFFIX}"
    yn = Sample("2", "yesno", "Is there a dog?", ["a.png", "b.png"], "yes")
    assert prompt_text(yn) == f"<image>\n<image>\nIs there a dog?\n{SHORT_SUFFIX}"
    text_only = Sample("3", "short", "What is 2+2?", [], "4")
    assert prompt_text(text_only) == f"What is 2+2?\n{SHORT_SUFFIX}"


def test_circular_mc_needs_every_copy_right():
    samples = [
        Sample("q1-0", "mc", "q", [], "A", options=["x", "y"], meta={"group": "q1", "category": "c1"}),
        Sample("q1-1", "mc", "q", [], "B", options=["y", "x"], meta={"group": "q1", "category": "c1"}),
        Sample("q2-0", "mc", "q", [], "A", options=["u", "v"], meta={"group": "q2", "category": "c2"}),
        Sample("q2-1", "mc", "q", [], "B", options=["v", "u"], meta={"group": "q2", "category": "c2"}),
    ]
    preds = ["A", "B", "A", "A"]  # q1 right in both rotations, q2 in one
    verdicts = [judge(s, p, "mmbench") for s, p in zip(samples, preds, strict=True)]
    scores = score_benchmark("mc", samples, verdicts, "mmbench")
    assert scores["row_accuracy"] == 0.75 and "accuracy" not in scores
    assert scores["circular_accuracy"] == 0.5
    assert (scores["main"], scores["value"], scores["questions"]) == ("circular_accuracy", 0.5, 2)
    assert scores["by_category"] == {"c1": 1.0, "c2": 0.0}  # per question, as MMBench reports
    assert scores["unparsed"] == 0
    assert scores["protocol"]["name"] == "mmbench"


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
    assert (scores["main"], scores["value"]) == ("perception", pytest.approx(125.0))
    assert scores["cognition"] == 0.0
