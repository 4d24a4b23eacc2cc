# Compiled kernels of the flash attention mechanisms (included by _kernels.pyx).

# ---------------------------------------------------------------------------------------------
# Flash-decoding: a few query rows against a long key/value cache. The m keys are cut into
# chunks of `chunk` keys; every (batch·head, chunk) work item runs the online softmax over its
# chunk and leaves its max, sum and un-normalised output; a log-sum-exp pass then combines the
# chunks of each row. The chunks depend on the shape only (never on the thread count), and each
# row is combined in chunk order, so results are bit-identical whatever the thread count.

cdef enum:
    DECODE_TILE = 256               # keys scored per pass over a chunk: the scratch per thread


cdef int _decode_chunk(const float *q, const float *k, const float *v, int n, int m, int d,
                       int dv, int j0, int j1, float scale, bint causal, const MaskView *mask,
                       int b, int h, float *s, float *pmax, float *psum,
                       float *pout) noexcept nogil:
    """Keys j0 … j1−1 of one (batch, head) for its n query rows, s = q·kᵀ·scale + mask (causal:
    row r sees keys j ≤ r + m − n): pmax[r] = max_j s_rj, psum[r] = Σ_j e^(s_rj − pmax[r]),
    pout[r] = Σ_j e^(s_rj − pmax[r])·v_j. Returns 1 when a score or pout is NaN/Inf."""
    cdef int r, c, t0, cols, vis, last
    cdef float mx, newmax, corr, total
    cdef float *acc
    cdef const char *mrow
    for r in range(n):
        pmax[r] = -INFINITY
        psum[r] = 0.0
    memset(pout, 0, <Py_ssize_t>n * dv * sizeof(float))
    t0 = j0
    while t0 < j1:
        cols = j1 - t0 if j1 - t0 < DECODE_TILE else DECODE_TILE
        for r in range(n):
            vis = cols
            if causal:
                last = r + m - n - t0               # last visible column of this tile
                if last < 0:
                    continue
                if last + 1 < vis:
                    vis = last + 1
            for c in range(vis):
                s[c] = scale * rr_dot(q + <Py_ssize_t>r * d, k + <Py_ssize_t>(t0 + c) * d, d)
            if rr_nonfinite(s, vis):
                return 1
            if mask != NULL:
                mrow = mask.base + b * mask.sb + h * mask.sh + r * mask.si + t0 * mask.sj
                for c in range(vis):
                    s[c] += (<const float *>(mrow + c * mask.sj))[0]
            acc = pout + <Py_ssize_t>r * dv
            mx = rr_max(s, vis)
            newmax = mx if mx > pmax[r] else pmax[r]
            if newmax == -INFINITY:                 # every key so far masked: zero weights
                memset(s, 0, vis * sizeof(float))
            else:
                corr = rr_exp(pmax[r] - newmax)
                total = rr_exp_shift_sum(s, vis, newmax)
                if corr != 1.0:
                    rr_scale(acc, dv, corr)
                psum[r] = psum[r] * corr + total
                pmax[r] = newmax
            for c in range(vis):                    # zero weights too: NaN/Inf in v shows
                rr_axpy(acc, v + <Py_ssize_t>(t0 + c) * dv, dv, s[c])
        t0 = t0 + cols
    return rr_nonfinite(pout, <Py_ssize_t>n * dv)


cdef int _decode_combine(const float *pmax, const float *psum, const float *pout, int chunks,
                         int n, int dv, float *o) noexcept nogil:
    """o[r] = Σ_c w_c·pout_c[r] / Σ_c w_c·psum_c[r], w_c = e^(pmax_c[r] − max_c pmax_c[r]), over
    the chunks c of one (batch, head) in order (zeros for a row that sees no key)."""
    cdef int r, c, j
    cdef float top, w, total
    cdef float *row
    for r in range(n):
        row = o + <Py_ssize_t>r * dv
        memset(row, 0, dv * sizeof(float))
        top = -INFINITY
        for c in range(chunks):
            if pmax[<Py_ssize_t>c * n + r] > top:
                top = pmax[<Py_ssize_t>c * n + r]
        if top == -INFINITY:
            continue
        total = 0.0
        for c in range(chunks):
            w = rr_exp(pmax[<Py_ssize_t>c * n + r] - top)
            total = total + w * psum[<Py_ssize_t>c * n + r]
            rr_axpy(row, pout + (<Py_ssize_t>c * n + r) * dv, dv, w)
        for j in range(dv):
            row[j] = row[j] / total
    return rr_nonfinite(o, <Py_ssize_t>n * dv)


def flash_decoding(cnp.ndarray q, cnp.ndarray k, cnp.ndarray v, cnp.ndarray out, object mask,
                   bint causal, float scale, int num_threads, int chunk):
    """out[b, h] = softmax(q[b, h]·k[b, g]ᵀ·scale + mask[b, h])·v[b, g], g = h // (H / H_kv), with
    the keys split into chunks of `chunk` keys processed in parallel (then combined by log-sum-exp).

    q (B, H, n, d), k (B, Hkv, m, d), v (B, Hkv, m, dv), out (B, H, n, dv): float32, C-contiguous.
    mask: None or a float32 additive (B, H, n, m) array of any strides (zero strides broadcast).
    Extra memory: B·H·⌈m/chunk⌉·n·(dv + 2) floats, plus DECODE_TILE floats per thread. No BLAS.
    Returns the non-finite count, or -1 when an allocation failed.
    """
    cdef int B = q.shape[0], H = q.shape[1], n = q.shape[2], d = q.shape[3]
    cdef int Hkv = k.shape[1], m = k.shape[2], dv = v.shape[3]
    cdef int group = H // Hkv
    if chunk < 1:
        chunk = 1
    cdef int chunks = (m + chunk - 1) // chunk
    cdef Py_ssize_t heads = <Py_ssize_t>B * H
    cdef Py_ssize_t items = heads * chunks
    cdef const float *qp = <const float *>cnp.PyArray_DATA(q)
    cdef const float *kp = <const float *>cnp.PyArray_DATA(k)
    cdef const float *vp = <const float *>cnp.PyArray_DATA(v)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef MaskView mv
    cdef const MaskView *mvp = NULL
    if mask is not None:
        mv.base = <const char *>cnp.PyArray_DATA(mask)
        mv.sb = mask.strides[0]
        mv.sh = mask.strides[1]
        mv.si = mask.strides[2]
        mv.sj = mask.strides[3]
        mvp = &mv
    cdef int threads = num_threads if num_threads < items else <int>items
    if threads < 1:
        threads = 1
    cdef Py_ssize_t it, bh, hh
    cdef int bad = 0, oom = 0, b, h, c, j0, j1
    cdef float *s
    cdef float *pmax = <float *>malloc(items * n * (dv + 2) * sizeof(float))
    if pmax == NULL:
        return -1
    cdef float *psum = pmax + items * n
    cdef float *pout = psum + items * n
    with nogil, parallel(num_threads=threads):
        s = <float *>malloc(DECODE_TILE * sizeof(float))
        for it in prange(items, schedule="dynamic"):
            if s == NULL:
                oom += 1
                continue
            c = it % chunks
            bh = it // chunks
            h = bh % H
            b = bh // H
            j0 = c * chunk
            j1 = m if m - j0 < chunk else j0 + chunk
            bad += _decode_chunk(qp + bh * n * d, kp + (<Py_ssize_t>b * Hkv + h // group) * m * d,
                                 vp + (<Py_ssize_t>b * Hkv + h // group) * m * dv,
                                 n, m, d, dv, j0, j1, scale, causal, mvp, b, h, s,
                                 pmax + it * n, psum + it * n, pout + it * n * dv)
        free(s)
    if not oom and not bad:
        threads = num_threads if num_threads < heads else <int>heads
        for hh in prange(heads, nogil=True, num_threads=threads if threads > 0 else 1,
                         schedule="static"):
            bad += _decode_combine(pmax + hh * chunks * n, psum + hh * chunks * n,
                                   pout + hh * chunks * n * dv, chunks, n, dv, op + hh * n * dv)
    free(pmax)
    return -1 if oom else bad
