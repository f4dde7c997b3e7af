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

from .page import explanation_html, save_html, signed_color
from .plots import layer_heatmap, plot_head_mask
from .records import merge_subwords, scale_scores, visualization_records
from .text import TextExplanation, explain_text

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

