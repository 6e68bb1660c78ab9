"""Model loading and family adapters."""
