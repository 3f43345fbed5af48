"""SDPA per document for packed rows: the masked-away tiles of a packed row are never computed.

A row of S tokens packing documents of lengths l₁…l_k costs S² score cells under SDPA with a dense
mask, of which only Σ lᵢ² are visible; nothing on CPU (nor SDPA on CUDA) skips the rest. Here the
LLM's attention regroups the batch's documents into batches of their own, `[n, L]` per length group,
runs SDPA there with each document's own mask (the same rule as `masks.dense_mask`, counted from the
document's start) and puts every token's output back in place. Both moves are gathers, forward and
backward (`_Regroup`). Documents are grouped by length (one group per power of two, each padded to
its own longest), so one long document does not pad many short ones to its length. Padding tokens
(document −1) attend to nothing: no real token sees them and no label reads them, so their outputs
are a copy of another token's and carry no gradient.

The decoder still receives the dense mask: the regrouping rides along as the `document_segments`
keyword, which only this module's SDPA reads, so `eager` (and any other implementation) stays exact.
`register()` installs that SDPA under the name `sdpa`; it calls transformers' own SDPA unchanged
whenever the keyword is absent (every model but a packed VoRA forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# `auto` regroups only when it saves at least this many score cells per token. Both the cells saved and
# the gathers scale with the model's width, so the break-even is a count per token: measured on 2 CPU
# cores it is about 270 (the demo's finetune rows of 512 tokens, two documents each: 1.00×), where
# 4,096-token rows of eight documents save ~3,600 and run 1.8× faster. On CUDA `auto` never regroups:
# at Qwen2.5-7B width one 4,096-token row of eight documents (70 % of its cells saved) ran 0.550 s/step
# regrouped vs 0.542 dense on an H200 (GPU suite, README); FlexAttention is the packed-row path there.
MIN_SAVED_CELLS_PER_TOKEN = 512
MODES = ("auto", "always", "never")


class _Regroup(torch.autograd.Function):
    """`x[index]` along dim 0, whose gradient is `[g; 0][inverse]`. Each row of x has at most one place
    in the output that carries gradient; the other places (a document's padded slots, a padding
    token's output) hold values nothing reads, and get none. So the backward pass is a gather too:
    index_select's own backward is a scatter-add, which costs as much as the attention saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return torch.cat([grad, grad.new_zeros(1, *grad.shape[1:])]).index_select(0, inverse), None, None


@dataclass(frozen=True)
class LengthGroup:
    """`n` documents padded to `length` tokens, at slots `offset`… of the batch's slots; `mask`
    [n, 1, length, length] is additive."""

    n: int
    length: int
    offset: int
    mask: torch.Tensor


@dataclass(frozen=True)
class DocumentSegments:
    """A batch's documents regrouped for attention. `gather` [slots] is each slot's token in the
    flattened batch, `scatter` [B·S] each token's slot; `gather_grad` and `scatter_grad` are the same
    with `B·S` for a padded slot and `slots` for a padding token: the zero row of `_Regroup.backward`."""

    groups: tuple[LengthGroup, ...]
    gather: torch.Tensor
    scatter: torch.Tensor
    gather_grad: torch.Tensor
    scatter_grad: torch.Tensor
    cells: int        # score cells computed per head: Σ n·length²
    dense_cells: int  # B·S², what the dense mask computes

    def attend(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               dropout: float, scaling: float | None) -> torch.Tensor:
        """[B, H, S, D] query (key/value with their own head count) → [B, S, H, D] output."""
        batch, heads, length, dim = query.shape

        def slots(x: torch.Tensor) -> torch.Tensor:  # [B, h, S, D] → [slots, h, D]
            tokens = x.transpose(1, 2).reshape(batch * length, x.shape[1], dim)
            return _Regroup.apply(tokens, self.gather, self.scatter_grad)

        q, k, v = slots(query), slots(key), slots(value)
        outputs = []
        for g in self.groups:
            def group(x: torch.Tensor, g: LengthGroup = g) -> torch.Tensor:
                return x[g.offset: g.offset + g.n * g.length].view(g.n, g.length, x.shape[1], dim).transpose(1, 2)

            out, _ = sdpa_attention_forward(module, group(q), group(k), group(v), g.mask,
                                            dropout=dropout, scaling=scaling, is_causal=False)
            outputs.append(out.reshape(g.n * g.length, heads, dim))
        out = _Regroup.apply(torch.cat(outputs), self.scatter, self.gather_grad)
        return out.view(batch, length, heads, dim)


def document_segments(doc_ids: torch.Tensor, limit: torch.Tensor, dtype: torch.dtype,
                      mode: str = "auto") -> DocumentSegments | None:
    """The regrouping of a packed batch (`doc_ids` [B, S], −1 = padding; `limit` [B, S] as in
    `masks.dense_mask`), or None where it cannot apply (rows of one document each, a document split
    over two runs of a row) or, in mode `auto`, would not pay (off CPU, or `MIN_SAVED_CELLS_PER_TOKEN`)."""
    if mode not in MODES:
        raise ValueError(f"per_document_attention={mode!r} is not one of {MODES}")
    batch, length = doc_ids.shape
    if mode == "never" or (mode == "auto" and (doc_ids.device.type != "cpu" or length <= MIN_SAVED_CELLS_PER_TOKEN)):
        return None  # a row of S tokens saves fewer than S cells per token
    device = doc_ids.device
    docs = doc_ids.detach().cpu()  # run bookkeeping is [B·S] integers: on the host (one copy on CUDA)
    flat_docs = docs.reshape(-1)
    starts = torch.ones_like(docs, dtype=torch.bool)
    starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
    run_of_token = starts.reshape(-1).cumsum(0) - 1
    run_start = starts.reshape(-1).nonzero().squeeze(1)            # flat index of each run's first token
    run_length = torch.bincount(run_of_token, minlength=len(run_start))
    run_doc = flat_docs[run_start]
    real_runs = (run_doc >= 0).nonzero().squeeze(1)
    if len(real_runs) <= batch:
        return None
    row_doc = (run_start[real_runs] // length) * (int(flat_docs.max()) + 2) + run_doc[real_runs]
    if int(torch.unique(row_doc).numel()) != len(real_runs):
        return None  # a document in two runs of one row: only the dense mask states that

    lengths = run_length[real_runs]
    bucket = torch.ceil(torch.log2(lengths.double())).long()
    slot_of_run = torch.zeros(len(run_start), dtype=torch.long)
    groups = []
    cells = offset = 0
    for b in torch.unique(bucket).tolist():
        members = real_runs[bucket == b]                               # in batch order
        n, longest = len(members), int(run_length[members].max())
        cells += n * longest * longest
        slot_of_run[members] = offset + torch.arange(n) * longest
        groups.append((members, n, longest))
        offset += n * longest
    dense_cells = batch * length * length
    if cells >= dense_cells or (mode == "auto" and dense_cells - cells < MIN_SAVED_CELLS_PER_TOKEN * batch * length):
        return None

    local = torch.arange(batch * length) - run_start[run_of_token]  # position inside the run
    slot_of_token = slot_of_run[run_of_token] + local
    scatter = torch.where(flat_docs >= 0, slot_of_token, 0)
    scatter_grad = torch.where(flat_docs >= 0, slot_of_token, offset)
    flat_limit = limit.detach().cpu().reshape(-1)
    built, gathers = [], []
    for members, n, longest in groups:
        first, size = run_start[members], run_length[members]
        slot = torch.arange(longest)
        inside = slot[None, :] < size[:, None]
        token = first[:, None] + slot[None, :]
        token = torch.minimum(token, (first + size - 1)[:, None])       # padded slots repeat the last token
        gathers.append((token, inside))
        own = flat_limit[token] - (first % length)[:, None]            # limit counts from the row's start
        query_limit = torch.where(inside, own, slot[None, :])           # padded slots: see the real keys
        hidden = (slot[None, None, :] >= size[:, None, None]) | (slot[None, None, :] > query_limit[:, :, None])
        mask = torch.zeros(hidden.shape, dtype=dtype).masked_fill_(hidden, torch.finfo(dtype).min)
        built.append(LengthGroup(n, longest, int(slot_of_run[members[0]]), mask.unsqueeze(1).to(device)))
    gather = torch.cat([token.reshape(-1) for token, _ in gathers])
    inside = torch.cat([inside.reshape(-1) for _, inside in gathers])
    gather_grad = torch.where(inside, gather, batch * length)
    return DocumentSegments(tuple(built), gather.to(device), scatter.to(device), gather_grad.to(device),
                            scatter_grad.to(device), cells, dense_cells)


def sdpa_by_document(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     document_segments: DocumentSegments | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA, or SDPA per document when the forward passes `document_segments`."""
    if document_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    return document_segments.attend(module, query, key, value, dropout, scaling), None


def register() -> None:
    """Install `sdpa_by_document` as the `sdpa` attention implementation (idempotent)."""
    AttentionInterface.register("sdpa", sdpa_by_document)
