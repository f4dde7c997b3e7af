"""Explain what a causal language model generates, as Captum's LLM API does, with this library's methods.

:class:`LLMTransformerAttribution` is to this library's methods what Captum's
``LLMGradientAttribution`` is to Captum's layer gradient methods: it takes a prompt as Captum's
``TextTokenInput`` or ``TextTemplateInput``, generates the response when no ``target`` is given,
explains every response token given the prompt and the response tokens before it, and returns
Captum's own ``LLMAttributionResult`` (``seq_attr``, ``token_attr``, ``plot_token_attr``,
``plot_seq_attr``).

What is explained (``score``): for the gradient and attention methods (CAT, AttCAT, GAE, ...)
by default the log-probability of each response token (the log-softmax of its logits), what
Captum's ``LLMGradientAttribution`` explains, so CAT's first term is Captum's gradient x input on
the embeddings; for the LRP methods (TransAtt, MaskLRP, PartialLRP, TransformerLRP) by default
the pre-softmax logit, where LRP's relevance starts as 1.0. Either can be asked for with
``score="log_prob"`` or ``"logit"``. For an LRP method, ``"log_prob"`` starts the relevance at the
logits as ``d log p(token) / d logits = onehot(token) - p`` (``1 - p`` at the token, ``-p_v`` at
every other one, as softmax-gradient LRP does), which sums to 0 and mostly cancels on its way
down: on the small trained Llama of ``notebooks/explain_generation.ipynb`` TransAtt's scores
off the rollout's identity were about 1e-11 that way, 1e-3 to 1e-2 for the logit, hence the
logit default.

Cost: the prompt and the whole response go through the model once; since a causal model's
scores at a position depend on no later token, each response token then costs one backward
pass of that forward (two for TransAtt and MaskLRP: gradients and relevance), not a forward
and a backward of its own as in Captum's loop.

Example::

    >>> from captum.attr import TextTokenInput
    >>> from captum_attcat import AttCAT
    >>> from captum_attcat.llm import LLMTransformerAttribution
    >>> llm_attr = LLMTransformerAttribution(AttCAT(lm), tokenizer)
    >>> result = llm_attr.attribute(TextTokenInput("The capital of France is", tokenizer),
    ...                             gen_args={"max_new_tokens": 5})
    >>> result.token_attr.shape                    # (response tokens, prompt tokens)
    >>> fig, ax = result.plot_token_attr()
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch
from captum._utils.typing import TokenizerLike
from captum.attr._core.llm_attr import BaseLLMAttribution, LLMAttributionResult, _convert_ids_to_pretty_tokens
from captum.attr._utils.attribution import Attribution
from captum.attr._utils.interpretable_input import InterpretableInput, TextTemplateInput, TextTokenInput
from torch import Tensor

from .base import TransformerAttribution
from ._core.lrp_methods import LRPAttribution
from .targets import NextTokens

__all__ = ["LLMTransformerAttribution", "template_features"]

_SCORES = ("log_prob", "logit")


class LLMTransformerAttribution(BaseLLMAttribution):
    r"""Explain a causal language model's response token by token with a method of this library.

    Args:
        attr_method: any method of this library (:data:`~captum_attcat.METHODS`) built on a
            Hugging Face causal language model (``...ForCausalLM``), e.g. ``AttCAT(lm)``,
            ``TransAtt(lm)``, ``MaskLRP(lm, head_mask=mask)``.
        tokenizer: the model's tokenizer (a fast one for ``TextTemplateInput`` prompts).

    Example::

        >>> llm_attr = LLMTransformerAttribution(TransAtt(lm), tokenizer)
        >>> result = llm_attr.attribute(TextTokenInput(prompt, tokenizer), target=" Paris")
        >>> result.seq_attr_dict
    """

    SUPPORTED_INPUTS = (TextTokenInput, TextTemplateInput)
    SUPPORTED_METHODS = (TransformerAttribution,)

    def __init__(self, attr_method: TransformerAttribution, tokenizer: TokenizerLike) -> None:
        if not isinstance(attr_method, TransformerAttribution):
            raise TypeError(f"`attr_method` must be a method of captum_attcat (e.g. AttCAT(model)); got "
                            f"{type(attr_method).__name__} (Captum's own methods go through Captum's "
                            "LLMGradientAttribution / LLMAttribution)")
        model = attr_method.adapter.root
        if model is None:
            raise ValueError("`attr_method` must be built on a Hugging Face causal language model (e.g. "
                             "AttCAT(AutoModelForCausalLM...)), not on a forward function")
        if not attr_method.adapter.causal or not callable(getattr(model, "generate", None)):
            raise ValueError(f"`attr_method` explains {type(model).__name__}, which is not a causal language model "
                             "(causal attention and `generate`): LLMTransformerAttribution explains what a causal "
                             "language model generates")
        if not callable(getattr(tokenizer, "encode", None)) or not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(f"`tokenizer` must be the model's tokenizer (with encode and decode); got "
                            f"{type(tokenizer).__name__}")
        Attribution.__init__(self, model)
        self.model = model
        self.tokenizer = tokenizer
        self.attr_method = attr_method
        parameter = next(model.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")

    def attribute(  # type: ignore[override]
        self,
        inp: InterpretableInput | Sequence[InterpretableInput],
        target: str | Tensor | Sequence[int] | None | Sequence[Any] = None,
        gen_args: dict[str, Any] | None = None,
        score: str | None = None,
        **kwargs: Any,
    ) -> LLMAttributionResult | list[LLMAttributionResult]:
        r"""
        Args:
            inp: the prompt, a ``TextTokenInput`` (features: its tokens, less ``skip_tokens``) or a
                ``TextTemplateInput`` (features: its values; a value's score is the sum of its
                tokens' scores, tokens of the template's own text are not features); or a list of
                prompts, explained as one right-padded batch.
            target: the response: a string, token ids (a 1-D tensor or a list of ints), or
                ``None`` to generate it with ``gen_args`` as Captum does (greedy, 25 new tokens
                by default); a list with one per prompt for a list of prompts.
            gen_args: keyword arguments of ``model.generate`` (only when ``target`` is None).
            score: ``"log_prob"`` (as Captum's ``LLMGradientAttribution``) or ``"logit"``; by
                default ``"logit"`` for the LRP methods (:class:`~captum_attcat.LRPAttribution`,
                whose relevance starts at a logit) and ``"log_prob"`` for the others.
            **kwargs: further arguments of the method's ``attribute`` (e.g. ``start_layer``).

        Returns:
            Captum's ``LLMAttributionResult`` (a list of them for a list of prompts):
            ``token_attr`` ``(response tokens, prompt features)``, row ``t`` explaining response
            token ``t`` given the prompt and the response before it; ``seq_attr`` their sum over
            the response (for ``"log_prob"``, the attribution of the response's log-probability
            for the methods linear in the explained score: CAT, AttCAT).
        """
        prompts = list(inp) if isinstance(inp, (list, tuple)) else [inp]
        if not prompts:
            raise ValueError("`inp` is an empty list of prompts")
        for prompt in prompts:
            if not isinstance(prompt, self.SUPPORTED_INPUTS):
                raise TypeError(f"`inp` must be Captum's TextTokenInput or TextTemplateInput (or a list of them); "
                                f"got {type(prompt).__name__}")
        many = isinstance(inp, (list, tuple))
        if many:
            targets = [None] * len(prompts) if target is None else target
            if not isinstance(targets, (list, tuple)) or len(targets) != len(prompts):
                raise ValueError(f"`target` must be None or a list with one target per prompt ({len(prompts)}) "
                                 "for a list of prompts")
        else:
            targets = [target]
        if gen_args is not None and any(t is not None for t in targets):
            raise ValueError("`gen_args` are for generating the response: pass them only when `target` is None")
        if gen_args is not None and not isinstance(gen_args, dict):
            raise TypeError(f"`gen_args` must be a dict of model.generate arguments; got {type(gen_args).__name__}")
        if score is None:
            score = "logit" if isinstance(self.attr_method, LRPAttribution) else "log_prob"
        if score not in _SCORES:
            raise ValueError(f"`score` must be one of {_SCORES}; got {score!r}")
        if kwargs.get("return_layer_scores"):
            raise ValueError("`return_layer_scores` is not available here: an LLMAttributionResult holds one "
                             "score per response token and prompt feature")

        prompt_ids = [self._format_model_input(p.to_model_input())["input_ids"][0].to(self.device) for p in prompts]
        responses = [self._response(p, t, gen_args) for p, t in zip(prompts, targets)]
        scores = self._explain(prompt_ids, responses, score, kwargs)
        results = [self._result(p, ids, r, s) for p, ids, r, s in zip(prompts, prompt_ids, responses, scores)]
        return results if many else results[0]

    def _response(self, prompt: InterpretableInput, target: Any, gen_args: dict[str, Any] | None) -> Tensor:
        """The response token ids ``(n,)``: ``target`` encoded, or generated."""
        if isinstance(target, (list, tuple)) and target and all(isinstance(t, int) and not isinstance(t, bool)
                                                                for t in target):
            target = torch.tensor(list(target))
        if target is not None and not isinstance(target, (str, Tensor)):
            raise TypeError(f"`target` must be a string, token ids (a 1-D tensor or a list of ints) or None; got "
                            f"{type(target).__name__}")
        if isinstance(target, Tensor) and (target.dim() != 1 or target.is_floating_point() or target.dtype == torch.bool):
            raise ValueError(f"`target` token ids must be a 1-D integer tensor; got a {target.dtype} tensor of "
                             f"shape {tuple(target.shape)}")
        with self.attr_method.adapter.lock():
            response = self._get_target_tokens(prompt, target, gen_args=gen_args)
        response = response.detach().to(self.device, torch.long).flatten()
        if response.numel() == 0:
            raise ValueError("the response is empty: nothing to explain (an empty `target`, or nothing generated)")
        vocab = self.attr_method.adapter.vocab_size
        if vocab is not None and (int(response.min()) < 0 or int(response.max()) >= vocab):
            raise ValueError(f"`target` token ids must lie in [0, {vocab}) (the model's vocabulary)")
        return response

    def _explain(self, prompts: list[Tensor], responses: list[Tensor], score: str, kwargs: dict) -> list[Tensor]:
        """Per prompt ``(response tokens, prompt tokens)``: one forward of every prompt with its
        response (right-padded batch), one backward per response token."""
        lengths = [len(p) + len(r) - 1 for p, r in zip(prompts, responses)]  # the last token is never read
        width, n = max(lengths), max(len(r) for r in responses)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        ids = torch.full((len(prompts), width), 0 if pad is None else int(pad), dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        positions = torch.zeros(len(prompts), n, dtype=torch.long)
        tokens = torch.zeros(len(prompts), n, dtype=torch.long)
        for row, (prompt, response, length) in enumerate(zip(prompts, responses, lengths)):
            ids[row, :length] = torch.cat([prompt, response[:-1]])
            mask[row, :length] = 1
            # token t is read at the position before it; rows beyond a shorter response repeat its last
            # token (explained, then dropped)
            last = len(response) - 1
            positions[row] = len(prompt) - 1 + torch.arange(n).clamp(max=last)
            tokens[row] = response.cpu()[torch.arange(n).clamp(max=last)]
        attributions = self.attr_method.attribute(ids, target=NextTokens(positions, tokens, score),
                                                  additional_forward_args=(mask,), **kwargs)
        return [attributions[row, : len(r), : len(p)].detach() for row, (p, r) in enumerate(zip(prompts, responses))]

    def _result(self, prompt: InterpretableInput, prompt_ids: Tensor, response: Tensor, scores: Tensor
                ) -> LLMAttributionResult:
        if isinstance(prompt, TextTemplateInput):
            features = template_features(prompt, self.tokenizer, prompt_ids).to(scores)
            scores = prompt.format_attr(scores @ features)
        elif prompt.itp_mask is not None:  # skip_tokens are no features
            scores = scores[:, prompt.itp_mask[0].to(scores.device)]
        return LLMAttributionResult(
            seq_attr=scores.sum(0),
            token_attr=scores,
            input_tokens=prompt.values,
            output_tokens=_convert_ids_to_pretty_tokens(response.cpu(), self.tokenizer),
        )


def template_features(prompt: TextTemplateInput, tokenizer: TokenizerLike, prompt_ids: Tensor | None = None
                      ) -> Tensor:
    r"""``(tokens, interpretable features)`` 0/1: which value of a ``TextTemplateInput`` each
    token of the formatted prompt belongs to (a token overlapping a value's characters; tokens of
    the template's own text and special tokens belong to none). Values grouped by the input's
    ``mask`` share one feature.

    Example::

        >>> inp = TextTemplateInput("{} lives in {}", values=["Dave", "Paris"])
        >>> template_features(inp, tokenizer)      # doctest: +SKIP
        tensor([[0., 0.], [1., 0.], [0., 0.], [0., 0.], [0., 1.], [0., 0.]])   # [CLS] Dave lives in Paris [SEP]
    """
    text, spans = _value_spans(prompt)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("a TextTemplateInput prompt needs a fast tokenizer: its offsets place tokens in the values")
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
    if prompt_ids is not None and ids != prompt_ids.tolist():
        raise ValueError("the tokenizer encodes the prompt differently with offsets than without")
    features = torch.zeros(len(ids), prompt.n_itp_features)
    for value, (low, high) in enumerate(spans):
        feature = prompt.formatted_mask[value] if prompt.mask is not None else value
        for token, (start, end) in enumerate(offsets):
            if start < high and end > low and end > start:
                features[token, feature] = 1.0
    return features


_MARK = "\ue000{}\ue001"


def _value_spans(prompt: TextTemplateInput) -> tuple[str, list[tuple[int, int]]]:
    """The formatted prompt and each value's ``[start, end)`` characters in it (the template is
    formatted with markers in place of the values, which are then put back)."""
    marks = [_MARK.format(i) for i in range(len(prompt.values))]
    marked = prompt.format_fn(**dict(zip(prompt.dict_keys, marks))) if prompt.dict_keys else prompt.format_fn(*marks)
    text, spans, last = "", [(0, 0)] * len(prompt.values), 0
    for match in re.finditer("\ue000(\\d+)\ue001", marked):
        text += marked[last:match.start()]
        value = int(match.group(1))
        spans[value] = (len(text), len(text) + len(prompt.values[value]))
        text += prompt.values[value]
        last = match.end()
    return text + marked[last:], spans
