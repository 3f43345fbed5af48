"""Reading practice for the demo's tiny LLM: the stand-in for the language pretraining a real LLM brings.

A yes/no or multiple-choice question is answered by comparing two things — what the picture shows and
a word of the question, or of an option. No single word of such a prompt says anything about its answer,
and a randomly initialised tiny LLM trained on one answer token per question does not find the
comparison in thousands of steps (README "The demo"; `scripts/text_matching.py`). Trained first on
texts that each ask twelve such questions about one described shape — every answer token predicted — it
finds it after a plateau (measured: yes/no texts at chance to step 1,600, 0.97 at 3,000; all three kinds
1.00 after 1,500), and then learns the evaluator's yes/no prompt in a few hundred steps. With
`model.tiny.llm_reading_steps > 0` the tiny LLM built into <workdir>/models/llm does that before VoRA's
stages see it, as a real LLM arrives having read. In the one demo run with it, the skill did not carry
over to questions about pictures (README "The demo"); the demo keeps it off.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vora_core.data.questions import LETTERS
from vora_core.data.sources import COLOURS, SHAPES

QUERIES = 12  # questions per text
KINDS = ("yesno", "options", "word")
HELD_OUT = 64  # texts kept aside (another seed) for the reported accuracy


def reading(rng: random.Random, queries: int = QUERIES,
            kinds: tuple[str, ...] = KINDS) -> tuple[str, list[tuple[str, str, str]]]:
    """A described shape and `queries` (question, answer, kind) about its colour or shape: "Is it
    <colour>?" / "Is it a <shape>?" yes|no; four lettered options, "Answer:" <letter>; "What colour /
    shape is it?" <word>. Questions end with the space the answer would otherwise carry (" B" is two
    tokens), so that every answer is one token to predict."""
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    asked = []
    for _ in range(queries):
        what, truth, vocab = (("colour", colour, list(COLOURS)) if rng.random() < 0.5 else
                              ("shape", shape, list(SHAPES)))
        kind = kinds[rng.randrange(len(kinds))]
        if kind == "yesno":
            other = truth if rng.random() < 0.5 else rng.choice([v for v in vocab if v != truth])
            article = "" if what == "colour" else "a "
            asked.append((f" Is it {article}{other}? ", "yes" if other == truth else "no", kind))
        elif kind == "options":
            options = [truth, *rng.sample([v for v in vocab if v != truth], 3)]
            rng.shuffle(options)
            listed = " ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
            asked.append((f" {listed} Answer: ", LETTERS[options.index(truth)], kind))
        else:
            asked.append((f" What {what} is it? ", truth, kind))
    return f"The shape is a {colour} {shape}.", asked


def reading_batch(tokenizer, rng: random.Random, n: int,
                  kinds: tuple[str, ...] = KINDS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n texts right-padded: token ids, labels (each answer's token; -100 elsewhere) and the kind index
    of every labelled position (-1 elsewhere)."""
    rows, answers = [], []
    for _ in range(n):
        scene, asked = reading(rng, kinds=kinds)
        ids, at = tokenizer.encode(scene, add_special_tokens=False), []
        for question, answer, kind in asked:
            ids += tokenizer.encode(question, add_special_tokens=False)
            at.append((len(ids), KINDS.index(kind)))
            ids += tokenizer.encode(answer, add_special_tokens=False)[:1]
        rows.append(ids)
        answers.append(at)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((n, width), pad, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    kind_at = torch.full((n, width), -1, dtype=torch.long)
    for i, (row, at) in enumerate(zip(rows, answers, strict=True)):
        ids[i, :len(row)] = torch.tensor(row)
        for pos, kind in at:
            labels[i, pos], kind_at[i, pos] = row[pos], kind
    return ids, labels, kind_at


@torch.no_grad()
def accuracy(model, ids: torch.Tensor, labels: torch.Tensor, kinds: torch.Tensor) -> dict[str, float]:
    """Per kind: the share of answer tokens the model predicts (greedy)."""
    guess = model(input_ids=ids).logits[:, :-1].argmax(-1)
    target, kind = labels[:, 1:], kinds[:, 1:]
    return {name: round((guess[kind == k] == target[kind == k]).float().mean().item(), 4)
            for k, name in enumerate(KINDS) if (kind == k).any()}


def practise_reading(llm_dir: str | Path, steps: int, lr: float, batch: int = 32, seed: int = 0,
                     log_every: int = 100, log=None, on_step: Callable[[int, int], None] | None = None) -> dict:
    """Train the causal LM saved in `llm_dir` in place on `steps` batches of reading texts; returns its
    stats (held-out answer accuracy per kind before and after, seconds). `on_step(done, steps)` follows
    the progress every `log_every` steps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir))
    held_out = reading_batch(tokenizer, random.Random(seed + 10_000), HELD_OUT)
    before = accuracy(model.eval(), *held_out)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        ids, labels, _ = reading_batch(tokenizer, rng, batch)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            if log is not None:
                log.info("tiny LLM reading practice: step %d/%d, loss %.4f, held-out answers %s", step, steps,
                         loss.item(), accuracy(model, *held_out))
            if on_step is not None:
                on_step(step, steps)
    after = accuracy(model.eval(), *held_out)
    model.save_pretrained(str(llm_dir))
    return {"reading_steps": steps, "seconds": round(time.perf_counter() - started, 1),
            "accuracy_before": before, "accuracy_after": after}
