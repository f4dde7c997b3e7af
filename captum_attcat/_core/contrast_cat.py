"""Contrast-CAT (Han et al., UAI 2025): AttCAT on activations contrasted with reference activations.

With ``h(l)`` block ``l``'s input hidden states, ``g(l) = dy/dh(l)`` and ``a(l)`` the attention each
token receives (AttCAT's), reference ``r`` gives ``M_r = sum_l [sum_d g(l)_d (h(l) - h_r(l))_d] a(l)``,
min-max scaled over the real tokens; ``h_r(l)`` is the reference's block input, cut to the explained
length or padded with 0. An example explained for class ``c`` uses the ``n_references`` inputs of the
reference set to which the model gives the lowest probability of ``c``. A deletion test scores each map:
the mean drop of ``c``'s probability when its top 1/9, 2/9, ... of the real tokens are hidden from
attention; the maps scoring at least mean + std are averaged (all if none) and min-max scaled again.

Example::

    >>> explainer = ContrastCAT(model, references=train_ids, reference_args=(train_mask,))
    >>> explainer.attribute(input_ids, target=1, additional_forward_args=(attention_mask,))  # (batch, seq)
"""

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
from .base import GradientPass, TransformerAttribution, check_query_mask, query_rows
from .maps import received_attention, token_mask_of, wide
from .registry import register_method


def min_max(maps: Tensor, real: Tensor) -> Tensor:
    """``(batch, n, seq)`` maps scaled to [0, 1] over the tokens where ``real`` is 1 (0 if constant, 0 elsewhere)."""
    low = maps.masked_fill(real == 0, float("inf")).amin(-1, keepdim=True)
    span = maps.masked_fill(real == 0, -float("inf")).amax(-1, keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1), 0) * real


@register_method("ContrastCAT")
class ContrastCAT(TransformerAttribution):
    r"""Contrast-CAT: AttCAT maps of ``h(l) - h_r(l)`` for references ``r`` of low confidence, filtered
    by a deletion test and averaged (see the module's docstring for the definition).

    Args:
        forward_func, layers, attention_modules: as for :class:`TransformerAttribution`.
        references: the reference set, token ids ``(n, seq)`` (or embeddings) on the model's device, e.g.
            correctly classified training sentences. ``None``: the reference activations are 0, and the
            scores are AttCAT's (a single map, not scaled).
        reference_args: the references' additional forward arguments, their attention mask first.
        n_references: references used per example (the authors' 30).
        refine: run the deletion test; ``False`` averages every reference's map.

    Example::

        >>> ContrastCAT(model, references=ids, reference_args=(mask,)).attribute(input_ids, target=1)
    """

    def __init__(self, forward_func: Module | Callable[..., Any], layers: Sequence[Module] | None = None,
                 attention_modules: Sequence[Module] | None = None, references: Tensor | None = None,
                 reference_args: Any = None, n_references: int = 30, refine: bool = True) -> None:
        super().__init__(forward_func, layers, attention_modules)
        self.references = None if references is None else self._prepare(references, reference_args)
        self.n_references, self.refine = n_references, refine

    def _forward(self, inputs: Tensor, *args: Any, states: BlockStates | None = None) -> Tensor:
        with explanation_mode(self.adapter.roots, self.adapter.attention_configs), torch.no_grad():
            with states or nullcontext():
                return self.adapter.forward(inputs, *args).float()

    def _deletion_scores(self, maps: Tensor, real: Tensor, run: GradientPass, args: tuple, classes: Tensor) -> Tensor:
        """``(batch, n)``: each map's mean drop of the class probability as its top tokens are hidden."""
        scores, positions = [], torch.arange(maps.shape[-1], device=maps.device)
        for b, (example, mask) in enumerate(zip(maps, real[:, 0])):
            n = int(mask.sum())
            levels = (torch.linspace(0, 1, 10, dtype=torch.float64) * n).round().unique()[1:].clamp(max=n - 1)
            order = example.masked_fill(mask == 0, -float("inf")).argsort(dim=-1, descending=True, stable=True)
            ranks = torch.empty_like(order).scatter_(-1, order, positions.expand_as(order))
            hidden = ranks[:, None] < levels.to(ranks)[None, :, None]  # (n maps, levels, seq)
            masks = torch.cat([mask[None], (mask * ~hidden).flatten(0, 1)])
            rest = [a[b : b + 1].expand(len(masks), *a.shape[1:]) if isinstance(a, Tensor) and a.dim() else a
                    for a in args[1:]]
            dtype = args[0].dtype if args and isinstance(args[0], Tensor) else torch.long
            inputs = run.inputs[b : b + 1].expand(len(masks), *run.inputs.shape[1:])
            probability = self._forward(inputs, masks.to(dtype), *rest).softmax(-1)[:, classes[b]]
            scores.append((probability[0] - probability[1:]).view(hidden.shape[:2]).mean(1))
        return torch.stack(scores)

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None,
                  query_mask: Tensor | None = None) -> Tensor:
        r"""``(batch, seq)`` scores in [0, 1] of ``target``'s class (padding 0); ``query_mask`` as AttCAT's."""
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
        probability = self._forward(references, *reference_args, states=states).softmax(-1)[:, classes]
        chosen = probability.argsort(dim=0, stable=True)[: self.n_references].T  # (batch, references)
        if reference_mask is None:
            reference_mask = torch.ones(references.shape[:2], device=references.device)
        contrast = torch.stack([torch.einsum("bsd,rsd->brs", wide(g), F.pad(
            wide(h.detach()) * reference_mask[..., None], (0, 0, 0, run.tokens - h.shape[1])))
            for g, h in zip(run.state_grads, states.captured())], 2)  # (batch, pool, blocks, seq)
        contrast = (contrast * attention[:, None]).sum(2).gather(1, chosen[..., None].expand(-1, -1, run.tokens))
        maps = min_max(maps - contrast, real)
        keep = torch.ones(maps.shape[:2], dtype=torch.bool, device=maps.device)
        if self.refine:
            _, args, _ = self._prepare(inputs, additional_forward_args)
            scores = self._deletion_scores(maps, real, run, args, classes)
            keep = scores >= scores.mean(1, keepdim=True) + scores.std(1, correction=0, keepdim=True)
            keep |= ~keep.any(1, keepdim=True)
        return min_max((maps * keep[..., None]).sum(1, keepdim=True) / keep.sum(1)[:, None, None], real)[:, 0]
