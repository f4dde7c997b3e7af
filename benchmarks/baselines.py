"""Captum baselines and a random floor, behind the same call as the library's methods.

Each class is built as ``Cls(model)`` from a Hugging Face sequence classifier and called as
``obj.attribute(input_ids, target=..., additional_forward_args=(attention_mask,))`` (with the
``token_type_ids`` of sentence pairs after the mask), returning
``(batch, seq)`` token scores (padding gets 0), exactly like the entries of
``captum_attcat.METHODS``.

* ``IntegratedGradients``: Captum ``LayerIntegratedGradients`` on the word-embedding layer,
  ``n_steps=50``, baseline = [PAD] everywhere except [CLS]/[SEP] (the first and last real
  token, and any id the config names as cls/sep/bos/eos); summed over the hidden dim.
* ``Saliency``: Captum ``Saliency`` (``|gradient|``) on the word embeddings, summed over hidden dim.
* ``InputXGradient``: Captum ``InputXGradient`` on the word embeddings, summed over hidden dim.
* ``Random``: uniform random scores (seeded): the floor every method should beat.

Example::

    >>> from benchmarks.baselines import BASELINES
    >>> scores = BASELINES["Saliency"](model).attribute(ids, target=1, additional_forward_args=(mask,))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import InputXGradient, LayerIntegratedGradients, Saliency

from captum_attcat import AnswerSpan, logits_of, span_attribution

__all__ = ["BASELINES", "IntegratedGradientsEmbeddings", "SaliencyEmbeddings", "InputXGradientEmbeddings",
           "RandomScores"]


def _mask_of(input_ids: torch.Tensor, additional_forward_args: Any) -> torch.Tensor:
    return _args_of(input_ids, additional_forward_args)[0]


def _args_of(input_ids: torch.Tensor, additional_forward_args: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(attention_mask, token_type_ids or None)`` from ``additional_forward_args``."""
    args = additional_forward_args
    if args is None:
        return torch.ones_like(input_ids), None
    if isinstance(args, torch.Tensor):
        return args, None
    return args[0], (args[1] if len(args) > 1 else None)


def token_type_kwargs(token_type_ids: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``{"token_type_ids": ...}`` for a model call, or nothing for single sentences.

    Example::

        >>> model(input_ids=ids, attention_mask=mask, **token_type_kwargs(types))  # doctest: +SKIP
    """
    return {} if token_type_ids is None else {"token_type_ids": token_type_ids}


def _target(target: Any, batch: int) -> Any:
    if target is None or isinstance(target, (int, tuple, AnswerSpan)):
        return target
    if isinstance(target, list) and target and isinstance(target[0], tuple):
        return target  # (position, index) pairs of per-token scores
    t = torch.as_tensor(target, dtype=torch.long).flatten()
    return t.expand(batch) if t.numel() == 1 else t


def _scores(output: Any, span: torch.Tensor | None) -> torch.Tensor:
    """The model's scores, or with ``span`` (``(batch, 2)`` start and end positions) each row's
    start logit at its start plus end logit at its end, ``(batch, 1)``."""
    scores = logits_of(output)
    if span is None:
        return scores
    rows = torch.arange(scores.shape[0], device=scores.device)
    return (scores[rows, span[:, 0], 0] + scores[rows, span[:, 1], 1])[:, None]


class _EmbeddingMethod:
    """Shared pieces: the model's word-embedding layer, a forward from embeddings, and answer spans."""

    #: whether the attribution is linear in the explained score: the attribution of start + end
    #: logit is then the sum of the two attributions, and an AnswerSpan takes one pass
    linear_in_target = False

    def __init__(self, model: Any) -> None:
        self.model = model
        self.embeddings = model.get_input_embeddings()

    def _forward_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                        token_type_ids: torch.Tensor | None = None, span: torch.Tensor | None = None) -> torch.Tensor:
        return _scores(self.model(inputs_embeds=embeds, attention_mask=attention_mask,
                                  **token_type_kwargs(token_type_ids)), span)

    def _summed_span(self, target: Any, inputs: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None
                     ) -> tuple[tuple, Any] | None:
        """``(forward args, target)`` explaining an AnswerSpan's start + end in one pass, for a
        method linear in the score; ``None`` where that does not apply."""
        if not (self.linear_in_target and isinstance(target, AnswerSpan) and target.part == "both"):
            return None
        span = target.for_batch(inputs, mask)
        return (mask, types, torch.stack([span.start, span.end], 1).to(inputs.device)), 0

    def _grad_scores(self, method: Any, input_ids: torch.Tensor, target: Any, additional_forward_args: Any
                     ) -> torch.Tensor:
        mask, types = _args_of(input_ids, additional_forward_args)
        with torch.no_grad():
            embeds = self.embeddings(input_ids)
        embeds.requires_grad_()
        args = (mask,) if types is None else (mask, types)
        summed = self._summed_span(target, input_ids, mask, types)
        if summed is not None:
            attr = method.attribute(embeds, target=summed[1], additional_forward_args=summed[0])
        elif isinstance(target, AnswerSpan):
            attr = span_attribution(method.attribute, embeds, target, args)
        else:
            attr = method.attribute(embeds, target=_target(target, input_ids.shape[0]), additional_forward_args=args)
        return attr.sum(-1).detach() * mask


class SaliencyEmbeddings(_EmbeddingMethod):
    """Captum ``Saliency`` on the word embeddings, summed over the hidden dimension."""

    def attribute(self, input_ids: torch.Tensor, target: Any = None, additional_forward_args: Any = None
                  ) -> torch.Tensor:
        return self._grad_scores(Saliency(self._forward_embeds), input_ids, target, additional_forward_args)


class InputXGradientEmbeddings(_EmbeddingMethod):
    """Captum ``InputXGradient`` on the word embeddings, summed over the hidden dimension."""

    linear_in_target = True

    def attribute(self, input_ids: torch.Tensor, target: Any = None, additional_forward_args: Any = None
                  ) -> torch.Tensor:
        return self._grad_scores(InputXGradient(self._forward_embeds), input_ids, target, additional_forward_args)


class IntegratedGradientsEmbeddings(_EmbeddingMethod):
    """Captum ``LayerIntegratedGradients`` on the word-embedding layer (``n_steps=50``).

    Captum expands a batch by the number of steps; ``internal_batch_size`` bounds the rows of
    one pass, and ``max_tokens`` (when given) the rows times the width of the inputs, so that
    long texts cost no more memory per pass than short ones.
    """

    linear_in_target = True

    def __init__(self, model: Any, n_steps: int = 50, internal_batch_size: int | None = 256,
                 max_tokens: int | None = None) -> None:
        super().__init__(model)
        self.n_steps = n_steps
        self.internal_batch_size = internal_batch_size
        self.max_tokens = max_tokens
        cfg = model.config
        self.pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        self.keep_ids = [t for t in (getattr(cfg, "cls_token_id", None), getattr(cfg, "sep_token_id", None),
                                     getattr(cfg, "bos_token_id", None), getattr(cfg, "eos_token_id", None))
                         if t is not None]

    def _forward_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     token_type_ids: torch.Tensor | None = None, span: torch.Tensor | None = None) -> torch.Tensor:
        return _scores(self.model(input_ids=input_ids, attention_mask=attention_mask,
                                  **token_type_kwargs(token_type_ids)), span)

    def attribute(self, input_ids: torch.Tensor, target: Any = None, additional_forward_args: Any = None
                  ) -> torch.Tensor:
        mask, types = _args_of(input_ids, additional_forward_args)
        baseline = torch.full_like(input_ids, self.pad_id)
        if self.keep_ids:
            keep = torch.isin(input_ids, torch.tensor(self.keep_ids, dtype=input_ids.dtype, device=input_ids.device))
        else:
            keep = torch.zeros_like(input_ids, dtype=torch.bool)
        # the first and the last real token ([CLS] ... [SEP]) stay in the baseline
        keep[:, 0] = True
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last = torch.where(input_ids != self.pad_id, pos, torch.zeros_like(pos)).max(1).values
        keep[torch.arange(input_ids.shape[0], device=input_ids.device), last] = True
        baseline = torch.where(keep, input_ids, baseline)
        lig = LayerIntegratedGradients(self._forward_ids, self.embeddings)
        rows = self.internal_batch_size
        if self.max_tokens is not None:
            rows = max(1, min(rows or self.max_tokens, self.max_tokens // input_ids.shape[1]))
        args: tuple = (mask,) if types is None else (mask, types)
        summed = self._summed_span(target, input_ids, mask, types)
        if summed is not None:
            args, target = summed
        elif isinstance(target, AnswerSpan):
            target = target.for_batch(input_ids, mask).pairs(target.part)
        attr = lig.attribute(input_ids, baselines=baseline, target=_target(target, input_ids.shape[0]),
                             additional_forward_args=args, n_steps=self.n_steps, internal_batch_size=rows)
        return attr.sum(-1).detach() * mask


class RandomScores:
    """Uniform random token scores from a seeded generator (same seed -> same scores)."""

    def __init__(self, model: Any = None, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def attribute(self, input_ids: torch.Tensor, target: Any = None, additional_forward_args: Any = None
                  ) -> torch.Tensor:
        mask = _mask_of(input_ids, additional_forward_args)
        return torch.rand(input_ids.shape, generator=self.generator).to(mask.device) * mask


#: Name -> class, merged with ``captum_attcat.METHODS`` by the runner.
BASELINES: dict[str, type] = {
    "IntegratedGradients": IntegratedGradientsEmbeddings,
    "Saliency": SaliencyEmbeddings,
    "InputXGradient": InputXGradientEmbeddings,
    "Random": RandomScores,
}
