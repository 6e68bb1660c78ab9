"""sparsebench: post-training pruning of large language models, done once, correctly and comparably."""

__version__ = "0.1.0"
