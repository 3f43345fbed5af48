"""The paper's text-instruction datasets, a few rows each, in their published files and columns.

| dataset            | file as published                          | layout                                      |
|--------------------|--------------------------------------------|---------------------------------------------|
| Infinity-Instruct  | parquet                                    | id, conversations[{from,value}], label{...}, langdetect, source |
| Magpie-Pro-300K    | parquet                                    | uuid, model, gen_input_configs{...}, instruction, response, conversations[{from,value}], task_category, ... |
| SmolTalk           | parquet                                    | messages[{content,role}] (system turns in some subsets), source |
| Code-Feedback      | Code-Feedback.jsonl                        | id (int), messages[{role,content}] (some with a system turn) |
| OpenOrca           | parquet                                    | id, system_prompt (often ""), question, response |
| MathInstruct       | MathInstruct.json (one array)              | source, output, instruction                 |
| Orca-Math 200k     | parquet                                    | question, answer                            |
| MathQA             | train.json (one array)                     | Problem, Rationale, options, correct, annotated_formula, linear_formula, category |
| Dolly 15k          | databricks-dolly-15k.jsonl                 | instruction, context (often ""), response, category |

`write_text_sources(root)` writes them under `root/text/` (the layout `catalogs/real-schemas.yaml`
reads below `/data/`) and returns, per source, what ingesting it must give.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _sharegpt(*turns: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": value} for i, value in enumerate(turns)]


def _label(ability: str) -> dict:
    return {"ability_en": [ability], "ability_zh": ["数学能力" if ability == "math" else "编程能力"],
            "cate_ability_en": ["Mathematical Ability"], "cate_ability_zh": ["数学能力"]}


def infinity_instruct() -> list[dict]:
    rows = [
        {"id": "0", "conversations": _sharegpt("What is 17 * 23?", "17 * 23 = 391."), "label": _label("math"),
         "langdetect": "en", "source": "MetaMath"},
        {"id": "1", "conversations": _sharegpt("请用一句话解释光合作用。", "光合作用是植物利用光能把二氧化碳和水转化为有机物并释放氧气的过程。"),
         "label": _label("science"), "langdetect": "zh-cn", "source": "Subjective"},
        {"id": "2", "conversations": _sharegpt("Write a Python function that reverses a string.",
                                               "```python\ndef reverse(s: str) -> str:\n    return s[::-1]\n```",
                                               "Now make it handle None.",
                                               "```python\ndef reverse(s):\n    return None if s is None else s[::-1]\n```"),
         "label": _label("coding"), "langdetect": "en", "source": "code_exercises"},
        {"id": "3", "conversations": _sharegpt("Name three primary colours.", "Red, yellow and blue."),
         "label": _label("knowledge"), "langdetect": "en", "source": "Orca-math-word-problems-200k"},
        # a conversation cut after the user's turn: nothing to learn from, counted
        {"id": "4", "conversations": _sharegpt("Continue the story:"), "label": _label("writing"),
         "langdetect": "en", "source": "Subjective"},
    ]
    return rows


def magpie_pro() -> list[dict]:
    rows = []
    pairs = [("How do I center a div in CSS?", "Use flexbox on the parent: `display: flex; justify-content: center;"
              " align-items: center;`.", "Coding & Debugging", "easy"),
             ("What causes the seasons on Earth?", "The tilt of Earth's axis (about 23.4°) relative to its orbit.",
              "Information seeking", "medium"),
             ("Plan a 3-day trip to Kyoto.", "Day 1: Fushimi Inari and Gion. Day 2: Arashiyama. Day 3: Kiyomizu-dera.",
              "Planning", "medium")]
    for i, (instruction, response, category, difficulty) in enumerate(pairs):
        rows.append({
            "uuid": f"a1b2c3d4-0000-4000-8000-00000000000{i}", "model": "meta-llama/Meta-Llama-3-70B-Instruct",
            "gen_input_configs": {"temperature": 1.0, "top_p": 1.0, "input_generator": "meta-llama/Meta-Llama-3-70B-Instruct",
                                  "seed": None, "extract_input": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"},
            "instruction": instruction, "response": response,
            "conversations": _sharegpt(instruction, response),
            "task_category": category, "other_task_category": ["Advice seeking"],
            "task_category_generator": "meta-llama/Meta-Llama-3-8B-Instruct", "difficulty": difficulty,
            "intent": "The user wants to know something.", "knowledge": "The model needs to know it.",
            "difficulty_generator": "meta-llama/Meta-Llama-3-8B-Instruct", "input_quality": "good",
            "quality_explanation": "The query is clear.", "quality_generator": "meta-llama/Meta-Llama-3-8B-Instruct",
            "llama_guard_2": "safe", "reward_model": "sfairXC/FsfairX-LLaMA3-RM-v0.1", "instruct_reward": 4.5 - i,
            "min_neighbor_distance": 0.3 + i / 10, "repeat_count": 0, "min_similar_uuid": None,
            "instruction_length": len(instruction), "response_length": len(response), "language": "EN",
        })
    return rows


def smoltalk() -> list[dict]:
    return [
        {"messages": [{"content": "You are a helpful pirate.", "role": "system"},
                      {"content": "Where is the treasure?", "role": "user"},
                      {"content": "Arr, buried under the old oak!", "role": "assistant"}], "source": "systemchats-30k"},
        {"messages": [{"content": "Rewrite more formally: gonna be late", "role": "user"},
                      {"content": "I am going to be late.", "role": "assistant"}], "source": "smol-rewrite"},
        {"messages": [{"content": "Summarise: The cat sat on the mat all day.", "role": "user"},
                      {"content": "A cat stayed on a mat.", "role": "assistant"},
                      {"content": "Shorter?", "role": "user"},
                      {"content": "Cat on mat.", "role": "assistant"}], "source": "smol-summarize"},
        {"messages": [{"content": "Bonjour, ça va ?", "role": "user"},
                      {"content": "Très bien, merci !", "role": "assistant"}], "source": "everyday-conversations"},
    ]


def code_feedback() -> list[dict]:
    return [
        {"id": 0, "messages": [
            {"role": "system", "content": "You are an AI programming assistant that can run Python code."},
            {"role": "user", "content": "Compute the 10th Fibonacci number."},
            {"role": "assistant", "content": "```python\na, b = 0, 1\nfor _ in range(10):\n    a, b = b, a + b\nprint(a)\n```"},
            {"role": "user", "content": "Execution result: \n55"},
            {"role": "assistant", "content": "The 10th Fibonacci number is 55."}]},
        {"id": 1, "messages": [
            {"role": "user", "content": "Write a SQL query that counts users per country."},
            {"role": "assistant", "content": "SELECT country, COUNT(*) FROM users GROUP BY country;"}]},
        {"id": 2, "messages": [
            {"role": "system", "content": "You are a careful code reviewer."},
            {"role": "user", "content": "Is `l = l.sort()` correct in Python?"},
            {"role": "assistant", "content": "No: list.sort() sorts in place and returns None; use `l.sort()`."}]},
    ]


def openorca() -> list[dict]:
    return [
        {"id": "niv.242684", "system_prompt": "You are an AI assistant. Provide a detailed answer.",
         "question": "Translate to German: The weather is nice today.", "response": "Das Wetter ist heute schön."},
        {"id": "flan.564327", "system_prompt": "", "question": "Is the sky blue? Options: - yes - no",
         "response": "yes"},
        {"id": "t0.1425019", "system_prompt": "You are a helpful assistant, who always provide explanation.",
         "question": "What is the capital of Australia?", "response": "Canberra is the capital of Australia."},
        {"id": "cot.86217", "system_prompt": "", "question": "Q: 5 apples minus 2? A:", "response": ""},  # empty answer
    ]


def mathinstruct() -> list[dict]:
    return [
        {"source": "data/CoT/aqua_rat.json", "output": "Speed = 60/1.5 = 40 km/h. The answer is B.",
         "instruction": "A car travels 60 km in 1.5 hours. What is its speed?\nAnswer Choices: (A) 30 (B) 40 (C) 50"},
        {"source": "data/PoT/mathqa.json", "output": "n0 = 12.0\nn1 = 3.0\nt0 = n0 / n1\nprint(t0)",
         "instruction": "12 sweets are shared among 3 children. How many does each get? Let's write a program."},
        {"source": "data/CoT/gsm_rft.json", "output": "She has 3 + 4 = 7 pens.\nThe answer is 7",
         "instruction": "Mia has 3 pens and buys 4 more. How many pens does she have?"},
    ]


def orca_math() -> list[dict]:
    return [
        {"question": "Jungkook has 6 apples and gives 2 away. How many are left?",
         "answer": "Jungkook has 6 - 2 = 4 apples left."},
        {"question": "A number plus 7 is 15. What is the number?", "answer": "The number is 15 - 7 = 8."},
        {"question": "What is the sum of the interior angles of a hexagon?",
         "answer": "(6 - 2) × 180° = 720°."},
    ]


def mathqa() -> list[dict]:
    return [
        {"Problem": "the banker ' s gain of a certain sum due 3 years hence at 10 % per annum is rs . 36 . what is the "
                    "present worth ?",
         "Rationale": "\"explanation : t = 3 years r = 10 % td = ( bg × 100 ) / tr = ( 36 × 100 ) / ( 3 × 10 ) = 120 "
                      "pw = ( 100 × td ) / tr = 400 . answer : option c\"",
         "options": "a ) rs . 460 , b ) rs . 500 , c ) rs . 400 , d ) rs . 540 , e ) none of these",
         "correct": "c", "annotated_formula": "divide(multiply(36, 100), multiply(3, 10))",
         "linear_formula": "multiply(n1,const_100)|multiply(n0,n1)|divide(#0,#1)|", "category": "gain"},
        {"Problem": "what is 15 % of 80 ?", "Rationale": "\"15 / 100 × 80 = 12 answer : b\"",
         "options": "a ) 10 , b ) 12 , c ) 14 , d ) 16 , e ) 18", "correct": "b",
         "annotated_formula": "multiply(divide(15, 100), 80)", "linear_formula": "divide(n0,const_100)|multiply(#0,n1)|",
         "category": "general"},
    ]


def dolly() -> list[dict]:
    return [
        {"instruction": "When did Virgin Australia start operating?",
         "context": "Virgin Australia commenced services on 31 August 2000 as Virgin Blue, with two aircraft.",
         "response": "Virgin Australia commenced services on 31 August 2000 as Virgin Blue.", "category": "closed_qa"},
        {"instruction": "Which is a species of fish? Tope or Rope", "context": "", "response": "Tope",
         "category": "classification"},
        {"instruction": "Why can camels survive for long without water?", "context": "",
         "response": "Camels use the fat in their humps to keep them filled with energy and hydration.",
         "category": "open_qa"},
    ]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_text_sources(root: Path) -> dict[str, dict]:
    """name → {"entry": the catalog's text source (paths under `root`), "rows", "written", "rejected"}."""
    text = root / "text"
    files = {
        "infinity_instruct": ("Infinity-Instruct-3M/train-00000-of-00001.parquet", infinity_instruct()),
        "magpie_pro": ("Magpie-Pro-300K-Filtered/train-00000-of-00001.parquet", magpie_pro()),
        "smoltalk": ("smoltalk/data/all/train-00000-of-00001.parquet", smoltalk()),
        "opencodeinterpreter": ("Code-Feedback/Code-Feedback.jsonl", code_feedback()),
        "openorca": ("OpenOrca/1M-GPT4-Augmented.parquet", openorca()),
        "mathinstruct": ("MathInstruct/MathInstruct.json", mathinstruct()),
        "orca_math": ("orca-math-word-problems-200k/train-00000-of-00001.parquet", orca_math()),
        "mathqa": ("MathQA/train.json", mathqa()),
        "dolly": ("databricks-dolly-15k.jsonl", dolly()),
    }
    for rel, rows in files.values():
        path = text / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".parquet"):
            pq.write_table(pa.Table.from_pylist(rows), path)
        elif rel.endswith(".jsonl"):
            _jsonl(path, rows)
        else:
            path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    rejected = {"infinity_instruct": {"last_turn_not_assistant": 1}, "openorca": {"empty_content": 1}}
    return {name: {"path": str(text / rel), "rows": len(rows), "rejected": rejected.get(name, {}),
                   "written": len(rows) - sum(rejected.get(name, {}).values())}
            for name, (rel, rows) in files.items()}
