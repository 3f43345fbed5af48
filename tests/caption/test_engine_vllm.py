"""The vllm engine's prompts and request arguments, checked without vllm; its import error."""

import importlib.util

import pytest
from PIL import Image

from vora_core.caption.engines import (
    VLLM_MISSING,
    CaptionRequest,
    get_engine,
    import_vllm,
    vllm_llm_kwargs,
    vllm_prompt,
    vllm_sampling_kwargs,
)
from vora_core.caption.prompts import sample_seed
from vora_core.catalog import parse_catalog
from vora_core.errors import VoraError

no_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")


def settings(**recaption):
    return parse_catalog({
        "name": "t", "workdir": "/tmp/t", "sources": {"s": {"kind": "synthetic_shapes"}},
        "recaption": {"engine": "vllm", "model": "Qwen/Qwen2-VL-72B-Instruct", **recaption},
    }).recaption


def test_llm_arguments():
    s = settings(seed=3, min_pixels=3136, max_pixels=200704,
                 vllm={"tensor_parallel_size": 8, "max_model_len": 4096, "gpu_memory_utilization": 0.85})
    assert vllm_llm_kwargs(s, "Qwen/Qwen2-VL-72B-Instruct") == {
        "model": "Qwen/Qwen2-VL-72B-Instruct",
        "tensor_parallel_size": 8,
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.85,
        "dtype": "auto",
        "enforce_eager": False,
        "seed": 3,
        "limit_mm_per_prompt": {"image": 1},
        "mm_processor_kwargs": {"min_pixels": 3136, "max_pixels": 200704},
    }
    assert vllm_llm_kwargs(settings(vllm={"max_num_seqs": 64}), "m")["max_num_seqs"] == 64


def test_sampling_arguments_are_seeded_per_image():
    s = settings(seed=5, temperature=0.7, top_p=0.8, max_new_tokens=300)
    assert vllm_sampling_kwargs(s, "datacomp/000010004") == {
        "temperature": 0.7, "top_p": 0.8, "max_tokens": 300, "seed": sample_seed(5, "datacomp/000010004"),
    }
    assert vllm_sampling_kwargs(s, "a")["seed"] != vllm_sampling_kwargs(s, "b")["seed"]


def test_prompt_has_one_image_placeholder():
    image = Image.new("RGB", (32, 32))
    req = CaptionRequest("gldv2/000000001", image, b"", "jpg", "Describe this image in detail.")
    s = settings(system_prompt="You are a helpful assistant.")
    assert vllm_prompt(s, req) == {
        "prompt": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  "<|vision_start|><|image_pad|><|vision_end|>Describe this image in detail.<|im_end|>\n"
                  "<|im_start|>assistant\n",
        "multi_modal_data": {"image": image},
    }


@no_vllm
def test_missing_vllm_says_what_to_install():
    with pytest.raises(VoraError) as e:
        import_vllm()
    assert str(e.value) == f"{VLLM_MISSING} (import error: No module named 'vllm')"
    assert "its own environment or container image" in VLLM_MISSING
    assert "pip install -e '.[vllm]'" in VLLM_MISSING
    with pytest.raises(VoraError, match=r"^recaption.engine=vllm needs the `vllm` package"):
        get_engine(settings(), "Qwen/Qwen2-VL-72B-Instruct")
