"""CSRTensor: a compressed-sparse-row matrix as a TensorFlow extension type.

It passes through `tf.function` signatures, `tf.data`, Keras and SavedModel like a tensor, and
converts from/to `tf.SparseTensor`, `scipy.sparse` and dense tensors.
"""
import numpy as np
import tensorflow as tf

__all__ = ["CSRTensor"]

_INDEX_DTYPES = (tf.int32, tf.int64)


def _index_dtype(dtype, name):
    try:
        dt = tf.as_dtype(dtype)
    except TypeError:
        dt = None
    if dt not in _INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64; received: {dtype!r}")
    return dt


def _first_bad(bad):
    import numpy as np

    return int(np.flatnonzero(bad)[0])


def _checked_coo(indices, dense_shape, index_dtype, name):
    """(indices, dense_shape) of a 2-D SparseTensor, checked in int64: dense_shape non-negative,
    every index inside it, and the column ids representable in index_dtype. Eagerly (or with
    constant inputs) the check runs in NumPy and raises InvalidArgumentError at once; in a graph
    it is an assertion the returned tensors depend on."""
    iv, dv = tf.get_static_value(indices), tf.get_static_value(dense_shape)
    limit = 2**31 - 1 if index_dtype == tf.int32 else 2**63 - 1
    if iv is not None and dv is not None:
        def fail(msg):
            raise tf.errors.InvalidArgumentError(None, None, msg)
        dv = [int(d) for d in dv]
        if len(dv) != 2 or dv[0] < 0 or dv[1] < 0:
            fail(f"{name}.dense_shape must be 2 non-negative sizes; received {dv}")
        if dv[0] >= 2**63 - 1:
            fail(f"{name}.dense_shape[0] must be below 2**63 - 1 (its CSR form has "
                 f"dense_shape[0] + 1 row pointers); received {dv}")
        if iv.ndim != 2 or iv.shape[1] != 2:
            fail(f"{name}.indices must have shape (nnz, 2); received {iv.shape}")
        for axis, what in ((0, "row"), (1, "column")):
            col = iv[:, axis]
            bad = (col < 0) | (col >= dv[axis])
            if bad.any():
                p = _first_bad(bad)
                fail(f"{name}.indices[{p}] = {iv[p].tolist()} has a {what} outside dense_shape "
                     f"{dv}")
        if len(iv) > limit or (len(iv) and int(iv[:, 1].max()) > limit):
            fail(f"{name} has {len(iv)} entries and columns up to dense_shape[1] = {dv[1]}: "
                 f"more than index_dtype={index_dtype.name} can hold; use int64")
        return indices, dense_shape
    structure = [
        tf.debugging.assert_equal(tf.size(dense_shape), 2, message=(
            f"{name}.dense_shape must be 2 sizes [rows, cols] (a 2-D SparseTensor)")),
        tf.debugging.assert_equal(tf.shape(indices)[1:], [2], message=(
            f"{name}.indices must have shape (nnz, 2)")),
    ]
    with tf.control_dependencies(structure):
        indices, dense_shape = tf.identity(indices), tf.identity(dense_shape)
    ok_shape = tf.reduce_all(dense_shape >= 0) & (dense_shape[0] < 2**63 - 1)
    inside = tf.reduce_all((indices >= 0) & (indices < dense_shape[tf.newaxis, :]), axis=1)
    # The first offender (0 when there is none: the padded row keeps the gather valid).
    first = tf.concat([tf.where(tf.logical_not(inside))[:, 0], tf.zeros([1], tf.int64)], 0)[0]
    padded = tf.concat([indices, tf.zeros([1, 2], tf.int64)], 0)
    checks = [
        tf.debugging.Assert(ok_shape, [f"{name}.dense_shape must be non-negative, with fewer "
                                       f"than 2**63 - 1 rows; received", dense_shape]),
        tf.debugging.Assert(tf.reduce_all(inside), [
            f"{name}.indices has an entry outside its dense_shape: indices[", first, "] =",
            tf.gather(padded, first, axis=0), "for dense_shape", dense_shape], summarize=4),
    ]
    if index_dtype == tf.int32:
        checks.append(tf.debugging.Assert(
            (tf.size(indices, out_type=tf.int64) <= 2 * limit) &
            tf.reduce_all(indices[:, 1] <= limit),
            [f"{name} has more entries or larger column ids than index_dtype=int32 can hold; "
             f"use int64. dense_shape:", dense_shape]))
    with tf.control_dependencies(checks):
        return tf.identity(indices), tf.identity(dense_shape)


class CSRTensor(tf.experimental.ExtensionType):
    """A 2-D sparse matrix in CSR form.

    Attributes:
        indptr: int32/int64 `(rows + 1,)`; row i's entries are `indptr[i]:indptr[i + 1]`.
        indices: `(nnz,)`, same dtype as indptr: column of each stored entry.
        values: `(nnz,)`: the stored values (any float dtype).
        dense_shape: int64 `(2,)`: `[rows, cols]`.

    Example:
        >>> a = CSRTensor.from_dense(tf.constant([[0., 2.], [3., 0.]]))
        >>> sparsekeras.ops.matmul(a, tf.ones((2, 4)))
    """

    __name__ = "sparsekeras.CSRTensor"

    indptr: tf.Tensor
    indices: tf.Tensor
    values: tf.Tensor
    dense_shape: tf.Tensor

    def __validate__(self):
        if self.indptr.dtype not in _INDEX_DTYPES:
            raise TypeError(f"CSRTensor.indptr must be int32 or int64; received {self.indptr.dtype}")
        if self.indices.dtype != self.indptr.dtype:
            raise TypeError(f"CSRTensor.indices must have indptr's dtype {self.indptr.dtype}; "
                            f"received {self.indices.dtype}")
        if self.dense_shape.dtype != tf.int64:
            raise TypeError(f"CSRTensor.dense_shape must be int64; received {self.dense_shape.dtype}")
        for field in ("indptr", "indices", "values"):
            shape = getattr(self, field).shape
            if shape.rank is not None and shape.rank != 1:
                raise ValueError(f"CSRTensor.{field} must be a vector (rank 1); received shape "
                                 f"{shape}")
        if not self.dense_shape.shape.is_compatible_with([2]):
            raise ValueError(f"CSRTensor.dense_shape must be a vector of 2 sizes [rows, cols]; "
                             f"received shape {self.dense_shape.shape}")

    # ---- properties ---------------------------------------------------------------------

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def shape(self):
        """Static `tf.TensorShape([rows, cols])`, with None where unknown when tracing."""
        static = tf.get_static_value(self.dense_shape)
        if static is not None:
            return tf.TensorShape([int(s) for s in static])
        rows = self.indptr.shape[0]
        return tf.TensorShape([None if rows is None else rows - 1, None])

    @property
    def nnz(self):
        return tf.shape(self.indices, out_type=tf.int64)[0]

    def with_values(self, values):
        """The same structure with new values (same length)."""
        return CSRTensor(self.indptr, self.indices, values, self.dense_shape)

    def row_ids(self):
        """Row of every stored entry, `(nnz,)` in indptr's dtype."""
        lengths = self.indptr[1:] - self.indptr[:-1]
        return tf.repeat(tf.range(tf.size(lengths, out_type=self.indptr.dtype),
                                  dtype=self.indptr.dtype), lengths)

    # ---- conversions --------------------------------------------------------------------

    @classmethod
    def from_sparse_tensor(cls, st, index_dtype=tf.int64, name="sparse tensor"):
        """From a 2-D `tf.SparseTensor` (reordered to row-major order first).

        Its indices are range-checked in int64 against dense_shape (at run time in graphs)
        before anything narrows them: an index outside the shape raises InvalidArgumentError
        naming `name` and the entry, rather than wrapping into a valid row or column.
        """
        index_dtype = _index_dtype(index_dtype, "index_dtype")
        if st.shape.rank is not None and st.shape.rank != 2:
            raise ValueError(f"{name} must be a 2-D SparseTensor; received rank {st.shape.rank} "
                             f"(dense_shape {st.shape})")
        indices, dense_shape = _checked_coo(st.indices, st.dense_shape, index_dtype, name)
        st = tf.sparse.reorder(tf.SparseTensor(indices, st.values, dense_shape))
        rows = st.indices[:, 0]
        n_rows = st.dense_shape[0]
        # Rows are in [0, n_rows) and sorted: indptr[i] = number of entries in rows < i, counted
        # in int64 (bincount would need int32 row ids, wrong beyond 2**31 - 1 rows).
        indptr = tf.searchsorted(rows, tf.range(n_rows + 1, dtype=tf.int64), side="left",
                                 out_type=tf.int64)
        return cls(tf.cast(indptr, index_dtype), tf.cast(st.indices[:, 1], index_dtype),
                   st.values, st.dense_shape)

    def to_sparse_tensor(self):
        """As a `tf.SparseTensor` (entries in CSR storage order)."""
        coo = tf.stack([tf.cast(self.row_ids(), tf.int64), tf.cast(self.indices, tf.int64)], axis=1)
        return tf.SparseTensor(coo, self.values, self.dense_shape)

    @classmethod
    def from_dense(cls, x, index_dtype=tf.int64):
        """From a dense 2-D tensor, keeping its nonzeros (NaN kept)."""
        x = tf.convert_to_tensor(x)
        return cls.from_sparse_tensor(tf.sparse.from_dense(x), index_dtype=index_dtype)

    def to_dense(self):
        """Dense tensor; duplicate entries add up."""
        coo = tf.stack([tf.cast(self.row_ids(), tf.int64), tf.cast(self.indices, tf.int64)], axis=1)
        return tf.scatter_nd(coo, self.values, self.dense_shape)

    @classmethod
    def from_scipy(cls, m, dtype=None, index_dtype=None, name="m"):
        """From a scipy.sparse matrix or array (any format; converted to CSR)."""
        import scipy.sparse as sp

        from sparsekeras import linalg

        if not sp.issparse(m) or m.ndim != 2:
            raise TypeError(f"CSRTensor.from_scipy needs a 2-D scipy.sparse matrix; received {type(m).__name__}")
        # Validated (and COO coordinates range-checked) before scipy's unchecked conversions.
        indptr, indices, data, shape = linalg._csr_arrays(m, name)
        if index_dtype is None:
            index_dtype = np.int32 if indices.dtype == np.int32 and indptr.dtype == np.int32 else np.int64
        index_dtype = _index_dtype(index_dtype, "index_dtype").as_numpy_dtype
        if index_dtype == np.int32 and max(len(indices), shape[1]) > 2**31 - 1:
            raise ValueError(f"{name} (shape {shape}, {len(indices)} entries) does not fit "
                             f"index_dtype=int32; use int64")
        values = data if dtype is None else data.astype(tf.as_dtype(dtype).as_numpy_dtype)
        return cls(tf.constant(np.asarray(indptr).astype(index_dtype)),
                   tf.constant(np.asarray(indices).astype(index_dtype)),
                   tf.constant(values), tf.constant(shape, tf.int64))

    def to_scipy(self):
        """As a `scipy.sparse.csr_array` (eager only)."""
        import scipy.sparse as sp

        return sp.csr_array((self.values.numpy(), self.indices.numpy(), self.indptr.numpy()),
                            shape=tuple(int(s) for s in self.dense_shape.numpy()))
