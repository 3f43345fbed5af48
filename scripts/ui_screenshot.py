"""Screenshot of the Prefect UI showing a pipeline run (for the README).

Starts `prefect server start` on 127.0.0.1 with its own PREFECT_HOME, runs the first stages of a small
copy of the demo catalog against it, opens the pipeline's flow-run page in headless Chromium and saves
the screenshot. Every process it starts is stopped by pid.

    .venv/bin/python scripts/ui_screenshot.py [--out docs/ui-flow-run.png] [--until recaption]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.localserver import BIN, free_port, server_env, start_server, stop  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((path for b in BROWSERS if (path := shutil.which(b))), None)


def small_demo(workdir: Path, n: int) -> Path:
    """The demo catalog with fewer images and its run directory under `workdir`."""
    catalog = yaml.safe_load((ROOT / "catalogs" / "demo.yaml").read_text())
    catalog["workdir"] = str(workdir / "run")
    catalog["sources"]["shapes"].update(n=n, heldout=min(n, 8))
    catalog["download"].update(number_sample_per_shard=max(1, n // 2), rows_per_unit=max(1, n // 2))
    path = workdir / "demo-small.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


def screenshot(browser: str, url: str, out: Path, width: int, height: int, wait_ms: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"{browser} failed ({done.returncode}): {done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "ui-flow-run.png")
    ap.add_argument("--until", default="recaption", help="last stage of the pipeline run shown")
    ap.add_argument("--n", type=int, default=24, help="demo images")
    ap.add_argument("--size", default="1500x1000", help="window WIDTHxHEIGHT")
    ap.add_argument("--wait-ms", type=int, default=15000, help="time the page gets to render")
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        raise SystemExit("no Chromium found (apt-get install chromium); it renders the UI page")
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="vora-ui-") as tmp:
        work = Path(tmp)
        port = free_port()
        env = server_env(work / "prefect-home", port)
        server = start_server(work / "prefect-home", port, work / "server.log")
        try:
            catalog = small_demo(work, args.n)
            subprocess.run([str(BIN / "vora"), "run", str(catalog), "--until", args.until], env=env, check=True,
                           capture_output=True, timeout=900)
            api = env["PREFECT_API_URL"]
            runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_DESC"}, timeout=10).json()
            flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}, timeout=10).json()}
            pipeline = next(r for r in runs if flows.get(r["flow_id"]) == "vora-pipeline")
            url = f"http://127.0.0.1:{port}/runs/flow-run/{pipeline['id']}"
            screenshot(browser, url, args.out, width, height, args.wait_ms)
        finally:
            stop(server)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
