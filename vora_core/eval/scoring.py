"""Answer parsing and metrics of the LLaVA-1.5 evaluation protocol (pure Python, no model needed).

* `normalize_answer`: the VQA answer normalisation (punctuation, periods, number words → digits,
  articles dropped, apostrophe-less contractions restored, lower case).
* `vqa_accuracy`: VQAv2 soft accuracy — min(#humans who gave the answer / 3, 1), averaged over the ten
  leave-one-annotator-out subsets of 9.
* `pope_answer` / `pope_metrics`: POPE's parsing (first sentence; the word "No"/"no"/"not" → no, else
  yes) and accuracy, precision, recall, F1, yes-ratio with "yes" as the positive class.
* `mme_answer` / `mme_scores`: MME's parsing (exact yes/no, else the first four characters) and per
  subtask accuracy + accuracy+ (every question of an image right), score = (acc + acc+)·100, summed
  into the perception and cognition totals.
* `parse_choice`: the option letter of a multiple-choice answer; `exact_match`: normalised equality.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

# ------------------------------------------------------------------------------- VQA normalisation

# Marks that are removed (next to a space, or in a text with a digit,digit group) or else turned into a
# space. Periods, apostrophes and colons are not in the set: periods have their own rule, apostrophes
# belong to contractions.
_MARKS = ";/[]\"{}()=+\\_-><@`,?!"
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")  # a period survives only as a decimal point (a digit follows)
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Contractions typed without their apostrophe → the usual spelling. Forms that are also ordinary words
# (its, were, well, ill, hell, shell, wed, id) are left alone.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "couldntve": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll",
    "lets": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "shant": "shan't",
    "shed": "she'd", "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "somebodys": "somebody's", "someones": "someone's", "somethings": "something's", "thatll": "that'll",
    "thats": "that's", "thered": "there'd", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyd": "why'd", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all",
    "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
    has_number_group = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _MARKS:
        if mark not in out:
            continue
        # "3,000" → "3000"; "dog, cat" → "dog cat"; "black/white" → "black white".
        if has_number_group or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out)


def normalize_answer(text: str) -> str:
    """Normalise a VQA answer: "Two dogs." → "2 dogs", "a dog" → "dog", "yes." → "yes", "dont" → "don't"."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    words = []
    for word in _strip_punctuation(text).lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 soft accuracy of one prediction against the human answers (normally ten).

    For each annotator, accuracy over the others = min(#others who gave the prediction / 3, 1); the
    result is the mean over annotators. Prediction and answers are normalised alike.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    pred = normalize_answer(prediction)
    matches = [normalize_answer(a) == pred for a in answers]
    total = sum(matches)
    if len(answers) == 1:
        return float(matches[0])
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(answers)


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
    return {"perception": perception, "cognition": cognition, "total": perception + cognition,
            "subtasks": subtasks}


# ----------------------------------------------------------------------------------- multiple choice

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:\)|\.|:|$)")
_ANSWER_IS = re.compile(r"answer(?: is|:)\s*\(?([A-Z])\b\)?", re.IGNORECASE)


def parse_choice(text: str, options: Sequence[str]) -> str | None:
    """The option letter an answer names, or None when it names none.

    Accepted: the bare letter ("B"), a letter then ".", ")" or ":" ("B. blue", "(B)"), "The answer is B",
    the letter followed by its option's text ("B blue"), or exactly one option's text ("blue").
    A sentence starting with the article "A" ("A red circle") is not read as option A.
    """
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
