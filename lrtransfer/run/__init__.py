"""One cell's run: its keys (spec), the training loop, batched cells, what it measures along the
way (diagnostics, FLOPs) and what the result is a function of (provenance)."""
