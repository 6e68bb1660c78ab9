"""The statistics forward: it stops once every input group is observed, and its Gram matrices are the full products."""

import pytest
import torch

from sparsebench.blockwalk import capture_block_inputs
from sparsebench.models.adapters import adapter_for
from sparsebench.prune import collect_block_stats
from sparsebench.stats import HESSIAN, INPUT_SUMS, LAST_TOKEN_INPUTS, SEQUENCE_VARIANCES, add_symmetric_gram, symmetric_gram_tiles
from sparsebench.testing.tiny_models import TINY_CONFIGS, tiny_model

ALL_STATISTICS = frozenset({HESSIAN, INPUT_SUMS, LAST_TOKEN_INPUTS, SEQUENCE_VARIANCES})


@pytest.mark.parametrize("tiles", [1, 2, 3, 7])
def test_symmetric_gram_equals_the_full_product_and_stays_symmetric(tiles):
    g = torch.Generator().manual_seed(0)
    first, second = torch.randn(50, 100, generator=g, dtype=torch.float64), torch.randn(30, 100, generator=g, dtype=torch.float64)
    total = torch.zeros(100, 100, dtype=torch.float64)
    add_symmetric_gram(total, first, tiles, torch.mm)
    add_symmetric_gram(total, second, tiles, torch.mm)
    assert torch.allclose(total, first.T @ first + second.T @ second, rtol=0, atol=1e-11)
    width = -(-100 // tiles)
    for start in range(width, 100, width):  # the tiles below the diagonal are those above it, transposed
        assert torch.equal(total[start:start + width, :start], total[:start, start:start + width].T)


def test_layers_from_2048_features_use_four_tiles():
    assert [symmetric_gram_tiles(n) for n in (64, 2047, 2048, 11008)] == [1, 1, 4, 4]


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_stopping_after_the_last_input_group_gives_the_full_forwards_statistics(family):
    model = tiny_model(family)
    adapter = adapter_for("auto", model.config.model_type)
    ids = torch.randint(0, 300, (5, 40), generator=torch.Generator().manual_seed(0))
    block = adapter.get_blocks(model)[0]
    completed = {name: 0 for name in adapter.linear_names}
    handles = [
        block.get_submodule(name).register_forward_hook(lambda module, args, output, name=name: completed.__setitem__(name, completed[name] + 1))
        for name in adapter.linear_names
    ]
    try:
        inputs = capture_block_inputs(model, adapter, ids, "cpu", 2)
        hidden = inputs.hidden.clone()
        early = collect_block_stats(block, adapter, inputs, ALL_STATISTICS, 2)
        assert torch.equal(inputs.hidden, hidden)  # no outputs without propagate
        skipped = [name for name, count in completed.items() if count == 0]
        completed.update({name: 0 for name in completed})
        full = collect_block_stats(block, adapter, inputs, ALL_STATISTICS, 2, propagate=True)
    finally:
        for handle in handles:
            handle.remove()
    assert skipped, "the early-stopped forward computed every linear"
    assert all(count == 3 for count in completed.values())  # the full forward: three batches through every linear
    assert early.keys() == full.keys()
    for first in early:
        assert (early[first].num_tokens, early[first].num_sequences) == (full[first].num_tokens, full[first].num_sequences) == (200, 5)
        for key in ALL_STATISTICS:
            assert torch.equal(early[first].sums[key], full[first].sums[key]), (first, key)
