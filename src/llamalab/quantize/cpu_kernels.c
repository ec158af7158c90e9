/* Products of float32 activations with weights kept as GGUF's Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K blocks, for a few rows of
activations (decoding), reading the blocks where they lie (a map of the file).

Built by llamalab/quantize/native.py with `cc -O3 -march=native -fopenmp -shared`. The output rows of the weight are
split over the OpenMP threads (the runtime PyTorch loaded, so torch.set_num_threads applies); each weight row is read
once from memory and stays in cache for every activation row. The row products (cpu_rows.h) sum each block in 16
float32 lanes and scale it by its d: the exactly dequantized weight's product up to the order of summation.
*/
#include <stdlib.h>

#include "cpu_rows.h"

#define PARALLEL_WORK 262144 /* multiply-adds below which one thread is quicker than waking the others */

/* y (m, out) = x (m, in) @ Wᵀ where W's rows are `kind` blocks (out, in / BLOCK · block bytes); in: a multiple of
   BLOCK. Returns 1 when the block sums of x could not be allocated. */
int block_linear(const float *x, int64_t m, const uint8_t *blocks, int64_t kind, float *y, int64_t out, int64_t in)
{
    float *xsum = malloc(sizeof(float) * m * (in / BLOCK)); /* the sum of x over each block */
    Input *inputs = malloc(sizeof(Input) * m);
    if (!xsum || !inputs) {
        free(xsum);
        free(inputs);
        return 1;
    }
    for (int64_t i = 0; i < m; i++) {
        block_sums(x + i * in, in, xsum + i * (in / BLOCK));
        inputs[i] = (Input){x + i * in, xsum + i * (in / BLOCK)};
    }
#pragma omp parallel for schedule(static) if (m * out * in >= PARALLEL_WORK)
    for (int64_t r = 0; r < out; r++)
        for (int64_t i = 0; i < m; i += MANY) { /* MANY inputs a pass over the row (one unpacking of its codes) */
            float v[MANY];
            const int n = m - i < MANY ? (int)(m - i) : MANY;
            row_dots(kind, blocks, in, r, inputs + i, n, v);
            for (int j = 0; j < n; j++)
                y[(i + j) * out + r] = v[j];
        }
    free(xsum);
    free(inputs);
    return 0;
}

/* out (rows, in) = the values of the first `rows` rows of W (`kind` blocks), dequantized as gguf does */
void block_values(const uint8_t *blocks, int64_t kind, int64_t rows, int64_t in, float *out)
{
#pragma omp parallel for schedule(static) if (rows * in >= PARALLEL_WORK)
    for (int64_t r = 0; r < rows; r++)
        row_values(kind, blocks, in, r, out + r * in);
}
