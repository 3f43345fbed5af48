"""Write the demo's small text-instruction files (one per supported format) into catalogs/demo_text/.

Generated, not copied from any dataset: arithmetic, colour and shape facts, in the layouts of
ShareGPT (Infinity-Instruct), messages (SmolTalk), OpenOrca (system_prompt/question/response),
Dolly (instruction/context/response, a json array) and LLaVA (a json array of id/image/conversations,
with a dozen small generated shape images in llava_images/).   .venv/bin/python scripts/make_demo_text.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "catalogs" / "demo_text"
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = {"circle": "no corners", "square": "four equal sides", "triangle": "three sides", "star": "five points",
          "cross": "two crossing bars"}


def qa_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    pairs = []
    for i in range(n):
        if i % 3 == 0:
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            pairs.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
        elif i % 3 == 1:
            shape = rng.choice(list(SHAPES))
            pairs.append((f"Describe a {shape}.", f"A {shape} is a shape with {SHAPES[shape]}."))
        else:
            colour = rng.choice(COLOURS)
            pairs.append((f"Name something that can be {colour}.", f"A {colour} shape on a plain background."))
    return pairs


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with open(OUT / "sharegpt.jsonl", "w") as f:
        for i, (q, a) in enumerate(qa_pairs(rng, 40)):
            q2, a2 = qa_pairs(rng, 1)[0]
            turns = [{"from": "human", "value": q}, {"from": "gpt", "value": a},
                     {"from": "human", "value": q2}, {"from": "gpt", "value": a2}]
            f.write(json.dumps({"id": f"sg-{i}", "conversations": turns}) + "\n")
    with open(OUT / "messages.jsonl", "w") as f:
        for q, a in qa_pairs(rng, 40):
            msgs = [{"role": "system", "content": "You are a concise assistant."},
                    {"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    with open(OUT / "orca.jsonl", "w") as f:
        for i, (q, a) in enumerate(qa_pairs(rng, 40)):
            f.write(json.dumps({"id": f"orca-{i}", "system_prompt": "Answer in one sentence.", "question": q,
                                "response": a}) + "\n")
    dolly = [{"instruction": q, "context": "" if i % 2 else "Shapes and colours.", "response": a}
             for i, (q, a) in enumerate(qa_pairs(rng, 40))]
    (OUT / "dolly.json").write_text(json.dumps(dolly, indent=1) + "\n")
    write_llava(random.Random(1))


def write_llava(rng: random.Random, images: int = 12) -> None:
    """LLaVA-665K's layout: image rows ask about the image's true colour and shape; a few rows are text-only."""
    import sys

    sys.path.insert(0, str(ROOT))
    from vora_core.data.sources import synthetic_shape

    folder = OUT / "llava_images"
    folder.mkdir(exist_ok=True)
    rows = []
    for i in range(images):
        img, labels = synthetic_shape(rng, 64, 80, 1.5)
        img.save(folder / f"{i:03d}.png", "PNG", optimize=True)
        for j, (q, a) in enumerate([("What colour is the shape?", labels["colour"].capitalize() + "."),
                                    ("Which shape is shown?", f"A {labels['shape']}.")]):
            turns = [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a},
                     {"from": "human", "value": "Describe the image."}, {"from": "gpt", "value": labels["caption"]}]
            rows.append({"id": f"llava-{i:03d}-{j}", "image": f"{i:03d}.png", "conversations": turns})
    for i, (q, a) in enumerate(qa_pairs(rng, 6)):
        rows.append({"id": f"llava-text-{i}", "conversations": [{"from": "human", "value": q},
                                                                {"from": "gpt", "value": a}]})
    (OUT / "llava.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
