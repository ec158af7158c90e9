/* One output row of a product with a weight held as float32 or as GGUF's Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K /
   Q5_K / Q6_K blocks (read in place): the dot products the kernels of cpu_kernels.c and cpu_decode.c share. Each block is summed in 16 float32 lanes (one
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
typedef uint32_t u32x16 __attribute__((vector_size(64)));

/* unsigned bytes to float lanes through int32 (a direct conversion is not vectorised by GCC 12) */
#define TO_F32(v) __builtin_convertvector(__builtin_convertvector((v), i32x16), f32x16)

#define BLOCK 32 /* inputs per block */

/* GGUF's block types (ggml's type numbers), and float32 */
enum { F32 = 0, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };
#define SUPER 256 /* inputs per block of the K kinds (8 sub-blocks of BLOCK inputs) */

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

/* the bytes of one block: of BLOCK inputs, float16 d [float16 m] [uint32 fifth bits], then 16 bytes of nibbles or 32
   int8 codes; of SUPER inputs for the K kinds (quantize/blocks.py gives their layouts) */
static inline int64_t block_bytes(int64_t kind)
{
    switch (kind) {
    case Q4_0:
        return 18;
    case Q4_1:
        return 20;
    case Q5_0:
        return 22;
    case Q5_1:
        return 24;
    case Q4_K:
        return 144;
    case Q5_K:
        return 176;
    case Q6_K:
        return 210;
    default:
        return 34; /* Q8_0 */
    }
}

/* the inputs one block of `kind` covers */
static inline int64_t block_inputs(int64_t kind)
{
    return kind == Q4_K || kind == Q5_K || kind == Q6_K ? SUPER : BLOCK;
}

/* the bytes of a row of `in` inputs */
static inline int64_t row_bytes(int64_t kind, int64_t in)
{
    return in / block_inputs(kind) * block_bytes(kind);
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

/* an input row as the products read it: x itself and its sum over each block (block_sums, for Q4 blocks) */
typedef struct {
    const float *x, *xsum;
} Input;

#define MANY 4 /* inputs one pass over a row of blocks serves */

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

/* asks the cache for the `size` bytes that lie Q4_PREFETCH ahead of a block (every 64-byte line of them: a K block
   spans 3-4 lines, and the hardware prefetcher stops at each 4 KiB page of the mapped file) */
static inline void prefetch_block(const uint8_t *b, int64_t size)
{
    for (int64_t at = 0; at < size; at += 64)
        __builtin_prefetch(b + Q4_PREFETCH + at);
}

/* v + 16 in each lane i whose bit i of `mask` is set: a fifth bit added to a 4-bit code (one masked add) */
static inline f32x16 add_fifth_bits(f32x16 v, uint32_t mask)
{
#ifdef __AVX512F__
    return (f32x16)_mm512_mask_add_ps((__m512)v, (__mmask16)mask, (__m512)v, _mm512_set1_ps(16.f));
#else
    const u32x16 at = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return v + __builtin_convertvector((((u32x16){0} + mask) >> at) & 1, f32x16) * 16.f;
#endif
}

/* bit `bit` of each of 16 bytes as a 16-bit mask (bit i from byte i): a Q5_K sub-block's fifth bits of 16 inputs */
static inline uint32_t byte_bit_mask(const uint8_t *bytes, int bit)
{
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm_test_epi8_mask(_mm_loadu_si128((const __m128i *)bytes), _mm_set1_epi8((char)(1 << bit)));
#else
    uint32_t mask = 0;
    for (int i = 0; i < 16; i++)
        mask |= (uint32_t)(bytes[i] >> bit & 1) << i;
    return mask;
#endif
}

/* one row of W · x for Q5_0 (has_min 0: value d·(q - 16)) or Q5_1 (d·q + m) blocks: q4_dot's sums with each code's
   fifth bit added from the block's 32-bit qh */
static inline float q5_dot(const uint8_t *row, int has_min, const float *x, const float *xsum, int64_t n_blocks)
{
    const int64_t size = block_bytes(has_min ? Q5_1 : Q5_0), bits = has_min ? 4 : 2;
    f32x16 lanes = {0};
    f32x4 sums = {0};
    for (int64_t k = 0; k < n_blocks; k++) {
        const uint8_t *b = row + k * size;
        __builtin_prefetch(b + Q4_PREFETCH);
        const f32x4 dm = scale_offset(b, has_min);
        uint32_t qh;
        memcpy(&qh, b + bits, sizeof qh);
        f32x16 low, high;
        q4_unpack(b + bits + 4, &low, &high);
        low = add_fifth_bits(low, qh & 0xffff);
        high = add_fifth_bits(high, qh >> 16);
        lanes += dm[0] * (low * load_f32(x + k * BLOCK) + high * load_f32(x + k * BLOCK + 16));
        sums += dm * xsum[k];
    }
    return (has_min ? sums[1] : -16.f * sums[0]) + sum_lanes(lanes);
}

/* the 6-bit scale and min of each of a Q4_K / Q5_K block's 8 sub-blocks, from its 12 packed bytes */
static inline void k_scales(const uint8_t *s, float *scale, float *min)
{
    for (int j = 0; j < 4; j++) {
        scale[j] = (float)(s[j] & 63);
        min[j] = (float)(s[j + 4] & 63);
        scale[j + 4] = (float)((s[j + 8] & 15) | (s[j] >> 6) << 4);
        min[j + 4] = (float)((s[j + 8] >> 4) | (s[j + 4] >> 6) << 4);
    }
}

/* row `row` of Q4_K / Q5_K blocks (five: the fifth bits) times n <= MANY inputs: sub-block j's value is
   (d·scale_j)·q - dmin·min_j, so each sub-block adds d·scale_j · Σ q·x and takes dmin·min_j · Σ x (xsum) away. 64
   inputs a step: 32 code bytes whose low nibbles are sub-block 2c and high ones sub-block 2c+1, unpacked once for
   all the inputs (n a constant where it is inlined: the lanes stay in registers) */
static inline void qk_many(const uint8_t *row, int five, const Input *in, int n, int64_t n_super, float *out)
{
    const int64_t size = block_bytes(five ? Q5_K : Q4_K);
    f32x16 lanes0[MANY] = {{0}}, lanes1[MANY] = {{0}}; /* the even sub-blocks' sums and the odd ones' */
    float offsets[MANY] = {0};
    for (int64_t s = 0; s < n_super; s++) {
        const uint8_t *b = row + s * size, *qh = b + 16, *qs = b + (five ? 48 : 16);
        prefetch_block(b, size);
        const float d = f16_at(b), dmin = f16_at(b + 2);
        float scale[8], min[8];
        k_scales(b + 4, scale, min);
        for (int c = 0; c < 4; c++) {
            f32x16 l0, h0, l1, h1; /* inputs 0..15 and 16..31 of sub-block 2c (l), and of 2c+1 (h) */
            q4_unpack(qs + 32 * c, &l0, &h0);
            q4_unpack(qs + 32 * c + 16, &l1, &h1);
            if (five) {
                l0 = add_fifth_bits(l0, byte_bit_mask(qh, 2 * c));
                l1 = add_fifth_bits(l1, byte_bit_mask(qh + 16, 2 * c));
                h0 = add_fifth_bits(h0, byte_bit_mask(qh, 2 * c + 1));
                h1 = add_fifth_bits(h1, byte_bit_mask(qh + 16, 2 * c + 1));
            }
            const float even = d * scale[2 * c], odd = d * scale[2 * c + 1];
            for (int i = 0; i < n; i++) {
                const float *xc = in[i].x + s * SUPER + 64 * c;
                lanes0[i] += even * (l0 * load_f32(xc) + l1 * load_f32(xc + 16));
                lanes1[i] += odd * (h0 * load_f32(xc + 32) + h1 * load_f32(xc + 48));
            }
        }
        for (int i = 0; i < n; i++) {
            float mins = 0.f;
            for (int j = 0; j < 8; j++)
                mins += min[j] * in[i].xsum[8 * s + j];
            offsets[i] += dmin * mins;
        }
    }
    for (int i = 0; i < n; i++)
        out[i] = sum_lanes(lanes0[i] + lanes1[i]) - offsets[i];
}

/* the 6-bit codes, minus 32, of 16 inputs of a Q6_K block: low (or high) nibbles of ql, bits `shift`.. of qh */
static inline f32x16 q6_codes(const uint8_t *ql, int high, const uint8_t *qh, int shift)
{
    u8x16 l, h;
    memcpy(&l, ql, sizeof l);
    memcpy(&h, qh, sizeof h);
    l = high ? l >> 4 : l & 15;
    return TO_F32(l | ((h >> shift) & 3) << 4) - 32.f;
}

#ifdef __AVX512BW__
/* acc[i] + Σ over 64 inputs from `at` of (d·scale[k])·code·x_i, for each of n inputs; codes: 64 signed bytes,
   scale[k] for inputs 16k.. */
static inline void q6_times(__m512i codes, const int8_t *scale, float d, const Input *in, int n, int64_t at,
                            __m512 *acc)
{
#define Q6_QUARTER(k)                                                                                                 \
    {                                                                                                                 \
        const __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, k)));             \
        const __m512 ds = _mm512_set1_ps(d * (float)scale[k]);                                                       \
        for (int i = 0; i < n; i++)                                                                                   \
            acc[i] = _mm512_fmadd_ps(ds, _mm512_mul_ps(c, _mm512_loadu_ps(in[i].x + at + 16 * (k))), acc[i]);       \
    }
    Q6_QUARTER(0)
    Q6_QUARTER(1)
    Q6_QUARTER(2)
    Q6_QUARTER(3)
#undef Q6_QUARTER
}

/* acc[i] + one half of a Q6_K block (128 inputs from `at`) times input i, its 6-bit codes built 64 at a time in
   bytes: the low nibbles of ql's 64 bytes are inputs 0..63 and take bits 0-1 (ql bytes 0..31) or 2-3 (32..63) of
   qh[l mod 32]; the high nibbles are inputs 64..127, bits 4-5 / 6-7 (a 64-bit lane shift then a 2-bit mask reads
   the same bits per byte) */
static inline void q6k_half(const uint8_t *ql, const uint8_t *qh, const int8_t *scale, float d, const Input *in,
                            int n, int64_t at, __m512 *acc)
{
    const __m512i q = _mm512_loadu_si512(ql), h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)qh));
    const __m512i nibble = _mm512_set1_epi8(15), two = _mm512_set1_epi8(3), offset = _mm512_set1_epi8(32);
    const __m512i low_high = _mm512_and_si512(_mm512_srlv_epi64(h, _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0)), two);
    const __m512i high_high = _mm512_and_si512(_mm512_srlv_epi64(h, _mm512_set_epi64(6, 6, 6, 6, 4, 4, 4, 4)), two);
    const __m512i low = _mm512_or_si512(_mm512_and_si512(q, nibble), _mm512_slli_epi16(low_high, 4));
    const __m512i high =
        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(q, 4), nibble), _mm512_slli_epi16(high_high, 4));
    q6_times(_mm512_sub_epi8(low, offset), scale, d, in, n, at, acc);
    q6_times(_mm512_sub_epi8(high, offset), scale + 4, d, in, n, at + 64, acc);
}
#endif

/* row `row` of Q6_K blocks times n <= MANY inputs: 16 int8 scales of 16 inputs each, value (d·scale)·(q - 32); per
   half of 128 inputs, input l of 0..31 takes ql[l] low, l+32 ql[l+32] low, l+64 ql[l] high, l+96 ql[l+32] high,
   with bits 0-1, 2-3, 4-5, 6-7 of qh[l] (AVX-512BW: the codes built once for all the inputs) */
static inline void q6k_many(const uint8_t *row, const Input *in, int n, int64_t n_super, float *out)
{
#ifdef __AVX512BW__
    __m512 acc[MANY];
    for (int i = 0; i < n; i++)
        acc[i] = _mm512_setzero_ps();
    for (int64_t s = 0; s < n_super; s++) {
        const uint8_t *b = row + s * block_bytes(Q6_K);
        prefetch_block(b, block_bytes(Q6_K));
        const float d = f16_at(b + 208);
        for (int half = 0; half < 2; half++)
            q6k_half(b + 64 * half, b + 128 + 32 * half, (const int8_t *)(b + 192) + 8 * half, d, in, n,
                     s * SUPER + 128 * half, acc);
    }
    for (int i = 0; i < n; i++)
        out[i] = _mm512_reduce_add_ps(acc[i]);
#else
    for (int i = 0; i < n; i++) {
        f32x16 lanes = {0};
        for (int64_t s = 0; s < n_super; s++) {
            const uint8_t *b = row + s * block_bytes(Q6_K);
            prefetch_block(b, block_bytes(Q6_K));
            const float d = f16_at(b + 208);
            for (int half = 0; half < 2; half++) {
                const uint8_t *ql = b + 64 * half, *qh = b + 128 + 32 * half;
                const int8_t *scale = (const int8_t *)(b + 192) + 8 * half;
                const float *xh = in[i].x + s * SUPER + 128 * half;
                for (int t = 0; t < 2; t++) { /* inputs l = 16t .. 16t + 15 */
                    for (int g = 0; g < 4; g++) /* inputs l + 32g: ql[l] or ql[l + 32], low or high, qh bits 2g */
                        lanes += (d * (float)scale[t + 2 * g]) *
                                 (q6_codes(ql + 16 * t + 32 * (g & 1), g >> 1, qh + 16 * t, 2 * g) *
                                  load_f32(xh + 16 * t + 32 * g));
                }
            }
        }
        out[i] = sum_lanes(lanes);
    }
#endif
}

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
    const uint8_t *row = (const uint8_t *)weight + r * row_bytes(kind, in);
    switch (kind) {
    case Q4_0:
        return q4_dot(row, 0, x, xsum, in / BLOCK);
    case Q4_1:
        return q4_dot(row, 1, x, xsum, in / BLOCK);
    case Q5_0:
        return q5_dot(row, 0, x, xsum, in / BLOCK);
    case Q5_1:
        return q5_dot(row, 1, x, xsum, in / BLOCK);
    case Q8_0:
        return q8_dot(row, x, in / BLOCK);
    case Q4_K:
    case Q5_K:
    case Q6_K: {
        const Input one = {x, xsum};
        float out;
        if (kind == Q6_K)
            q6k_many(row, &one, 1, in / SUPER, &out);
        else
            qk_many(row, kind == Q5_K, &one, 1, in / SUPER, &out);
        return out;
    }
    default:
        return f32_dot((const float *)weight + r * in, x, in);
    }
}

/* row `row` of `kind` blocks times n <= MANY inputs in one pass (the codes unpacked once for all of them) */
static inline void many(const uint8_t *row, int64_t kind, int64_t in, const Input *inputs, int n, float *out)
{
    if (kind == Q4_K || kind == Q5_K)
        qk_many(row, kind == Q5_K, inputs, n, in / SUPER, out);
    else if (kind == Q6_K)
        q6k_many(row, inputs, n, in / SUPER, out);
    else
        blocks_many(row, kind, inputs, n, in / BLOCK, out);
}

/* row r of W times each of n <= MANY inputs (out[i] = row · in[i].x): one input alone, or float32 or Q5_0 / Q5_1
   rows, one at a time; the other blocks for several inputs in one pass */
static inline void row_dots(int64_t kind, const void *weight, int64_t in, int64_t r, const Input *inputs, int n,
                            float *out)
{
    const uint8_t *row = (const uint8_t *)weight + r * row_bytes(kind, in);
    if (n == 1 || kind == F32 || kind == Q5_0 || kind == Q5_1) {
        for (int i = 0; i < n; i++)
            out[i] = row_dot(kind, weight, in, r, inputs[i].x, inputs[i].xsum);
    } else if (n == 2) { /* a constant count each, so that the lanes stay in registers */
        many(row, kind, in, inputs, 2, out);
    } else if (n == 3) {
        many(row, kind, in, inputs, 3, out);
    } else {
        many(row, kind, in, inputs, MANY, out);
    }
}

/* the values of one block of BLOCK inputs (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) as gguf dequantizes them: d·q (Q8_0), d·q + m
   (Q4_1, Q5_1), d·(q - 8) = d·q - 8d (Q4_0), d·(q - 16) (Q5_0); d·q is exact, so each value is rounded once */
static inline void block_values_32(int64_t kind, const uint8_t *b, float *v)
{
    const float d = f16_at(b);
    if (kind == Q8_0) {
        for (int j = 0; j < BLOCK; j++)
            v[j] = d * (float)(int8_t)b[2 + j];
        return;
    }
    const int has_min = kind == Q4_1 || kind == Q5_1, five = kind == Q5_0 || kind == Q5_1;
    const float m = has_min ? f16_at(b + 2) : (five ? -16.f : -8.f) * d;
    uint32_t qh = 0;
    if (five)
        memcpy(&qh, b + (has_min ? 4 : 2), sizeof qh);
    const uint8_t *nibbles = b + (has_min ? 4 : 2) + (five ? 4 : 0);
    for (int j = 0; j < BLOCK / 2; j++) {
        v[j] = d * (float)((nibbles[j] & 15) | (qh >> j & 1) << 4) + m;
        v[j + BLOCK / 2] = d * (float)((nibbles[j] >> 4) | (qh >> (j + 16) & 1) << 4) + m;
    }
}

/* the SUPER values of one Q4_K / Q5_K / Q6_K block as gguf dequantizes them: (d·scale)·q - dmin·min, (d·scale)·(q - 32)
   (each product exact in float32: one rounding at most) */
static inline void block_values_k(int64_t kind, const uint8_t *b, float *v)
{
    if (kind == Q6_K) {
        const float d = f16_at(b + 208);
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = b + 64 * half, *qh = b + 128 + 32 * half;
            const int8_t *scale = (const int8_t *)(b + 192) + 8 * half;
            for (int l = 0; l < 32; l++)
                for (int g = 0; g < 4; g++) {
                    const int code = (g >> 1 ? ql[l + 32 * (g & 1)] >> 4 : ql[l + 32 * (g & 1)] & 15) |
                                     (qh[l] >> 2 * g & 3) << 4;
                    v[128 * half + l + 32 * g] = (d * (float)scale[l / 16 + 2 * g]) * (float)(code - 32);
                }
        }
        return;
    }
    const int five = kind == Q5_K;
    const uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16);
    const float d = f16_at(b), dmin = f16_at(b + 2);
    float scale[8], min[8];
    k_scales(b + 4, scale, min);
    for (int sub = 0; sub < 8; sub++)
        for (int l = 0; l < 32; l++) {
            const int nibble = sub & 1 ? qs[32 * (sub / 2) + l] >> 4 : qs[32 * (sub / 2) + l] & 15;
            const int code = nibble | (five ? (qh[l] >> sub & 1) << 4 : 0);
            v[32 * sub + l] = (d * scale[sub]) * (float)code - dmin * min[sub];
        }
}

/* the in values of row r of W into out: a float32 row copied, blocks dequantized as gguf does */
static inline void row_values(int64_t kind, const void *weight, int64_t in, int64_t r, float *out)
{
    if (kind == F32) {
        memcpy(out, (const float *)weight + r * in, sizeof(float) * in);
        return;
    }
    const uint8_t *row = (const uint8_t *)weight + r * row_bytes(kind, in);
    const int64_t size = block_bytes(kind), inputs = block_inputs(kind);
    for (int64_t k = 0; k < in / inputs; k++) {
        if (inputs == SUPER)
            block_values_k(kind, row + k * size, out + k * inputs);
        else
            block_values_32(kind, row + k * size, out + k * inputs);
    }
}

#endif
