"""Can the demo's tiny LLM learn to compare two words of its prompt, with no image at all?

The held-out multiple-choice and yes/no questions need the model to compare what it sees with a word of
the question (yes/no) or of an option (multiple choice). This probe gives the same questions in the
evaluator's own prompts, but with the picture replaced by a sentence that names it ("The shape is a red
circle."), and trains the tiny LLM on the answer token only, as finetuning does:

    python scripts/text_matching.py runs/demo/models/llm --tasks short,mc,yesno --steps 1200 --lr 3e-4

`short` asks for the colour (copying a word: every answer is predicted by one word of the prompt);
`mc` and `yesno` need a comparison (no single word of the prompt says anything about the answer).
`--lm-steps N` first trains N steps of the tiny LLM's reading practice (vora_core.train.reading:
a described shape, then twelve yes/no, lettered-option and what-is-it questions about it, every answer
token predicted), then the chat-format questions as above. Prints one JSON line per
`--every` steps with held-out accuracy per task (200 questions each, chance: mc 0.25, yesno 0.5).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vora_core.data.questions import LETTERS, MC_SUFFIX, SHORT_SUFFIX
from vora_core.data.sources import COLOURS, SHAPES
from vora_core.train.reading import KINDS, accuracy, reading_batch

TASKS = ("short", "mc", "yesno")


def question(rng: random.Random, task: str) -> tuple[str, str]:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    context = f"The shape is a {colour} {shape}."
    if task == "short":
        return f"{context}\nWhat colour is the shape?\n{SHORT_SUFFIX}", colour
    if task == "mc":
        options = [colour, *rng.sample([c for c in COLOURS if c != colour], 3)]
        rng.shuffle(options)
        lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        return f"{context}\nWhat colour is the shape?\n{lines}\n{MC_SUFFIX}", LETTERS[options.index(colour)]
    asked = colour if rng.random() < 0.5 else rng.choice([c for c in COLOURS if c != colour])
    return f"{context}\nIs there a {asked} {shape} in the image?\n{SHORT_SUFFIX}", "yes" if asked == colour else "no"


class Probe:
    def __init__(self, llm: str) -> None:
        self.tok = AutoTokenizer.from_pretrained(llm)
        self.model = AutoModelForCausalLM.from_pretrained(llm)

    def encode(self, rng: random.Random, task: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n questions, left-padded (the answer is predicted at the last position), and the answers' first tokens."""
        prompts, answers = [], []
        for _ in range(n):
            q, a = question(rng, task)
            text = self.tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                add_generation_prompt=True)
            prompts.append(self.tok.encode(text, add_special_tokens=False))
            answers.append(self.tok.encode(a, add_special_tokens=False)[0])
        return (*pad(prompts, left=True), torch.tensor(answers))

    def answer_loss(self, ids: torch.Tensor, mask: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, -1]
        return torch.nn.functional.cross_entropy(logits, answers)

    @torch.no_grad()
    def accuracy(self, held_out: dict[str, tuple]) -> dict[str, float]:
        out = {}
        for task, (ids, mask, answers) in held_out.items():
            guess = self.model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1)
            out[task] = round((guess == answers).float().mean().item(), 3)
        return out


def pad(seqs: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols], mask[i, cols] = torch.tensor(s), 1
    return ids, mask


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("llm", help="a tiny LLM directory (runs/demo/models/llm: randomly initialised)")
    p.add_argument("--tasks", default="short,mc,yesno", help=f"comma-separated, of {', '.join(TASKS)}")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--lm-steps", type=int, default=0, help="steps on reading texts first")
    p.add_argument("--reading-kinds", default=",".join(KINDS),
                   help=f"the reading practice's question kinds, comma-separated, of {', '.join(KINDS)}")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    tasks, kinds = a.tasks.split(","), tuple(a.reading_kinds.split(","))
    if unknown := [t for t in tasks if t not in TASKS]:
        p.error(f"unknown task(s) {', '.join(unknown)}; tasks are {', '.join(TASKS)}")
    if unknown := [k for k in kinds if k not in KINDS]:
        p.error(f"unknown reading kind(s) {', '.join(unknown)}; kinds are {', '.join(KINDS)}")
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    probe = Probe(a.llm)
    rng, held_rng = random.Random(a.seed), random.Random(a.seed + 10_000)
    held_out = {t: probe.encode(held_rng, t, 200) for t in TASKS}
    opt = torch.optim.AdamW(probe.model.parameters(), lr=a.lr, weight_decay=0.0)
    started = time.perf_counter()

    held_reading = reading_batch(probe.tok, random.Random(a.seed + 20_000), 64, kinds) if a.lm_steps else None

    def report(phase: str, step: int, loss: float) -> None:
        row = {"phase": phase, "step": step, "loss": round(loss, 4), **probe.accuracy(held_out)}
        if held_reading is not None:  # the reading texts' own questions, per kind
            row |= {f"reading/{k}": v for k, v in accuracy(probe.model, *held_reading).items()}
        print(json.dumps(row | {"seconds": round(time.perf_counter() - started)}), flush=True)

    for step in range(1, a.lm_steps + 1):
        ids, labels, _ = reading_batch(probe.tok, rng, a.batch, kinds)
        loss = probe.model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.every == 0:
            report("reading", step, loss.item())
    for step in range(1, a.steps + 1):
        loss = probe.answer_loss(*probe.encode(rng, tasks[step % len(tasks)], a.batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.every == 0:
            report("answers", step, loss.item())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
