"""Rebuild the papers' tables and figures from result documents (the local store or a W&B project)."""
