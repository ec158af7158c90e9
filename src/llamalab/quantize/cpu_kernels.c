/* Products of float32 activations with weights kept as int4 / int8 codes, for a few rows of activations (decoding).

Built by llamalab/quantize/native.py with `cc -O3 -march=native -fopenmp -shared`. The output rows of the weight are
split over the OpenMP threads (the runtime PyTorch loaded, so torch.set_num_threads applies); each weight row is read
once from memory and stays in cache for every activation row. The row products (cpu_rows.h) sum each group in 16
float32 lanes and scale it by its scale: the exactly dequantized weight's product up to the order of summation.
*/
#include <stdlib.h>

#include "cpu_rows.h"

#define PARALLEL_WORK 262144 /* multiply-adds below which one thread is quicker than waking the others */

/* y (m, out) = x (m, in) @ Wᵀ where W[r, c] = (code - 8) * scales[r, c / group] + zeros[r, c / group] and the codes
   are packed two a byte (out, in / 2): the low nibble holds the even column. group and in: multiples of BLOCK. */
int int4_linear(const float *x, int64_t m, const uint8_t *packed, const float *scales, const float *zeros, float *y,
                int64_t out, int64_t in, int64_t group)
{
    const int64_t n_groups = in / group, per_group = group / BLOCK;
    float *xp = malloc(sizeof(float) * m * in);       /* x with each block's even columns first, then its odd ones */
    float *xsum = malloc(sizeof(float) * m * n_groups); /* the sum of x over each group */
    if (!xp || !xsum) {
        free(xp);
        free(xsum);
        return 1;
    }
    for (int64_t i = 0; i < m; i++)
        int4_prepare(x + i * in, in, group, xp + i * in, xsum + i * n_groups);
#pragma omp parallel for schedule(static) if (m * out * in >= PARALLEL_WORK)
    for (int64_t r = 0; r < out; r++)
        for (int64_t i = 0; i < m; i++)
            y[i * out + r] = int4_dot(packed + r * (in / 2), scales + r * n_groups, zeros + r * n_groups, xp + i * in,
                                      xsum + i * n_groups, n_groups, per_group);
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
    for (int64_t r = 0; r < out; r++)
        for (int64_t i = 0; i < m; i++)
            y[i * out + r] = int8_dot(codes + r * in, scales + r * n_groups, x + i * in, n_groups, per_group);
    return 0;
}
