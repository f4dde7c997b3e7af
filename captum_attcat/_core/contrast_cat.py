"""Contrast-CAT (Han et al., UAI 2025): AttCAT on activations contrasted with reference activations."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor

from ..base import TransformerAttribution, check_query_mask, query_rows
from ..maps import class_activation_tokens, min_max, received_attention, wide
from ..registry import register_method

DELETION_TOKENS = 4096  #: tokens per batch of the deletion test's forwards (bounded memory for long texts)


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

    def __init__(self, forward_func: Any, layers: Any = None, attention_modules: Any = None, references: Any = None,
                 reference_args: Any = None, n_references: int = 30, refine: bool = True) -> None:
        super().__init__(forward_func, layers, attention_modules)
        self.references = None if references is None else self.prepare_inputs(references, reference_args)[:2]
        self.n_references, self.refine = n_references, refine
        if references is not None:  # the explained class's probability ranks the references
            self.accepted_targets = frozenset({"class"})

    def _probabilities(self, inputs: Tensor, args: tuple, states: bool = False) -> tuple[Tensor, list[Tensor]]:
        run = self.record_forward(inputs, additional_forward_args=args, states=states, attention=False)
        return run.output.float().softmax(-1), [s * run.token_mask[..., None].to(s) for s in run.states]

    def _deletion_scores(self, maps: Tensor, real: Tensor, inputs: Tensor, args: tuple, classes: Tensor) -> Tensor:
        """``(batch, maps)``: the mean drop of the class probability as each map's top tokens are hidden."""
        scores = []
        for b, (example, mask) in enumerate(zip(maps, real[:, 0])):
            levels = (torch.linspace(0, 1, 10, dtype=torch.float64) * mask.sum().item()).round().unique()[1:]
            ranks = example.masked_fill(mask == 0, -float("inf")).argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
            hidden = ranks[:, None] < levels.clamp(max=mask.sum().item() - 1).to(ranks)[None, :, None]
            masks = torch.cat([mask[None], (mask * ~hidden).flatten(0, 1)])
            masks = masks.to(args[0].dtype if args and isinstance(args[0], Tensor) else torch.long)
            p = torch.cat([self._probabilities(inputs[b : b + 1].expand(len(part), *inputs.shape[1:]), (part, *[
                a[b : b + 1].expand(len(part), *a.shape[1:]) if isinstance(a, Tensor) and a.dim() else a for a in args[1:]
            ]))[0] for part in masks.split(max(1, DELETION_TOKENS // masks.shape[-1]))])
            scores.append((p[0, classes[b]] - p[1:, classes[b]]).view(hidden.shape[:2]).mean(1))
        return torch.stack(scores)

    @log_usage()
    def attribute(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None,
                  query_mask: Tensor | None = None) -> Tensor:
        r"""``(batch, seq)`` scores of ``target``'s class, in [0, 1] with references; ``query_mask`` as AttCAT's."""
        check_query_mask(query_mask, inputs)
        run = self.record_gradients(inputs, target, additional_forward_args, attention=True)
        attention, real = received_attention(run.attentions, query_rows(run, query_mask)), run.token_mask[:, None]
        maps = (class_activation_tokens(run) * attention).sum(1, keepdim=True)
        if self.references is None:  # one map, nothing to average: AttCAT's scores
            return maps[:, 0]
        classes = torch.as_tensor(target, device=maps.device).flatten().expand(len(maps))
        probabilities, states = self._probabilities(*self.references, states=True)
        chosen = probabilities[:, classes].argsort(dim=0, stable=True)[: self.n_references].T  # (batch, references)
        contrast = sum(torch.einsum("bsd,rsd->brs", wide(g), F.pad(wide(h), (0, 0, 0, run.tokens - h.shape[1])))
                       * a[:, None] for g, h, a in zip(run.state_grads, states, attention.unbind(1)))
        maps = min_max(maps - contrast.gather(1, chosen[..., None].expand(-1, -1, run.tokens)), real)
        keep = torch.ones(maps.shape[:2], dtype=torch.bool, device=maps.device)
        if self.refine:
            scores = self._deletion_scores(maps, real, run.inputs, self.prepare_inputs(inputs, additional_forward_args)[1],
                                           classes)
            keep = scores >= scores.mean(1, keepdim=True) + scores.std(1, correction=0, keepdim=True)
            keep |= ~keep.any(1, keepdim=True)
        return min_max((maps * keep[..., None]).sum(1, keepdim=True) / keep.sum(1)[:, None, None], real)[:, 0]
