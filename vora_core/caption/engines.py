"""Caption engines behind one interface: `caption(requests) -> results`, same order, one each.

* `hf`: transformers `generate`, batched with left padding (CPU or one GPU; the demo's engine).
* `openai`: OpenAI-compatible chat completions against one or more servers (e.g. `vllm serve`), async,
  bounded concurrency, round-robin over the servers, retries with backoff and jitter.
* `vllm`: an in-process `vllm.LLM` (tensor parallel), many images per `generate` call. vLLM lives in
  its own environment (it needs its own CUDA torch); it is imported only when this engine is built.

An engine raises a `VoraError` for a configuration problem (no retry can fix it) and any other
exception for a failure worth retrying; a per-image problem the server reports is a result with
`finish_reason="error"` and the error text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from vora_core.caption.prompts import chat_prompt, sample_seed
from vora_core.catalog import RecaptionSettings
from vora_core.errors import ModelError, VoraError

log = logging.getLogger(__name__)

MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass
class CaptionRequest:
    sample_id: str
    image: Image.Image  # decoded RGB (hf engine, vllm)
    data: bytes  # the encoded file (openai engine sends it as is)
    ext: str  # jpg | png | webp
    prompt: str


@dataclass
class CaptionResult:
    text: str
    n_tokens: int
    finish_reason: str  # stop | length | error
    seconds: float
    error: str | None = None


class Engine(Protocol):
    name: str
    model: str
    batch_size: int

    def caption(self, requests: list[CaptionRequest]) -> list[CaptionResult]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------------------------- hf


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's intra-op threads set to `n` for a while (restored after: other stages share the process).
    For a tiny model one thread beats two: its small matrix products spend more time in OpenMP
    hand-offs than in arithmetic, and on a busy machine a descheduled worker stalls every op."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class HFEngine:
    """transformers `generate` on a Qwen2-VL model directory (or cached hub name).

    Inputs are built here, not by `Qwen2VLProcessor` (whose video half needs torchvision): the PIL
    image processor patchifies, and the chat prompt holds as many image tokens as the image has
    merged patches. Rows are left-padded so every row's answer starts at the same column.
    """

    name = "hf"

    def __init__(self, settings: RecaptionSettings, model_path: str):
        from transformers import AutoModelForImageTextToText, AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from vora_core.model.device import resolve_device, resolve_dtype

        self.settings = settings
        self.model = model_path
        self.batch_size = settings.batch_size
        device = str(resolve_device(settings.device))
        self.device = device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.net = AutoModelForImageTextToText.from_pretrained(
                model_path, dtype=resolve_dtype(settings.dtype, device)
            ).to(device).eval()
        except OSError as e:
            raise ModelError(
                f"recaption.model={model_path!r}: cannot load it ({e}); give a local model directory or "
                f"a model in the Hugging Face cache (this machine cannot download)"
            ) from None
        if Path(model_path, "preprocessor_config.json").exists():
            self.processor = Qwen2VLImageProcessorPil.from_pretrained(model_path)
        else:
            self.processor = Qwen2VLImageProcessorPil()
        cfg = self.net.config
        self.merge = cfg.vision_config.spatial_merge_size
        ids = self.tokenizer.convert_ids_to_tokens(
            [cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.image_token_id]
        )
        self.vision_start, self.vision_end, self.image_pad = ids
        self.tokenizer.padding_side = "left"
        gen = self.net.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._lock = threading.Lock()  # one generate at a time when tasks share this engine

    def prompt_text(self, prompt: str, n_image_tokens: int) -> str:
        return chat_prompt(
            prompt, self.settings.system_prompt, n_image_tokens, self.vision_start, self.vision_end, self.image_pad
        )

    def build_inputs(self, requests: list[CaptionRequest]) -> dict[str, Any]:
        s = self.settings
        enc = self.processor(
            images=[r.image for r in requests], size={"shortest_edge": s.min_pixels, "longest_edge": s.max_pixels},
            return_tensors="pt",
        )
        grid = enc["image_grid_thw"]
        n_tokens = (grid.prod(-1) // (self.merge**2)).tolist()
        texts = [self.prompt_text(r.prompt, n) for r, n in zip(requests, n_tokens, strict=True)]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True)
        return {**batch, "pixel_values": enc["pixel_values"], "image_grid_thw": grid}

    def caption(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        import torch

        if not requests:
            return []
        s = self.settings
        started = time.perf_counter()
        inputs = {k: v.to(self.device) for k, v in self.build_inputs(requests).items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.net.dtype)
        sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p} if s.temperature > 0 else {
            "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with self._lock, torch.inference_mode(), _threads(s.cpu_threads if self.device == "cpu" else None):
            # Sampling is seeded by the batch's samples, so a rerun of the shard gives the same captions.
            torch.manual_seed(sample_seed(s.seed, "|".join(r.sample_id for r in requests)))
            out = self.net.generate(
                **inputs, max_new_tokens=s.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids), **sampling,
            )
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        seconds = (time.perf_counter() - started) / len(requests)
        results = []
        for row in new:
            stop = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            tokens = row if stop is None else row[:stop]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(CaptionResult(text, len(tokens), "stop" if stop is not None else "length", seconds))
        return results

    def close(self) -> None:
        self.net = None


# ------------------------------------------------------------------------------------------- openai

RETRY_STATUS = {408, 409, 425, 429}  # and every 5xx
POOL_SLOTS = 8  # connections per httpx client (see _caption_all)


class RetryableError(Exception):
    """A request failure worth retrying (429, 5xx, timeout, dropped connection)."""


class EngineUnavailable(Exception):
    """Requests still failed after their retries (servers down or overloaded): the batch is retried
    later and, failing that, its shard fails — never marked done."""


class OpenAIEngine:
    """Chat completions (`POST {base_url}/chat/completions`) with images as base64 data URLs."""

    name = "openai"

    def __init__(self, settings: RecaptionSettings, model: str):
        self.settings = settings
        self.o = settings.openai
        self.model = self.o.served_model_name or model
        self.batch_size = max(settings.batch_size, 4 * self.o.concurrency)  # keep every slot busy
        self.base_urls = [u.rstrip("/") for u in self.o.base_urls]
        self._next_url = itertools.count()
        key = os.environ.get(self.o.api_key_env) if self.o.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.retries = 0  # requests retried (all calls), for the stats

    def payload(self, request: CaptionRequest) -> dict[str, Any]:
        s = self.settings
        url = f"data:{MIME.get(request.ext, 'image/jpeg')};base64,{base64.b64encode(request.data).decode()}"
        messages: list[dict[str, Any]] = []
        if s.system_prompt:
            messages.append({"role": "system", "content": s.system_prompt})
        messages.append({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": request.prompt},
        ]})
        return {
            "model": self.model, "messages": messages, "max_tokens": s.max_new_tokens,
            "temperature": s.temperature, "top_p": s.top_p, "seed": sample_seed(s.seed, request.sample_id),
        }

    def caption(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        if not requests:
            return []
        return asyncio.run(self._caption_all(requests))

    async def _caption_all(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        import httpx

        # Several small connection pools instead of one big one: httpcore's pool does work linear in
        # its size for every request, which made one 64-connection client 4x costlier per request.
        sizes = [min(POOL_SLOTS, self.o.concurrency - i) for i in range(0, self.o.concurrency, POOL_SLOTS)]
        slots: asyncio.Queue[int] = asyncio.Queue()
        for c, size in enumerate(sizes):
            for _ in range(size):
                slots.put_nowait(c)
        try:
            async with contextlib.AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(httpx.AsyncClient(
                    timeout=httpx.Timeout(self.o.timeout_s),
                    limits=httpx.Limits(max_connections=size, max_keepalive_connections=size))) for size in sizes]
                async with asyncio.TaskGroup() as group:  # the first fatal error cancels the rest
                    tasks = [group.create_task(self._one(clients, slots, r)) for r in requests]
        except ExceptionGroup as group_error:  # raise one plain error: a configuration error first
            errors = group_error.exceptions
            raise next((e for e in errors if isinstance(e, VoraError)), errors[0]) from None
        return [t.result() for t in tasks]

    async def _one(self, clients: list, slots: asyncio.Queue, request: CaptionRequest) -> CaptionResult:
        body = self.payload(request)
        started = time.perf_counter()
        last = ""
        slot = await slots.get()  # held through retries: a struggling server gets no extra load
        try:
            for attempt in range(self.o.max_retries + 1):
                base = self.base_urls[next(self._next_url) % len(self.base_urls)]  # retries move on
                try:
                    result = await self._post(clients[slot], base, body)
                    result.seconds = time.perf_counter() - started
                    return result
                except RetryableError as e:
                    last = str(e)
                    if attempt == self.o.max_retries:
                        break
                    self.retries += 1
                    delay = self._backoff(attempt, getattr(e, "retry_after", None))
                    log.info("caption request for %s: %s; retry %d in %.2fs", request.sample_id, e, attempt + 1, delay)
                    await asyncio.sleep(delay)
        finally:
            slots.put_nowait(slot)
        raise EngineUnavailable(
            f"openai engine: request for {request.sample_id} failed after {self.o.max_retries} retries: {last}"
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.o.backoff_max_s, self.o.backoff_s * 2**attempt)
        delay = cap / 2 + random.uniform(0, cap / 2)  # exponential, with jitter so clients spread out
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.o.backoff_max_s))
        return delay

    async def _post(self, client, base: str, body: dict[str, Any]) -> CaptionResult:
        import httpx

        url = f"{base}/chat/completions"
        try:
            resp = await client.post(url, json=body, headers=self._headers)
        except httpx.TimeoutException as e:
            raise RetryableError(f"{url}: timed out after {self.o.timeout_s:g}s ({type(e).__name__})") from None
        except httpx.TransportError as e:  # refused, reset, dropped mid-response
            raise RetryableError(f"{url}: {type(e).__name__}: {e}") from None
        status = resp.status_code
        if status in RETRY_STATUS or status >= 500:
            err = RetryableError(f"{url}: HTTP {status} {resp.text[:200]!r}")
            ra = resp.headers.get("retry-after")
            err.retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None  # type: ignore[attr-defined]
            raise err
        if status in (401, 403):
            env = self.o.api_key_env
            where = (f"the environment variable {env!r} (recaption.openai.api_key_env)" if env
                     else "an environment variable named by recaption.openai.api_key_env")
            raise VoraError(f"{url}: HTTP {status} (not authorised): put the server's API key in {where}")
        if status == 404:
            raise VoraError(
                f"{url}: HTTP 404 {resp.text[:200]!r}: check recaption.openai.base_urls (they end in /v1) and "
                f"the served model name {self.model!r} (recaption.openai.served_model_name)"
            )
        if status >= 400:  # this image or request was refused (too large, bad image): counted per image
            return CaptionResult("", 0, "error", 0.0, f"HTTP {status}: {resp.text[:500]}")
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            reason = choice.get("finish_reason") or "stop"
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise RetryableError(f"{url}: malformed response ({type(e).__name__}: {e}): {resp.text[:200]!r}") from None
        n_tokens = (data.get("usage") or {}).get("completion_tokens")
        return CaptionResult(text, int(n_tokens) if n_tokens is not None else 0, reason, 0.0)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------- vllm

VLLM_MISSING = (
    "recaption.engine=vllm needs the `vllm` package, which is not installed in this Python environment. "
    "vLLM brings its own CUDA build of torch, so it lives in its own environment or container image on a "
    "GPU machine: there, `pip install -e '.[vllm]'` (README: \"Recaption with vLLM\"). Alternatively run "
    "`vllm serve <model>` on the GPU machines and use `engine: openai` with `openai.base_urls` pointing at them."
)


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise VoraError(f"{VLLM_MISSING} (import error: {e})") from None
    return vllm


def vllm_llm_kwargs(settings: RecaptionSettings, model_path: str) -> dict[str, Any]:
    """Arguments of `vllm.LLM(...)`."""
    v = settings.vllm
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tensor_parallel_size": v.tensor_parallel_size,
        "max_model_len": v.max_model_len,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "dtype": v.dtype,
        "enforce_eager": v.enforce_eager,
        "seed": settings.seed,
        "limit_mm_per_prompt": {"image": 1},
        # Capped: with no max_pixels vLLM sizes its profiling run for ~16k tokens per image.
        "mm_processor_kwargs": {"min_pixels": settings.min_pixels, "max_pixels": settings.max_pixels},
    }
    if v.max_num_seqs is not None:
        kwargs["max_num_seqs"] = v.max_num_seqs
    return kwargs


def vllm_sampling_kwargs(settings: RecaptionSettings, sample_id: str) -> dict[str, Any]:
    """Arguments of `vllm.SamplingParams(...)` for one image (its own seed: order does not matter)."""
    return {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_new_tokens,
        "seed": sample_seed(settings.seed, sample_id),
    }


def vllm_prompt(settings: RecaptionSettings, request: CaptionRequest) -> dict[str, Any]:
    """One entry of `LLM.generate`'s prompt list: one image placeholder, vLLM expands it."""
    return {
        "prompt": chat_prompt(request.prompt, settings.system_prompt, n_image_tokens=1),
        "multi_modal_data": {"image": request.image},
    }


class VllmEngine:
    name = "vllm"

    def __init__(self, settings: RecaptionSettings, model_path: str):
        vllm = import_vllm()
        self.settings = settings
        self.model = model_path
        self.batch_size = settings.vllm.images_per_call
        self._sampling = vllm.SamplingParams
        self.llm = vllm.LLM(**vllm_llm_kwargs(settings, model_path))
        self._lock = threading.Lock()

    def caption(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        if not requests:
            return []
        prompts = [vllm_prompt(self.settings, r) for r in requests]
        params = [self._sampling(**vllm_sampling_kwargs(self.settings, r.sample_id)) for r in requests]
        started = time.perf_counter()
        with self._lock:
            outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        seconds = (time.perf_counter() - started) / len(requests)
        results = []
        for out in outputs:
            best = out.outputs[0]
            results.append(CaptionResult(best.text, len(best.token_ids), best.finish_reason or "stop", seconds))
        return results

    def close(self) -> None:
        self.llm = None


# ------------------------------------------------------------------------------------------- factory

_ENGINES: dict[tuple, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def build_engine(settings: RecaptionSettings, model: str) -> Engine:
    if settings.engine == "hf":
        return HFEngine(settings, model)
    if settings.engine == "openai":
        return OpenAIEngine(settings, model)
    return VllmEngine(settings, model)


def get_engine(settings: RecaptionSettings, model: str, identity: object = None) -> Engine:
    """One engine per (settings, model, identity of its weights) per process: shards run in the same
    process reuse the loaded model (loading a 72B model per shard would dominate the stage)."""
    key = (settings.model_dump_json(), model, json.dumps(identity, sort_keys=True, default=str))
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            for old in _ENGINES.values():  # settings changed: free the previous model first
                old.close()
            _ENGINES.clear()
            _ENGINES[key] = build_engine(settings, model)
        return _ENGINES[key]
