"""Fixtures for the data tests: generated images of every awkward kind, and a real HTTP server."""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vora_core.catalog import Catalog, load_catalog


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def rgb(w: int = 60, h: int = 40, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def awkward_images() -> dict[str, bytes]:
    """name → body. Names starting with `bad-` must fail; the others must become RGB samples."""
    base = rgb()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    gray16 = np.zeros((40, 60), dtype=np.uint16)
    gray16[:, :30] = 65535
    gray16[:, 30:] = 32896  # 128.5 * 256 → 128 after scaling
    bomb = Image.new("1", (6000, 6000))  # 36 Mpx, a few KB as PNG
    good_jpeg = jpeg(base)
    return {
        "ok.jpg": good_jpeg,
        "cmyk.jpg": jpeg(base.convert("CMYK")),
        "palette.png": png(base.convert("P")),
        "la.png": png(base.convert("LA")),
        "gray16.png": png(Image.fromarray(gray16)),
        "exif6.jpg": jpeg(base, exif=exif.tobytes()),
        "one.png": png(rgb(1, 1)),
        "thin.png": png(rgb(1, 10000)),
        "bad-zero.jpg": b"",
        "bad-truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "bad-page.jpg": b"<!DOCTYPE html><html><body>Not found</body></html>",
        "bad-bomb.png": png(bomb),
    }


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 - http.server API
        name = self.path.lstrip("/")
        if name == "slow":
            time.sleep(6)  # longer than the catalog's timeout
        if name == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = self.files.get(name)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if name.startswith("bad-page") else "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """(base_url, files dict to fill) served by http.server on 127.0.0.1 in a thread."""
    handler = type("Handler", (_Handler,), {"files": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler.files
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_catalog(tmp_path: Path, sources: dict, **download) -> Catalog:
    settings = {"image_size": 64, "processes_count": 1, "thread_count": 8, "number_sample_per_shard": 100,
                "rows_per_unit": 100, "timeout": 2, "retries": 0, **download}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "workdir": str(tmp_path / "run"), "sources": sources,
                                    "download": settings}))
    return load_catalog(path)


def run_download(catalog: Catalog) -> list[dict]:
    from vora_core.stages import download
    from vora_core.workdir import run_unit_with_marker

    for unit in download.prepare_units(catalog):
        run_unit_with_marker(unit, lambda u: download.run_unit(catalog, u))
    return [run_unit_with_marker(u, lambda u: download.run_unit(catalog, u)) for u in download.plan(catalog)]
