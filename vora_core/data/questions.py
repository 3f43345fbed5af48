"""Questions about images, as benchmarks and training data ask them: `Sample` (one question),
`prompt_text` (the LLaVA-1.5 user turn), and the synthetic shapes' question builder
(`question_samples`). Both the evaluate stage (held-out benchmarks, vora_core.eval) and the mix stage
(`shapes_vqa` training data, vora_core.data.text) use it, so the training prompts are the evaluation prompts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vora_core.data.conversations import IMAGE
from vora_core.data.sources import BACKGROUNDS, COLOURS, POSITIONS, SHAPES

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


FORMATS = ("mc", "yesno", "vqa", "short", "mme")

MC_SUFFIX = "Answer with the option's letter from the given choices directly."

SHORT_SUFFIX = "Answer the question using a single word or phrase."


# An image is a file path or the encoded bytes of an image file (MMBench ships base64 in its tsv).
ImageRef = str | bytes


@dataclass
class Sample:
    """One benchmark question. `answer`: mc → letter; yesno/mme → "yes"/"no"; vqa → list of human
    answers; short → an answer or a list of accepted answers. `meta` keeps what scoring groups by
    (`category`, MME `subtask` and `image`, CircularEval `group`) and anything worth keeping in the
    predictions file."""

    id: str
    format: str
    question: str
    images: list[ImageRef]
    answer: str | list[str]
    options: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"sample {self.id}: unknown format {self.format!r}; formats are {FORMATS}")
        if self.format == "mc" and not self.options:
            raise ValueError(f"sample {self.id}: a multiple-choice sample needs options")


MME_INSTRUCTION = "Please answer yes or no."


def prompt_text(sample: Sample) -> str:
    """The user turn: one `<image>` line per image, the question, options, and the format's suffix.
    MME's own "Please answer yes or no." is replaced by the short-answer suffix, as LLaVA-1.5 runs MME."""
    parts = [IMAGE] * len(sample.images)
    if sample.format == "mc":
        options = "\n".join(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(sample.options or []))
        parts += [sample.question, options, MC_SUFFIX]
    elif sample.format == "mme":
        parts += [sample.question.replace(MME_INSTRUCTION, "").strip(), SHORT_SUFFIX]
    else:
        parts += [sample.question, SHORT_SUFFIX]
    return "\n".join(p for p in parts if p)


# ------------------------------------------------------------------------- synthetic shapes


KINDS = ("mc", "yesno", "short")

QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is shown in the image?",
    "presence": "Is there a {colour} {shape} in the image?",
    "position": "Where is the shape in the image?",
    "background": "What colour is the background?",
}

def _options(rng: random.Random, correct: str, vocabulary: list[str], n: int = 4) -> tuple[list[str], str]:
    others = rng.sample([v for v in vocabulary if v != correct], min(n - 1, len(vocabulary) - 1))
    options = [correct, *others]
    rng.shuffle(options)
    return options, LETTERS[options.index(correct)]


def question_samples(rows: list[dict], image_of: Callable[[dict], str], kind: str, seed: int = 0) -> list[Sample]:
    """The questions of `kind` about labelled shapes images (`rows`: label rows; `image_of(row)`: its image).
    The held-out benchmarks and the mix stage's `shapes_vqa` training data both come from here, so the
    training prompts are the evaluation prompts."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    samples: list[Sample] = []
    colours, shapes = list(COLOURS), list(SHAPES)
    for i, row in enumerate(rows):
        rid, image = row["row_id"], [image_of(row)]

        def rng(question: str, rid: str = rid) -> random.Random:
            return random.Random(f"{seed}/{rid}/{question}")

        if kind == "mc":
            for what, vocab in (("colour", colours), ("shape", shapes)):
                options, letter = _options(rng(what), row[what], vocab)
                samples.append(Sample(f"{rid}/{what}", "mc", QUESTIONS[what], image, letter, options=options,
                                      meta={"category": what}))
        elif kind == "yesno":
            category = "colour" if i % 2 == 0 else "shape"
            wrong = dict(row)
            vocab = colours if category == "colour" else shapes
            wrong[category] = rng("presence").choice([v for v in vocab if v != row[category]])
            for label, r in (("yes", row), ("no", wrong)):
                question = QUESTIONS["presence"].format(colour=r["colour"], shape=r["shape"])
                samples.append(Sample(f"{rid}/presence-{label}", "yesno", question, image, label,
                                      meta={"category": category}))
        else:
            for what in ("colour", "shape", "position", "background"):
                samples.append(Sample(f"{rid}/{what}", "short", QUESTIONS[what], image, row[what],
                                      meta={"category": what}))
    return samples


# The vocabularies the questions draw from (exported for the docs and the mix stage's templates).
VOCABULARY = {"colour": list(COLOURS), "shape": list(SHAPES), "position": list(POSITIONS),
              "background": list(BACKGROUNDS)}
