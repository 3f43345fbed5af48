"""Block-wise distillation: LLM block i ↔ teacher block i, `last` = block N, teacher grid alignment."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from model_helpers import image_run, make_vora, randomize_lora
from transformers import Aimv2VisionConfig, Aimv2VisionModel

from vora_core.model import masks
from vora_core.model.distill import teacher_targets


def _loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def _batch(tiny):
    ids = torch.tensor([[10, *image_run(tiny, 16), 11, *image_run(tiny, 16), 12]])
    labels = torch.where(ids == tiny.image_token_id, -100, ids)
    torch.manual_seed(3)
    return ids, labels, [torch.randn(3, 32, 32), torch.randn(3, 32, 32)]


def _record(layers, store):
    def make(i):
        def hook(module, args, output):
            store.setdefault(i, []).append(output[0] if isinstance(output, tuple) else output)

        return hook

    return [layer.register_forward_hook(make(i + 1)) for i, layer in enumerate(layers)]


def test_blockwise_matches_llm_block_i_to_teacher_block_i(tiny):
    model = make_vora(tiny)
    randomize_lora(model)
    with torch.no_grad():  # a random tiny teacher barely changes its residual stream: make block 2 matter
        for param in model.teacher.encoder.layers[1].parameters():
            param.normal_(0.0, 0.5)
    assert model.config.lora_layers == 2 and model.config.distill_blocks == [1, 2]
    assert sorted(model.aux_heads.keys()) == ["1", "2"]
    ids, labels, pixels = _batch(tiny)
    llm_out: dict[int, list[torch.Tensor]] = {}
    teacher_out: dict[int, list[torch.Tensor]] = {}
    handles = _record(model.llm.get_decoder().layers, llm_out) + _record(model.teacher.encoder.layers, teacher_out)
    model(input_ids=ids, pixel_values=pixels, labels=labels)
    for h in handles:
        h.remove()
    is_image = ids == tiny.image_token_id
    with torch.no_grad():
        # Fit head i so that it maps LLM block i exactly onto teacher block i (32 tokens, 64 dims):
        # the reported loss of block i can then only be ~0 if block i was paired with block i.
        for i in (1, 2):
            normed = model.aux_heads[str(i)].norm(llm_out[i][0][is_image])
            fit = torch.linalg.lstsq(normed, teacher_out[i][0].reshape(-1, 32)).solution
            model.aux_heads[str(i)].proj.weight.copy_(fit.T)
    out = model(input_ids=ids, pixel_values=pixels, labels=labels)
    with torch.no_grad():
        expected = {}
        for i in (1, 2):
            student = model.aux_heads[str(i)](llm_out[i][0][is_image])
            expected[i] = _loss(student, teacher_out[i][0].reshape(-1, 32))
            assert expected[i].item() < 1e-4
            torch.testing.assert_close(out.distill_losses[i], expected[i], rtol=0, atol=1e-6)
        # the off-by-one pairing of the reference implementation would give a clearly larger loss
        shifted = _loss(model.aux_heads["1"](llm_out[1][0][is_image]), teacher_out[2][0].reshape(-1, 32))
        assert shifted.item() > 0.05
        # block i is HF's hidden_states[i] on both sides (index 0 = embeddings)
        teacher_hs = model.teacher(pixel_values=torch.stack(pixels), output_hidden_states=True).hidden_states
        for i in (1, 2):
            torch.testing.assert_close(teacher_out[i][0], teacher_hs[i], rtol=0, atol=0)
        embeds = model.get_input_embeddings()(ids)
        embeds[is_image] = model.vision_embedding(pixels)
        image_ids = masks.image_ids_from_input_ids(ids, tiny.image_token_id, torch.tensor([16, 16]))
        mask = masks.dense_mask(torch.zeros_like(ids), masks.visibility_limit(image_ids, 2, True), torch.float32)
        llm_hs = model.llm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states
        for i in (1, 2):
            torch.testing.assert_close(llm_out[i][0], llm_hs[i], rtol=0, atol=1e-6)
    assert len(teacher_out[1]) == 1  # one teacher pass for both (same-sized) images
    torch.testing.assert_close(out.distill_loss, (expected[1] + expected[2]) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, out.lm_loss + out.distill_loss, rtol=0, atol=1e-6)


def test_last_uses_block_n_only(tiny):
    model = make_vora(tiny, distill="last")
    assert model.config.distill_blocks == [2] and list(model.aux_heads.keys()) == ["2"]
    ids, labels, pixels = _batch(tiny)
    llm_out: dict[int, list[torch.Tensor]] = {}
    teacher_out: dict[int, list[torch.Tensor]] = {}
    handles = _record(model.llm.get_decoder().layers, llm_out) + _record(model.teacher.encoder.layers, teacher_out)
    out = model(input_ids=ids, pixel_values=pixels, labels=labels)
    for h in handles:
        h.remove()
    assert list(out.distill_losses) == [2]
    with torch.no_grad():
        is_image = ids == tiny.image_token_id
        expected = _loss(model.aux_heads["2"](llm_out[2][0][is_image]), teacher_out[2][0].reshape(-1, 32))
    torch.testing.assert_close(out.distill_loss, expected, rtol=0, atol=1e-6)


def test_teacher_stops_after_the_deepest_distilled_block(tiny):
    model = make_vora(tiny, lora_layers=1)
    calls = {"block2": 0, "final_norm": 0}
    model.teacher.encoder.layers[1].register_forward_hook(lambda *a: calls.__setitem__("block2", calls["block2"] + 1))
    model.teacher.rms_norm.register_forward_hook(lambda *a: calls.__setitem__("final_norm", calls["final_norm"] + 1))
    ids, labels, pixels = _batch(tiny)
    out = model(input_ids=ids, pixel_values=pixels, labels=labels)
    assert list(out.distill_losses) == [1]
    assert calls == {"block2": 0, "final_norm": 0}


def test_no_distillation_without_labels_or_images(tiny):
    model = make_vora(tiny)
    ids, labels, pixels = _batch(tiny)
    assert model(input_ids=ids, pixel_values=pixels).distill_loss is None
    text = torch.tensor([[10, 11, 12, 13]])
    model.train()
    out = model(input_ids=text, labels=text)
    assert out.distill_losses is None and out.distill_loss.item() == 0.0
    out.loss.backward()  # the zero term reaches the vision side, so DDP sees every trainable parameter
    assert model.vision_embedding.proj.weight.grad is not None
    assert torch.count_nonzero(model.vision_embedding.proj.weight.grad) == 0


def _teacher(image_size: int, patch_size: int) -> Aimv2VisionModel:
    torch.manual_seed(5)
    config = Aimv2VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                               image_size=image_size, patch_size=patch_size, use_head=False)
    return Aimv2VisionModel(config).eval()


def test_teacher_tokens_are_interpolated_to_the_student_grid():
    teacher = _teacher(image_size=32, patch_size=4)  # 8×8 teacher grid
    images = [torch.randn(3, 24, 40)]  # student patch 8 → 3×5 grid (non-square, other size)
    got = teacher_targets(teacher, teacher.config, images, student_patch=8, blocks=[1, 2])
    with torch.no_grad():
        resized = F.interpolate(images[0][None], size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
        hs = teacher(pixel_values=resized, output_hidden_states=True).hidden_states
    for i in (1, 2):
        grid = hs[i].transpose(1, 2).reshape(1, 16, 8, 8)
        expected = F.interpolate(grid, size=(3, 5), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        assert got[i].shape == (15, 16)
        torch.testing.assert_close(got[i], expected[0], rtol=0, atol=1e-6)


def test_teacher_tokens_are_used_unchanged_when_grids_match():
    teacher = _teacher(image_size=32, patch_size=8)
    images = torch.randn(2, 3, 32, 32)
    got = teacher_targets(teacher, teacher.config, images, student_patch=8, blocks=[2])
    with torch.no_grad():
        hs = teacher(pixel_values=images, output_hidden_states=True).hidden_states
    assert torch.equal(got[2], hs[2].reshape(-1, 16))
