# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: exact tiled attention and the three rerank scorers.

Only loops live here. Callers (rerank.kernels) validate shapes, dtypes and contiguity, pick the
thread count and hold BLAS to one thread; every entry point releases the GIL and returns the number
of non-finite scores or outputs it met (0 = success), or -1 when a scratch allocation failed, so
the caller can raise a clear error.
"""
cimport numpy as cnp
from cython.parallel cimport prange, parallel
from libc.math cimport sqrt, sqrtf, INFINITY
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport int8_t, int32_t, uint8_t, uintptr_t
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
    int RR_I8_STEP
    int RR_I8_QLEVELS
    int rr_quantize_query(const float *x, Py_ssize_t d, int8_t *codes, Py_ssize_t dp)
    int32_t rr_i8_norm2(const int8_t *x, Py_ssize_t n)
    void rr_i8_row_stats(const int8_t *x, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d,
                         int32_t *corr, float *inv)
    void rr_axpy_rows_i8(float *y, const int8_t *x, Py_ssize_t ld, Py_ssize_t rows,
                         const float *a, Py_ssize_t n)
    void rr_i8_pack_query(const int8_t *codes, Py_ssize_t ld, const int *rows, int t,
                          Py_ssize_t d, Py_ssize_t dp, uint8_t *qp)
    void rr_i8_pack_query_rows(const int8_t *codes, Py_ssize_t ld, const int *rows, int t,
                               Py_ssize_t d, Py_ssize_t dq, uint8_t *qr)
    void rr_max_rows(float *m, const float *x, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n)
    void rr_i8_tile(const uint8_t *qp, int G, Py_ssize_t dp, const float *qinv,
                    const int8_t *dc, Py_ssize_t ld, const int32_t *corr, const float *dinv,
                    int cols, float *sT)
    void rr_i8_tile_rows(const uint8_t *qr, int t, Py_ssize_t dq, const float *qinv,
                         const int8_t *dc, Py_ssize_t ld, const int32_t *corr, const float *dinv,
                         int cols, float *sT, Py_ssize_t tp)

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
    # Up to this many query tokens the int8 scorer takes dot products along the rows
    # (rr_i8_tile_rows): the packed kernel computes 8 query rows whatever t (measured: 28 µs vs
    # 107 µs at t = 1, 94 vs 107 at t = 5, 114 vs 107 at t = 6 over 2919 × 384 codes).
    ROWS_KERNEL_MAX = 5


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


cdef struct Pool:
    # One work item's pooling state: per query token r, stat[r] is the running max (or the online
    # softmax's max), stat[t + r] = Σ_j e_j and stat[2t + r] = Σ_j e_j·s_j.
    int t, d, has_dense, cand
    float tau, inv_tau, wsum, qbar_n
    const float *idf
    const long long *offs
    Py_ssize_t first
    float *stat
    float *p
    float *dsum
    const float *qbar
    float *sim
    float *out_dense


cdef void _pool_tile(Pool *pl, const float *s, int cols, Py_ssize_t start, const float *inv_dn,
                     const float *dtile, const signed char *ctile, Py_ssize_t ld) noexcept nogil:
    """Fold s (t × cols) = q̂_r·d̂_j for document tokens first+start+j into the pooling of the
    candidates they belong to, finishing those that end in this tile. Without a given dense score,
    Σ_j d̂_j accumulates from token j = dtile[j·ld:] (float) or ctile[j·ld:] (int8) times inv_dn[j]."""
    cdef int t = pl.t, d = pl.d, r
    cdef Py_ssize_t j = 0, jj, stop
    cdef const float *row
    cdef float *stat = pl.stat
    cdef float *p = pl.p
    cdef float mx, e, val, nrm
    while j < cols:                              # walk the candidates overlapping this tile
        stop = pl.offs[pl.cand + 1] - pl.first - start
        if stop > cols:
            stop = cols
        if not pl.has_dense and ctile != NULL:   # Σ_j d̂_ij for the pooled dense score
            rr_axpy_rows_i8(pl.dsum, <const int8_t *>ctile + j * ld, ld, stop - j, inv_dn + j, d)
        elif not pl.has_dense:
            for jj in range(j, stop):
                rr_axpy(pl.dsum, dtile + jj * ld, d, inv_dn[jj])
        for r in range(t):
            row = s + <Py_ssize_t>r * cols + j
            if pl.tau <= 0.0:
                mx = rr_max(row, stop - j)
                if mx > stat[r]:
                    stat[r] = mx
            else:                                # online softmax over the candidate's tokens
                for jj in range(stop - j):
                    p[jj] = row[jj] * pl.inv_tau
                mx = rr_max(p, stop - j)
                if mx < stat[r]:
                    mx = stat[r]
                e = rr_exp(stat[r] - mx)
                val = rr_exp_shift_sum(p, stop - j, mx)
                stat[t + r] = stat[t + r] * e + val
                stat[2 * t + r] = stat[2 * t + r] * e + rr_dot(p, row, stop - j)
                stat[r] = mx
        j = stop
        if pl.offs[pl.cand + 1] - pl.first - start <= cols:     # candidate finished in this tile
            val = 0.0
            for r in range(t):
                mx = stat[r] if pl.tau <= 0.0 else stat[2 * t + r] / stat[t + r]
                val = val + (pl.idf[r] if pl.idf != NULL else 1.0) * mx
                stat[r] = -INFINITY
                stat[t + r] = 0.0
                stat[2 * t + r] = 0.0
            pl.sim[pl.cand] = val / pl.wsum
            if not pl.has_dense:
                nrm = sqrt(rr_dot(pl.dsum, pl.dsum, d))
                pl.out_dense[pl.cand] = (rr_dot(pl.dsum, pl.qbar, d) / (nrm * pl.qbar_n)
                                         if nrm > 0.0 and pl.qbar_n > 0.0 else 0.0)
                memset(pl.dsum, 0, d * sizeof(float))
            pl.cand = pl.cand + 1


cdef int _pool_init(Pool *pl, int t, const float *idf, const long long *offs, int c0, int d,
                    float tau, int has_dense, int block_tokens, float *sim,
                    float *out_dense) noexcept nogil:
    """Allocate and reset the pooling state of one work item; -1 when out of memory."""
    cdef int r
    pl.t = t
    pl.d = d
    pl.has_dense = has_dense
    pl.cand = c0
    pl.tau = tau
    pl.inv_tau = 1.0 / tau if tau > 0.0 else 0.0
    pl.wsum = 0.0
    pl.qbar_n = 0.0
    pl.idf = idf
    pl.offs = offs
    pl.first = offs[c0]
    pl.sim = sim
    pl.out_dense = out_dense
    pl.stat = <float *>malloc(<Py_ssize_t>3 * t * sizeof(float))
    pl.p = <float *>malloc(block_tokens * sizeof(float))
    pl.dsum = <float *>calloc(d, sizeof(float))
    if pl.stat == NULL or pl.p == NULL or pl.dsum == NULL:
        return -1
    for r in range(t):
        pl.stat[r] = -INFINITY
        pl.stat[t + r] = 0.0
        pl.stat[2 * t + r] = 0.0
        pl.wsum = pl.wsum + (idf[r] if idf != NULL else 1.0)
    return 0


cdef void _pool_free(Pool *pl) noexcept nogil:
    free(pl.stat)
    free(pl.p)
    free(pl.dsum)


cdef int _late_one(const float *qtok, int t, const float *idf, const float *dtok,
                   const long long *offs, int c0, int c1, int d, float tau, int has_dense,
                   int block_tokens, float *sim, float *out_dense) noexcept nogil:
    """One query's t tokens against its candidates c0 … c1−1, whose tokens are
    dtok[offs[i]:offs[i+1]]: writes the pooled similarity (and the dense score unless given)."""
    cdef Pool pl
    cdef Py_ssize_t first = offs[c0], total = offs[c1] - offs[c0], start, j, jj
    cdef int r, cols, bad = _pool_init(&pl, t, idf, offs, c0, d, tau, has_dense, block_tokens,
                                       sim, out_dense)
    cdef float nrm
    cdef float *qn = <float *>malloc(<Py_ssize_t>t * d * sizeof(float))
    cdef float *qbar = <float *>calloc(d, sizeof(float))
    cdef float *inv_dn = <float *>malloc(block_tokens * sizeof(float))
    cdef float *s = <float *>malloc(<Py_ssize_t>t * block_tokens * sizeof(float))
    cdef float *row
    if bad or qn == NULL or qbar == NULL or inv_dn == NULL or s == NULL:
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
        pl.qbar = qbar
        pl.qbar_n = sqrt(rr_dot(qbar, qbar, d))
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
            _pool_tile(&pl, s, cols, start, inv_dn, dtok + (first + start) * d, NULL, d)
            start = start + cols
    _pool_free(&pl)
    free(qn)
    free(qbar)
    free(inv_dn)
    free(s)
    return bad


cdef void _pool_tile_t(Pool *pl, const float *sT, Py_ssize_t tp, int cols, Py_ssize_t start,
                       const float *inv_dn, const signed char *ctile, Py_ssize_t ld,
                       float *m) noexcept nogil:
    """_pool_tile for max pooling (tau ≤ 0) on transposed similarities: sT[j·tp + r] = â_r·b̂_j
    (cols × tp, tp ≥ t a multiple of 8); m (tp floats, −inf at the start of a candidate) holds the
    running maxima of the current candidate. Same arithmetic, so the same results, as _pool_tile."""
    cdef int t = pl.t, r
    cdef Py_ssize_t j = 0, stop
    cdef float val, nrm
    while j < cols:                              # walk the candidates overlapping this tile
        stop = pl.offs[pl.cand + 1] - pl.first - start
        if stop > cols:
            stop = cols
        if not pl.has_dense:                     # Σ_j b̂_ij for the pooled dense score
            rr_axpy_rows_i8(pl.dsum, <const int8_t *>ctile + j * ld, ld, stop - j, inv_dn + j, pl.d)
        rr_max_rows(m, sT + j * tp, tp, stop - j, tp)
        j = stop
        if pl.offs[pl.cand + 1] - pl.first - start <= cols:     # candidate finished in this tile
            val = 0.0
            for r in range(t):
                val = val + (pl.idf[r] if pl.idf != NULL else 1.0) * m[r]
            for r in range(tp):
                m[r] = -INFINITY
            pl.sim[pl.cand] = val / pl.wsum
            if not pl.has_dense:
                nrm = sqrt(rr_dot(pl.dsum, pl.dsum, pl.d))
                pl.out_dense[pl.cand] = (rr_dot(pl.dsum, pl.qbar, pl.d) / (nrm * pl.qbar_n)
                                         if nrm > 0.0 and pl.qbar_n > 0.0 else 0.0)
                memset(pl.dsum, 0, pl.d * sizeof(float))
            pl.cand = pl.cand + 1


cdef inline char *_carve(char **p, Py_ssize_t nbytes) noexcept nogil:
    """The next nbytes of a scratch block, 64-byte aligned."""
    cdef char *out = <char *>((<uintptr_t>p[0] + 63) & ~(<uintptr_t>63))
    p[0] = out + nbytes
    return out


cdef int _late_one_int8(const float *qtok, int t, const float *idf, const signed char *codes,
                        const long long *offs, int c0, int c1, int d, float tau, int has_dense,
                        int block_tokens, float *sim, float *out_dense) noexcept nogil:
    """_late_one on int8 document codes b: s[r, j] = cos(a_r, b_j) with a_r the query token's
    7-bit codes (rr_quantize_query), by exact integer dot products (rr_i8_tile, or
    rr_i8_tile_rows for up to ROWS_KERNEL_MAX query tokens); the default dense score is
    cos(Σ_r a_r/‖a_r‖, Σ_j b_j/‖b_j‖). Query tokens of idf weight 0 are left out of the
    similarities (they add 0·max to the pooled sum: the results are the same). Document rows are
    read in place when d is a multiple of the kernel's step, else from a copy padded to dp bytes.
    All scratch is one allocation."""
    cdef Pool pl
    cdef Py_ssize_t first = offs[c0], total = offs[c1] - offs[c0], start, j, dp, ld
    cdef int gmax = (t + 7) // 8, r, i, cols, n2, ta = 0, G, tp, bad, rowmode
    for r in range(t):                           # the query tokens that count
        if idf == NULL or idf[r] != 0.0:
            ta = ta + 1
    rowmode = ta <= ROWS_KERNEL_MAX
    dp = (d + 31) // 32 * 32 if rowmode else (d + RR_I8_STEP - 1) // RR_I8_STEP * RR_I8_STEP
    G = (ta + 7) // 8
    tp = 8 * G
    # one scratch block of 64-byte aligned pieces (12 at most)
    cdef Py_ssize_t nbytes = (<Py_ssize_t>gmax * 8 * dp + <Py_ssize_t>t * dp
                              + <Py_ssize_t>t * (sizeof(int) + 2 * sizeof(float))
                              + <Py_ssize_t>8 * gmax * sizeof(float) * (2 + block_tokens)
                              + d * sizeof(float)
                              + <Py_ssize_t>block_tokens * (sizeof(float) + sizeof(int32_t))
                              + (<Py_ssize_t>t * block_tokens * sizeof(float) if tau > 0.0 else 0)
                              + (<Py_ssize_t>block_tokens * dp if dp != d else 0) + 13 * 64)
    cdef char *block = <char *>malloc(nbytes)
    cdef char *p = block
    if block == NULL:
        return -1
    cdef uint8_t *qp = <uint8_t *>_carve(&p, <Py_ssize_t>gmax * 8 * dp)  # packed query codes
    cdef int8_t *qc = <int8_t *>_carve(&p, <Py_ssize_t>t * dp)            # query codes (t × dp)
    cdef int *rows = <int *>_carve(&p, t * sizeof(int))                  # the tokens that count
    cdef float *idf_c = <float *>_carve(&p, t * sizeof(float))           # … and their weights
    cdef float *qinv = <float *>_carve(&p, t * sizeof(float))
    cdef float *qinv_p = <float *>_carve(&p, 8 * gmax * sizeof(float))   # qinv of rows, 0-padded
    cdef float *m = <float *>_carve(&p, 8 * gmax * sizeof(float))        # running maxima
    cdef float *sT = <float *>_carve(&p, <Py_ssize_t>8 * gmax * block_tokens * sizeof(float))
    cdef float *qbar = <float *>_carve(&p, d * sizeof(float))
    cdef float *inv_dn = <float *>_carve(&p, block_tokens * sizeof(float))
    cdef int32_t *corr = <int32_t *>_carve(&p, block_tokens * sizeof(int32_t))
    cdef float *s = NULL
    cdef int8_t *padded = NULL                  # the tile with rows padded to dp bytes
    if tau > 0.0:
        s = <float *>_carve(&p, <Py_ssize_t>t * block_tokens * sizeof(float))
    if dp != d:
        padded = <int8_t *>_carve(&p, <Py_ssize_t>block_tokens * dp)
        memset(padded, 0, <Py_ssize_t>block_tokens * dp)
    if rowmode:                                  # rr_i8_tile_rows leaves lanes ta … tp−1
        memset(sT, 0, <Py_ssize_t>tp * block_tokens * sizeof(float))
    cdef const int8_t *tile
    cdef const float *row
    i = 0
    for r in range(t):
        if idf == NULL or idf[r] != 0.0:
            rows[i] = r
            idf_c[i] = idf[r] if idf != NULL else 1.0
            i = i + 1
    bad = _pool_init(&pl, ta, idf_c if idf != NULL else NULL, offs, c0, d, tau, has_dense,
                     block_tokens, sim, out_dense)
    memset(qbar, 0, d * sizeof(float))
    if not bad:
        for r in range(t):
            row = qtok + <Py_ssize_t>r * d
            if rr_quantize_query(row, d, qc + r * dp, dp):
                bad = 1
                break
            n2 = rr_i8_norm2(qc + r * dp, d)
            qinv[r] = <float>1.0 / sqrtf(<float>n2) if n2 > 0 else 0.0
            if not has_dense:
                rr_axpy_rows_i8(qbar, qc + r * dp, dp, 1, qinv + r, d)
    if not bad:
        if rowmode:
            rr_i8_pack_query_rows(qc, dp, rows, ta, d, dp, qp)
        else:
            rr_i8_pack_query(qc, dp, rows, ta, d, dp, qp)
        for i in range(tp):
            qinv_p[i] = qinv[rows[i]] if i < ta else 0.0
            m[i] = -INFINITY
        pl.qbar = qbar
        pl.qbar_n = sqrt(rr_dot(qbar, qbar, d))
        start = 0
        while start < total:
            cols = <int>(total - start) if total - start < block_tokens else block_tokens
            tile = <const int8_t *>codes + (first + start) * d
            ld = d
            if padded != NULL:
                for j in range(cols):
                    memcpy(padded + j * dp, tile + j * d, d)
                tile = padded
                ld = dp
            rr_i8_row_stats(tile, ld, cols, d, corr, inv_dn)
            if rowmode:
                rr_i8_tile_rows(qp, ta, dp, qinv_p, tile, ld, corr, inv_dn, cols, sT, tp)
            else:
                rr_i8_tile(qp, G, dp, qinv_p, tile, ld, corr, inv_dn, cols, sT)
            if tau <= 0.0:
                _pool_tile_t(&pl, sT, tp, cols, start, inv_dn, <const signed char *>tile, ld, m)
            else:                                # soft pooling works on s (ta × cols)
                for r in range(ta):
                    for j in range(cols):
                        s[<Py_ssize_t>r * cols + j] = sT[j * tp + r]
                _pool_tile(&pl, s, cols, start, inv_dn, NULL, <const signed char *>tile, ld)
            start = start + cols
    _pool_free(&pl)
    free(block)
    return -1 if bad < 0 else bad


cdef struct LateJob:
    # The arrays of one late_interaction call (see its docstring); exactly one of dtok, codes is set.
    const float *qtok
    const long long *q_off
    const float *idf
    const float *dtok
    const signed char *codes
    const long long *d_off
    const long long *items
    int c, d, block_tokens, has_dense
    float tau
    float *sim
    float *dense


cdef int _late_item(const LateJob *job, Py_ssize_t it) noexcept nogil:
    cdef Py_ssize_t qi = job.items[3 * it]
    cdef const long long *qo = job.q_off
    cdef int t = <int>(qo[qi + 1] - qo[qi])
    cdef int c0 = <int>job.items[3 * it + 1], c1 = <int>job.items[3 * it + 2]
    cdef const float *idf = job.idf
    if idf != NULL:
        idf = idf + qo[qi]
    cdef const long long *offs = job.d_off + qi * (job.c + 1)
    if job.codes != NULL:
        return _late_one_int8(job.qtok + qo[qi] * job.d, t, idf, job.codes, offs, c0, c1, job.d,
                              job.tau, job.has_dense, job.block_tokens, job.sim + qi * job.c,
                              job.dense + qi * job.c)
    return _late_one(job.qtok + qo[qi] * job.d, t, idf, job.dtok, offs, c0, c1, job.d, job.tau,
                     job.has_dense, job.block_tokens, job.sim + qi * job.c, job.dense + qi * job.c)


cdef void _late_job(cnp.ndarray qtok, cnp.ndarray q_off, object idf, cnp.ndarray d_off,
                      cnp.ndarray items, float tau, object dense, cnp.ndarray out_sim,
                      cnp.ndarray out_dense, int block_tokens, LateJob *job):
    job.qtok = <const float *>cnp.PyArray_DATA(qtok)
    job.q_off = <const long long *>cnp.PyArray_DATA(q_off)
    job.idf = NULL
    if idf is not None:
        job.idf = <const float *>cnp.PyArray_DATA(idf)
    job.dtok = NULL
    job.codes = NULL
    job.d_off = <const long long *>cnp.PyArray_DATA(d_off)
    job.items = <const long long *>cnp.PyArray_DATA(items)
    job.c = d_off.shape[1] - 1
    job.d = qtok.shape[1]
    job.block_tokens = block_tokens
    job.has_dense = dense is not None
    job.tau = tau
    job.sim = <float *>cnp.PyArray_DATA(out_sim)
    job.dense = <float *>cnp.PyArray_DATA(out_dense)


cdef int _late_run(const LateJob *job, Py_ssize_t K, int num_threads, size_t blas_setter,
                   const float *dense, float lam, int M, float *final) noexcept nogil:
    """Run the K work items on up to num_threads threads, then final = z(dense) + λ·z(sim) per
    query (dense: the given scores, or NULL for the pooled ones); -1 when out of memory, else
    the non-finite count."""
    cdef Py_ssize_t it, qi
    cdef int c = job.c, bad = 0, oom = 0, one, blas_prev = 0
    cdef int threads = num_threads if num_threads < K else <int>K
    if threads < 1:
        threads = 1
    with parallel(num_threads=threads):
        blas_prev = _blas_threads_local(blas_setter, 1)
        for it in prange(K, schedule="dynamic"):
            one = _late_item(job, it)
            if one < 0:
                oom += 1
            else:
                bad += one
        _blas_threads_local(blas_setter, blas_prev)
    if oom:
        return -1
    if bad:
        return bad
    return _late_mix(job, dense, lam, M, final)


cdef int _late_mix(const LateJob *job, const float *dense, float lam, int M,
                   float *final) noexcept nogil:
    """final = z(dense) + λ·z(sim) per query (dense: the given scores, or NULL for the pooled
    ones); returns the non-finite count of sim."""
    cdef Py_ssize_t qi
    cdef int c = job.c, bad = 0
    for qi in range(M):
        if dense != NULL:
            memcpy(job.dense + qi * c, dense + qi * c, c * sizeof(float))
        bad += rr_nonfinite(job.sim + qi * c, c)
        _zmix(job.dense + qi * c, job.sim + qi * c, lam, c, final + qi * c)
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
    cdef LateJob job
    _late_job(qtok, q_off, idf, d_off, items, tau, dense, out_sim, out_dense, block_tokens, &job)
    job.dtok = <const float *>cnp.PyArray_DATA(dtok)
    cdef const float *dnp = NULL
    if dense is not None:
        dnp = <const float *>cnp.PyArray_DATA(dense)
    cdef float *fp = <float *>cnp.PyArray_DATA(out_final)
    cdef Py_ssize_t K = items.shape[0]
    cdef int M = d_off.shape[0]
    cdef int bad
    with nogil:
        bad = _late_run(&job, K, num_threads, blas_setter, dnp, lam, M, fp)
    return bad


def late_interaction_int8(cnp.ndarray qtok, cnp.ndarray q_off, object idf, cnp.ndarray codes,
                          cnp.ndarray d_off, cnp.ndarray items, float tau, object dense,
                          float lam, cnp.ndarray out_final, cnp.ndarray out_sim,
                          cnp.ndarray out_dense, int num_threads, int block_tokens):
    """late_interaction on int8 document codes (D, d), C-contiguous, d < 2¹⁶: s = cos(a_t, b_j),
    a_t = rint(64·q_t/max|q_t|) the query token's 7-bit codes, by exact integer dot products
    (AVX2 vpmaddubsw on a_t + 64 and the codes where compiled with it: _simd.h); the default
    dense score is the cosine of the mean normalised codes. Everything else as in
    late_interaction (no BLAS involved)."""
    cdef LateJob job
    _late_job(qtok, q_off, idf, d_off, items, tau, dense, out_sim, out_dense, block_tokens, &job)
    job.codes = <const signed char *>cnp.PyArray_DATA(codes)
    cdef const float *dnp = NULL
    if dense is not None:
        dnp = <const float *>cnp.PyArray_DATA(dense)
    cdef float *fp = <float *>cnp.PyArray_DATA(out_final)
    cdef Py_ssize_t K = items.shape[0]
    cdef int M = d_off.shape[0]
    cdef int bad
    with nogil:
        bad = _late_run(&job, K, num_threads, 0, dnp, lam, M, fp)
    return bad


cdef inline bint _plain(object x, int typenum, int ndim):
    """x is exactly an ndarray of this dtype and rank, C-contiguous."""
    return (cnp.PyArray_CheckExact(x) and cnp.PyArray_TYPE(<cnp.ndarray>x) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray>x) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x))


def late_interaction_int8_one(object query_tokens, object codes, object offsets, object tau,
                              object dense, object lam, int num_threads, long long split_work,
                              int block_tokens):
    """Fast path of one validated int8 late-interaction call (one query, no idf): (final, sim,
    dense) (c,) for float32 C-contiguous query tokens (t, d), int8 codes (T, d) and int64
    offsets (c+1,), or None when anything needs the general path (other types or shapes, bad
    values, or work it would share among num_threads threads: over split_work multiply-adds);
    that path validates and raises the precise error. Raises FloatingPointError on NaN/Inf."""
    if not (_plain(query_tokens, cnp.NPY_FLOAT32, 2) and _plain(codes, cnp.NPY_INT8, 2)
            and _plain(offsets, cnp.NPY_INT64, 1) and (tau is None or type(tau) is float)
            and type(lam) is float and (dense is None or _plain(dense, cnp.NPY_FLOAT32, 1))):
        return None
    cdef cnp.ndarray qa = <cnp.ndarray>query_tokens
    cdef cnp.ndarray ca = <cnp.ndarray>codes
    cdef cnp.ndarray oa = <cnp.ndarray>offsets
    cdef Py_ssize_t t = qa.shape[0], d = qa.shape[1], T = ca.shape[0], c = oa.shape[0] - 1, i
    cdef const long long *offs = <const long long *>cnp.PyArray_DATA(oa)
    cdef float tau_f = -1.0 if tau is None else <float>tau, lam_f = lam
    if (t == 0 or d == 0 or T == 0 or c < 1 or ca.shape[1] != d or d > 65536
            or (num_threads > 1 and t * T * d > split_work)
            or (tau is not None and not (0.0 < tau_f < INFINITY))
            or not (-INFINITY < lam_f < INFINITY)
            or (dense is not None and (<cnp.ndarray>dense).shape[0] != c)
            or offs[0] != 0 or offs[c] != T):
        return None
    for i in range(c):
        if offs[i + 1] <= offs[i]:
            return None
    cdef const float *dnp = NULL
    if dense is not None:
        dnp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>dense)
        if rr_nonfinite(dnp, c):
            return None
    cdef cnp.npy_intp dims[1]
    dims[0] = c
    cdef cnp.ndarray final = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT32, 0)
    cdef cnp.ndarray sim = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT32, 0)
    cdef cnp.ndarray dense_out = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT32, 0)
    cdef long long q_off[2]
    cdef long long item[3]
    q_off[0], q_off[1] = 0, t
    item[0], item[1], item[2] = 0, 0, c
    cdef LateJob job
    job.qtok = <const float *>cnp.PyArray_DATA(qa)
    job.q_off = q_off
    job.idf = NULL
    job.dtok = NULL
    job.codes = <const signed char *>cnp.PyArray_DATA(ca)
    job.d_off = offs
    job.items = item
    job.c = <int>c
    job.d = <int>d
    job.block_tokens = block_tokens
    job.has_dense = dense is not None
    job.tau = tau_f
    job.sim = <float *>cnp.PyArray_DATA(sim)
    job.dense = <float *>cnp.PyArray_DATA(dense_out)
    cdef int bad
    with nogil:                                  # one work item: no parallel region
        bad = _late_item(&job, 0)
        if bad == 0:
            bad = _late_mix(&job, dnp, lam_f, 1, <float *>cnp.PyArray_DATA(final))
    if bad < 0:
        raise MemoryError(f"late interaction could not allocate scratch for {c} candidates")
    if bad:
        raise FloatingPointError("late interaction met NaN or Inf")
    return final, sim, dense_out


# ---------------------------------------------------------------------------------------------
# kernels of the mechanism families, one include file each
include "_kernels_sparse.pxi"
include "_kernels_linear.pxi"
include "_kernels_flash.pxi"
include "_kernels_batch.pxi"
