/* One decode step of the whole model in one call, for one token of each of n sequences (each
   with its own KV cache): every layer's attention and experts, then the head, with the threads
   started once and kept between the parts.

   It computes what the model's per-operation path computes (model/transformer.py with the
   kernels of mxfp4_cpu.c), rounding to the activation dtype at the same points: rmsnorm in
   fp32 rounded; qkv, the attention output projection, the router and the head as fp32 dot
   products plus the bias, rounded; RoPE with every product and sum rounded, as torch's bf16
   operations do; attention in fp32 with the sink in the softmax denominator; the routed experts
   in fp32 summed in ascending expert id, rounded once; residual sums rounded. The bf16 and
   MXFP4 dot products are the row kernels' own, so each row's sum is bit for bit the one the
   per-operation path gets; norms, RoPE, softmax and attention sum in their own order (fp32
   rounding apart from torch's). Activations are bf16 (`act` 1) or fp32 (`act` 0, with fp32
   attention weights, as the tests run); in fp32 the dense rows are summed by portable C.

   A token's row is computed alike whatever tokens share the step (the row kernels' sums do not
   depend on how many inputs share a pass, attention reads only its own cache, the experts sum
   each token's in ascending expert id), so a sequence gets the bits it gets alone. Threads
   split the rows of each matrix product and the (token, kv head) pairs of attention, and wait
   for each other between parts; small parts (norms, top-k) are done by every thread alike. */

#define _POSIX_C_SOURCE 199309L /* clock_gettime */

#include <math.h>
#include <stddef.h>
#include <time.h>

#include "kernels.h"

enum { ACT_F32 = 0, ACT_BF16 = 1 };
enum { PH_NORM, PH_QKV, PH_ATTN, PH_OUT, PH_ROUTER, PH_GATE_UP, PH_DOWN, PH_HEAD, PH_WAIT, PH_ALL, PHASES };

typedef struct {
    const float *attn_norm, *sinks, *mlp_norm;
    const void *qkv_w, *qkv_b, *out_w, *out_b, *router_w, *router_b;
    const uint8_t *gu_blocks, *gu_scales, *dn_blocks, *dn_scales;
    const void *gu_bias, *dn_bias;
    const int8_t *qkv_q, *out_q; /* the q8 forms of qkv_w and out_w, or NULL (exact) */
    const float *qkv_s, *out_s;  /* their row scales */
    int64_t window;              /* the sliding window; 0 for full attention */
} gl_layer;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, experts, top_k, intermediate, vocab;
    float eps, alpha, limit;
    int32_t act;
    const float *final_norm;
    const void *unembedding;
    const int8_t *head_q; /* the q8 form of the unembedding, or NULL (exact) */
    const float *head_s;
    const gl_layer *layer;
} gl_model;

/* One sequence's KV cache, and the position of the token this step feeds it. */
typedef struct {
    void *const *k, *const *v; /* per layer: [slots, kv_heads, head_dim], activation dtype */
    const int64_t *slots;      /* per layer: ring slots (sliding) or the context (full) */
    const int64_t *ring_pos;   /* position each ring slot holds, -1 when empty */
    int64_t pos;
} gl_cache;

/* ------------------------------------------------------------------ small pieces */

INLINE float act_round(int act, float v) {
    return act == ACT_BF16 ? bf16_to_float(float_to_bf16(v)) : v;
}

INLINE void act_store(int act, void *p, int64_t i, float v) {
    if (act == ACT_BF16)
        ((uint16_t *)p)[i] = float_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* Thread 0 keeps the time of each part; the other threads only do the work. */
typedef struct {
    double *phase, mark;
    int on;
} part_clock;

INLINE void lap(part_clock *c, int phase) {
    if (!c->on) return;
    double t = seconds();
    c->phase[phase] += t - c->mark;
    c->mark = t;
}

INLINE void wait_all(part_clock *c) {
#ifdef _OPENMP
#pragma omp barrier
#endif
    lap(c, PH_WAIT);
}

/* out = rmsnorm(x) * scale, rounded: sum of squares in double, then torch's fp32 steps. */
static void rms_norm(const gl_model *m, const float *x, const float *scale, float *out) {
    double ss = 0;
    for (int64_t i = 0; i < m->hidden; i++) ss += (double)x[i] * x[i];
    float r = 1.0f / sqrtf((float)(ss / m->hidden) + m->eps);
    for (int64_t i = 0; i < m->hidden; i++) out[i] = act_round(m->act, (x[i] * r) * scale[i]);
}

/* y[j, r] = round(W[r] . x[j] + b[r]) for rows [r0, r1) of W [R, k] in the activation dtype
   and n inputs x[j] (stride k); y's rows have stride ldy. With its q8 form (wq, ws) given, W
   is read from that. `scratch` (the calling thread's, n * k floats) takes the inputs in the
   form the kernels read, where that is not x itself. */
static void dense_rows(const gl_model *m, int isa, const void *w, const int8_t *wq,
                       const float *ws, const void *b, int64_t k, const float *x, int64_t n,
                       int64_t r0, int64_t r1, float *y, int64_t ldy, void *scratch) {
    int act = m->act;
    int64_t r = r0;
    if (wq != NULL) {
        q8_rows_fn q8 = gl_q8_rows_for(isa);
        float o[n];
        for (; r < r1; r++) {
            q8(wq + r * k, k, x, n, k, o);
            for (int64_t j = 0; j < n; j++)
                y[j * ldy + r] = act_round(act, o[j] * ws[r] + (b ? gl_load(act, b, r) : 0.0f));
        }
        return;
    }
    if (act == ACT_BF16) {
        bf_kernels kern = gl_bf_kernels(isa, 1, k); /* the inputs are bf16 values */
        const void *xk = x;
        if (kern.prepare != NULL) {
            for (int64_t j = 0; j < n; j++) kern.prepare(x + j * k, (char *)scratch + j * k * kern.size, k);
            xk = scratch;
        }
        gl_bf_rows_range(kern, w, k, xk, n, r0, r1, y, ldy);
        for (int64_t j = 0; j < n; j++)
            for (r = r0; r < r1; r++)
                y[j * ldy + r] = act_round(act, y[j * ldy + r] + (b ? gl_load(act, b, r) : 0.0f));
        return;
    }
    for (; r < r1; r++) {
        const float *row = (const float *)w + r * k;
        for (int64_t j = 0; j < n; j++) {
            float a = 0;
            for (int64_t i = 0; i < k; i++) a += row[i] * x[j * k + i];
            y[j * ldy + r] = a + (b ? gl_load(act, b, r) : 0.0f);
        }
    }
}

/* Rotate one head (NeoX halves) in the activation dtype: every product and sum rounded. */
INLINE void rope(int act, const float *in, const void *cos, const void *sin, int64_t d,
                 float *out) {
    int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        float c = gl_load(act, cos, i), s = gl_load(act, sin, i);
        float x1 = in[i], x2 = in[half + i];
        out[i] = act_round(act, act_round(act, x1 * c) - act_round(act, x2 * s));
        out[half + i] = act_round(act, act_round(act, x2 * c) + act_round(act, x1 * s));
    }
}

/* ------------------------------------------------------------------ attention
   Query heads of one kv head g over its visible keys: full layers every position 0..pos (slot
   = position); sliding ones the window's positions whose ring slot holds them, and the new
   token. Products are fused multiply-adds (fmaf) in sixteen lanes, the lanes then summed as a
   fixed tree: the same arithmetic on every ISA, vectorised where the ISA allows. */

#define LANES 16

typedef float (*dot_fn)(const float *a, const float *b, int64_t n);

INLINE float dot_lanes(const float *a, const float *b, int64_t n) {
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) lane[l] = fmaf(a[i + l], b[i + l], lane[l]);
    float s = gl_lanes_sum(lane);
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}

#ifdef GL_X86
/* The same arithmetic with the sixteen lanes in one register (the compiler kept them in
   memory and multiplied one lane at a time): gl_lanes_sum's tree, halves first. */
AVX512 INLINE float dot_lanes_512(const float *a, const float *b, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(acc), hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    float s = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}
#endif

/* The slot of position p in a layer's cache for the query at pos, or -1 when p is not
   visible (a ring slot holding another position). */
INLINE int64_t visible_slot(const gl_layer *L, const gl_cache *c, int64_t l, int64_t p,
                            int64_t pos) {
    if (!L->window) return p;
    int64_t s = p % c->slots[l];
    return p == pos || c->ring_pos[s] == p ? s : -1;
}

/* One cache row (a key or a value of kv head g) as floats. */
INLINE void load_row(int act, const void *cache, int64_t row, int64_t d, float *out) {
    if (act == ACT_BF16) {
        const uint16_t *p = (const uint16_t *)cache + row * d;
        for (int64_t i = 0; i < d; i++) out[i] = bf16_to_float(p[i]);
    } else {
        memcpy(out, (const float *)cache + row * d, d * sizeof(float));
    }
}

/* A kv head's rows of successive positions lie a whole position's heads apart, so each is
   in another line and every fourth in another page, where the hardware prefetcher stops:
   without asking for the rows ahead, attention waited on memory for each one. */
#define AHEAD_ROWS 8

INLINE void prefetch_row(int act, const void *cache, int64_t row, int64_t d) {
    const char *p = (const char *)cache + row * d * (act == ACT_BF16 ? 2 : 4);
    for (int64_t b = 0; b < d * (act == ACT_BF16 ? 2 : 4); b += 64) __builtin_prefetch(p + b);
}

/* The query heads of kv head g of one token (qkv, its RoPE cos/sin) over layer l of its cache
   c, into o. `scores` holds group * stride floats, `slots` stride slot numbers (int32: a
   context holds fewer than 2**31 tokens). */
INLINE void attend_group_body(const gl_model *m, int64_t l, const gl_cache *c, int64_t g,
                              const float *qkv, const void *cos, const void *sin, float *scores,
                              int32_t *slots, int64_t stride, float *o, const int act,
                              const dot_fn dot) {
    const gl_layer *L = m->layer + l;
    int64_t d = m->head_dim, hkv = m->kv_heads, group = m->heads / hkv, pos = c->pos;
    const float *qs = qkv, *ks = qkv + m->heads * d, *vs = ks + hkv * d;
    void *kc = c->k[l], *vc = c->v[l];
    float k_new[d], q[group][d], row[d], acc[group][d];
    /* The new key (rotated) and value go to their slot first, so every key is read back from
       the cache in the cache's dtype. */
    int64_t slot = L->window ? pos % c->slots[l] : pos;
    rope(act, ks + g * d, cos, sin, d, k_new);
    for (int64_t i = 0; i < d; i++) {
        act_store(act, kc, (slot * hkv + g) * d + i, k_new[i]);
        act_store(act, vc, (slot * hkv + g) * d + i, vs[g * d + i]);
    }
    float scale = (float)pow((double)d, -0.5);
    for (int64_t h = 0; h < group; h++) {
        rope(act, qs + (g * group + h) * d, cos, sin, d, q[h]);
        for (int64_t i = 0; i < d; i++) q[h][i] *= scale;
    }
    int64_t first = L->window && pos - L->window + 1 > 0 ? pos - L->window + 1 : 0, n = 0;
    for (int64_t p = first; p <= pos; p++) {
        int64_t s = visible_slot(L, c, l, p, pos);
        if (s >= 0) slots[n++] = (int32_t)s;
    }
    for (int64_t j = 0; j < n; j++) {
        if (j + AHEAD_ROWS < n) prefetch_row(act, kc, slots[j + AHEAD_ROWS] * hkv + g, d);
        load_row(act, kc, slots[j] * hkv + g, d, row);
        for (int64_t h = 0; h < group; h++) scores[h * stride + j] = dot(q[h], row, d);
    }
    float denom[group];
    for (int64_t h = 0; h < group; h++) { /* scores become softmax numerators */
        float *sc = scores + h * stride, sink = L->sinks[g * group + h], mx = sink;
        for (int64_t j = 0; j < n; j++) mx = sc[j] > mx ? sc[j] : mx;
        denom[h] = expf(sink - mx);
        for (int64_t j = 0; j < n; j++) denom[h] += sc[j] = expf(sc[j] - mx);
        for (int64_t i = 0; i < d; i++) acc[h][i] = 0;
    }
    for (int64_t j = 0; j < n; j++) {
        if (j + AHEAD_ROWS < n) prefetch_row(act, vc, slots[j + AHEAD_ROWS] * hkv + g, d);
        load_row(act, vc, slots[j] * hkv + g, d, row);
        for (int64_t h = 0; h < group; h++) {
            float w = scores[h * stride + j];
            for (int64_t i = 0; i < d; i++) acc[h][i] = fmaf(w, row[i], acc[h][i]);
        }
    }
    for (int64_t h = 0; h < group; h++)
        for (int64_t i = 0; i < d; i++)
            o[(g * group + h) * d + i] = act_round(act, acc[h][i] / denom[h]);
}

typedef void (*attend_fn)(const gl_model *, int64_t, const gl_cache *, int64_t, const float *,
                          const void *, const void *, float *, int32_t *, int64_t, float *);

#define ATTEND(NAME, ATTR, DOT)                                                                \
    ATTR static void NAME(const gl_model *m, int64_t l, const gl_cache *c, int64_t g,          \
                          const float *qkv, const void *cos, const void *sin, float *scores,   \
                          int32_t *slots, int64_t stride, float *o) {                          \
        if (m->act == ACT_BF16)                                                                \
            attend_group_body(m, l, c, g, qkv, cos, sin, scores, slots, stride, o, ACT_BF16,   \
                              DOT);                                                            \
        else                                                                                   \
            attend_group_body(m, l, c, g, qkv, cos, sin, scores, slots, stride, o, ACT_F32,    \
                              DOT);                                                            \
    }
ATTEND(attend_c, , dot_lanes)
#ifdef GL_X86
ATTEND(attend_512, AVX512, dot_lanes_512)
ATTEND(attend_256, AVX2, dot_lanes)
#endif

static attend_fn attend_for(int isa) {
#ifdef GL_X86
    if (isa >= 2) return attend_512;
    if (isa == 1) return attend_256;
#endif
    (void)isa;
    return attend_c;
}

/* ------------------------------------------------------------------ routing */

/* The top_k largest router logits (ties: the lower expert id first), and the softmax over them
   rounded to the activation dtype; ids[] comes back sorted by expert id with its weights. */
static void route(const gl_model *m, const float *logits, int64_t *ids, float *weights) {
    int64_t k = m->top_k, pick[k];
    for (int64_t t = 0; t < k; t++) {
        int64_t best = -1;
        for (int64_t e = 0; e < m->experts; e++) {
            int taken = 0;
            for (int64_t u = 0; u < t; u++) taken |= pick[u] == e;
            if (!taken && (best < 0 || logits[e] > logits[best] || (isnan(logits[e]) && !isnan(logits[best]))))
                best = e;
        }
        pick[t] = best;
    }
    float mx = logits[pick[0]], sum = 0, p[k];
    for (int64_t t = 0; t < k; t++) sum += p[t] = expf(logits[pick[t]] - mx);
    for (int64_t t = 0; t < k; t++) p[t] = act_round(m->act, p[t] / sum);
    for (int64_t t = 0; t < k; t++) { /* into expert id order, the order the sums run in */
        int64_t rank = 0;
        for (int64_t u = 0; u < k; u++) rank += pick[u] < pick[t];
        ids[rank] = pick[t], weights[rank] = p[t];
    }
}

/* ------------------------------------------------------------------ the step */

/* The most keys a layer of these caches attends over: its slots. */
static int64_t max_slots(const gl_model *m, const gl_cache *const *caches, int64_t n) {
    int64_t most = 1;
    for (int64_t t = 0; t < n; t++)
        for (int64_t l = 0; l < m->layers; l++)
            most = caches[t]->slots[l] > most ? caches[t]->slots[l] : most;
    return most;
}

/* Floats of a thread's scratch for the inputs in the kernels' form: the experts' n * top_k
   rows of the hidden size, or n rows of a dense product's input. */
static int64_t input_scratch(const gl_model *m, int64_t n) {
    int64_t experts = m->top_k * m->hidden, dense = m->heads * m->head_dim;
    return n * (experts > dense ? experts : dense);
}

/* Floats of scratch `gl_decode_step` needs for n tokens of these caches and nthreads threads. */
int64_t gl_decode_work(const gl_model *m, const gl_cache *const *caches, int64_t n,
                       int nthreads) {
    int64_t h = m->hidden, d = m->head_dim, k = m->top_k, group = m->heads / m->kv_heads;
    int64_t qkv = (m->heads + 2 * m->kv_heads) * d;
    int64_t shared = n * (2 * h + qkv + m->heads * d + m->experts + k * m->intermediate);
    int64_t own = n * h + input_scratch(m, n) + (group + 1) * max_slots(m, caches, n);
    return shared + nthreads * own;
}

/* Logits [n, vocab] (rounded to the activation dtype) of n tokens, token t (embedding row
   x_in[t]) fed to caches[t] at its position `pos`; writes each token's keys and values into
   its cache (the ring positions are the caller's to record). cos, sin [n, head_dim/2] are the
   tokens' RoPE in the activation dtype. When `phase` is not NULL it gets the seconds of each
   part (PHASES of them, thread 0's view) added. */
void gl_decode_step(const gl_model *m, int isa, int64_t n, const void *x_in,
                    const gl_cache *const *caches, const void *cos, const void *sin,
                    float *logits, float *work, double *phase, int nthreads) {
    int act = m->act;
    int64_t h = m->hidden, d = m->head_dim, k = m->top_k, ni = m->intermediate, E = m->experts;
    int64_t qkv_rows = (m->heads + 2 * m->kv_heads) * d, group = m->heads / m->kv_heads;
    int64_t g1 = h / BLOCK, g2 = ni / BLOCK, npairs = n * k, rope_bytes = d / 2 * (act ? 2 : 4);
    int64_t stride = max_slots(m, caches, n);
    float *x = work, *qkv = x + n * h, *o = qkv + n * qkv_rows, *rl = o + n * m->heads * d;
    float *a = rl + n * E, *moe = a + npairs * ni, *own = moe + n * h;
    for (int64_t i = 0; i < n * h; i++) x[i] = gl_load(act, x_in, i);
    /* the experts' gate_up reads the norm's output, bf16 values in bf16; down reads fp32 */
    mx_kernels k1 = gl_mx_kernels(isa, act == ACT_BF16), k2 = gl_mx_kernels(isa, 0);
    int64_t xrow = h * k1.size;
    attend_fn attend = attend_for(isa);
    double start = seconds();
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        int tid = thread_id(), nth = thread_count();
        float *xn = own + tid * (n * h + input_scratch(m, n) + (group + 1) * stride);
        float *xd = xn + n * h, *scores = xd + input_scratch(m, n);
        int32_t *slots = (int32_t *)(scores + group * stride);
        part_clock clk = {phase, seconds(), phase != NULL && tid == 0};
        int64_t r0, r1, ids[n][k], ptok[npairs], first[E + 1];
        float wt[n][k], pw[npairs];
        for (int64_t l = 0; l < m->layers; l++) {
            const gl_layer *L = m->layer + l;
            /* attention */
            for (int64_t t = 0; t < n; t++) rms_norm(m, x + t * h, L->attn_norm, xn + t * h);
            lap(&clk, PH_NORM);
            gl_split_rows(qkv_rows, tid, nth, &r0, &r1);
            dense_rows(m, isa, L->qkv_w, L->qkv_q, L->qkv_s, L->qkv_b, h, xn, n, r0, r1, qkv,
                       qkv_rows, xd);
            lap(&clk, PH_QKV);
            wait_all(&clk);
            for (int64_t w = tid; w < n * m->kv_heads; w += nth) {
                int64_t t = w / m->kv_heads;
                attend(m, l, caches[t], w % m->kv_heads, qkv + t * qkv_rows,
                       (const char *)cos + t * rope_bytes, (const char *)sin + t * rope_bytes,
                       scores, slots, stride, o + t * m->heads * d);
            }
            lap(&clk, PH_ATTN);
            wait_all(&clk);
            gl_split_rows(h, tid, nth, &r0, &r1);
            dense_rows(m, isa, L->out_w, L->out_q, L->out_s, L->out_b, m->heads * d, o, n, r0, r1,
                       moe, h, xd);
            for (int64_t t = 0; t < n; t++)
                for (int64_t r = r0; r < r1; r++)
                    x[t * h + r] = act_round(act, x[t * h + r] + moe[t * h + r]);
            lap(&clk, PH_OUT);
            wait_all(&clk);
            /* experts: the (token, expert) pairs sorted by expert, then token */
            for (int64_t t = 0; t < n; t++) rms_norm(m, x + t * h, L->mlp_norm, xn + t * h);
            lap(&clk, PH_NORM);
            gl_split_rows(E, tid, nth, &r0, &r1);
            dense_rows(m, isa, L->router_w, NULL, NULL, L->router_b, h, xn, n, r0, r1, rl, E, xd);
            lap(&clk, PH_ROUTER);
            wait_all(&clk);
            for (int64_t t = 0; t < n; t++) route(m, rl + t * E, ids[t], wt[t]);
            int64_t p = 0;
            for (int64_t e = 0; e < E; e++) {
                first[e] = p;
                for (int64_t t = 0; t < n; t++)
                    for (int64_t j = 0; j < k; j++)
                        if (ids[t][j] == e) {
                            k1.prepare(xn + t * h, (char *)xd + p * xrow, h);
                            ptok[p] = t, pw[p++] = wt[t][j];
                        }
            }
            first[E] = p;
            lap(&clk, PH_ROUTER);
            gl_split_rows(2 * ni, tid, nth, &r0, &r1);
            int64_t bsize = act == ACT_BF16 ? 2 : 4; /* bytes of a bias */
            for (int64_t e = 0; e < E; e++)
                gl_expert_gate_up(k1, L->gu_blocks + e * 2 * ni * g1 * BLOCK_BYTES,
                                  L->gu_scales + e * 2 * ni * g1, g1, (char *)xd + first[e] * xrow,
                                  xrow, first[e + 1] - first[e], r0, r1,
                                  (const char *)L->gu_bias + e * 2 * ni * bsize, act, m->alpha,
                                  m->limit, a + first[e] * ni, ni);
            lap(&clk, PH_GATE_UP);
            wait_all(&clk);
            gl_split_rows(h, tid, nth, &r0, &r1);
            for (int64_t t = 0; t < n; t++)
                for (int64_t r = r0; r < r1; r++) moe[t * h + r] = 0;
            for (int64_t e = 0; e < E; e++) /* a token's experts add up in ascending id */
                gl_expert_down(k2, L->dn_blocks + e * h * g2 * BLOCK_BYTES,
                               L->dn_scales + e * h * g2, g2, a + first[e] * ni, ni,
                               first[e + 1] - first[e], r0, r1,
                               (const char *)L->dn_bias + e * h * bsize, act, pw + first[e],
                               ptok + first[e], moe, h);
            for (int64_t t = 0; t < n; t++)
                for (int64_t r = r0; r < r1; r++)
                    x[t * h + r] = act_round(act, x[t * h + r] + act_round(act, moe[t * h + r]));
            lap(&clk, PH_DOWN);
            wait_all(&clk);
        }
        for (int64_t t = 0; t < n; t++) rms_norm(m, x + t * h, m->final_norm, xn + t * h);
        lap(&clk, PH_NORM);
        gl_split_rows(m->vocab, tid, nth, &r0, &r1);
        dense_rows(m, isa, m->unembedding, m->head_q, m->head_s, NULL, h, xn, n, r0, r1, logits,
                   m->vocab, xd);
        lap(&clk, PH_HEAD);
        wait_all(&clk);
    }
    if (phase != NULL) phase[PH_ALL] += seconds() - start;
}
