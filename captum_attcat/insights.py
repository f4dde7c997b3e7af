"""Captum Insights for Hugging Face text classifiers, with this library's methods in its list.

Captum Insights (a Flask web app) exists in captum 0.8 and was removed in captum 0.9, so it
is an optional extra: ``pip install "captum-attcat[insights]"`` (captum 0.8.x, Flask,
flask-compress; captum 0.8 needs numpy < 2). The rest of the library works with either captum.

:func:`register_methods` adds every method of :data:`captum_attcat.METHODS` (AttCAT, CAT,
and whatever is registered later) to Insights' attribution-method registry, next to
Captum's own (IntegratedGradients, Saliency, ...). :func:`text_visualizer` builds an
``AttributionVisualizer`` for a sequence classifier: one ``TextFeature`` whose input
transform maps token ids to word embeddings, so Captum's gradient methods and ours see the
same inputs (ours read them as ``inputs_embeds``).

Command line (serves on 127.0.0.1; open the printed address, pick a method, press Fetch)::

    python -m captum_attcat.insights --model PATH [--data sentences.tsv] [--port 6006]

Example::

    >>> from captum_attcat.insights import text_visualizer
    >>> visualizer = text_visualizer(model, tokenizer, ["a witty , moving film"], labels=[1])
    >>> visualizer.serve(port=6006)          # http://localhost:6006
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .registry import METHODS, arguments_by_method, methods_to_build

__all__ = [
    "EXAMPLE_SENTENCES",
    "INSTALL_HINT",
    "EmbeddingClassifier",
    "insights_available",
    "main",
    "read_tsv",
    "register_methods",
    "text_visualizer",
]

INSTALL_HINT = (
    "Captum Insights is not installed: it ships with captum 0.8 and was removed in captum 0.9. "
    "Install it into a separate environment with\n"
    "    pip install torch==2.13.0 && pip install \"captum-attcat[insights]\"\n"
    "(captum>=0.8,<0.9, Flask and flask-compress; captum 0.8 needs numpy<2)."
)

#: a few labelled sentences served when no data file is given (0 = negative, 1 = positive)
EXAMPLE_SENTENCES: list[tuple[str, int]] = [
    ("a warm , funny and beautifully acted film .", 1),
    ("the plot is thin and the jokes fall flat .", 0),
    ("an ambitious story that never finds its footing .", 0),
    ("a smart , moving portrait of an unlikely friendship .", 1),
    ("two hours of noise that add up to nothing .", 0),
    ("the cast is terrific and the ending is earned .", 1),
]


def insights_available() -> bool:
    """Whether Captum Insights (captum 0.8 with Flask) can be imported."""
    try:
        _insights()
    except ImportError:
        return False
    return True


def _insights() -> Any:
    """The ``captum.insights`` package, or an ``ImportError`` saying how to install it."""
    try:
        import captum.insights as insights
        from captum.insights.attr_vis import config  # noqa: F401  (the method registry)
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT}\n(import failed: {error})") from error
    return insights


class EmbeddingClassifier(nn.Module):
    r"""A Hugging Face sequence classifier called with word embeddings, as Insights needs.

    ``forward(inputs_embeds, attention_mask=None)`` returns the logits; Captum's
    own methods (IntegratedGradients, Saliency, ...) differentiate with respect
    to the embeddings, and this library's methods explain :attr:`model` itself.

    Args:
        model: a Hugging Face ``...ForSequenceClassification`` model.

    Example::

        >>> wrapped = EmbeddingClassifier(model)
        >>> logits = wrapped(model.get_input_embeddings()(input_ids), attention_mask)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits


def _unwrap(forward_func: Any) -> Any:
    return forward_func.model if isinstance(forward_func, EmbeddingClassifier) else forward_func


def _called_unwrapped(function: Callable[..., Any]) -> Callable[..., Any]:
    """Insights calls ``method.attribute.__wrapped__(method, ...)`` (Captum's methods are
    wrapped by ``log_usage``); give ``attribute`` the same shape."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return wrapper


def _insights_method(name: str, init_kwargs: Mapping[str, Any] | None = None) -> type:
    """An Insights-compatible class for ``METHODS[name]``, built with ``init_kwargs``."""
    method_class = METHODS[name]
    init_kwargs = dict(init_kwargs or {})

    class InsightsMethod:
        """Runs ``{name}`` on the Hugging Face model inside an :class:`EmbeddingClassifier`."""

        captum_attcat_method = name

        def __init__(self, forward_func: Any) -> None:
            self.method = method_class(_unwrap(forward_func), **init_kwargs)

        @classmethod
        def get_name(cls) -> str:
            return name

        @_called_unwrapped
        def attribute(
            self,
            inputs: Tensor | tuple[Tensor, ...],
            target: Any = None,
            additional_forward_args: Any = None,
            **kwargs: Any,
        ) -> tuple[Tensor, ...]:
            if isinstance(inputs, tuple):
                if len(inputs) != 1:
                    raise ValueError(f"{name} explains one text input; Insights passed {len(inputs)} features")
                inputs = inputs[0]
            scores = self.method.attribute(
                inputs, target=target, additional_forward_args=additional_forward_args, **kwargs
            )
            return (scores.detach(),)

    InsightsMethod.__name__ = InsightsMethod.__qualname__ = f"Insights{name}"
    InsightsMethod.__doc__ = f"Runs {name} on the Hugging Face model inside an EmbeddingClassifier."
    return InsightsMethod


def register_methods(names: Iterable[str] | None = None,
                     init_kwargs: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    r"""Add this library's methods to Captum Insights' attribution-method list.

    Insights keeps its methods in ``captum.insights.attr_vis.config.ATTRIBUTION_NAMES_TO_METHODS``
    (name shown in the UI -> class); each of ours is added under its
    :data:`~captum_attcat.METHODS` name. Registering twice is harmless (the last arguments win).

    Args:
        names: names in :data:`captum_attcat.METHODS` (default: all of them but those missing a
            required constructor argument in ``init_kwargs``, such as MaskLRP's head mask; named
            explicitly, such a method raises).
        init_kwargs: per method name, constructor arguments (Insights passes our methods word
            embeddings, so a reference set is given as embeddings).

    Returns:
        The names added, in order.

    Raises:
        ImportError: Captum Insights is not installed (the message says how to get it).
        KeyError: a name is not a registered method.
        ValueError: a method named in ``names`` lacks a required constructor argument.

    Example::

        >>> register_methods()
        ['AttCAT', 'CAT']
    """
    _insights()
    from captum.insights.attr_vis import config

    init_kwargs = init_kwargs or {}
    names, _ = methods_to_build(names, init_kwargs)
    registry = config.ATTRIBUTION_NAMES_TO_METHODS
    clashes = [n for n in names if n in registry and getattr(registry[n], "captum_attcat_method", None) != n]
    if clashes:
        raise ValueError(f"Insights already has method(s) named {clashes}")
    for name in names:
        registry[name] = _insights_method(name, init_kwargs.get(name))
    return names


def text_visualizer(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    class_names: Sequence[str] | None = None,
    methods: Iterable[str] | None = None,
    feature_name: str = "Sentence",
    init_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    r"""A Captum Insights ``AttributionVisualizer`` for a Hugging Face text classifier.

    Each text is one example (no padding), tokenized by ``tokenizer``. The
    feature is a ``TextFeature`` whose input transform maps token ids to the
    model's word embeddings; the baseline for Integrated Gradients is the
    embedding of the padding token at every position. This library's methods are
    registered first (:func:`register_methods`), so they appear in the method
    list next to Captum's.

    Args:
        model: a Hugging Face ``...ForSequenceClassification`` model in eval mode
            (it is not changed).
        tokenizer: its tokenizer.
        texts: the texts to browse.
        labels: their true classes (Insights shows examples only with a label).
        class_names: class names (default: the model's ``id2label``).
        methods: which of :data:`captum_attcat.METHODS` to add (default: all those whose required
            constructor arguments are in ``init_kwargs``; see :func:`register_methods`).
        feature_name: the name Insights shows for the text.
        init_kwargs: per method name, constructor arguments, e.g. ``{"MaskLRP": {"head_mask": mask}}``.

    Returns:
        ``captum.insights.AttributionVisualizer``; call ``.serve(port=...)``.

    Example::

        >>> visualizer = text_visualizer(model, tokenizer, ["a witty film"], [1])
        >>> port = visualizer.serve(port=6006)
    """
    insights = _insights()
    from captum.insights.attr_vis.features import TextFeature

    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ValueError("`texts` is empty: give at least one text to browse")
    classes = list(class_names) if class_names is not None else _class_names(model)
    bad = [label for label in labels if not 0 <= int(label) < len(classes)]
    if bad:
        raise ValueError(f"label {bad[0]} is out of range for the {len(classes)} classes {classes}")
    register_methods(methods, init_kwargs)
    embeddings = model.get_input_embeddings()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def embed(ids: Tensor) -> Tensor:
        with torch.no_grad():
            return embeddings(ids).detach()

    def pad_baseline(embedded: Tensor) -> Tensor:
        with torch.no_grad():
            pad = embeddings(torch.tensor([pad_id], device=embedded.device))[0]
        return pad.expand_as(embedded).clone()

    def to_tokens(ids: Tensor) -> list[str]:
        return tokenizer.convert_ids_to_tokens(ids.reshape(-1).tolist())

    feature = TextFeature(
        feature_name, baseline_transforms=[pad_baseline], input_transforms=[embed],
        visualization_transform=to_tokens,
    )
    device = next(model.parameters()).device
    batches = []
    for text, label in zip(texts, labels):
        encoding = tokenizer(text, return_tensors="pt")
        batches.append(
            insights.Batch(
                inputs=encoding["input_ids"].to(device),
                labels=torch.tensor([int(label)], device=device),
                additional_args=(encoding["attention_mask"].to(device),),
            )
        )
    return insights.AttributionVisualizer(
        models=[EmbeddingClassifier(model)],
        classes=classes,
        features=[feature],
        dataset=batches,
        score_func=lambda logits: logits.softmax(-1),
    )


def _class_names(model: nn.Module) -> list[str]:
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None) or {i: str(i) for i in range(getattr(config, "num_labels", 2))}
    return [str(id2label[i]) for i in sorted(id2label)]


def read_tsv(path: str | Path, limit: int | None = None) -> tuple[list[str], list[int]]:
    r"""Sentences and integer labels from a ``sentence<TAB>label`` file with a header (GLUE SST-2).

    Args:
        path: the file; the last column is the label, the others the text.
        limit: read at most this many sentences.

    Returns:
        ``(texts, labels)``.

    Example::

        >>> texts, labels = read_tsv("../shared/data/sst2/dev.tsv", limit=40)
    """
    texts, labels = [], []
    with open(path, encoding="utf-8") as lines:
        header = next(lines, "").rstrip("\n").split("\t")
        if len(header) < 2:
            raise ValueError(f"{path}: expected a header 'sentence<TAB>label', got {header}")
        for number, line in enumerate(lines, start=2):
            if not line.strip():
                continue
            *text, label = line.rstrip("\n").split("\t")
            try:
                labels.append(int(label))
            except ValueError:
                raise ValueError(f"{path}:{number}: the last column must be an integer label, got {label!r}") from None
            texts.append("\t".join(text).strip())
            if limit is not None and len(texts) >= limit:
                break
    return texts, labels


def main(argv: Sequence[str] | None = None) -> int:
    """Serve Captum Insights for a saved Hugging Face classifier (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m captum_attcat.insights",
        description="Serve Captum Insights (captum 0.8) for a Hugging Face text classifier, "
        "with AttCAT, CAT and every other registered method in its method list.",
    )
    parser.add_argument("--model", required=True, help="a Hugging Face model directory (with its tokenizer)")
    parser.add_argument("--data", help="a 'sentence<TAB>label' file with a header, e.g. SST-2 dev.tsv "
                        "(default: a few built-in sentences)")
    parser.add_argument("--limit", type=int, default=40, help="how many sentences of --data to serve")
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--head-mask", help="a HeadMask JSON (python -m benchmarks.head_mask) for the methods that "
                        "take one (MaskLRP); without it they are left out")
    args = parser.parse_args(argv)
    try:
        _insights()
    except ImportError as error:
        print(error, file=sys.stderr)
        return 2

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.data:
        texts, labels = read_tsv(args.data, args.limit)
    else:
        texts, labels = [t for t, _ in EXAMPLE_SENTENCES], [label for _, label in EXAMPLE_SENTENCES]
    given = {}
    if args.head_mask:
        from .heads import HeadMask

        try:
            given["head_mask"] = HeadMask.load(args.head_mask)
        except (OSError, ValueError) as error:
            print(f"error: --head-mask {args.head_mask}: {error}", file=sys.stderr)
            return 2
    init_kwargs = arguments_by_method({argument: {argument: value} for argument, value in given.items()})
    visualizer = text_visualizer(model, tokenizer, texts, labels, init_kwargs=init_kwargs)
    shown, left_out = methods_to_build(None, init_kwargs)
    print(f"Captum Insights with methods {shown} for {args.model}"
          + "".join(f"; {n} left out (needs `{', '.join(needs)}`)" for n, needs in left_out.items()), flush=True)
    visualizer.serve(blocking=True, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
