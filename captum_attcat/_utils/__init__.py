"""Capture, validation and state utilities shared by the methods."""
