"""See an explanation: Captum text records, a standalone HTML page, per-block heatmaps.

Three ways to look at token scores:

- :func:`visualization_records` turns scores into Captum's
  ``VisualizationDataRecord`` objects (scores scaled to [-1, 1], subwords
  optionally merged into words) for Captum's ``visualization.visualize_text``
  (``from captum.attr import visualization``).
- :func:`explain_text` runs several registered methods (any name in
  :data:`captum_attcat.METHODS`) on one input; :func:`explanation_html` /
  :func:`save_html` write them side by side as a standalone HTML page (no
  IPython needed), one coloured element per token: green for tokens that
  raise the explained score, red for tokens that lower it, with the signed
  value in the tooltip.
- :func:`layer_heatmap` plots per-block scores (``return_layer_scores=True``),
  one row per block plus their sum; :func:`plot_head_mask` plots a
  (blocks x heads) head mask, positional and syntactic heads apart.

Example::

    >>> from captum_attcat.visualization import explain_text, save_html, layer_heatmap
    >>> explanation = explain_text(model, tokenizer, "a charming and often affecting journey",
    ...                            methods=["AttCAT", "CAT"])
    >>> save_html("explanation.html", explanation)
    >>> per_block = AttCAT(model).attribute(input_ids, target=1, return_layer_scores=True)
    >>> layer_heatmap(per_block[0], tokens).savefig("layers.png")
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import torch
from captum.attr import visualization as captum_visualization
from torch import Tensor

from ._core.registry import METHODS

if TYPE_CHECKING:  # matplotlib is imported only by the plotting functions
    from matplotlib.figure import Figure

__all__ = [
    "TextExplanation",
    "explain_text",
    "explanation_html",
    "layer_heatmap",
    "merge_subwords",
    "plot_head_mask",
    "save_html",
    "scale_scores",
    "signed_color",
    "visualization_records",
]

_REDUCTIONS = ("sum", "mean", "max")


# --- scores ---------------------------------------------------------------------------------


def scale_scores(scores: Tensor | Sequence[float]) -> Tensor:
    r"""Scale scores to [-1, 1] by their largest magnitude, keeping signs and zeros.

    Each row of a ``(batch, seq)`` tensor (or the whole of a 1-D one) is divided by
    its own largest absolute value; an all-zero row stays zero.

    Args:
        scores: ``(seq,)`` or ``(batch, seq)`` scores (tensor or list of floats).

    Returns:
        A new float tensor of the same shape, values in [-1, 1].

    Example::

        >>> scale_scores(torch.tensor([2.0, -4.0, 1.0]))
        tensor([ 0.5000, -1.0000,  0.2500])
    """
    scores = torch.as_tensor(scores).detach().to(torch.float32)
    if scores.dim() not in (1, 2):
        raise ValueError(f"expected scores of shape (seq,) or (batch, seq); got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("the scores contain NaN or inf values")
    peak = scores.abs().amax(dim=-1, keepdim=True)
    return torch.where(peak > 0, scores / peak.clamp_min(torch.finfo(torch.float32).tiny), scores)


def _continues_word(token: str) -> bool:
    """Whether a subword piece continues the previous word (WordPiece ``##`` pieces)."""
    return token.startswith("##") and len(token) > 2


def merge_subwords(
    tokens: Sequence[str],
    scores: Tensor | Sequence[float],
    word_ids: Sequence[int | None] | None = None,
    reduce: str = "sum",
) -> tuple[list[str], Tensor]:
    r"""Merge subword tokens into words and their scores into one score per word.

    Pieces belong to the same word when the fast tokenizer's ``word_ids()`` say so
    (``None`` marks special tokens, which stay on their own); without
    ``word_ids``, WordPiece continuation pieces (``##ing``) join the token before.

    Args:
        tokens: the tokens, one per score.
        scores: ``(seq,)`` scores.
        word_ids: ``encoding.word_ids(i)`` of a fast tokenizer, one per token.
        reduce: how the pieces' scores combine: ``"sum"`` (default, keeps the total),
            ``"mean"`` or ``"max"`` (the piece of largest magnitude, with its sign).

    Returns:
        ``(words, word_scores)``: the merged words (``##`` removed) and a new
        ``(words,)`` float tensor.

    Example::

        >>> merge_subwords(["[CLS]", "charm", "##ing", "film"], [0.0, 0.2, 0.3, -0.1])
        (['[CLS]', 'charming', 'film'], tensor([ 0.0000,  0.5000, -0.1000]))
    """
    values = torch.as_tensor(scores).detach().to(torch.float32)
    if values.dim() != 1 or len(values) != len(tokens):
        raise ValueError(f"expected one score per token: {len(tokens)} tokens, scores of shape {tuple(values.shape)}")
    if reduce not in _REDUCTIONS:
        raise ValueError(f"`reduce` must be one of {_REDUCTIONS}; got {reduce!r}")
    if word_ids is not None and len(word_ids) != len(tokens):
        raise ValueError(f"`word_ids` has {len(word_ids)} entries for {len(tokens)} tokens")

    groups: list[list[int]] = []
    for i, token in enumerate(tokens):
        if word_ids is not None:
            joins = i > 0 and word_ids[i] is not None and word_ids[i] == word_ids[i - 1]
        else:
            joins = i > 0 and _continues_word(token)
        if joins:
            groups[-1].append(i)
        else:
            groups.append([i])

    words, merged = [], []
    for group in groups:
        pieces = [tokens[i] for i in group]
        words.append(pieces[0] + "".join(p[2:] if _continues_word(p) else p for p in pieces[1:]))
        part = values[group]
        if reduce == "sum":
            merged.append(part.sum())
        elif reduce == "mean":
            merged.append(part.mean())
        else:
            merged.append(part[part.abs().argmax()])
    return words, torch.stack(merged) if merged else values.new_zeros(0)


def _as_list(value: Any, batch: int, name: str) -> list:
    if value is None:
        return [None] * batch
    if isinstance(value, Tensor):
        value = value.flatten().tolist()
    elif isinstance(value, (int, float, str)):
        value = [value]
    value = list(value)
    if len(value) == 1:
        value = value * batch
    if len(value) != batch:
        raise ValueError(f"`{name}` has {len(value)} entries for a batch of {batch} examples")
    return value


def visualization_records(
    scores: Tensor,
    input_ids: Tensor,
    tokenizer: Any,
    target: int | Sequence[int] | Tensor,
    probabilities: Tensor | None = None,
    true_labels: int | Sequence[int] | Tensor | None = None,
    attention_mask: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    word_ids: Sequence[Sequence[int | None]] | None = None,
    merge: bool = False,
    convergence_delta: Tensor | Sequence[float] | None = None,
) -> list[captum_visualization.VisualizationDataRecord]:
    r"""Captum ``VisualizationDataRecord`` objects for a batch of token scores.

    Scores are scaled to [-1, 1] per example (:func:`scale_scores`), padding
    (``attention_mask == 0``) is dropped, and with ``merge=True`` subwords are
    merged into words (:func:`merge_subwords`, summing their scores).

    Args:
        scores: ``(batch, seq)`` attributions, e.g. from ``AttCAT.attribute``.
        input_ids: ``(batch, seq)`` the token ids that were explained.
        tokenizer: the Hugging Face tokenizer (``convert_ids_to_tokens``).
        target: the explained class, one for all or one per example.
        probabilities: ``(batch, classes)`` predicted probabilities (softmax of the
            logits); the predicted class and its probability are read from them.
            Without them the records show the target with probability ``nan``.
        true_labels: the true classes, if known (else the target is shown).
        attention_mask: ``(batch, seq)``; positions where it is 0 are dropped.
        class_names: names shown instead of class indices.
        word_ids: per example, ``encoding.word_ids(i)`` of a fast tokenizer, used
            for ``merge`` (otherwise ``##`` pieces are merged).
        merge: merge subwords into words.
        convergence_delta: per example, shown as Captum's convergence score.

    Returns:
        One record per example; ``attr_score`` is the sum of the raw scores.

    Example::

        >>> from captum.attr import visualization
        >>> scores = AttCAT(model).attribute(ids, target=1, additional_forward_args=(mask,))
        >>> probs = model(ids, attention_mask=mask).logits.softmax(-1)
        >>> visualization.visualize_text(visualization_records(scores, ids, tokenizer, 1, probs,
        ...                                                    attention_mask=mask, merge=True))
    """
    scores = torch.as_tensor(scores).detach()
    if scores.dim() == 1:
        scores = scores[None]
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if scores.shape != input_ids.shape:
        raise ValueError(f"`scores` {tuple(scores.shape)} and `input_ids` {tuple(input_ids.shape)} differ in shape")
    batch = scores.shape[0]
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"`attention_mask` {tuple(attention_mask.shape)} does not match `input_ids` {tuple(input_ids.shape)}"
        )
    if word_ids is not None and len(word_ids) != batch:
        raise ValueError(f"`word_ids` has {len(word_ids)} entries for a batch of {batch} examples")
    targets = _as_list(target, batch, "target")
    truths = _as_list(true_labels, batch, "true_labels")
    deltas = _as_list(convergence_delta, batch, "convergence_delta")
    if probabilities is not None:
        probabilities = torch.as_tensor(probabilities).detach().to(torch.float32)
        if probabilities.dim() != 2 or probabilities.shape[0] != batch:
            raise ValueError(f"`probabilities` must be (batch, classes); got {tuple(probabilities.shape)}")

    def name(index: Any) -> Any:
        return class_names[int(index)] if class_names is not None and index is not None else index

    records = []
    for i in range(batch):
        keep = torch.ones(scores.shape[1], dtype=torch.bool)
        if attention_mask is not None:
            keep = attention_mask[i].bool().cpu()
        tokens = tokenizer.convert_ids_to_tokens(input_ids[i][keep].tolist())
        raw = scores[i][keep.to(scores.device)].to(torch.float32).cpu()
        if merge:
            ids_i = None if word_ids is None else [w for w, k in zip(word_ids[i], keep.tolist()) if k]
            tokens, raw = merge_subwords(tokens, raw, ids_i)
        if probabilities is not None:
            pred = int(probabilities[i].argmax())
            prob = float(probabilities[i, pred])
        else:
            pred, prob = targets[i], float("nan")
        truth = truths[i] if truths[i] is not None else targets[i]
        records.append(
            captum_visualization.VisualizationDataRecord(
                word_attributions=scale_scores(raw),
                pred_prob=prob,
                pred_class=name(pred),
                true_class=name(truth),
                attr_class=name(targets[i]),
                attr_score=float(raw.sum()),
                raw_input_ids=list(tokens),
                convergence_score=deltas[i],
            )
        )
    return records


# --- several methods on one input ---------------------------------------------------------


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
        methods: names in :data:`captum_attcat.METHODS` (default: all, sorted).
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
    names = sorted(METHODS) if methods is None else list(methods)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise KeyError(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}")
    if not names:
        raise ValueError("`methods` is empty: name at least one method of captum_attcat.METHODS")
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
    for name in names:
        explainer = METHODS[name](model, **dict((init_kwargs or {}).get(name, {})))
        scores = explainer.attribute(
            input_ids, target=target, additional_forward_args=(attention_mask,),
            **dict((attribute_kwargs or {}).get(name, {})),
        )
        explanation.add(name, scores[0])
    return explanation


# --- HTML ---------------------------------------------------------------------------------


def signed_color(value: float) -> str:
    r"""CSS colour of a scaled score in [-1, 1]: green for positive, red for negative,
    white at 0, deeper with the magnitude (Captum's ``visualize_text`` convention).

    Example::

        >>> signed_color(1.0), signed_color(-1.0), signed_color(0.0)
        ('hsl(120, 75%, 50%)', 'hsl(0, 75%, 60%)', 'hsl(0, 0%, 100%)')
    """
    value = max(-1.0, min(1.0, float(value)))
    if value > 0:
        return f"hsl(120, 75%, {100 - round(50 * value)}%)"
    if value < 0:
        return f"hsl(0, 75%, {100 - round(40 * -value)}%)"
    return "hsl(0, 0%, 100%)"


def _sign(value: float) -> str:
    return "pos" if value > 0 else "neg" if value < 0 else "zero"


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table.explanation { border-collapse: collapse; margin-bottom: 1.5em; }
table.explanation td, table.explanation th { padding: 6px 10px; border-bottom: 1px solid #ddd;
  text-align: left; vertical-align: top; }
th.method { white-space: nowrap; }
span.tok { display: inline-block; padding: 2px 3px; margin: 1px; border-radius: 3px;
  line-height: 1.6; border-bottom: 3px solid transparent; }
span.tok.pos { border-bottom-color: #1a7f37; }
span.tok.neg { border-bottom-color: #c62828; }
span.legend { display: inline-block; width: 14px; height: 14px; border: 1px solid #999;
  vertical-align: middle; }
p.caption { color: #555; }
"""


def _explanation_table(explanation: TextExplanation) -> str:
    rows = []
    for method, values in explanation.scores.items():
        scaled = scale_scores(values).tolist()
        cells = []
        for token, raw, value in zip(explanation.tokens, values.tolist(), scaled):
            cells.append(
                f'<span class="tok {_sign(value)}" data-score="{value:.4f}" data-raw="{raw:.6g}" '
                f'style="background-color: {signed_color(value)}" title="{html.escape(token)}: {value:+.3f} '
                f'(raw {raw:+.4g})">{html.escape(token)}</span>'
            )
        rows.append(
            f'<tr class="method-row" data-method="{html.escape(method)}"><th class="method">'
            f"{html.escape(method)}</th><td>{' '.join(cells)}</td></tr>"
        )
    caption = []
    if explanation.text is not None:
        caption.append(f"<b>Text:</b> {html.escape(explanation.text)}")
    caption.append(f"<b>Explained class:</b> {html.escape(explanation.label(explanation.target))}")
    if explanation.predicted is not None:
        caption.append(f"<b>Predicted:</b> {html.escape(explanation.label(explanation.predicted))}")
    if explanation.probability is not None:
        caption.append(f"<b>p(explained class):</b> {explanation.probability:.3f}")
    return (
        f'<p class="caption">{" &middot; ".join(caption)}</p>'
        f'<table class="explanation"><tbody>{"".join(rows)}</tbody></table>'
    )


def explanation_html(
    explanations: TextExplanation | Sequence[TextExplanation],
    title: str = "Token attributions",
) -> str:
    r"""A standalone HTML page showing several methods side by side for each input.

    One row per method, one ``<span class="tok pos|neg|zero">`` per token coloured
    by :func:`signed_color` after scaling each method's scores to [-1, 1]; the
    sign is also a coloured underline, the signed values are in ``data-score``
    (scaled), ``data-raw`` and the tooltip. Needs no IPython or network.

    Args:
        explanations: one :class:`TextExplanation` or several.
        title: the page title.

    Returns:
        The HTML document as a string.

    Example::

        >>> page = explanation_html(explain_text(model, tokenizer, "a gorgeous , witty film"))
        >>> page.count('class="tok ')          # one per token and method
    """
    if isinstance(explanations, TextExplanation):
        explanations = [explanations]
    legend = " ".join(
        f'<span class="legend" style="background-color: {signed_color(v)}"></span> {label}'
        for v, label in ((-1.0, "lowers the explained score"), (0.0, "neutral"), (1.0, "raises it"))
    )
    body = "".join(_explanation_table(e) for e in explanations)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{legend}</p>"
        "<p class=\"caption\">Each method's scores are scaled by their largest magnitude.</p>"
        f"{body}</body></html>\n"
    )


def save_html(
    path: str | Path,
    explanations: TextExplanation | Sequence[TextExplanation],
    title: str = "Token attributions",
) -> Path:
    r"""Write :func:`explanation_html` to ``path`` (UTF-8) and return the path.

    Example::

        >>> save_html("explanation.html", explain_text(model, tokenizer, "a witty film"))
    """
    path = Path(path)
    path.write_text(explanation_html(explanations, title), encoding="utf-8")
    return path


# --- plots --------------------------------------------------------------------------------


def layer_heatmap(
    layer_scores: Tensor,
    tokens: Sequence[str],
    title: str | None = None,
    normalize: str = "row",
    cmap: str = "RdYlGn",
) -> "Figure":
    r"""Heatmap of per-block scores: one row per block plus a last row for their sum.

    Like Fig. 4 of the AttCAT paper: each row shows where block ``l``'s
    contribution to the explanation lies; the bottom row is the final
    explanation (the sum over blocks). Colours are signed (green positive, red
    negative, centred at 0).

    Args:
        layer_scores: ``(blocks, seq)`` scores of one example, e.g.
            ``AttCAT(model).attribute(ids, target=1, return_layer_scores=True)[0]``.
        tokens: the ``seq`` token labels of the x axis.
        title: the figure title.
        normalize: ``"row"`` scales every row by its own largest magnitude (so
            every block's pattern is visible), ``"global"`` scales the blocks by
            their common largest magnitude (and the sum by its own).
        cmap: a diverging matplotlib colour map.

    Returns:
        A matplotlib ``Figure`` (``fig.savefig("layers.png")`` writes the PNG).

    Example::

        >>> per_block = AttCAT(model).attribute(ids, target=1, return_layer_scores=True)
        >>> fig = layer_heatmap(per_block[0], tokenizer.convert_ids_to_tokens(ids[0]))
        >>> fig.savefig("attcat_layers.png", dpi=150)
    """
    from matplotlib.figure import Figure

    scores = torch.as_tensor(layer_scores).detach().to(torch.float32).cpu()
    if scores.dim() == 3 and scores.shape[0] == 1:
        scores = scores[0]
    if scores.dim() != 2:
        raise ValueError(f"expected per-block scores of shape (blocks, seq); got {tuple(scores.shape)}")
    if len(tokens) != scores.shape[1]:
        raise ValueError(f"{len(tokens)} tokens for scores over {scores.shape[1]} positions")
    if normalize not in ("row", "global"):
        raise ValueError(f"`normalize` must be 'row' or 'global'; got {normalize!r}")
    if not torch.isfinite(scores).all():
        raise ValueError("the scores contain NaN or inf values")
    blocks = scores.shape[0]
    total = scores.sum(0, keepdim=True)
    if normalize == "row":
        rows = scale_scores(scores)
    else:
        peak = scores.abs().max()
        rows = scores / peak if peak > 0 else scores
    grid = torch.cat([rows, scale_scores(total)]).numpy()

    width = max(4.0, 0.45 * len(tokens) + 1.6)
    fig = Figure(figsize=(width, 0.42 * (blocks + 1) + 1.4))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap=cmap, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.axhline(blocks - 0.5, color="black", linewidth=2)
    ax.set_yticks(range(blocks + 1), [f"block {i + 1}" for i in range(blocks)] + ["sum"])
    ax.set_xticks(range(len(tokens)), list(tokens), rotation=60, ha="right", fontsize=9)
    ax.set_title(title or "Per-block scores (each row scaled to [-1, 1])")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return fig


def plot_head_mask(
    mask: Any = None,
    positional: Any = None,
    syntactic: Any = None,
    title: str | None = None,
) -> "Figure":
    r"""Plot a (blocks x heads) head mask, positional and syntactic heads apart.

    Pass either ``mask`` (one boolean array, or an object with ``positional`` and
    ``syntactic`` boolean arrays, such as a Mask-LRP head mask) or the two arrays
    directly. Cells are coloured by kind: none, positional, syntactic, both.

    Args:
        mask: a ``(blocks, heads)`` boolean array / tensor, or an object with
            ``positional`` and ``syntactic`` attributes.
        positional: ``(blocks, heads)`` booleans, the positional heads.
        syntactic: ``(blocks, heads)`` booleans, the syntactic heads.
        title: the figure title.

    Returns:
        A matplotlib ``Figure``.

    Example::

        >>> import numpy as np
        >>> pos = np.zeros((6, 12), bool); pos[0, 3] = True
        >>> syn = np.zeros((6, 12), bool); syn[4, 7] = True
        >>> plot_head_mask(positional=pos, syntactic=syn).savefig("heads.png")
    """
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if mask is not None and (positional is not None or syntactic is not None):
        raise ValueError("pass either `mask` or `positional`/`syntactic`, not both")
    if mask is not None and hasattr(mask, "positional") and hasattr(mask, "syntactic"):
        positional, syntactic = mask.positional, mask.syntactic
        mask = None

    def as_bool(array: Any, name: str) -> Any:
        if isinstance(array, Tensor):
            array = array.detach().cpu().numpy()
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(f"`{name}` must be a (blocks, heads) array; got shape {array.shape}")
        return array.astype(bool)

    if mask is not None:
        kinds = as_bool(mask, "mask").astype(int) * 3
        labels = ["not selected", "", "", "selected"]
    else:
        if positional is None and syntactic is None:
            raise ValueError("pass a head mask, or `positional` and/or `syntactic` arrays")
        pos = as_bool(positional, "positional") if positional is not None else None
        syn = as_bool(syntactic, "syntactic") if syntactic is not None else None
        if pos is None:
            pos = np.zeros_like(syn)
        if syn is None:
            syn = np.zeros_like(pos)
        if pos.shape != syn.shape:
            raise ValueError(f"`positional` {pos.shape} and `syntactic` {syn.shape} differ in shape")
        kinds = pos.astype(int) + 2 * syn.astype(int)
        labels = ["neither", "positional", "syntactic", "both"]
    colors = ["#f2f2f2", "#4c72b0", "#dd8452", "#8c4fa0"]
    blocks, heads = kinds.shape
    fig = Figure(figsize=(max(3.5, 0.42 * heads + 1.8), max(2.5, 0.42 * blocks + 1.3)))
    ax = fig.add_subplot()
    ax.imshow(kinds, cmap=ListedColormap(colors), vmin=-0.5, vmax=3.5, interpolation="nearest")
    ax.set_xticks(range(heads), [str(h + 1) for h in range(heads)])
    ax.set_yticks(range(blocks), [str(b + 1) for b in range(blocks)])
    ax.set_xticks(np.arange(-0.5, heads), minor=True)
    ax.set_yticks(np.arange(-0.5, blocks), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("head")
    ax.set_ylabel("block")
    ax.set_title(title or "Important heads")
    present = sorted(set(kinds.flatten().tolist()) | ({0, 3} if mask is not None else {0, 1, 2, 3}))
    ax.legend(
        handles=[Patch(facecolor=colors[k], edgecolor="#999", label=labels[k]) for k in present if labels[k]],
        loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
    )
    fig.tight_layout()
    return fig
