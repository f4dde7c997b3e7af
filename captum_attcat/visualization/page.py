"""A standalone HTML page of several methods' scores, one coloured element per token.

Example::

    >>> save_html("explanation.html", explain_text(model, tokenizer, "a witty film"))
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from .records import scale_scores
from .text import TextExplanation



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
