"""Does a model use a word it has just been told? Held-out multiple choice and yes/no, asked as evaluation
asks them and again after an earlier turn that names the picture's colour or shape.

    python scripts/named_answer.py runs/demo [--model DIR] [--source shapes]

The earlier turn is the picture with the short-answer colour (or shape) question, answered with the
picture's true label; the question under test follows without the picture, as a later turn of a
finetuning conversation would. A model that compares a word of the question with a word it was given
answers the colour questions right after "colour named" whatever it sees; one that has learnt only each
format's most frequent answer scores the same in every condition. One JSON line per format and
condition: accuracy and the answers' counts (chance: multiple choice 0.25, yes/no 0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from vora_core.data.conversations import IMAGE
from vora_core.data.questions import QUESTIONS, SHORT_SUFFIX, Sample
from vora_core.eval.formats import judge
from vora_core.eval.heldout import build_heldout, labels_path, read_labels
from vora_core.eval.prompts import PromptEncoder
from vora_core.eval.runner import load_model, predict

CONDITIONS = ("alone", "colour named", "shape named")


class NamedEncoder(PromptEncoder):
    """Renders the question after `before`, an earlier (user, assistant) turn; the picture stays with it."""

    before: tuple[str, str] | None = None

    def render(self, user_text: str) -> str:
        if self.before is None:
            return super().render(user_text)
        first, answer = self.before
        messages = [{"role": "user", "content": first}, {"role": "assistant", "content": answer},
                    {"role": "user", "content": user_text.replace(IMAGE + "\n", "")}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answers(loaded, samples: list[Sample], label_of: dict[str, dict], named: str | None) -> dict[str, str]:
    if named is None:
        loaded.encoder.before = None
        return predict(loaded, samples, 16, 8)[0]
    out: dict[str, str] = {}
    for s in samples:  # one at a time: each question has its own earlier turn
        label = label_of[s.id.rsplit("/", 1)[0]]
        loaded.encoder.before = (f"{IMAGE}\n{QUESTIONS[named]}\n{SHORT_SUFFIX}", label[named])
        out.update(predict(loaded, [s], 1, 8)[0])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--model", type=Path, default=None, help="default: RUN_DIR/finetune/final")
    p.add_argument("--source", default="shapes")
    a = p.parse_args()
    source_dir = a.run_dir / "sources" / a.source
    if not labels_path(source_dir).exists():
        p.error(f"{labels_path(source_dir)} not found; give a run directory whose download stage has run")
    loaded = load_model(a.model or a.run_dir / "finetune" / "final", device="cpu")
    loaded.encoder = NamedEncoder(loaded.tokenizer, loaded.model.config)
    label_of = {row["row_id"]: row for row in read_labels(labels_path(source_dir))}
    for kind in ("mc", "yesno"):
        bench = build_heldout(a.source, source_dir, kind)
        for condition in CONDITIONS:
            named = None if condition == "alone" else condition.split()[0]
            got = answers(loaded, bench.samples, label_of, named)
            right = [judge(s, got[s.id], bench.protocol)["score"] for s in bench.samples]
            print(json.dumps({"format": kind, "condition": condition, "accuracy": round(sum(right) / len(right), 4),
                              "questions": len(right), "answers": dict(Counter(got.values()).most_common(6))}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
