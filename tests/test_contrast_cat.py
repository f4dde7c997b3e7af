"""ContrastCAT: a hand-checkable toy model, the definition recomputed on a tiny BERT, batches, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from captum_attcat import METHODS, AnswerSpan, AttCAT, ContrastCAT

from conftest import padded_batch, tiny_bert, tiny_qa_model


def min_max(values: torch.Tensor) -> torch.Tensor:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else torch.zeros_like(values)


def deletion_levels(n: int) -> list[int]:
    """How many tokens each step of the deletion test hides: round(n * 0, 1/9, ..., 1), distinct, not 0,
    at most n - 1."""
    return [min(k, n - 1) for k in dict.fromkeys(int(k) for k in np.round(np.linspace(0, 1, 10) * n))][1:]


def select_and_average(maps: list[torch.Tensor], scores: list[float]) -> tuple[torch.Tensor, list[bool]]:
    """The maps whose deletion score is at least mean + (population) std, averaged (all if none), min-max
    scaled; and which maps reached the threshold."""
    threshold = np.mean(scores) + np.std(scores)
    selected = [s >= threshold for s in scores]
    keep = selected if any(selected) else [True] * len(maps)
    return min_max(torch.stack([m for m, k in zip(maps, keep) if k]).mean(0)), selected


# --- a toy model whose maps are written out by hand -----------------------------------------------


class ToyAttention(nn.Module):
    """Fixed probabilities ``P`` over the first ``seq`` positions, renormalised over the keys the mask keeps."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.probs = probs

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = hidden.shape[1]
        probs = self.probs[:n, :n] * mask[:, None, :].to(hidden.dtype)
        return (probs / probs.sum(-1, keepdim=True))[:, None]


class ToyBlock(nn.Module):
    def __init__(self, probs: torch.Tensor, w: torch.Tensor) -> None:
        super().__init__()
        self.attention, self.w = ToyAttention(probs), w

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.attention(hidden, mask)[:, 0] @ hidden) * self.w


class ToyModel(nn.Module):
    """One block; the logit of class c is ``sum_i mask_i out_i . v_c``."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [-1.0, 1.0], [2.0, 0.0], [0.0, -2.0]])
        probs = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1], [0.1, 0.6, 0.2, 0.1], [0.25] * 4])
        self.block = ToyBlock(probs, torch.tensor([2.0, -1.0]))
        self.v = torch.tensor([[1.0, 1.0], [1.0, 3.0]])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(ids) if mask is None else mask
        out = self.block(self.embeddings[ids], mask) * mask[..., None]
        return out.sum(1) @ self.v.T


def test_hand_computed_toy_model():
    model = ToyModel()
    ids = torch.tensor([[0, 1, 2]])
    references = torch.tensor([[3, 4, 5, 0], [1, 0, 0, 0], [5, 5, 3, 1], [4, 3, 0, 0], [2, 0, 1, 3]])
    reference_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    explainer = lambda n_references=4, **kw: ContrastCAT(  # noqa: E731
        model, layers=[model.block], attention_modules=[model.block.attention], references=references,
        reference_args=(reference_mask,), n_references=n_references, **kw)

    # By hand: P over 3 tokens is row-normalised P[:3, :3]; y_1 = sum_ij P_ij h_j . u, u = w * v_1 = (2, -3),
    # so g_j = colsum_j u, a_j = colsum_j / 3 and M_r(j) = colsum_j^2 / 3 * (h_j - h_r,j) . u.
    rows = model.block.attention.probs[:3, :3]
    colsum = (rows / rows.sum(1, keepdim=True)).sum(0)
    u = torch.tensor([2.0, -3.0])
    h = model.embeddings[ids[0]]
    # the references, as block inputs cut to 3 tokens (the 4th dropped, padding set to 0)
    aligned = model.embeddings[references[:, :3]] * reference_mask[:, :3, None]
    # the 4 references of lowest p(class 1) are used: [5, 5, 3, 1] (p = 0.9994) is left out
    confidence = model(references, reference_mask).softmax(-1)[:, 1]
    chosen = confidence.argsort()[:4]
    assert sorted(chosen.tolist()) == [0, 1, 3, 4] and confidence[2] > 0.999
    maps = [min_max(colsum**2 / 3 * ((h - aligned[r]) @ u)) for r in chosen]

    averaged = explainer(refine=False).attribute(ids, target=1)
    torch.testing.assert_close(averaged[0], min_max(torch.stack(maps).mean(0)))

    # deletion test: hide each map's top 1, 2, 2 tokens (n = 3); score = mean drop of p(class 1)
    full = model(ids).softmax(-1)[0, 1]
    scores = []
    for m in maps:
        drops = []
        for k in deletion_levels(3):
            mask = torch.ones(1, 3, dtype=torch.long)
            mask[0, m.argsort(descending=True)[:k]] = 0
            drops.append(float(full - model(ids, mask).softmax(-1)[0, 1]))
        scores.append(np.mean(drops))
    expected, keep = select_and_average(maps, scores)
    assert deletion_levels(3) == [1, 2, 2] and 0 < sum(keep) < len(keep)  # the test selects some maps only
    refined = explainer().attribute(ids, target=1)
    torch.testing.assert_close(refined[0], expected)
    assert (refined - averaged).abs().max() > 1e-3
    # the 3 references of lowest p(class 1) score (b, a, b), a < b: none reaches mean + std, all are averaged
    expected, selected = select_and_average(maps[:3], scores[:3])
    assert not any(selected) and scores[0] == scores[2] > scores[1]
    torch.testing.assert_close(explainer(n_references=3).attribute(ids, target=1)[0], expected)


# --- the definition, recomputed from transformers' own outputs ---------------------------------


def contrast_cat_by_definition(model, ids, mask, types, target, references, reference_mask, n_references):
    """Contrast-CAT of each example alone, from transformers' hidden states, attentions and logits."""
    out = model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True, output_attentions=True)
    states = out.hidden_states[:-1]  # the blocks' inputs
    grads = torch.autograd.grad(out.logits.gather(1, target[:, None]).sum(), states)
    with torch.no_grad():
        pool = model(references, attention_mask=reference_mask, output_hidden_states=True)
    results, kept = [], []
    for b, n in enumerate(mask.sum(1).tolist()):
        c = int(target[b])
        chosen = pool.logits.softmax(-1)[:, c].argsort()[:n_references]
        received = [a[b, :, :n, :n].mean(0).mean(0) for a in out.attentions]  # mean over heads, then rows
        maps = []
        for r in chosen:
            m = int(reference_mask[r].sum())
            total = 0
            for g, h, a, h_ref in zip(grads, states, received, pool.hidden_states[:-1]):
                ref = torch.zeros(n, h.shape[-1], dtype=h.dtype)
                ref[: min(n, m)] = h_ref[r, : min(n, m)]
                total = total + (g[b, :n] * (h[b, :n] - ref)).sum(-1) * a
            maps.append(min_max(total))
        with torch.no_grad():
            alone = dict(input_ids=ids[b : b + 1, :n], token_type_ids=types[b : b + 1, :n])
            full = model(**alone).logits.softmax(-1)[0, c]
            scores = []
            for one in maps:
                drops = []
                for k in deletion_levels(n):
                    hidden = torch.ones(1, n, dtype=torch.long)
                    hidden[0, one.argsort(descending=True)[:k]] = 0
                    drops.append(float(full - model(**alone, attention_mask=hidden).logits.softmax(-1)[0, c]))
                scores.append(np.mean(drops))
        final, keep = select_and_average(maps, scores)
        results.append(final.detach())
        kept.append(keep)
    return results, kept


def test_definition_on_a_tiny_bert():
    model = tiny_bert(attn_implementation="eager").double()
    lengths = [9, 6, 12]
    ids, mask = padded_batch(lengths)
    types = (torch.arange(ids.shape[1]) >= 4).long() * mask  # a second segment from the 5th token
    target = torch.tensor([2, 0, 1])
    references, reference_mask = padded_batch([7, 14, 9, 5, 11, 8, 10], seed=3)  # shorter and longer than the inputs
    expected, kept = contrast_cat_by_definition(model, ids, mask, types, target, references, reference_mask, 4)
    assert any(0 < sum(k) < len(k) for k in kept)  # the deletion test leaves some maps out
    explainer = ContrastCAT(model, references=references, reference_args=(reference_mask,), n_references=4)
    seen = []  # the segments of every forward: each example's deletion test keeps them
    hook = model.bert.embeddings.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["token_type_ids"]), with_kwargs=True)
    try:
        scores = explainer.attribute(ids, target=target, additional_forward_args=(mask, types))
    finally:
        hook.remove()
    segments = [t is not None and bool(t[:, 4:].any()) for t in seen]
    assert segments == [True, False] + [True] * len(lengths)  # explained, references, one deletion test each
    for b, n in enumerate(lengths):
        torch.testing.assert_close(scores[b, :n], expected[b], rtol=1e-9, atol=1e-9)
        assert scores[b, n:].eq(0).all()
    assert model.config._attn_implementation == "eager"


# --- batches, padding, defaults, errors ---------------------------------------------------------


@pytest.mark.parametrize("refine", [True, False])
def test_padded_batch_equals_one_by_one(refine):
    model = tiny_bert(seed=2)
    lengths = [8, 1, 13, 4]
    ids, mask = padded_batch(lengths, seed=4)
    references, reference_mask = padded_batch([10, 6, 12, 7, 9], seed=8)
    explainer = ContrastCAT(model, references=references, reference_args=(reference_mask,), n_references=3,
                            refine=refine)
    target = [0, 2, 1, 2]
    batch = explainer.attribute(ids, target=target, additional_forward_args=(mask,))
    assert batch.shape == ids.shape and batch.dtype == torch.float32
    for row, n in enumerate(lengths):
        alone = explainer.attribute(ids[row : row + 1, :n], target=target[row])[0]
        torch.testing.assert_close(batch[row, :n], alone, rtol=1e-5, atol=1e-5)
        assert not batch[row, n:].signbit().any() and batch[row, n:].eq(0).all()  # padding scores 0 (not -0)
        if n > 1:
            assert alone.min() == 0 and alone.max() == 1  # min-max scaled over the real tokens
    assert batch[1].eq(0).all()  # one token: a constant map


def test_without_references_the_scores_are_attcat():
    model = tiny_bert()
    ids, mask = padded_batch([7, 4])
    scores = ContrastCAT(model).attribute(ids, target=[1, 2], additional_forward_args=(mask,))
    assert torch.equal(scores, AttCAT(model).attribute(ids, target=[1, 2], additional_forward_args=(mask,)))
    assert METHODS["ContrastCAT"] is ContrastCAT


def test_references_need_a_class_target():
    """A reference set is ranked by the probability of the explained class; a question-answering
    target (a position, an answer span) is explained without one."""
    model = tiny_qa_model("bert")
    ids, mask = padded_batch([7, 4])
    explainer = ContrastCAT(model, references=ids, reference_args=(mask,))
    for target in ([(1, 0), (2, 0)], AnswerSpan(start=[1, 2], end=[3, 2])):
        with pytest.raises(ValueError, match="ContrastCAT explains class targets only; got an? (position|answer span) target"):
            explainer.attribute(ids, target=target, additional_forward_args=(mask,))
        scores = ContrastCAT(model).attribute(ids, target=target, additional_forward_args=(mask,))
        assert torch.isfinite(scores).all() and scores[1, 4:].eq(0).all()
    with pytest.raises(ValueError, match=r"attention mask .* has shape \(2, 5\)"):
        ContrastCAT(model, references=ids, reference_args=(mask[:, :5],))


def test_deletion_test_in_bounded_batches(monkeypatch):
    """The deletion test's masked forwards, run a few rows at a time (long texts), give the same scores,
    each batch with its example's segments."""
    import captum_attcat._core.contrast_cat as module

    model = tiny_bert(seed=5)
    ids, mask = padded_batch([9, 12], seed=6)
    types = (torch.arange(ids.shape[1]) >= 5).long() * mask
    references, reference_mask = padded_batch([8, 11, 6, 10], seed=7)
    explainer = ContrastCAT(model, references=references, reference_args=(reference_mask,), n_references=3)
    calls = []
    hook = model.bert.embeddings.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["token_type_ids"]), with_kwargs=True)
    try:
        whole = explainer.attribute(ids, target=[0, 2], additional_forward_args=(mask, types))
        assert len(calls) == 2 + 2  # explained, references, one deletion batch per example
        monkeypatch.setattr(module, "DELETION_TOKENS", 5 * ids.shape[1])  # 5 rows a batch: 1 + 3 x 9 rows in 6
        split = explainer.attribute(ids, target=[0, 2], additional_forward_args=(mask, types))
    finally:
        hook.remove()
    assert len(calls) == 4 + 2 + 2 * 6 and all(t[:, 5:].any() for t in calls[6:])
    torch.testing.assert_close(split, whole, rtol=1e-6, atol=1e-6)
