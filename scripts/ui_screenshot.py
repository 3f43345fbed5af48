"""Screenshots of the Prefect UI for the README: a pipeline run, a failures artifact, the pipeline
summary artifact and a deployment's parameters.

Starts `prefect server start` on 127.0.0.1 with its own PREFECT_HOME, runs the first stages of a small
copy of the demo catalog (plus a url list where 5 of 11 rows fail) against it, registers a deployment
on a process work pool, and saves each page from headless Chromium (Debian's `chromium` package).
Every process it starts is stopped by pid.

    .venv/bin/python scripts/ui_screenshot.py [--out-dir docs] [--until recaption]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.localserver import BIN, free_port, server_env, start_server, stop  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# What each screenshot shows → its file name under --out-dir.
SHOTS = {
    "flow_run": "ui-flow-run.png",
    "failures": "ui-failures-artifact.png",
    "summary": "ui-pipeline-summary.png",
    "parameters": "ui-deployment-parameters.png",
}


def find_browser() -> str | None:
    return next((path for b in BROWSERS if (path := shutil.which(b))), None)


def url_list(workdir: Path) -> Path:
    """11 file:// rows: 6 images, 3 missing files, an empty file, an HTML page."""
    folder = workdir / "web"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(6):
        buf = io.BytesIO()
        Image.new("RGB", (96, 64), (40 * i, 120, 200 - 30 * i)).save(buf, "PNG")
        (folder / f"ok{i}.png").write_bytes(buf.getvalue())
        rows.append({"id": f"ok{i}", "url": (folder / f"ok{i}.png").as_uri(), "text": f"a colour field {i}"})
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "page.jpg").write_bytes(b"<!DOCTYPE html><html><body>moved</body></html>")
    rows += [{"id": f"gone{i}", "url": (folder / f"gone{i}.jpg").as_uri(), "text": None} for i in range(3)]
    rows += [{"id": n, "url": (folder / f"{n}.jpg").as_uri(), "text": None} for n in ("zero", "page")]
    path = workdir / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def small_demo(workdir: Path, n: int) -> Path:
    """The demo catalog with fewer images, a failing url list, and its run directory under `workdir`."""
    catalog = yaml.safe_load((ROOT / "catalogs" / "demo.yaml").read_text())
    catalog["workdir"] = str(workdir / "run")
    catalog["sources"]["shapes"].update(n=n, heldout=min(n, 8))
    catalog["sources"]["web"] = {"kind": "url_list", "path": str(url_list(workdir)), "id_col": "id",
                                 "caption_col": "text"}
    per_unit = max(1, n // 2)
    catalog["download"].update(number_sample_per_shard=per_unit, rows_per_unit=per_unit, retries=0)
    path = workdir / "demo-small.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


def screenshot(browser: str, url: str, out: Path, width: int, height: int, wait_ms: int, profile: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={width},{height}",
           f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"{browser} failed ({done.returncode}): {done.stderr[-2000:]}")


def pages(api: str, ui: str, catalog_name: str, deployment_id: str) -> dict[str, str]:
    """The UI address of each screenshot."""
    runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_DESC"}, timeout=10).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}, timeout=10).json()}
    pipeline = next(r for r in runs if flows.get(r["flow_id"]) == "vora-pipeline")

    def artifact_id(key: str) -> str:
        arts = httpx.post(f"{api}/artifacts/filter", timeout=10,
                          json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"}).json()
        return arts[0]["id"]

    return {
        "flow_run": f"{ui}/runs/flow-run/{pipeline['id']}",
        "failures": f"{ui}/artifacts/artifact/{artifact_id(f'{catalog_name}-download-failures')}",
        "summary": f"{ui}/artifacts/artifact/{artifact_id(f'{catalog_name}-pipeline-summary')}",
        "parameters": f"{ui}/deployments/deployment/{deployment_id}/run",
    }


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    ap.add_argument("--until", default="recaption", help="last stage of the pipeline run shown")
    ap.add_argument("--n", type=int, default=24, help="demo images")
    ap.add_argument("--size", default="1500x1000", help="window WIDTHxHEIGHT")
    ap.add_argument("--wait-ms", type=int, default=15000, help="time each page gets to render")
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        raise SystemExit("no Chromium found (apt-get install chromium); it renders the UI pages")
    width, height = (int(v) for v in args.size.split("x"))
    outs = []
    with tempfile.TemporaryDirectory(prefix="vora-ui-") as tmp:
        work = Path(tmp)
        port = free_port()
        env = server_env(work / "prefect-home", port)
        server = start_server(work / "prefect-home", port, work / "server.log")
        try:
            catalog = small_demo(work, args.n)
            name = yaml.safe_load(catalog.read_text())["name"]
            subprocess.run([str(BIN / "vora"), "run", str(catalog), "--until", args.until], env=env, check=True,
                           capture_output=True, timeout=900)
            subprocess.run([str(BIN / "prefect"), "work-pool", "create", "vora-ui", "--type", "process"], env=env,
                           check=True, capture_output=True, timeout=120)
            deploy = [str(BIN / "vora"), "deploy", str(catalog), "--pool", "vora-ui"]
            deployed = subprocess.run(deploy, env=env, check=True, capture_output=True, text=True, timeout=120)
            deployment_id = deployed.stdout.split("(")[1].split(")")[0]
            urls = pages(env["PREFECT_API_URL"], f"http://127.0.0.1:{port}", name, deployment_id)
            for shot, url in urls.items():
                out = args.out_dir / SHOTS[shot]
                screenshot(browser, url, out, width, height, args.wait_ms, work / f"chromium-{shot}")
                outs.append(out)
        finally:
            stop(server)
    print("\n".join(map(str, outs)))
    return outs


if __name__ == "__main__":
    main()
