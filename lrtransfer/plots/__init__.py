"""Figures, one module per family."""
