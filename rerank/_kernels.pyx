# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: exact tiled attention and the three rerank scorers.

Only loops live here. Callers (rerank.kernels) validate shapes, dtypes and contiguity, pick the
thread count and hold BLAS to one thread; every entry point releases the GIL and returns the number
of non-finite scores or outputs it met (0 = success), or -1 when a scratch allocation failed, so
the caller can raise a clear error.
"""
cimport numpy as cnp
from cython.parallel cimport prange, parallel
from libc.math cimport sqrt, INFINITY
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport sgemm

cnp.import_array()

cdef extern from "_simd.h" nogil:
    float rr_dot(const float *a, const float *b, Py_ssize_t n)
    float rr_dot_norm(const float *a, const float *b, Py_ssize_t n, float *norm2)
    float rr_max(const float *x, Py_ssize_t n)
    int rr_nonfinite(const float *x, Py_ssize_t n)
    float rr_exp(float x)
    float rr_exp_shift_sum(float *x, Py_ssize_t n, float shift)
    void rr_scale(float *x, Py_ssize_t n, float a)
    void rr_axpy(float *y, const float *x, Py_ssize_t n, float a)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define RR_OPENMP 1
    #define rr_max_threads() omp_get_max_threads()
    #else
    #define RR_OPENMP 0
    #define rr_max_threads() 1
    #endif
    #ifndef RERANK_NATIVE
    #define RERANK_NATIVE 0
    #endif
    """
    int RR_OPENMP
    int RERANK_NATIVE
    int rr_max_threads() nogil


# Below this many rows OpenBLAS's sgemm (a gemv in disguise) ran 5–10× slower than dot products
# here (benchmarks/results/kernels.md): skinny products use rr_dot / rr_axpy instead.
cdef enum:
    SMALL_ROWS = 8


#: Products with at most this many rows use dot products instead of sgemm (no BLAS involved).
SMALL_PRODUCT_ROWS = SMALL_ROWS


def build_info():
    """How this extension was compiled: OpenMP support and -march=native."""
    return {"openmp": bool(RR_OPENMP), "native": bool(RERANK_NATIVE),
            "openmp_max_threads": rr_max_threads()}


# ---------------------------------------------------------------------------------------------
# BLAS threads: this OpenBLAS keeps a thread count per calling thread (a new thread starts at the
# library default), so every thread of our parallel regions sets its own to 1 through
# openblas_set_num_threads_local, whose address the caller passes (0 when the BLAS has none).

ctypedef int (*set_local_threads_t)(int) noexcept nogil


cdef inline int _blas_threads_local(size_t setter, int n) noexcept nogil:
    """Set this thread's BLAS thread count to n; returns the previous count (0 without setter)."""
    if setter == 0 or n < 1:
        return 0
    return (<set_local_threads_t>setter)(n)


# ---------------------------------------------------------------------------------------------
# BLAS helpers (row-major views of column-major Fortran sgemm)

cdef inline void _gemm_abt(int rows, int cols, int d, float alpha, const float *a, int lda,
                           const float *b, int ldb, float *c, int ldc) noexcept nogil:
    """C (rows×cols, row-major) = alpha · A (rows×d) · Bᵀ, B being (cols×d) row-major."""
    cdef float beta = 0.0
    sgemm(b"T", b"N", &cols, &rows, &d, &alpha, <float *>b, &ldb, <float *>a, &lda,
          &beta, c, &ldc)


cdef inline void _gemm_ab_acc(int rows, int cols, int inner, const float *a, int lda,
                              const float *b, int ldb, float *c, int ldc) noexcept nogil:
    """C (rows×cols) += A (rows×inner) · B (inner×cols), all row-major."""
    cdef float one = 1.0
    sgemm(b"N", b"N", &cols, &rows, &inner, &one, <float *>b, &ldb, <float *>a, &lda,
          &one, c, &ldc)


cdef inline void _small_abt(int rows, int cols, int d, float alpha, const float *a,
                            const float *b, float *c) noexcept nogil:
    """C (rows×cols) = alpha · A (rows×d) · Bᵀ by dot products (A, B row-major, ld = d)."""
    cdef int r, j
    for r in range(rows):
        for j in range(cols):
            c[<Py_ssize_t>r * cols + j] = alpha * rr_dot(a + <Py_ssize_t>r * d,
                                                         b + <Py_ssize_t>j * d, d)


cdef inline void _small_ab_acc(int rows, int cols, int inner, const float *a, const float *b,
                               float *c) noexcept nogil:
    """C (rows×cols) += A (rows×inner) · B (inner×cols) by axpy (row-major, ld = width)."""
    cdef int r, j
    for r in range(rows):
        for j in range(inner):
            rr_axpy(c + <Py_ssize_t>r * cols, b + <Py_ssize_t>j * cols, cols,
                    a[<Py_ssize_t>r * inner + j])


# ---------------------------------------------------------------------------------------------
# Exact attention: the FlashAttention-2 online-softmax recurrence over (query tile, key tile)

cdef struct MaskView:
    const char *base
    Py_ssize_t sb, sh, si, sj


cdef int _attention_tile(const float *q, const float *k, const float *v, float *o,
                         int rows, int row0, int n, int m, int d, int dv,
                         float scale, bint causal, const MaskView *mask, int b, int h,
                         int block_k, float *s, float *acc, float *rmax,
                         float *rsum) noexcept nogil:
    """Rows row0 … row0+rows−1 of one (batch, head): o = softmax(q·kᵀ·scale + mask)·v."""
    cdef int r, c, j0, cols, kv_end, last
    cdef float *srow
    cdef float mx, newmax, corr, total
    cdef const char *mrow
    for r in range(rows):
        rmax[r] = -INFINITY
        rsum[r] = 0.0
    memset(acc, 0, rows * dv * sizeof(float))
    kv_end = m
    if causal:
        kv_end = row0 + rows + m - n
        if kv_end > m:
            kv_end = m
    j0 = 0
    while j0 < kv_end:
        cols = kv_end - j0
        if cols > block_k:
            cols = block_k
        if rows <= SMALL_ROWS:
            _small_abt(rows, cols, d, scale, q, k + <Py_ssize_t>j0 * d, s)
        else:
            _gemm_abt(rows, cols, d, scale, q, d, k + <Py_ssize_t>j0 * d, d, s, cols)
        if rr_nonfinite(s, <Py_ssize_t>rows * cols):
            return 1
        for r in range(rows):
            srow = s + <Py_ssize_t>r * cols
            if mask != NULL:
                mrow = mask.base + b * mask.sb + h * mask.sh + (row0 + r) * mask.si + j0 * mask.sj
                for c in range(cols):
                    srow[c] += (<const float *>(mrow + c * mask.sj))[0]
            if causal:
                last = row0 + r + m - n - j0          # last visible column in this tile
                for c in range(last + 1 if last >= 0 else 0, cols):
                    srow[c] = -INFINITY
            mx = rr_max(srow, cols)
            newmax = mx if mx > rmax[r] else rmax[r]
            if newmax == -INFINITY:
                memset(srow, 0, cols * sizeof(float))
                continue
            corr = rr_exp(rmax[r] - newmax)
            total = rr_exp_shift_sum(srow, cols, newmax)
            if corr != 1.0:
                rr_scale(acc + <Py_ssize_t>r * dv, dv, corr)
            rsum[r] = rsum[r] * corr + total
            rmax[r] = newmax
        if rows <= SMALL_ROWS:
            _small_ab_acc(rows, dv, cols, s, v + <Py_ssize_t>j0 * dv, acc)
        else:
            _gemm_ab_acc(rows, dv, cols, s, cols, v + <Py_ssize_t>j0 * dv, dv, acc, dv)
        j0 = j0 + cols
    if rr_nonfinite(acc, <Py_ssize_t>rows * dv):    # NaN/Inf in v, even under a zero weight
        return 1
    for r in range(rows):
        if rsum[r] > 0.0:
            for c in range(dv):
                o[<Py_ssize_t>r * dv + c] = acc[<Py_ssize_t>r * dv + c] / rsum[r]
        else:
            memset(o + <Py_ssize_t>r * dv, 0, dv * sizeof(float))
    return rr_nonfinite(o, <Py_ssize_t>rows * dv)


def attention(cnp.ndarray q, cnp.ndarray k, cnp.ndarray v, cnp.ndarray out, object mask,
              bint causal, float scale, int num_threads, int block_q, int block_k,
              size_t blas_setter=0):
    """out[b, h] = softmax(q[b, h]·k[b, g]ᵀ·scale + mask[b, h])·v[b, g], g = h // (H / H_kv).

    q (B, H, n, d), k (B, Hkv, m, d), v (B, Hkv, m, dv), out (B, H, n, dv): float32, C-contiguous.
    mask: None or a float32 additive (B, H, n, m) array of any strides (zero strides broadcast).
    Extra memory per thread: block_q·(block_k + dv + 2) floats. blas_setter: the address of
    openblas_set_num_threads_local (or 0). Returns the non-finite count.
    """
    cdef int B = q.shape[0], H = q.shape[1], n = q.shape[2], d = q.shape[3]
    cdef int Hkv = k.shape[1], m = k.shape[2], dv = v.shape[3]
    cdef int group = H // Hkv
    cdef int tiles = (n + block_q - 1) // block_q
    cdef Py_ssize_t items = <Py_ssize_t>B * H * tiles
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
    if num_threads > items:
        num_threads = <int>items
    if num_threads < 1:
        num_threads = 1
    cdef Py_ssize_t it
    cdef int bad = 0, oom = 0, b, h, tile, row0, rows, blas_prev
    cdef float *s
    cdef float *acc
    cdef float *rmax
    cdef float *rsum
    with nogil, parallel(num_threads=num_threads):
        blas_prev = _blas_threads_local(blas_setter, 1)
        s = <float *>malloc(<Py_ssize_t>block_q * (block_k + dv + 2) * sizeof(float))
        acc = s + <Py_ssize_t>block_q * block_k
        rmax = acc + <Py_ssize_t>block_q * dv
        rsum = rmax + block_q
        for it in prange(items, schedule="dynamic"):
            if s == NULL:
                oom += 1
                continue
            tile = it % tiles
            h = (it // tiles) % H
            b = it // (<Py_ssize_t>tiles * H)
            row0 = tile * block_q
            rows = n - row0
            if rows > block_q:
                rows = block_q
            bad += _attention_tile(
                qp + ((<Py_ssize_t>b * H + h) * n + row0) * d,
                kp + (<Py_ssize_t>b * Hkv + h // group) * m * d,
                vp + (<Py_ssize_t>b * Hkv + h // group) * m * dv,
                op + ((<Py_ssize_t>b * H + h) * n + row0) * dv,
                rows, row0, n, m, d, dv, scale, causal, mvp, b, h, block_k,
                s, acc, rmax, rsum)
        free(s)
        _blas_threads_local(blas_setter, blas_prev)
    return -1 if oom else bad


# ---------------------------------------------------------------------------------------------
# memory-attention scorer

cdef int _memory_one(const float *q, const float *cand, int c, int d, int heads,
                     float inv_tau, float alpha, float *out, float *work) noexcept nogil:
    """out[i] = Σ_h softmax_i(q̂_h·k̂_{i,h}/τ)/h (with one refinement of q̂ when alpha ≠ 0)."""
    cdef int hd = d // heads, i, h, j, rounds = 2 if alpha != 0.0 else 1, rnd
    cdef float *logits = work                    # heads × c
    cdef float *inv_k = work + heads * c         # c
    cdef float *qr = inv_k + c                   # d: the (refined) unit query
    cdef const float *row
    cdef float qn, nrm = 0.0, mx, total, inv_h = 1.0 / heads
    qn = sqrt(rr_dot(q, q, d))
    if not (qn < INFINITY):                      # NaN, or a norm that overflows float32
        return 1
    for j in range(d):
        qr[j] = q[j] / qn if qn > 0.0 else 0.0
    for rnd in range(rounds):
        if rnd == 1:                             # q' = normalise(q̂ + α Σ_i score_i k̂_i)
            for i in range(c):
                rr_axpy(qr, cand + <Py_ssize_t>i * d, d, alpha * out[i] * inv_k[i])
            qn = sqrt(rr_dot(qr, qr, d))
            rr_scale(qr, d, 1.0 / qn if qn > 0.0 else 0.0)
        for i in range(c):
            row = cand + <Py_ssize_t>i * d
            if rnd == 0:                         # head dot products and ‖k_i‖ in one pass
                nrm = 0.0
                for h in range(heads):
                    logits[h * c + i] = rr_dot_norm(qr + h * hd, row + h * hd, hd, &nrm)
                if not (nrm < INFINITY):
                    return 1
                inv_k[i] = 1.0 / sqrt(nrm) if nrm > 0.0 else 0.0
            else:
                for h in range(heads):
                    logits[h * c + i] = rr_dot(qr + h * hd, row + h * hd, hd)
            for h in range(heads):
                logits[h * c + i] *= inv_k[i] * inv_tau
        if rr_nonfinite(logits, heads * c):
            return 1
        memset(out, 0, c * sizeof(float))
        for h in range(heads):
            mx = rr_max(logits + h * c, c)
            total = rr_exp_shift_sum(logits + h * c, c, mx)
            rr_axpy(out, logits + h * c, c, inv_h / total)
    return 0


def memory_scores(cnp.ndarray queries, cnp.ndarray candidates, cnp.ndarray out, int heads,
                  float tau, float alpha, int num_threads):
    """out (M, c) = memory-attention scores of queries (M, d) over candidates (M, c, d);
    2-D candidates (c, d) mean one query (d,) and out (c,)."""
    cdef int three = candidates.ndim == 3
    cdef int M = candidates.shape[0] if three else 1
    cdef int c = candidates.shape[1] if three else candidates.shape[0]
    cdef int d = candidates.shape[2] if three else candidates.shape[1]
    cdef const float *qp = <const float *>cnp.PyArray_DATA(queries)
    cdef const float *cp = <const float *>cnp.PyArray_DATA(candidates)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef float inv_tau = 1.0 / tau
    cdef Py_ssize_t wsize = (<Py_ssize_t>heads + 1) * c + d, qi
    cdef int bad = 0, oom = 0
    cdef float *work
    if num_threads > M:
        num_threads = M
    if num_threads <= 1:
        with nogil:
            work = <float *>malloc(wsize * sizeof(float))
            for qi in range(M):
                if work == NULL:
                    oom = 1
                    break
                bad += _memory_one(qp + qi * d, cp + qi * c * d, c, d, heads, inv_tau, alpha,
                                   op + qi * c, work)
            free(work)
        return -1 if oom else bad
    with nogil, parallel(num_threads=num_threads):
        work = <float *>malloc(wsize * sizeof(float))
        for qi in prange(M, schedule="static"):
            if work == NULL:
                oom += 1
                continue
            bad += _memory_one(qp + qi * d, cp + qi * c * d, c, d, heads, inv_tau, alpha,
                               op + qi * c, work)
        free(work)
    return -1 if oom else bad


def memory_scores_one(object query, object candidates, object heads, object tau, object alpha):
    """Fast path of one validated scoring call: scores (c,) for a float32 C-contiguous query (d,)
    and candidates (c, d), or None when anything needs the general path (other dtypes, shapes or
    parameter values: it then validates and raises the precise error). Raises FloatingPointError
    on non-finite scores (the caller names the input)."""
    if not (cnp.PyArray_CheckExact(query) and cnp.PyArray_CheckExact(candidates)):
        return None
    cdef cnp.ndarray qa = <cnp.ndarray>query
    cdef cnp.ndarray ca = <cnp.ndarray>candidates
    if (cnp.PyArray_TYPE(qa) != cnp.NPY_FLOAT32 or cnp.PyArray_TYPE(ca) != cnp.NPY_FLOAT32
            or cnp.PyArray_NDIM(qa) != 1 or cnp.PyArray_NDIM(ca) != 2
            or not cnp.PyArray_IS_C_CONTIGUOUS(qa) or not cnp.PyArray_IS_C_CONTIGUOUS(ca)
            or type(heads) is not int or type(tau) is not float or type(alpha) is not float):
        return None
    cdef Py_ssize_t c = ca.shape[0], d = ca.shape[1]
    cdef int h = heads
    cdef float t = tau, a = alpha
    if (qa.shape[0] != d or c == 0 or d == 0 or h < 1 or d % h != 0 or not (t > 0.0)
            or t == INFINITY or a != a or a == INFINITY or a == -INFINITY):
        return None
    cdef cnp.npy_intp dims[1]
    dims[0] = c
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT32, 0)
    cdef float *work
    cdef int bad = -1
    with nogil:
        work = <float *>malloc(((<Py_ssize_t>h + 1) * c + d) * sizeof(float))
        if work != NULL:
            bad = _memory_one(<const float *>cnp.PyArray_DATA(qa), <const float *>cnp.PyArray_DATA(ca),
                              <int>c, <int>d, h, 1.0 / t, a, <float *>cnp.PyArray_DATA(out),
                              work)
        free(work)
    if bad < 0:
        raise MemoryError(f"memory-attention could not allocate scratch for {c} candidates")
    if bad:
        raise FloatingPointError("memory-attention met NaN or Inf")
    return out


# ---------------------------------------------------------------------------------------------
# late interaction (cross-attention scorer) and hierarchical chunk pooling share one kernel:
# per query token t and candidate i, pool the similarities q̂_t·d̂_ij over the candidate's tokens j
# (max, or a τ-softmax-weighted mean), then weight tokens by idf and mix z-scores with the dense score.

cdef void _zmix(const float *dense, const float *sim, float lam, int c, float *out) noexcept nogil:
    """out = z(dense) + λ·z(sim), z computed in double; a signal with no spread contributes 0."""
    cdef int i
    cdef double md = 0, ms = 0, vd = 0, vs = 0, sd, ss, ad = 0, as_ = 0, x
    for i in range(c):
        md += dense[i]
        ms += sim[i]
        x = dense[i] if dense[i] > 0 else -dense[i]
        ad = x if x > ad else ad
        x = sim[i] if sim[i] > 0 else -sim[i]
        as_ = x if x > as_ else as_
    md /= c
    ms /= c
    for i in range(c):
        vd += (dense[i] - md) * (dense[i] - md)
        vs += (sim[i] - ms) * (sim[i] - ms)
    sd = sqrt(vd / c)
    ss = sqrt(vs / c)
    if sd <= 1e-6 * (ad if ad > 1e-30 else 1e-30):
        sd = 0
    if ss <= 1e-6 * (as_ if as_ > 1e-30 else 1e-30):
        ss = 0
    for i in range(c):
        out[i] = <float>(((dense[i] - md) / sd if sd > 0 else 0.0)
                         + lam * ((sim[i] - ms) / ss if ss > 0 else 0.0))


cdef int _late_one(const float *qtok, int t, const float *idf, const float *dtok,
                   const long long *offs, int c0, int c1, int d, float tau, int has_dense,
                   int block_tokens, float *sim, float *out_dense) noexcept nogil:
    """One query's t tokens against its candidates c0 … c1−1, whose tokens are
    dtok[offs[i]:offs[i+1]]: writes the pooled similarity (and the dense score unless given)."""
    cdef Py_ssize_t first = offs[c0], total = offs[c1] - offs[c0], start, stop, j, jj
    cdef int r, i, cols, cand, bad = 0
    cdef float nrm, wsum = 0.0, val, mx, e, qbar_n
    cdef float *qn = <float *>malloc(<Py_ssize_t>t * d * sizeof(float))
    cdef float *qbar = <float *>calloc(d, sizeof(float))
    cdef float *dsum = <float *>calloc(d, sizeof(float))
    cdef float *inv_dn = <float *>malloc(block_tokens * sizeof(float))
    cdef float *s = <float *>malloc(<Py_ssize_t>t * block_tokens * sizeof(float))
    cdef float *stat = <float *>malloc(<Py_ssize_t>3 * t * sizeof(float))  # max | sum | Σ p·s
    cdef float *p = <float *>malloc(block_tokens * sizeof(float))
    cdef float inv_tau = 1.0 / tau if tau > 0.0 else 0.0
    cdef float *row
    if (qn == NULL or qbar == NULL or dsum == NULL or inv_dn == NULL or s == NULL
            or stat == NULL or p == NULL):
        bad = -1                                 # out of memory: freed below, reported above
    else:
        for r in range(t):
            row = <float *>(qtok + <Py_ssize_t>r * d)
            nrm = sqrt(rr_dot(row, row, d))
            if not (nrm < INFINITY):
                bad = 1
            for j in range(d):
                qn[<Py_ssize_t>r * d + j] = row[j] / nrm if nrm > 0.0 else 0.0
            rr_axpy(qbar, qn + <Py_ssize_t>r * d, d, 1.0)
            wsum = wsum + (idf[r] if idf != NULL else 1.0)
        qbar_n = sqrt(rr_dot(qbar, qbar, d))
        cand = c0
        for r in range(t):
            stat[r] = -INFINITY
            stat[t + r] = 0.0
            stat[2 * t + r] = 0.0
        start = 0
        while start < total and not bad:
            cols = <int>(total - start) if total - start < block_tokens else block_tokens
            for j in range(cols):
                row = <float *>(dtok + (first + start + j) * d)
                nrm = sqrt(rr_dot(row, row, d))
                if not (nrm < INFINITY):
                    bad = 1
                inv_dn[j] = 1.0 / nrm if nrm > 0.0 else 0.0
            if t <= SMALL_ROWS:
                _small_abt(t, cols, d, 1.0, qn, dtok + (first + start) * d, s)
            else:
                _gemm_abt(t, cols, d, 1.0, qn, d, dtok + (first + start) * d, d, s, cols)
            if rr_nonfinite(s, <Py_ssize_t>t * cols):
                bad = 1
                break
            for r in range(t):                       # s[r, j] = q̂_r·d̂_j
                for jj in range(cols):
                    s[<Py_ssize_t>r * cols + jj] *= inv_dn[jj]
            j = 0
            while j < cols:                          # walk the candidates overlapping this tile
                stop = offs[cand + 1] - first - start
                if stop > cols:
                    stop = cols
                if not has_dense:                    # Σ_j d̂_ij for the pooled dense score
                    for jj in range(j, stop):
                        rr_axpy(dsum, dtok + (first + start + jj) * d, d, inv_dn[jj])
                for r in range(t):
                    row = s + <Py_ssize_t>r * cols + j
                    if tau <= 0.0:
                        mx = rr_max(row, stop - j)
                        if mx > stat[r]:
                            stat[r] = mx
                    else:                            # online softmax over the candidate's tokens
                        for jj in range(stop - j):
                            p[jj] = row[jj] * inv_tau
                        mx = rr_max(p, stop - j)
                        if mx < stat[r]:
                            mx = stat[r]
                        e = rr_exp(stat[r] - mx)
                        val = rr_exp_shift_sum(p, stop - j, mx)
                        stat[t + r] = stat[t + r] * e + val
                        stat[2 * t + r] = stat[2 * t + r] * e + rr_dot(p, row, stop - j)
                        stat[r] = mx
                j = stop
                if offs[cand + 1] - first - start <= cols:     # candidate finished in this tile
                    val = 0.0
                    for r in range(t):
                        mx = stat[r] if tau <= 0.0 else stat[2 * t + r] / stat[t + r]
                        val = val + (idf[r] if idf != NULL else 1.0) * mx
                        stat[r] = -INFINITY
                        stat[t + r] = 0.0
                        stat[2 * t + r] = 0.0
                    sim[cand] = val / wsum
                    if not has_dense:
                        nrm = sqrt(rr_dot(dsum, dsum, d))
                        out_dense[cand] = (rr_dot(dsum, qbar, d) / (nrm * qbar_n)
                                           if nrm > 0.0 and qbar_n > 0.0 else 0.0)
                        memset(dsum, 0, d * sizeof(float))
                    cand = cand + 1
            start = start + cols
    free(qn)
    free(qbar)
    free(dsum)
    free(inv_dn)
    free(s)
    free(stat)
    free(p)
    return bad


def late_interaction(cnp.ndarray qtok, cnp.ndarray q_off, object idf, cnp.ndarray dtok,
                     cnp.ndarray d_off, cnp.ndarray items, float tau, object dense, float lam,
                     cnp.ndarray out_final, cnp.ndarray out_sim, cnp.ndarray out_dense,
                     int num_threads, int block_tokens, size_t blas_setter=0):
    """Score M queries, each against its own c candidates, by pooled token similarities.

    qtok (Q, d) with q_off (M+1,) int64: query m owns qtok[q_off[m]:q_off[m+1]]; idf None or (Q,).
    dtok (D, d) with d_off (M, c+1) int64 (increasing per row): candidate i of query m owns
    dtok[d_off[m, i]:d_off[m, i+1]]. items (K, 3) int64 rows (query, c0, c1) cover every
    candidate once: the units of parallel work. tau ≤ 0 means max pooling. dense None or (M, c).
    blas_setter: the address of openblas_set_num_threads_local (or 0).
    Writes final = z(dense) + lam·z(sim), sim and dense (M, c); returns the non-finite count.
    """
    cdef int M = d_off.shape[0], c = d_off.shape[1] - 1, d = qtok.shape[1]
    cdef Py_ssize_t K = items.shape[0], it, qi
    cdef const float *qp = <const float *>cnp.PyArray_DATA(qtok)
    cdef const long long *qo = <const long long *>cnp.PyArray_DATA(q_off)
    cdef const float *ip = NULL if idf is None else <const float *>cnp.PyArray_DATA(idf)
    cdef const float *dp = <const float *>cnp.PyArray_DATA(dtok)
    cdef const long long *do = <const long long *>cnp.PyArray_DATA(d_off)
    cdef const long long *wk = <const long long *>cnp.PyArray_DATA(items)
    cdef int has_dense = dense is not None
    cdef const float *dnp = NULL if dense is None else <const float *>cnp.PyArray_DATA(dense)
    cdef float *fp = <float *>cnp.PyArray_DATA(out_final)
    cdef float *sp = <float *>cnp.PyArray_DATA(out_sim)
    cdef float *ep = <float *>cnp.PyArray_DATA(out_dense)
    cdef int bad = 0, oom = 0, one, threads = num_threads if num_threads < K else <int>K
    cdef int blas_prev
    if threads < 1:
        threads = 1
    with nogil, parallel(num_threads=threads):
        blas_prev = _blas_threads_local(blas_setter, 1)
        for it in prange(K, schedule="dynamic"):
            qi = wk[3 * it]
            one = _late_one(qp + qo[qi] * d, <int>(qo[qi + 1] - qo[qi]),
                             NULL if ip == NULL else ip + qo[qi], dp, do + qi * (c + 1),
                             <int>wk[3 * it + 1], <int>wk[3 * it + 2], d, tau, has_dense,
                             block_tokens, sp + qi * c, ep + qi * c)
            if one < 0:
                oom += 1
            else:
                bad += one
        _blas_threads_local(blas_setter, blas_prev)
    if oom:
        return -1
    if bad:
        return bad
    with nogil:
        for qi in range(M):
            if has_dense:
                memcpy(ep + qi * c, dnp + qi * c, c * sizeof(float))
            bad += rr_nonfinite(sp + qi * c, c)
            _zmix(ep + qi * c, sp + qi * c, lam, c, fp + qi * c)
    return bad
