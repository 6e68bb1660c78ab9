"""Hydra launchers shipped with sparsebench (Hydra finds plugins only in the ``hydra_plugins`` package)."""
