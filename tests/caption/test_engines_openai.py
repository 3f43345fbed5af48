"""The openai engine end to end against real HTTP servers on 127.0.0.1 that serve the hf engine and
misbehave (429, 500, slow answers, dropped connections)."""

import logging
import threading

import pyarrow.parquet as pq
import pytest

from vora_core.caption.engines import CaptionRequest, EngineUnavailable, HFEngine, OpenAIEngine
from vora_core.caption.server import ChatServer, engine_backend, parse_chat
from vora_core.errors import StageError, VoraError
from vora_core.stages import run_stage
from vora_core.workdir import read_marker

KEY = "sk-test-0123456789abcdef"


class FirstAttemptFaults:
    """The k-th distinct image to arrive gets FAULTS[k % 5] on its first request; retries succeed."""

    FAULTS = [429, 500, "slow:2.5", "drop", None]

    def __init__(self):
        self.seen: dict[bytes, int] = {}
        self.lock = threading.Lock()

    def __call__(self, body):
        image, _ = parse_chat(body)
        with self.lock:
            first = image not in self.seen
            self.seen[image] = self.seen.get(image, 0) + 1
            return self.FAULTS[(len(self.seen) - 1) % 5] if first else None


def openai_settings(urls, **kw):
    return {"engine": "openai", "openai": {
        "base_urls": urls, "served_model_name": "captioner", "api_key_env": "VORA_TEST_KEY",
        "concurrency": 4, "timeout_s": 2.0, "max_retries": 4, "backoff_s": 0.01, "backoff_max_s": 0.05, **kw}}


@pytest.mark.slow
def test_every_image_gets_exactly_one_caption_through_faulty_servers(
        tmp_path, captioner_dir, shards, catalog, monkeypatch, caplog):
    n = shards(tmp_path / "hf", n_shards=2, per_shard=5)
    shards(tmp_path / "api", n_shards=2, per_shard=5)
    reference = catalog(tmp_path / "hf", str(captioner_dir))
    run_stage("recaption", reference)

    monkeypatch.setenv("VORA_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    backend = engine_backend(HFEngine(reference.recaption, str(captioner_dir)))
    faults = FirstAttemptFaults()
    with ChatServer(backend, fault=faults, api_key=KEY) as a, ChatServer(backend, fault=faults, api_key=KEY) as b:
        cat = catalog(tmp_path / "api", "unused-for-openai", **openai_settings([a.url, b.url]))
        results = run_stage("recaption", cat)
        stats = [a.stats, b.stats]

    assert [r["status"] for r in results] == ["done", "done"]
    for shard in ("00000", "00001"):
        got = pq.read_table(tmp_path / "api" / "captions" / "shapes" / f"{shard}.parquet").to_pylist()
        want = pq.read_table(tmp_path / "hf" / "captions" / "shapes" / f"{shard}.parquet").to_pylist()
        assert [r["sample_id"] for r in got] == [r["sample_id"] for r in want]  # one row each, in order
        assert len({r["sample_id"] for r in got}) == len(got) == 5
        for g, w in zip(got, want, strict=True):
            assert (g["caption"], g["n_tokens"], g["finish_reason"], g["flags"], g["prompt"]) == (
                w["caption"], w["n_tokens"], w["finish_reason"], w["flags"], w["prompt"])
            assert (g["engine"], g["model"], w["engine"]) == ("openai", "captioner", "hf")
    total = {k: sum(s.get(k, 0) for s in stats) for k in ("requests", "completions", "fault:429", "fault:500",
                                                          "fault:slow", "fault:drop")}
    assert total["fault:429"] >= 2 and total["fault:500"] >= 2 and total["fault:slow"] >= 2
    assert total["fault:drop"] >= 2
    # Each image: one answered request, plus one per injected fault (more only if the machine is so
    # loaded that a normal answer took longer than the client's timeout).
    assert total["completions"] >= n
    assert total["requests"] >= n + total["fault:429"] + total["fault:500"] + total["fault:drop"] + total["fault:slow"]
    assert all(s["requests"] > 0 for s in stats)  # round robin reached both servers
    assert KEY not in caplog.text  # the key is never logged
    assert "retry" in caplog.text


def test_exhausted_retries_fail_the_shard_and_leave_no_output(tmp_path, shards, catalog):
    shards(tmp_path, n_shards=1, per_shard=1)  # one image: no request is cancelled by another's failure
    with ChatServer(lambda body, image, prompt: {"text": "x"}, fault=lambda body: 503) as srv:
        cat = catalog(tmp_path, "m", batch_retries=1, **openai_settings([srv.url], max_retries=2))
        with pytest.raises(StageError) as e:
            run_stage("recaption", cat)
        requests = srv.stats["requests"]
    msg = str(e.value)
    assert msg.startswith("recaption shapes/00000: a batch of 1 image failed 2 times: EngineUnavailable: "
                          "openai engine: request for shapes/00000000")
    assert f"failed after 2 retries: {srv.url}/chat/completions: HTTP 503" in msg
    assert requests == 2 * 3  # batch attempts x (1 + retries)
    out = tmp_path / "captions" / "shapes" / "00000.parquet"
    assert not out.exists() and read_marker(out) is None


def test_missing_api_key_is_a_clear_error_without_retries(tmp_path, shards, catalog, monkeypatch):
    shards(tmp_path, n_shards=1, per_shard=2)
    monkeypatch.delenv("VORA_TEST_KEY", raising=False)
    with ChatServer(lambda body, image, prompt: {"text": "x"}, api_key=KEY) as srv:
        cat = catalog(tmp_path, "m", **openai_settings([srv.url]))
        with pytest.raises(VoraError) as e:
            run_stage("recaption", cat)
        assert srv.stats["requests"] == 0  # refused before the handler counts it
    assert str(e.value) == (f"{srv.url}/chat/completions: HTTP 401 (not authorised): put the server's API key in "
                            "the environment variable 'VORA_TEST_KEY' (recaption.openai.api_key_env)")


def test_wrong_route_names_base_urls(tmp_path, catalog):
    with ChatServer(lambda body, image, prompt: {"text": "x"}) as srv:
        settings = catalog(tmp_path, "m", **openai_settings([srv.url.removesuffix("/v1")])).recaption
        engine = OpenAIEngine(settings, "m")
        with pytest.raises(VoraError, match=r"HTTP 404 .*check recaption.openai.base_urls \(they end in /v1\)"):
            engine.caption([CaptionRequest("s/1", None, b"\xff\xd8", "jpg", "Describe.")])


def test_payload_is_a_chat_completion_with_a_data_url(tmp_path, catalog):
    settings = catalog(tmp_path, "m", max_new_tokens=33, seed=4, **openai_settings(["http://127.0.0.1:1/v1"])).recaption
    body = OpenAIEngine(settings, "ignored").payload(CaptionRequest("s/1", None, b"PNGDATA", "png", "Describe."))
    assert body == {
        "model": "captioner",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,UE5HREFUQQ=="}},
                {"type": "text", "text": "Describe."},
            ]},
        ],
        "max_tokens": 33, "temperature": 0.0, "top_p": 1.0, "seed": body["seed"],
    }
    assert parse_chat(body) == (b"PNGDATA", "Describe.")


def test_raised_error_types_are_plain(tmp_path, catalog):
    """Connection refused everywhere: EngineUnavailable (retryable by the stage), not an ExceptionGroup."""
    settings = catalog(tmp_path, "m", **openai_settings(["http://127.0.0.1:9/v1"], max_retries=1)).recaption
    with pytest.raises(EngineUnavailable, match=r"failed after 1 retries: http://127.0.0.1:9/v1/chat/completions: "
                                                 r"ConnectError"):
        OpenAIEngine(settings, "m").caption([CaptionRequest("s/1", None, b"x", "jpg", "Describe.")] * 3)
