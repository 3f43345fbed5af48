"""Vision embedding: positional interpolation, teacher initialisation, mixed sizes, token counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from model_helpers import make_vora
from PIL import Image
from transformers import AutoModelForCausalLM

from vora_core.model.config import VoRAConfig
from vora_core.model.image_processing import preprocess_image
from vora_core.model.vision_embedding import VisionEmbedding, interpolate_pos_embed


def _embedding() -> VisionEmbedding:
    torch.manual_seed(0)
    emb = VisionEmbedding(patch_size=8, vision_hidden=16, llm_hidden=24, base_grid=4)
    torch.nn.init.normal_(emb.pos_embed)
    return emb


def test_base_grid_is_used_unchanged():
    emb = _embedding()
    assert emb.pos_embed_for(4, 4) is emb.pos_embed


def test_non_square_grids_are_interpolated_not_sliced():
    emb = _embedding()
    got = emb.pos_embed_for(2, 6)
    grid = emb.pos_embed.detach().reshape(1, 4, 4, 16).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(2, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(got, expected.permute(0, 2, 3, 1).reshape(12, 16), rtol=0, atol=0)
    sliced = emb.pos_embed.detach()[:12]  # the reference implementation's fault
    assert not torch.allclose(got, sliced, atol=1e-3)
    constant = torch.full((16, 16), 0.25)
    torch.testing.assert_close(interpolate_pos_embed(constant, 4, 3, 7), torch.full((21, 16), 0.25),
                               rtol=0, atol=1e-6)


def test_mixed_sizes_equal_one_image_at_a_time():
    emb = _embedding()
    images = [torch.randn(3, 32, 32), torch.randn(3, 16, 48), torch.randn(3, 32, 32)]
    together = emb(images)
    alone = torch.cat([emb([img]) for img in images])
    assert together.shape == (16 + 12 + 16, 24)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(emb(torch.stack([images[0], images[2]])), emb([images[0], images[2]]),
                               rtol=0, atol=0)


def test_initialised_from_the_aimv2_teacher(tiny):
    model = make_vora(tiny)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.vision_embedding.embed_patches(pixels)
        teacher = model.teacher.embeddings(pixels)
    torch.testing.assert_close(ours, teacher, rtol=0, atol=1e-6)
    assert model.vision_embedding.proj.bias is None
    assert model.vision_embedding.proj.weight.shape == (64, 32)


def test_image_token_counts_for_fixed_and_native_resizing(tiny):
    text = AutoModelForCausalLM.from_pretrained(str(tiny.llm_dir)).config
    fixed = VoRAConfig(text_config=text, image_size=448, patch_size=14, distill="none", lora_rank=0)
    assert fixed.num_image_tokens(480, 640) == 1024 and fixed.image_grid(100, 30) == (32, 32)
    native = VoRAConfig(text_config=text, image_size=448, patch_size=14, distill="none", lora_rank=0,
                        image_resize="native", max_image_tokens=1024)
    assert native.image_grid(448, 448) == (32, 32)
    assert native.image_grid(480, 640) == (28, 36)  # aspect kept; 28×37 = 1036 > 1024, so one column less
    assert native.num_image_tokens(480, 640) <= 1024
    assert native.image_grid(28, 56) == (2, 4)  # small images are not upscaled
    image = Image.new("RGB", (56, 28), (255, 0, 0))
    pixels = preprocess_image(image, native)
    assert pixels.shape == (3, 28, 56)
    expected_red = (1.0 - native.image_mean[0]) / native.image_std[0]
    torch.testing.assert_close(pixels[0], torch.full((28, 56), expected_red), rtol=0, atol=1e-5)


def test_tiny_teacher_positions_are_a_unit_scale_2d_table(tiny):
    from vora_core.model.tiny import sincos_2d

    table = sincos_2d(4, 32)
    assert table.shape == (16, 32)
    # row r, column c: sin/cos of r in the first half, of c in the second (first frequency is 1)
    assert torch.equal(table[6, [0, 8, 16, 24]], torch.tensor([1.0, 1.0, 2.0, 2.0]).sin() * torch.tensor([1, 0, 1, 0])
                       + torch.tensor([1.0, 1.0, 2.0, 2.0]).cos() * torch.tensor([0, 1, 0, 1]))
    assert len({tuple(row.tolist()) for row in table}) == 16  # every place distinct
    assert abs(table.pow(2).mean().sqrt().item() - 2 ** -0.5) < 0.05  # as strong as unit-RMS patch features
    model = make_vora(tiny)
    torch.testing.assert_close(model.teacher.embeddings.position_embedding.weight, table, rtol=0, atol=0)
    torch.testing.assert_close(model.vision_embedding.pos_embed, table, rtol=0, atol=1e-6)
