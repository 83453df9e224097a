"""The child-process side of tests/test_fuzz.py: builds each case (a small JSON-able dict drawn
by hypothesis), runs it, and classifies the outcome.

Runs in a process started with the multiprocessing "spawn" context (libgomp hangs in a child of
fork once the parent used OpenMP), so an abort or a hang kills this process only; the parent
sees it through the pipe and names the case.

Outcome categories:
    ok            valid input, result equal to the float64 NumPy reference
    named         invalid input refused with ValueError / TypeError / InvalidArgumentError whose
                  message names an argument and carries a value
    wrong         valid input, result differs from the reference
    silent        invalid input accepted (a result returned)
    unnamed       invalid input refused with a message that names no argument (or an
                  unexpected exception type)
    refused       valid input refused
(abort and hang are seen by the parent.)
"""
import os
import re

import numpy as np

# Mutations that leave the input valid (the result is compared with the reference).
VALID = {"none", "unsorted", "duplicate", "explicit_zero", "nan", "empty"}
# Valid inputs whose result cannot be represented (more than 2**63 - 1 elements): an error that
# names the arguments is the right answer, as is a correct result.
HUGE = {"shape_huge_cols", "dense_huge"}

BIG = [2**31 - 1, 2**31, 2**32, -2**32, 2**63 - 1, -2**63, -1]

_ARG = (r"(?:\b(?:a|b|x|w|u|v|ut|vt|dy|m|pattern|kernel|sparse tensor)"
        r"(?:\.(?:indptr|indices|values|data|dense_shape|shape|row|col)|\[|:| must| has| \(|'s| and|\.|$))")
_FIELD = r"indptr|indices|dense_shape|index_dtype|block|input_sizes|kernel_shape|values|data|shape"
NAMED = re.compile(rf"{_ARG}|\b(?:{_FIELD})\b")


def _core_message(msg):
    """The error text without the graph traceback TensorFlow puts first ("Detected at node ...
    defined at ...", indented File lines), which could name anything."""
    if msg.startswith("in user code:"):
        # autograph: the traceback, then the original "Type: message" as the last lines
        tail = msg.rsplit("\n\n", 1)[-1].strip()
        return re.sub(r"^\w+(Error|Exception): ", "", tail)
    lines = [ln for ln in msg.splitlines()
             if ln.strip() and not ln.startswith((" ", "\t")) and not ln.startswith(
                 ("Detected at node", "Graph execution error"))]
    return "\n".join(lines)


def _named(msg):
    msg = _core_message(msg)
    return bool(NAMED.search(msg)) and bool(re.search(r"\d|dtype|received", msg))


def _csr_of(dense, rng, mutation):
    """CSR arrays (indptr, indices, values) of a dense matrix's nonzeros, with the valid
    variations (unsorted, duplicate, explicit_zero) applied."""
    m, k = dense.shape
    rows, cols = np.nonzero((dense != 0) | np.isnan(dense))
    vals = dense[rows, cols].astype(np.float64)
    if mutation == "explicit_zero" and m and k:
        i, j = rng.integers(m), rng.integers(k)
        if dense[i, j] == 0:
            rows, cols, vals = np.append(rows, i), np.append(cols, j), np.append(vals, 0.0)
    if mutation == "duplicate" and len(vals):
        p = rng.integers(len(vals))
        half = vals[p] / 2
        vals[p] = half
        rows, cols, vals = np.append(rows, rows[p]), np.append(cols, cols[p]), np.append(vals, half)
    order = np.lexsort((cols, rows))
    if mutation == "unsorted":
        order = np.lexsort((rng.permutation(len(rows)), rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    indptr = np.zeros(m + 1, np.int64)
    np.add.at(indptr, rows + 1, 1)
    return np.cumsum(indptr), cols.astype(np.int64), vals


def _mutate(case, ip, ix, vals, shape):
    """Applies an invalid mutation to CSR-like arrays (lists of Python ints: values beyond
    int64 stay exact). Returns (ip, ix, vals, shape)."""
    mut, param = case["mutation"], case["param"]
    ip, ix, vals, shape = list(map(int, ip)), list(map(int, ix)), list(vals), list(shape)
    nnz = len(ix)
    if mut == "indptr0":
        ip[0] = param or 1
    elif mut == "indptr_dec" and len(ip) >= 3:
        ip[1] = nnz + 1
    elif mut == "indptr_short":
        ip = ip[:-1]
    elif mut == "indptr_long":
        ip = ip + [nnz]
    elif mut == "indptr_last":
        ip[-1] += param or 1
    elif mut == "index_oob" and nnz:
        j = param % nnz
        choice = (param // 7) % (len(BIG) + 2)
        ix[j] = shape[1] if choice == len(BIG) else (shape[1] + 1 if choice == len(BIG) + 1 else
                                                      BIG[choice] + (ix[j] if BIG[choice] == 2**32 else 0))
    elif mut == "values_len":
        vals = vals[:-1] if (param % 2 and vals) else vals + [1.0]
    elif mut == "shape_neg":
        shape[param % 2] = -1 - param % 3
    elif mut == "shape_huge_rows":
        shape[0] = [2**62, 2**63 - 1][param % 2]  # (2**31 rows of a SparseTensor: a 17 GB indptr)
    elif mut == "shape_huge_cols":
        # Sizes no allocator can satisfy, so a valid case fails fast (never 2**31 + 7: a
        # transpose of that is a legitimate 17 GB allocation).
        shape[1] = [2**62, 2**63 - 1][param % 2]
    elif mut == "shape_len":
        shape = shape + [1] if param % 2 else shape[:1]
    elif mut in ("index_dtype", "dense_inner", "dense_huge"):
        pass  # applied by the caller
    else:
        case["mutation"] = "none"  # not applicable here: the case is valid
    return ip, ix, vals, shape


# Mutations that have nothing to act on for a target (no dense operand, no dense_shape): the
# case is then valid.
NOT_APPLICABLE = {
    "linalg.transpose": {"dense_inner", "dense_huge"},
    "linalg.to_dense": {"dense_inner", "dense_huge"},
    "ops.transpose": {"dense_inner", "dense_huge"},
    "ops.csr_conv2d_1x1": {"shape_neg", "shape_huge_rows", "shape_huge_cols", "shape_len",
                           "dense_huge"},
    "linalg.sddmm": {"dense_huge", "values_len"},  # the pattern's values are not read
    "ops.sddmm": {"dense_huge", "values_len"},
    "ops.csr_csr_matmul": {"dense_huge"},
    # tf.SparseTensor's own constructor checks these, in its own words, before our code runs
    "ops.matmul(SparseTensor,D)": {"values_len", "shape_len"},
}


class Case:
    """The operands of one case, built from its dict."""

    def __init__(self, case):
        self.case = case
        rng = np.random.default_rng(case["seed"])
        m, k = case["m"], case["k"]
        if case["mutation"] == "empty":
            m, k = (0, k) if case["param"] % 2 else (m, 0)
        dense = rng.standard_normal((m, k)) * (rng.random((m, k)) < case["density"])
        if case["mutation"] == "nan" and dense.size:
            p = rng.integers(dense.size)
            dense.flat[p] = [np.nan, np.inf, -np.inf][case["param"] % 3]
        self.dense = dense
        self.rng = rng
        self.n = case["n"]

    def csr(self, of=None):
        dense = self.dense if of is None else of
        ip, ix, vals = _csr_of(dense, self.rng, self.case["mutation"])
        return _mutate(self.case, ip, ix, vals, dense.shape)

    def operand(self, rows, cols=None):
        cols = self.n if cols is None else cols
        return self.rng.standard_normal((rows, cols))


def _index_array(values, dtype):
    """values as an index array of dtype, or int64 where dtype cannot hold them (the
    mutation's point is the value, not an overflow in the harness)."""
    if dtype in ("int32", "int64"):
        lo, hi = (-2**31, 2**31 - 1) if dtype == "int32" else (-2**63, 2**63 - 1)
        if all(lo <= v <= hi for v in values):
            return np.array(values, dtype)
        return np.array([max(min(v, 2**63 - 1), -2**63) for v in values], np.int64)
    if dtype == "bool":
        return np.array(values, np.int64).astype(bool)
    return np.array(values, np.int64).astype(dtype)


def _close(got, want, f32):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return f"shape {got.shape} != reference {want.shape}"
    if got.size == 0:
        return None
    tol = 1e-4 if f32 else 1e-9
    scale = max(1.0, float(np.nanmax(np.abs(np.where(np.isinf(want), 0, want)))) if want.size else 1.0)
    if not np.allclose(got, want, rtol=tol, atol=tol * scale, equal_nan=True):
        bad = np.argwhere(~np.isclose(got, want, rtol=tol, atol=tol * scale, equal_nan=True))[0]
        return f"at {tuple(bad)}: {got[tuple(bad)]!r} != reference {want[tuple(bad)]!r}"
    return None


# ---- NumPy level -------------------------------------------------------------------------

def _scipy(case, c, ip, ix, vals, shape):
    """A scipy array of the (possibly mutated) structure in case["fmt"], built valid and then
    given the mutated arrays (scipy's constructors would refuse some of them)."""
    import scipy.sparse as sp

    fmt = case["fmt"]
    if fmt == "coo":
        rows = np.repeat(np.arange(len(ip) - 1), np.diff(np.array(ip, np.int64)).clip(0)) \
            if all(0 <= a for a in ip) and len(ip) >= 1 else np.zeros(len(ix), np.int64)
        rows = rows[:len(ix)] if len(rows) >= len(ix) else np.concatenate([rows, np.zeros(len(ix) - len(rows), np.int64)])
        out = sp.coo_array((np.ones(1), ([0], [0])), shape=(1, 1))
        if case["mutation"].startswith("indptr"):
            if len(rows):
                rows[0] = -1 if case["param"] % 2 else 10**8  # a COO has no indptr: bad row
                case["mutation"] = "index_oob"
            else:
                case["mutation"] = "none"
        out.coords = (rows.astype(np.int64), np.clip(np.array(ix, object), -2**63, 2**63 - 1).astype(np.int64))
        out.data = np.array(vals, np.float64)
        out._shape = tuple(shape)
        return out
    if fmt == "csc":
        # CSC arrays of the matrix = CSR arrays of its transpose: (ip, ix) were built on dense.T.
        out = sp.csc_array((np.ones(1), [0], [0, 1]), shape=(1, 1))
    else:
        out = sp.csr_array((np.ones(1), [0], [0, 1]), shape=(1, 1))
    dt = case["index_dtype"] if case["index_dtype"] in ("int32", "int64") else "int64"
    out.indptr = _index_array(ip, dt)
    out.indices = _index_array(ix, dt)
    out.data = np.array(vals, np.float64)
    out._shape = tuple(shape) if fmt == "csr" else (shape[1], shape[0])
    return out


def run_numpy(case):
    from sparsekeras import linalg

    c = Case(case)
    tgt = case["target"]
    if case["mutation"].startswith("shape_") or case["mutation"] in ("index_dtype",):
        case["mutation"] = "none"  # scipy owns the shape and index dtypes
    of = c.dense.T if case["fmt"] == "csc" else c.dense
    ip, ix, vals, shape = c.csr(of)
    a = _scipy(case, c, ip, ix, vals, shape)
    if tgt == "linalg.matmul(S,D)":
        d = c.operand(c.dense.shape[1] + (1 if case["mutation"] == "dense_inner" else 0))
        return (lambda: linalg.matmul(a, d)), (lambda: c.dense @ d), False
    if tgt == "linalg.matmul(D,S)":
        d = c.operand(c.n, c.dense.shape[0] + (1 if case["mutation"] == "dense_inner" else 0))
        return (lambda: linalg.matmul(d, a)), (lambda: d @ c.dense), False
    if tgt == "linalg.sddmm":
        u = c.operand(c.dense.shape[0], 3)
        v = c.operand(c.dense.shape[1] + (1 if case["mutation"] == "dense_inner" else 0), 3)
        # Stored entries (explicit zeros and duplicates included) of the structure passed.
        mask = _counts(ip, ix, of.shape)
        mask = mask.T if case["fmt"] == "csc" else mask
        if case["mutation"] in ("duplicate", "explicit_zero", "nan"):
            case["mutation"] = "none_structure"
        return ((lambda: linalg.sddmm(a, u, v).toarray()),
                (lambda: (u @ v.T) * mask), False)
    if tgt == "linalg.transpose":
        return (lambda: linalg.transpose(a).toarray()), (lambda: c.dense.T), False
    return (lambda: linalg.to_dense(a)), (lambda: c.dense), False


# ---- TensorFlow ops ----------------------------------------------------------------------

def run_ops(case):
    import tensorflow as tf
    from sparsekeras import ops

    c = Case(case)
    tgt, mode = case["target"], case["mode"]
    idt = case["index_dtype"]
    m, k = c.dense.shape
    inner_bump = 1 if case["mutation"] == "dense_inner" else 0
    huge_dense = case["mutation"] == "dense_huge"

    def arrays(of=None):
        ip, ix, vals, shape = c.csr(of)
        ip, ix = _index_array(ip, idt), _index_array(ix, idt)
        if ip.dtype != ix.dtype and {ip.dtype, ix.dtype} <= {np.dtype(np.int32), np.dtype(np.int64)}:
            ip, ix = ip.astype(np.int64), ix.astype(np.int64)  # a value int32 cannot hold
        return (ip, ix, np.array(vals, np.float32),
                np.array([max(min(s, 2**63 - 1), -2**63) for s in shape], np.int64))

    def dense_operand(rows, cols):
        if huge_dense:
            if rows == 0:
                return _Zeros((0, 2**62))
            case["mutation"] = "none"
        return c.operand(rows, cols).astype(np.float32)

    if tgt == "ops.matmul(S,D)" or tgt == "ops.matmul(SparseTensor,D)":
        ip, ix, vals, shape = arrays()
        d = dense_operand(k + inner_bump, c.n)
        st = tgt == "ops.matmul(SparseTensor,D)"

        def fn(ip, ix, vals, shape, d):
            if st:
                rows = np.repeat(np.arange(max(len(ip) - 1, 0)), np.diff(ip.astype(np.int64)).clip(0))
                return None  # built below
            return ops.matmul(ops.CSRTensor(ip, ix, vals, shape), d)
        if st:
            rows = _coo_rows(ip, len(ix), case)
            coo = np.stack([rows, ix.astype(np.int64)], axis=1) if len(ix) else np.zeros((0, 2), np.int64)

            if case["mutation"] == "index_dtype":
                case["mutation"] = "none"  # a SparseTensor's indices are always int64
            if case["mutation"] == "shape_huge_rows" and len(ip) - 1 == m:
                case["mutation"] = "shape_huge_cols"  # valid, but its CSR form cannot exist

            def fn(coo, vals, shape, d):
                return ops.matmul(tf.SparseTensor(coo, vals, shape), d)
            args = [coo, vals, shape, d]
        else:
            args = [ip, ix, vals, shape, d]
        ref = lambda: c.dense @ d.astype(np.float64)  # noqa: E731
    elif tgt == "ops.matmul(D,S)":
        ip, ix, vals, shape = arrays()
        x = dense_operand(c.n, m + inner_bump) if not huge_dense or m else \
            _Zeros((2**62, 0))

        def fn(ip, ix, vals, shape, x):
            return ops.matmul(x, ops.CSRTensor(ip, ix, vals, shape))
        args = [ip, ix, vals, shape, x]
        ref = lambda: x.astype(np.float64) @ c.dense  # noqa: E731
    elif tgt == "ops.dense_csc_matmul":
        ip, ix, vals, shape = arrays(c.dense.T)  # CSC of W (m x k) = CSR of W^T
        shape = shape[::-1].copy() if len(shape) == 2 else shape
        x = dense_operand(c.n, m + inner_bump) if not huge_dense or m else \
            _Zeros((2**62, 0))

        def fn(ip, ix, vals, shape, x):
            return ops.dense_csc_matmul(x, ip, ix, vals, shape)
        args = [ip, ix, vals, shape, x]
        ref = lambda: x.astype(np.float64) @ c.dense  # noqa: E731
    elif tgt == "ops.dense_csr_matmul":
        ip, ix, vals, shape = arrays()
        x = dense_operand(c.n, m + inner_bump) if not huge_dense or m else \
            _Zeros((2**62, 0))

        def fn(ip, ix, vals, shape, x):
            return ops.dense_csr_matmul(x, ip, ix, vals, shape)
        args = [ip, ix, vals, shape, x]
        ref = lambda: x.astype(np.float64) @ c.dense  # noqa: E731
    elif tgt == "ops.sddmm":
        ip, ix, vals, shape = arrays()
        u = c.operand(m, 3).astype(np.float32)
        v = c.operand(k + inner_bump, 3).astype(np.float32)
        if case["mutation"] in ("duplicate", "explicit_zero", "nan"):
            case["mutation"] = "none_structure"
        mask = _counts(ip, ix, c.dense.shape)

        def fn(ip, ix, vals, shape, u, v):
            t = ops.sddmm(ops.CSRTensor(ip, ix, vals, shape), u, v)
            return t.indptr, t.indices, t.values, t.dense_shape
        args = [ip, ix, vals, shape, u, v]
        ref = lambda: (u.astype(np.float64) @ v.astype(np.float64).T) * mask  # noqa: E731
    elif tgt == "ops.transpose":
        ip, ix, vals, shape = arrays()

        def fn(ip, ix, vals, shape):
            t = ops.transpose(ops.CSRTensor(ip, ix, vals, shape))
            return t.indptr, t.indices, t.values, t.dense_shape
        args = [ip, ix, vals, shape]
        ref = lambda: c.dense.T  # noqa: E731
    elif tgt == "ops.csr_csr_matmul":
        ip, ix, vals, shape = arrays()
        w = c.operand(k + inner_bump, c.n) * (c.rng.random((k + inner_bump, c.n)) < 0.5)
        wr, wc = np.nonzero(w)
        w_ip = np.concatenate([[0], np.cumsum(np.bincount(wr, minlength=w.shape[0]))]).astype(ip.dtype if ip.dtype in (np.int32, np.int64) else np.int64)
        w_ix = wc.astype(w_ip.dtype)
        w_vals = w[wr, wc].astype(np.float32)
        w_shape = np.array(w.shape, np.int64)

        def fn(ip, ix, vals, shape, w_ip, w_ix, w_vals, w_shape):
            return ops.csr_csr_matmul(ops.CSRTensor(ip, ix, vals, shape),
                                      ops.CSRTensor(w_ip, w_ix, w_vals, w_shape))
        args = [ip, ix, vals, shape, w_ip, w_ix, w_vals, w_shape]
        def ref():
            # Only stored pairs are multiplied (a NaN in A meets W's unstored zeros nowhere).
            a_d, w_d = c.dense, w.astype(np.float32).astype(np.float64)
            a_s = (a_d != 0) | np.isnan(a_d)
            prod = np.where(a_s[:, :, None] & (w_d != 0)[None, :, :],
                            a_d[:, :, None] * w_d[None, :, :], 0.0)
            return prod.sum(axis=1)
    elif tgt == "ops.dense_bcsc_matmul":
        from sparsekeras import linalg

        block = 2 if k and k % 2 == 0 else 1
        # (a NaN is != 0: its block is stored, with the NaN)
        b_ip, b_ix, b_vals = linalg.bcsc_from_dense(c.dense, block, index_dtype=np.int64)
        # The block structure is a CSR of (groups x K): mutate it as such, then name the
        # dense_shape [K, N].
        saved = case["mutation"]
        if saved in ("unsorted", "duplicate", "explicit_zero"):
            case["mutation"] = "none"  # block-CSC stores sorted, distinct blocks here
        ip, ix, vals, shape = _mutate(case, b_ip, b_ix, list(b_vals), [k // block, m])
        dense_shape = [shape[1], shape[0] * block] if len(shape) == 2 else shape
        ip, ix = _index_array(ip, idt), _index_array(ix, idt)
        if ip.dtype != ix.dtype and {ip.dtype, ix.dtype} <= {np.dtype(np.int32), np.dtype(np.int64)}:
            ip, ix = ip.astype(np.int64), ix.astype(np.int64)
        vals = np.array(vals, np.float32)
        shape = np.array([max(min(q, 2**63 - 1), -2**63) for q in dense_shape], np.int64)
        x = dense_operand(c.n, m + inner_bump) if not huge_dense or m else \
            _Zeros((2**62, 0))

        def fn(ip, ix, vals, shape, x):
            return ops.dense_bcsc_matmul(x, ip, ix, vals, shape, block)
        args = [ip, ix, vals, shape, x]
        ref = lambda: x.astype(np.float64) @ c.dense  # noqa: E731
        kshape = block
    elif tgt == "ops.csr_conv2d_1x1":
        # A 1 x 1 convolution with kernel W (in = m, out = k) is x (.., m) @ W.
        ip, ix, vals, shape = arrays(c.dense.T)
        x = c.operand(c.n * 2, m + inner_bump).astype(np.float32).reshape(c.n, 2, 1, m + inner_bump)
        kshape = (1, 1, m, k)

        def fn(ip, ix, vals, shape, x):
            return ops.csr_conv2d(x, ip, ix, vals, kshape)
        args = [ip, ix, vals, shape, x]
        ref = lambda: (x.reshape(c.n * 2, x.shape[-1]).astype(np.float64) @ c.dense).reshape(c.n, 2, 1, k)  # noqa: E731
    else:
        raise AssertionError(tgt)

    f32 = True
    tensor_args = [a for a in args]

    def call():
        if mode == "eager":
            out = fn(*[_tf(a) for a in tensor_args])
        elif mode == "graph":
            # Unknown shapes: one trace per target and dtypes serves every case.
            sig = [tf.TensorSpec([None] * a.ndim, tf.as_dtype(a.dtype)) for a in tensor_args]
            key = (tgt, tuple((s.dtype, s.shape.rank) for s in sig),
                   kshape if tgt in ("ops.csr_conv2d_1x1", "ops.dense_bcsc_matmul") else None)
            if key not in _GRAPH_FNS:
                _GRAPH_FNS[key] = tf.function(fn, input_signature=sig)
            out = _GRAPH_FNS[key](*[_tf(a) for a in tensor_args])
        elif mode == "static":
            out = tf.function(lambda: fn(*[_tf(a) for a in tensor_args]))()
        else:  # grad: gradients w.r.t. every float operand
            consts = [_tf(a) for a in tensor_args]
            with tf.GradientTape() as tape:
                for t in consts:
                    if t.dtype.is_floating:
                        tape.watch(t)
                out = fn(*consts)
                loss = tf.reduce_sum(out[2] if isinstance(out, tuple) else out)
            grads = tape.gradient(loss, [t for t in consts if t.dtype.is_floating])
            for g in grads:
                if g is not None:
                    tf.convert_to_tensor(g).numpy()
        if isinstance(out, tuple):  # a CSRTensor's parts: densified here, in NumPy
            return _dense_of(*[t.numpy() for t in out])
        if max(out.shape, default=0) > 2**40:  # zero-size, too large a shape for NumPy
            return np.empty(0)
        return out.numpy()

    return call, ref, f32


_GRAPH_FNS = {}


def _dense_of(ip, ix, vals, shape):
    if max([int(q) for q in shape], default=0) > 2**40:
        return np.empty(0)  # a valid, huge result: nothing to compare in memory
    out = np.zeros([int(q) for q in shape])
    rows = np.repeat(np.arange(len(ip) - 1), np.diff(ip.astype(np.int64)))
    np.add.at(out, (rows, ix.astype(np.int64)), vals.astype(np.float64))
    return out


class _Zeros:
    """A zero-size operand with a huge dimension ((0, 2**62)): NumPy cannot hold its shape
    (it multiplies the dimensions before the zero), TensorFlow can; built with tf.zeros."""

    def __init__(self, shape):
        self.shape, self.ndim, self.dtype = tuple(shape), len(shape), np.dtype(np.float32)


def _tf(a):
    import tensorflow as tf

    return tf.zeros(a.shape, tf.float32) if isinstance(a, _Zeros) else tf.constant(a)


def _counts(ip, ix, shape):
    """How many times each (i, j) is stored in a valid CSR structure (zeros if invalid: the
    case then raises and the reference is not used)."""
    out = np.zeros(shape)
    ip = np.asarray(ip, np.int64)
    ix = np.asarray(ix, np.int64)
    if len(ip) != shape[0] + 1 or (len(ix) and (ix.min() < 0 or ix.max() >= shape[1])) or \
            ip[0] != 0 or ip[-1] != len(ix) or (np.diff(ip) < 0).any():
        return out
    rows = np.repeat(np.arange(shape[0]), np.diff(ip))
    np.add.at(out, (rows, ix), 1)
    return out


def _coo_rows(ip, nnz, case):
    ip = [int(v) for v in ip]
    if len(ip) >= 1 and all(0 <= v <= nnz for v in ip) and all(b >= a for a, b in zip(ip, ip[1:])):
        rows = np.repeat(np.arange(len(ip) - 1), np.diff(np.array(ip, np.int64)))
        if len(rows) == nnz:
            if case["mutation"].startswith("indptr"):
                case["mutation"] = "none"  # rows still inside the shape: a valid SparseTensor
            return rows.astype(np.int64)
    # A SparseTensor has no indptr: a broken indptr becomes a row outside the shape.
    rows = np.zeros(nnz, np.int64)
    if not nnz and case["mutation"].startswith("indptr"):
        case["mutation"] = "none"
    if nnz:
        rows[0] = [-1, 2**32, 10**8][case["param"] % 3]
        case["mutation"] = "index_oob"
    return rows


def run_case(case):
    """(category, detail) for one case."""
    import tensorflow as tf

    case = dict(case)
    if case.get("mutation") in NOT_APPLICABLE.get(case["target"], ()):
        case["mutation"] = "none"
    if case["target"] == "ops.matmul(SparseTensor,D)" and case.get("mode") != "graph" and \
            case.get("mutation") == "shape_neg":
        case["mutation"] = "none"  # a constant negative dense_shape: tf.SparseTensor refuses it
    if case["target"] == "__abort__":  # the harness's own test
        os.abort()
    if case["target"] == "__hang__":
        import time
        time.sleep(3600)
    try:
        if case["target"].startswith("linalg."):
            call, ref, f32 = run_numpy(case)
        else:
            call, ref, f32 = run_ops(case)
    except Exception as e:  # building the case: a harness problem, reported as such
        return "harness", f"{type(e).__name__}: {e}"
    mut = case["mutation"]
    valid = mut in VALID or mut == "none_structure"
    huge = mut in HUGE
    try:
        got = call()
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
        msg = str(e)
        if isinstance(e, tf.errors.InvalidArgumentError):
            msg = e.message
        if valid and not huge:
            return "refused", f"{mut}: {type(e).__name__}: {_core_message(msg)[:600]}"
        if not _named(msg):
            return "unnamed", f"{mut}: {type(e).__name__}: {_core_message(msg)[:600]}"
        return "named", None
    except tf.errors.ResourceExhaustedError as e:
        if huge:
            return "named", None
        return ("refused" if valid else "unnamed"), f"{mut}: ResourceExhaustedError: {str(e)[:300]}"
    except Exception as e:
        return ("refused" if valid else "unnamed"), f"{mut}: {type(e).__name__}: {str(e)[:400]}"
    if not valid and not huge:
        return "silent", f"{mut}: returned shape {np.shape(got)}"
    if huge:
        return "ok", None  # a result for a valid, huge input: nothing to compare in memory
    if case["mode"] == "grad":
        return "ok", None  # gradients ran; values are compared in the forward modes
    diff = _close(got, ref(), f32 and not case["target"].startswith("linalg."))
    if diff is not None:
        return "wrong", f"{mut}: {diff}"
    return "ok", None


def serve(conn):
    """Runs batches of cases sent over conn until it receives None."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # noqa: F401  (loaded once, before the first case is timed)
    import sparsekeras  # noqa: F401

    conn.send(("ready", None, None))
    while True:
        batch = conn.recv()
        if batch is None:
            return
        for i, case in enumerate(batch):
            conn.send(("start", i, None))
            try:
                outcome = run_case(case)
            except BaseException as e:  # noqa: BLE001 - reported, never lost
                outcome = ("harness", f"{type(e).__name__}: {e}")
            conn.send(("done", i, outcome))
        conn.send(("batch", None, None))
