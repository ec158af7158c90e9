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

static inline float sum_lanes(f32x16 v)
{
    float total = 0.f;
    for (int j = 0; j < 16; j++)
        total += v[j];
    return total;
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

/* one row of W · x where W[c] = (code - 8) * scales[c / group] + zeros[c / group], codes packed two a byte (the low
   nibble holds the even column), x prepared by int4_prepare */
static inline float int4_dot(const uint8_t *row, const float *scales, const float *zeros, const float *xp,
                             const float *xsum, int64_t n_groups, int64_t per_group)
{
    f32x16 lanes = {0};
    float total = 0.f;
    for (int64_t g = 0; g < n_groups; g++) {
        f32x16 acc = {0};
        for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
            u8x16 b;
            memcpy(&b, row + c * (BLOCK / 2), sizeof b);
            f32x16 low = TO_F32(b & 15) - 8.f;
            f32x16 high = TO_F32(b >> 4) - 8.f;
            acc += low * load_f32(xp + c * BLOCK) + high * load_f32(xp + c * BLOCK + BLOCK / 2);
        }
        lanes += scales[g] * acc;
        total += zeros[g] * xsum[g];
    }
    return total + sum_lanes(lanes);
}

/* one row of W · x where W[c] = codes[c] * scales[c / group] (int8 codes) */
static inline float int8_dot(const int8_t *row, const float *scales, const float *x, int64_t n_groups,
                             int64_t per_group)
{
    f32x16 lanes = {0};
    for (int64_t g = 0; g < n_groups; g++) {
        f32x16 acc = {0};
        for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
            u8x16 q0, q1; /* the int8 codes' bytes: code + 128 = byte ^ 0x80 (GCC 12 vectorises unsigned bytes) */
            memcpy(&q0, row + c * BLOCK, sizeof q0);
            memcpy(&q1, row + c * BLOCK + 16, sizeof q1);
            acc += (TO_F32(q0 ^ 0x80) - 128.f) * load_f32(x + c * BLOCK) +
                   (TO_F32(q1 ^ 0x80) - 128.f) * load_f32(x + c * BLOCK + 16);
        }
        lanes += scales[g] * acc;
    }
    return sum_lanes(lanes);
}

#endif
