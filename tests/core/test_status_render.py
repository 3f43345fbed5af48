"""`vora status`'s layout: at most 80 columns whatever the figures hold, names never cut."""

from vora_core.status import render

ROOT = "/data/runs/very/long/run/directory/name/that/goes/on"


def test_wide_figures_fold_into_blocks_within_80_columns():
    reasons = {f"HTTPError: 404 Client Error: Not Found for url: http://example.com/{'x' * 60}/{i}.jpg": i
               for i in range(3)}
    status = {
        "download": [{"source": "web", "kind": "url_list", "images": 12, "failures": 3, "failures_by_reason": reasons}],
        "mix": [{"unit": "mixture:pretrain_with_a_rather_long_name", "done": True, "rows": 123456,
                 "reasons": ", ".join(f"source_{i}: {i * 1000}" for i in range(12))}],
        "merge": [{"unit": "merge", "done": False, "source": f"{ROOT}/pretrain/final", "output": f"{ROOT}/merged",
                   "bound": 0.5}],
        "evaluate": [],
    }
    lines = render("demo", ROOT, status, width=80)
    assert [line for line in lines if len(line) > 80] == []
    assert "  mixture:pretrain_with_a_rather_long_name" in lines  # the unit's whole name, as its block's title
    # paths relative to the run directory, as values, not headers
    merge = lines.index("merge")
    assert lines[merge + 1:merge + 3] == ["  unit   done          source  output  bound",
                                          "  merge    no  pretrain/final  merged  0.500"]
    assert [line for line in lines[1:] if ROOT in line] == []
    assert "    images:             12" in lines  # aligned on the longest short key
    assert "evaluate: nothing planned yet" in lines
    # every failure reason is there in full (wrapped, not cut), with its count
    flat = "".join(line.strip() for line in lines)
    for reason in reasons:
        assert reason.replace(" ", "") in flat.replace(" ", "")
    assert any(line.strip().startswith("source_11: 11000") or "source_11: 11000" in line for line in lines)


def test_narrow_rows_make_a_table():
    status = {"mix": [{"unit": "text:orca", "done": True, "rows": 40, "written": 38, "rejected": 2},
                      {"unit": "mixture:pretrain", "done": False, "rows": None}]}
    assert render("demo", "runs/demo", status)[2:] == [
        "mix",
        "  unit              done  rows  written  rejected",
        "  text:orca          yes    40       38         2",
        "  mixture:pretrain    no     -        -         -",
    ]


def test_headline_gives_each_stage_its_figure():
    """The `<stage> <unit>: done, <headline>` log line: stats as the stages' markers hold them."""
    from vora_core.status import headline

    assert headline({"format": "mc", "main": "accuracy", "questions": 240, "rejected": 0, "scored": 240,
                     "value": 0.25833}) == "accuracy 0.258 on 240 questions"
    assert headline({"main": "f1", "scored": 238, "rejected": 2, "value": 0.5}) == \
        "f1 0.500 on 238 questions (2 rejected)"
    assert headline({"main": "accuracy", "scored": 0, "rejected": 3, "value": None}) == \
        "no score on 0 questions (3 rejected)"
    assert headline({"steps": 400, "first_loss": 7.345, "final_loss": 4.3964, "final_lm_loss": 4.2,
                     "final_distill": 0.1968, "nan_steps": 0}) == "400 steps, loss 7.345 → 4.396, distill 0.197"
    assert headline({"steps": 2404, "first_loss": 5.99, "final_loss": 0.382, "final_distill": None,
                     "nan_steps": 2}) == "2,404 steps, loss 5.990 → 0.382, 2 non-finite steps skipped"
    assert headline({"bound": 2.67e-05, "dtype": "float32", "max_abs_logit_diff": 2.563e-06, "passed": True}) == \
        "check passed: max |Δ logit| 2.56e-06 ≤ bound 2.67e-05 (float32)"
    assert headline({"successes": 197, "failures": 3, "failures_by_reason": {"timeout": 1, "bad_url": 2}}) == \
        "197 images, 3 failed (bad_url 2, timeout 1)"  # most frequent first
    many = {f"HTTPError: 404 Client Error: Not Found for url: http://example.com/{'x' * 40}/{i}.jpg": 10 - i
            for i in range(5)}
    cut = "HTTPError: 404 Client Error: Not Found for url: http://exam…"  # 60 characters
    assert len(cut) == 60
    assert headline({"successes": 0, "failures": 40, "failures_by_reason": many}) == (
        f"0 images, 40 failed ({cut} 10, {cut} 9, {cut} 8, 2 more reasons)")
    assert headline({"input_rows": 600, "rows": 598, "filtered": {"too_small": 2}, "rejected": {}}) == \
        "598 of 600 rows kept (too_small 2)"
    assert headline({"captions": 200, "images": 200, "flags": {"invalid_text": 199, "truncated": 197}}) == \
        "200 captions of 200 images (flagged: invalid_text 199, truncated 197)"
    assert headline({"captions": 1200, "images": 1200, "flags": {}}) == "1,200 captions of 1,200 images"
    assert headline({"written": 4800, "rejected": 0, "rejected_by_reason": {}}) == "4,800 rows, 0 rejected"
    mixture = {"rows": 5031, "by_source": {"a/text": 101, "b/vqa": 4930}, "left_out": {"image_missing": 4}}
    assert headline(mixture) == "5,031 rows from 2 sources (left out: image_missing 4)"
    assert headline({"variant": "vanilla", "stages": {}}) == ""
    assert headline({"variant": "vora", "headline": "pretrain loss 4.396, shapes-heldout-mc 0.258"}) == \
        "pretrain loss 4.396, shapes-heldout-mc 0.258"  # composed by its stage
