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
