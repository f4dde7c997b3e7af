"""Model adapters: where a model's blocks and attention are."""

from .adapters import TransformerAdapter, logits_of

__all__ = ["TransformerAdapter", "logits_of"]
