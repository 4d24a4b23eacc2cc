# Compiled kernels of the linear attention mechanisms (included by _kernels.pyx).
#
# Every linear mechanism that is a feature map (linear-attention, performer, cosformer, rfa) ends in
# the same core: given φ(q) (n, r), φ(k) (m, r) and v (m, dv) per head,
#     out_i = φq_i·S / guard(φq_i·z),   S = Σ_j φk_j v_jᵀ (r × dv),   z = Σ_j φk_j (r),
# the sums running over every key (non-causal) or over the keys j ≤ i + m − n (causal, bottom-right
# aligned). guard(x) = x when |x| ≥ eps, else ±eps with x's sign (+eps for 0): the denominator of a
# feature map that can be zero (relu) or of either sign (random Fourier features) never divides by
# ~0. A row whose keys are all hidden gets S = 0, z = 0, hence out = 0.

cdef extern from *:
    """
    #include "_simd.h"

    /* One step of the causal recurrence on a row-major r × dv state S and its normaliser z.
     * Absorb (phik != NULL): S ← decay·S + weight·φk vᵀ, z ← decay·z + weight·φk.
     * Read (phiq != NULL): o = φq·S, with S after the absorb (unnormalised: the caller divides
     * by guard(φq·z)). Both in one pass over S, 32 columns at a time, so each row of S is
     * loaded once and the output columns stay in registers. */
    static void rr_lin_step(float *S, float *z, const float *phik, const float *v, float decay,
                            float weight, const float *phiq, float *o, Py_ssize_t r,
                            Py_ssize_t dv) {
        Py_ssize_t c = 0, a;
        for (; c + 32 <= dv; c += 32) {
            rr_v8 v0 = {0}, v1 = {0}, v2 = {0}, v3 = {0}, o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};
            if (phik) {
                v0 = rr_load8(v + c); v1 = rr_load8(v + c + 8);
                v2 = rr_load8(v + c + 16); v3 = rr_load8(v + c + 24);
            }
            for (a = 0; a < r; ++a) {
                float *row = S + a * dv + c;
                rr_v8 s0 = rr_load8(row), s1 = rr_load8(row + 8);
                rr_v8 s2 = rr_load8(row + 16), s3 = rr_load8(row + 24);
                if (phik) {
                    float f = weight * phik[a];
                    s0 = s0 * decay + v0 * f; s1 = s1 * decay + v1 * f;
                    s2 = s2 * decay + v2 * f; s3 = s3 * decay + v3 * f;
                    memcpy(row, &s0, sizeof s0); memcpy(row + 8, &s1, sizeof s1);
                    memcpy(row + 16, &s2, sizeof s2); memcpy(row + 24, &s3, sizeof s3);
                }
                if (phiq) {
                    float g = phiq[a];
                    o0 += s0 * g; o1 += s1 * g; o2 += s2 * g; o3 += s3 * g;
                }
            }
            if (phiq) {
                memcpy(o + c, &o0, sizeof o0); memcpy(o + c + 8, &o1, sizeof o1);
                memcpy(o + c + 16, &o2, sizeof o2); memcpy(o + c + 24, &o3, sizeof o3);
            }
        }
        for (; c + 8 <= dv; c += 8) {
            rr_v8 v0 = {0}, o0 = {0};
            if (phik) v0 = rr_load8(v + c);
            for (a = 0; a < r; ++a) {
                float *row = S + a * dv + c;
                rr_v8 s0 = rr_load8(row);
                if (phik) {
                    s0 = s0 * decay + v0 * (weight * phik[a]);
                    memcpy(row, &s0, sizeof s0);
                }
                if (phiq) o0 += s0 * phiq[a];
            }
            if (phiq) memcpy(o + c, &o0, sizeof o0);
        }
        for (; c < dv; ++c) {
            float acc = 0.0f;
            for (a = 0; a < r; ++a) {
                float *cell = S + a * dv + c;
                if (phik) *cell = *cell * decay + v[c] * (weight * phik[a]);
                if (phiq) acc += *cell * phiq[a];
            }
            if (phiq) o[c] = acc;
        }
        if (phik)
            for (a = 0; a < r; ++a) z[a] = z[a] * decay + weight * phik[a];
    }
    """
    void rr_lin_step(float *S, float *z, const float *phik, const float *v, float decay,
                     float weight, const float *phiq, float *o, Py_ssize_t r,
                     Py_ssize_t dv) nogil


cdef enum:
    LIN_KEY_CHUNK = 4096      # keys per partial state (S, z) of the non-causal form
    LIN_ROW_TILE = 256        # query rows per readout item of the non-causal form


cdef inline float _lin_inverse(float den, float eps) noexcept nogil:
    """1 / guard(den)."""
    if den >= eps or den <= -eps:
        return 1.0 / den
    return -1.0 / eps if den < 0.0 else 1.0 / eps


cdef inline void _lin_gemm_atb(int rows, int cols, int inner, const float *a, const float *b,
                               float *c) noexcept nogil:
    """C (rows×cols) = Aᵀ·B, A (inner×rows) and B (inner×cols) row-major."""
    cdef float one = 1.0, zero = 0.0
    sgemm(b"N", b"T", &cols, &rows, &inner, &one, <float *>b, &cols, <float *>a, &rows,
          &zero, c, &cols)


cdef void _lin_kv_state(const float *phik, const float *v, int keys, int r, int dv, float *S,
                        float *z) noexcept nogil:
    """S (r×dv) = Σ_j φk_j v_jᵀ and z (r) = Σ_j φk_j over `keys` rows."""
    cdef int j, a
    memset(z, 0, r * sizeof(float))
    if keys > SMALL_ROWS:
        _lin_gemm_atb(r, dv, keys, phik, v, S)
    else:
        memset(S, 0, <Py_ssize_t>r * dv * sizeof(float))
        for j in range(keys):
            for a in range(r):
                rr_axpy(S + <Py_ssize_t>a * dv, v + <Py_ssize_t>j * dv, dv,
                        phik[<Py_ssize_t>j * r + a])
    for j in range(keys):
        rr_axpy(z, phik + <Py_ssize_t>j * r, r, 1.0)


cdef int _lin_readout(const float *phiq, int rows, int r, int dv, const float *S, const float *z,
                      float eps, float *o) noexcept nogil:
    """o_i = φq_i·S / guard(φq_i·z) for `rows` query rows; returns the non-finite count."""
    cdef int i
    memset(o, 0, <Py_ssize_t>rows * dv * sizeof(float))
    if rows > SMALL_ROWS:
        _gemm_ab_acc(rows, dv, r, phiq, r, S, dv, o, dv)
    else:
        _small_ab_acc(rows, dv, r, phiq, S, o)
    for i in range(rows):
        rr_scale(o + <Py_ssize_t>i * dv, dv,
                 _lin_inverse(rr_dot(phiq + <Py_ssize_t>i * r, z, r), eps))
    return rr_nonfinite(o, <Py_ssize_t>rows * dv)


cdef int _lin_causal_group(const float *phiq, const float *phik, const float *v,
                           const float *gates, float *o, int n, int m, int r, int dv, int group,
                           float eps, float *S) noexcept nogil:
    """The causal recurrence of one key/value head and its `group` query heads (contiguous in
    phiq and o, n rows each): query i reads the state after key i + m − n. With gates (m,) the
    step is S ← g_j·S + (1 − g_j)·φk_j v_jᵀ (and z alike). S: scratch of r·(dv + 1) floats.
    The key a query newly sees and the first head's read share one pass over S."""
    cdef float *z = S + <Py_ssize_t>r * dv
    cdef int i, j = 0, t, last, bad = 0
    cdef float *row
    cdef const float *qrow
    memset(S, 0, <Py_ssize_t>r * (dv + 1) * sizeof(float))
    for i in range(n):
        last = i + m - n
        while j <= last:
            row = o + <Py_ssize_t>i * dv if j == last else NULL
            qrow = phiq + <Py_ssize_t>i * r if j == last else NULL
            rr_lin_step(S, z, phik + <Py_ssize_t>j * r, v + <Py_ssize_t>j * dv,
                        1.0 if gates == NULL else gates[j],
                        1.0 if gates == NULL else 1.0 - gates[j], qrow, row, r, dv)
            j = j + 1
        for t in range(group):
            row = o + (<Py_ssize_t>t * n + i) * dv
            qrow = phiq + (<Py_ssize_t>t * n + i) * r
            if t > 0 or last < 0:                 # not read during the absorb above
                rr_lin_step(S, z, NULL, NULL, 1.0, 0.0, qrow, row, r, dv)
            rr_scale(row, dv, _lin_inverse(rr_dot(qrow, z, r), eps))
    for t in range(group):
        bad += rr_nonfinite(o + <Py_ssize_t>t * n * dv, <Py_ssize_t>n * dv)
    return bad


cdef int _lin_causal(const float *qp, const float *kp, const float *vp, const float *gp,
                     float *op, int B, int H, int Hkv, int n, int m, int r, int dv, int group,
                     float eps, int num_threads) noexcept nogil:
    cdef Py_ssize_t items = <Py_ssize_t>B * Hkv, it
    cdef int bad = 0, oom = 0
    cdef float *S
    if num_threads > items:
        num_threads = <int>items
    with parallel(num_threads=num_threads):
        S = <float *>malloc(<Py_ssize_t>r * (dv + 1) * sizeof(float))
        for it in prange(items, schedule="dynamic"):
            if S == NULL:
                oom += 1
                continue
            bad += _lin_causal_group(
                qp + it * group * n * r, kp + it * m * r, vp + it * m * dv,
                gp + it * m if gp != NULL else NULL, op + it * group * n * dv,
                n, m, r, dv, group, eps, S)
        free(S)
    return -1 if oom else bad


cdef int _lin_noncausal(const float *qp, const float *kp, const float *vp, float *op, int B,
                        int H, int Hkv, int n, int m, int r, int dv, int group, float eps,
                        int num_threads, size_t blas_setter) noexcept nogil:
    cdef int chunks = (m + LIN_KEY_CHUNK - 1) // LIN_KEY_CHUNK
    cdef int tiles = (n + LIN_ROW_TILE - 1) // LIN_ROW_TILE
    cdef Py_ssize_t part = <Py_ssize_t>r * (dv + 1)          # floats of one (S, z)
    cdef Py_ssize_t states = <Py_ssize_t>B * Hkv * chunks, items = <Py_ssize_t>B * H * tiles
    cdef Py_ssize_t it, bg, c
    cdef int bad = 0, b, h, tile, row0, rows, j0, keys, threads, blas_prev
    cdef float *state
    cdef float *mine
    cdef float *buf = <float *>malloc(states * part * sizeof(float))
    if buf == NULL:
        return -1
    threads = num_threads if num_threads < states else <int>states
    with parallel(num_threads=threads):
        blas_prev = _blas_threads_local(blas_setter, 1)
        for it in prange(states, schedule="dynamic"):
            bg = it // chunks
            j0 = <int>(it % chunks) * LIN_KEY_CHUNK
            keys = m - j0
            if keys > LIN_KEY_CHUNK:
                keys = LIN_KEY_CHUNK
            mine = buf + it * part
            _lin_kv_state(kp + (bg * m + j0) * r, vp + (bg * m + j0) * dv, keys, r, dv,
                          mine, mine + <Py_ssize_t>r * dv)
        _blas_threads_local(blas_setter, blas_prev)
    for bg in range(<Py_ssize_t>B * Hkv):                   # fixed order: thread-count independent
        for c in range(1, chunks):
            rr_axpy(buf + bg * chunks * part, buf + (bg * chunks + c) * part, part, 1.0)
    threads = num_threads if num_threads < items else <int>items
    with parallel(num_threads=threads):
        blas_prev = _blas_threads_local(blas_setter, 1)
        for it in prange(items, schedule="dynamic"):
            tile = it % tiles
            h = (it // tiles) % H
            b = it // (<Py_ssize_t>tiles * H)
            row0 = tile * LIN_ROW_TILE
            rows = n - row0
            if rows > LIN_ROW_TILE:
                rows = LIN_ROW_TILE
            state = buf + (<Py_ssize_t>b * Hkv + h // group) * chunks * part
            bad += _lin_readout(qp + ((<Py_ssize_t>b * H + h) * n + row0) * r, rows, r, dv,
                                state, state + <Py_ssize_t>r * dv, eps,
                                op + ((<Py_ssize_t>b * H + h) * n + row0) * dv)
        _blas_threads_local(blas_setter, blas_prev)
    free(buf)
    return bad


cdef inline bint _lin_f32_4d(cnp.ndarray x):
    return (cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32 and cnp.PyArray_NDIM(x) == 4
            and cnp.PyArray_IS_C_CONTIGUOUS(x))


def linear_feature_attention(cnp.ndarray phi_q, cnp.ndarray phi_k, cnp.ndarray v,
                             cnp.ndarray out, object gates, bint causal, float eps,
                             int num_threads, size_t blas_setter=0):
    """out[b, h] = φq[b, h]·S / guard(φq[b, h]·z), S = Σ_j φk[b, g, j]·v[b, g, j]ᵀ and
    z = Σ_j φk[b, g, j], g = h // (H / Hkv); guard(x) = x where |x| ≥ eps, else ±eps.

    phi_q (B, H, n, r), phi_k (B, Hkv, m, r), v (B, Hkv, m, dv), out (B, H, n, dv): float32,
    C-contiguous. Non-causal: per (b, g) partial states of LIN_KEY_CHUNK keys by sgemm, summed in
    a fixed order (results do not depend on the thread count), then row tiles φq·S in parallel.
    Causal (query i sees keys j ≤ i + m − n): the prefix-sum recurrence S_j = S_{j−1} + φk_j v_jᵀ,
    in parallel over (b, g); gates None or (B, Hkv, m) float32 in [0, 1] make the step
    S_j = g_j·S_{j−1} + (1 − g_j)·φk_j v_jᵀ (causal only). blas_setter: the address of
    openblas_set_num_threads_local (or 0). Returns the non-finite output count, −1 when scratch
    memory could not be allocated.
    """
    if not (_lin_f32_4d(phi_q) and _lin_f32_4d(phi_k) and _lin_f32_4d(v) and _lin_f32_4d(out)):
        raise ValueError("linear_feature_attention: phi_q, phi_k, v, out must be 4-D float32 "
                         "C-contiguous arrays")
    cdef int B = phi_q.shape[0], H = phi_q.shape[1], n = phi_q.shape[2], r = phi_q.shape[3]
    cdef int Hkv = phi_k.shape[1], m = phi_k.shape[2], dv = v.shape[3]
    if (phi_k.shape[0] != B or v.shape[0] != B or v.shape[1] != Hkv or v.shape[2] != m
            or phi_k.shape[3] != r or Hkv < 1 or H % Hkv != 0 or out.shape[0] != B
            or out.shape[1] != H or out.shape[2] != n or out.shape[3] != dv):
        raise ValueError(f"linear_feature_attention: inconsistent shapes phi_q "
                         f"{(<object>phi_q).shape}, phi_k {(<object>phi_k).shape}, "
                         f"v {(<object>v).shape}, out {(<object>out).shape}")
    cdef const float *gp = NULL
    if gates is not None:
        if not (causal and isinstance(gates, cnp.ndarray)
                and cnp.PyArray_TYPE(<cnp.ndarray>gates) == cnp.NPY_FLOAT32
                and cnp.PyArray_NDIM(<cnp.ndarray>gates) == 3
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>gates)
                and gates.shape == (B, Hkv, m)):
            raise ValueError("linear_feature_attention: gates must be None or a float32 "
                             "C-contiguous (B, Hkv, m) array, with causal=True")
        gp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>gates)
    cdef const float *qp = <const float *>cnp.PyArray_DATA(phi_q)
    cdef const float *kp = <const float *>cnp.PyArray_DATA(phi_k)
    cdef const float *vp = <const float *>cnp.PyArray_DATA(v)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef int group = H // Hkv, result
    if num_threads < 1:
        num_threads = 1
    with nogil:
        if causal:
            result = _lin_causal(qp, kp, vp, gp, op, B, H, Hkv, n, m, r, dv, group, eps,
                                 num_threads)
        else:
            result = _lin_noncausal(qp, kp, vp, op, B, H, Hkv, n, m, r, dv, group, eps,
                                    num_threads, blas_setter)
    return result
