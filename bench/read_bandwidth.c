/* The fastest plain read of memory this machine does: `threads` OpenMP threads each stream their share of n floats
   with four AVX-512-wide accumulators (no work per value). bench/cpu_vs_llamacpp.py times it over a buffer backed
   by 2 MiB pages, as the decoder's weights are, for the read ceiling of a memory-bound decoder. */
#include <stdint.h>

float read_all(const float *p, int64_t n, int threads)
{
    typedef float f32x16 __attribute__((vector_size(64)));
    float total = 0.f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        f32x16 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n / 64; i++) {
            const f32x16 *v = (const f32x16 *)(p + 64 * i);
            s0 += v[0];
            s1 += v[1];
            s2 += v[2];
            s3 += v[3];
        }
        const f32x16 s = s0 + s1 + s2 + s3;
        for (int j = 0; j < 16; j++)
            total += s[j];
    }
    return total;
}
