"""Evaluation suites: perplexity (and, later, zero-shot)."""
