/* One decode step of the whole LLaMA decoder for a few rows (one new token each), in one OpenMP parallel region.

Built with cpu_kernels.c by llamalab/quantize/native.py. The Python side (quantize/native_decode.py) passes pointers
to the model's own tensors: weights (float32, or GGUF's quantized blocks where the file is mapped: cpu_rows.h's kinds), RMSNorm
weights, the RoPE tables and the KV cache, static or paged, which this step reads and writes in place through each
row's block table (see Model). Every matrix product splits its output rows over the threads in chunks claimed as they
go (a thread the OS preempts holds back one chunk only); the threads meet once after each product (q/k/v with RoPE and
the cache write, attention, wo with the residual, w1/w3 with SiLU, w2 with the residual, the head), and each thread
computes the RMSNorm of the input rows itself. What it computes is Transformer.forward(tokens, start_pos,
last_only=True) of llamalab/model/model.py, up to the order of float32 summation.
*/
#include <math.h>
#include <stdlib.h>

#include <omp.h>

#include "cpu_rows.h"

typedef struct {
    int64_t kind, out, in; /* kind: F32 or a block kind (cpu_rows.h) */
    const void *weight;    /* float (out, in), or rows of blocks (out, in / BLOCK · block bytes) */
} Linear;

typedef struct {
    const float *attention_norm, *ffn_norm; /* (dim,) */
    float *k, *v;                            /* the keys' and values' storage, addressed as Model says */
    Linear wq, wk, wv, wo, w1, w2, w3;
} Layer;

/* The KV cache holds a row's positions in blocks of block_size: position t of a row whose block table is `table`
   keeps head h's key at k + table[t / block_size] * block_stride + h * head_stride + (t % block_size) * head_dim.
   A paged cache (n_kv_heads, blocks, block_size, head_dim) is read as it is; a static one (rows, n_kv_heads,
   max_seq, head_dim) is the case of one block of max_seq positions per row, its table {row}. */
typedef struct {
    int64_t n_layers, dim, n_heads, n_kv_heads, head_dim, hidden, vocab;
    int64_t max_seq;                               /* the most positions a row holds */
    int64_t block_size, block_stride, head_stride; /* the cache's layout, in floats */
    double eps;
    const float *rope_cos, *rope_sin; /* (positions, head_dim / 2) */
    const float *norm;                /* (dim,) */
    Linear embedding;                 /* (vocab, dim) rows: float32 or blocks */
    Linear output;
    const Layer *layers;
} Model;

/* rows handed out at a time: two chunks a thread, so that a thread the OS preempts holds back half its share of a
   product at most, while claims stay few (each claim moves a shared counter between the cores: 8 chunks a thread
   cost SmolLM2 Q4_1 ~5% of a token at 2 threads) */
static inline int64_t chunk_of(int64_t rows)
{
    const int64_t chunk = rows / (2 * omp_get_num_threads());
    return chunk > 4 ? chunk : 4;
}

/* out[j] = row r of l · in[j].x for j < n <= MANY (Input: cpu_rows.h) */
static inline void dots(const Linear *l, int64_t r, const Input *in, int n, float *out)
{
    row_dots(l->kind, l->weight, l->in, r, in, n, out);
}

/* the inputs of a product taken MANY at a time: i0 the first, n how many */
#define EACH_FEW(i0, n, m) \
    for (int64_t i0 = 0, n = (m) < MANY ? (m) : MANY; i0 < (m); i0 += MANY, n = (m) - i0 < MANY ? (m) - i0 : MANY)

/* this thread's view of m input rows (m, n): x as it is, and its block sums in xsum */
static void prepare(const float *x, int64_t m, int64_t n, float *xsum, Input *inputs)
{
    for (int64_t i = 0; i < m; i++) {
        inputs[i].x = x + i * n;
        inputs[i].xsum = xsum + i * (n / BLOCK);
        block_sums(x + i * n, n, xsum + i * (n / BLOCK));
    }
}

/* out (m, dim) = RMSNorm(x (m, dim)) * weight, as RMSNorm.forward: x * rsqrt(mean(x²) + eps) * weight */
static void rms_norm(const float *x, const float *weight, int64_t m, int64_t dim, double eps, float *out)
{
    for (int64_t i = 0; i < m; i++) {
        const float *xi = x + i * dim;
        float ss = 0.f;
        for (int64_t c = 0; c < dim; c++)
            ss += xi[c] * xi[c];
        const float inv = 1.f / sqrtf(ss / dim + (float)eps);
        for (int64_t c = 0; c < dim; c++)
            out[i * dim + c] = xi[c] * inv * weight[c];
    }
}

/* where head h of position t of a row with block table `table` is kept in `cache` (a layer's k or v) */
static inline float *cached(const Model *mo, float *cache, const int64_t *table, int64_t h, int64_t t)
{
    const int64_t bs = mo->block_size;
    return cache + table[t / bs] * mo->block_stride + h * mo->head_stride + t % bs * mo->head_dim;
}

/* q, k, v of the m rows: the output rows are taken two at a time (a RoPE pair), rotated at each row's position;
   k and v go straight into the cache. Row i's block table is tables + i * width. */
static void qkv(const Model *mo, const Layer *l, const Input *in, int64_t m, const int64_t *positions,
                const int64_t *tables, int64_t width, float *q)
{
    const int64_t qd = l->wq.out, kvd = l->wk.out, hd = mo->head_dim, half = hd / 2;
#pragma omp for schedule(dynamic, chunk_of((qd + 2 * kvd) / 2))
    for (int64_t p = 0; p < (qd + 2 * kvd) / 2; p++) {
        int64_t r = 2 * p;
        const Linear *w = r < qd ? &l->wq : r < qd + kvd ? &l->wk : &l->wv;
        r -= r < qd ? 0 : r < qd + kvd ? qd : qd + kvd;
        const int64_t head = r / hd, d = r % hd;
        EACH_FEW(i0, n, m) {
            float as[MANY], bs[MANY];
            dots(w, r, in + i0, n, as);
            dots(w, r + 1, in + i0, n, bs);
            for (int64_t j = 0; j < n; j++) {
                const int64_t i = i0 + j;
                float a = as[j], b = bs[j];
                if (w != &l->wv) {
                    const int64_t angle = positions[i] * half + d / 2;
                    const float c = mo->rope_cos[angle], s = mo->rope_sin[angle];
                    const float ra = a * c - b * s, rb = a * s + b * c;
                    a = ra;
                    b = rb;
                }
                if (w == &l->wq) {
                    q[i * qd + r] = a;
                    q[i * qd + r + 1] = b;
                } else {
                    float *at = cached(mo, w == &l->wk ? l->k : l->v, tables + i * width, head, positions[i]) + d;
                    at[0] = a;
                    at[1] = b;
                }
            }
        }
    }
}

/* softmax(q kᵀ / √d) v of each row and head over the row's cached positions 0..position, read block by block */
static void attend(const Model *mo, const Layer *l, const float *q, int64_t m, const int64_t *positions,
                   const int64_t *tables, int64_t width, float *scores, float *out)
{
    const int64_t hd = mo->head_dim, qd = mo->n_heads * hd, group = mo->n_heads / mo->n_kv_heads, bs = mo->block_size;
    const float scale = 1.f / sqrtf((float)hd);
#pragma omp for schedule(dynamic, 1)
    for (int64_t ih = 0; ih < m * mo->n_heads; ih++) {
        const int64_t i = ih / mo->n_heads, h = ih % mo->n_heads, kv = h / group, n = positions[i] + 1;
        const int64_t *table = tables + i * width;
        const float *qi = q + i * qd + h * hd;
        float top = -INFINITY, total = 0.f;
        for (int64_t b = 0; b < n; b += bs) { /* positions b.. of one block lie one after the other */
            const float *keys = cached(mo, l->k, table, kv, b);
            for (int64_t t = b; t < n && t < b + bs; t++) {
                scores[t] = f32_dot(qi, keys + (t - b) * hd, hd) * scale;
                top = scores[t] > top ? scores[t] : top;
            }
        }
        for (int64_t t = 0; t < n; t++) {
            scores[t] = expf(scores[t] - top);
            total += scores[t];
        }
        float *o = out + i * qd + h * hd;
        for (int64_t d = 0; d < hd; d++)
            o[d] = 0.f;
        for (int64_t b = 0; b < n; b += bs) {
            const float *values = cached(mo, l->v, table, kv, b);
            for (int64_t t = b; t < n && t < b + bs; t++) {
                const float p = scores[t] / total, *vt = values + (t - b) * hd;
                for (int64_t d = 0; d < hd; d++)
                    o[d] += p * vt[d];
            }
        }
    }
}

/* y (m, l->out) = l · in, or (add) y += l · in */
static void product(const Linear *l, const Input *in, int64_t m, float *y, int add)
{
    const int64_t out = l->out;
#pragma omp for schedule(dynamic, chunk_of(out))
    for (int64_t r = 0; r < out; r++)
        EACH_FEW(i0, n, m) {
            float v[MANY];
            dots(l, r, in + i0, n, v);
            for (int64_t j = 0; j < n; j++)
                y[(i0 + j) * out + r] = (add ? y[(i0 + j) * out + r] : 0.f) + v[j];
        }
}

/* h (m, hidden) = silu(w1 · in) * (w3 · in) */
static void gate_up(const Layer *l, const Input *in, int64_t m, float *h)
{
    const int64_t hidden = l->w1.out;
#pragma omp for schedule(dynamic, chunk_of(hidden))
    for (int64_t r = 0; r < hidden; r++)
        EACH_FEW(i0, n, m) {
            float g[MANY], u[MANY];
            dots(&l->w1, r, in + i0, n, g);
            dots(&l->w3, r, in + i0, n, u);
            for (int64_t j = 0; j < n; j++)
                h[(i0 + j) * hidden + r] = g[j] / (1.f + expf(-g[j])) * u[j];
        }
}

/* logits (m, vocab) of m new tokens (ids `tokens`). Row i sits at positions[i] of the cache row whose block table is
   tables[i * width .. (i + 1) * width); `threads` OpenMP threads share the work. Returns 1 when scratch memory could
   not be allocated. */
int decode_step(const Model *mo, const int64_t *tokens, int64_t m, const int64_t *positions, const int64_t *tables,
                int64_t width, float *logits, int64_t threads)
{
    const int64_t dim = mo->dim, qd = mo->n_heads * mo->head_dim, hidden = mo->hidden;
    const int64_t widest = dim > hidden ? (dim > qd ? dim : qd) : (hidden > qd ? hidden : qd);
    float *shared = malloc(sizeof(float) * m * (dim + 2 * qd + hidden));
    if (!shared)
        return 1;
    float *x = shared, *q = x + m * dim, *att = q + m * qd, *h = att + m * qd; /* x: the residual stream */
    for (int64_t i = 0; i < m; i++)
        row_values(mo->embedding.kind, mo->embedding.weight, dim, tokens[i], x + i * dim); /* as the model's */
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        /* this thread's normalized rows, their block sums, and attention scores */
        float *own = malloc(sizeof(float) * (m * widest + m * (widest / BLOCK) + mo->max_seq));
        Input *in = malloc(sizeof(Input) * m);
#pragma omp atomic
        failed += !own || !in;
#pragma omp barrier
        if (!failed) {
            float *xn = own, *xsum = xn + m * widest, *scores = xsum + m * (widest / BLOCK);
            for (int64_t layer = 0; layer < mo->n_layers; layer++) {
                const Layer *l = mo->layers + layer;
                rms_norm(x, l->attention_norm, m, dim, mo->eps, xn);
                prepare(xn, m, dim, xsum, in);
                qkv(mo, l, in, m, positions, tables, width, q);
                attend(mo, l, q, m, positions, tables, width, scores, att);
                prepare(att, m, qd, xsum, in);
                product(&l->wo, in, m, x, 1);
                rms_norm(x, l->ffn_norm, m, dim, mo->eps, xn);
                prepare(xn, m, dim, xsum, in);
                gate_up(l, in, m, h);
                prepare(h, m, hidden, xsum, in);
                product(&l->w2, in, m, x, 1);
            }
            rms_norm(x, mo->norm, m, dim, mo->eps, xn);
            prepare(xn, m, dim, xsum, in);
            product(&mo->output, in, m, logits, 0);
        }
        free(own);
        free(in);
    }
    free(shared);
    return failed ? 1 : 0;
}
