/* Vector primitives for rerank/_kernels.pyx.
 *
 * Each reduction keeps RR_LANES independent accumulators so that GCC/Clang vectorise it at -O3
 * without -ffast-math (which would also assume finite values and break our NaN/Inf checks).
 * rr_exp is the Cephes single-precision exp (≤ 2 ulp) written branch-free so the loops that call
 * it vectorise; it returns exactly 0 below −87.33 (so −inf, i.e. a masked logit, gives 0).
 */
#ifndef RERANK_SIMD_H
#define RERANK_SIMD_H

#include <stdint.h>
#include <string.h>
#include <math.h>

#define RR_LANES 16

/* 8-float vectors (GCC/Clang vector extensions: AVX registers where available, SSE pairs
 * elsewhere); loads through memcpy are unaligned-safe. */
typedef float rr_v8 __attribute__((vector_size(32)));

static inline rr_v8 rr_load8(const float *p) {
    rr_v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float rr_hsum8(rr_v8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* Σ a·b: four independent vector accumulators hide the FMA latency. */
static inline float rr_dot(const float *a, const float *b, Py_ssize_t n) {
    rr_v8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    Py_ssize_t j = 0;
    for (; j + 32 <= n; j += 32) {
        s0 += rr_load8(a + j) * rr_load8(b + j);
        s1 += rr_load8(a + j + 8) * rr_load8(b + j + 8);
        s2 += rr_load8(a + j + 16) * rr_load8(b + j + 16);
        s3 += rr_load8(a + j + 24) * rr_load8(b + j + 24);
    }
    for (; j + 8 <= n; j += 8) s0 += rr_load8(a + j) * rr_load8(b + j);
    float s = rr_hsum8((s0 + s1) + (s2 + s3));
    for (; j < n; ++j) s += a[j] * b[j];
    return s;
}

/* Σ a·b, and adds Σ b² to *norm2: one pass over b for a dot product and b's norm. */
static inline float rr_dot_norm(const float *a, const float *b, Py_ssize_t n, float *norm2) {
    rr_v8 s0 = {0}, s1 = {0}, q0 = {0}, q1 = {0};
    Py_ssize_t j = 0;
    for (; j + 16 <= n; j += 16) {
        rr_v8 b0 = rr_load8(b + j), b1 = rr_load8(b + j + 8);
        s0 += rr_load8(a + j) * b0;
        s1 += rr_load8(a + j + 8) * b1;
        q0 += b0 * b0;
        q1 += b1 * b1;
    }
    for (; j + 8 <= n; j += 8) {
        rr_v8 b0 = rr_load8(b + j);
        s0 += rr_load8(a + j) * b0;
        q0 += b0 * b0;
    }
    float s = rr_hsum8(s0 + s1), q = rr_hsum8(q0 + q1);
    for (; j < n; ++j) {
        s += a[j] * b[j];
        q += b[j] * b[j];
    }
    *norm2 += q;
    return s;
}

typedef int32_t rr_v8i __attribute__((vector_size(32)));

/* mask ? a : b, lane by lane (mask lanes are all ones or all zeros). */
static inline rr_v8 rr_select(rr_v8i mask, rr_v8 a, rr_v8 b) {
    return (rr_v8)(((rr_v8i)a & mask) | ((rr_v8i)b & ~mask));
}

/* max(x); NaN entries are ignored (finiteness is checked separately with rr_nonfinite). */
static inline float rr_max(const float *x, Py_ssize_t n) {
    const rr_v8 ninf = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                        -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    rr_v8 m0 = ninf, m1 = ninf;
    Py_ssize_t j = 0;
    for (; j + 16 <= n; j += 16) {
        rr_v8 a = rr_load8(x + j), b = rr_load8(x + j + 8);
        m0 = rr_select(a > m0, a, m0);
        m1 = rr_select(b > m1, b, m1);
    }
    for (; j + 8 <= n; j += 8) {
        rr_v8 a = rr_load8(x + j);
        m0 = rr_select(a > m0, a, m0);
    }
    m0 = rr_select(m1 > m0, m1, m0);
    float m = -INFINITY;
    for (int l = 0; l < 8; ++l) m = m0[l] > m ? m0[l] : m;
    for (; j < n; ++j) m = x[j] > m ? x[j] : m;
    return m;
}

/* 1 if any entry is NaN or ±Inf: x·0 is 0 for finite x and NaN otherwise. */
static inline int rr_nonfinite(const float *x, Py_ssize_t n) {
    float acc[RR_LANES] = {0};
    Py_ssize_t j = 0;
    for (; j + RR_LANES <= n; j += RR_LANES)
        for (int l = 0; l < RR_LANES; ++l) acc[l] += x[j + l] * 0.0f;
    float s = 0.0f;
    for (; j < n; ++j) s += x[j] * 0.0f;
    for (int l = 0; l < RR_LANES; ++l) s += acc[l];
    return s != 0.0f || s != s;
}

static inline float rr_exp(float x) {
    const float lo = -87.33654f, hi = 88.0f;
    float xc = x < lo ? lo : (x > hi ? hi : x);
    float n = __builtin_floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = p * scale;
    return x < lo ? 0.0f : y;
}

/* rr_exp on 8 lanes. */
static inline rr_v8 rr_exp8(rr_v8 x) {
    const rr_v8 lo = {-87.33654f, -87.33654f, -87.33654f, -87.33654f,
                      -87.33654f, -87.33654f, -87.33654f, -87.33654f};
    const rr_v8 hi = {88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f};
    const rr_v8 zero = {0};
    rr_v8i under = x < lo;
    rr_v8 xc = rr_select(under, lo, rr_select(x > hi, hi, x));
    rr_v8 t = xc * 1.44269504088896341f + 0.5f;
    rr_v8 n = __builtin_convertvector(__builtin_convertvector(t, rr_v8i), rr_v8);
    n += __builtin_convertvector(n > t, rr_v8);          /* truncation → floor (−1 where n > t) */
    rr_v8 r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    rr_v8 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    rr_v8i bits = (__builtin_convertvector(n, rr_v8i) + 127) << 23;
    return rr_select(under, zero, p * (rr_v8)bits);
}

/* x[j] = exp(x[j] − shift) in place; returns Σ_j x[j]. */
static inline float rr_exp_shift_sum(float *x, Py_ssize_t n, float shift) {
    rr_v8 acc = {0};
    Py_ssize_t j = 0;
    for (; j + 8 <= n; j += 8) {
        rr_v8 e = rr_exp8(rr_load8(x + j) - shift);
        memcpy(x + j, &e, sizeof e);
        acc += e;
    }
    float s = rr_hsum8(acc);
    for (; j < n; ++j) {
        float e = rr_exp(x[j] - shift);
        x[j] = e;
        s += e;
    }
    return s;
}

static inline void rr_scale(float *x, Py_ssize_t n, float a) {
    for (Py_ssize_t j = 0; j < n; ++j) x[j] *= a;
}

/* y += a·x */
static inline void rr_axpy(float *y, const float *x, Py_ssize_t n, float a) {
    for (Py_ssize_t j = 0; j < n; ++j) y[j] += a * x[j];
}


/* ------------------------------------------------------------------------------------------
 * int8 late interaction. Query codes a ∈ [−64, 64] (7 bits), document codes b ∈ [−128, 127].
 * With AVX2, u = b ⊕ 0x80 = b + 128 ∈ [0, 255] is the unsigned operand of vpmaddubsw, whose int16
 * pair sums stay within ±2·255·64 = 32640 (no saturation); then Σ u·a − 128·Σ a = Σ b·a exactly.
 * Rows are read RR_I8_STEP bytes at a time: both operands are zero-padded to a multiple of it. */
#define RR_I8_STEP 32

/* codes[k] = rint(64·x[k] / max|x|) for k < d, 0 for d ≤ k < dp (a zero row gives zeros);
 * double precision, so no scale overflows and rerank.quantization.quantize_query agrees exactly.
 * Returns 1 (codes untouched) when x holds NaN or ±Inf. */
static inline int rr_quantize_query(const float *x, Py_ssize_t d, int8_t *codes, Py_ssize_t dp) {
    float peak = 0.0f;
    for (Py_ssize_t k = 0; k < d; ++k) {
        float a = x[k] < 0 ? -x[k] : x[k];
        if (!(a <= 3.4028234663852886e38f)) return 1;
        peak = a > peak ? a : peak;
    }
    double inv = peak > 0.0f ? 64.0 / (double)peak : 0.0;
    for (Py_ssize_t k = 0; k < d; ++k) {
        double c = __builtin_rint((double)x[k] * inv);
        codes[k] = (int8_t)(c > 64.0 ? 64.0 : (c < -64.0 ? -64.0 : c));
    }
    memset(codes + d, 0, (size_t)(dp - d));
    return 0;
}

#ifdef __AVX2__
#include <immintrin.h>
#endif

/* Σ x[k]² (exact for n < 2¹⁷). */
static inline int32_t rr_i8_norm2(const int8_t *x, Py_ssize_t n) {
    Py_ssize_t k = 0;
    int32_t s = 0;
#ifdef __AVX2__
    __m256i acc = _mm256_setzero_si256();
    for (; k + 16 <= n; k += 16) {
        __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + k)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(w, w));
    }
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    h = _mm_hadd_epi32(h, h);
    s = _mm_cvtsi128_si32(_mm_hadd_epi32(h, h));
#endif
    for (; k < n; ++k) s += (int32_t)x[k] * x[k];
    return s;
}

/* Σ x[k] (exact). */
static inline int32_t rr_i8_sum(const int8_t *x, Py_ssize_t n) {
    int32_t s = 0;
    for (Py_ssize_t k = 0; k < n; ++k) s += x[k];
    return s;
}

/* y += Σ_r a[r]·x[r·ld : r·ld + n] over `rows` int8 rows; four rows per pass over y. */
static inline void rr_axpy_rows_i8(float *y, const int8_t *x, Py_ssize_t ld, Py_ssize_t rows,
                                   const float *a, Py_ssize_t n) {
    Py_ssize_t r = 0, k;
#ifdef __AVX2__
    for (; r + 4 <= rows; r += 4) {
        const int8_t *x0 = x + r * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;
        __m256 a0 = _mm256_set1_ps(a[r]), a1 = _mm256_set1_ps(a[r + 1]);
        __m256 a2 = _mm256_set1_ps(a[r + 2]), a3 = _mm256_set1_ps(a[r + 3]);
        for (k = 0; k + 8 <= n; k += 8) {
#define RR__I8F(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((p) + k))))
            __m256 v = _mm256_fmadd_ps(a0, RR__I8F(x0), _mm256_loadu_ps(y + k));
            v = _mm256_fmadd_ps(a1, RR__I8F(x1), v);
            v = _mm256_fmadd_ps(a2, RR__I8F(x2), v);
            _mm256_storeu_ps(y + k, _mm256_fmadd_ps(a3, RR__I8F(x3), v));
#undef RR__I8F
        }
        for (; k < n; ++k) y[k] += a[r] * x0[k] + a[r + 1] * x1[k] + a[r + 2] * x2[k] + a[r + 3] * x3[k];
    }
#endif
    for (; r < rows; ++r)
        for (k = 0; k < n; ++k) y[k] += a[r] * x[r * ld + k];
}

#ifdef __AVX2__
/* [Σ lanes of a, of b, of c, of d]. */
static inline __m128i rr__hsum4_epi32(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* out[x][y] = Σ_k (doc_x[k] + 128)·q_y[k] for nd ≤ 2 document rows and nq ≤ 4 query rows, all
 * dp bytes long with stride dp. Inlined with constant nd, nq: the accumulators stay in registers. */
static inline __attribute__((always_inline)) void rr__i8_block(
        const int8_t *q, const int8_t *doc, Py_ssize_t dp, int nd, int nq, __m128i out[2]) {
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
    __m256i acc[2][4];
    for (int x = 0; x < 2; ++x)
        for (int y = 0; y < 4; ++y) acc[x][y] = _mm256_setzero_si256();
    for (Py_ssize_t k = 0; k < dp; k += RR_I8_STEP) {
        __m256i u[2];
        for (int x = 0; x < nd; ++x)
            u[x] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(doc + x * dp + k)), flip);
        for (int y = 0; y < nq; ++y) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(q + y * dp + k));
            for (int x = 0; x < nd; ++x)
                acc[x][y] = _mm256_add_epi32(
                    acc[x][y], _mm256_madd_epi16(_mm256_maddubs_epi16(u[x], a), ones));
        }
    }
    for (int x = 0; x < nd; ++x)
        out[x] = rr__hsum4_epi32(acc[x][0], acc[x][1], acc[x][2], acc[x][3]);
}

#define RR__I8_CASE(ND, NQ) case 4 * (ND) + (NQ): rr__i8_block(q, doc, dp, ND, NQ, out); break;

static inline void rr__i8_dots(const int8_t *q, const int8_t *doc, Py_ssize_t dp, int nd, int nq,
                               __m128i out[2]) {
    switch (4 * nd + nq) {
        RR__I8_CASE(2, 4) RR__I8_CASE(2, 3) RR__I8_CASE(2, 2) RR__I8_CASE(2, 1)
        RR__I8_CASE(1, 4) RR__I8_CASE(1, 3) RR__I8_CASE(1, 2) default: RR__I8_CASE(1, 1)
    }
}
#endif

/* s[r·cols + j] = (a_r·b_j)·qinv[r]·dinv[j] for t query rows a (int8, stride dp, qcorr[r] = 128·Σ a_r)
 * and cols document rows b (int8, stride dp): cosines when qinv, dinv are inverse norms. */
static inline void rr_i8_tile(const int8_t *qc, const int32_t *qcorr, const float *qinv, int t,
                              const int8_t *dc, const float *dinv, int cols, Py_ssize_t dp,
                              float *s) {
#ifdef __AVX2__
    for (int j = 0; j < cols; j += 2) {
        int nd = cols - j < 2 ? 1 : 2;
        for (int r = 0; r < t; r += 4) {
            int nq = t - r < 4 ? t - r : 4;
            __m128i out[2];
            rr__i8_dots(qc + r * dp, dc + j * dp, dp, nd, nq, out);
            if (nd == 2 && nq == 4) {       /* rows r…r+3 × columns j, j+1: four 2-float stores */
                __m128i corr = _mm_loadu_si128((const __m128i *)(qcorr + r));
                __m128 qs = _mm_loadu_ps(qinv + r);
                __m128 v0 = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(_mm_sub_epi32(out[0], corr)), qs),
                                       _mm_set1_ps(dinv[j]));
                __m128 v1 = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(_mm_sub_epi32(out[1], corr)), qs),
                                       _mm_set1_ps(dinv[j + 1]));
                __m128 lo = _mm_unpacklo_ps(v0, v1), hi = _mm_unpackhi_ps(v0, v1);
                float *o = s + (Py_ssize_t)r * cols + j;
                _mm_storel_pi((__m64 *)o, lo);
                _mm_storeh_pi((__m64 *)(o + cols), lo);
                _mm_storel_pi((__m64 *)(o + 2 * cols), hi);
                _mm_storeh_pi((__m64 *)(o + 3 * cols), hi);
                continue;
            }
            int32_t dots[4];
            for (int x = 0; x < nd; ++x) {
                _mm_storeu_si128((__m128i *)dots, out[x]);
                for (int y = 0; y < nq; ++y)
                    s[(Py_ssize_t)(r + y) * cols + j + x] =
                        (float)(dots[y] - qcorr[r + y]) * qinv[r + y] * dinv[j + x];
            }
        }
    }
#else
    for (int j = 0; j < cols; ++j) {
        const int8_t *b = dc + j * dp;
        for (int r = 0; r < t; ++r) {
            const int8_t *a = qc + r * dp;
            int32_t dot = 0;
            for (Py_ssize_t k = 0; k < dp; ++k) dot += (int32_t)a[k] * b[k];
            s[(Py_ssize_t)r * cols + j] = (float)dot * qinv[r] * dinv[j];
        }
    }
    (void)qcorr;
#endif
}

#endif
