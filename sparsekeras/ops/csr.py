"""CSRTensor: a compressed-sparse-row matrix as a TensorFlow extension type.

It passes through `tf.function` signatures, `tf.data`, Keras and SavedModel like a tensor, and
converts from/to `tf.SparseTensor`, `scipy.sparse` and dense tensors.
"""
import numpy as np
import tensorflow as tf

__all__ = ["CSRTensor"]

_INDEX_DTYPES = (tf.int32, tf.int64)


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
        self.indptr.shape.assert_has_rank(1)
        self.indices.shape.assert_has_rank(1)
        self.values.shape.assert_has_rank(1)
        self.dense_shape.shape.assert_is_compatible_with([2])

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
    def from_sparse_tensor(cls, st, index_dtype=tf.int64):
        """From a 2-D `tf.SparseTensor` (reordered to row-major order first)."""
        st = tf.sparse.reorder(st)
        if st.shape.rank is not None and st.shape.rank != 2:
            raise ValueError(f"CSRTensor.from_sparse_tensor needs a 2-D SparseTensor; received rank {st.shape.rank}")
        rows = st.indices[:, 0]
        n_rows = st.dense_shape[0]
        counts = tf.math.bincount(tf.cast(rows, tf.int32), minlength=tf.cast(n_rows, tf.int32),
                                  maxlength=tf.cast(n_rows, tf.int32), dtype=tf.int64)
        indptr = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(counts)], axis=0)
        return cls(tf.cast(indptr, index_dtype), tf.cast(st.indices[:, 1], index_dtype),
                   st.values, tf.cast(st.dense_shape, tf.int64))

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
    def from_scipy(cls, m, dtype=None, index_dtype=None):
        """From a scipy.sparse matrix or array (any format; converted to CSR)."""
        import scipy.sparse as sp

        if not sp.issparse(m) or m.ndim != 2:
            raise TypeError(f"CSRTensor.from_scipy needs a 2-D scipy.sparse matrix; received {type(m).__name__}")
        m = m.tocsr()
        if index_dtype is None:
            index_dtype = np.int32 if m.indices.dtype == np.int32 and m.indptr.dtype == np.int32 else np.int64
        values = m.data if dtype is None else m.data.astype(tf.as_dtype(dtype).as_numpy_dtype)
        return cls(tf.constant(m.indptr.astype(index_dtype)), tf.constant(m.indices.astype(index_dtype)),
                   tf.constant(values), tf.constant(m.shape, tf.int64))

    def to_scipy(self):
        """As a `scipy.sparse.csr_array` (eager only)."""
        import scipy.sparse as sp

        return sp.csr_array((self.values.numpy(), self.indices.numpy(), self.indptr.numpy()),
                            shape=tuple(int(s) for s in self.dense_shape.numpy()))
