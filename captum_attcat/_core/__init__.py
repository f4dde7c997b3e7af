"""Explanation methods, one module per family."""
