"""Helpers shared by the tests and the benchmarks, never imported by the library itself.

- ``tiny_models``: tiny random models of every supported family and offline-trained tokenizers.
- ``reference_impls``: slow, line-by-line transcriptions of the reference algorithms (Wanda, RIA,
  SparseGPT's ``fasterprune``) that the fast implementations are checked against.
- ``compiled_ops``: a kernel module's product under ``torch.compile`` against its eager result.
- ``compose``: the configuration the CLI would compose, and where the local corpora live.

They need the ``dev`` extra (``tokenizers``); benchmarks run from the repository root as
``python benchmarks/NAME.py`` with the package installed.
"""
