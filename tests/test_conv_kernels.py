"""Sparse-kernel 2-D convolution (csr_conv2d.pxi) against the float64 references."""
import numpy as np
import pytest

from sparsekeras import _kernels

import reference as ref
from reference import VALUE_DTYPES, INDEX_DTYPES

# (batch, h, w, cin, cout, kh, kw, strides, dilations, padding, density)
GEOMETRIES = [
    (2, 7, 9, 3, 5, 3, 3, (1, 1), (1, 1), "SAME", 0.4),
    (2, 7, 9, 3, 5, 3, 3, (1, 1), (1, 1), "VALID", 0.4),
    (1, 8, 8, 4, 6, 3, 3, (2, 2), (1, 1), "SAME", 0.5),
    (2, 9, 7, 4, 3, 3, 2, (2, 3), (1, 1), "VALID", 0.5),
    (1, 11, 10, 2, 4, 3, 3, (1, 1), (2, 2), "SAME", 0.6),
    (1, 11, 13, 3, 2, 2, 3, (2, 1), (2, 3), "VALID", 0.7),
    (3, 5, 5, 6, 7, 1, 1, (1, 1), (1, 1), "SAME", 0.3),     # 1x1
    (2, 6, 5, 8, 8, 1, 1, (2, 2), (1, 1), "VALID", 0.3),    # strided 1x1
    (1, 4, 70, 3, 4, 3, 3, (1, 1), (1, 1), "SAME", 0.5),    # width > one 64-wide tile
    (1, 3, 3, 2, 3, 5, 5, (1, 1), (1, 1), "SAME", 0.5),     # kernel larger than the image
    (2, 6, 6, 4, 5, 3, 3, (1, 1), (1, 1), "SAME", 1.0),     # density 1
    (2, 6, 6, 4, 5, 3, 3, (1, 1), (1, 1), "SAME", 0.0),     # nnz = 0
    (1, 5, 6, 3, 17, 2, 2, (1, 1), (1, 1), "VALID", 0.05),  # mostly empty output channels
    # strided: planes with row phases, flat tiles over several output rows
    (2, 20, 20, 8, 16, 3, 3, (2, 2), (1, 1), "SAME", 0.2),
    (2, 17, 19, 6, 9, 3, 5, (3, 2), (2, 1), "SAME", 0.4),   # stride and dilation mixed
    (2, 13, 11, 5, 7, 1, 1, (2, 2), (1, 1), "SAME", 0.3),   # strided 1x1, gathered pixels
    (1, 9, 130, 3, 4, 1, 1, (1, 3), (1, 1), "VALID", 0.5),  # strided 1x1, > one tile of pixels
]
GEO_IDS = [f"{g[0]}x{g[1]}x{g[2]}x{g[3]}-{g[4]}-k{g[5]}{g[6]}-s{g[7][0]}{g[7][1]}"
           f"-d{g[8][0]}{g[8][1]}-{g[9]}-{g[10]}" for g in GEOMETRIES]


def _case(geo, dtype, index_dtype, seed=0):
    b, h, w, cin, cout, kh, kw, strides, dil, padding, density = geo
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, h, w, cin)).astype(dtype)
    mask = rng.random((kh, kw, cin, cout)) < density
    kernel = (rng.standard_normal((kh, kw, cin, cout)) * mask).astype(dtype)
    ip, ix, d = ref.conv_kernel_csc(kernel, mask, index_dtype)
    return x, kernel, mask, (ip, ix, d.astype(dtype)), dict(strides=strides, dilations=dil,
                                                           padding=padding)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("geo", GEOMETRIES, ids=GEO_IDS)
def test_conv2d_forward(isa, geo, dtype, index_dtype):
    x, kernel, _, (ip, ix, d), kw = _case(geo, dtype, index_dtype)
    out = _kernels.csr_conv2d(x, ip, ix, d, kernel.shape, **kw)
    k = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    ref.assert_close(out, ref.ref_conv2d(x, kernel, **kw),
                     ref.ref_conv2d(np.abs(x), np.abs(kernel), **kw), dtype, k)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("geo", GEOMETRIES, ids=GEO_IDS)
def test_conv2d_gradients(isa, geo, dtype, index_dtype):
    x, kernel, mask, (ip, ix, d), kw = _case(geo, dtype, index_dtype, seed=1)
    out_shape = ref.ref_conv2d(x, kernel, **kw).shape
    dy = np.random.default_rng(2).standard_normal(out_shape).astype(dtype)
    dx_ref, dk_ref = ref.ref_conv2d_grads(x, kernel, dy, **kw)
    dx_mag, dk_mag = ref.ref_conv2d_grads(np.abs(x), np.abs(kernel), np.abs(dy), **kw)
    dx = _kernels.csr_conv2d_grad_input(dy, ip, ix, d, kernel.shape, x.shape, **kw)
    ref.assert_close(dx, dx_ref, dx_mag, dtype, kernel.shape[0] * kernel.shape[1] * kernel.shape[3])
    dv = _kernels.csr_conv2d_grad_values(x, dy, ip, ix, kernel.shape, **kw)
    # Stored values in CSC order: column (output channel) major, patch position within.
    _, _, dv_ref = ref.conv_kernel_csc(dk_ref, mask)
    _, _, dv_mag = ref.conv_kernel_csc(dk_mag, mask)
    ref.assert_close(dv, dv_ref, dv_mag, dtype, int(np.prod(out_shape[:3])))


STRIDE1 = [g for g in GEOMETRIES if g[7] == (1, 1)] + [
    (3, 23, 31, 16, 24, 3, 3, (1, 1), (2, 2), "SAME", 0.2),   # several bands, last one short
    (2, 30, 9, 40, 8, 5, 3, (1, 1), (1, 1), "VALID", 0.3),
]


@pytest.fixture
def band_knob():
    yield _kernels._set_conv_band
    _kernels._set_conv_band(1024)


@pytest.mark.parametrize("positions", [0, 1, 40, 1024])
@pytest.mark.parametrize("geo", STRIDE1, ids=lambda g: f"{g[0]}x{g[1]}x{g[2]}x{g[3]}-{g[4]}-"
                         f"k{g[5]}{g[6]}-d{g[8][0]}-{g[9]}-{g[10]}")
def test_conv2d_stride1_paths(band_knob, positions, geo):
    # Stride 1 runs fused per band of output rows (positions > 0: bands of about that many
    # output positions, 1 = one row per band) or through planes of the whole batch (0).
    band_knob(positions)
    x, kernel, mask, (ip, ix, d), kw = _case(geo, np.float64, np.int64, seed=7)
    want = ref.ref_conv2d(x, kernel, **kw)
    mag = ref.ref_conv2d(np.abs(x), np.abs(kernel), **kw)
    ref.assert_close(_kernels.csr_conv2d(x, ip, ix, d, kernel.shape, n_threads=2, **kw),
                     want, mag, np.float64, kernel.shape[0] * kernel.shape[1] * kernel.shape[2])
    dy = np.random.default_rng(8).standard_normal(want.shape)
    dx_ref, dk_ref = ref.ref_conv2d_grads(x, kernel, dy, **kw)
    dx_mag, dk_mag = ref.ref_conv2d_grads(np.abs(x), np.abs(kernel), np.abs(dy), **kw)
    dx = _kernels.csr_conv2d_grad_input(dy, ip, ix, d, kernel.shape, x.shape, n_threads=2, **kw)
    ref.assert_close(dx, dx_ref, dx_mag, np.float64,
                     kernel.shape[0] * kernel.shape[1] * kernel.shape[3])
    dv = _kernels.csr_conv2d_grad_values(x, dy, ip, ix, kernel.shape, n_threads=2, **kw)
    _, _, dv_ref = ref.conv_kernel_csc(dk_ref, mask)
    _, _, dv_mag = ref.conv_kernel_csc(dk_mag, mask)
    ref.assert_close(dv, dv_ref, dv_mag, np.float64, int(np.prod(want.shape[:3])))
    one = _kernels.csr_conv2d_grad_values(x, dy, ip, ix, kernel.shape, n_threads=1, **kw)
    np.testing.assert_array_equal(dv, one)


def test_conv2d_matches_tensorflow():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 13, 11, 5))
    kernel = rng.standard_normal((3, 3, 5, 7)) * (rng.random((3, 3, 5, 7)) < 0.3)
    ip, ix, d = ref.conv_kernel_csc(kernel)
    for strides, dil, pad in [((1, 1), (1, 1), "SAME"), ((2, 2), (1, 1), "SAME"),
                              ((1, 2), (1, 1), "VALID"), ((1, 1), (2, 2), "VALID")]:
        out = _kernels.csr_conv2d(x, ip, ix, d, kernel.shape, strides=strides, padding=pad,
                                  dilations=dil)
        want = tf.nn.conv2d(x, kernel, strides=strides, padding=pad, dilations=dil).numpy()
        np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
@pytest.mark.parametrize("fn", ["forward", "grad_input", "grad_values"])
def test_conv2d_threads_bitwise(fn, strides):
    geo = (4, 20, 30, 16, 24, 3, 3, strides, (1, 1), "SAME", 0.2)
    x, kernel, _, (ip, ix, d), kw = _case(geo, np.float32, np.int32, seed=3)
    dy = np.random.default_rng(4).standard_normal(
        (4, 20 // strides[0], 30 // strides[1], 24)).astype(np.float32)
    def run(nt):
        if fn == "forward":
            return _kernels.csr_conv2d(x, ip, ix, d, kernel.shape, n_threads=nt, **kw)
        if fn == "grad_input":
            return _kernels.csr_conv2d_grad_input(dy, ip, ix, d, kernel.shape, x.shape,
                                                  n_threads=nt, **kw)
        return _kernels.csr_conv2d_grad_values(x, dy, ip, ix, kernel.shape, n_threads=nt, **kw)
    one = run(1)
    for nt in (2, 3):
        np.testing.assert_array_equal(run(nt), one)


def test_conv2d_depthwise_as_sparse_kernel():
    # A depthwise kernel (kh, kw, C, M) is a sparse (kh, kw, C, C*M) kernel.
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(6)
    c, m = 5, 2
    x = rng.standard_normal((2, 9, 8, c))
    dk = rng.standard_normal((3, 3, c, m)) * (rng.random((3, 3, c, m)) < 0.6)
    full = np.zeros((3, 3, c, c * m))
    for ch in range(c):
        full[:, :, ch, ch * m:(ch + 1) * m] = dk[:, :, ch, :]
    ip, ix, d = ref.conv_kernel_csc(full)
    out = _kernels.csr_conv2d(x, ip, ix, d, full.shape, strides=2, padding="SAME")
    want = tf.nn.depthwise_conv2d(x, dk, strides=[1, 2, 2, 1], padding="SAME").numpy()
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)


def test_conv2d_nan_propagates():
    x = np.ones((1, 4, 4, 2))
    x[0, 1, 1, 0] = np.nan
    kernel = np.ones((3, 3, 2, 1))
    ip, ix, d = ref.conv_kernel_csc(kernel)
    out = _kernels.csr_conv2d(x, ip, ix, d, kernel.shape, padding="SAME")
    np.testing.assert_array_equal(np.isnan(out[0, :, :, 0]), np.isnan(ref.ref_conv2d(x, kernel, padding="SAME")[0, :, :, 0]))
    assert np.isnan(out).sum() == 9


def test_conv2d_empty_batch():
    kernel = np.ones((3, 3, 2, 4))
    ip, ix, d = ref.conv_kernel_csc(kernel)
    out = _kernels.csr_conv2d(np.zeros((0, 5, 5, 2)), ip, ix, d, kernel.shape, padding="SAME")
    assert out.shape == (0, 5, 5, 4)


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.zeros((2, 5, 5))), "x must be 4-D"),
    (dict(x=np.zeros((2, 5, 5, 3))), "x has 3 channels"),
    (dict(padding="FULL"), "padding must be 'SAME' or 'VALID'"),
    (dict(strides=0), "strides must be positive"),
    (dict(dilations=(1, -1)), "dilations must be positive"),
    (dict(x=np.zeros((1, 2, 2, 2))), "at least the dilated kernel size"),
    (dict(indices=np.array([0, 18, 2, 3])), r"indices must lie in \[0, 18\); received indices\[1\]=18"),
    (dict(indptr=np.array([0, 3, 2, 4])), "indptr must be non-decreasing"),
    (dict(indptr=np.array([0, 2, 4])), "kernel.indptr must have n_rows \\+ 1 = 4 entries"),
    (dict(data=np.ones(3)), "kernel.data must have one entry per index"),
    (dict(kernel_shape=(3, 3, 2)), "kernel_shape must be"),
])
def test_conv2d_bad_input(bad, match):
    args = dict(x=np.zeros((1, 5, 5, 2)), indptr=np.array([0, 1, 2, 4]),
                indices=np.array([0, 5, 2, 3]), data=np.ones(4), kernel_shape=(3, 3, 2, 3),
                padding="VALID")
    args.update(bad)
    kshape = args.pop("kernel_shape")
    with pytest.raises(ValueError, match=match):
        _kernels.csr_conv2d(args.pop("x"), args.pop("indptr"), args.pop("indices"),
                            args.pop("data"), kshape, **args)


def test_conv2d_grad_input_bad_dy_shape():
    kernel = np.ones((3, 3, 2, 4))
    ip, ix, d = ref.conv_kernel_csc(kernel)
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 5, 5, 4\)"):
        _kernels.csr_conv2d_grad_input(np.zeros((1, 5, 5, 3)), ip, ix, d, kernel.shape,
                                       (1, 5, 5, 2), padding="SAME")
