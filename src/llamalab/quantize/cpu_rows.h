/* One output row of a product with a weight held as float32 or as GGUF's Q4_0 / Q4_1 / Q8_0 blocks (read in place):
   the dot products the kernels of cpu_kernels.c and cpu_decode.c share. Each block is summed in 16 float32 lanes (one
   AVX-512 register, or two AVX2 ones: GCC's vector extensions are lowered by -march=native) and scaled by its d. */
#ifndef LLAMALAB_CPU_ROWS_H
#define LLAMALAB_CPU_ROWS_H

#include <stdint.h>
#include <string.h>
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float f32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

/* unsigned bytes to float lanes through int32 (a direct conversion is not vectorised by GCC 12) */
#define TO_F32(v) __builtin_convertvector(__builtin_convertvector((v), i32x16), f32x16)

#define BLOCK 32 /* inputs per block */

/* GGUF's block types (ggml's type numbers), and float32 */
enum { F32 = 0, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8 };

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
#ifdef __AVX512F__
    return _mm512_reduce_add_ps((__m512)v); /* the same halving, kept in registers */
#else
    f32x8 lo8, hi8;
    memcpy(&lo8, &v, sizeof lo8);
    memcpy(&hi8, (const char *)&v + sizeof lo8, sizeof hi8);
    f32x8 s8 = lo8 + hi8;
    f32x4 lo4, hi4;
    memcpy(&lo4, &s8, sizeof lo4);
    memcpy(&hi4, (const char *)&s8 + sizeof lo4, sizeof hi4);
    f32x4 s4 = lo4 + hi4;
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
#endif
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

/* the float16 stored at p (little-endian) as a float: one F16C instruction where the CPU has it */
static inline float f16_at(const uint8_t *p)
{
#ifdef __F16C__
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return _cvtsh_ss(h);
#else
    _Float16 h;
    memcpy(&h, p, sizeof h);
    return (float)h;
#endif
}

/* the bytes of one block of BLOCK inputs: float16 d [float16 m], then 16 bytes of nibbles or 32 int8 codes */
static inline int64_t block_bytes(int64_t kind)
{
    return kind == Q4_0 ? 18 : kind == Q4_1 ? 20 : 34;
}

/* the sum of x over each block of BLOCK inputs (in / BLOCK values): what a Q4 block's offset multiplies */
static inline void block_sums(const float *x, int64_t in, float *xsum)
{
    for (int64_t k = 0; k < in / BLOCK; k++) {
        float total = 0.f;
        for (int j = 0; j < BLOCK; j++)
            total += x[k * BLOCK + j];
        xsum[k] = total;
    }
}

/* one Q4 block's 32 codes as floats: low = inputs 0..15 (byte j's low nibble), high = inputs 16..31 (its high one) */
static inline void q4_unpack(const uint8_t *nibbles, f32x16 *low, f32x16 *high)
{
#ifdef __AVX512F__
    /* each byte widened once to a 32-bit lane; vpermps picks lane values from a table of the 16 codes as floats by
       the low 4 bits of each index only, so the byte itself looks up its low nibble and the byte >> 4 its high one
       (no masking, no int -> float conversion) */
    const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)nibbles));
    *low = (f32x16)_mm512_permutexvar_ps(bytes, codes);
    *high = (f32x16)_mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), codes);
#else
    u8x16 b;
    memcpy(&b, nibbles, sizeof b);
    *low = TO_F32(b & 15);
    *high = TO_F32(b >> 4);
#endif
}

/* one Q4 block's codes times its BLOCK inputs, unscaled */
static inline f32x16 q4_codes(const uint8_t *nibbles, const float *x)
{
    f32x16 low, high;
    q4_unpack(nibbles, &low, &high);
    return low * load_f32(x) + high * load_f32(x + BLOCK / 2);
}

/* bytes ahead of the blocks being read that q4_dot asks the cache for: the hardware prefetcher stops at each 4 KiB
   page, and the layers of a mapped GGUF file lie on 4 KiB pages (SmolLM2 Q4_1, 2 threads: ~5% faster per token) */
#define Q4_PREFETCH 1024

/* a Q4 block's d and m (Q4_1; Q4_0 has no m: 0) as lanes 0 and 1 of a vector, from one F16C conversion of the
   block's first 4 bytes */
static inline f32x4 scale_offset(const uint8_t *block, int has_min)
{
    uint32_t halves;
    memcpy(&halves, block, sizeof halves);
    halves = has_min ? halves : halves & 0xffff;
#ifdef __F16C__
    return (f32x4)_mm_cvtph_ps(_mm_cvtsi32_si128((int)halves));
#else
    return (f32x4){f16_at(block), has_min ? f16_at(block + 2) : 0.f, 0.f, 0.f};
#endif
}

/* one row of W · x for a row of Q4_0 (has_min 0: value d·(q - 8)) or Q4_1 (has_min 1: d·q + m) blocks: each block adds
   d · Σ q·x plus its offset (m, or -8d) times Σ x (xsum from block_sums); d·Σx and m·Σx are summed together as the
   lanes of one small vector (lane 1 the offsets of Q4_1; for Q4_0, -8 times lane 0: exact, 8 being a power of two).
   Two blocks at a time in independent sums. */
static inline float q4_dot(const uint8_t *row, int has_min, const float *x, const float *xsum, int64_t n_blocks)
{
    const int64_t size = has_min ? 20 : 18, codes = has_min ? 4 : 2;
    f32x16 lanes0 = {0}, lanes1 = {0};
    f32x4 sums0 = {0}, sums1 = {0};
    int64_t k = 0;
    for (; k + 2 <= n_blocks; k += 2) {
        const uint8_t *b0 = row + k * size, *b1 = b0 + size;
        __builtin_prefetch(b0 + Q4_PREFETCH);
        const f32x4 dm0 = scale_offset(b0, has_min), dm1 = scale_offset(b1, has_min);
        lanes0 += dm0[0] * q4_codes(b0 + codes, x + k * BLOCK);
        lanes1 += dm1[0] * q4_codes(b1 + codes, x + (k + 1) * BLOCK);
        sums0 += dm0 * xsum[k];
        sums1 += dm1 * xsum[k + 1];
    }
    if (k < n_blocks) {
        const uint8_t *b0 = row + k * size;
        const f32x4 dm0 = scale_offset(b0, has_min);
        lanes0 += dm0[0] * q4_codes(b0 + codes, x + k * BLOCK);
        sums0 += dm0 * xsum[k];
    }
    const f32x4 sums = sums0 + sums1;
    return (has_min ? sums[1] : -8.f * sums[0]) + sum_lanes(lanes0 + lanes1);
}

/* one Q8_0 block's 32 int8 codes as floats (AVX-512: sign-extended to 32-bit lanes; else code + 128 = byte ^ 0x80:
   GCC 12 vectorises unsigned bytes) */
static inline void q8_unpack(const uint8_t *codes, f32x16 *low, f32x16 *high)
{
#ifdef __AVX512F__
    *low = (f32x16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)codes)));
    *high = (f32x16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(codes + 16))));
#else
    u8x16 q0, q1;
    memcpy(&q0, codes, sizeof q0);
    memcpy(&q1, codes + 16, sizeof q1);
    *low = TO_F32(q0 ^ 0x80) - 128.f;
    *high = TO_F32(q1 ^ 0x80) - 128.f;
#endif
}

/* one Q8_0 block's codes times its inputs, unscaled */
static inline f32x16 q8_codes(const uint8_t *codes, const float *x)
{
    f32x16 low, high;
    q8_unpack(codes, &low, &high);
    return low * load_f32(x) + high * load_f32(x + 16);
}

/* one row of W · x for a row of Q8_0 blocks (value d·q); two blocks at a time */
static inline float q8_dot(const uint8_t *row, const float *x, int64_t n_blocks)
{
    f32x16 lanes0 = {0}, lanes1 = {0};
    int64_t k = 0;
    for (; k + 2 <= n_blocks; k += 2) {
        lanes0 += f16_at(row + k * 34) * q8_codes(row + k * 34 + 2, x + k * BLOCK);
        lanes1 += f16_at(row + (k + 1) * 34) * q8_codes(row + (k + 1) * 34 + 2, x + (k + 1) * BLOCK);
    }
    if (k < n_blocks)
        lanes0 += f16_at(row + k * 34) * q8_codes(row + k * 34 + 2, x + k * BLOCK);
    return sum_lanes(lanes0 + lanes1);
}

/* an input row as the products read it: x itself and its sum over each block (block_sums, for Q4 blocks) */
typedef struct {
    const float *x, *xsum;
} Input;

#define MANY 4 /* inputs one pass over a row of blocks serves */

/* row `row` of Q4 / Q8_0 blocks times n <= MANY inputs: each block's codes are unpacked once for all of them, each
   input summed in its own lanes as q4_dot / q8_dot do (n a constant where it is inlined: the lanes stay in registers) */
static inline void blocks_many(const uint8_t *row, int64_t kind, const Input *in, int n, int64_t n_blocks, float *out)
{
    const int has_min = kind == Q4_1, size = (int)block_bytes(kind), codes = has_min ? 4 : 2;
    f32x16 lanes[MANY] = {{0}};
    f32x4 sums[MANY] = {{0}};
    for (int64_t k = 0; k < n_blocks; k++) {
        const uint8_t *b = row + k * size;
        if (kind != Q8_0)
            __builtin_prefetch(b + Q4_PREFETCH);
        f32x16 low, high;
        f32x4 dm;
        if (kind == Q8_0) {
            dm = (f32x4){f16_at(b), 0.f, 0.f, 0.f};
            q8_unpack(b + codes, &low, &high);
        } else {
            dm = scale_offset(b, has_min);
            q4_unpack(b + codes, &low, &high);
        }
        for (int i = 0; i < n; i++) {
            const float *x = in[i].x + k * BLOCK;
            lanes[i] += dm[0] * (low * load_f32(x) + high * load_f32(x + BLOCK / 2));
            if (kind != Q8_0)
                sums[i] += dm * in[i].xsum[k];
        }
    }
    for (int i = 0; i < n; i++)
        out[i] = (kind == Q8_0 ? 0.f : has_min ? sums[i][1] : -8.f * sums[i][0]) + sum_lanes(lanes[i]);
}

/* row r of W · x for W held as float32 (out, in) or as rows of `kind` blocks (xsum: block_sums of x, for Q4) */
static inline float row_dot(int64_t kind, const void *weight, int64_t in, int64_t r, const float *x, const float *xsum)
{
    const uint8_t *row = (const uint8_t *)weight + r * (in / BLOCK) * block_bytes(kind);
    switch (kind) {
    case Q4_0:
        return q4_dot(row, 0, x, xsum, in / BLOCK);
    case Q4_1:
        return q4_dot(row, 1, x, xsum, in / BLOCK);
    case Q8_0:
        return q8_dot(row, x, in / BLOCK);
    default:
        return f32_dot((const float *)weight + r * in, x, in);
    }
}

/* row r of W times each of n <= MANY inputs (out[i] = row · in[i].x): one input alone, or float32 rows, one at a
   time; blocks for several inputs in one pass (the codes unpacked once for all of them) */
static inline void row_dots(int64_t kind, const void *weight, int64_t in, int64_t r, const Input *inputs, int n,
                            float *out)
{
    const uint8_t *row = (const uint8_t *)weight + r * (in / BLOCK) * block_bytes(kind);
    if (kind == F32 || n == 1) {
        for (int i = 0; i < n; i++)
            out[i] = row_dot(kind, weight, in, r, inputs[i].x, inputs[i].xsum);
    } else if (n == 2) { /* a constant count each, so that the lanes stay in registers */
        blocks_many(row, kind, inputs, 2, in / BLOCK, out);
    } else if (n == 3) {
        blocks_many(row, kind, inputs, 3, in / BLOCK, out);
    } else {
        blocks_many(row, kind, inputs, MANY, in / BLOCK, out);
    }
}

/* the in values of row r of W into out: a float32 row copied, blocks dequantized as gguf does: d·q (Q8_0), d·q + m
   (Q4_1), d·(q-8) = d·q - 8d (Q4_0); d·q is exact, so each value is rounded once */
static inline void row_values(int64_t kind, const void *weight, int64_t in, int64_t r, float *out)
{
    if (kind == F32) {
        memcpy(out, (const float *)weight + r * in, sizeof(float) * in);
        return;
    }
    for (int64_t k = 0; k < in / BLOCK; k++) {
        const uint8_t *b = (const uint8_t *)weight + (r * (in / BLOCK) + k) * block_bytes(kind);
        const float d = f16_at(b);
        float *v = out + k * BLOCK;
        if (kind == Q8_0) {
            for (int j = 0; j < BLOCK; j++)
                v[j] = d * (float)(int8_t)b[2 + j];
            continue;
        }
        const float m = kind == Q4_1 ? f16_at(b + 2) : -8.f * d;
        const uint8_t *nibbles = b + (kind == Q4_1 ? 4 : 2);
        for (int j = 0; j < BLOCK / 2; j++) {
            v[j] = d * (float)(nibbles[j] & 15) + m;
            v[j + BLOCK / 2] = d * (float)(nibbles[j] >> 4) + m;
        }
    }
}

#endif
