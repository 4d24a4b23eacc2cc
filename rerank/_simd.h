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

static inline float rr_dot(const float *a, const float *b, Py_ssize_t n) {
    float acc[RR_LANES] = {0};
    Py_ssize_t j = 0;
    for (; j + RR_LANES <= n; j += RR_LANES)
        for (int l = 0; l < RR_LANES; ++l) acc[l] += a[j + l] * b[j + l];
    float s = 0.0f;
    for (; j < n; ++j) s += a[j] * b[j];
    for (int l = 0; l < RR_LANES; ++l) s += acc[l];
    return s;
}

static inline float rr_sum(const float *x, Py_ssize_t n) {
    float acc[RR_LANES] = {0};
    Py_ssize_t j = 0;
    for (; j + RR_LANES <= n; j += RR_LANES)
        for (int l = 0; l < RR_LANES; ++l) acc[l] += x[j + l];
    float s = 0.0f;
    for (; j < n; ++j) s += x[j];
    for (int l = 0; l < RR_LANES; ++l) s += acc[l];
    return s;
}

/* max(x); NaN entries are ignored (finiteness is checked separately with rr_nonfinite). */
static inline float rr_max(const float *x, Py_ssize_t n) {
    float acc[RR_LANES];
    for (int l = 0; l < RR_LANES; ++l) acc[l] = -INFINITY;
    Py_ssize_t j = 0;
    for (; j + RR_LANES <= n; j += RR_LANES)
        for (int l = 0; l < RR_LANES; ++l) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
    float m = -INFINITY;
    for (; j < n; ++j) m = x[j] > m ? x[j] : m;
    for (int l = 0; l < RR_LANES; ++l) m = acc[l] > m ? acc[l] : m;
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

/* x[j] = exp(x[j] − shift) in place; returns Σ_j x[j]. */
static inline float rr_exp_shift_sum(float *x, Py_ssize_t n, float shift) {
    float acc[RR_LANES] = {0};
    Py_ssize_t j = 0;
    for (; j + RR_LANES <= n; j += RR_LANES)
        for (int l = 0; l < RR_LANES; ++l) {
            float e = rr_exp(x[j + l] - shift);
            x[j + l] = e;
            acc[l] += e;
        }
    float s = 0.0f;
    for (; j < n; ++j) {
        float e = rr_exp(x[j] - shift);
        x[j] = e;
        s += e;
    }
    for (int l = 0; l < RR_LANES; ++l) s += acc[l];
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
