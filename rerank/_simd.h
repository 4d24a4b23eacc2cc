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

#endif
