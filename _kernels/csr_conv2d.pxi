# csr_conv2d: 2-D convolution with a sparse (pruned) kernel, NHWC activations.
#
# Formulation (direct sparse convolution over channel-major planes, as XNNPACK's sparse path):
# the input is first rewritten once as zero-padded channel planes, T[b][c][h][phase][q], where
# `phase` splits the columns by the horizontal stride (column q * stride_w + phase of the padded
# image), so that for every kernel tap (i, j, c) the inputs of a run of consecutive output pixels
# of one output row are *contiguous* in T. A stored kernel entry then becomes a single offset
# into T, and an output row tile of channel o is
#     out[o, ow0:ow0+w] = sum_{p in column o of W} W_p * T[base(b, oh) + off_p + ow0 : +w],
# which is the row-panel SpMM microkernel of csr_matmul with a panel row stride of 1: the tile
# stays in vector registers while the entries stream by, and the rows of T it reads (k_h rows of
# every input channel, ~45 KiB for a 64-channel 56-wide image) stay in L1/L2. No im2col matrix is
# built: T has the size of the padded input.
#
# Stride 1 (the common case) never builds T for the whole batch: each work item (image, band of
# output rows) builds the band's rows of T in a per-thread panel and computes from it at once
# (_conv_banded, _grad_values_banded), so the activations cross memory once each way.
#
# The input gradient is the same kernel run on dy (zero-dilated by the stride, padded by
# (k - 1) * dil - pad) with the flipped, transposed kernel; the values gradient is a blocked
# SDDMM: for each stored entry, the dot of its T rows with the dy rows of its output channel.


cdef extern from "sparsekeras_conv.h" nogil:
    ctypedef struct sk_conv2d_geom:
        int64_t batch, in_h, in_w, in_c
        int64_t out_h, out_w, out_c
        int64_t k_h, k_w
        int64_t stride_h, stride_w, dil_h, dil_w
        int64_t pad_top, pad_left

cdef extern from "sk_simd.h" nogil:
    void sk_dot_rows_f32_any(int isa, int64_t nnz, const int64_t *off, const float *u, int64_t us,
                             const float *base, int64_t ts, int64_t n_rows, int64_t w, float *out,
                             int accumulate)
    void sk_dot_rows_f64_any(int isa, int64_t nnz, const int64_t *off, const double *u, int64_t us,
                             const double *base, int64_t ts, int64_t n_rows, int64_t w,
                             double *out, int accumulate)
    void sk_dot_run_f32_any(int isa, int64_t nnz, const int64_t *off, const float *u,
                            const float *base, int64_t len, float *out)
    void sk_dot_run_f64_any(int isa, int64_t nnz, const int64_t *off, const double *u,
                            const double *base, int64_t len, double *out)


cdef enum:
    SK_CONV_ROW_BLOCK = 8   # output rows per hsum in the values gradient


# Register tiles per output tile of the forward kernel (a tuning knob, see _set_conv_tiles).
cdef int _sk_conv_tiles = 2


def _set_conv_tiles(int n):
    """Set the forward kernel's register tiles per output tile (1 or 2; benchmarks only)."""
    global _sk_conv_tiles
    if n not in (1, 2):
        raise ValueError(f"n must be 1 or 2; received: {n}")
    _sk_conv_tiles = n


cdef struct _Planes:
    # Source: NHWC array (n, src_h, src_w, c); dilated by idil (zeros between source pixels),
    # shifted by pad_top / pad_left (may be negative: a crop).
    int64_t n, c, src_h, src_w, idil_h, idil_w, pad_top, pad_left
    # Destination T[n][c][hp][s][wq]: padded row hp, column q * s + phase. With row phases
    # (sh > 1, the strided forward, _phase_rows): T[n][c][hp % sh][s][hq][wq], padded row
    # hp = hq * sh + (hp % sh), so that a stride-(sh, s) convolution's consecutive output rows
    # read consecutive rows (wq apart) of one phase plane: the flat tiles of stride 1.
    # Element (c, hp, phase, q) is at c * plane + (hp % sh) * phblock + (hp // sh) * rowstride
    # + phase * phstride + q.
    int64_t hp, s, wq, plane, image
    int64_t sh, phblock, rowstride, phstride, phased


cdef inline void _planes_init(_Planes *pl, int64_t n, int64_t c, int64_t src_h, int64_t src_w,
                              int64_t idil_h, int64_t idil_w, int64_t pad_top, int64_t pad_left,
                              int64_t hp, int64_t s, int64_t wq) noexcept nogil:
    pl.n = n
    pl.c = c
    pl.src_h = src_h
    pl.src_w = src_w
    pl.idil_h = idil_h
    pl.idil_w = idil_w
    pl.pad_top = pad_top
    pl.pad_left = pad_left
    pl.hp = hp
    pl.s = s
    pl.wq = wq
    pl.plane = hp * s * wq
    pl.image = c * hp * s * wq
    pl.sh = 1
    pl.phblock = 0
    pl.rowstride = s * wq
    pl.phstride = wq
    pl.phased = 0


cdef inline void _phase_rows(_Planes *pl, int64_t sh, int64_t hq) noexcept nogil:
    """Re-lay planes with sh row phases of hq rows each (see _Planes): hp = sh * hq rows."""
    pl.sh = sh
    pl.hp = sh * hq
    pl.phblock = pl.s * hq * pl.wq
    pl.rowstride = pl.wq
    pl.phstride = hq * pl.wq
    pl.phased = 1
    pl.plane = pl.hp * pl.s * pl.wq
    pl.image = pl.c * pl.plane


cdef inline int64_t _row_at(const _Planes *pl, int64_t r) noexcept nogil:
    """Offset of padded row r of channel 0, phase 0, in an image of T (pl's layout)."""
    return (r % pl.sh) * pl.phblock + (r // pl.sh) * pl.rowstride


cdef inline int64_t _src_index(int64_t pos, int64_t pad, int64_t dil, int64_t size) noexcept nogil:
    """Source index of padded/dilated position pos, or -1 where it reads a zero."""
    cdef int64_t r = pos - pad
    if r < 0 or r % dil != 0:
        return -1
    r = r // dil
    if r >= size:
        return -1
    return r


cdef int _to_planes(const _Planes *pl, const real_t *x, real_t *t, int n_threads) noexcept nogil:
    """T[b][c][hp][phase][q] = x[b, src(hp), src(q * s + phase), c] (0 outside), at the
    addresses of pl's layout (row phases or not, see _Planes). O(size(T))."""
    cdef Py_ssize_t item
    cdef int64_t b, r, sr, ph, q0, q1, q, sc, c
    cdef int64_t qb = 16
    cdef int64_t *colsrc = <int64_t *>malloc((pl.s * pl.wq + 1) * sizeof(int64_t))
    cdef real_t *dst
    cdef const real_t *srow
    cdef int isa = sk_isa()
    if colsrc == NULL:
        return -1
    for ph in range(pl.s):
        for q in range(pl.wq):
            colsrc[ph * pl.wq + q] = _src_index(q * pl.s + ph, pl.pad_left, pl.idil_w, pl.src_w)
    for item in prange(pl.n * pl.hp, nogil=True, schedule='dynamic', chunksize=2, num_threads=n_threads):
        b = item // pl.hp
        r = item % pl.hp
        dst = t + b * pl.image + _row_at(pl, r)
        sr = _src_index(r, pl.pad_top, pl.idil_h, pl.src_h)
        if sr < 0:
            for c in range(pl.c):
                for ph in range(pl.s):
                    memset(dst + c * pl.plane + ph * pl.phstride, 0, pl.wq * sizeof(real_t))
            continue
        srow = x + (b * pl.src_h + sr) * pl.src_w * pl.c
        if pl.idil_w == 1:
            # No input dilation: per column phase, zero the border columns and transpose the
            # phase's pixels (every s-th of the row: source row stride s * c) in 8x8 blocks.
            # (The scalar loop below made a strided convolution's layout change cost as much as
            # its product: 3x3 stride 2 at 32x32, batch 32.)
            for ph in range(pl.s):
                q0 = pl.pad_left - ph  # q0 > 0: the first columns read the padding
                q0 = 0 if q0 <= 0 else (q0 + pl.s - 1) // pl.s
                q1 = pl.src_w + pl.pad_left - ph
                q1 = 0 if q1 <= 0 else (q1 + pl.s - 1) // pl.s
                if q0 > pl.wq:
                    q0 = pl.wq
                if q1 > pl.wq:
                    q1 = pl.wq
                if q1 < q0:
                    q1 = q0
                for c in range(pl.c):
                    if q0 > 0:
                        memset(dst + c * pl.plane + ph * pl.phstride, 0, q0 * sizeof(real_t))
                    if q1 < pl.wq:
                        memset(dst + c * pl.plane + ph * pl.phstride + q1, 0,
                               (pl.wq - q1) * sizeof(real_t))
                if q1 > q0:
                    _transpose(isa, srow + (q0 * pl.s + ph - pl.pad_left) * pl.c, pl.s * pl.c,
                               dst + ph * pl.phstride + q0, pl.plane, q1 - q0, pl.c)
            continue
        for ph in range(pl.s):
            q0 = 0
            while q0 < pl.wq:
                q1 = q0 + qb
                if q1 > pl.wq:
                    q1 = pl.wq
                # 16 output columns of every channel: reads stay in L1, writes are 16-runs.
                for c in range(pl.c):
                    for q in range(q0, q1):
                        sc = colsrc[ph * pl.wq + q]
                        if sc >= 0:
                            dst[c * pl.plane + ph * pl.phstride + q] = srow[sc * pl.c + c]
                        else:
                            dst[c * pl.plane + ph * pl.phstride + q] = 0
                q0 = q1
    free(colsrc)
    return 0


cdef inline void _store_tile(int isa, real_t *buf, int64_t lds, real_t *dst, int64_t out_c,
                             int64_t cols, const real_t *bias, int act) noexcept nogil:
    """Store buf (out_c x cols, row stride lds) transposed into NHWC pixels dst (cols pixels of
    out_c channels), with the epilogue act(v + bias[o]) (bias may be NULL, act an SK_ACT_*):
    in registers after each 16 x 16 transpose on AVX-512 float32, else applied to buf in place
    (in L1) before the transpose. Same values either way (_bias_act_rows' operations)."""
    if bias == NULL and act == SK_ACT_LINEAR:
        _transpose(isa, buf, lds, dst, out_c, out_c, cols)
        return
    if real_t is float:
        if sk_transpose_store_epi_f32(isa, buf, lds, dst, out_c, out_c, cols, bias, act):
            return
    _bias_act_block(buf, out_c, lds, cols, bias, act)
    _transpose(isa, buf, lds, dst, out_c, out_c, cols)


cdef inline void _store_flat_tile(int isa, real_t *buf, int64_t w, int64_t f0, int64_t wq,
                                  int64_t out_w, int64_t out_c, real_t *img, const real_t *bias,
                                  int act) noexcept nogil:
    """Store a flat tile buf (out_c x w; positions f0 .. f0 + w - 1 of rows wq apart) into the
    NHWC image img (rows of out_w pixels), dropping the padding columns (ow >= out_w); with
    the epilogue (see _store_tile)."""
    cdef int64_t j = 0, f, oh, ow, seg
    while j < w:
        f = f0 + j
        oh = f // wq
        ow = f % wq
        if ow >= out_w:
            j = j + wq - ow
            continue
        seg = out_w - ow
        if seg > w - j:
            seg = w - j
        _store_tile(isa, buf + j, w, img + (oh * out_w + ow) * out_c, out_c, seg, bias, act)
        j = j + seg


cdef inline void _plane_rows(const _Planes *pl, const real_t *x, int64_t b, int64_t r0,
                             int64_t nr, real_t *dst, int64_t plane, int isa) noexcept nogil:
    """Padded rows r0 .. r0 + nr - 1 of image b's planes (one phase, no input dilation) into
    dst[c * plane + (r - r0) * wq + q]: a band of T, built by the thread that uses it."""
    cdef int64_t r, sr, c, q
    cdef int64_t q_lo = pl.pad_left, q_hi = pl.pad_left + pl.src_w
    cdef real_t *d
    if q_lo < 0:
        q_lo = 0
    if q_hi > pl.wq:
        q_hi = pl.wq
    if q_hi < q_lo:
        q_hi = q_lo
    for r in range(r0, r0 + nr):
        d = dst + (r - r0) * pl.wq
        sr = _src_index(r, pl.pad_top, 1, pl.src_h)
        if sr < 0:
            for c in range(pl.c):
                memset(d + c * plane, 0, pl.wq * sizeof(real_t))
            continue
        # Border columns: a few values per channel, stored inline (a memset call each cost
        # more than the stores).
        for c in range(pl.c):
            for q in range(q_lo):
                d[c * plane + q] = 0
            for q in range(q_hi, pl.wq):
                d[c * plane + q] = 0
        if q_hi > q_lo:
            _transpose(isa, x + ((b * pl.src_h + sr) * pl.src_w + q_lo - pl.pad_left) * pl.c,
                       pl.c, d + q_lo, plane, q_hi - q_lo, pl.c)


# Target output positions per band of the fused stride-1 path (a tuning knob, see
# _set_conv_band) and the per-thread budget of its input band.
cdef int64_t _sk_conv_band_positions = 1024
cdef int64_t _SK_CONV_BAND_BYTES = 384 * 1024


def _set_conv_band(int64_t positions):
    """Set the fused stride-1 path's output positions per band (0: planes path; benchmarks)."""
    global _sk_conv_band_positions
    if positions < 0:
        raise ValueError(f"positions must be >= 0; received: {positions}")
    _sk_conv_band_positions = positions


cdef inline int64_t _band_rows(int64_t n, int64_t out_h, int64_t wq, int64_t row_bytes,
                               int64_t reach, int n_threads) noexcept nogil:
    """Output rows per band: about _sk_conv_band_positions positions, the band of input rows
    (rows + reach, row_bytes each) within _SK_CONV_BAND_BYTES, at least 4 items per thread
    when the batch allows, and bands of equal height. 0 when banding is off."""
    cdef int64_t band, n_bands
    if _sk_conv_band_positions <= 0 or out_h <= 0:
        return 0
    band = (_sk_conv_band_positions + wq - 1) // wq
    while band > 1 and (band + reach) * row_bytes > _SK_CONV_BAND_BYTES:
        band -= 1
    while band > 1 and n * ((out_h + band - 1) // band) < 4 * n_threads:
        band = (band + 1) // 2
    if band > out_h:
        band = out_h
    n_bands = (out_h + band - 1) // band
    return (out_h + n_bands - 1) // n_bands


cdef int _conv_banded(const _Planes *pl, int64_t out_h, int64_t out_w, int64_t out_c,
                      int64_t band, int64_t reach, const int64_t *rowptr, const int64_t *off,
                      const real_t *val, const real_t *x, const real_t *bias, int act,
                      real_t *out, int n_threads) noexcept nogil:
    """Stride-1 convolution fused with the layout change: each work item (image, band of
    `band` output rows) transposes the band's band + reach padded input rows into a per-thread
    panel (pl.plane must be (band + reach) * wq: the offsets index it), runs flat tiles over it
    as _conv_planes does, and stores the tiles back transposed. The input crosses memory once
    (no T of the whole batch), which also keeps the kernel fast when a neighbour loads the
    memory bus. Each output element is computed as in _conv_planes (same FMA chain)."""
    cdef int isa = sk_isa()
    cdef int64_t tile = _sk_conv_tiles * _tile(out)
    cdef int64_t n_bands = (out_h + band - 1) // band
    cdef int64_t n_items = pl.n * n_bands
    cdef int64_t stride = pl.c * pl.plane + 64 + out_c * tile
    cdef int n_parts = n_threads
    cdef real_t *scratch
    cdef int64_t it, b, oh0, nr, n_flat, f0, w, o, p0
    cdef real_t *panel
    cdef real_t *buf
    if out_h <= 0 or out_w <= 0 or out_c == 0 or pl.n == 0:
        return 0
    if n_parts > n_items:
        n_parts = <int>n_items
    stride = (stride + 15) // 16 * 16
    scratch = <real_t *>_scratch_alloc(n_parts * stride * sizeof(real_t))
    if scratch == NULL:
        return -1
    for it in prange(n_items, nogil=True, schedule='dynamic', chunksize=1, num_threads=n_parts):
        panel = scratch + threadid() * stride
        buf = panel + pl.c * pl.plane + 64
        b = it // n_bands
        oh0 = (it % n_bands) * band
        nr = out_h - oh0
        if nr > band:
            nr = band
        _plane_rows(pl, x, b, oh0, nr + reach, panel, pl.plane, isa)
        n_flat = (nr - 1) * pl.wq + out_w
        f0 = 0
        while f0 < n_flat:
            w = n_flat - f0
            if w > tile:
                w = tile
            for o in range(out_c):
                p0 = rowptr[o]
                _spmm_row(isa, rowptr[o + 1] - p0, off + p0, val + p0, panel + f0, 1, w,
                          buf + o * w, 1)
            _store_flat_tile(isa, buf, w, f0, pl.wq, out_w, out_c,
                             out + (b * out_h + oh0) * out_w * out_c, bias, act)
            f0 = f0 + tile
    _scratch_free(scratch)
    return 0


cdef inline void _dot_rows(int isa, int64_t nnz, const int64_t *off, const real_t *u, int64_t us,
                           const real_t *base, int64_t ts, int64_t n_rows, int64_t w,
                           real_t *out) noexcept nogil:
    if real_t is float:
        sk_dot_rows_f32_any(isa, nnz, off, u, us, base, ts, n_rows, w, out, 1)
    else:
        sk_dot_rows_f64_any(isa, nnz, off, u, us, base, ts, n_rows, w, out, 1)


cdef inline void _dot_run(int isa, int64_t nnz, const int64_t *off, const real_t *u,
                          const real_t *base, int64_t n, real_t *out) noexcept nogil:
    if real_t is float:
        sk_dot_run_f32_any(isa, nnz, off, u, base, n, out)
    else:
        sk_dot_run_f64_any(isa, nnz, off, u, base, n, out)


cdef int _grad_values_banded(const sk_conv2d_geom *g, _Planes *pl, const index_t *indptr,
                             const int64_t *off, const real_t *x, const real_t *dy,
                             int64_t band, int64_t reach, real_t *out_values,
                             int n_threads) noexcept nogil:
    """Stride-1 values gradient fused with the layout changes. Work item = (image, band of
    output rows): the thread transposes the band's input rows (panel of pl, whose plane is one
    band: the offsets index it) and dy rows (channel-major, padded to the panel's row stride with
    zeros, so each output channel's band is one contiguous run of (nr - 1) * wq + out_w
    positions), then every stored entry gets one dot product over the run (sk_dot_run, four
    entries per pass sharing the dy loads). Partial sums per item are added in item order, so
    the result does not depend on the thread count (the bands do not either)."""
    cdef int isa = sk_isa()
    cdef int64_t nnz = indptr[g.out_c]
    cdef int64_t n_bands = (g.out_h + band - 1) // band
    cdef int64_t n_items = g.batch * n_bands
    cdef int64_t uplane = band * pl.wq
    cdef int64_t stride = (pl.c * pl.plane + g.out_c * uplane + 64 + 15) // 16 * 16
    cdef _Planes pu
    cdef int n_parts = n_threads
    cdef real_t *scratch
    cdef real_t *partial
    cdef real_t *panel
    cdef real_t *ub
    cdef real_t acc
    cdef int64_t it, b, oh0, nr, n_flat, o, p0, p
    _planes_init(&pu, g.batch, g.out_c, g.out_h, g.out_w, 1, 1, 0, 0, band, 1, pl.wq)
    if n_parts > n_items:
        n_parts = <int>n_items
    scratch = <real_t *>_scratch_alloc(n_parts * stride * sizeof(real_t))
    partial = <real_t *>malloc(n_items * nnz * sizeof(real_t))
    if scratch == NULL or partial == NULL:
        _scratch_free(scratch)
        free(partial)
        return -1
    for it in prange(n_items, nogil=True, schedule='dynamic', chunksize=1, num_threads=n_parts):
        panel = scratch + threadid() * stride
        ub = panel + pl.c * pl.plane + 64
        b = it // n_bands
        oh0 = (it % n_bands) * band
        nr = g.out_h - oh0
        if nr > band:
            nr = band
        _plane_rows(pl, x, b, oh0, nr + reach, panel, pl.plane, isa)
        _plane_rows(&pu, dy, b, oh0, nr, ub, uplane, isa)
        n_flat = (nr - 1) * pl.wq + g.out_w
        for o in range(g.out_c):
            p0 = indptr[o]
            _dot_run(isa, indptr[o + 1] - p0, off + p0, ub + o * uplane, panel, n_flat,
                     partial + it * nnz + p0)
    for p in prange(nnz, nogil=True, schedule='static', num_threads=n_threads):
        acc = 0
        for it in range(n_items):
            acc = acc + partial[it * nnz + p]
        out_values[p] = acc
    free(partial)
    _scratch_free(scratch)
    return 0


cdef int _conv_planes(const _Planes *pl, int64_t out_h, int64_t out_w, int64_t out_c,
                      int64_t row_step, const int64_t *rowptr, const int64_t *off,
                      const real_t *val, const real_t *t, const real_t *bias, int act,
                      real_t *out, int n_threads) noexcept nogil:
    """out (n, out_h, out_w, out_c) from planes T: output row oh of image b reads T at
    b * image + oh * row_step + off_p + ow. Each thread computes out_c x w tiles into its
    scratch and stores them transposed (8x8 register transposes).

    Stride 1 (row_step == wq, one phase): tiles run over the flattened padded rows
    (f = oh * wq + ow), so a tile spans several output rows and every vector lane works even
    on narrow images; the few positions with ow >= out_w (the padding columns) are computed
    and dropped. Otherwise tiles are runs of one output row."""
    cdef int isa = sk_isa()
    # Two register tiles (128 float32 / 64 float64 lanes, 8 accumulators): the FMA chains of
    # one tile alone leave the FMA units waiting on latency.
    cdef int64_t tile = _sk_conv_tiles * _tile(out)
    cdef bint flat = row_step == pl.wq and (pl.s == 1 or pl.phased)
    cdef int64_t n_flat = (out_h - 1) * pl.wq + out_w
    cdef int64_t n_chunks, n_items
    cdef int n_parts = n_threads
    cdef real_t *scratch
    cdef int64_t it, b, oh, ch, ow0, w, o, p0
    cdef const real_t *base
    cdef real_t *buf
    if out_h <= 0 or out_w <= 0 or out_c == 0 or pl.n == 0:
        return 0
    if flat:
        n_chunks = (n_flat + tile - 1) // tile
    else:
        n_chunks = (out_w + tile - 1) // tile
    n_items = pl.n * (n_chunks if flat else out_h * n_chunks)
    if n_parts > n_items:
        n_parts = <int>n_items
    scratch = <real_t *>_scratch_alloc(n_parts * out_c * tile * sizeof(real_t))
    if scratch == NULL:
        return -1
    # Dynamic schedule over tiles: on a shared machine a descheduled thread holds back one
    # tile, not half of the work (each tile's result does not depend on the thread).
    for it in prange(n_items, nogil=True, schedule='dynamic', chunksize=1, num_threads=n_parts):
        buf = scratch + threadid() * out_c * tile
        ch = it % n_chunks
        ow0 = ch * tile
        if flat:
            b = it // n_chunks
            w = n_flat - ow0
            base = t + b * pl.image + ow0
        else:
            oh = (it // n_chunks) % out_h
            b = it // (n_chunks * out_h)
            w = out_w - ow0
            base = t + b * pl.image + oh * row_step + ow0
        if w > tile:
            w = tile
        for o in range(out_c):
            p0 = rowptr[o]
            _spmm_row(isa, rowptr[o + 1] - p0, off + p0, val + p0, base, 1, w, buf + o * w, 1)
        if not flat:
            _store_tile(isa, buf, w, out + ((b * out_h + oh) * out_w + ow0) * out_c, out_c, w,
                        bias, act)
            continue
        _store_flat_tile(isa, buf, w, ow0, pl.wq, out_w, out_c, out + b * out_h * out_w * out_c,
                         bias, act)
    _scratch_free(scratch)
    return 0


cdef int _pointwise(int64_t n_pix, int64_t c_in, int64_t c_out, const int64_t *rowptr,
                    const int64_t *idx, const real_t *val, const real_t *x, const real_t *bias,
                    int act, real_t *out, int n_threads) noexcept nogil:
    """A 1x1, stride-1 convolution, out (n_pix x c_out) = x (n_pix x c_in) @ W, W given per
    output channel o as entries idx (input channels) / val in [rowptr[o], rowptr[o+1]).

    Fused: each thread transposes a tile of pixels into an L1-sized (c_in x w) panel, runs the
    row-panel microkernel for every output channel and stores the tile back transposed, so the
    activations cross memory once each way (no channel-major copy of the whole input). One
    register tile per pixel tile keeps the panel in L1 (32 KiB at 128 float32 channels)."""
    cdef int isa = sk_isa()
    cdef int64_t tile = _tile(out)
    cdef int64_t n_items = (n_pix + tile - 1) // tile
    cdef int n_parts = n_threads
    cdef real_t *scratch
    cdef int64_t it, p0, w, o, q0
    cdef real_t *panel
    cdef real_t *buf
    if n_items == 0 or c_out == 0:
        return 0
    if n_parts > n_items:
        n_parts = <int>n_items
    scratch = <real_t *>_scratch_alloc(n_parts * (c_in + c_out) * tile * sizeof(real_t) + 64)
    if scratch == NULL:
        return -1
    for it in prange(n_items, nogil=True, schedule='dynamic', chunksize=1, num_threads=n_parts):
        panel = scratch + threadid() * (c_in + c_out) * tile
        buf = panel + c_in * tile
        p0 = it * tile
        w = n_pix - p0
        if w > tile:
            w = tile
        _transpose(isa, x + p0 * c_in, c_in, panel, w, w, c_in)
        for o in range(c_out):
            q0 = rowptr[o]
            _spmm_row(isa, rowptr[o + 1] - q0, idx + q0, val + q0, panel, w, w, buf + o * w, 1)
        _store_tile(isa, buf, w, out + p0 * c_out, c_out, w, bias, act)
    _scratch_free(scratch)
    return 0


cdef int _strided_pointwise(const sk_conv2d_geom *g, const int64_t *rowptr, const int64_t *idx,
                            const real_t *val, const real_t *x, const real_t *bias, int act,
                            real_t *out, int n_threads) noexcept nogil:
    """A 1x1 convolution with no padding (strided, or cropping): pixel (oh * stride_h,
    ow * stride_w) of x for each output pixel, copied into one contiguous
    (n * out_h * out_w, in_c) array, then _pointwise: the same FMA chain per output (the
    stored entries in order) as the planes path."""
    cdef int64_t n_rows = g.batch * g.out_h
    cdef int64_t c = g.in_c
    cdef real_t *sub = <real_t *>_scratch_alloc((n_rows * g.out_w * c + 16) * sizeof(real_t))
    cdef Py_ssize_t item
    cdef int64_t b, oh, ow
    cdef const real_t *src
    cdef real_t *dst
    cdef int rc
    if sub == NULL:
        return -1
    for item in prange(n_rows, nogil=True, schedule='static', num_threads=n_threads):
        b = item // g.out_h
        oh = item % g.out_h
        src = x + ((b * g.in_h + oh * g.stride_h) * g.in_w) * c
        dst = sub + item * g.out_w * c
        for ow in range(g.out_w):
            memcpy(dst + ow * c, src + ow * g.stride_w * c, c * sizeof(real_t))
    rc = _pointwise(n_rows * g.out_w, c, g.out_c, rowptr, idx, val, sub, bias, act, out,
                    n_threads)
    _scratch_free(sub)
    return rc


cdef inline bint _is_pointwise(const sk_conv2d_geom *g) noexcept nogil:
    return (g.k_h == 1 and g.k_w == 1 and g.stride_h == 1 and g.stride_w == 1
            and g.out_h == g.in_h and g.out_w == g.in_w)


cdef inline int64_t _tap_offset(const sk_conv2d_geom *g, const _Planes *pl, int64_t k) noexcept nogil:
    """Offset in T of patch position k = (i * k_w + j) * in_c + c (forward geometry)."""
    cdef int64_t c = k % g.in_c
    cdef int64_t tap = k // g.in_c
    cdef int64_t id_ = (tap // g.k_w) * g.dil_h
    cdef int64_t jd = (tap % g.k_w) * g.dil_w
    return c * pl.plane + _row_at(pl, id_) + (jd % pl.s) * pl.phstride + jd // pl.s


cdef inline void _forward_planes(const sk_conv2d_geom *g, _Planes *pl) noexcept nogil:
    _planes_init(pl, g.batch, g.in_c, g.in_h, g.in_w, 1, 1, g.pad_top, g.pad_left,
                 (g.out_h - 1) * g.stride_h + (g.k_h - 1) * g.dil_h + 1, g.stride_w,
                 g.out_w + ((g.k_w - 1) * g.dil_w) // g.stride_w)


cdef inline void _band_planes(_Planes *pl, int64_t rows) noexcept nogil:
    """Re-dimension planes to one band of `rows` padded rows (the panel of _conv_banded)."""
    pl.hp = rows
    pl.plane = rows * pl.s * pl.wq
    pl.image = pl.c * pl.plane


cdef int _csr_conv2d(const sk_conv2d_geom *g, const index_t *indptr, const index_t *indices,
                     const real_t *data, const real_t *bias, int act, const real_t *x,
                     real_t *out, int n_threads) noexcept nogil:
    """out = act(conv2d(x, W) + bias): bias (out_c) may be NULL, act an SK_ACT_* code, applied
    to each output tile as it is stored (no pass over out)."""
    cdef int64_t nnz = indptr[g.out_c]
    cdef _Planes pl
    cdef int64_t *rowptr
    cdef int64_t *off
    cdef real_t *t
    cdef int64_t p, o, band, reach
    cdef int rc
    if g.batch == 0 or g.out_h <= 0 or g.out_w <= 0 or g.out_c == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    _forward_planes(g, &pl)
    rowptr = <int64_t *>malloc((g.out_c + 1) * sizeof(int64_t))
    off = <int64_t *>malloc((nnz + 1) * sizeof(int64_t))
    if rowptr == NULL or off == NULL:
        free(rowptr)
        free(off)
        return -1
    for o in range(g.out_c + 1):
        rowptr[o] = indptr[o]
    if _is_pointwise(g):
        for p in range(nnz):
            off[p] = indices[p]
        rc = _pointwise(g.batch * g.in_h * g.in_w, g.in_c, g.out_c, rowptr, off, data, x, bias,
                        act, out, n_threads)
        free(off)
        free(rowptr)
        return rc
    if g.k_h == 1 and g.k_w == 1 and g.pad_top == 0 and g.pad_left == 0:
        # A strided 1x1 convolution (the projection shortcut of a ResNet): the pointwise
        # product over the pixels it reads, gathered first (a quarter of x at stride 2). Through
        # the planes it built every phase of the input: 0.89 ms against tf.nn.conv2d's 0.50
        # (32 -> 64 stride 2 at 32x32, batch 32, 10%).
        for p in range(nnz):
            off[p] = indices[p]
        rc = _strided_pointwise(g, rowptr, off, data, x, bias, act, out, n_threads)
        free(off)
        free(rowptr)
        return rc
    reach = (g.k_h - 1) * g.dil_h
    band = 0
    if g.stride_h == 1 and g.stride_w == 1:
        band = _band_rows(g.batch, g.out_h, pl.wq, pl.wq * g.in_c * sizeof(real_t), reach,
                          n_threads)
    if band > 0:
        _band_planes(&pl, band + reach)
        for p in range(nnz):
            off[p] = _tap_offset(g, &pl, indices[p])
        rc = _conv_banded(&pl, g.out_h, g.out_w, g.out_c, band, reach, rowptr, off, data, x,
                          bias, act, out, n_threads)
        free(off)
        free(rowptr)
        return rc
    # Strided: planes with row phases, so that output rows are wq apart in T and the tiles run
    # over flattened rows as at stride 1 (a tile of one output row used 16 of its 128 lanes at
    # a 16-wide output, and one FMA chain: 3x3 32 -> 64 stride 2 at 32x32, batch 32, 10%,
    # took 1.48 ms against tf.nn.conv2d's 1.65 ms dense).
    if g.stride_h > 1 or g.stride_w > 1:
        _phase_rows(&pl, g.stride_h, g.out_h + reach // g.stride_h)
    t = <real_t *>_scratch_alloc((pl.n * pl.image + 16) * sizeof(real_t))
    if t == NULL:
        free(off)
        free(rowptr)
        return -1
    for p in range(nnz):
        off[p] = _tap_offset(g, &pl, indices[p])
    rc = _to_planes(&pl, x, t, n_threads)
    if rc == 0:
        rc = _conv_planes(&pl, g.out_h, g.out_w, g.out_c,
                          pl.wq if pl.phased else g.stride_h * pl.s * pl.wq, rowptr, off,
                          data, t, bias, act, out, n_threads)
    _scratch_free(t)
    free(off)
    free(rowptr)
    return rc


cdef int _csr_conv2d_grad_input(const sk_conv2d_geom *g, const index_t *indptr,
                                const index_t *indices, const real_t *data, const real_t *dy,
                                real_t *dx, int n_threads) noexcept nogil:
    """dx = conv(dy zero-dilated by the stride, flipped W^T): stride 1, same dilation, padding
    (k - 1) * dil - pad before. Entries of input channel c come in (o, stored order) order."""
    cdef int64_t nnz = indptr[g.out_c]
    cdef _Planes pl
    cdef int64_t *rowptr
    cdef int64_t *fill
    cdef int64_t *off
    cdef real_t *val
    cdef real_t *t
    cdef int64_t p, o, c, k, tap, i, j, q, band, reach
    cdef int rc
    if g.batch == 0 or g.in_h == 0 or g.in_w == 0 or g.in_c == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    if g.out_h <= 0 or g.out_w <= 0 or nnz == 0 or g.out_c == 0:
        memset(dx, 0, g.batch * g.in_h * g.in_w * g.in_c * sizeof(real_t))
        return 0
    _planes_init(&pl, g.batch, g.out_c, g.out_h, g.out_w, g.stride_h, g.stride_w,
                 (g.k_h - 1) * g.dil_h - g.pad_top, (g.k_w - 1) * g.dil_w - g.pad_left,
                 g.in_h + (g.k_h - 1) * g.dil_h, 1, g.in_w + (g.k_w - 1) * g.dil_w)
    reach = (g.k_h - 1) * g.dil_h
    band = 0
    if g.stride_h == 1 and g.stride_w == 1 and not _is_pointwise(g):
        band = _band_rows(g.batch, g.in_h, pl.wq, pl.wq * g.out_c * sizeof(real_t), reach,
                          n_threads)
    if band > 0:
        _band_planes(&pl, band + reach)
    rowptr = <int64_t *>calloc(g.in_c + 1, sizeof(int64_t))
    fill = <int64_t *>malloc((g.in_c + 1) * sizeof(int64_t))
    off = <int64_t *>malloc(nnz * sizeof(int64_t))
    val = <real_t *>malloc(nnz * sizeof(real_t))
    t = NULL
    if not _is_pointwise(g) and band == 0:
        t = <real_t *>_scratch_alloc((pl.n * pl.image + 16) * sizeof(real_t))
    if (rowptr == NULL or fill == NULL or off == NULL or val == NULL
            or (t == NULL and not _is_pointwise(g) and band == 0)):
        free(rowptr)
        free(fill)
        free(off)
        free(val)
        _scratch_free(t)
        return -1
    for p in range(nnz):
        rowptr[indices[p] % g.in_c + 1] += 1
    for c in range(g.in_c):
        rowptr[c + 1] += rowptr[c]
        fill[c] = rowptr[c]
    for o in range(g.out_c):
        for p in range(indptr[o], indptr[o + 1]):
            k = indices[p]
            c = k % g.in_c
            tap = k // g.in_c
            i = g.k_h - 1 - tap // g.k_w
            j = g.k_w - 1 - tap % g.k_w
            q = fill[c]
            fill[c] = q + 1
            off[q] = o * pl.plane + i * g.dil_h * pl.wq + j * g.dil_w
            if _is_pointwise(g):
                off[q] = o
            val[q] = data[p]
    if _is_pointwise(g):
        rc = _pointwise(g.batch * g.in_h * g.in_w, g.out_c, g.in_c, rowptr, off, val, dy, NULL,
                        SK_ACT_LINEAR, dx, n_threads)
        _scratch_free(t)
        free(val)
        free(off)
        free(fill)
        free(rowptr)
        return rc
    if band > 0:
        rc = _conv_banded(&pl, g.in_h, g.in_w, g.in_c, band, reach, rowptr, off, val, dy, NULL,
                          SK_ACT_LINEAR, dx, n_threads)
    else:
        rc = _to_planes(&pl, dy, t, n_threads)
        if rc == 0:
            rc = _conv_planes(&pl, g.in_h, g.in_w, g.in_c, pl.wq, rowptr, off, val, t, NULL,
                              SK_ACT_LINEAR, dx, n_threads)
    _scratch_free(t)
    free(val)
    free(off)
    free(fill)
    free(rowptr)
    return rc


cdef int _csr_conv2d_grad_values(const sk_conv2d_geom *g, const index_t *indptr,
                                 const index_t *indices, const real_t *x, const real_t *dy,
                                 real_t *out_values, int n_threads) noexcept nogil:
    """out_values[p] = sum_{b, oh, ow} T[b, off_p + oh * row_step + ow] * dy[b, oh, ow, o].

    dy is rewritten channel-major (U[b][o][oh][ow]). Threads own nnz-balanced ranges of output
    channels and walk every (image, block of SK_CONV_ROW_BLOCK output rows, column tile) in the
    same order, so each value is one summation chain whatever the thread count."""
    cdef int isa = sk_isa()
    cdef int64_t tile = _tile(out_values)
    cdef int64_t nnz = indptr[g.out_c]
    cdef int64_t n_chunks, row_step, n_flat, n_full
    cdef bint flat
    cdef _Planes pl, pu
    cdef int64_t *off
    cdef int64_t *bounds
    cdef real_t *t
    cdef real_t *u
    cdef Py_ssize_t part
    cdef int64_t p, o, b, oh0, nr, ch, ow0, w, p0, p1, band
    cdef int n_parts, rc
    if nnz == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    if g.batch == 0 or g.out_h <= 0 or g.out_w <= 0:
        memset(out_values, 0, nnz * sizeof(real_t))
        return 0
    _forward_planes(g, &pl)
    if g.stride_h == 1 and g.stride_w == 1:
        # Bands chosen without the thread count (4 "threads"): the sums' grouping is fixed.
        band = _band_rows(g.batch, g.out_h, pl.wq, pl.wq * (g.in_c + g.out_c) * sizeof(real_t),
                          (g.k_h - 1) * g.dil_h, 4)
        if band > 0:
            _band_planes(&pl, band + (g.k_h - 1) * g.dil_h)
            off = <int64_t *>malloc(nnz * sizeof(int64_t))
            if off == NULL:
                return -1
            for p in range(nnz):
                off[p] = _tap_offset(g, &pl, indices[p])
            rc = _grad_values_banded(g, &pl, indptr, off, x, dy, band, (g.k_h - 1) * g.dil_h,
                                     out_values, n_threads)
            free(off)
            return rc
    # Stride 1: dy planes get T's row stride (zero padding columns), so dots run over the
    # flattened rows, tile after tile (see _conv_planes).
    flat = g.stride_h == 1 and g.stride_w == 1
    _planes_init(&pu, g.batch, g.out_c, g.out_h, g.out_w, 1, 1, 0, 0, g.out_h, 1,
                 pl.wq if flat else g.out_w)
    n_parts = n_threads
    if n_parts > g.out_c:
        n_parts = <int>g.out_c
    off = <int64_t *>malloc(nnz * sizeof(int64_t))
    bounds = <int64_t *>malloc((n_parts + 1) * sizeof(int64_t))
    t = <real_t *>_scratch_alloc((pl.n * pl.image + 16) * sizeof(real_t))
    u = <real_t *>_scratch_alloc((pu.n * pu.image + 16) * sizeof(real_t))
    if off == NULL or bounds == NULL or t == NULL or u == NULL:
        free(off)
        free(bounds)
        _scratch_free(t)
        _scratch_free(u)
        return -1
    for p in range(nnz):
        off[p] = _tap_offset(g, &pl, indices[p])
    _balanced_bounds(g.out_c, indptr, 1, 1, n_parts, bounds)
    if _to_planes(&pl, x, t, n_threads) != 0 or _to_planes(&pu, dy, u, n_threads) != 0:
        _scratch_free(u)
        _scratch_free(t)
        free(bounds)
        free(off)
        return -1
    memset(out_values, 0, nnz * sizeof(real_t))
    row_step = g.stride_h * pl.s * pl.wq
    n_chunks = (g.out_w + tile - 1) // tile
    n_flat = (g.out_h - 1) * pl.wq + g.out_w
    n_full = n_flat // tile
    for part in prange(n_parts, nogil=True, schedule='static', chunksize=1, num_threads=n_parts):
        for b in range(g.batch):
            if flat:
                # Blocks of SK_CONV_ROW_BLOCK full tiles, then the partial last tile.
                oh0 = 0
                while oh0 < n_full:
                    nr = n_full - oh0
                    if nr > SK_CONV_ROW_BLOCK:
                        nr = SK_CONV_ROW_BLOCK
                    for o in range(bounds[part], bounds[part + 1]):
                        p0 = indptr[o]
                        p1 = indptr[o + 1]
                        _dot_rows(isa, p1 - p0, off + p0,
                                  u + b * pu.image + o * pu.plane + oh0 * tile, tile,
                                  t + b * pl.image + oh0 * tile, tile, nr, tile, out_values + p0)
                    oh0 = oh0 + nr
                if n_flat > n_full * tile:
                    for o in range(bounds[part], bounds[part + 1]):
                        p0 = indptr[o]
                        p1 = indptr[o + 1]
                        _dot_rows(isa, p1 - p0, off + p0,
                                  u + b * pu.image + o * pu.plane + n_full * tile, tile,
                                  t + b * pl.image + n_full * tile, tile, 1,
                                  n_flat - n_full * tile, out_values + p0)
                continue
            oh0 = 0
            while oh0 < g.out_h:
                nr = g.out_h - oh0
                if nr > SK_CONV_ROW_BLOCK:
                    nr = SK_CONV_ROW_BLOCK
                for ch in range(n_chunks):
                    ow0 = ch * tile
                    w = g.out_w - ow0
                    if w > tile:
                        w = tile
                    for o in range(bounds[part], bounds[part + 1]):
                        p0 = indptr[o]
                        p1 = indptr[o + 1]
                        _dot_rows(isa, p1 - p0, off + p0,
                                  u + b * pu.image + o * pu.plane + oh0 * g.out_w + ow0, g.out_w,
                                  t + b * pl.image + oh0 * row_step + ow0, row_step, nr, w,
                                  out_values + p0)
                oh0 = oh0 + nr
    _scratch_free(u)
    _scratch_free(t)
    free(bounds)
    free(off)
    return 0


# ---- C API (sparsekeras_conv.h) -----------------------------------------------------------

cdef public int sk_csr_conv2d_f32_i32(const sk_conv2d_geom *g, const int32_t *indptr,
        const int32_t *indices, const float *data, const float *x, float *out,
        int n_threads) noexcept nogil:
    return _csr_conv2d(g, indptr, indices, data, NULL, SK_ACT_LINEAR, x, out, n_threads)

cdef public int sk_csr_conv2d_bias_act_f32_i32(const sk_conv2d_geom *g, const int32_t *indptr,
        const int32_t *indices, const float *data, const float *bias, int act, const float *x,
        float *out, int n_threads) noexcept nogil:
    return _csr_conv2d(g, indptr, indices, data, bias, act, x, out, n_threads)

cdef public int sk_csr_conv2d_f32_i64(const sk_conv2d_geom *g, const int64_t *indptr,
        const int64_t *indices, const float *data, const float *x, float *out,
        int n_threads) noexcept nogil:
    return _csr_conv2d(g, indptr, indices, data, NULL, SK_ACT_LINEAR, x, out, n_threads)

cdef public int sk_csr_conv2d_bias_act_f32_i64(const sk_conv2d_geom *g, const int64_t *indptr,
        const int64_t *indices, const float *data, const float *bias, int act, const float *x,
        float *out, int n_threads) noexcept nogil:
    return _csr_conv2d(g, indptr, indices, data, bias, act, x, out, n_threads)

cdef public int sk_csr_conv2d_f64_i32(const sk_conv2d_geom *g, const int32_t *indptr,
        const int32_t *indices, const double *data, const double *x, double *out,
        int n_threads) noexcept nogil:
    return _csr_conv2d(g, indptr, indices, data, NULL, SK_ACT_LINEAR, x, out, n_threads)

cdef public int sk_csr_conv2d_bias_act_f64_i32(const sk_conv2d_geom *g, const int32_t *indptr,
        const int32_t *indices, const double *data, const double *bias, int act, const double *x,
        double *out, int n_threads) noexcept nogil:
    return _csr_conv2d(g, indptr, indices, data, bias, act, x, out, n_threads)

cdef public int sk_csr_conv2d_f64_i64(const sk_conv2d_geom *g, const int64_t *indptr,
        const int64_t *indices, const double *data, const double *x, double *out,
        int n_threads) noexcept nogil:
    return _csr_conv2d(g, indptr, indices, data, NULL, SK_ACT_LINEAR, x, out, n_threads)

cdef public int sk_csr_conv2d_bias_act_f64_i64(const sk_conv2d_geom *g, const int64_t *indptr,
        const int64_t *indices, const double *data, const double *bias, int act, const double *x,
        double *out, int n_threads) noexcept nogil:
    return _csr_conv2d(g, indptr, indices, data, bias, act, x, out, n_threads)

cdef public int sk_csr_conv2d_grad_input_f32_i32(const sk_conv2d_geom *g, const int32_t *indptr,
        const int32_t *indices, const float *data, const float *dy, float *dx,
        int n_threads) noexcept nogil:
    return _csr_conv2d_grad_input(g, indptr, indices, data, dy, dx, n_threads)

cdef public int sk_csr_conv2d_grad_input_f32_i64(const sk_conv2d_geom *g, const int64_t *indptr,
        const int64_t *indices, const float *data, const float *dy, float *dx,
        int n_threads) noexcept nogil:
    return _csr_conv2d_grad_input(g, indptr, indices, data, dy, dx, n_threads)

cdef public int sk_csr_conv2d_grad_input_f64_i32(const sk_conv2d_geom *g, const int32_t *indptr,
        const int32_t *indices, const double *data, const double *dy, double *dx,
        int n_threads) noexcept nogil:
    return _csr_conv2d_grad_input(g, indptr, indices, data, dy, dx, n_threads)

cdef public int sk_csr_conv2d_grad_input_f64_i64(const sk_conv2d_geom *g, const int64_t *indptr,
        const int64_t *indices, const double *data, const double *dy, double *dx,
        int n_threads) noexcept nogil:
    return _csr_conv2d_grad_input(g, indptr, indices, data, dy, dx, n_threads)

cdef public int sk_csr_conv2d_grad_values_f32_i32(const sk_conv2d_geom *g, const int32_t *indptr,
        const int32_t *indices, const float *x, const float *dy, float *out_values,
        int n_threads) noexcept nogil:
    return _csr_conv2d_grad_values(g, indptr, indices, x, dy, out_values, n_threads)

cdef public int sk_csr_conv2d_grad_values_f32_i64(const sk_conv2d_geom *g, const int64_t *indptr,
        const int64_t *indices, const float *x, const float *dy, float *out_values,
        int n_threads) noexcept nogil:
    return _csr_conv2d_grad_values(g, indptr, indices, x, dy, out_values, n_threads)

cdef public int sk_csr_conv2d_grad_values_f64_i32(const sk_conv2d_geom *g, const int32_t *indptr,
        const int32_t *indices, const double *x, const double *dy, double *out_values,
        int n_threads) noexcept nogil:
    return _csr_conv2d_grad_values(g, indptr, indices, x, dy, out_values, n_threads)

cdef public int sk_csr_conv2d_grad_values_f64_i64(const sk_conv2d_geom *g, const int64_t *indptr,
        const int64_t *indices, const double *x, const double *dy, double *out_values,
        int n_threads) noexcept nogil:
    return _csr_conv2d_grad_values(g, indptr, indices, x, dy, out_values, n_threads)


# ---- numpy level --------------------------------------------------------------------------

def conv2d_geometry(input_shape, kernel_size, strides=(1, 1), padding="VALID", dilations=(1, 1),
                    out_c=None):
    """Output size and padding of a 2-D convolution, TensorFlow's rules.

    Args:
        input_shape: (batch, in_h, in_w, in_c).
        kernel_size, strides, dilations: pairs of positive integers.
        padding: "SAME" or "VALID" (any case).
    Returns a dict with every field of sk_conv2d_geom (out_c if given).
    Raises ValueError naming the argument and the value received.
    """
    def pair(v, name):
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            v = (v, v)
        try:
            a, b = (int(q) for q in v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer or a pair of integers; received: {v!r}") from None
        if a < 1 or b < 1:
            raise ValueError(f"{name} must be positive; received: {v!r}")
        return a, b
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(strides, "strides")
    dh, dw = pair(dilations, "dilations")
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID'; received: {padding!r}")
    try:
        n, h, w, c = (int(q) for q in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"x must be 4-D (batch, height, width, channels); received shape "
                         f"{tuple(input_shape) if hasattr(input_shape, '__iter__') else input_shape!r}") from None
    ekh = (kh - 1) * dh + 1
    ekw = (kw - 1) * dw + 1
    if padding.upper() == "SAME":
        oh = -(-h // sh)
        ow = -(-w // sw)
        pt = max((oh - 1) * sh + ekh - h, 0) // 2
        pl = max((ow - 1) * sw + ekw - w, 0) // 2
    else:
        if h < ekh or w < ekw:
            raise ValueError(f"with padding='VALID' the input ({h} x {w}) must be at least the "
                             f"dilated kernel size ({ekh} x {ekw}); received x.shape "
                             f"{(n, h, w, c)}")
        oh = (h - ekh) // sh + 1
        ow = (w - ekw) // sw + 1
        pt = pl = 0
    return dict(batch=n, in_h=h, in_w=w, in_c=c, out_h=oh, out_w=ow,
                out_c=-1 if out_c is None else int(out_c), k_h=kh, k_w=kw, stride_h=sh,
                stride_w=sw, dil_h=dh, dil_w=dw, pad_top=pt, pad_left=pl)


cdef sk_conv2d_geom _geom_struct(dict d):
    cdef sk_conv2d_geom g
    g.batch = d["batch"]
    g.in_h = d["in_h"]
    g.in_w = d["in_w"]
    g.in_c = d["in_c"]
    g.out_h = d["out_h"]
    g.out_w = d["out_w"]
    g.out_c = d["out_c"]
    g.k_h = d["k_h"]
    g.k_w = d["k_w"]
    g.stride_h = d["stride_h"]
    g.stride_w = d["stride_w"]
    g.dil_h = d["dil_h"]
    g.dil_w = d["dil_w"]
    g.pad_top = d["pad_top"]
    g.pad_left = d["pad_left"]
    return g


def _conv_args(x_shape, indptr, indices, data, kernel_shape, strides, padding, dilations, name):
    """Validate a conv call: geometry dict, normalised (indptr, indices)."""
    try:
        kh, kw, cin, cout = (int(q) for q in kernel_shape)
    except (TypeError, ValueError):
        raise ValueError(f"kernel_shape must be (k_h, k_w, in_channels, out_channels); "
                         f"received: {kernel_shape!r}") from None
    if min(kh, kw) < 1 or min(cin, cout) < 0:
        raise ValueError(f"kernel_shape must have positive sizes; received: {kernel_shape!r}")
    if len(x_shape) != 4:
        raise ValueError(f"{name} must be 4-D (batch, height, width, channels); received shape "
                         f"{tuple(x_shape)}")
    if x_shape[3] != cin:
        raise ValueError(f"{name} has {x_shape[3]} channels but kernel_shape={tuple(kernel_shape)} "
                         f"expects {cin}; received {name}.shape {tuple(x_shape)}")
    geo = conv2d_geometry(x_shape, (kh, kw), strides, padding, dilations, out_c=cout)
    ip, ix, _, _ = check_csr(indptr, indices, data, (cout, kh * kw * cin), "kernel")
    return geo, ip, ix


def csr_conv2d(x, indptr, indices, data, kernel_shape, *, strides=(1, 1), padding="VALID",
               dilations=(1, 1), bias=None, activation=None, n_threads=None):
    """2-D convolution of NHWC `x` with a sparse kernel (TensorFlow's conv2d semantics).

    Args:
        x: (batch, height, width, in_channels).
        indptr, indices, data: the kernel (k_h, k_w, in_channels, out_channels) as the CSC form
            of its (k_h * k_w * in_channels) x out_channels reshape: indptr has out_channels + 1
            entries; indices are patch positions (i * k_w + j) * in_channels + c.
        kernel_shape: (k_h, k_w, in_channels, out_channels).
        strides, dilations: int or pair; padding: "SAME" or "VALID".
        bias: None or out_channels values added to every output pixel; activation: None /
            "linear", "relu", "gelu" or "relu6". Both are applied to each output tile as it
            is stored (a Conv2D layer's epilogue, fused).
    Returns:
        (batch, out_h, out_w, out_channels) = activation(conv2d(x, W) + bias), float32 or
        float64.
    Complexity O(nnz * batch * out_h * out_w + size(x)).
    """
    xa = np.asarray(x)
    geo, ip, ix = _conv_args(xa.shape, indptr, indices, data, kernel_shape, strides, padding,
                             dilations, "x")
    dt = result_dtype(np.asarray(data).dtype, xa.dtype, name="data and x")
    cdef cnp.ndarray d = _values(data, dt, "data")
    cdef cnp.ndarray xx = _values(xa, dt, "x")
    cdef cnp.ndarray out = np.zeros((geo["batch"], geo["out_h"], geo["out_w"], geo["out_c"]), dtype=dt)
    bias_arr, act_code = _epilogue(bias, activation, geo["out_c"], dt)
    cdef void *bp = NULL if bias_arr is None else _ptr(<cnp.ndarray>bias_arr)
    cdef int act = act_code
    cdef sk_conv2d_geom g = _geom_struct(geo)
    cdef cnp.ndarray cip = ip, cix = ix
    cdef int nt = _threads(n_threads, ix.shape[0] * geo["batch"] * geo["out_h"] * geo["out_w"] + xa.size)
    cdef bint f32 = dt == np.float32, i32 = ip.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_csr_conv2d_bias_act_f32_i32(&g, <int32_t *>_ptr(cip), <int32_t *>_ptr(cix),
                                                <float *>_ptr(d), <float *>bp, act,
                                                <float *>_ptr(xx), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_csr_conv2d_bias_act_f32_i64(&g, <int64_t *>_ptr(cip), <int64_t *>_ptr(cix),
                                                <float *>_ptr(d), <float *>bp, act,
                                                <float *>_ptr(xx), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_csr_conv2d_bias_act_f64_i32(&g, <int32_t *>_ptr(cip), <int32_t *>_ptr(cix),
                                                <double *>_ptr(d), <double *>bp, act,
                                                <double *>_ptr(xx), <double *>_ptr(out), nt)
        else:
            rc = sk_csr_conv2d_bias_act_f64_i64(&g, <int64_t *>_ptr(cip), <int64_t *>_ptr(cix),
                                                <double *>_ptr(d), <double *>bp, act,
                                                <double *>_ptr(xx), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("csr_conv2d: could not allocate scratch memory")
    return out


def csr_conv2d_grad_input(dy, indptr, indices, data, kernel_shape, input_shape, *,
                          strides=(1, 1), padding="VALID", dilations=(1, 1), n_threads=None):
    """Gradient of `csr_conv2d` w.r.t. x: (batch, height, width, in_channels) = input_shape,
    for the output gradient dy (batch, out_h, out_w, out_channels)."""
    dya = np.asarray(dy)
    geo, ip, ix = _conv_args(tuple(int(q) for q in input_shape), indptr, indices, data,
                             kernel_shape, strides, padding, dilations, "input_shape")
    expect = (geo["batch"], geo["out_h"], geo["out_w"], geo["out_c"])
    if dya.shape != expect:
        raise ValueError(f"dy must have shape {expect} for input_shape={tuple(input_shape)}; "
                         f"received dy.shape {dya.shape}")
    dt = result_dtype(np.asarray(data).dtype, dya.dtype, name="data and dy")
    cdef cnp.ndarray d = _values(data, dt, "data")
    cdef cnp.ndarray yy = _values(dya, dt, "dy")
    cdef cnp.ndarray out = np.zeros((geo["batch"], geo["in_h"], geo["in_w"], geo["in_c"]), dtype=dt)
    cdef sk_conv2d_geom g = _geom_struct(geo)
    cdef cnp.ndarray cip = ip, cix = ix
    cdef int nt = _threads(n_threads, ix.shape[0] * geo["batch"] * geo["in_h"] * geo["in_w"] + dya.size)
    cdef bint f32 = dt == np.float32, i32 = ip.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_csr_conv2d_grad_input_f32_i32(&g, <int32_t *>_ptr(cip), <int32_t *>_ptr(cix),
                                                  <float *>_ptr(d), <float *>_ptr(yy), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_csr_conv2d_grad_input_f32_i64(&g, <int64_t *>_ptr(cip), <int64_t *>_ptr(cix),
                                                  <float *>_ptr(d), <float *>_ptr(yy), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_csr_conv2d_grad_input_f64_i32(&g, <int32_t *>_ptr(cip), <int32_t *>_ptr(cix),
                                                  <double *>_ptr(d), <double *>_ptr(yy), <double *>_ptr(out), nt)
        else:
            rc = sk_csr_conv2d_grad_input_f64_i64(&g, <int64_t *>_ptr(cip), <int64_t *>_ptr(cix),
                                                  <double *>_ptr(d), <double *>_ptr(yy), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("csr_conv2d_grad_input: could not allocate scratch memory")
    return out


def csr_conv2d_grad_values(x, dy, indptr, indices, kernel_shape, *, strides=(1, 1),
                           padding="VALID", dilations=(1, 1), n_threads=None):
    """Gradient of `csr_conv2d` w.r.t. the kernel's stored values (nnz,), on its pattern."""
    xa = np.asarray(x)
    dya = np.asarray(dy)
    geo, ip, ix = _conv_args(xa.shape, indptr, indices, None, kernel_shape, strides, padding,
                             dilations, "x")
    expect = (geo["batch"], geo["out_h"], geo["out_w"], geo["out_c"])
    if dya.shape != expect:
        raise ValueError(f"dy must have shape {expect} for x.shape={xa.shape}; "
                         f"received dy.shape {dya.shape}")
    dt = result_dtype(xa.dtype, dya.dtype, name="x and dy")
    cdef cnp.ndarray xx = _values(xa, dt, "x")
    cdef cnp.ndarray yy = _values(dya, dt, "dy")
    cdef cnp.ndarray out = np.zeros(ix.shape[0], dtype=dt)
    cdef sk_conv2d_geom g = _geom_struct(geo)
    cdef cnp.ndarray cip = ip, cix = ix
    cdef int nt = _threads(n_threads, ix.shape[0] * geo["batch"] * geo["out_h"] * geo["out_w"] + xa.size)
    cdef bint f32 = dt == np.float32, i32 = ip.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_csr_conv2d_grad_values_f32_i32(&g, <int32_t *>_ptr(cip), <int32_t *>_ptr(cix),
                                                   <float *>_ptr(xx), <float *>_ptr(yy), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_csr_conv2d_grad_values_f32_i64(&g, <int64_t *>_ptr(cip), <int64_t *>_ptr(cix),
                                                   <float *>_ptr(xx), <float *>_ptr(yy), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_csr_conv2d_grad_values_f64_i32(&g, <int32_t *>_ptr(cip), <int32_t *>_ptr(cix),
                                                   <double *>_ptr(xx), <double *>_ptr(yy), <double *>_ptr(out), nt)
        else:
            rc = sk_csr_conv2d_grad_values_f64_i64(&g, <int64_t *>_ptr(cip), <int64_t *>_ptr(cix),
                                                   <double *>_ptr(xx), <double *>_ptr(yy), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("csr_conv2d_grad_values: could not allocate scratch memory")
    return out
