"""Text corpora for calibration and perplexity, from the hub or local files."""
