"""Contrast-CAT (Han et al., UAI 2025): AttCAT on activations contrasted with reference activations."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from .._utils.hooks import BlockStates
from .._utils.state import explanation_mode
from .attcat import class_activation_tokens
from .base import TransformerAttribution, check_query_mask, query_rows
from .maps import received_attention, token_mask_of, wide
from .registry import register_method


def min_max(maps: Tensor, real: Tensor) -> Tensor:
    """Maps ``(..., seq)`` scaled to [0, 1] over the tokens where ``real`` is 1 (0 if constant, 0 elsewhere)."""
    low = maps.masked_fill(real == 0, float("inf")).amin(-1, keepdim=True)
    span = maps.masked_fill(real == 0, -float("inf")).amax(-1, keepdim=True) - low
    return torch.where((span > 0) & (real > 0), (maps - low) / torch.where(span > 0, span, 1), 0)


#: tokens per batch of the deletion test's masked forwards (memory stays bounded for long texts)
_DELETION_TOKENS = 4096


@register_method("ContrastCAT")
class ContrastCAT(TransformerAttribution):
    r"""Contrast-CAT: with ``h(l)`` block ``l``'s input, ``g(l) = dy/dh(l)`` and ``a(l)`` the attention tokens
    receive (AttCAT's), reference ``r`` gives ``M_r = sum_l [sum_d g(l)_d (h(l) - h_r(l))_d] a(l)``, min-max
    scaled over the real tokens (``h_r(l)`` cut to the explained length or padded with 0). Class ``c`` is
    explained with the ``n_references`` references of lowest probability of ``c``. A deletion test scores
    each map: the mean drop of that probability as its top 1/9, 2/9, ... of the real tokens (at most all
    but one) are hidden from attention; the maps scoring at least mean + std (all if none) are averaged
    and min-max scaled.

    Args:
        references: the reference set, token ids ``(n, seq)`` or embeddings, e.g. correctly classified
            training sentences. ``None``: activations 0, the scores AttCAT's (one map, unscaled).
        reference_args: their additional forward arguments, the attention mask first.
        n_references: references per example (the authors' 30); ``refine=False`` averages every map.

    Example::

        >>> explainer = ContrastCAT(model, references=train_ids, reference_args=(train_mask,))
        >>> explainer.attribute(input_ids, target=1, additional_forward_args=(attention_mask,))  # (batch, seq)
    """

    floor_budget = None  # no budget: the deletion test runs n_references x 9 masked forwards per example
    required_arguments = {"references": "a reference set, token ids (n, seq) with `reference_args=(mask,)`, e.g. "
                                        "correctly classified training sentences; without one ContrastCAT is AttCAT"}

    def __init__(self, forward_func: Module | Callable[..., Any], layers: Sequence[Module] | None = None,
                 attention_modules: Sequence[Module] | None = None, references: Tensor | None = None,
                 reference_args: Any = None, n_references: int = 30, refine: bool = True) -> None:
        super().__init__(forward_func, layers, attention_modules)
        self.references = None if references is None else self._prepare(references, reference_args)
        self.n_references, self.refine = n_references, refine

    @property
    def class_targets_only(self) -> bool:  # type: ignore[override]
        """With references the explained class's probability ranks them: class targets only."""
        return self.references is not None

    def _probabilities(self, inputs: Tensor, *args: Any, states: BlockStates | None = None) -> Tensor:
        with explanation_mode(self.adapter.roots, self.adapter.attention_configs), torch.no_grad():
            with states or nullcontext():
                return self.adapter.forward(inputs, *args).float().softmax(-1)

    def _deletion_scores(self, maps: Tensor, real: Tensor, inputs: Tensor, args: tuple, classes: Tensor) -> Tensor:
        """``(batch, maps)``: the mean drop of the class probability as each map's top tokens are hidden."""
        scores, positions = [], torch.arange(maps.shape[-1], device=maps.device)
        for b, (example, mask) in enumerate(zip(maps, real[:, 0])):
            n = int(mask.sum())
            levels = (torch.linspace(0, 1, 10, dtype=torch.float64) * n).round().unique()[1:].clamp(max=n - 1)
            order = example.masked_fill(mask == 0, -float("inf")).argsort(dim=-1, descending=True, stable=True)
            ranks = torch.empty_like(order).scatter_(-1, order, positions.expand_as(order))
            hidden = ranks[:, None] < levels.to(ranks)[None, :, None]  # (maps, levels, seq)
            masks = torch.cat([mask[None], (mask * ~hidden).flatten(0, 1)])
            rest = [a[b : b + 1].expand(len(masks), *a.shape[1:]) if isinstance(a, Tensor) and a.dim() else a
                    for a in args[1:]]
            masks = masks.to(args[0].dtype if args and isinstance(args[0], Tensor) else torch.long)
            rows = max(1, _DELETION_TOKENS // masks.shape[-1])  # the masked forwards in bounded batches
            p = torch.cat([self._probabilities(inputs[b : b + 1].expand(len(part), *inputs.shape[1:]), part,
                                               *[r[: len(part)] if isinstance(r, Tensor) and r.dim() else r
                                                 for r in rest])
                           for part in masks.split(rows)])
            scores.append((p[0, classes[b]] - p[1:, classes[b]]).view(hidden.shape[:2]).mean(1))
        return torch.stack(scores)

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None,
                  query_mask: Tensor | None = None) -> Tensor:
        r"""``(batch, seq)`` scores of ``target``'s class, in [0, 1] with references; ``query_mask`` as AttCAT's."""
        check_query_mask(query_mask, inputs)
        run = self._gradient_pass(inputs, target, additional_forward_args, attention=True)
        real = token_mask_of(run.attention_mask, run.inputs, run.tokens)[:, None]
        attention = received_attention(run.attentions, query_rows(run, query_mask))  # (batch, blocks, seq)
        maps = (class_activation_tokens(run) * attention).sum(1, keepdim=True)
        if self.references is None:  # one map, nothing to average: AttCAT's scores
            return maps[:, 0]
        if not isinstance(target, (int, list, Tensor)) or torch.as_tensor(target).dim() > 1:
            raise ValueError("with `references`, `target` must be a class: an int, or one per example")
        classes = torch.as_tensor(target, device=maps.device).flatten().expand(len(maps))
        references, reference_args, reference_mask = self.references
        states = BlockStates(self.adapter.blocks)
        chosen = self._probabilities(references, *reference_args, states=states)[:, classes]
        chosen = chosen.argsort(dim=0, stable=True)[: self.n_references].T  # (batch, references)
        reference_mask = torch.ones(references.shape[:2]) if reference_mask is None else reference_mask
        contrast = sum(torch.einsum("bsd,rsd->brs", wide(g), F.pad(wide(h.detach()) * reference_mask.to(h)[..., None],
                                                                   (0, 0, 0, run.tokens - h.shape[1]))) * a[:, None]
                       for g, h, a in zip(run.state_grads, states.captured(), attention.unbind(1)))
        maps = min_max(maps - contrast.gather(1, chosen[..., None].expand(-1, -1, run.tokens)), real)
        keep = torch.ones(maps.shape[:2], dtype=torch.bool, device=maps.device)
        if self.refine:
            scores = self._deletion_scores(maps, real, run.inputs, self._prepare(inputs, additional_forward_args)[1],
                                           classes)
            keep = scores >= scores.mean(1, keepdim=True) + scores.std(1, correction=0, keepdim=True)
            keep |= ~keep.any(1, keepdim=True)
        return min_max((maps * keep[..., None]).sum(1, keepdim=True) / keep.sum(1)[:, None, None], real)[:, 0]
