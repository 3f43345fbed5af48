"""Merge: exact fp32 math, no LoRA/teacher/aux keys left, reload gives the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from model_helpers import image_run, make_vora, randomize_lora
from safetensors import safe_open

from vora_core.errors import ModelError
from vora_core.model.merge import merge_lora, read_header
from vora_core.model.modeling import load_vora, save_vora


def _inputs(tiny):
    ids = torch.tensor([[10, 11, *image_run(tiny, 16), 12, 13, 14]])
    torch.manual_seed(7)
    return ids, [torch.randn(3, 32, 32)]


@pytest.fixture(scope="module")
def pretrained(tiny, tmp_path_factory):
    model = make_vora(tiny, lora_rank=4)
    randomize_lora(model, scale=0.1)
    with torch.no_grad():
        for p in model.vision_embedding.parameters():
            p.add_(0.01)
    out = save_vora(model, tmp_path_factory.mktemp("pretrain") / "final", tiny.tokenizer)
    return model, out


def test_merged_logits_equal_unmerged(tiny, pretrained, tmp_path):
    model, pretrain_dir = pretrained
    merged_dir = merge_lora(pretrain_dir, tmp_path / "merged")
    keys = set(read_header(merged_dir / "model.safetensors"))
    assert not any(".lora_" in k or k.startswith(("teacher.", "aux_heads.")) or "base_layer" in k for k in keys)
    assert "llm.model.layers.0.self_attn.q_proj.weight" in keys and "vision_embedding.pos_embed" in keys
    config = json.loads((merged_dir / "config.json").read_text())
    assert (config["lora_rank"], config["distill"], config["teacher_config"]) == (0, "none", None)
    assert {"tokenizer.json", "chat_template.jinja", "preprocessor_config.json"} <= {p.name for p in
                                                                                     merged_dir.iterdir()}
    merged = load_vora(merged_dir).eval()
    assert merged.teacher is None and merged.aux_heads is None
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    ids, pixels = _inputs(tiny)
    with torch.no_grad():
        before = model(input_ids=ids, pixel_values=pixels).logits
        after = merged(input_ids=ids, pixel_values=pixels).logits
        assert (after - before).abs().max().item() <= 1e-5
        # LoRA was not a no-op: the base weights alone give other logits
        base_only = {n: p.clone() for n, p in model.named_parameters() if ".lora_B." in n}
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.zero_()
        assert (model(input_ids=ids, pixel_values=pixels).logits - before).abs().max().item() > 1e-3
        for name, param in model.named_parameters():
            if name in base_only:
                param.copy_(base_only[name])
        again = load_vora(merged_dir).eval()(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(again, after)


def test_merge_is_w_plus_ba_in_fp32_cast_once(pretrained, tmp_path):
    model, pretrain_dir = pretrained
    merged_dir = merge_lora(pretrain_dir, tmp_path / "bf16", dtype=torch.bfloat16)
    layer = model.llm.model.layers[1].mlp.down_proj
    w, a, b = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = (w.float() + (b.float() @ a.float()) * 1.0).to(torch.bfloat16)
    with safe_open(str(merged_dir / "model.safetensors"), "pt") as f:
        got = f.get_tensor("llm.model.layers.1.mlp.down_proj.weight")
        untouched = f.get_tensor("llm.model.layers.2.mlp.down_proj.weight")  # block 3 has no LoRA
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    assert torch.equal(untouched, model.llm.model.layers[2].mlp.down_proj.weight.to(torch.bfloat16))
    assert load_vora(merged_dir).llm.model.layers[1].mlp.down_proj.weight.dtype == torch.bfloat16


def test_merge_errors_name_the_directory(tmp_path):
    with pytest.raises(ModelError, match=f"^{tmp_path / 'nope'} is not a model directory \\(no config.json\\); "
                                         "run the pretrain stage first$"):
        merge_lora(tmp_path / "nope", tmp_path / "out")
