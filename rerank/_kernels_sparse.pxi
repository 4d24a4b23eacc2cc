# Compiled kernels of the sparse attention mechanisms (included by _kernels.pyx).
#
# Attention over a per-query key list in CSR form: query i of pattern p attends to the keys
# cols[row_ptr[p, i]] … cols[row_ptr[p, i+1] − 1] only, so the cost is O(nnz·d), not O(n·m).

# Keys scored per step of the online softmax (one running-max rescale per step).
cdef enum:
    SPARSE_KEY_CHUNK = 64


cdef int _sparse_rows(const float *q, const float *k, const float *v, float *o,
                      int row0, int rows, int d, int dv, float scale,
                      const long long *row_ptr, const long long *cols,
                      const MaskView *mask, int b, int h, float *s, float *acc) noexcept nogil:
    """Rows row0 … row0+rows−1 of one (batch, head): o_i = Σ_{j ∈ S(i)} softmax_j(s_ij)·v_j with
    s_ij = q_i·k_j·scale (+ mask[b, h, i, j]), S(i) the row's CSR keys; no key gives zeros."""
    cdef int r, c, cnt
    cdef long long p, p1
    cdef float mx, newmax, corr, total, chunk_sum
    cdef const float *qi
    cdef const char *mrow
    for r in range(row0, row0 + rows):
        qi = q + <Py_ssize_t>r * d
        mx = -INFINITY
        total = 0.0
        memset(acc, 0, dv * sizeof(float))
        p = row_ptr[r]
        p1 = row_ptr[r + 1]
        while p < p1:
            cnt = SPARSE_KEY_CHUNK if p1 - p > SPARSE_KEY_CHUNK else <int>(p1 - p)
            for c in range(cnt):
                s[c] = scale * rr_dot(qi, k + <Py_ssize_t>cols[p + c] * d, d)
            if rr_nonfinite(s, cnt):
                return 1
            if mask != NULL:
                mrow = mask.base + b * mask.sb + h * mask.sh + r * mask.si
                for c in range(cnt):
                    s[c] += (<const float *>(mrow + cols[p + c] * mask.sj))[0]
            newmax = rr_max(s, cnt)
            if newmax < mx:
                newmax = mx
            if newmax == -INFINITY:
                p = p + cnt
                continue
            corr = rr_exp(mx - newmax)
            chunk_sum = rr_exp_shift_sum(s, cnt, newmax)
            if corr != 1.0:
                rr_scale(acc, dv, corr)
            total = total * corr + chunk_sum
            mx = newmax
            for c in range(cnt):
                rr_axpy(acc, v + <Py_ssize_t>cols[p + c] * dv, dv, s[c])
            p = p + cnt
        if total > 0.0:
            for c in range(dv):
                o[<Py_ssize_t>r * dv + c] = acc[c] / total
        else:
            memset(o + <Py_ssize_t>r * dv, 0, dv * sizeof(float))
    return rr_nonfinite(o + <Py_ssize_t>row0 * dv, <Py_ssize_t>rows * dv)


def sparse_attention(cnp.ndarray q, cnp.ndarray k, cnp.ndarray v, cnp.ndarray out,
                     cnp.ndarray row_ptr, cnp.ndarray cols, object mask, float scale,
                     int num_threads, int block_rows):
    """out[b, h, i] = Σ_{j ∈ S_p(i)} softmax_j(q[b, h, i]·k[b, g, j]·scale + mask[b, h, i, j])·v[b, g, j]
    with g = h // (H / H_kv) and p = (b·H + h) mod P: the pattern of item (b, h).

    q (B, H, n, d), k (B, Hkv, m, d), v (B, Hkv, m, dv), out (B, H, n, dv): float32, C-contiguous.
    row_ptr (P, n+1) int64 with P ∈ {1, H, B·H}, non-decreasing; cols (nnz,) int64 in [0, m):
    the caller validates both. mask: None or a float32 additive (B, H, n, m) array of any strides.
    Work items are (batch, head, block of block_rows queries); scratch per thread:
    SPARSE_KEY_CHUNK + dv floats. Returns the non-finite count, or -1 when malloc failed.
    """
    cdef int B = q.shape[0], H = q.shape[1], n = q.shape[2], d = q.shape[3]
    cdef int Hkv = k.shape[1], m = k.shape[2], dv = v.shape[3]
    cdef int group = H // Hkv
    cdef int P = row_ptr.shape[0]
    cdef int tiles = (n + block_rows - 1) // block_rows
    cdef Py_ssize_t items = <Py_ssize_t>B * H * tiles
    cdef const float *qp = <const float *>cnp.PyArray_DATA(q)
    cdef const float *kp = <const float *>cnp.PyArray_DATA(k)
    cdef const float *vp = <const float *>cnp.PyArray_DATA(v)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef const long long *rp = <const long long *>cnp.PyArray_DATA(row_ptr)
    cdef const long long *cp = <const long long *>cnp.PyArray_DATA(cols)
    cdef MaskView mv
    cdef const MaskView *mvp = NULL
    if mask is not None:
        mv.base = <const char *>cnp.PyArray_DATA(mask)
        mv.sb = mask.strides[0]
        mv.sh = mask.strides[1]
        mv.si = mask.strides[2]
        mv.sj = mask.strides[3]
        mvp = &mv
    if num_threads > items:
        num_threads = <int>items
    if num_threads < 1:
        num_threads = 1
    cdef Py_ssize_t it, bh
    cdef int bad = 0, oom = 0, b, h, tile, row0, rows
    cdef float *s
    cdef float *acc
    with nogil, parallel(num_threads=num_threads):
        s = <float *>malloc((SPARSE_KEY_CHUNK + <Py_ssize_t>dv) * sizeof(float))
        acc = s + SPARSE_KEY_CHUNK
        for it in prange(items, schedule="dynamic"):
            if s == NULL:
                oom += 1
                continue
            tile = it % tiles
            bh = it // tiles
            h = bh % H
            b = bh // H
            row0 = tile * block_rows
            rows = n - row0
            if rows > block_rows:
                rows = block_rows
            bad += _sparse_rows(
                qp + <Py_ssize_t>bh * n * d,
                kp + (<Py_ssize_t>b * Hkv + h // group) * m * d,
                vp + (<Py_ssize_t>b * Hkv + h // group) * m * dv,
                op + <Py_ssize_t>bh * n * dv,
                row0, rows, d, dv, scale, rp + (bh % P) * (n + 1), cp, mvp, b, h, s, acc)
        free(s)
    return -1 if oom else bad
