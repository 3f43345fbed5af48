"""The step: accumulation normalisation, the NaN/inf guard, lr schedules."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from train_world import vora_config

from vora_core.train.loader import PackDataset
from vora_core.train.loop import Dist, accumulate, global_counts, guarded_step, lr_lambda
from vora_core.train.packing import collate
from vora_core.train.samples import SampleBuilder, build_index, open_index

CPU = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def setup(world, tokenizer, tmp_path_factory):
    from vora_core.model.lora import configure_trainable
    from vora_core.model.modeling import VoRAForCausalLM

    config, fields = vora_config(world, "square")
    builder = SampleBuilder(tokenizer, config, "square", 160)
    path = tmp_path_factory.mktemp("step") / "samples.arrow"
    build_index(world.mixture, world.run, builder, path)
    torch.manual_seed(0)
    model = VoRAForCausalLM.from_parts(world.llm, world.teacher, dtype=torch.float32, **fields)
    configure_trainable(model, "pretrain")
    with torch.no_grad():  # non-zero LoRA B so every trainable gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.train()
    return model, builder, path


def grads_after(model, micro: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    model.zero_grad(set_to_none=True)
    blocks = model.config.distill_blocks
    vec = accumulate(model, micro, global_counts(micro, CPU), CPU, blocks, 1.0, nullcontext, ddp=False)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, vec


def test_one_batch_of_4_equals_4_micro_batches_of_1(setup, tokenizer):
    model, builder, path = setup
    table = open_index(path)
    images = table.column("images").to_pylist()
    picks = [i for i, n in enumerate(images) if n][:3] + [i for i, n in enumerate(images) if not n][:1]
    ds = PackDataset(path, builder)
    rows = [ds[(0, k, (i,))] for k, i in enumerate(picks)]
    labels = [int((r.labels[1:] != -100).sum()) for r in rows]
    assert len(set(labels)) > 1  # unequal label counts: per-micro-batch means would give another gradient
    pad = tokenizer.pad_token_id
    big, big_vec = grads_after(model, [collate(rows, pad)])
    small, small_vec = grads_after(model, [collate([r], pad) for r in rows])
    assert set(big) == set(small) and len(big) > 0
    for name in big:
        assert torch.allclose(big[name], small[name], rtol=1e-4, atol=1e-7), name
    assert torch.allclose(big_vec, small_vec, rtol=1e-5)  # the same lm loss, distill and per-block losses
    assert any(g.abs().sum() > 0 for n, g in big.items() if "vision_embedding" in n)
    assert any(g.abs().sum() > 0 for n, g in big.items() if "aux_heads" in n)
    # Averaging per-micro-batch means (the usual mistake) gives another LM gradient than one batch of 4.
    name = next(n for n in big if "lora_B" in n)
    param = dict(model.named_parameters())[name]

    def lm_grad(batches: list[dict], scale: float) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        for b in batches:
            out = model(input_ids=b["input_ids"], labels=b["labels"], doc_ids=b["doc_ids"],
                        position_ids=b["position_ids"], pixel_values=b["pixel_values"] or None, distill=False)
            (out.lm_loss * scale).backward()
        return param.grad.clone()

    one_batch = lm_grad([collate(rows, pad)], 1.0)
    naive = lm_grad([collate([r], pad) for r in rows], 0.25)
    assert not torch.allclose(naive, one_batch, rtol=1e-3)


def test_nan_guard_skips_the_update_on_device():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8))
    opt = torch.optim.AdamW([w], lr=0.1, fused=True, weight_decay=0.1)
    (w ** 2).sum().backward()
    norm, finite = guarded_step(opt, [w], torch.tensor(1.0), max_norm=1.0)
    assert bool(finite) and float(opt.state[w]["step"]) == 1
    before = w.detach().clone()
    state = {k: v.clone() for k, v in opt.state[w].items()}
    (w * float("nan")).sum().backward()
    norm, finite = guarded_step(opt, [w], torch.tensor(float("nan")), max_norm=1.0)
    assert not bool(finite) and torch.isnan(norm)
    assert torch.equal(w.detach(), before)  # no update, no weight decay
    for k, v in opt.state[w].items():
        assert torch.equal(v, state[k]), k  # moments and step count untouched
    assert w.grad is None
    (w ** 2).sum().backward()
    guarded_step(opt, [w], torch.tensor(float("inf")), max_norm=None)  # an inf loss with finite grads: skipped too
    assert torch.equal(w.detach(), before)
    (w ** 2).sum().backward()
    guarded_step(opt, [w], torch.tensor(2.0), max_norm=None)
    assert not torch.equal(w.detach(), before) and float(opt.state[w]["step"]) == 2


def test_schedules():
    const = lr_lambda("constant_with_warmup", 4, 100, 0.0)
    assert [const(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = lr_lambda("cosine", 2, 12, 0.1)
    assert [cos(0), cos(1), cos(2)] == [0.5, 1.0, 1.0]
    assert cos(7) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert cos(12) == pytest.approx(0.1) and cos(50) == pytest.approx(0.1)
    assert lr_lambda("constant", 0, 10, 0.0)(0) == 1.0


def test_gradient_checkpointing_recomputes_and_keeps_the_gradient(setup, tokenizer):
    """`grad_checkpointing: true` (what the loop switches on): each decoder block runs its forward again
    in the backward, and the gradient is the same."""
    model, builder, path = setup
    images = open_index(path).column("images").to_pylist()
    ds = PackDataset(path, builder)
    rows = [ds[(0, k, (i,))] for k, i in enumerate([i for i, n in enumerate(images) if n][:2])]
    batch = [collate(rows, tokenizer.pad_token_id)]
    layer = model.llm.get_decoder().layers[0]
    calls = []
    hook = layer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        plain, plain_vec = grads_after(model, batch)
        assert len(calls) == 1
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        calls.clear()
        ckpt, ckpt_vec = grads_after(model, batch)
        assert len(calls) == 2  # forward, then recomputed in the backward
    finally:
        hook.remove()
        model.gradient_checkpointing_disable()
    assert set(plain) == set(ckpt)
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], rtol=1e-5, atol=1e-7), name
    assert torch.equal(plain_vec, ckpt_vec)


@pytest.mark.parametrize(("compile_on", "chunk"), [(True, 7), (False, 4096)])
def test_build_model_applies_compile_and_lm_loss_chunk(world, tmp_path, compile_on: bool, chunk: int):
    from vora_core.catalog import PretrainSettings
    from vora_core.train.loop import build_model
    from vora_core.train.spec import RunSpec

    _, fields = vora_config(world, "square")
    settings = {"compile": True, "lm_loss_chunk": 7} if compile_on else {}  # auto (off on CPU) / 4096: defaults
    model_spec = {"init": "parts", "llm": str(world.llm), "teacher": str(world.teacher), "fields": fields}
    spec = RunSpec("pretrain", str(tmp_path), str(tmp_path / "samples.arrow"), str(world.llm), model_spec,
                   PretrainSettings(**settings).model_dump())
    model, _ = build_model(spec)
    assert model.config.lm_loss_chunk == chunk
    compiled = [getattr(layer, "_vora_compiled", False) for layer in model.llm.get_decoder().layers]
    assert compiled == [compile_on] * len(compiled)


def test_compile_auto_compiles_on_cuda_only():
    from vora_core.catalog import PretrainSettings
    from vora_core.train.loop import compile_wanted

    assert PretrainSettings().compile == "auto"
    assert [compile_wanted("auto", d) for d in ("cpu", "cuda")] == [False, True]
    assert [compile_wanted(v, "cpu") for v in (True, False)] == [True, False]
    assert [compile_wanted(v, "cuda") for v in (True, False)] == [True, False]
    assert PretrainSettings(compile=True).compile is True
