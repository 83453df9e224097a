"""Sparse input pipelines: bag-of-words corpora and scipy.sparse matrices as `tf.data` datasets
of `tf.SparseTensor` batches, ready for `keras.Input(shape=(vocab_size,), sparse=True)` and
`SparseDense`.

Nothing is densified: each batch is a `tf.SparseTensor` of dense shape `(batch, vocab_size)`
holding only that batch's nonzeros.
"""
import numbers

import numpy as np
import tensorflow as tf

__all__ = ["from_token_ids", "from_scipy", "token_ids_to_scipy"]


def _positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"Expected a positive integer `{name}`. Received: {name}={value!r}")
    return int(value)


def _labels(labels, n_rows):
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.ndim == 0 or y.shape[0] != n_rows:
        raise ValueError(f"labels must have one entry per row ({n_rows}); received labels of "
                         f"shape {y.shape}")
    if y.dtype == object:
        raise ValueError(f"labels must be numeric; received dtype {y.dtype}")
    return y


def from_scipy(matrix, labels=None, batch_size=32, shuffle=False, seed=None, dtype="float32",
               drop_remainder=False):
    """A `tf.data.Dataset` of sparse batches from a 2-D scipy.sparse matrix.

    For the output of scikit-learn's `CountVectorizer`, `TfidfVectorizer` or
    `HashingVectorizer` (any scipy.sparse format; converted to CSR, duplicates summed).

    Args:
        matrix: scipy.sparse matrix or array `(n_rows, n_features)`.
        labels: optional array-like `(n_rows, ...)`; the dataset then yields `(x, y)` pairs.
        batch_size: rows per batch (the last batch may be smaller unless drop_remainder).
        shuffle: reshuffle the rows at every epoch (with `seed`).
        dtype: the values' dtype in the batches.

    Returns:
        A dataset of `tf.SparseTensor` `(batch, n_features)` (with labels: `(x, y)` tuples,
        `y` of shape `(batch, ...)`).

    Raises:
        TypeError: matrix is not a 2-D scipy.sparse matrix.
        ValueError: labels of the wrong length, bad batch_size.

    Example:
        >>> from sklearn.feature_extraction.text import HashingVectorizer
        >>> x = HashingVectorizer(n_features=2**14).transform(texts)
        >>> ds = sparsekeras.data.from_scipy(x, labels, batch_size=64, shuffle=True, seed=0)
        >>> model.fit(ds, epochs=3)
    """
    import scipy.sparse as sp

    if not sp.issparse(matrix) or matrix.ndim != 2:
        raise TypeError("matrix must be a 2-D scipy.sparse matrix or array; received "
                        f"{type(matrix).__name__}")
    batch_size = _positive_int(batch_size, "batch_size")
    m = sp.csr_array(matrix, dtype=np.dtype(tf.as_dtype(dtype).as_numpy_dtype))
    m.sum_duplicates()  # also sorts the indices: row-major order, as tf.sparse expects
    n_rows, n_cols = m.shape
    y = _labels(labels, n_rows)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(m.indptr))
    coo = np.stack([rows, m.indices.astype(np.int64)], axis=1).reshape(-1, 2)
    st = tf.SparseTensor(coo, m.data, [n_rows, n_cols])
    ds = tf.data.Dataset.from_tensor_slices(st if y is None else (st, y))
    if shuffle:
        ds = ds.shuffle(max(n_rows, 1), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def token_ids_to_scipy(corpus, vocab_size, binary=False, dtype="float32"):
    """The `(n_docs, vocab_size)` CSR bag-of-words matrix of a corpus of token-id lists:
    entry (d, t) counts token t in document d (1 if binary). See `from_token_ids`."""
    import scipy.sparse as sp

    vocab_size = _positive_int(vocab_size, "vocab_size")
    docs = list(corpus)
    lengths = np.zeros(len(docs), np.int64)
    parts = []
    for d, doc in enumerate(docs):
        ids = np.asarray(doc if not isinstance(doc, (str, bytes)) else [doc])
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"corpus[{d}] must be a sequence of integer token ids; received "
                             f"{type(doc).__name__} of dtype {ids.dtype}")
        if ids.size:
            lo, hi = ids.min(), ids.max()
            if lo < 0 or hi >= vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token ids must lie in [0, vocab_size={vocab_size}); received "
                                 f"{int(bad)} in corpus[{d}]")
        lengths[d] = ids.size
        parts.append(ids.astype(np.int64))
    cols = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
    m = sp.csr_array((np.ones(cols.size, np.float64), (rows, cols)),
                     shape=(len(docs), vocab_size))
    m.sum_duplicates()
    if binary:
        m.data[:] = 1.0
    return m.astype(np.dtype(tf.as_dtype(dtype).as_numpy_dtype))


def from_token_ids(corpus, vocab_size, labels=None, batch_size=32, binary=False, shuffle=False,
                   seed=None, dtype="float32", drop_remainder=False):
    """A `tf.data.Dataset` of bag-of-words batches from a corpus of token-id lists.

    Args:
        corpus: sequence of documents, each a sequence of integer token ids in
            `[0, vocab_size)` (an empty document gives an empty row).
        vocab_size: number of features (columns).
        labels: optional array-like `(n_docs, ...)`; the dataset then yields `(x, y)` pairs.
        batch_size: as in `from_scipy`.
        shuffle: as in `from_scipy`.
        seed: as in `from_scipy`.
        drop_remainder: as in `from_scipy`.
        binary: 1 for every token present instead of its count.
        dtype: the values' dtype.

    Returns:
        A dataset of `tf.SparseTensor` `(batch, vocab_size)` batches (or `(x, y)` tuples).

    Raises:
        ValueError: token ids out of range or not integers, labels of the wrong length,
            bad vocab_size or batch_size.

    Example:
        >>> ds = sparsekeras.data.from_token_ids([[3, 1, 3], [0], []], vocab_size=5,
        ...                                      labels=[1, 0, 1], batch_size=2)
        >>> x, y = next(iter(ds))     # x: SparseTensor, dense shape (2, 5); x[0, 3] == 2
    """
    m = token_ids_to_scipy(corpus, vocab_size, binary=binary, dtype=dtype)
    return from_scipy(m, labels=labels, batch_size=batch_size, shuffle=shuffle, seed=seed,
                      dtype=dtype, drop_remainder=drop_remainder)
