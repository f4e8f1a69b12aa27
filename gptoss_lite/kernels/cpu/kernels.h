/* What the CPU kernel sources share: the MXFP4 and bf16 layouts, the row kernels' types, the
   conversions, and the thread helpers. The row kernels live in mxfp4_cpu.c, which also holds the
   per-call entry points; dense_q8.c the optional int8 form of the dense decode matrices;
   decode_step.c runs a whole decode step on them; read_probe.c measures
   the read bandwidth they are bound by. Only `gl_*` entry points are visible outside the
   library. */

#ifndef GL_KERNELS_H
#define GL_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#define GL_X86 1
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16,fma")))
#define AVX2 __attribute__((target("avx2,fma")))
#endif

#define INLINE static inline __attribute__((always_inline))
#define INTERNAL __attribute__((visibility("hidden")))

#define BLOCK 32
#define BLOCK_BYTES 16
#define MAX_TOKENS 8 /* tokens sharing one decoded weight block in the inner loop */
/* Rows a caller of gl_mx_rows_range asks for at a time, MAX_TOKENS inputs a call, when it
   works on the dot products before going on (its buffer stays small; the rows' weights stay
   in L2 for the next inputs). */
#define ROW_TILE 64

/* Two rows (r0, r1) of an MXFP4 matrix against n <= MAX_TOKENS inputs x[j] in the form the
   kernel reads (see mx_kernels; row length groups*32, stride ldx elements): dot products into
   out0[j], out1[j]. */
typedef void (*mx_rows_fn)(const uint8_t *b0, const uint8_t *s0, const uint8_t *b1,
                           const uint8_t *s1, int64_t groups, const void *x, int64_t ldx, int n,
                           float *out0, float *out1);

/* Four consecutive rows of an MXFP4 matrix (b, s: the first row's blocks and scales) against
   one input: out[i] = row i . x, each summed exactly as the two-row kernel sums it for n = 1
   (so a row's result does not depend on what shares its step). */
typedef void (*mx_rows4_fn)(const uint8_t *b, const uint8_t *s, int64_t groups, const void *x,
                            float *out);

/* The MXFP4 row kernels for one instruction set and kind of input, and the form they read
   their inputs in: `prepare` writes one input row (len fp32 values) in that form, `size`
   bytes an element. Inputs that are bf16 values (`bf16_inputs`) are read as bf16 where the
   CPU multiplies bf16 pairs (mxfp4_cpu.c says when the sums differ: only below 2^-126). */
typedef struct {
    mx_rows_fn rows;
    mx_rows4_fn rows4;
    void (*prepare)(const float *x, void *out, int64_t len);
    int64_t size;
} mx_kernels;

/* Two rows of a bf16 matrix [R, K] against n <= MAX_TOKENS inputs x[j] (row length K) in the
   form the kernel reads (see bf_kernels). */
typedef void (*bf_rows_fn)(const uint16_t *w0, const uint16_t *w1, int64_t k, const void *x,
                           int n, float *out0, float *out1);

/* Four rows of a bf16 matrix against one input: out[i] = w_i . x, each row summed in exactly
   the order the two-row kernels sum it (so a row's result does not depend on its neighbours). */
typedef void (*bf_rows4_fn)(const uint16_t *w, int64_t k, const void *x, float *out);

/* Four rows of a bf16 matrix against n <= 4 inputs x[j] (stride k): out[4 * j + i] = w_i . x[j],
   each summed as the kernels above sum it. */
typedef void (*bf_rows4n_fn)(const uint16_t *w, int64_t k, const void *x, int n, float *out);

/* The bf16 row kernels for one instruction set, kind of input and row length k, as
   mx_kernels: fp32 inputs as given (`prepare` NULL), or bf16 values rearranged by `prepare`
   for the bf16 pair product, with the same sums (and then `rows4n`, else NULL). */
typedef struct {
    bf_rows_fn rows;
    bf_rows4_fn rows4;
    bf_rows4n_fn rows4n;
    void (*prepare)(const float *x, void *out, int64_t len);
    int64_t size;
} bf_kernels;

/* One int8 row (the q8 form of a dense matrix) against n fp32 inputs x[j] (stride ldx): the
   sums in out[j], before the row's scale. */
typedef void (*q8_rows_fn)(const int8_t *w, int64_t k, const float *x, int64_t n, int64_t ldx,
                           float *out);

INTERNAL mx_kernels gl_mx_kernels(int isa, int bf16_inputs);
INTERNAL q8_rows_fn gl_q8_rows_for(int isa);
INTERNAL bf_kernels gl_bf_kernels(int isa, int bf16_inputs, int64_t k);
INTERNAL void gl_mx_rows_range(mx_kernels kern, const uint8_t *b, const uint8_t *s, int64_t groups,
                               const void *x, int64_t n, int64_t r0, int64_t r1, float *out,
                               int64_t ldo);
INTERNAL void gl_expert_gate_up(mx_kernels kern, const uint8_t *b, const uint8_t *s,
                                int64_t groups, const char *x, int64_t xrow, int64_t n, int64_t r0,
                                int64_t r1, const void *bias, int bias_bf16, float alpha,
                                float limit, float *a, int64_t ni);
INTERNAL void gl_expert_down(mx_kernels kern, const uint8_t *b, const uint8_t *s, int64_t groups,
                             const float *a, int64_t ni, int64_t n, int64_t r0, int64_t r1,
                             const void *bias, int bias_bf16, const float *w, const int64_t *tok,
                             float *out, int64_t ldo);
INTERNAL void gl_bf_rows_range(bf_kernels kern, const uint16_t *w, int64_t k, const void *x,
                               int64_t n, int64_t r0, int64_t r1, float *out, int64_t ldo);

INTERNAL void gl_split_rows(int64_t rows, int tid, int nth, int64_t *begin, int64_t *end);
INTERNAL int64_t gl_deinterleaved(int64_t k);
INTERNAL void gl_deinterleave(const float *x, void *xd, int64_t len);

INLINE float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to the nearest bf16, ties to even, as torch converts (any NaN to torch's 0x7fc0). */
INLINE uint16_t float_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    bits += 0x7fffu + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

/* Element i of p as a float: p holds bf16 values when `bf16`, else floats. */
INLINE float gl_load(int bf16, const void *p, int64_t i) {
    return bf16 ? bf16_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* The sum of 16 lanes as a fixed tree (lane l += lane l + w for w = 8, 4, 2, 1): the order
   every ISA's kernels that keep sixteen lanes finish in, so their sums agree bit for bit. */
INLINE float gl_lanes_sum(float *lane) {
    for (int w = 8; w > 0; w /= 2)
        for (int l = 0; l < w; l++) lane[l] += lane[l + w];
    return lane[0];
}

/* The experts' activation from a gate and an up projection (biases added): the gate clamped
   from above only, the up from both sides, then gate * sigmoid(alpha * gate) * (up + 1). */
INLINE float gl_swiglu(float gate, float up, float alpha, float limit) {
    gate = fminf(gate, limit);
    up = fminf(fmaxf(up, -limit), limit);
    return gate / (1.0f + expf(-alpha * gate)) * (up + 1.0f);
}

INLINE int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

INLINE int thread_count(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

#endif
