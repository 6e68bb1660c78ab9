import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsebench.masks import NMPattern, SparsityTarget, parse_pattern, prune_count, select_mask, select_n_m, select_per_layer, select_per_row

shapes = st.tuples(st.integers(1, 12), st.integers(1, 24))
ratios = st.floats(0.0, 0.99)


def _scores(rows, cols, seed):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, ratio=ratios, seed=st.integers(0, 1000))
def test_per_row_prunes_exactly_floor_and_the_lowest(shape, ratio, seed):
    scores = _scores(*shape, seed)
    mask = select_per_row(scores, ratio)
    k = prune_count(shape[1], ratio)
    assert (mask.sum(1) == k).all()
    for row in range(shape[0]):
        if 0 < k < shape[1]:
            assert scores[row][mask[row]].max() <= scores[row][~mask[row]].min()


@settings(max_examples=60, deadline=None)
@given(shape=shapes, ratio=ratios, seed=st.integers(0, 1000))
def test_per_layer_prunes_exactly_floor_and_the_lowest(shape, ratio, seed):
    scores = _scores(*shape, seed)
    mask = select_per_layer(scores, ratio)
    k = prune_count(scores.numel(), ratio)
    assert int(mask.sum()) == k
    if 0 < k < scores.numel():
        assert scores[mask].max() <= scores[~mask].min()


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 8), groups=st.integers(1, 6), nm=st.sampled_from([(2, 4), (4, 8), (1, 4)]), seed=st.integers(0, 1000))
def test_n_m_prunes_n_lowest_of_every_group(rows, groups, nm, seed):
    pattern = NMPattern(*nm)
    scores = _scores(rows, groups * pattern.m, seed)
    mask = select_n_m(scores, pattern).view(rows, groups, pattern.m)
    assert (mask.sum(-1) == pattern.n).all()
    grouped = scores.view(rows, groups, pattern.m)
    assert (grouped.masked_fill(~mask, -1e9).amax(-1) <= grouped.masked_fill(mask, 1e9).amin(-1)).all()


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 8), groups=st.integers(1, 6), nm=st.sampled_from([(2, 4), (4, 8), (1, 4), (3, 4)]),
       levels=st.sampled_from([0, 2, 3]), seed=st.integers(0, 1000))
def test_n_m_by_ranks_is_the_stable_sort_mask_ties_included(rows, groups, nm, levels, seed):
    """The GPU path (ranks) and the CPU path (stable sort) choose the same weights, also among ties."""
    from sparsebench.masks import _n_m_by_ranks, _n_m_by_sort

    pattern = NMPattern(*nm)
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (rows, groups, pattern.m), generator=generator).float() if levels else _scores(rows, groups * pattern.m, seed).view(rows, groups, pattern.m)
    assert torch.equal(_n_m_by_ranks(scores, pattern), _n_m_by_sort(scores, pattern))


def test_per_row_ratios_tensor():
    scores = _scores(3, 10, 0)
    mask = select_mask(scores, SparsityTarget(torch.tensor([0.1, 0.5, 0.9])))
    assert mask.sum(1).tolist() == [1, 5, 9]


def test_floating_point_products_round_to_the_intended_count():
    assert prune_count(100, 0.29) == 29  # 0.29 * 100 = 28.999999999999996
    assert prune_count(4096, 0.5) == 2048


def test_parse_pattern():
    assert parse_pattern("unstructured") is None
    assert parse_pattern("2:4") == NMPattern(2, 4)
    for bad in ("4:2", "2:2", "a:b", "2-4", "0:4"):
        try:
            parse_pattern(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")


def test_ties_are_broken_by_position():
    mask = select_per_row(torch.zeros(1, 6), 0.5)
    assert mask.tolist() == [[True, True, True, False, False, False]]
