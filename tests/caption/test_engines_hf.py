"""The hf engine on the tiny captioner: inputs, left-padded batches, finish reasons, seeding."""

import pytest
import torch

from vora_core.caption.engines import CaptionRequest, HFEngine
from vora_core.data.images import open_rgb
from vora_core.errors import ModelError


def requests(image, prompts, n=3):
    return [CaptionRequest(f"shapes/{i}", open_rgb(image(i)), image(i), "jpg", prompts[i % len(prompts)])
            for i in range(n)]


def test_inputs_hold_one_image_token_per_merged_patch(tmp_path, captioner_dir, catalog, image):
    engine = HFEngine(catalog(tmp_path, str(captioner_dir)).recaption, str(captioner_dir))
    reqs = requests(image, ["Describe this image.", "What is shown here? Give a long answer."])
    inputs = engine.build_inputs(reqs)
    # 48x40 px (w x h) images: sides rounded to multiples of 28 → 56x28 → 4x2 patches of 14 px →
    # 2x1 after the 2x2 merge = 2 image tokens each.
    assert inputs["image_grid_thw"].tolist() == [[1, 2, 4]] * 3
    assert inputs["pixel_values"].shape == (3 * 8, 3 * 2 * 14 * 14)
    pad_id = engine.net.config.image_token_id
    assert (inputs["input_ids"] == pad_id).sum(1).tolist() == [2, 2, 2]
    # Left padding: every row ends with the assistant header, padding sits at the start.
    mask = inputs["attention_mask"]
    assert mask[:, -1].tolist() == [1, 1, 1] and mask[0, 0].item() == 0 and mask[1, 0].item() == 1
    text = engine.tokenizer.decode(inputs["input_ids"][1][mask[1].bool()])
    assert text == engine.prompt_text("What is shown here? Give a long answer.", 2)
    assert text.endswith("What is shown here? Give a long answer.<|im_end|>\n<|im_start|>assistant\n")


def test_batched_generation_equals_one_by_one(tmp_path, captioner_dir, catalog, image):
    engine = HFEngine(catalog(tmp_path, str(captioner_dir), max_new_tokens=10).recaption, str(captioner_dir))
    reqs = requests(image, ["Describe this image.", "What is shown here? Give a long answer.", "Caption."], n=4)
    batched = engine.caption(reqs)
    single = [engine.caption([r])[0] for r in reqs]
    assert [(r.text, r.n_tokens, r.finish_reason) for r in batched] == [
        (r.text, r.n_tokens, r.finish_reason) for r in single]
    assert len({r.text for r in batched}) == 4  # the answer depends on the image and the prompt
    assert all(r.n_tokens == 10 and r.finish_reason == "length" for r in batched)
    assert all(r.seconds > 0 for r in batched)


def test_finish_reason_stop_when_eos_is_generated(tmp_path, captioner_dir, catalog, image):
    engine = HFEngine(catalog(tmp_path, str(captioner_dir), max_new_tokens=6).recaption, str(captioner_dir))
    eos = engine.net.generation_config.eos_token_id
    # Make <|im_end|> the most likely next token everywhere (this engine's own copy of the weights).
    with torch.no_grad():
        engine.net.lm_head.weight[eos] *= 1000
    out = engine.caption(requests(image, ["Describe."], n=2))
    assert [(r.text, r.n_tokens, r.finish_reason) for r in out] == [("", 0, "stop"), ("", 0, "stop")]


def test_sampling_is_reproducible(tmp_path, captioner_dir, catalog, image):
    settings = catalog(tmp_path, str(captioner_dir), temperature=1.0, top_p=0.95).recaption
    engine = HFEngine(settings, str(captioner_dir))
    reqs = requests(image, ["Describe this image."], n=2)
    first = [r.text for r in engine.caption(reqs)]
    assert first == [r.text for r in engine.caption(reqs)]
    greedy = HFEngine(catalog(tmp_path, str(captioner_dir)).recaption, str(captioner_dir))
    assert first != [r.text for r in greedy.caption(reqs)]


def test_missing_model_is_a_clear_error(tmp_path, catalog):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelError, match=r"^recaption.model='.*no-such-model': cannot load it \(.*\); give a local "
                                         r"model directory or a model in the Hugging Face cache"):
        HFEngine(catalog(tmp_path, missing).recaption, missing)
