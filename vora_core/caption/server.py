"""A small OpenAI-compatible chat-completions server over a caption backend.

`ChatServer(backend)` serves `POST /v1/chat/completions` (one image + text per request, the shape the
`openai` engine sends) and `GET /v1/models` on 127.0.0.1. With `engine_backend(HFEngine(...))` it
serves a transformers captioner — e.g. one per CPU box, as data parallel workers for the `openai`
engine — and the tests and the benchmark run the `openai` engine against it. `fault` lets a test make
the server misbehave like real ones do (429, 5xx, slow answers, dropped connections).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from vora_core.caption.engines import CaptionRequest, Engine

log = logging.getLogger(__name__)

# backend(body, image bytes, prompt) -> {"text", "n_tokens", "finish_reason"}
Backend = Callable[[dict[str, Any], bytes, str], dict[str, Any]]
# fault(body) -> None (answer) | "drop" | "slow:<seconds>" | an HTTP status code (int)
Fault = Callable[[dict[str, Any]], Any]


def parse_chat(body: dict[str, Any]) -> tuple[bytes, str]:
    """The image bytes and the text of the last user message (ValueError if either is missing)."""
    user = next((m for m in reversed(body.get("messages") or []) if m.get("role") == "user"), None)
    if user is None or not isinstance(user.get("content"), list):
        raise ValueError("expected a user message with a list of content parts")
    image, text = None, []
    for part in user["content"]:
        if part.get("type") == "image_url":
            url = part["image_url"]["url"]
            if not url.startswith("data:") or ";base64," not in url:
                raise ValueError("only base64 data URLs are supported")
            image = base64.b64decode(url.split(";base64,", 1)[1])
        elif part.get("type") == "text":
            text.append(part["text"])
    if image is None:
        raise ValueError("no image_url part in the user message")
    return image, "".join(text)


def engine_backend(engine: Engine) -> Backend:
    """Serve a caption engine (requests are captioned one at a time, in arrival order)."""

    def run(body: dict[str, Any], image: bytes, prompt: str) -> dict[str, Any]:
        img = Image.open(io.BytesIO(image)).convert("RGB")
        req = CaptionRequest(str(body.get("seed", 0)), img, image, "jpg", prompt)
        res = engine.caption([req])[0]
        return {"text": res.text, "n_tokens": res.n_tokens, "finish_reason": res.finish_reason}

    return run


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: logging, not stderr
        log.debug(fmt, *args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        if self.server.api_key and self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            self._send(401, {"error": {"message": "invalid API key"}})
            return
        try:
            body = json.loads(raw)
            image, prompt = parse_chat(body)
        except (ValueError, KeyError, TypeError) as e:
            self._send(400, {"error": {"message": f"bad request: {e}"}})
            return
        with self.server.stats_lock:
            self.server.stats["requests"] += 1
        action = self.server.fault(body) if self.server.fault else None
        if action is not None:
            self.server.count(f"fault:{str(action).split(':')[0]}")
            if action == "drop":  # close the connection without an answer
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if isinstance(action, str) and action.startswith("slow:"):
                time.sleep(float(action.split(":", 1)[1]))
                # then answer normally (the client has given up by then)
            else:
                self._send(int(action), {"error": {"message": f"injected HTTP {action}"}})
                return
        try:
            out = self.server.backend(body, image, prompt)
        except Exception as e:  # noqa: BLE001 - reported to the client like real servers do
            log.exception("backend failed")
            self._send(500, {"error": {"message": f"{type(e).__name__}: {e}"}})
            return
        self.server.count("completions")
        try:
            self._send(200, {
                "id": f"chatcmpl-{self.server.stats['completions']}", "object": "chat.completion",
                "created": int(time.time()), "model": body.get("model", self.server.model),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                             "finish_reason": out.get("finish_reason", "stop")}],
                "usage": {"completion_tokens": out.get("n_tokens", 0)},
            })
        except (BrokenPipeError, ConnectionResetError):
            self.server.count("answers_lost")  # the client timed out and left


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the default backlog (5) resets connections under concurrent clients

    def __init__(self, addr, backend: Backend, fault: Fault | None, model: str, api_key: str | None):
        super().__init__(addr, _Handler)
        self.backend, self.fault, self.model, self.api_key = backend, fault, model, api_key
        self.stats: dict[str, int] = {"requests": 0, "completions": 0}
        self.stats_lock = threading.Lock()

    def count(self, name: str) -> None:
        with self.stats_lock:
            self.stats[name] = self.stats.get(name, 0) + 1

    def handle_error(self, request, client_address) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class ChatServer:
    """`with ChatServer(backend) as srv:` → `srv.url` is `http://127.0.0.1:<port>/v1`."""

    def __init__(self, backend: Backend, *, fault: Fault | None = None, model: str = "captioner",
                 api_key: str | None = None, host: str = "127.0.0.1", port: int = 0):
        self._server = _Server((host, port), backend, fault, model, api_key)
        self._thread = threading.Thread(target=self._server.serve_forever, name="chat-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def stats(self) -> dict[str, int]:
        with self._server.stats_lock:
            return dict(self._server.stats)

    def start(self) -> ChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def echo_backend(body: dict[str, Any], image: bytes, prompt: str) -> dict[str, Any]:
    """A backend that does no work (measures the HTTP path and the client alone)."""
    return {"text": "A caption.", "n_tokens": 3, "finish_reason": "stop"}


def main(argv: list[str] | None = None) -> None:
    """`python -m vora_core.caption.server [--model DIR | --echo] [--port N]`: serve until killed.
    Prints the base URL on its first line of output."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", help="a Qwen2-VL model directory to serve with the hf engine")
    parser.add_argument("--echo", action="store_true", help="answer every request at once (benchmarks)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    if args.echo == bool(args.model):
        parser.error("give exactly one of --model and --echo")
    if args.echo:
        backend: Backend = echo_backend
    else:
        from vora_core.caption.engines import HFEngine
        from vora_core.catalog import RecaptionSettings

        settings = RecaptionSettings(model=args.model, max_new_tokens=args.max_new_tokens)
        backend = engine_backend(HFEngine(settings, args.model))
    server = ChatServer(backend, port=args.port, model=args.model or "echo").start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
