"""Renderers: the analyses' tables as markdown, JSON and CSV."""
