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
 * int8 late interaction: exact integer dot products a·b of query codes a ∈ [−L, L] (L =
 * RR_I8_QLEVELS = 64: 7 bits, rr_quantize_query) with document codes b ∈ [−128, 127].
 *
 * With AVX2 the query is the unsigned operand of vpmaddubsw: a' = a + L ∈ [0, 2L] (0 in padding),
 * the document code b the signed one, so every int16 pair sum a'₀b₀ + a'₁b₁ lies in
 * [2·128·(−128), 2·128·127] = [−32768, 32512]: exact, no saturation, for any int8 b (−128
 * included). Σ_k a'_k·b_k = a·b + L·Σ_k b_k, so a·b = that − L·(the document row's code sum).
 * The query is packed once per call, 8 rows to a register (4 consecutive codes of each row in
 * each 32-bit lane); each step broadcasts 4 codes of a document row, so nothing about the document
 * is copied or transformed (rows are read in place, 4 bytes at a time: RR_I8_STEP) and the 8 dot
 * products of 8 query rows land in one register, the 24 query tokens of a typical query in three:
 * no horizontal sums, and similarities come out as rows sT[j] of t floats (one per query token).
 * For up to 5 query tokens rr_i8_tile_rows takes dot products along the rows instead.
 *
 * Measured on Zen 3 (AVX2, no VNNI), 24 × 2919 × 384: vpmaddubsw + vpmaddwd + vpaddd per 32
 * products run at ~1 per cycle (the multiplies on 2 ports, ~3 vector integer ops a cycle), and
 * rr_i8_tile reaches ~97% of that (0.28 ms at 3.1 GHz). The previous layout (2 document × 4 query
 * rows, document codes ⊕ 0x80 recomputed for every block, horizontal sums per block, one
 * accumulator spilled, the block kernel not inlined) took 0.33–0.40 ms; 3 or 4 document rows per
 * block here spill and were slower (0.30–0.34 ms). */
#ifdef __AVX__
#include <immintrin.h>
#endif

#define RR_I8_QLEVELS 64
#define RR_I8_STEP 4

/* codes[k] = rint(L·x[k] / max|x|) for k < d, 0 for d ≤ k < dp (a zero row gives zeros);
 * double precision, so no scale overflows and rerank.quantization.quantize_query agrees exactly.
 * Returns 1 (codes untouched) when x holds NaN or ±Inf. */
static inline int rr_quantize_query(const float *x, Py_ssize_t d, int8_t *codes, Py_ssize_t dp) {
    const double L = RR_I8_QLEVELS;
    float peak = 0.0f;
    Py_ssize_t k = 0;
#ifdef __AVX2__
    {   /* max|x| and finiteness, 16 values a step (NaN and ±Inf fail a <= FLT_MAX) */
        const __m256 big = _mm256_set1_ps(3.4028234663852886e38f);
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        __m256 m0 = _mm256_setzero_ps(), m1 = m0, bad = m0;
        for (; k + 16 <= d; k += 16) {
            __m256 a0 = _mm256_and_ps(_mm256_loadu_ps(x + k), absmask);
            __m256 a1 = _mm256_and_ps(_mm256_loadu_ps(x + k + 8), absmask);
            bad = _mm256_or_ps(bad, _mm256_or_ps(_mm256_cmp_ps(a0, big, _CMP_NLE_UQ),
                                                 _mm256_cmp_ps(a1, big, _CMP_NLE_UQ)));
            m0 = _mm256_max_ps(m0, a0);
            m1 = _mm256_max_ps(m1, a1);
        }
        if (_mm256_movemask_ps(bad)) return 1;
        float m[8];
        _mm256_storeu_ps(m, _mm256_max_ps(m0, m1));
        for (int l = 0; l < 8; ++l) peak = m[l] > peak ? m[l] : peak;
    }
#endif
    for (; k < d; ++k) {
        float a = x[k] < 0 ? -x[k] : x[k];
        if (!(a <= 3.4028234663852886e38f)) return 1;
        peak = a > peak ? a : peak;
    }
    double inv = peak > 0.0f ? L / (double)peak : 0.0;
    k = 0;
#ifdef __AVX2__
    {   /* the same double arithmetic as the loop below, 8 codes at a time */
        const __m256d vinv = _mm256_set1_pd(inv), hi = _mm256_set1_pd(L), lo = _mm256_set1_pd(-L);
        for (; k + 8 <= d; k += 8) {
            __m256 v = _mm256_loadu_ps(x + k);
            __m256d c0 = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), vinv);
            __m256d c1 = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), vinv);
            c0 = _mm256_min_pd(_mm256_max_pd(_mm256_round_pd(c0, _MM_FROUND_CUR_DIRECTION), lo), hi);
            c1 = _mm256_min_pd(_mm256_max_pd(_mm256_round_pd(c1, _MM_FROUND_CUR_DIRECTION), lo), hi);
            __m128i w = _mm_packs_epi32(_mm256_cvtpd_epi32(c0), _mm256_cvtpd_epi32(c1));
            _mm_storel_epi64((__m128i *)(codes + k), _mm_packs_epi16(w, w));
        }
    }
#endif
    for (; k < d; ++k) {
        double c = __builtin_rint((double)x[k] * inv);
        codes[k] = (int8_t)(c > L ? L : (c < -L ? -L : c));
    }
    memset(codes + d, 0, (size_t)(dp - d));
    return 0;
}


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

/* Σ x[k]² (returned) and Σ x[k] (*sum), exact for n ≤ 2¹⁶. */
static inline int32_t rr_i8_stats(const int8_t *x, Py_ssize_t n, int32_t *sum) {
    Py_ssize_t k = 0;
    int32_t s = 0, q = 0;
#ifdef __AVX2__
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i sq = _mm256_setzero_si256(), sm = _mm256_setzero_si256();
    for (; k + 32 <= n; k += 32) {
        __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + k)));
        __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + k + 16)));
        sq = _mm256_add_epi32(sq, _mm256_add_epi32(_mm256_madd_epi16(w0, w0),
                                                   _mm256_madd_epi16(w1, w1)));
        sm = _mm256_add_epi32(sm, _mm256_madd_epi16(_mm256_add_epi16(w0, w1), ones));
    }
    for (; k + 16 <= n; k += 16) {
        __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + k)));
        sq = _mm256_add_epi32(sq, _mm256_madd_epi16(w, w));
        sm = _mm256_add_epi32(sm, _mm256_madd_epi16(w, ones));
    }
    __m256i h = _mm256_hadd_epi32(sq, sm);              /* [q q s s | q q s s] */
    __m128i g = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    g = _mm_hadd_epi32(g, g);                            /* [q s q s] */
    q = _mm_cvtsi128_si32(g);
    s = _mm_extract_epi32(g, 1);
#endif
    for (; k < n; ++k) {
        q += (int32_t)x[k] * x[k];
        s += x[k];
    }
    *sum = s;
    return q;
}

#ifdef __AVX2__
/* [Σ lanes of a, of b, of c, of d]. */
static inline __m128i rr__hsum4_epi32(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
#endif

/* For rows j < n of x (stride ld, d codes each, d ≤ 2¹⁶): corr[j] = L·Σ_k x_jk and
 * inv[j] = 1/‖x_j‖ (0 for a zero row). Exact integer sums; sqrtf and a division as in scalar code. */
static inline void rr_i8_row_stats(const int8_t *x, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d,
                                   int32_t *corr, float *inv) {
    Py_ssize_t j = 0;
#ifdef __AVX2__
    const __m256i ones = _mm256_set1_epi16(1);
    for (; j + 4 <= n; j += 4) {
        const int8_t *src = x + j * ld;
        __m256i sq[4], sm[4];
        for (int r = 0; r < 4; ++r) sq[r] = sm[r] = _mm256_setzero_si256();
        Py_ssize_t k = 0;
        while (k + 32 <= d) {                    /* code sums in int16 over ≤ 4096 codes */
            Py_ssize_t end = d - k > 4096 ? k + 4096 : d;
            __m256i s16[4];
            for (int r = 0; r < 4; ++r) s16[r] = _mm256_setzero_si256();
            for (; k + 32 <= end; k += 32)
                for (int r = 0; r < 4; ++r) {
                    const int8_t *p = src + r * ld + k;
                    __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
                    __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 16)));
                    sq[r] = _mm256_add_epi32(sq[r], _mm256_add_epi32(_mm256_madd_epi16(w0, w0),
                                                                     _mm256_madd_epi16(w1, w1)));
                    s16[r] = _mm256_add_epi16(s16[r], _mm256_add_epi16(w0, w1));
                }
            for (int r = 0; r < 4; ++r)
                sm[r] = _mm256_add_epi32(sm[r], _mm256_madd_epi16(s16[r], ones));
        }
        for (; k + 16 <= d; k += 16)
            for (int r = 0; r < 4; ++r) {
                __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(src + r * ld + k)));
                sq[r] = _mm256_add_epi32(sq[r], _mm256_madd_epi16(w, w));
                sm[r] = _mm256_add_epi32(sm[r], _mm256_madd_epi16(w, ones));
            }
        __m128i q4 = rr__hsum4_epi32(sq[0], sq[1], sq[2], sq[3]);
        __m128i s4 = rr__hsum4_epi32(sm[0], sm[1], sm[2], sm[3]);
        if (k < d) {
            int32_t q[4], s[4];
            _mm_storeu_si128((__m128i *)q, q4);
            _mm_storeu_si128((__m128i *)s, s4);
            for (int r = 0; r < 4; ++r)
                for (Py_ssize_t kk = k; kk < d; ++kk) {
                    q[r] += (int32_t)src[r * ld + kk] * src[r * ld + kk];
                    s[r] += src[r * ld + kk];
                }
            q4 = _mm_loadu_si128((const __m128i *)q);
            s4 = _mm_loadu_si128((const __m128i *)s);
        }
        _mm_storeu_si128((__m128i *)(corr + j), _mm_mullo_epi32(s4, _mm_set1_epi32(RR_I8_QLEVELS)));
        __m128 v = _mm_div_ps(_mm_set1_ps(1.0f), _mm_sqrt_ps(_mm_cvtepi32_ps(q4)));
        _mm_storeu_ps(inv + j, _mm_and_ps(v, _mm_castsi128_ps(_mm_cmpgt_epi32(q4, _mm_setzero_si128()))));
    }
#endif
    for (; j < n; ++j) {
        int32_t s, q = rr_i8_stats(x + j * ld, d, &s);
        corr[j] = RR_I8_QLEVELS * s;
        inv[j] = q > 0 ? 1.0f / sqrtf((float)q) : 0.0f;
    }
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

/* The query rows rows[0…t−1] of codes (stride ld, dp codes each, zero past d) packed for
 * rr_i8_tile: G = ⌈t/8⌉ groups of 8 rows, qp[(g·dp/4 + k)·32 + 4i + e] = a' of row rows[8g + i],
 * code 4k + e: a + L below d, 0 past d and for the rows past t. qp holds G·8·dp bytes. */
static inline void rr_i8_pack_query(const int8_t *codes, Py_ssize_t ld, const int *rows, int t,
                                    Py_ssize_t d, Py_ssize_t dp, uint8_t *qp) {
    const uint32_t low7 = 0x7f7f7f7fu, high = 0x80808080u, offset = 0x01010101u * RR_I8_QLEVELS;
    int G = (t + 7) / 8;
    Py_ssize_t K = dp / 4;
    memset(qp, 0, (size_t)G * 8 * dp);
    for (int i = 0; i < t; ++i) {
        const int8_t *a = codes + rows[i] * ld;
        uint8_t *o = qp + (Py_ssize_t)(i / 8) * K * 32 + 4 * (i % 8);
        Py_ssize_t k = 0;
        for (; k + 4 <= d; k += 4) {             /* 4 codes at a time: bytewise + L, no carries */
            uint32_t w;
            memcpy(&w, a + k, 4);
            w = ((w & low7) + offset) ^ (w & high);
            memcpy(o + k * 8, &w, 4);
        }
        for (; k < d; ++k)
            o[(k / 4) * 32 + k % 4] = (uint8_t)(a[k] + RR_I8_QLEVELS);
    }
}

/* The query rows rows[0…t−1] of codes (stride ld, d codes each) for rr_i8_tile_rows: row i at
 * qr[i·dq …] holds a + L below d and 0 from d to dq (a multiple of 32). */
static inline void rr_i8_pack_query_rows(const int8_t *codes, Py_ssize_t ld, const int *rows,
                                         int t, Py_ssize_t d, Py_ssize_t dq, uint8_t *qr) {
    for (int i = 0; i < t; ++i) {
        const int8_t *a = codes + rows[i] * ld;
        uint8_t *o = qr + i * dq;
        for (Py_ssize_t k = 0; k < d; ++k) o[k] = (uint8_t)(a[k] + RR_I8_QLEVELS);
        memset(o + d, 0, (size_t)(dq - d));
    }
}

/* m[r] = max(m[r], x[j·ld + r]) for r < n (a multiple of 8), j < rows; x[j·ld + r] > m[r] decides,
 * as in rr_max (vmaxps(x, m) is exactly that). Up to 32 lanes at a time: independent chains. */
static inline void rr_max_rows(float *m, const float *x, Py_ssize_t ld, Py_ssize_t rows,
                               Py_ssize_t n) {
    Py_ssize_t r = 0;
#ifdef __AVX__
    for (; r + 24 <= n && n - r != 32; r += 24) {
        __m256 v0 = _mm256_loadu_ps(m + r), v1 = _mm256_loadu_ps(m + r + 8);
        __m256 v2 = _mm256_loadu_ps(m + r + 16);
        for (Py_ssize_t j = 0; j < rows; ++j) {
            const float *p = x + j * ld + r;
            v0 = _mm256_max_ps(_mm256_loadu_ps(p), v0);
            v1 = _mm256_max_ps(_mm256_loadu_ps(p + 8), v1);
            v2 = _mm256_max_ps(_mm256_loadu_ps(p + 16), v2);
        }
        _mm256_storeu_ps(m + r, v0);
        _mm256_storeu_ps(m + r + 8, v1);
        _mm256_storeu_ps(m + r + 16, v2);
    }
    for (; r + 16 <= n; r += 16) {
        __m256 v0 = _mm256_loadu_ps(m + r), v1 = _mm256_loadu_ps(m + r + 8);
        for (Py_ssize_t j = 0; j < rows; ++j) {
            v0 = _mm256_max_ps(_mm256_loadu_ps(x + j * ld + r), v0);
            v1 = _mm256_max_ps(_mm256_loadu_ps(x + j * ld + r + 8), v1);
        }
        _mm256_storeu_ps(m + r, v0);
        _mm256_storeu_ps(m + r + 8, v1);
    }
#endif
    for (; r < n; r += 8) {
        rr_v8 v = rr_load8(m + r);
        for (Py_ssize_t j = 0; j < rows; ++j) {
            rr_v8 w = rr_load8(x + j * ld + r);
            v = rr_select(w > v, w, v);
        }
        memcpy(m + r, &v, sizeof v);
    }
}

#ifdef __AVX2__
/* Rows j, j+1 (X = 1 or 2) of sT for the query groups g0 … g0+NG−1 (NG ≤ 3): 3·X accumulators, NG
 * query registers, one broadcast and temporaries fit the 16 YMM registers. Inlined with constant
 * NG, X. */
static inline __attribute__((always_inline)) void rr__i8_block(
        const uint8_t *qp, Py_ssize_t K, const int8_t *b, Py_ssize_t ld, const int32_t *corr,
        const float *qinv, const float *dinv, float *out, Py_ssize_t tp, int NG, int X) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[2][3];
    for (int x = 0; x < 2; ++x)
        for (int g = 0; g < 3; ++g) acc[x][g] = _mm256_setzero_si256();
    for (Py_ssize_t k = 0; k < K; ++k) {
        __m256i a[3];
        for (int g = 0; g < NG; ++g)
            a[g] = _mm256_load_si256((const __m256i *)(qp + (g * K + k) * 32));
        for (int x = 0; x < X; ++x) {
            int32_t w;
            memcpy(&w, b + x * ld + 4 * k, 4);
            __m256i s = _mm256_set1_epi32(w);
            for (int g = 0; g < NG; ++g)
                acc[x][g] = _mm256_add_epi32(
                    acc[x][g], _mm256_madd_epi16(_mm256_maddubs_epi16(a[g], s), ones));
        }
    }
    for (int x = 0; x < X; ++x) {
        __m256i c = _mm256_set1_epi32(corr[x]);
        __m256 dn = _mm256_set1_ps(dinv[x]);
        for (int g = 0; g < NG; ++g) {
            __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[x][g], c));
            v = _mm256_mul_ps(_mm256_mul_ps(v, _mm256_loadu_ps(qinv + 8 * g)), dn);
            _mm256_storeu_ps(out + x * tp + 8 * g, v);
        }
    }
}

#define RR__I8_CASE(NG, X) \
    case 4 * (NG) + (X): rr__i8_block(q, K, b, ld, corr + j, qi, dinv + j, out, tp, NG, X); break;
#endif

/* sT[j·tp + r] = (a_r·b_j)·qinv[r]·dinv[j] for j < cols, r < tp = 8G: a_r the query rows packed by
 * rr_i8_pack_query (G groups; qp 32-byte aligned), b_j = dc[j·ld …] read dp bytes (a multiple of
 * RR_I8_STEP; the bytes past d must be readable, their query codes are 0), corr[j] = L·Σ_k b_jk.
 * Cosines when qinv, dinv are inverse norms (the rows past t have qinv 0). */
static inline void rr_i8_tile(const uint8_t *qp, int G, Py_ssize_t dp, const float *qinv,
                              const int8_t *dc, Py_ssize_t ld, const int32_t *corr,
                              const float *dinv, int cols, float *sT) {
    Py_ssize_t K = dp / 4, tp = 8 * (Py_ssize_t)G;
    for (int g0 = 0; g0 < G; g0 += 3) {
        int ng = G - g0 < 3 ? G - g0 : 3;
        for (int j = 0; j < cols; j += 2) {
            int nx = cols - j < 2 ? 1 : 2;
#ifdef __AVX2__
            const uint8_t *q = qp + (Py_ssize_t)g0 * K * 32;
            const int8_t *b = dc + j * ld;
            const float *qi = qinv + 8 * g0;
            float *out = sT + j * tp + 8 * g0;
            switch (4 * ng + nx) {
                RR__I8_CASE(3, 2) RR__I8_CASE(3, 1) RR__I8_CASE(2, 2) RR__I8_CASE(2, 1)
                RR__I8_CASE(1, 2) default: RR__I8_CASE(1, 1)
            }
#else
            for (int x = 0; x < nx; ++x) {
                const int8_t *b = dc + (j + x) * ld;
                for (int i = 8 * g0; i < 8 * (g0 + ng); ++i) {
                    const uint8_t *a = qp + (Py_ssize_t)(i / 8) * K * 32 + 4 * (i % 8);
                    int32_t dot = 0;
                    for (Py_ssize_t k = 0; k < dp; ++k) dot += (int32_t)a[(k / 4) * 32 + k % 4] * b[k];
                    sT[(j + x) * tp + i] = (float)(dot - corr[j + x]) * qinv[i] * dinv[j + x];
                }
            }
#endif
        }
    }
}


#ifdef __AVX2__
/* out[x][y] = Σ_k a'_y[k]·b_x[k] for nd ≤ 2 document rows (stride ld) and nq ≤ 4 query rows (stride
 * dq), dq bytes each. Inlined with constant nd, nq: the accumulators stay in registers. */
static inline __attribute__((always_inline)) void rr__i8_rows_block(
        const uint8_t *q, Py_ssize_t dq, const int8_t *b, Py_ssize_t ld, int nd, int nq,
        __m128i out[2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[2][4];
    for (int x = 0; x < 2; ++x)
        for (int y = 0; y < 4; ++y) acc[x][y] = _mm256_setzero_si256();
    for (Py_ssize_t k = 0; k < dq; k += 32) {
        __m256i v[2];
        for (int x = 0; x < nd; ++x) v[x] = _mm256_loadu_si256((const __m256i *)(b + x * ld + k));
        for (int y = 0; y < nq; ++y) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(q + y * dq + k));
            for (int x = 0; x < nd; ++x)
                acc[x][y] = _mm256_add_epi32(
                    acc[x][y], _mm256_madd_epi16(_mm256_maddubs_epi16(a, v[x]), ones));
        }
    }
    for (int x = 0; x < nd; ++x)
        out[x] = rr__hsum4_epi32(acc[x][0], acc[x][1], acc[x][2], acc[x][3]);
}

#define RR__I8_ROWS_CASE(ND, NQ) \
    case 4 * (ND) + (NQ): rr__i8_rows_block(q, dq, b, ld, ND, NQ, out); break;
#endif

/* rr_i8_tile for few query rows (t ≤ 4 or so, where the packed layout would leave most of its 8
 * lanes idle): dot products along the rows, 2 document × 4 query rows a block, horizontal sums at
 * the end. Query rows a'_r = qr[r·dq …] (rr_i8_pack_query_rows); document rows b_j = dc[j·ld …]
 * read dq bytes (a multiple of 32: the bytes past d must be readable). Writes sT[j·tp + r]. */
static inline void rr_i8_tile_rows(const uint8_t *qr, int t, Py_ssize_t dq, const float *qinv,
                                   const int8_t *dc, Py_ssize_t ld, const int32_t *corr,
                                   const float *dinv, int cols, float *sT, Py_ssize_t tp) {
    for (int j = 0; j < cols; j += 2) {
        int nd = cols - j < 2 ? 1 : 2;
        const int8_t *b = dc + j * ld;
        for (int r = 0; r < t; r += 4) {
            int nq = t - r < 4 ? t - r : 4;
            int32_t dots[2][4];
#ifdef __AVX2__
            const uint8_t *q = qr + r * dq;
            __m128i out[2];
            switch (4 * nd + nq) {
                RR__I8_ROWS_CASE(2, 4) RR__I8_ROWS_CASE(2, 3) RR__I8_ROWS_CASE(2, 2)
                RR__I8_ROWS_CASE(2, 1) RR__I8_ROWS_CASE(1, 4) RR__I8_ROWS_CASE(1, 3)
                RR__I8_ROWS_CASE(1, 2) default: RR__I8_ROWS_CASE(1, 1)
            }
            for (int x = 0; x < nd; ++x) _mm_storeu_si128((__m128i *)dots[x], out[x]);
#else
            for (int x = 0; x < nd; ++x)
                for (int y = 0; y < nq; ++y) {
                    const uint8_t *a = qr + (r + y) * dq;
                    int32_t dot = 0;
                    for (Py_ssize_t k = 0; k < dq; ++k) dot += (int32_t)a[k] * b[x * ld + k];
                    dots[x][y] = dot;
                }
#endif
            for (int x = 0; x < nd; ++x)
                for (int y = 0; y < nq; ++y)
                    sT[(j + x) * tp + r + y] =
                        (float)(dots[x][y] - corr[j + x]) * qinv[r + y] * dinv[j + x];
        }
    }
}

#endif
