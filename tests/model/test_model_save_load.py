"""Save/load round trips through plain HF directories, offline, via the Auto classes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_helpers import image_run, make_vora, randomize_lora

from vora_core.errors import ModelError
from vora_core.model.modeling import load_vora, save_vora

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    model = make_vora(tiny, lora_rank=4)
    randomize_lora(model)
    return model, save_vora(model, tmp_path_factory.mktemp("vora") / "model", tiny.tokenizer)


def _inputs(tiny):
    torch.manual_seed(1)
    return torch.tensor([[10, *image_run(tiny, 16), 11, 12]]), [torch.randn(3, 32, 32)]


def test_round_trip_gives_identical_logits_without_network(tiny, saved, monkeypatch):
    model, path = saved
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "chat_template.jinja"} <= files
    assert not any(name.endswith((".bin", ".pt", ".py")) for name in files)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "vora" and config["architectures"] == ["VoRAForCausalLM"]
    assert "auto_map" not in config

    def no_network(*args, **kwargs):
        raise AssertionError("network access while loading a local model")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    loaded = load_vora(path).eval()
    ids, pixels = _inputs(tiny)
    labels = torch.where(ids == tiny.image_token_id, -100, ids)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=pixels).logits,
                           loaded(input_ids=ids, pixel_values=pixels).logits)
        a = model(input_ids=ids, pixel_values=pixels, labels=labels)
        b = loaded(input_ids=ids, pixel_values=pixels, labels=labels)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.distill_loss, b.distill_loss)


def test_auto_classes_load_after_import_vora_core_in_a_fresh_process(tiny, saved):
    _, path = saved
    ids, pixels = _inputs(tiny)
    with torch.no_grad():
        expected = saved[0](input_ids=ids, pixel_values=pixels).logits
    torch.save({"ids": ids, "pixels": pixels, "expected": expected}, path.parent / "probe.pt")
    script = f"""
import sys
import vora_core
assert "torch" not in sys.modules, "import vora_core must stay cheap"
import torch
from transformers import AutoConfig, AutoModelForCausalLM
assert AutoConfig.from_pretrained({str(path)!r}).model_type == "vora"
model = AutoModelForCausalLM.from_pretrained({str(path)!r}).eval()
probe = torch.load({str(path.parent / 'probe.pt')!r})
with torch.no_grad():
    logits = model(input_ids=probe["ids"], pixel_values=probe["pixels"]).logits
assert torch.equal(logits, probe["expected"]), (logits - probe["expected"]).abs().max()
print(type(model).__name__)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "VoRAForCausalLM"


def test_loading_a_missing_directory_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=f"^{tmp_path / 'absent'} is not a model directory \\(no config.json\\); "
                                         "run the stage that writes it first$"):
        load_vora(tmp_path / "absent")
