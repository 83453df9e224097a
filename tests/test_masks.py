"""Magnitude-pruning masks (`sparsekeras._masks`): exact counts, structure, global ranking,
monotonicity under `previous_mask`, conv kernels, and argument checks."""
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


from sparsekeras import _masks as masks
magnitude_mask = masks.magnitude_mask
global_magnitude_masks = masks.global_magnitude_masks
sparsity_of = masks.sparsity_of

GRANULARITIES = ["unstructured", "block", "n:m", "channel"]


def _weights(shape, seed=0, dtype=np.float32, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def _n_pruned(mask):
    return int(mask.size - np.count_nonzero(mask))


def _assert_kept_are_largest(w, mask):
    a = np.abs(np.asarray(w, np.float64))
    if mask.all() or not mask.any():
        return
    assert a[mask].min() >= a[~mask].max()


def _assert_block_constant(mask, block_shape):
    m = mask.reshape(-1, mask.shape[-1])
    r, c = block_shape
    for i in range(0, m.shape[0], r):
        for j in range(0, m.shape[1], c):
            block = m[i:i + r, j:j + c]
            assert block.all() or not block.any(), (i, j)


def _assert_n_m(mask, n, m, exact=True):
    """Every group of m consecutive inputs (axis -2), per output and spatial position."""
    k = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
    cin = k.shape[1]
    for g in range(0, cin, m):
        kept = k[:, g:g + m, :].sum(axis=1)
        want = min(n, min(m, cin - g))
        if exact:
            assert (kept == want).all(), g
        else:
            assert (kept <= want).all(), g


# ---- unstructured -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 13), (1, 1), (1, 9), (13, 1), (2, 3, 5), (3, 3, 8, 16)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unstructured_exact_count_and_largest_kept(shape, sparsity, dtype):
    w = _weights(shape, dtype=dtype)
    mask = magnitude_mask(w, sparsity)
    assert mask.dtype == bool and mask.shape == w.shape
    assert _n_pruned(mask) == round(sparsity * w.size)
    _assert_kept_are_largest(w, mask)


def test_unstructured_zero_sparsity_keeps_everything():
    w = _weights((7, 13))
    w[0, 0] = 0.0
    assert magnitude_mask(w, 0.0).all()


def test_unstructured_hand_example():
    w = np.array([[0.1, -2.0], [0.5, 0.05]])
    np.testing.assert_array_equal(magnitude_mask(w, 0.5), [[False, True], [True, False]])
    np.testing.assert_array_equal(magnitude_mask(w, 0.75), [[False, True], [False, False]])


def test_unstructured_ties_are_deterministic_earlier_kept():
    w = np.ones((4, 5), np.float32)
    mask = magnitude_mask(w, 0.3)
    expected = np.zeros(20, bool)
    expected[:14] = True
    np.testing.assert_array_equal(mask.ravel(), expected)
    np.testing.assert_array_equal(magnitude_mask(w.copy(), 0.3), mask)


def test_unstructured_many_zeros():
    w = _weights((50, 40))
    w[:, ::2] = 0.0   # half the weights exactly zero: zeros rank last, earlier zeros kept
    for sparsity in (0.2, 0.5, 0.8):
        mask = magnitude_mask(w, sparsity)
        assert _n_pruned(mask) == round(sparsity * w.size)
        _assert_kept_are_largest(w, mask)
    mask = magnitude_mask(w, 0.2)
    zero_kept = np.flatnonzero((w == 0).ravel() & mask.ravel())
    zero_all = np.flatnonzero((w == 0).ravel())
    np.testing.assert_array_equal(zero_kept, zero_all[:zero_kept.size])


def test_nan_weights_are_kept():
    w = _weights((6, 6))
    w[2, 3] = np.nan
    w[5, 0] = np.nan
    mask = magnitude_mask(w, 0.9)
    assert mask[2, 3] and mask[5, 0]
    assert _n_pruned(mask) == round(0.9 * 36)
    for granularity in ("block", "channel"):
        assert magnitude_mask(w, 0.5, granularity, block_shape=(2, 2))[2, 3]
    assert magnitude_mask(w, 0.0, "n:m")[2, 3]


def test_integer_weights():
    w = np.arange(-6, 6).reshape(3, 4)
    mask = magnitude_mask(w, 0.5)
    assert _n_pruned(mask) == 6
    _assert_kept_are_largest(w, mask)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 30), n=st.integers(1, 30), sparsity=st.floats(0.0, 1.0),
       seed=st.integers(0, 2 ** 31), levels=st.integers(1, 5))
def test_unstructured_property(k, n, sparsity, seed, levels):
    # Few distinct magnitudes force ties; the count must still be exact.
    w = np.random.default_rng(seed).integers(-levels, levels + 1, (k, n)).astype(np.float32)
    mask = magnitude_mask(w, sparsity)
    assert _n_pruned(mask) == round(sparsity * w.size)
    _assert_kept_are_largest(w, mask)


# ---- block --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, block_shape", [
    ((32, 48), (4, 4)), ((33, 50), (4, 8)), ((7, 13), (2, 3)), ((16, 16), (1, 16)),
    ((16, 16), (16, 1)), ((5, 5), (8, 8)), ((64, 64), (1, 1)),
])
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_block_constant_and_fraction(shape, block_shape, sparsity):
    w = _weights(shape)
    mask = magnitude_mask(w, sparsity, "block", block_shape=block_shape)
    assert mask.shape == w.shape and mask.dtype == bool
    _assert_block_constant(mask, block_shape)
    # The pruned count is the cumulative block size closest to the target: off by at most half
    # of the largest block.
    r, c = block_shape
    assert abs(_n_pruned(mask) - sparsity * w.size) <= r * c / 2 + 1e-9


def test_block_prunes_lowest_mean_blocks():
    w = np.ones((4, 4), np.float32)
    w[0:2, 2:4] = 0.1   # lowest mean
    w[2:4, 0:2] = 0.5
    w[2, 2] = 100.0     # one large weight, but the 2x2 block mean (25.75) is the highest anyway
    mask = magnitude_mask(w, 0.25, "block", block_shape=(2, 2))
    expected = np.ones((4, 4), bool)
    expected[0:2, 2:4] = False
    np.testing.assert_array_equal(mask, expected)
    mask = magnitude_mask(w, 0.5, "block", block_shape=(2, 2))
    expected[2:4, 0:2] = False
    np.testing.assert_array_equal(mask, expected)


def test_block_edge_blocks_scored_by_mean_of_their_entries():
    # 3x3 with 2x2 blocks: the edge blocks are partial; mean, not sum, decides.
    w = np.array([[5.0, 5.0, 0.1],
                  [5.0, 5.0, 0.1],
                  [4.0, 4.0, 3.0]])
    mask = magnitude_mask(w, 2 / 9, "block", block_shape=(2, 2))
    expected = np.ones((3, 3), bool)
    expected[0:2, 2] = False   # mean 0.1, 2 entries
    np.testing.assert_array_equal(mask, expected)


def test_block_unit_blocks_match_unstructured_count():
    w = _weights((9, 11))
    for sparsity in (0.1, 0.37, 0.8):
        mask = magnitude_mask(w, sparsity, "block", block_shape=(1, 1))
        assert _n_pruned(mask) == round(sparsity * w.size)
        _assert_kept_are_largest(w, mask)


# ---- n:m ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n_m", [(2, 4), (1, 4), (4, 8), (1, 2), (3, 16)])
@pytest.mark.parametrize("shape", [(16, 8), (64, 3), (10, 5), (3, 7), (1, 4)])
def test_n_m_groups_along_input_axis(n_m, shape):
    n, m = n_m
    w = _weights(shape)
    mask = magnitude_mask(w, 0.7, "n:m", n_m=n_m)   # sparsity is ignored
    _assert_n_m(mask, n, m)
    # The kept entries of each group are its n largest.
    for g in range(0, shape[0], m):
        block, kept = np.abs(w[g:g + m]), mask[g:g + m]
        for j in range(shape[1]):
            if (~kept[:, j]).any():
                assert block[kept[:, j], j].min() >= block[~kept[:, j], j].max()
    if shape[0] % m == 0:
        assert sparsity_of(mask) == pytest.approx(1 - n / m)


def test_n_m_is_along_inputs_not_outputs():
    # Column 0 holds one large weight per 4 inputs; in 1:4 every column keeps exactly that one.
    w = np.ones((8, 3), np.float32)
    w[1, 0] = w[6, 0] = 10.0
    w[0, 1] = w[5, 1] = 10.0
    mask = magnitude_mask(w, 0.0, "n:m", n_m=(1, 4))
    assert mask[1, 0] and mask[6, 0] and mask[0, 1] and mask[5, 1]
    np.testing.assert_array_equal(mask.sum(axis=0), [2, 2, 2])
    # Ties (column 2, all ones) keep the earlier input.
    assert mask[0, 2] and mask[4, 2]


def test_n_m_trailing_partial_group():
    w = _weights((10, 4))
    mask = magnitude_mask(w, 0.5, "n:m", n_m=(3, 4))
    np.testing.assert_array_equal(mask[8:].sum(axis=0), [2, 2, 2, 2])   # group of 2 keeps 2
    mask = magnitude_mask(w, 0.5, "n:m", n_m=(1, 4))
    np.testing.assert_array_equal(mask[8:].sum(axis=0), [1, 1, 1, 1])


@pytest.mark.parametrize("n_m", [(2, 4), (4, 16)])
def test_n_m_large_uses_same_rule(n_m):
    # m <= 8 and m > 8 take different code paths; both keep the n largest, earlier on ties.
    w = np.random.default_rng(3).integers(0, 3, (48, 5)).astype(np.float64)
    mask = magnitude_mask(w, 0.0, "n:m", n_m=n_m)
    n, m = n_m
    _assert_n_m(mask, n, m)
    for g in range(0, 48, m):
        for j in range(5):
            col = np.abs(w[g:g + m, j])
            order = np.argsort(-col, kind="stable")[:n]
            expected = np.zeros(m, bool)
            expected[order] = True
            np.testing.assert_array_equal(mask[g:g + m, j], expected)


# ---- channel ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 13), (20, 4), (3, 3, 8, 16), (5, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.99])
def test_channel_prunes_whole_columns(shape, sparsity):
    w = _weights(shape)
    mask = magnitude_mask(w, sparsity, "channel")
    cols = mask.reshape(-1, shape[-1])
    assert ((cols.all(axis=0)) | (~cols.any(axis=0))).all()
    n_out = shape[-1]
    assert int((~cols.any(axis=0)).sum()) == round(sparsity * n_out)
    norms = np.linalg.norm(w.reshape(-1, n_out).astype(np.float64), axis=0)
    kept = cols.all(axis=0)
    if kept.any() and (~kept).any():
        assert norms[kept].min() >= norms[~kept].max()


def test_channel_uses_l2_norm_not_max():
    w = np.array([[3.0, 2.0, 0.1],
                  [0.0, 2.0, 0.1],
                  [0.0, 2.0, 0.1]])   # norms 3.0, 3.46, 0.17
    mask = magnitude_mask(w, 2 / 3, "channel")
    np.testing.assert_array_equal(mask.all(axis=0), [False, True, False])


# ---- conv kernels -------------------------------------------------------------------------

@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_conv_kernel_all_granularities(granularity):
    w = _weights((3, 3, 8, 16), seed=5)
    mask = magnitude_mask(w, 0.5, granularity, block_shape=(4, 4), n_m=(2, 4))
    assert mask.shape == w.shape and mask.dtype == bool
    if granularity == "unstructured":
        assert _n_pruned(mask) == round(0.5 * w.size)
        _assert_kept_are_largest(w, mask)
    elif granularity == "block":
        _assert_block_constant(mask, (4, 4))
        assert abs(_n_pruned(mask) - 0.5 * w.size) <= 8
    elif granularity == "n:m":
        _assert_n_m(mask, 2, 4)
        assert sparsity_of(mask) == 0.5
        # Groups run along in-channels within one spatial position (not across kh, kw).
        for i in range(3):
            for j in range(3):
                np.testing.assert_array_equal(
                    mask[i, j], magnitude_mask(w[i, j], 0.0, "n:m", n_m=(2, 4)))
    else:
        filters = mask.reshape(-1, 16)
        assert int((~filters.any(axis=0)).sum()) == 8
        assert ((filters.all(axis=0)) | (~filters.any(axis=0))).all()
    prev = mask
    again = magnitude_mask(w, 0.75, granularity, block_shape=(4, 4), previous_mask=prev)
    assert not (again & ~prev).any()


def test_conv_kernel_block_is_over_the_2d_view():
    w = _weights((3, 3, 8, 16), seed=6)
    mask = magnitude_mask(w, 0.5, "block", block_shape=(8, 4))
    np.testing.assert_array_equal(
        mask.reshape(72, 16), magnitude_mask(w.reshape(72, 16), 0.5, "block", block_shape=(8, 4)))


# ---- previous_mask: masks only shrink -----------------------------------------------------

@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_previous_mask_monotone_gradual(granularity):
    rng = np.random.default_rng(7)
    w = _weights((24, 32), seed=7)
    prev = np.ones(w.shape, bool)
    for sparsity in (0.1, 0.3, 0.5, 0.7, 0.9):
        # Weights move between pruning steps (training); pruned ones are zero.
        w = (w + 0.5 * rng.standard_normal(w.shape).astype(np.float32)) * prev
        mask = magnitude_mask(w, sparsity, granularity, block_shape=(4, 4), n_m=(2, 4),
                              previous_mask=prev)
        assert not (mask & ~prev).any()
        if granularity == "unstructured":
            assert _n_pruned(mask) == round(sparsity * w.size)
        prev = mask


def test_previous_mask_pruned_entries_stay_pruned_even_if_large():
    w = _weights((8, 8))
    prev = np.ones(w.shape, bool)
    prev[0, 0] = False
    w[0, 0] = 1000.0
    mask = magnitude_mask(w, 0.25, previous_mask=prev)
    assert not mask[0, 0]
    assert _n_pruned(mask) == 16
    live = np.sort(np.abs(w)[prev])   # 63 live entries, of which the 48 largest are kept
    assert np.abs(w)[mask].min() >= live[63 - 48]


def test_previous_mask_sparser_than_asked_is_returned_unchanged():
    w = _weights((10, 10))
    prev = magnitude_mask(w, 0.6)
    mask = magnitude_mask(w * 2 + 1, 0.3, previous_mask=prev)
    np.testing.assert_array_equal(mask, prev)


def test_previous_mask_as_float_zeros_and_ones():
    w = _weights((6, 7))
    prev = magnitude_mask(w, 0.5)
    a = magnitude_mask(w, 0.7, previous_mask=prev)
    b = magnitude_mask(w, 0.7, previous_mask=prev.astype(np.float32))
    np.testing.assert_array_equal(a, b)


def test_previous_mask_block_with_pruned_entry_is_pruned_whole():
    w = np.ones((4, 4), np.float32)
    prev = np.ones((4, 4), bool)
    prev[3, 3] = False
    mask = magnitude_mask(w, 0.0, "block", block_shape=(2, 2), previous_mask=prev)
    expected = np.ones((4, 4), bool)
    expected[2:4, 2:4] = False
    np.testing.assert_array_equal(mask, expected)
    _assert_block_constant(mask, (2, 2))


def test_previous_mask_n_m_keeps_at_most_n():
    w = _weights((16, 8))
    prev = magnitude_mask(w, 0.0, "n:m", n_m=(2, 4))
    w2 = _weights((16, 8), seed=9)
    mask = magnitude_mask(w2, 0.0, "n:m", n_m=(2, 4), previous_mask=prev)
    assert not (mask & ~prev).any()
    _assert_n_m(mask, 2, 4, exact=True)   # each group had 2 live entries, so keeps both


# ---- global masks -------------------------------------------------------------------------

def test_global_unstructured_total_fraction_and_per_layer_differs():
    ws = [_weights((32, 64), seed=1, scale=0.1), _weights((64, 16), seed=2, scale=1.0),
          _weights((3, 3, 4, 8), seed=3, scale=10.0)]
    total = sum(w.size for w in ws)
    ms = global_magnitude_masks(ws, 0.6)
    assert [m.shape for m in ms] == [w.shape for w in ws]
    assert sum(_n_pruned(m) for m in ms) == round(0.6 * total)
    per_layer = [sparsity_of(m) for m in ms]
    assert per_layer[0] > per_layer[1] > per_layer[2]
    kept = np.concatenate([np.abs(w)[m] for w, m in zip(ws, ms)])
    pruned = np.concatenate([np.abs(w)[~m] for w, m in zip(ws, ms)])
    assert kept.min() >= pruned.max()


def test_global_single_layer_matches_per_layer():
    w = _weights((17, 23))
    for granularity in GRANULARITIES:
        (g,) = global_magnitude_masks([w], 0.4, granularity, block_shape=(2, 2))
        if granularity in ("unstructured", "block", "n:m"):
            np.testing.assert_array_equal(
                g, magnitude_mask(w, 0.4, granularity, block_shape=(2, 2)))
        else:
            np.testing.assert_array_equal(g, magnitude_mask(w, 0.4, "channel"))


def test_global_block_ranks_across_layers():
    ws = [_weights((16, 16), seed=1, scale=0.01), _weights((16, 16), seed=2, scale=1.0)]
    ms = global_magnitude_masks(ws, 0.5, "block", block_shape=(4, 4))
    for m in ms:
        _assert_block_constant(m, (4, 4))
    assert sum(_n_pruned(m) for m in ms) == 256
    assert not ms[0].any() and ms[1].all()


def test_global_channel_ranks_across_layers():
    ws = [_weights((10, 6), seed=1, scale=0.01), _weights((40, 6), seed=2, scale=1.0)]
    ms = global_magnitude_masks(ws, 0.1, "channel")
    for m in ms:
        assert ((m.all(axis=0)) | (~m.any(axis=0))).all()
    assert _n_pruned(ms[1]) == 0
    assert _n_pruned(ms[0]) == 30   # 3 of the small columns (10 entries each): 30 / 300 = 0.1


def test_global_n_m_is_per_layer():
    ws = [_weights((8, 4), seed=1, scale=0.01), _weights((16, 3), seed=2)]
    ms = global_magnitude_masks(ws, 0.9, "n:m", n_m=(1, 4))
    for w, m in zip(ws, ms):
        np.testing.assert_array_equal(m, magnitude_mask(w, 0.9, "n:m", n_m=(1, 4)))


def test_global_previous_mask_monotone():
    ws = [_weights((20, 30), seed=1, scale=0.5), _weights((30, 10), seed=2)]
    prev = [np.ones(w.shape, bool) for w in ws]
    total = sum(w.size for w in ws)
    for sparsity in (0.2, 0.5, 0.8):
        ms = global_magnitude_masks(ws, sparsity, previous_mask=prev)
        assert all(not (m & ~p).any() for m, p in zip(ms, prev))
        assert sum(_n_pruned(m) for m in ms) == round(sparsity * total)
        prev = ms
    ms = global_magnitude_masks(ws, 0.9, "block", block_shape=(5, 5), previous_mask=[prev[0], None])
    assert not (ms[0] & ~prev[0]).any()


def test_global_empty_list():
    assert global_magnitude_masks([], 0.5) == []


# ---- sparsity_of --------------------------------------------------------------------------

def test_sparsity_of():
    assert sparsity_of(np.array([[True, False], [False, False]])) == 0.75
    assert sparsity_of(np.ones((3, 3), bool)) == 0.0
    assert sparsity_of(np.zeros((0, 3), bool)) == 0.0
    assert sparsity_of(np.array([1.0, 0.0])) == 0.5
    assert type(sparsity_of(np.ones(2, bool))) is float


# ---- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=1.5), "Received: sparsity=1.5"),
    (dict(sparsity=-0.1), "Received: sparsity=-0.1"),
    (dict(sparsity=float("nan")), "Received: sparsity=nan"),
    (dict(sparsity="0.5"), "Received: sparsity='0.5'"),
    (dict(sparsity=0.5, granularity="row"), "Received: granularity='row'"),
    (dict(sparsity=0.5, granularity="n:m", n_m=(4, 4)), "Received: n_m=(4, 4)"),
    (dict(sparsity=0.5, granularity="n:m", n_m=(5, 4)), "Received: n_m=(5, 4)"),
    (dict(sparsity=0.5, granularity="n:m", n_m=(0, 4)), "Received: n_m=(0, 4)"),
    (dict(sparsity=0.5, granularity="n:m", n_m=(2,)), "Received: n_m=(2,)"),
    (dict(sparsity=0.5, granularity="n:m", n_m=(2.0, 4)), "Received: n_m=(2.0, 4)"),
    (dict(sparsity=0.5, granularity="block", block_shape=(0, 2)), "Received: block_shape=(0, 2)"),
    (dict(sparsity=0.5, granularity="block", block_shape=4), "Received: block_shape=4"),
    (dict(sparsity=0.5, previous_mask=np.ones((3, 4), bool)), "previous_mask.shape=(3, 4)"),
])
def test_magnitude_mask_bad_args(kwargs, message):
    with pytest.raises(ValueError) as info:
        magnitude_mask(_weights((4, 4)), **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("weights, message", [
    (np.ones(5), "weights.shape=(5,)"),
    (np.float32(1.0), "weights.shape=()"),
    (np.ones((2, 2), bool), "weights.dtype=bool"),
    (np.ones((2, 2), complex), "weights.dtype=complex128"),
])
def test_magnitude_mask_bad_weights(weights, message):
    with pytest.raises(ValueError) as info:
        magnitude_mask(weights, 0.5)
    assert message in str(info.value)


def test_global_bad_args():
    with pytest.raises(ValueError, match="weights_list"):
        global_magnitude_masks(np.ones((3, 3)), 0.5)
    with pytest.raises(ValueError, match=r"weights_list\[1\]\.shape=\(3,\)"):
        global_magnitude_masks([np.ones((3, 3)), np.ones(3)], 0.5)
    with pytest.raises(ValueError, match="len\\(previous_mask\\)=1"):
        global_magnitude_masks([np.ones((3, 3))] * 2, 0.5, previous_mask=[None])
    with pytest.raises(ValueError, match=r"previous_mask\[0\]\.shape"):
        global_magnitude_masks([np.ones((3, 3))], 0.5, previous_mask=[np.ones((2, 2))])
    with pytest.raises(ValueError, match="Received: sparsity=2"):
        global_magnitude_masks([np.ones((3, 3))], 2)


def test_empty_kernel():
    for granularity in GRANULARITIES:
        mask = magnitude_mask(np.zeros((0, 5), np.float32), 0.5, granularity)
        assert mask.shape == (0, 5) and mask.dtype == bool


def test_global_with_empty_kernels():
    ws = [np.zeros((0, 4), np.float32), _weights((5, 4)), np.zeros((3, 0))]
    for granularity in GRANULARITIES:
        ms = global_magnitude_masks(ws, 0.5, granularity, block_shape=(2, 2))
        assert [m.shape for m in ms] == [w.shape for w in ws]
        assert abs(_n_pruned(ms[1]) - 10) <= 2


def test_inputs_not_modified():
    w = _weights((12, 8))
    w[1, 1] = np.nan
    before = w.copy()
    prev = np.ones(w.shape, bool)
    prev[0] = False
    prev_before = prev.copy()
    for granularity in GRANULARITIES:
        magnitude_mask(w, 0.5, granularity, block_shape=(2, 2), previous_mask=prev)
        global_magnitude_masks([w], 0.5, granularity, block_shape=(2, 2), previous_mask=[prev])
    np.testing.assert_array_equal(w, before)
    np.testing.assert_array_equal(prev, prev_before)


# ---- size ---------------------------------------------------------------------------------

def test_large_unstructured_is_fast_and_exact():
    w = _weights((4096, 4096), seed=11)
    start = time.perf_counter()
    mask = magnitude_mask(w, 0.9)
    elapsed = time.perf_counter() - start
    assert _n_pruned(mask) == round(0.9 * w.size)
    threshold = np.partition(np.abs(w).ravel(), w.size - mask.sum())[w.size - mask.sum()]
    assert np.abs(w)[mask].min() >= threshold
    print(f"4096x4096 unstructured mask: {elapsed:.3f} s")  # target < 0.5 s; not asserted
