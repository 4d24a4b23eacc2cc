# Compiled kernel of batch reranking (included by _kernels.pyx).
#
# Memory-attention scores of many queries, each over its own candidate rows of one shared table:
# query i scores table[rows[offsets[i]:offsets[i+1]]]. The rows are read in place through their
# indices (never gathered into a copy), and each query is scored by the same sequence of float
# operations as _memory_one, so a query's scores do not depend on which batch, sub-batch or
# thread computes them, and equal memory_scores_one on the gathered rows bit for bit.

cdef extern from *:
    """
    /* Ask for the next candidate row while this one is scored: rows are scattered over the
     * table, so the hardware prefetcher cannot guess where the next one starts. */
    static inline void rr_prefetch_row(const float *row, Py_ssize_t d) {
        const char *p = (const char *)row, *end = (const char *)(row + d);
        for (; p < end; p += 64) __builtin_prefetch(p, 0, 3);
    }
    """
    void rr_prefetch_row(const float *row, Py_ssize_t d) nogil


cdef int _memory_rows_one(const float *q, const float *table, const int32_t *rows, int c, int d,
                          int heads, float inv_tau, float alpha, float *out,
                          float *work) noexcept nogil:
    """_memory_one over the candidate rows table[rows[0]], …, table[rows[c-1]]."""
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
                rr_axpy(qr, table + <Py_ssize_t>rows[i] * d, d, alpha * out[i] * inv_k[i])
            qn = sqrt(rr_dot(qr, qr, d))
            rr_scale(qr, d, 1.0 / qn if qn > 0.0 else 0.0)
        for i in range(c):
            row = table + <Py_ssize_t>rows[i] * d
            if i + 1 < c:
                rr_prefetch_row(table + <Py_ssize_t>rows[i + 1] * d, d)
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


cdef inline bint _is_c(cnp.ndarray a, int kind, int ndim):
    return (cnp.PyArray_TYPE(a) == kind and cnp.PyArray_NDIM(a) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(a))


def memory_scores_rows(cnp.ndarray queries, cnp.ndarray table, cnp.ndarray rows,
                       cnp.ndarray offsets, cnp.ndarray out, int heads, float tau, float alpha,
                       int num_threads):
    """out[offsets[i]:offsets[i+1]] = memory-attention scores of queries[i] (d,) over the rows
    table[rows[offsets[i]:offsets[i+1]]] (table (N, d) float32, rows int32 in [0, N), offsets
    int64 (m+1,) non-decreasing from 0, every query with at least one row; all validated by the
    caller; the dtypes, layout and row bounds are checked again here, cheaply, so that a wrong
    call raises instead of reading out of bounds). Returns the number of queries that met NaN or
    Inf, or -1 when scratch allocation failed."""
    if not (_is_c(queries, cnp.NPY_FLOAT32, 2) and _is_c(table, cnp.NPY_FLOAT32, 2)
            and _is_c(out, cnp.NPY_FLOAT32, 1) and _is_c(rows, cnp.NPY_INT32, 1)
            and _is_c(offsets, cnp.NPY_INT64, 1)):
        raise TypeError("memory_scores_rows: queries (m, d), table (N, d) and out (R,) float32, "
                        "rows (R,) int32, offsets (m+1,) int64, all C-contiguous")
    if (table.shape[1] != queries.shape[1] or offsets.shape[0] != queries.shape[0] + 1
            or heads < 1 or queries.shape[1] % heads != 0 or not (tau > 0.0)):
        raise ValueError("memory_scores_rows: shapes or parameters do not match")
    cdef Py_ssize_t m = queries.shape[0], qi, width = 1
    cdef int d = queries.shape[1]
    cdef const float *qp = <const float *>cnp.PyArray_DATA(queries)
    cdef const float *tp = <const float *>cnp.PyArray_DATA(table)
    cdef const int32_t *rp = <const int32_t *>cnp.PyArray_DATA(rows)
    cdef const cnp.int64_t *op = <const cnp.int64_t *>cnp.PyArray_DATA(offsets)
    cdef float *outp = <float *>cnp.PyArray_DATA(out)
    cdef float inv_tau = 1.0 / tau
    cdef Py_ssize_t wsize
    cdef int bad = 0, oom = 0
    cdef float *work
    cdef Py_ssize_t n_rows = table.shape[0], total = rows.shape[0], r
    if op[0] != 0 or op[m] != total or out.shape[0] != total:
        raise ValueError("memory_scores_rows: offsets must run from 0 to len(rows) = len(out)")
    for qi in range(m):
        if op[qi + 1] - op[qi] > width:
            width = op[qi + 1] - op[qi]
        if op[qi + 1] <= op[qi]:
            raise ValueError(f"memory_scores_rows: query {qi} has no candidate rows")
    for r in range(total):
        if rp[r] < 0 or rp[r] >= n_rows:
            raise ValueError(f"memory_scores_rows: row {rp[r]} is outside the table")
    wsize = (<Py_ssize_t>heads + 1) * width + d
    if num_threads > m:
        num_threads = <int>m
    if num_threads <= 1:
        with nogil:
            work = <float *>malloc(wsize * sizeof(float))
            for qi in range(m):
                if work == NULL:
                    oom = 1
                    break
                bad += _memory_rows_one(qp + qi * d, tp, rp + op[qi], <int>(op[qi + 1] - op[qi]),
                                        d, heads, inv_tau, alpha, outp + op[qi], work)
            free(work)
        return -1 if oom else bad
    with nogil, parallel(num_threads=num_threads):
        work = <float *>malloc(wsize * sizeof(float))
        for qi in prange(m, schedule="dynamic", chunksize=16):
            if work == NULL:
                oom += 1
                continue
            bad += _memory_rows_one(qp + qi * d, tp, rp + op[qi], <int>(op[qi + 1] - op[qi]),
                                    d, heads, inv_tau, alpha, outp + op[qi], work)
        free(work)
    return -1 if oom else bad
