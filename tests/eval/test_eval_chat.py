"""Chat: streamed answers with several images, text only, and clear errors for bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vora_core.errors import DataError, ModelError
from vora_core.eval import chat, runner
from vora_core.eval.prompts import left_pad


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-images")
    paths = []
    for i, (size, colour) in enumerate([((40, 24), (200, 30, 30)), ((24, 48), (30, 30, 200))]):
        path = root / f"{i}.png"
        Image.new("RGB", size, colour).save(path)
        paths.append(str(path))
    return paths


def test_streamed_pieces_make_the_answer(tiny_eval, images):
    pieces: list[str] = []
    answer = chat.chat_command(str(tiny_eval["pretrain"]), "What colour is the shape?", images,
                               max_new_tokens=8, echo=pieces.append)
    assert pieces[-1] == "\n" and len(pieces) >= 3  # streamed piece by piece, then a newline
    assert "".join(pieces).strip() == answer and answer


def test_streaming_equals_batched_generate(tiny_eval, images):
    loaded = runner.load_model(tiny_eval["pretrain"])
    for question, pics in (("Describe both.", images), ("What is two plus two?", [])):
        enc = loaded.encoder.encode(chat.user_text(question, len(pics)), [chat.open_image(p) for p in pics])
        streamed = list(chat.iter_tokens(loaded.model, enc.input_ids, enc.pixel_values, 10, stop_ids=[]))
        ids, mask = left_pad([enc.input_ids], 0)
        batched = loaded.model.generate(ids, attention_mask=mask, pixel_values=enc.pixel_values or None,
                                        max_new_tokens=10, eos_token_id=[])
        assert streamed == batched[0].tolist() and len(streamed) == 10


def test_text_only_and_placed_images(tiny_eval, images):
    text = chat.generate(tiny_eval["vora"], "What is two plus two?", max_new_tokens=5)
    again = chat.generate(tiny_eval["vora"], "What is two plus two?", max_new_tokens=5)
    assert text == again  # greedy
    assert chat.user_text("Compare <image> with <image>.", 2) == "Compare <image> with <image>."
    assert chat.user_text("Compare them.", 2) == "<image>\n<image>\nCompare them."
    with pytest.raises(DataError, match="the question has 1 <image> markers but 2 images were given"):
        chat.generate(tiny_eval["vora"], "Look at <image>.", images)
    sampled = chat.generate(tiny_eval["vora"], "Say something.", images[:1], max_new_tokens=5, temperature=1.0,
                            seed=3)
    assert sampled == chat.generate(tiny_eval["vora"], "Say something.", images[:1], max_new_tokens=5,
                                    temperature=1.0, seed=3)


def test_clear_errors(tiny_eval, images, tmp_path):
    model = str(tiny_eval["vora"])
    with pytest.raises(DataError, match=rf"image {tmp_path / 'nope.png'} not found; check the --image path"):
        chat.chat_command(model, "Hi?", [str(tmp_path / "nope.png")], echo=lambda s: None)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match=rf"image {bad} is unreadable: "):
        chat.chat_command(model, "Hi?", [str(bad)], echo=lambda s: None)
    with pytest.raises(ModelError, match=rf"model directory {tmp_path / 'none'} does not exist"):
        chat.chat_command(str(tmp_path / "none"), "Hi?", echo=lambda s: None)
    with pytest.raises(ModelError, match=rf"{tmp_path} is not a VoRA model directory \(no config.json\)"):
        chat.chat_command(str(tmp_path), "Hi?", echo=lambda s: None)
    with pytest.raises(ModelError, match=r"is not a VoRA model directory \(config.json has model_type 'qwen2'"):
        chat.chat_command(str(tiny_eval["llm"]), "Hi?", echo=lambda s: None)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    no_weights.joinpath("config.json").write_text((tiny_eval["vora"] / "config.json").read_text())
    with pytest.raises(ModelError, match=r"no-weights: the VoRA model does not load \(OSError: .*is the directory "
                                         r"complete"):
        chat.chat_command(str(no_weights), "Hi?", echo=lambda s: None)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="is not valid JSON"):
        chat.chat_command(str(tmp_path), "Hi?", echo=lambda s: None)
    assert json.loads((tiny_eval["vora"] / "config.json").read_text())["model_type"] == "vora"
    assert torch.is_grad_enabled()  # generation leaves global state alone


def test_vora_chat_command_line(tiny_eval, images):
    import os
    import subprocess
    import sys
    from pathlib import Path

    vora = str(Path(sys.executable).with_name("vora"))
    model = str(tiny_eval["vora"])
    out = subprocess.run([vora, "chat", model, "What colour is the shape?", "--image", images[0], "--image",
                          images[1], "--max-new-tokens", "6"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    expected = chat.chat_command(model, "What colour is the shape?", images, max_new_tokens=6)
    assert out.stdout.strip() == expected
    missing = subprocess.run([vora, "chat", model, "hi", "--image", "/nope.png"], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ") and "/nope.png" in missing.stderr
    assert "Traceback" not in missing.stderr
