"""Several registered methods on one text, as one :class:`TextExplanation`.

Example::

    >>> explanation = explain_text(model, tokenizer, "a charming and often affecting journey", methods=["AttCAT"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..registry import METHODS, methods_to_build
from .records import merge_subwords



@dataclass
class TextExplanation:
    r"""Scores of several methods for one input, ready to be drawn.

    Attributes:
        tokens: the tokens (or words, after :meth:`merged`).
        scores: method name -> ``(len(tokens),)`` raw scores, in insertion order.
        target: the explained class.
        predicted: the predicted class, if known.
        probability: the predicted probability of ``target``, if known.
        class_names: class names, if known.
        text: the explained text, if known.
        word_ids: the fast tokenizer's ``word_ids()``, if known (used by :meth:`merged`).

    Example::

        >>> explanation = explain_text(model, tokenizer, "a gorgeous , witty film")
        >>> explanation.add("IntegratedGradients", ig_scores[0])   # any other scores
        >>> save_html("film.html", explanation.merged())
    """

    tokens: list[str]
    scores: dict[str, Tensor] = field(default_factory=dict)
    target: int | None = None
    predicted: int | None = None
    probability: float | None = None
    class_names: list[str] | None = None
    text: str | None = None
    word_ids: list[int | None] | None = None
    #: methods left out because a required constructor argument was not given: name -> what it needs
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, method: str, scores: Tensor | Sequence[float]) -> "TextExplanation":
        """Add (a copy of) the ``(len(tokens),)`` scores of another method; returns ``self``."""
        values = torch.as_tensor(scores).detach().to(torch.float32).cpu().clone().flatten()
        if len(values) != len(self.tokens):
            raise ValueError(f"{method!r}: {len(values)} scores for {len(self.tokens)} tokens")
        if not torch.isfinite(values).all():
            raise ValueError(f"{method!r}: the scores contain NaN or inf values")
        self.scores[method] = values
        return self

    def merged(self, reduce: str = "sum") -> "TextExplanation":
        """A new explanation with subwords merged into words (:func:`merge_subwords`)."""
        words: list[str] = list(self.tokens)
        merged: dict[str, Tensor] = {}
        for method, values in self.scores.items():
            words, merged[method] = merge_subwords(self.tokens, values, self.word_ids, reduce)
        if not merged:
            words, _ = merge_subwords(self.tokens, torch.zeros(len(self.tokens)), self.word_ids, reduce)
        return TextExplanation(
            tokens=words, scores=merged, target=self.target, predicted=self.predicted,
            probability=self.probability, class_names=self.class_names, text=self.text,
        )

    def label(self, index: int | None) -> str:
        """The name of class ``index`` (its number when no names are known)."""
        if index is None:
            return "?"
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return str(self.class_names[index])
        return str(index)


def _class_names(model: Any) -> list[str] | None:
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not id2label:
        return None
    return [str(id2label[i]) for i in sorted(id2label)]


def explain_text(
    model: Any,
    tokenizer: Any,
    text: str,
    methods: Iterable[str] | None = None,
    target: int | None = None,
    init_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    attribute_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> TextExplanation:
    r"""Explain one text with several registered methods.

    Each method is built as ``METHODS[name](model, **init_kwargs.get(name, {}))`` and
    called as ``attribute(input_ids, target=target, additional_forward_args=(attention_mask,),
    **attribute_kwargs.get(name, {}))``, so methods registered later need no change here.

    Args:
        model: a Hugging Face sequence classifier.
        tokenizer: its tokenizer (a fast one gives ``word_ids`` for merging subwords).
        text: the text to explain.
        methods: names in :data:`captum_attcat.METHODS` (default: all, sorted; those with a
            required argument missing from ``init_kwargs``, such as MaskLRP's head mask, are then
            left out and listed in ``skipped``; named explicitly, they raise).
        target: the class to explain (default: the predicted class).
        init_kwargs: per method name, extra constructor arguments.
        attribute_kwargs: per method name, extra ``attribute`` arguments.

    Returns:
        A :class:`TextExplanation` with one score vector per method.

    Example::

        >>> explanation = explain_text(model, tokenizer, "the plot is nothing but boilerplate",
        ...                            methods=["AttCAT", "CAT"])
        >>> explanation.tokens[:3], explanation.scores["AttCAT"].shape
    """
    methods = None if methods is None else list(methods)
    if methods == []:
        raise ValueError("`methods` is empty: name at least one method of captum_attcat.METHODS")
    names, missing = methods_to_build(methods, init_kwargs)
    encoding = tokenizer(text, return_tensors="pt")
    device = next(model.parameters()).device
    input_ids = encoding["input_ids"].to(device)
    attention_mask = encoding["attention_mask"].to(device)
    with torch.no_grad():
        probabilities = model(input_ids, attention_mask=attention_mask).logits.float().softmax(-1)[0]
    predicted = int(probabilities.argmax())
    target = predicted if target is None else int(target)
    if not 0 <= target < probabilities.shape[0]:
        raise ValueError(f"`target` {target} is out of range: the model has {probabilities.shape[0]} classes")
    word_ids = encoding.word_ids(0) if getattr(encoding, "is_fast", False) else None
    explanation = TextExplanation(
        tokens=tokenizer.convert_ids_to_tokens(input_ids[0].tolist()),
        target=target,
        predicted=predicted,
        probability=float(probabilities[target]),
        class_names=_class_names(model),
        text=text,
        word_ids=word_ids,
    )
    for name, needs in missing.items():
        explanation.skipped[name] = "; ".join(f"`{argument}`: {what}" for argument, what in needs.items())
    for name in names:
        explainer = METHODS[name](model, **dict((init_kwargs or {}).get(name, {})))
        scores = explainer.attribute(
            input_ids, target=target, additional_forward_args=(attention_mask,),
            **dict((attribute_kwargs or {}).get(name, {})),
        )
        explanation.add(name, scores[0])
    return explanation
