"""Mask maths of dynamic sparse training (RigL, SET): pure NumPy functions of arrays and a seed.

The callbacks (`sparsekeras._dst_callbacks`) only orchestrate: these functions say how dense
each layer is (`erk_densities`, `uniform_densities`), draw the first masks (`random_mask`), how
many weights move at a step (`drop_fraction_at`, `is_update_step`) and which ones
(`drop_grow`); with block granularity the same functions work on the grid of blocks
(`block_norms`, `block_mask_of`, `expand_blocks`, `block_positions`).
Randomness comes from `rng(seed, step, index)`: one generator per (step, layer), so a decision
depends on the seed and the step only, never on what ran before (a resumed fit makes the same
decisions as an uninterrupted one, and every replica the same).
"""
import math

import numpy as np

__all__ = ["DISTRIBUTIONS", "erk_densities", "uniform_densities", "densities", "n_active",
           "random_mask", "drop_fraction_at", "is_update_step", "drop_grow", "rng",
           "GRANULARITIES", "check_block_shape", "block_grid", "block_norms", "block_mask_of",
           "expand_blocks", "block_positions"]

DISTRIBUTIONS = ("erk", "uniform")


def rng(seed, *keys):
    """A NumPy generator for `seed` and the integer `keys` (step, layer index...)."""
    return np.random.default_rng([int(seed)] + [int(k) for k in keys])


def _check_sparsity(sparsity):
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"Expected `sparsity` in [0, 1). Received: sparsity={sparsity}")


def uniform_densities(shapes, sparsity):
    """Every layer at density 1 - sparsity. shapes: list of weight shapes. Returns a list."""
    _check_sparsity(sparsity)
    return [1.0 - float(sparsity) for _ in shapes]


def erk_densities(shapes, sparsity, power=1.0):
    """Erdős–Rényi-Kernel densities (Evci et al. 2020, as RigL's code computes them).

    A weight of shape (n_in, n_out), or (k_h, k_w, c_in, c_out) for a convolution, gets density
    eps * (sum(shape) / prod(shape)) ** power, with one eps for the model chosen so that the
    kept parameters are (1 - sparsity) of all of them. A layer whose density would exceed 1 is
    kept dense (density 1) and eps is solved again over the others, until none exceeds 1.

    Args:
        shapes: list of weight shapes (tuples of ints).
        sparsity: target overall sparsity in [0, 1).
        power: exponent of the raw scores (1: ERK).

    Returns:
        list of densities in (0, 1], one per shape, with
        sum(density * size) == (1 - sparsity) * sum(size) (up to float rounding).

    Example:
        >>> erk_densities([(784, 300), (300, 100), (100, 10)], 0.9)
        [0.07..., 0.22..., 1.0]   # the small head stays dense
    """
    _check_sparsity(sparsity)
    sizes = [float(np.prod(s)) for s in shapes]
    raw = [(float(sum(s)) / float(np.prod(s))) ** power for s in shapes]
    dense = set()
    while True:
        # kept parameters the non-dense layers must hold: the target minus the dense ones' excess
        rhs = sum((1.0 - sparsity) * n for i, n in enumerate(sizes) if i not in dense)
        rhs -= sum(sparsity * n for i, n in enumerate(sizes) if i in dense)
        divisor = sum(raw[i] * sizes[i] for i in range(len(sizes)) if i not in dense)
        if divisor <= 0:
            break
        eps = rhs / divisor
        free = [i for i in range(len(sizes)) if i not in dense]
        top = max(raw[i] for i in free)
        if top * eps <= 1.0:
            break
        dense.update(i for i in free if raw[i] == top)
        if len(dense) == len(sizes):
            break
    return [1.0 if i in dense else eps * raw[i] for i in range(len(sizes))]


def densities(shapes, sparsity, distribution="erk"):
    """The densities of `distribution` ("erk" or "uniform") for `shapes`."""
    if distribution == "erk":
        return erk_densities(shapes, sparsity)
    if distribution == "uniform":
        return uniform_densities(shapes, sparsity)
    raise ValueError(f"Expected `distribution` in {DISTRIBUTIONS}. "
                     f"Received: distribution={distribution!r}")


def n_active(shape, density):
    """Number of kept entries of a weight of `shape` at `density` (at least 1, at most all)."""
    size = int(np.prod(shape))
    return int(min(size, max(1, round(density * size))))


def random_mask(shape, density, generator):
    """A boolean mask of `shape` with exactly n_active(shape, density) True entries, drawn
    uniformly by `generator` (a np.random.Generator)."""
    size = int(np.prod(shape))
    flat = np.zeros(size, bool)
    flat[generator.choice(size, size=n_active(shape, density), replace=False)] = True
    return flat.reshape(shape)


def drop_fraction_at(step, drop_fraction, end_step, decay="cosine"):
    """The fraction of active weights moved at `step`: RigL's cosine decay,
    drop_fraction / 2 * (1 + cos(pi * step / end_step)), or "constant"; 0 from end_step on."""
    if step >= end_step:
        return 0.0
    if decay == "constant":
        return float(drop_fraction)
    if decay != "cosine":
        raise ValueError(f"Expected `decay` in ('cosine', 'constant'). Received: decay={decay!r}")
    return float(drop_fraction) / 2.0 * (1.0 + math.cos(math.pi * step / end_step))


def is_update_step(step, update_every, end_step):
    """Whether masks are updated at `step` (every `update_every` steps, 0 and end_step excluded)."""
    return 0 < step < end_step and step % update_every == 0


def _kth_largest(values, k):
    """The k-th largest entry of the 1-D `values` (1 <= k <= len(values)), exactly.

    A partition over a few million entries costs more than the passes around it: when k is a
    small part of many values, a deterministic strided sample gives a bound a little below the
    k-th largest, and only the entries at or above it are partitioned (if fewer than k lie
    there, the bound was too high and all entries are)."""
    m = len(values)
    if m > 400_000 and k < m // 4:
        sample = values[::m // 100_000]
        n_s = len(sample)
        j = min(n_s - 1, int(n_s * k / m * 1.2) + 200)  # ~20% + 200 sample entries of margin
        bound = np.partition(sample, n_s - 1 - j)[n_s - 1 - j]
        pool = values[values >= bound]
        if len(pool) >= k:
            values, m = pool, len(pool)
    return np.partition(values, m - k)[m - k]


def _pool(score, k, n, low, eligible):
    """The (sorted) indices of the eligible entries of `score` at or above a bound taken from a
    strided sample, when more than k of them are there and the bound exceeds `low`: they hold
    every entry above the k-th largest and every entry tied with it, so ranking them gives the
    choices ranking all eligible entries above `low` gives, without gathering millions of
    scores. None when that does not hold (small arrays, k a large part of n)."""
    m = len(score)
    if m <= 400_000 or k >= n // 4:
        return None
    sample = score[::m // 100_000]  # ineligible entries too: the bound is only a guess
    n_s = len(sample)
    j = int(n_s * k / n * 1.2) + 200  # ~20% + 200 sample entries of margin above the k-th
    if j >= n_s:
        return None
    bound = np.partition(sample, n_s - 1 - j)[n_s - 1 - j]
    if not bound > low:
        return None
    selected = score >= bound
    if eligible is not None:
        selected &= eligible
    pool = np.flatnonzero(selected)
    return pool if len(pool) > k else None


def _top_k(score, k, generator, eligible=None):
    """Indices of the k largest entries of the 1-D `score` (among the `eligible` ones, a
    boolean array of its length, if given); ties at the k-th value are broken at random by
    `generator`. O(n): partitions, not a sort (a 4096 x 4096 layer has 15M inactive entries
    to rank). The entries equal to the minimum (the zero gradients of dead units, often most
    of them) are set aside first: a partition over many equal values is slow (15M float32 with
    99% zeros: 8.5 s, against 0.3 s for distinct values).

    With `eligible`, the result is what `idx[_top_k(score[idx], ...)]` gives for
    idx = flatnonzero(eligible), without gathering the eligible scores (15M of them)."""
    n = len(score) if eligible is None else int(np.count_nonzero(eligible))
    if k >= n:
        return np.arange(n) if eligible is None else np.flatnonzero(eligible)
    if eligible is None:
        low = score.min()
    else:
        low = np.min(score, where=eligible, initial=np.inf)
    candidates = _pool(score, k, n, low, eligible)
    if candidates is None:
        above_low = score > low
        if eligible is not None:
            above_low &= eligible
        candidates = np.flatnonzero(above_low)
        del above_low
    if len(candidates) <= k:
        at_low = score == low
        if eligible is not None:
            at_low &= eligible
        above, tied = candidates, np.flatnonzero(at_low)
    else:
        sub = score[candidates]
        threshold = _kth_largest(sub, k)
        above, tied = candidates[sub > threshold], candidates[sub == threshold]
    chosen = generator.choice(tied, size=k - len(above), replace=False)
    return np.concatenate([above, np.sort(chosen)])


def drop_grow(weights, mask, fraction, generator, grow_scores=None):
    """One update of a mask: drop the `k` active entries of smallest |weight| and grow `k`
    inactive ones, k = round(fraction * number active).

    The `k` grown entries are chosen among those inactive before this update (a weight just
    dropped is not grown back), by largest `grow_scores` (RigL: |dense gradient|) or, with
    grow_scores None, uniformly at random (SET). Ties (equal magnitudes or scores) are broken
    by `generator`, so a decision is a function of the inputs and the generator's seed.

    Args:
        weights: array of the weight's shape (its current values).
        mask: boolean array of the same shape (True = active).
        fraction: fraction in [0, 1] of the active entries to move.
        generator: np.random.Generator.
        grow_scores: array of the same shape, or None.

    Returns:
        (new_mask, dropped, grown): the boolean mask with the same number of active entries,
        and the flat indices of the dropped and grown entries (each of length k).
    """
    mask = np.asarray(mask, bool)
    flat_mask = mask.reshape(-1)
    active = np.flatnonzero(flat_mask)
    k = int(min(round(float(fraction) * len(active)), flat_mask.size - len(active)))
    if k <= 0:
        return mask.copy(), np.zeros(0, np.int64), np.zeros(0, np.int64)
    magnitude = np.abs(np.asarray(weights).reshape(-1)[active])
    dropped = active[_top_k(-magnitude, k, generator)]
    if grow_scores is None:
        grown = generator.choice(np.flatnonzero(~flat_mask), size=k, replace=False)
    else:
        # ranked in place among the inactive entries (no gather of their 15M scores)
        grown = _top_k(np.asarray(grow_scores).reshape(-1), k, generator, eligible=~flat_mask)
    new = flat_mask.copy()
    new[dropped] = False
    new[grown] = True
    return new.reshape(mask.shape), np.sort(dropped), np.sort(grown)


# ---- block granularity ----------------------------------------------------------------------
# A weight of shape (..., n_out) is seen as the 2-D (prod(shape[:-1]), n_out) matrix (a Dense
# kernel's (n_in, n_out); a convolution's (k_h * k_w * c_in, c_out)), cut into (r, c) blocks;
# with granularity "block" masks are made of whole blocks and RigL/SET move whole blocks.

GRANULARITIES = ("unstructured", "block")


def check_block_shape(block_shape):
    """`block_shape` as a pair of positive ints (r, c), else ValueError naming it."""
    try:
        r, c = block_shape
    except (TypeError, ValueError):
        raise ValueError(f"Expected `block_shape` a pair (r, c) of positive integers. "
                         f"Received: block_shape={block_shape!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in (r, c)):
        raise ValueError(f"Expected `block_shape` a pair (r, c) of positive integers. "
                         f"Received: block_shape={block_shape!r}")
    return int(r), int(c)


def block_grid(shape, block_shape):
    """(rows of blocks, columns of blocks) of a weight of `shape` in (r, c) blocks; ValueError
    when the blocks do not tile its 2-D view exactly."""
    r, c = block_shape
    k, n = int(np.prod(shape[:-1])), int(shape[-1])
    if len(shape) < 2 or k % r or n % c:
        raise ValueError(f"block_shape={tuple(block_shape)} does not tile a weight of shape "
                         f"{tuple(shape)} (2-D view ({k}, {n})): r must divide {k} and c "
                         f"divide {n}.")
    return k // r, n // c


def block_norms(array, block_shape):
    """The L2 norm of each (r, c) block of `array` (its 2-D view): shape block_grid(...)."""
    shape = np.shape(array)
    kb, nb = block_grid(shape, block_shape)
    r, c = block_shape
    a = np.asarray(array, np.float32).reshape(kb, r, nb, c)
    return np.sqrt(np.einsum("irjc,irjc->ij", a, a))


def block_mask_of(mask, block_shape):
    """The (kb, nb) block mask of an element mask made of whole blocks; ValueError naming the
    argument when a block is partly kept."""
    shape = np.shape(mask)
    kb, nb = block_grid(shape, block_shape)
    r, c = block_shape
    counts = np.asarray(mask, bool).reshape(kb, r, nb, c).sum(axis=(1, 3))
    if not np.all((counts == 0) | (counts == r * c)):
        raise ValueError(f"mask is not made of whole {tuple(block_shape)} blocks "
                         f"({int(np.sum((counts > 0) & (counts < r * c)))} partial blocks).")
    return counts > 0


def expand_blocks(block_mask, shape, block_shape):
    """The element mask of `shape` whose (r, c) blocks are `block_mask` (kb, nb)."""
    r, c = block_shape
    full = np.repeat(np.repeat(np.asarray(block_mask, bool), r, axis=0), c, axis=1)
    return full.reshape(shape)


def block_positions(block_indices, shape, block_shape):
    """The flat element indices (into `shape`, C order) of the blocks at the flat
    `block_indices` (into the (kb, nb) grid), sorted."""
    kb, nb = block_grid(shape, block_shape)
    r, c = block_shape
    n = int(shape[-1])
    bi, bj = np.divmod(np.asarray(block_indices, np.int64), nb)
    rows = (bi[:, None] * r + np.arange(r)[None, :])  # (m, r)
    cols = (bj[:, None] * c + np.arange(c)[None, :])  # (m, c)
    flat = rows[:, :, None] * n + cols[:, None, :]
    return np.sort(flat.reshape(-1))
