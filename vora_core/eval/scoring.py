"""Answer parsing and metrics of the benchmarks' reference protocols (pure Python, no model needed).

* `normalize_answer` / `vqa_accuracy`: the official VQA evaluation script's normalisation and soft
  accuracy (min(#humans who gave the answer / 3, 1) over the ten leave-one-annotator-out subsets).
* `m4c_normalize` / `textvqa_accuracy`: TextVQA's, as the m4c evaluator LLaVA-1.5 uses.
* `pope_answer` / `pope_metrics`: POPE's parsing (first sentence; the word "No"/"no"/"not" → no, else
  yes) and accuracy, precision, recall, F1, yes-ratio with "yes" as the positive class.
* `mme_answer` / `mme_scores`: MME's parsing (exact yes/no, else the first four characters) and per
  subtask accuracy + accuracy+ (every question of an image right), score = (acc + acc+)·100, summed
  into the perception and cognition scores.
* `parse_choice_llava` (LLaVA-1.5's ScienceQA rule), `parse_choice_exact` (its SEED-Bench rule),
  `parse_choice_mmbench` (MMBench's matcher) and `parse_choice_lenient` (a second, lenient metric).
* `exact_match`: normalised equality (the held-out short answers).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

from vora_core.data.questions import LETTERS

# ------------------------------------------------------------------------------- VQA normalisation

# The official VQA evaluation's rules (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py).
# A mark is removed when it touches a space or the text has a digit,digit group, else turned into a space.
# Periods, apostrophes and colons are not marks: a period goes unless a digit follows it.
_MARKS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern, typo included: "not followed by a digit"
# The official script passes re.UNICODE (= 32) where `count` goes: at most 32 periods are removed.
_PERIOD_COUNT = 32
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# The official contraction table, entry for entry (the m4c processor's is the same). Its quirks are kept:
# the capitalised keys ("Im", "Ive", "Id've") never match lower-cased words, and "somebody'd" maps to
# "somebodyd".
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def strip_punctuation(text: str) -> str:
    """The official `processPunctuation`: "3,000" → "3000"; "dog, cat" → "dog cat"; "black/white" →
    "black white"; "yes." → "yes" (conditions are tested on the text as given, as the official does)."""
    has_number_group = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _MARKS:
        if has_number_group or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def _digits_articles(text: str) -> str:
    """The official `processDigitArticle`: lower case, number words → digits, articles dropped, then
    apostrophe-less contractions restored from the table."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """The VQA evaluation's answer normalisation: "Two dogs." → "2 dogs", "a dog" → "dog", "dont" → "don't"."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(strip_punctuation(text))


def m4c_normalize(text: str) -> str:
    """TextVQA's normaliser (the m4c / EvalAI answer processor LLaVA's eval_textvqa uses): lower case,
    "," and "?" deleted, "'s" split off ("man's" → "man 's"), then the VQA rules."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(text)


def _soft_accuracy(pred: str, answers: Sequence[str]) -> float:
    """Mean over annotators of min(#other annotators who gave `pred` / 3, 1)."""
    matches = [a == pred for a in answers]
    total = sum(matches)
    if len(answers) == 1:  # not in the official files (always ten); one reference = exact match
        return float(matches[0])
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 soft accuracy exactly as the official script computes it.

    The prediction is normalised (`normalize_answer`). The references are taken as written when all of
    them are identical, else with `strip_punctuation` only (the annotation files hold processed answers;
    no number-word or article rule is applied to them). Then: for each annotator, min(#others who gave
    the prediction / 3, 1), averaged over annotators.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    refs = list(answers) if len(set(answers)) == 1 else [strip_punctuation(a) for a in answers]
    return _soft_accuracy(normalize_answer(prediction), refs)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA soft accuracy as the m4c evaluator LLaVA uses computes it: prediction and every reference
    through `m4c_normalize`, then the same 10-choose-9 formula."""
    if not answers:
        raise ValueError("textvqa_accuracy needs at least one reference answer")
    return _soft_accuracy(m4c_normalize(prediction), [m4c_normalize(a) for a in answers])


def exact_match(prediction: str, answers: str | Sequence[str]) -> bool:
    """Normalised exact match against one answer or any of several."""
    refs = [answers] if isinstance(answers, str) else list(answers)
    pred = normalize_answer(prediction)
    return any(normalize_answer(a) == pred for a in refs)


# -------------------------------------------------------------------------------------------- POPE


def pope_answer(text: str) -> str:
    """POPE's parsing: keep the text before the first period, drop commas; the word "No", "no" or
    "not" (split on spaces, case as written) means "no", anything else "yes"."""
    first = text.split(".", 1)[0].replace(",", "")
    words = first.split(" ")
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1 ("yes" = positive) and the share of "yes" predictions.

    `predictions` are parsed answers ("yes"/"no"), `labels` the ground truth ("yes"/"no").
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels, strict=True):
        pos, truth = pred == "yes", label.strip().lower() == "yes"
        tp += pos and truth
        fp += pos and not truth
        tn += (not pos) and not truth
        fn += (not pos) and truth
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0, "n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


# --------------------------------------------------------------------------------------------- MME

MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_answer(text: str) -> str:
    """MME's parsing: "yes"/"no" exactly, else "yes"/"no" inside the first four characters, else "other"."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_scores(records: Iterable[tuple[str, str, str, str]]) -> dict:
    """MME scores from (subtask, image key, parsed prediction, label) records.

    Per subtask: acc = share of questions right; acc+ = share of images whose questions are all right;
    score = (acc + acc+)·100 (at most 200). Totals: perception = sum over the perception subtasks,
    cognition = sum over the cognition subtasks (each over the subtasks present).
    """
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for subtask, image, pred, label in records:
        by_task[subtask][image].append(pred == label.strip().lower())
    subtasks = {}
    for subtask, images in sorted(by_task.items()):
        answers = [ok for oks in images.values() for ok in oks]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(oks) for oks in images.values()) / len(images)
        subtasks[subtask] = {
            "acc": acc, "acc_plus": acc_plus, "score": (acc + acc_plus) * 100,
            "questions": len(answers), "images": len(images),
        }
    perception = sum(s["score"] for t, s in subtasks.items() if t in MME_PERCEPTION)
    cognition = sum(s["score"] for t, s in subtasks.items() if t in MME_COGNITION)
    return {"perception": perception, "cognition": cognition, "subtasks": subtasks}


# ----------------------------------------------------------------------------------- multiple choice

_LLAVA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # the `.` is any character, as in LLaVA's script


def parse_choice_llava(text: str, n_options: int) -> str | None:
    """LLaVA-1.5's ScienceQA rule (llava/eval/eval_science_qa.py): the bare letter, a letter followed by
    ". " ("B. blue"), or exactly one "The answer is X" followed by any character; a letter beyond the
    options, or anything else, is None (scored wrong). `(B)`, `B.`, `B) blue`, `Answer: B` and an
    option's text are None."""
    letters = LETTERS[:n_options]
    if len(text) == 1:
        letter = text
    elif len(text) >= 3 and text[0] in LETTERS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _LLAVA_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else ""
    return letter if letter and letter in letters else None


def parse_choice_exact(text: str, n_options: int) -> str | None:
    """LLaVA-1.5's SEED-Bench rule (scripts/convert_seed_for_submission.py): the answer is the letter
    itself or nothing."""
    return text if len(text) == 1 and text in LETTERS[:n_options] else None


# MMBench's matcher (`can_infer` in MMBench / VLMEvalKit, without the GPT fallback).
_MMBENCH_SEPARATORS = ".()[],:;!*#{}"
_MMBENCH_REFUSALS = (
    "Sorry, I can't help with images of people yet.", "I can't process this file.",
    "I'm sorry, but without the image provided", "Cannot determine the answer",
)
MMBENCH_NO_ANSWER = "Z"  # MMBench's code for "the model declined": always wrong


def parse_choice_mmbench(text: str, options: Sequence[str]) -> str | None:
    """MMBench's rule: the separators .()[],:;!*#{} become spaces; when exactly one option letter is a
    word of what remains, that letter ("Option A", "A is correct", "**A**", "(A) cat", "A red circle"
    → A). Else when exactly one option's text occurs in the answer (case-insensitive), that option.
    A refusal, or no letter but a word "Z", is "Z" (wrong). Else None."""
    letters = LETTERS[: len(options)]
    if any(refusal in text for refusal in _MMBENCH_REFUSALS):
        return MMBENCH_NO_ANSWER
    cleaned = text
    for sep in _MMBENCH_SEPARATORS:
        cleaned = cleaned.replace(sep, " ")
    words = cleaned.split()
    named = [c for c in letters if c in words]
    if len(named) == 1:
        return named[0]
    if not named and MMBENCH_NO_ANSWER in words:
        return MMBENCH_NO_ANSWER
    lower = text.lower()
    hits = [c for c, opt in zip(letters, options, strict=False) if str(opt).lower() in lower]
    return hits[0] if len(hits) == 1 else None


_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:\)|\.|:|$)")
_ANSWER_IS = re.compile(r"answer(?: is|:)\s*\(?([A-Z])\b\)?", re.IGNORECASE)


def parse_choice_lenient(text: str, options: Sequence[str]) -> str | None:
    """A lenient reading (a second metric, never a headline): the bare letter, a letter then ".", ")"
    or ":" ("B. blue", "(B)"), "The answer is B" / "answer: B", the letter followed by its option's
    text ("B blue"), or exactly one option's text ("blue"). A sentence starting with the article "A"
    ("A red circle") is not read as option A."""
    letters = LETTERS[: len(options)]
    text = text.strip()
    if not text:
        return None
    m = _LEADING_LETTER.match(text)
    if m and m.group(1) in letters:
        return m.group(1)
    m = _ANSWER_IS.search(text)
    if m and m.group(1) in letters:
        return m.group(1)
    pred = normalize_answer(text)
    if len(text) > 2 and text[0] in letters and text[1] == " ":
        if normalize_answer(text[2:]) == normalize_answer(options[letters.index(text[0])]):
            return text[0]
    hits = [letters[i] for i, opt in enumerate(options) if normalize_answer(opt) == pred and pred]
    return hits[0] if len(hits) == 1 else None
