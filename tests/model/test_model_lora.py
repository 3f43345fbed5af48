"""LoRA placement, the trainable set per stage, parameter counts and where gradients flow."""

from __future__ import annotations

import pytest
import torch
from model_helpers import image_run, make_vora, randomize_lora
from transformers import AutoModelForCausalLM

from vora_core.errors import ModelError
from vora_core.model.config import VoRAConfig
from vora_core.model.lora import configure_trainable

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _base_name(name: str) -> str:
    return name.removeprefix("llm.").replace(".base_layer.", ".")


def test_lora_sits_on_the_first_n_blocks_and_adds_no_base_parameters(tiny):
    llm = AutoModelForCausalLM.from_pretrained(str(tiny.llm_dir))
    original = {n: p.numel() for n, p in llm.named_parameters()}
    model = make_vora(tiny, lora_rank=4)  # teacher depth 2 → LoRA on blocks 0 and 1 of 3
    lora = [n for n, _ in model.named_parameters() if ".lora_" in n]
    assert len(lora) == 2 * 7 * 2  # A and B × 7 projections × 2 blocks
    assert {n.split(".")[3] for n in lora} == {"0", "1"}
    assert {n.split(".")[-4] for n in lora} == set(TARGETS)
    base = {_base_name(n): p.numel() for n, p in model.named_parameters() if n.startswith("llm.") and ".lora_" not in n}
    assert base == original  # same names, same sizes: no bias added by LoRA (o_proj, MLP have none)
    for module in model.modules():
        if hasattr(module, "lora_A"):
            assert module.scaling == {"default": 1.0}
            assert module.lora_dropout["default"].__class__.__name__ == "Identity"
            assert torch.count_nonzero(module.lora_B["default"].weight) == 0


def test_pretrain_trainable_set_and_counts(tiny):
    model = make_vora(tiny, lora_rank=4)
    counts = configure_trainable(model, "pretrain")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters()
                if ".lora_" in n or n.startswith(("vision_embedding.", "aux_heads."))}
    assert trainable == expected
    h, inter, kv, r = 64, 128, 2 * 16, 4  # tiny LLM: 4 heads × 16, 2 KV heads
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    lora_params = 2 * sum(r * (i + o) for i, o in shapes.values())
    vision = 3 * 32 * 8 * 8 + 32 + 32 + 16 * 32 + 32 * h  # conv w+b, norm, 4×4 pos table, projection
    heads = 2 * (h + h * 32)  # two heads: RMSNorm(64) + Linear(64→32)
    assert counts["trainable"] == lora_params + vision + heads
    assert counts["trainable"] + counts["frozen"] == sum(p.numel() for p in model.parameters())


def test_gradients_reach_lora_and_embedding_never_the_frozen_base(tiny):
    model = make_vora(tiny, lora_rank=4)
    randomize_lora(model)  # with B = 0, A's gradient is exactly zero
    configure_trainable(model, "pretrain")
    model.train()
    ids = torch.tensor([[10, *image_run(tiny, 16), 11, 12]])
    out = model(input_ids=ids, pixel_values=[torch.randn(3, 32, 32)], labels=ids)
    out.loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name
        else:
            assert param.grad is None, name
    assert not model.teacher.training  # model.train() leaves the frozen teacher in eval mode


def test_finetune_trains_the_full_llm_and_embedding_of_a_model_without_lora(tiny):
    model = make_vora(tiny, teacher=False, lora_rank=0)
    counts = configure_trainable(model, "finetune")
    assert counts["frozen"] == 0
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ModelError, match="^finetune trains the full LLM but this model still has LoRA layers; "
                                         "merge it first"):
        configure_trainable(make_vora(tiny, lora_rank=4), "finetune")


def test_more_lora_blocks_than_llm_blocks_is_a_config_error(tiny):
    text = AutoModelForCausalLM.from_pretrained(str(tiny.llm_dir)).config
    with pytest.raises(ModelError) as err:
        VoRAConfig(text_config=text, lora_layers=5, distill="none")
    assert str(err.value) == ("lora_layers=5 but the LLM has only 3 blocks; set lora_layers ≤ 3 (it defaults "
                              "to the teacher's depth, so a deeper teacher needs an explicit lora_layers)")
    with pytest.raises(ModelError, match="^vision_attention='full' is not one of"):
        VoRAConfig(text_config=text, vision_attention="full", distill="none")


def test_fresh_lora_leaves_the_llm_text_output_unchanged(tiny):
    llm = AutoModelForCausalLM.from_pretrained(str(tiny.llm_dir)).eval()
    model = make_vora(tiny, lora_rank=4)
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, llm(ids).logits, rtol=0, atol=0)


def test_a_llama_llm_works(tiny, tmp_path):
    from vora_core.model.modeling import VoRAForCausalLM
    from vora_core.model.tiny import build_tiny_llm

    llama = build_tiny_llm(tmp_path / "llama", tiny.tokenizer, arch="llama", num_hidden_layers=2, seed=2)
    model = VoRAForCausalLM.from_parts(llama, tiny.teacher_dir, lora_rank=2, image_size=32, patch_size=8)
    assert type(model.llm).__name__ == "LlamaForCausalLM"
    assert sum(".lora_A." in n for n, _ in model.named_parameters()) == 7 * 2
    ids = torch.tensor([[10, *image_run(tiny, 16), 11]])
    out = model(input_ids=ids, pixel_values=[torch.randn(3, 32, 32)], labels=ids)
    assert sorted(out.distill_losses) == [1, 2] and torch.isfinite(out.loss)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny):
    ids = torch.tensor([[10, *image_run(tiny, 16), 11, 12, 13]])
    pixels = [torch.randn(3, 32, 32)]
    results = []
    for checkpointing in (False, True):
        model = make_vora(tiny, lora_rank=4)
        randomize_lora(model)
        configure_trainable(model, "pretrain")
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        out = model(input_ids=ids, pixel_values=pixels, labels=ids)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    for name, grad in grads_a.items():  # distillation gradients survive recomputation
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-7)


def test_pretrain_without_lora_trains_every_llm_weight_and_keeps_the_teacher_frozen(tiny):
    model = make_vora(tiny, lora_rank=0)  # the paper's full-parameter ablation
    counts = configure_trainable(model, "pretrain")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if not n.startswith("teacher.")}
    assert counts["frozen"] == sum(p.numel() for n, p in model.named_parameters() if n.startswith("teacher.")) > 0
