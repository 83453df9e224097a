"""Magnitude-pruning masks: all the mask maths of sparsekeras, in NumPy.

Kernels are laid out as Keras stores them: a Dense kernel is `(input_dim, units)`, a Conv2D
kernel `(kh, kw, in_channels, filters)`. For any kernel with ndim >= 2 the last axis is the output
axis and the second-to-last the input-channel axis; the structured granularities work on the 2-D
view `(prod(shape[:-1]), shape[-1])` (block, channel) or on the input-channel axis within each
spatial position (n:m).

A mask is a boolean array of the kernel's shape, True = keep. Conventions shared by every
function here:

- Magnitude is `|w|`; a NaN weight counts as the largest magnitude, so it is kept (pruning must
  not hide a diverged weight by zeroing it, and NaN would otherwise make the ranking undefined).
- Ties are broken deterministically: of equal magnitudes, the earlier entry (C order; for global
  masks, earlier layer first) is kept.
- With `previous_mask`, entries already pruned rank as magnitude -inf and stay pruned, so the new
  mask is a subset of the previous one. Gradual pruning relies on this. If the previous mask is
  already sparser than asked, the result is the previous mask (sparsity never decreases). For
  block and channel granularity a block/column holding any previously pruned entry is pruned
  whole, which keeps the mask constant over blocks/columns.
"""
import numbers

import numpy as np

__all__ = ["GRANULARITIES", "magnitude_mask", "global_magnitude_masks", "sparsity_of"]

GRANULARITIES = ("unstructured", "block", "n:m", "channel")


# ---- validation ---------------------------------------------------------------------------

def _check_weights(weights, name="weights"):
    w = np.asarray(weights)
    if w.dtype == bool or not (np.issubdtype(w.dtype, np.floating)
                               or np.issubdtype(w.dtype, np.integer)):
        raise ValueError(f"`{name}` must be a real floating-point (or integer) array. "
                         f"Received: {name}.dtype={w.dtype}")
    if w.ndim < 2:
        raise ValueError(f"`{name}` must have at least 2 dimensions (..., input, output); use "
                         f"a kernel, not a bias. Received: {name}.shape={w.shape}")
    return w


def _check_sparsity(sparsity):
    if (isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real)
            or not 0.0 <= sparsity <= 1.0):  # also rejects NaN
        raise ValueError(f"`sparsity` must be a number in [0, 1]. Received: sparsity={sparsity!r}")
    return float(sparsity)


def _check_granularity(granularity):
    if granularity not in GRANULARITIES:
        raise ValueError(f"`granularity` must be one of {GRANULARITIES}. "
                         f"Received: granularity={granularity!r}")
    return granularity


def _check_pair(name, value, check, what):
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair of integers {what}. "
                         f"Received: {name}={value!r}") from None
    if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in (a, b)) \
            or not check(int(a), int(b)):
        raise ValueError(f"`{name}` must be a pair of integers {what}. Received: {name}={value!r}")
    return int(a), int(b)


def _check_block_shape(block_shape):
    return _check_pair("block_shape", block_shape, lambda r, c: r >= 1 and c >= 1, "(r, c) >= 1")


def _check_n_m(n_m):
    return _check_pair("n_m", n_m, lambda n, m: 1 <= n < m, "(n, m) with 1 <= n < m")


def _check_previous(previous_mask, shape, name="previous_mask"):
    """The previous mask as bool (nonzero = kept), or None."""
    if previous_mask is None:
        return None
    p = np.asarray(previous_mask)
    if p.shape != tuple(shape):
        raise ValueError(f"`{name}` must have the shape of the weights {tuple(shape)}. "
                         f"Received: {name}.shape={p.shape}")
    return p if p.dtype == bool else p != 0


# ---- scores -------------------------------------------------------------------------------

def _magnitude(w):
    """|w| as floats, NaN -> +inf (kept)."""
    if np.issubdtype(w.dtype, np.floating):
        a = np.abs(w)
    else:
        a = np.abs(w.astype(np.float64))
    nan = np.isnan(a)
    if nan.any():
        a[nan] = np.inf
    return a


def _view2d(a):
    """(prod(shape[:-1]), shape[-1]) view, the input and output dims of a kernel."""
    return a.reshape(int(np.prod(a.shape[:-1])), a.shape[-1])  # not -1: size-0 kernels


def _block_scores(w, prev, block_shape):
    """Mean |w| per (r, c) block of the 2-D view, -inf for blocks with a pruned entry.

    Returns:
        scores: (rows_of_blocks * cols_of_blocks,) float64, block-row major.
        counts: (same,) int64, entries per block (edge blocks are partial).
    """
    a = _view2d(_magnitude(w)).astype(np.float64, copy=False)
    k, n = a.shape
    r, c = block_shape
    kb, nb = -(-k // r), -(-n // c)
    padded = np.zeros((kb * r, nb * c), np.float64)
    padded[:k, :n] = a
    sums = padded.reshape(kb, r, nb, c).sum(axis=(1, 3))
    rows = np.minimum(r, k - r * np.arange(kb))
    cols = np.minimum(c, n - c * np.arange(nb))
    counts = np.outer(rows, cols)
    scores = sums / counts
    if prev is not None:
        pruned = np.zeros((kb * r, nb * c), bool)
        pruned[:k, :n] = ~_view2d(prev)
        scores[pruned.reshape(kb, r, nb, c).any(axis=(1, 3))] = -np.inf
    return scores.ravel(), counts.ravel().astype(np.int64)


def _expand_blocks(block_keep, shape, block_shape):
    """Block-level keep flags (kb*nb,) -> element mask of `shape`."""
    k = int(np.prod(shape[:-1]))
    n = shape[-1]
    r, c = block_shape
    kb, nb = -(-k // r), -(-n // c)
    full = np.repeat(np.repeat(block_keep.reshape(kb, nb), r, axis=0), c, axis=1)
    return np.ascontiguousarray(full[:k, :n]).reshape(shape)


def _channel_scores(w, prev, normalize=False):
    """L2 norm of each output column (RMS if normalize), -inf for columns with a pruned entry."""
    a = _view2d(_magnitude(w)).astype(np.float64, copy=False)
    scores = np.sqrt(np.einsum("ij,ij->j", a, a))
    if normalize:
        scores = scores / np.sqrt(max(a.shape[0], 1))
    if prev is not None:
        scores[(~_view2d(prev)).any(axis=0)] = -np.inf
    counts = np.full(a.shape[1], a.shape[0], np.int64)
    return scores, counts


# ---- selection ----------------------------------------------------------------------------

def _top_k(scores, n_keep):
    """Keep flags for the n_keep largest scores (ties: earlier index kept). O(n).

    Args:
        scores: 1-D float array of magnitudes: >= 0, +inf or -inf (never NaN).
        n_keep: 0 <= n_keep <= scores.size.
    """
    n = scores.size
    if n_keep >= n:
        return np.ones(n, bool)
    keep = np.zeros(n, bool)
    if n_keep <= 0:
        return keep
    live = ~np.isneginf(scores)
    n_live = int(np.count_nonzero(live))
    if n_live < n:
        # Previously pruned entries (-inf) are never kept; selecting among the live ones only
        # also spares np.partition a mass of equal values, its slow case.
        idx = np.flatnonzero(live)
        keep[idx[_top_k(scores[idx], min(n_keep, n_live))]] = True
        return keep
    positive = scores > 0
    n_positive = int(np.count_nonzero(positive))
    if n_positive < n:
        # Exact zeros (weights zeroed by earlier pruning) are the same slow case; they rank last.
        if n_keep <= n_positive:
            idx = np.flatnonzero(positive)
            keep[idx[_top_k(scores[idx], n_keep)]] = True
        else:
            keep[:] = positive
            keep |= _first_true(~positive, n_keep - n_positive)
        return keep
    kth = n - n_keep
    threshold = np.partition(scores, kth)[kth]
    np.greater(scores, threshold, out=keep)
    missing = n_keep - int(np.count_nonzero(keep))
    if missing > 0:
        keep |= _first_true(scores == threshold, missing)
    return keep


def _first_true(flags, k, chunk=1 << 20):
    """Only the first k True entries of a 1-D bool array, without indexing all of them."""
    out = np.zeros(flags.size, bool)
    start = 0
    while k > 0 and start < flags.size:
        part = flags[start:start + chunk]
        count = int(np.count_nonzero(part))
        if count <= k:
            out[start:start + chunk] = part
        else:
            out[start + np.flatnonzero(part)[:k]] = True
        k -= count
        start += chunk
    return out


def _ascending_order(scores):
    """Indices sorting scores ascending; ties ordered by descending index (later pruned first)."""
    n = scores.size
    return (n - 1) - np.argsort(scores[::-1], kind="stable")


def _prune_by_count(scores, counts, target_pruned):
    """Prune the lowest-score groups; their total entry count as close as possible to the target.

    Groups with score -inf (holding previously pruned entries) are always pruned.

    Returns:
        (n_groups,) bool keep flags.
    """
    order = _ascending_order(scores)
    cum = np.concatenate([[0], np.cumsum(counts[order])])
    n_forced = int(np.count_nonzero(np.isneginf(scores)))
    dist = np.abs(cum[n_forced:] - target_pruned)
    n_prune = n_forced + int(np.argmin(dist))  # first minimum: the fewer groups on a tie
    keep = np.ones(scores.size, bool)
    keep[order[:n_prune]] = False
    return keep


def _prune_count(sparsity, n):
    return int(round(sparsity * n))


def _unstructured_scores(w, prev):
    a = _magnitude(w).ravel()  # a fresh array (or a view of one): ours to write
    if prev is not None:
        np.copyto(a, -np.inf, where=~prev.ravel())
    return a


def _n_m_mask(w, prev, n_m):
    """Keep the n largest |w| of every m consecutive inputs, per output and spatial position."""
    n, m = n_m
    shape = w.shape
    cin, cout = shape[-2], shape[-1]
    a = _magnitude(w).reshape(-1, cin, cout)
    s = a.shape[0]
    groups = -(-cin // m)
    # Negated scores, group members last and contiguous: (s, groups, cout, m). Padding and
    # previously pruned entries get +inf (never preferred over a real, unpruned weight).
    neg = np.full((s, cout, groups * m), np.inf, dtype=a.dtype)
    np.negative(a.transpose(0, 2, 1), out=neg[:, :, :cin])
    if prev is not None:
        np.copyto(neg[:, :, :cin], np.inf, where=~prev.reshape(s, cin, cout).transpose(0, 2, 1))
    neg = neg.reshape(s, cout, groups, m)
    if m <= 8:
        # rank_i = #{j: s_j > s_i, or s_j == s_i and j < i}; O(m^2) compares beat a sort here.
        rank = np.zeros(neg.shape, np.int32)
        for j in range(m):
            other = neg[..., j:j + 1]
            rank[..., :j + 1] += other < neg[..., :j + 1]
            rank[..., j + 1:] += other <= neg[..., j + 1:]
    else:
        # Stable sort of -score: descending magnitude, earlier input first on ties.
        order = np.argsort(neg, axis=-1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(m), axis=-1)
    keep = (rank < n).reshape(s, cout, groups * m)[:, :, :cin].transpose(0, 2, 1)
    keep = np.ascontiguousarray(keep).reshape(shape)
    if prev is not None:
        keep &= prev
    return keep


# ---- public -------------------------------------------------------------------------------

def magnitude_mask(weights, sparsity, granularity="unstructured", block_shape=(1, 1),
                   n_m=(2, 4), previous_mask=None):
    """Boolean keep-mask that prunes the smallest-magnitude weights of one kernel.

    Args:
        weights: kernel, shape `(..., input, output)` with ndim >= 2, e.g. a Dense kernel
            `(input_dim, units)` or a Conv2D kernel `(kh, kw, in_channels, filters)`.
        sparsity: fraction of weights to prune, in [0, 1]. Ignored for "n:m".
        granularity: what is pruned together:
            - "unstructured": single weights; exactly `round(sparsity * size)` are pruned.
            - "block": `block_shape` blocks of the 2-D view `(prod(shape[:-1]), output)`, scored
              by mean |w| (edge blocks partial); the lowest blocks are pruned so that the pruned
              weight fraction is as close as possible to `sparsity`.
            - "n:m": of every `m` consecutive inputs (along the input-channel axis, per output
              and spatial position) the `n` largest are kept; a trailing partial group keeps
              `min(n, size)`.
            - "channel": whole output columns (filters), scored by L2 norm;
              `round(sparsity * output)` of them are pruned.
        block_shape: `(r, c)` block over (input, output) for "block".
        n_m: `(n, m)` with `1 <= n < m` for "n:m".
        previous_mask: optional mask of the same shape (bool, or numbers where nonzero = kept).
            Entries it prunes stay pruned and the result is a subset of it.

    Returns:
        Bool array of `weights.shape`, True = keep.

    Raises:
        ValueError: on a bad argument; the message names it and its value.

    Example:

    ```python
    w = np.array([[0.1, -2.0], [0.5, 0.05]])
    magnitude_mask(w, 0.5)  # [[False, True], [True, False]]
    ```
    """
    w = _check_weights(weights)
    sparsity = _check_sparsity(sparsity)
    granularity = _check_granularity(granularity)
    block_shape = _check_block_shape(block_shape)
    n_m = _check_n_m(n_m)
    prev = _check_previous(previous_mask, w.shape)
    if w.size == 0:
        return np.ones(w.shape, bool)

    if granularity == "unstructured":
        n = w.size
        n_keep = n - _prune_count(sparsity, n)
        if prev is not None:
            n_keep = min(n_keep, int(np.count_nonzero(prev)))
        keep = _top_k(_unstructured_scores(w, prev), n_keep).reshape(w.shape)
    elif granularity == "block":
        scores, counts = _block_scores(w, prev, block_shape)
        block_keep = _prune_by_count(scores, counts, sparsity * w.size)
        keep = _expand_blocks(block_keep, w.shape, block_shape)
    elif granularity == "channel":
        scores, _ = _channel_scores(w, prev)
        n_forced = int(np.count_nonzero(np.isneginf(scores)))
        n_prune = max(_prune_count(sparsity, scores.size), n_forced)
        col_keep = np.ones(scores.size, bool)
        col_keep[_ascending_order(scores)[:n_prune]] = False
        keep = np.broadcast_to(col_keep, w.shape).copy()
    else:
        keep = _n_m_mask(w, prev, n_m)
    if prev is not None:
        keep &= prev
    return keep


def global_magnitude_masks(weights_list, sparsity, granularity="unstructured",
                           block_shape=(1, 1), n_m=(2, 4), previous_mask=None):
    """Masks for several kernels with one magnitude threshold across all of them.

    The total pruned fraction (over all entries of all kernels) is `sparsity`; each kernel's own
    sparsity follows from where its magnitudes fall in the global ranking, so layers of small
    weights are pruned harder.

    Args:
        weights_list: sequence of kernels, each as in `magnitude_mask`.
        sparsity: total fraction of weights to prune, in [0, 1]. Ignored for "n:m".
        granularity: as in `magnitude_mask`, ranked globally:
            - "unstructured": the global top `total - round(sparsity * total)` |w| are kept.
            - "block": block scores (mean |w|) are ranked across kernels, and the lowest blocks
              pruned so that the pruned fraction of all weights is as close as possible to
              `sparsity`.
            - "channel": columns are ranked across kernels by RMS |w| (the L2 norm divided by
              sqrt(fan-in), so columns of different lengths compare fairly; within one kernel
              this is the L2-norm order), pruned as for "block".
            - "n:m": per kernel, as in `magnitude_mask`.
        block_shape: `(r, c)` for "block".
        n_m: `(n, m)` for "n:m".
        previous_mask: optional sequence of masks (or None entries) matching `weights_list`.

    Returns:
        List of bool masks, one per kernel, each of its kernel's shape.

    Raises:
        ValueError: on a bad argument.
    """
    if isinstance(weights_list, np.ndarray) or not hasattr(weights_list, "__len__"):
        raise ValueError("`weights_list` must be a list of kernels. "
                         f"Received: weights_list of type {type(weights_list).__name__}")
    ws = [_check_weights(w, f"weights_list[{i}]") for i, w in enumerate(weights_list)]
    sparsity = _check_sparsity(sparsity)
    granularity = _check_granularity(granularity)
    block_shape = _check_block_shape(block_shape)
    n_m = _check_n_m(n_m)
    if previous_mask is None:
        prevs = [None] * len(ws)
    else:
        if len(previous_mask) != len(ws):
            raise ValueError("`previous_mask` must have one entry per kernel "
                             f"({len(ws)}). Received: len(previous_mask)={len(previous_mask)}")
        prevs = [_check_previous(p, w.shape, f"previous_mask[{i}]")
                 for i, (w, p) in enumerate(zip(ws, previous_mask))]
    if not ws:
        return []

    if granularity == "n:m":
        return [magnitude_mask(w, sparsity, "n:m", n_m=n_m, previous_mask=p)
                for w, p in zip(ws, prevs)]

    total = sum(w.size for w in ws)
    if granularity == "unstructured":
        scores = [_unstructured_scores(w, p).astype(np.float64, copy=False)
                  for w, p in zip(ws, prevs)]
        flat = np.concatenate(scores) if scores else np.zeros(0)
        n_keep = total - _prune_count(sparsity, total)
        n_keep = min(n_keep, flat.size - int(np.count_nonzero(np.isneginf(flat))))
        keep_flat = _top_k(flat, n_keep)
        sizes = [w.size for w in ws]
        parts = np.split(keep_flat, np.cumsum(sizes)[:-1])
        masks = [part.reshape(w.shape) for part, w in zip(parts, ws)]
    else:
        if granularity == "block":
            pairs = [_block_scores(w, p, block_shape) for w, p in zip(ws, prevs)]
        else:
            pairs = [_channel_scores(w, p, normalize=True) for w, p in zip(ws, prevs)]
        scores = np.concatenate([s for s, _ in pairs])
        counts = np.concatenate([c for _, c in pairs])
        group_keep = _prune_by_count(scores, counts, sparsity * total)
        parts = np.split(group_keep, np.cumsum([s.size for s, _ in pairs])[:-1])
        masks = []
        for part, w in zip(parts, ws):
            if granularity == "block":
                masks.append(_expand_blocks(part, w.shape, block_shape))
            else:
                masks.append(np.broadcast_to(part, w.shape).copy())
    for mask, p in zip(masks, prevs):
        if p is not None:
            mask &= p
    return masks


def sparsity_of(mask):
    """Fraction of pruned (False) entries of a mask; 0.0 for an empty mask.

    Args:
        mask: bool array (or numbers, nonzero = kept), any shape.

    Returns:
        A Python float in [0, 1].
    """
    m = np.asarray(mask)
    if m.size == 0:
        return 0.0
    kept = np.count_nonzero(m)
    return float(m.size - kept) / m.size
