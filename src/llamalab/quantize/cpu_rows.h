/* One output row of a product with a weight held as float32, int4 or int8 codes: the dot products the kernels of
   cpu_kernels.c and cpu_decode.c share. Each group is summed in 16 float32 lanes (one AVX-512 register, or two
   AVX2 ones: GCC's vector extensions are lowered by -march=native) and scaled by its scale. */
#ifndef LLAMALAB_CPU_ROWS_H
#define LLAMALAB_CPU_ROWS_H

#include <stdint.h>
#include <string.h>

typedef float f32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

/* unsigned bytes to float lanes through int32 (a direct conversion is not vectorised by GCC 12) */
#define TO_F32(v) __builtin_convertvector(__builtin_convertvector((v), i32x16), f32x16)

#define BLOCK 32 /* inputs per block: group sizes are multiples of it */

static inline f32x16 load_f32(const float *p)
{
    f32x16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));

/* the sum of the 16 lanes, halving the vector each time (4 dependent adds, not 15) */
static inline float sum_lanes(f32x16 v)
{
    f32x8 lo8, hi8;
    memcpy(&lo8, &v, sizeof lo8);
    memcpy(&hi8, (const char *)&v + sizeof lo8, sizeof hi8);
    f32x8 s8 = lo8 + hi8;
    f32x4 lo4, hi4;
    memcpy(&lo4, &s8, sizeof lo4);
    memcpy(&hi4, (const char *)&s8 + sizeof lo4, sizeof hi4);
    f32x4 s4 = lo4 + hi4;
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

/* w · x over n float32 values (two accumulators in flight) */
static inline float f32_dot(const float *w, const float *x, int64_t n)
{
    f32x16 a0 = {0}, a1 = {0};
    int64_t c = 0;
    for (; c + 32 <= n; c += 32) {
        a0 += load_f32(w + c) * load_f32(x + c);
        a1 += load_f32(w + c + 16) * load_f32(x + c + 16);
    }
    for (; c + 16 <= n; c += 16)
        a0 += load_f32(w + c) * load_f32(x + c);
    float total = sum_lanes(a0 + a1);
    for (; c < n; c++)
        total += w[c] * x[c];
    return total;
}

/* x (in) rearranged for int4 rows: each block's even columns first, then its odd ones (xp), and its sum over each
   group (xsum, in / group values) */
static inline void int4_prepare(const float *x, int64_t in, int64_t group, float *xp, float *xsum)
{
    const int64_t per_group = group / BLOCK;
    for (int64_t g = 0; g < in / group; g++)
        xsum[g] = 0.f;
    for (int64_t k = 0; k < in / BLOCK; k++) {
        const float *src = x + k * BLOCK;
        float *dst = xp + k * BLOCK, total = 0.f;
        for (int j = 0; j < BLOCK / 2; j++) {
            dst[j] = src[2 * j];
            dst[BLOCK / 2 + j] = src[2 * j + 1];
            total += src[2 * j] + src[2 * j + 1];
        }
        xsum[k / per_group] += total;
    }
}

/* the codes of group g times xp, unscaled (the int4 products' inner loop) */
static inline f32x16 int4_group(const uint8_t *row, const float *xp, int64_t g, int64_t per_group)
{
    f32x16 acc = {0};
    for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
        u8x16 b;
        memcpy(&b, row + c * (BLOCK / 2), sizeof b);
        acc += TO_F32(b & 15) * load_f32(xp + c * BLOCK) + TO_F32(b >> 4) * load_f32(xp + c * BLOCK + BLOCK / 2);
    }
    return acc;
}

/* one row of W · x where W[c] = (code - 8) * scales[c / group] + zeros[c / group], codes packed two a byte (the low
   nibble holds the even column), x prepared by int4_prepare: each group adds scale · Σ code·x plus its lowest value
   (zero - 8 · scale, the value of code 0) times Σ x. Two groups at a time in independent sums. */
static inline float int4_dot(const uint8_t *row, const float *scales, const float *zeros, const float *xp,
                             const float *xsum, int64_t n_groups, int64_t per_group)
{
    f32x16 lanes0 = {0}, lanes1 = {0};
    float total0 = 0.f, total1 = 0.f;
    int64_t g = 0;
    for (; g + 2 <= n_groups; g += 2) {
        lanes0 += scales[g] * int4_group(row, xp, g, per_group);
        lanes1 += scales[g + 1] * int4_group(row, xp, g + 1, per_group);
        total0 += (zeros[g] - 8.f * scales[g]) * xsum[g];
        total1 += (zeros[g + 1] - 8.f * scales[g + 1]) * xsum[g + 1];
    }
    if (g < n_groups) {
        lanes0 += scales[g] * int4_group(row, xp, g, per_group);
        total0 += (zeros[g] - 8.f * scales[g]) * xsum[g];
    }
    return (total0 + total1) + sum_lanes(lanes0 + lanes1);
}

/* the codes of group g times x, unscaled (the int8 products' inner loop) */
static inline f32x16 int8_group(const int8_t *row, const float *x, int64_t g, int64_t per_group)
{
    f32x16 acc = {0};
    for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
        u8x16 q0, q1; /* the int8 codes' bytes: code + 128 = byte ^ 0x80 (GCC 12 vectorises unsigned bytes) */
        memcpy(&q0, row + c * BLOCK, sizeof q0);
        memcpy(&q1, row + c * BLOCK + 16, sizeof q1);
        acc += (TO_F32(q0 ^ 0x80) - 128.f) * load_f32(x + c * BLOCK) +
               (TO_F32(q1 ^ 0x80) - 128.f) * load_f32(x + c * BLOCK + 16);
    }
    return acc;
}

/* one row of W · x where W[c] = codes[c] * scales[c / group] (int8 codes); two groups at a time */
static inline float int8_dot(const int8_t *row, const float *scales, const float *x, int64_t n_groups,
                             int64_t per_group)
{
    f32x16 lanes0 = {0}, lanes1 = {0};
    int64_t g = 0;
    for (; g + 2 <= n_groups; g += 2) {
        lanes0 += scales[g] * int8_group(row, x, g, per_group);
        lanes1 += scales[g + 1] * int8_group(row, x, g + 1, per_group);
    }
    if (g < n_groups)
        lanes0 += scales[g] * int8_group(row, x, g, per_group);
    return sum_lanes(lanes0 + lanes1);
}

#endif
