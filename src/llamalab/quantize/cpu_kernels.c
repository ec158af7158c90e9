/* Products of float32 activations with weights kept as int4 / int8 codes, for a few rows of activations (decoding).

Built by llamalab/quantize/native.py with `cc -O3 -march=native -fopenmp -shared`. The output rows of the weight are
split over the OpenMP threads (the runtime PyTorch loaded, so torch.set_num_threads applies); each weight row is read
once from memory and stays in cache for every activation row. Each group is summed in 16 float32 lanes (one
AVX-512 register) and scaled by its scale: the exactly dequantized weight's product up to the order
of summation.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* GCC / clang vector extensions: 16 lanes, lowered to AVX-512, AVX2 or SSE by -march=native */
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

/* unsigned bytes to float lanes through int32 (a direct conversion is not vectorised by GCC 12) */
#define TO_F32(v) __builtin_convertvector(__builtin_convertvector((v), i32x16), f32x16)

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

#define BLOCK 32             /* inputs per block: group sizes are multiples of it */
#define PARALLEL_WORK 262144 /* multiply-adds below which one thread is quicker than waking the others */

/* y (m, out) = x (m, in) @ Wᵀ where W[r, c] = (code - 8) * scales[r, c / group] + zeros[r, c / group] and the codes
   are packed two a byte (out, in / 2): the low nibble holds the even column. group and in: multiples of BLOCK. */
int int4_linear(const float *x, int64_t m, const uint8_t *packed, const float *scales, const float *zeros, float *y,
                int64_t out, int64_t in, int64_t group)
{
    const int64_t n_groups = in / group, n_blocks = in / BLOCK, per_group = group / BLOCK;
    float *xp = malloc(sizeof(float) * m * in);       /* x with each block's even columns first, then its odd ones */
    float *xsum = malloc(sizeof(float) * m * n_groups); /* the sum of x over each group */
    if (!xp || !xsum) {
        free(xp);
        free(xsum);
        return 1;
    }
    for (int64_t i = 0; i < m; i++) {
        for (int64_t g = 0; g < n_groups; g++)
            xsum[i * n_groups + g] = 0.f;
        for (int64_t k = 0; k < n_blocks; k++) {
            const float *src = x + i * in + k * BLOCK;
            float *dst = xp + i * in + k * BLOCK, total = 0.f;
            for (int j = 0; j < BLOCK / 2; j++) {
                dst[j] = src[2 * j];
                dst[BLOCK / 2 + j] = src[2 * j + 1];
                total += src[2 * j] + src[2 * j + 1];
            }
            xsum[i * n_groups + k / per_group] += total;
        }
    }
#pragma omp parallel for schedule(static) if (m * out * in >= PARALLEL_WORK)
    for (int64_t r = 0; r < out; r++) {
        const uint8_t *row = packed + r * (in / 2);
        const float *row_scales = scales + r * n_groups, *row_zeros = zeros + r * n_groups;
        for (int64_t i = 0; i < m; i++) {
            const float *xi = xp + i * in, *xs = xsum + i * n_groups;
            f32x16 lanes = {0};
            float total = 0.f;
            for (int64_t g = 0; g < n_groups; g++) {
                f32x16 acc = {0};
                for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
                    u8x16 b;
                    memcpy(&b, row + c * (BLOCK / 2), sizeof b);
                    f32x16 low = TO_F32(b & 15) - 8.f;
                    f32x16 high = TO_F32(b >> 4) - 8.f;
                    acc += low * load_f32(xi + c * BLOCK) + high * load_f32(xi + c * BLOCK + BLOCK / 2);
                }
                lanes += row_scales[g] * acc;
                total += row_zeros[g] * xs[g];
            }
            total += sum_lanes(lanes);
            y[i * out + r] = total;
        }
    }
    free(xp);
    free(xsum);
    return 0;
}

/* y (m, out) = x (m, in) @ Wᵀ where W[r, c] = codes[r, c] * scales[r, c / group] (int8 codes (out, in)); group and
   in: multiples of BLOCK. */
int int8_linear(const float *x, int64_t m, const int8_t *codes, const float *scales, float *y, int64_t out,
                int64_t in, int64_t group)
{
    const int64_t n_groups = in / group, per_group = group / BLOCK;
#pragma omp parallel for schedule(static) if (m * out * in >= PARALLEL_WORK)
    for (int64_t r = 0; r < out; r++) {
        const int8_t *row = codes + r * in;
        const float *row_scales = scales + r * n_groups;
        for (int64_t i = 0; i < m; i++) {
            const float *xi = x + i * in;
            f32x16 lanes = {0};
            for (int64_t g = 0; g < n_groups; g++) {
                f32x16 acc = {0};
                for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
                    u8x16 q0, q1; /* the int8 codes' bytes: code + 128 = byte ^ 0x80 (GCC 12 vectorises unsigned bytes) */
                    memcpy(&q0, row + c * BLOCK, sizeof q0);
                    memcpy(&q1, row + c * BLOCK + 16, sizeof q1);
                    acc += (TO_F32(q0 ^ 0x80) - 128.f) * load_f32(xi + c * BLOCK) +
                           (TO_F32(q1 ^ 0x80) - 128.f) * load_f32(xi + c * BLOCK + 16);
                }
                lanes += row_scales[g] * acc;
            }
            float total = sum_lanes(lanes);
            y[i * out + r] = total;
        }
    }
    return 0;
}
