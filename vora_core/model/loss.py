"""The LM loss over labelled positions without `[tokens, vocab]` fp32 logits for the whole batch.

`lm_loss_sum(hidden, weight, bias, targets, chunk)` = Σ_t CE(hidden[t] @ weightᵀ + bias, targets[t]),
computed `chunk` label positions at a time. The gradients are computed chunk by chunk in the forward
pass too (softmax − one-hot is all the backward needs and the chunk's logits are at hand), kept as
`[tokens, hidden]` / `[vocab, hidden]` tensors and scaled by the incoming gradient in backward: peak
memory is one chunk's logits instead of the batch's (at vocab 152,064 and 8k tokens: ~5 GB of fp32
logits, plus their log-softmax and gradient, in the plain path), and no matmul is recomputed. The
price: with a trainable LM head (finetune) its fp32 `[vocab, hidden]` gradient is held from the forward
to the backward pass (at Qwen2.5-7B: 2.2 GB, against the plain path's 5 GB of saved log-softmax).

Numerics follow the plain path `F.cross_entropy(lm_head(h).float(), t, reduction="sum")`: the
matmul runs in the inputs' dtype (the autocast dtype under autocast), log-softmax in fp32, and the
weight gradient is accumulated in fp32 over chunks. `chunk <= 0` is the plain path itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                chunk: int, need_hidden: bool, need_weight: bool, need_bias: bool) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = grad_bias = None  # fp32 sums over chunks, made by the first chunk
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            t = targets[start:start + chunk]
            logits = h @ weight.t()
            if bias is not None:
                logits += bias
            logp = logits.float()  # log-softmax in place: one fp32 [chunk, vocab] buffer per chunk
            del logits
            logp -= torch.logsumexp(logp, dim=-1, keepdim=True)
            total -= logp.gather(1, t.unsqueeze(1)).sum()
            if not (need_hidden or need_weight or need_bias):
                del logp
                continue
            # d(Σ CE)/d logits = softmax − one-hot, computed in place over the chunk's log-probabilities.
            grad = logp.exp_()
            grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if need_bias:
                part = grad.sum(0)
                grad_bias = part if grad_bias is None else grad_bias.add_(part)
            grad = grad.to(weight.dtype)
            if need_hidden:
                torch.mm(grad, weight, out=grad_hidden[start:start + chunk])
            if need_weight:
                if grad_weight is None:
                    grad_weight = (grad.t() @ h).float()
                elif h.dtype == torch.float32:
                    grad_weight.addmm_(grad.t(), h)
                else:  # a low-precision product per chunk, summed in fp32
                    grad_weight += (grad.t() @ h).float()
            del logp, grad  # before the next chunk's logits: one chunk's [chunk, vocab] at a time
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        g_h = (grad_hidden * grad_out.to(grad_hidden.dtype)) if grad_hidden is not None else None
        g_w = (grad_weight * grad_out).to(ctx.weight_dtype) if grad_weight is not None else None
        g_b = (grad_bias * grad_out).to(ctx.bias_dtype) if grad_bias is not None else None
        return g_h, g_w, g_b, None, None, None, None, None


def lm_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
    """Σ cross-entropy (fp32) of `hidden [N, H] @ weight [V, H]ᵀ (+ bias)` against `targets [N]`."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # the dtype the plain path's lm_head would run in
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if chunk <= 0 or hidden.shape[0] == 0:
        logits = F.linear(hidden, weight, bias)
        return F.cross_entropy(logits.float(), targets, reduction="sum")
    grad_on = torch.is_grad_enabled()
    need = [grad_on and t is not None and t.requires_grad for t in (hidden, weight, bias)]
    with torch.autocast(device_type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk, *need)
