/* MXFP4 experts and bf16 matrix-vector products on the CPU, straight from the stored bytes.

   Called through ctypes with raw pointers (no torch headers). Every entry point takes an `isa`
   argument: 3 = AVX-512 with VBMI and BF16 (the MXFP4 rows for bf16 inputs; the rest as 2),
   2 = AVX-512 (F, BW, VL), 1 = AVX2 + FMA, 0 = portable C. The SIMD bodies are compiled
   with per-function target attributes, so one shared object runs on any x86-64 (or other) CPU
   and `gl_best_isa()` picks the widest the CPU has. Threads (OpenMP, the runtime torch already
   loaded) split output rows; each row is computed by one thread, so results do not depend on the
   thread count.

   MXFP4 layout: a matrix [R, K] is `blocks[R, K/32, 16]` (byte j holds element 2j in its low
   nibble and 2j+1 in its high nibble) and `scales[R, K/32]` (E8M0: 2^(s-127)). Each weight is
   decoded as FP4 value * scale, exactly the float32 that the torch decoder produces (scale 0 is
   the subnormal 2^-127, scale 255 is +inf, so its weights are inf or NaN as there), then
   multiplied with fp32 activations and summed in fp32. Inputs are de-interleaved per 32-block
   (the 16 even elements, then the 16 odd ones) so the low and the high nibbles of 16 bytes pair
   with contiguous activations: no shuffle of decoded weights in the inner loop. */

#include "kernels.h"

static const float FP4[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                              -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

static float e8m0(uint8_t s) {
    uint32_t bits = s == 0 ? 0x00400000u : (uint32_t)s << 23; /* 2^-127 is subnormal */
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* SCALED[s][c] = FP4[c] * e8m0(s), every weight a block can hold, formed once when the library
   loads: the row kernels are bound by their arithmetic, and a load in place of each block's
   multiply leaves it one operation fewer (the products are the same floats). */
static float SCALED[256][16] __attribute__((aligned(64)));

/* The same weights as bf16 (each is exact there: two significant bits), the 16 codes twice
   over, so a lookup by the low five bits of an index finds a code's weight. */
static uint16_t SCALED_BF16[256][32] __attribute__((aligned(64)));

__attribute__((constructor)) static void scale_tables(void) {
    for (int s = 0; s < 256; s++)
        for (int c = 0; c < 16; c++) {
            SCALED[s][c] = FP4[c] * e8m0((uint8_t)s);
            uint32_t bits;
            memcpy(&bits, &SCALED[s][c], sizeof bits);
            SCALED_BF16[s][c] = SCALED_BF16[s][c + 16] = (uint16_t)(bits >> 16);
        }
}

/* ------------------------------------------------------------------ row kernels
   Each computes two rows (r0, r1) of y = W x for n <= MAX_TOKENS de-interleaved inputs xd[j]
   (row length K) and stores dot products in out0[j], out1[j]. */

static void mx_rows_c(const uint8_t *b0, const uint8_t *s0, const uint8_t *b1, const uint8_t *s1,
                      int64_t groups, const void *x_in, int64_t ldx, int n, float *out0,
                      float *out1) {
    const float *xd = x_in;
    float acc0[MAX_TOKENS] = {0}, acc1[MAX_TOKENS] = {0};
    for (int64_t g = 0; g < groups; g++) {
        float w0[BLOCK], w1[BLOCK];
        const float *t0 = SCALED[s0[g]], *t1 = SCALED[s1[g]];
        for (int i = 0; i < BLOCK_BYTES; i++) {
            uint8_t c0 = b0[g * BLOCK_BYTES + i], c1 = b1[g * BLOCK_BYTES + i];
            w0[i] = t0[c0 & 15], w0[16 + i] = t0[c0 >> 4];
            w1[i] = t1[c1 & 15], w1[16 + i] = t1[c1 >> 4];
        }
        for (int j = 0; j < n; j++) {
            const float *x = xd + j * ldx + g * BLOCK;
            float a0 = 0, a1 = 0;
            for (int i = 0; i < BLOCK; i++) a0 += w0[i] * x[i], a1 += w1[i] * x[i];
            acc0[j] += a0, acc1[j] += a1;
        }
    }
    for (int j = 0; j < n; j++) out0[j] = acc0[j], out1[j] = acc1[j];
}

static void mx_rows4_c(const uint8_t *b, const uint8_t *s, int64_t groups, const void *xd,
                       float *out) {
    int64_t rb = groups * BLOCK_BYTES;
    mx_rows_c(b, s, b + rb, s + groups, groups, xd, 0, 1, out, out + 1);
    mx_rows_c(b + 2 * rb, s + 2 * groups, b + 3 * rb, s + 3 * groups, groups, xd, 0, 1, out + 2,
              out + 3);
}

#ifdef GL_X86

/* The row kernels read two (or four) rows side by side, r and r+1 from offset i, and the next
   call reads the next ones: asking for the bytes AHEAD row pairs on keeps memory busy while
   this pair's arithmetic runs (the hardware prefetcher alone left decode at a third of the
   bandwidth). They are asked into L2 (T1), not L1: eight bf16 rows ahead is more than L1
   holds, and T0 there measured about a third slower, the prefetched lines and the input
   evicting each other. */
#define AHEAD 4
#define PREFETCH_AHEAD(p0, p1, i, len)                                                         \
    do {                                                                                       \
        _mm_prefetch((const char *)(p0) + (i) + 2 * AHEAD * (len), _MM_HINT_T1);               \
        _mm_prefetch((const char *)(p1) + (i) + 2 * AHEAD * (len), _MM_HINT_T1);               \
    } while (0)

/* The same for four rows of `len` bytes from b, as the four-row kernels read them. */
#define PREFETCH_ROWS4(b, len, i)                                                              \
    do {                                                                                       \
        PREFETCH_AHEAD(b, (b) + (len), i, 2 * (len));                                          \
        PREFETCH_AHEAD((b) + 2 * (len), (b) + 3 * (len), i, 2 * (len));                        \
    } while (0)

AVX512 INLINE float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

/* Each block's weights are looked up in its scale's table (FP4 value * scale: the product
   the torch decoder forms) by both nibbles. */
AVX512 INLINE void mx_rows_512_n(const uint8_t *b0, const uint8_t *s0, const uint8_t *b1,
                                 const uint8_t *s1, int64_t groups, const float *xd, int64_t ldx,
                                 const int n, float *out0, float *out1) {
    __m512 acc0[MAX_TOKENS], acc1[MAX_TOKENS];
    for (int j = 0; j < n; j++) acc0[j] = acc1[j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        if (g % 4 == 0) PREFETCH_AHEAD(b0, b1, g * BLOCK_BYTES, groups * BLOCK_BYTES);
        __m512i c0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b0 + g * 16)));
        __m512i c1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b1 + g * 16)));
        __m512 l0 = _mm512_load_ps(SCALED[s0[g]]), l1 = _mm512_load_ps(SCALED[s1[g]]);
        /* vpermps reads the low 4 bits of each index: the low nibble needs no mask. */
        __m512 w0l = _mm512_permutexvar_ps(c0, l0);
        __m512 w0h = _mm512_permutexvar_ps(_mm512_srli_epi32(c0, 4), l0);
        __m512 w1l = _mm512_permutexvar_ps(c1, l1);
        __m512 w1h = _mm512_permutexvar_ps(_mm512_srli_epi32(c1, 4), l1);
        for (int j = 0; j < n; j++) {
            const float *x = xd + j * ldx + g * BLOCK;
            __m512 xe = _mm512_loadu_ps(x), xo = _mm512_loadu_ps(x + 16);
            acc0[j] = _mm512_fmadd_ps(w0h, xo, _mm512_fmadd_ps(w0l, xe, acc0[j]));
            acc1[j] = _mm512_fmadd_ps(w1h, xo, _mm512_fmadd_ps(w1l, xe, acc1[j]));
        }
    }
    for (int j = 0; j < n; j++) out0[j] = hsum512(acc0[j]), out1[j] = hsum512(acc1[j]);
}

/* One specialisation per token count keeps the accumulators in registers. */
#define MX_SPECIALISE(NAME, BODY, ATTR)                                                        \
    ATTR static void NAME(const uint8_t *b0, const uint8_t *s0, const uint8_t *b1,            \
                          const uint8_t *s1, int64_t groups, const void *xd, int64_t ldx, int n, \
                          float *o0, float *o1) {                                              \
        switch (n) {                                                                           \
        case 1: BODY(b0, s0, b1, s1, groups, xd, ldx, 1, o0, o1); break;                       \
        case 2: BODY(b0, s0, b1, s1, groups, xd, ldx, 2, o0, o1); break;                       \
        case 3: BODY(b0, s0, b1, s1, groups, xd, ldx, 3, o0, o1); break;                       \
        case 4: BODY(b0, s0, b1, s1, groups, xd, ldx, 4, o0, o1); break;                       \
        case 5: BODY(b0, s0, b1, s1, groups, xd, ldx, 5, o0, o1); break;                       \
        case 6: BODY(b0, s0, b1, s1, groups, xd, ldx, 6, o0, o1); break;                       \
        case 7: BODY(b0, s0, b1, s1, groups, xd, ldx, 7, o0, o1); break;                       \
        default: BODY(b0, s0, b1, s1, groups, xd, ldx, 8, o0, o1); break;                      \
        }                                                                                      \
    }
MX_SPECIALISE(mx_rows_512, mx_rows_512_n, AVX512)

/* Four rows, one input: the two-row kernel's arithmetic for n = 1, row by row. A row's sum is
   one chain of dependent FMAs, so two rows left the FMA unit waiting on its latency; four keep
   it busy. */
AVX512 static void mx_rows4_512(const uint8_t *b, const uint8_t *s, int64_t groups,
                                const void *x, float *out) {
    const float *xd = x;
    int64_t rb = groups * BLOCK_BYTES;
    __m512 acc[4];
    for (int i = 0; i < 4; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        if (g % 4 == 0) PREFETCH_ROWS4(b, rb, g * BLOCK_BYTES);
        __m512 xe = _mm512_loadu_ps(xd + g * BLOCK), xo = _mm512_loadu_ps(xd + g * BLOCK + 16);
        for (int i = 0; i < 4; i++) {
            __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + i * rb + g * 16)));
            __m512 t = _mm512_load_ps(SCALED[s[i * groups + g]]);
            __m512 wl = _mm512_permutexvar_ps(c, t);
            __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(c, 4), t);
            acc[i] = _mm512_fmadd_ps(wh, xo, _mm512_fmadd_ps(wl, xe, acc[i]));
        }
    }
    for (int i = 0; i < 4; i++) out[i] = hsum512(acc[i]);
}

/* The same rows for inputs that are bf16 values, with the bf16 pair product (vdpbf16ps): each
   16-byte block becomes its 32 weights as bf16 words, word 2i+1 the low nibble of byte i and
   word 2i the high one, and the inputs come as bf16 in the same order (pairs swapped, see
   bf16_pairs). The instruction adds word 2i+1's exact product to lane i, rounds, then word
   2i's and rounds: the two fused multiply-adds the fp32 kernel does in that lane, so the sums
   are bit for bit the same, except that it counts any weight, input or lane sum below 2^-126
   in magnitude as zero (subnormal scales, which trained checkpoints do not hold; an input or
   a partial sum that small is a cancellation to within 2^-126 of values near 1). Each block
   costs a widening, a nibble pick (vpmultishiftqb), one lookup and one product instruction,
   where the fp32 kernel spends a widening, a shift, two lookups and two FMAs. */
#define NIBBLE_PICK 0x0008000C00000004LL /* bytes 2i: bits 4-11 (high nibble), 2i+1: bits 0-7 */

AVX512BF16 INLINE __m512bh mx_bf16_block(const uint8_t *blocks, uint8_t scale) {
    __m512i pairs = _mm512_cvtepu16_epi64(_mm_loadu_si128((const __m128i *)blocks));
    __m512i codes = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(NIBBLE_PICK), pairs);
    return (__m512bh)_mm512_permutexvar_epi16(codes, _mm512_load_si512(SCALED_BF16[scale]));
}

AVX512BF16 INLINE void mxb_rows_512_n(const uint8_t *b0, const uint8_t *s0, const uint8_t *b1,
                                      const uint8_t *s1, int64_t groups, const uint16_t *xb,
                                      int64_t ldx, const int n, float *out0, float *out1) {
    __m512 acc0[MAX_TOKENS], acc1[MAX_TOKENS];
    for (int j = 0; j < n; j++) acc0[j] = acc1[j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        if (g % 4 == 0) PREFETCH_AHEAD(b0, b1, g * BLOCK_BYTES, groups * BLOCK_BYTES);
        __m512bh w0 = mx_bf16_block(b0 + g * 16, s0[g]), w1 = mx_bf16_block(b1 + g * 16, s1[g]);
        for (int j = 0; j < n; j++) {
            __m512bh x = (__m512bh)_mm512_loadu_si512(xb + j * ldx + g * BLOCK);
            acc0[j] = _mm512_dpbf16_ps(acc0[j], w0, x);
            acc1[j] = _mm512_dpbf16_ps(acc1[j], w1, x);
        }
    }
    for (int j = 0; j < n; j++) out0[j] = hsum512(acc0[j]), out1[j] = hsum512(acc1[j]);
}
MX_SPECIALISE(mxb_rows_512, mxb_rows_512_n, AVX512BF16)

AVX512BF16 static void mxb_rows4_512(const uint8_t *b, const uint8_t *s, int64_t groups,
                                     const void *x, float *out) {
    const uint16_t *xb = x;
    int64_t rb = groups * BLOCK_BYTES;
    __m512 acc[4];
    for (int i = 0; i < 4; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        if (g % 4 == 0) PREFETCH_ROWS4(b, rb, g * BLOCK_BYTES);
        __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + g * BLOCK);
        for (int i = 0; i < 4; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], mx_bf16_block(b + i * rb + g * 16, s[i * groups + g]), xv);
    }
    for (int i = 0; i < 4; i++) out[i] = hsum512(acc[i]);
}

AVX2 INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* Eight codes (as int32 lanes) to their FP4 values: the magnitude from an 8-entry table, the
   sign from bit 3. */
AVX2 INLINE __m256 fp4_256(__m256i codes, __m256 mag) {
    __m256 v = _mm256_permutevar8x32_ps(mag, codes);
    __m256i sign = _mm256_slli_epi32(_mm256_srli_epi32(codes, 3), 31);
    return _mm256_xor_ps(v, _mm256_castsi256_ps(sign));
}

AVX2 INLINE void mx_rows_256_n(const uint8_t *b0, const uint8_t *s0, const uint8_t *b1,
                               const uint8_t *s1, int64_t groups, const float *xd, int64_t ldx,
                               const int n, float *out0, float *out1) {
    const __m256i low = _mm256_set1_epi32(15);
    __m256 acc0[MAX_TOKENS], acc1[MAX_TOKENS];
    for (int j = 0; j < n; j++) acc0[j] = acc1[j] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        if (g % 4 == 0) PREFETCH_AHEAD(b0, b1, g * BLOCK_BYTES, groups * BLOCK_BYTES);
        /* the scaled magnitudes (codes 0-7); the sign then flips the scaled value */
        __m256 m0 = _mm256_load_ps(SCALED[s0[g]]), m1 = _mm256_load_ps(SCALED[s1[g]]);
        for (int half = 0; half < 2; half++) { /* bytes 0-7, then 8-15 */
            __m256i c0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b0 + g * 16 + 8 * half)));
            __m256i c1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b1 + g * 16 + 8 * half)));
            __m256 w0l = fp4_256(_mm256_and_si256(c0, low), m0);
            __m256 w0h = fp4_256(_mm256_srli_epi32(c0, 4), m0);
            __m256 w1l = fp4_256(_mm256_and_si256(c1, low), m1);
            __m256 w1h = fp4_256(_mm256_srli_epi32(c1, 4), m1);
            for (int j = 0; j < n; j++) {
                const float *x = xd + j * ldx + g * BLOCK + 8 * half;
                __m256 xe = _mm256_loadu_ps(x), xo = _mm256_loadu_ps(x + 16);
                acc0[j] = _mm256_fmadd_ps(w0h, xo, _mm256_fmadd_ps(w0l, xe, acc0[j]));
                acc1[j] = _mm256_fmadd_ps(w1h, xo, _mm256_fmadd_ps(w1l, xe, acc1[j]));
            }
        }
    }
    for (int j = 0; j < n; j++) out0[j] = hsum256(acc0[j]), out1[j] = hsum256(acc1[j]);
}
MX_SPECIALISE(mx_rows_256, mx_rows_256_n, AVX2)

AVX2 static void mx_rows4_256(const uint8_t *b, const uint8_t *s, int64_t groups,
                              const void *x_in, float *out) {
    const float *xd = x_in;
    const __m256i low = _mm256_set1_epi32(15);
    int64_t rb = groups * BLOCK_BYTES;
    __m256 acc[4];
    for (int i = 0; i < 4; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        if (g % 4 == 0) PREFETCH_ROWS4(b, rb, g * BLOCK_BYTES);
        __m256 m[4];
        for (int i = 0; i < 4; i++) m[i] = _mm256_load_ps(SCALED[s[i * groups + g]]);
        for (int half = 0; half < 2; half++) {
            const float *x = xd + g * BLOCK + 8 * half;
            __m256 xe = _mm256_loadu_ps(x), xo = _mm256_loadu_ps(x + 16);
            for (int i = 0; i < 4; i++) {
                const uint8_t *p = b + i * rb + g * 16 + 8 * half;
                __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
                __m256 wl = fp4_256(_mm256_and_si256(c, low), m[i]);
                __m256 wh = fp4_256(_mm256_srli_epi32(c, 4), m[i]);
                acc[i] = _mm256_fmadd_ps(wh, xo, _mm256_fmadd_ps(wl, xe, acc[i]));
            }
        }
    }
    for (int i = 0; i < 4; i++) out[i] = hsum256(acc[i]);
}
#endif

/* Inputs as the bf16 kernels read them: each value's bf16 (exact: the callers pass bf16
   values), adjacent pairs swapped. */
static void bf16_pairs(const float *x, void *out, int64_t len) {
    uint16_t *xb = out;
    for (int64_t k = 0; k < len; k++) xb[k ^ 1] = float_to_bf16(x[k]);
}

mx_kernels gl_mx_kernels(int isa, int bf16_inputs) {
    mx_kernels k = {mx_rows_c, mx_rows4_c, gl_deinterleave, sizeof(float)};
#ifdef GL_X86
    if (isa == 3 && bf16_inputs) return (mx_kernels){mxb_rows_512, mxb_rows4_512, bf16_pairs, 2};
    if (isa >= 2) k.rows = mx_rows_512, k.rows4 = mx_rows4_512;
    if (isa == 1) k.rows = mx_rows_256, k.rows4 = mx_rows4_256;
#endif
    (void)isa, (void)bf16_inputs;
    return k;
}

/* ------------------------------------------------------------------ bf16 rows
   Two rows of a bf16 matrix [R, K] against n <= MAX_TOKENS fp32 inputs x[j] (row length K):
   each weight widened to fp32 exactly, products summed in fp32. */

static void bf_rows_c(const uint16_t *w0, const uint16_t *w1, int64_t k, const void *x_in, int n,
                      float *out0, float *out1) {
    const float *x = x_in;
    for (int j = 0; j < n; j++) {
        float a0 = 0, a1 = 0;
        for (int64_t i = 0; i < k; i++) {
            a0 += bf16_to_float(w0[i]) * x[j * k + i];
            a1 += bf16_to_float(w1[i]) * x[j * k + i];
        }
        out0[j] = a0, out1[j] = a1;
    }
}

#ifdef GL_X86
AVX512 INLINE __m512 bf16x16(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AVX512 INLINE void bf_rows_512_n(const uint16_t *w0, const uint16_t *w1, int64_t k,
                                 const float *x, const int n, float *out0, float *out1) {
    __m512 acc0[MAX_TOKENS], acc1[MAX_TOKENS];
    for (int j = 0; j < n; j++) acc0[j] = acc1[j] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        if (i % 32 == 0) PREFETCH_AHEAD(w0, w1, 2 * i, 2 * k);
        __m512 a = bf16x16(w0 + i), b = bf16x16(w1 + i);
        for (int j = 0; j < n; j++) {
            __m512 xv = _mm512_loadu_ps(x + j * k + i);
            acc0[j] = _mm512_fmadd_ps(a, xv, acc0[j]);
            acc1[j] = _mm512_fmadd_ps(b, xv, acc1[j]);
        }
    }
    for (int j = 0; j < n; j++) {
        float a0 = hsum512(acc0[j]), a1 = hsum512(acc1[j]);
        for (int64_t t = i; t < k; t++) {
            a0 += bf16_to_float(w0[t]) * x[j * k + t];
            a1 += bf16_to_float(w1[t]) * x[j * k + t];
        }
        out0[j] = a0, out1[j] = a1;
    }
}

AVX2 INLINE __m256 bf16x8(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX2 INLINE void bf_rows_256_n(const uint16_t *w0, const uint16_t *w1, int64_t k,
                               const float *x, const int n, float *out0, float *out1) {
    __m256 acc0[MAX_TOKENS], acc1[MAX_TOKENS];
    for (int j = 0; j < n; j++) acc0[j] = acc1[j] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        if (i % 32 == 0) PREFETCH_AHEAD(w0, w1, 2 * i, 2 * k);
        __m256 a = bf16x8(w0 + i), b = bf16x8(w1 + i);
        for (int j = 0; j < n; j++) {
            __m256 xv = _mm256_loadu_ps(x + j * k + i);
            acc0[j] = _mm256_fmadd_ps(a, xv, acc0[j]);
            acc1[j] = _mm256_fmadd_ps(b, xv, acc1[j]);
        }
    }
    for (int j = 0; j < n; j++) {
        float a0 = hsum256(acc0[j]), a1 = hsum256(acc1[j]);
        for (int64_t t = i; t < k; t++) {
            a0 += bf16_to_float(w0[t]) * x[j * k + t];
            a1 += bf16_to_float(w1[t]) * x[j * k + t];
        }
        out0[j] = a0, out1[j] = a1;
    }
}

#define BF_SPECIALISE(NAME, BODY, ATTR)                                                        \
    ATTR static void NAME(const uint16_t *w0, const uint16_t *w1, int64_t k, const void *x,    \
                          int n, float *o0, float *o1) {                                       \
        switch (n) {                                                                           \
        case 1: BODY(w0, w1, k, x, 1, o0, o1); break;                                          \
        case 2: BODY(w0, w1, k, x, 2, o0, o1); break;                                          \
        case 3: BODY(w0, w1, k, x, 3, o0, o1); break;                                          \
        case 4: BODY(w0, w1, k, x, 4, o0, o1); break;                                          \
        case 5: BODY(w0, w1, k, x, 5, o0, o1); break;                                          \
        case 6: BODY(w0, w1, k, x, 6, o0, o1); break;                                          \
        case 7: BODY(w0, w1, k, x, 7, o0, o1); break;                                          \
        default: BODY(w0, w1, k, x, 8, o0, o1); break;                                         \
        }                                                                                      \
    }
BF_SPECIALISE(bf_rows_512, bf_rows_512_n, AVX512)
BF_SPECIALISE(bf_rows_256, bf_rows_256_n, AVX2)

/* Four rows, one input: the two-row kernels' arithmetic for n = 1, row by row, with four
   streams in flight instead of two. */
AVX512 static void bf_rows4_512(const uint16_t *w, int64_t k, const void *x_in, float *out) {
    const float *x = x_in;
    const uint16_t *w0 = w, *w1 = w + k, *w2 = w + 2 * k, *w3 = w + 3 * k;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        if (i % 32 == 0) {
            PREFETCH_AHEAD(w0, w1, 2 * i, 2 * k);
            PREFETCH_AHEAD(w2, w3, 2 * i, 2 * k);
        }
        __m512 xv = _mm512_loadu_ps(x + i);
        a0 = _mm512_fmadd_ps(bf16x16(w0 + i), xv, a0);
        a1 = _mm512_fmadd_ps(bf16x16(w1 + i), xv, a1);
        a2 = _mm512_fmadd_ps(bf16x16(w2 + i), xv, a2);
        a3 = _mm512_fmadd_ps(bf16x16(w3 + i), xv, a3);
    }
    float s[4] = {hsum512(a0), hsum512(a1), hsum512(a2), hsum512(a3)};
    for (int r = 0; r < 4; r++) {
        for (int64_t t = i; t < k; t++) s[r] += bf16_to_float(w[r * k + t]) * x[t];
        out[r] = s[r];
    }
}

AVX2 static void bf_rows4_256(const uint16_t *w, int64_t k, const void *x_in, float *out) {
    const float *x = x_in;
    const uint16_t *w0 = w, *w1 = w + k, *w2 = w + 2 * k, *w3 = w + 3 * k;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        if (i % 32 == 0) {
            PREFETCH_AHEAD(w0, w1, 2 * i, 2 * k);
            PREFETCH_AHEAD(w2, w3, 2 * i, 2 * k);
        }
        __m256 xv = _mm256_loadu_ps(x + i);
        a0 = _mm256_fmadd_ps(bf16x8(w0 + i), xv, a0);
        a1 = _mm256_fmadd_ps(bf16x8(w1 + i), xv, a1);
        a2 = _mm256_fmadd_ps(bf16x8(w2 + i), xv, a2);
        a3 = _mm256_fmadd_ps(bf16x8(w3 + i), xv, a3);
    }
    float s[4] = {hsum256(a0), hsum256(a1), hsum256(a2), hsum256(a3)};
    for (int r = 0; r < 4; r++) {
        for (int64_t t = i; t < k; t++) s[r] += bf16_to_float(w[r * k + t]) * x[t];
        out[r] = s[r];
    }
}

/* The same rows for inputs that are bf16 values, with the bf16 pair product: a lane of the fp32
   kernels sums elements l, 16 + l, 32 + l, ... of a row in turn, so each 32 weights are
   reordered (one vpermw) to put elements l and 16 + l in the lane's pair, the first where the
   instruction adds first; the inputs come in that order (bf16_pair_order). Same sums, with
   the flush below 2^-126 of the MXFP4 pair kernels; rows a whole number of 32s long. */
AVX512BF16 INLINE __m512i pair_order(void) {
    uint16_t idx[BLOCK];
    for (int l = 0; l < 16; l++) idx[2 * l + 1] = (uint16_t)l, idx[2 * l] = (uint16_t)(16 + l);
    return _mm512_loadu_si512(idx);
}

AVX512BF16 INLINE __m512bh bf_pairs(const uint16_t *w, __m512i order) {
    return (__m512bh)_mm512_permutexvar_epi16(order, _mm512_loadu_si512(w));
}

AVX512BF16 INLINE void bfp_rows_512_n(const uint16_t *w0, const uint16_t *w1, int64_t k,
                                      const uint16_t *xp, const int n, float *out0, float *out1) {
    const __m512i order = pair_order();
    __m512 acc0[MAX_TOKENS], acc1[MAX_TOKENS];
    for (int j = 0; j < n; j++) acc0[j] = acc1[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += BLOCK) {
        PREFETCH_AHEAD(w0, w1, 2 * i, 2 * k);
        __m512bh a = bf_pairs(w0 + i, order), b = bf_pairs(w1 + i, order);
        for (int j = 0; j < n; j++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512(xp + j * k + i);
            acc0[j] = _mm512_dpbf16_ps(acc0[j], a, xv);
            acc1[j] = _mm512_dpbf16_ps(acc1[j], b, xv);
        }
    }
    for (int j = 0; j < n; j++) out0[j] = hsum512(acc0[j]), out1[j] = hsum512(acc1[j]);
}
BF_SPECIALISE(bfp_rows_512, bfp_rows_512_n, AVX512BF16)

/* Four rows against up to four inputs (a few sequences decoded together): four rows stream
   at once, and each 32 weights reordered once serve every input. */
AVX512BF16 INLINE void bfp_rows4_512_n(const uint16_t *w, int64_t k, const uint16_t *xp,
                                       const int n, float *out) {
    const __m512i order = pair_order();
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < n; j++) acc[r][j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += BLOCK) {
        PREFETCH_AHEAD(w, w + k, 2 * i, 2 * k);
        PREFETCH_AHEAD(w + 2 * k, w + 3 * k, 2 * i, 2 * k);
        __m512bh wr[4];
        for (int r = 0; r < 4; r++) wr[r] = bf_pairs(w + r * k + i, order);
        for (int j = 0; j < n; j++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512(xp + j * k + i);
            for (int r = 0; r < 4; r++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wr[r], xv);
        }
    }
    for (int j = 0; j < n; j++)
        for (int r = 0; r < 4; r++) out[4 * j + r] = hsum512(acc[r][j]);
}

AVX512BF16 static void bfp_rows4n_512(const uint16_t *w, int64_t k, const void *x, int n,
                                      float *out) {
    switch (n) {
    case 1: bfp_rows4_512_n(w, k, x, 1, out); break;
    case 2: bfp_rows4_512_n(w, k, x, 2, out); break;
    case 3: bfp_rows4_512_n(w, k, x, 3, out); break;
    default: bfp_rows4_512_n(w, k, x, 4, out); break;
    }
}

/* Four rows against one input, one row after another: a row's sum is one chain of products
   waiting on the instruction's latency (about 36 GB/s a core on Zen 4, more than a core's share
   of the memory), and the reads are a single stream, which memory serves faster than four
   rows side by side (two threads over the head's 201,088 x 2880 weights: 1.00-1.19x, median
   1.07x, as fast as a plain read of the same bytes). */
AVX512BF16 static void bfp_rows4_512(const uint16_t *w, int64_t k, const void *x, float *out) {
    const __m512i order = pair_order();
    const uint16_t *xp = x;
    for (int r = 0; r < 4; r++, w += k) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < k; i += BLOCK)
            acc = _mm512_dpbf16_ps(acc, bf_pairs(w + i, order), (__m512bh)_mm512_loadu_si512(xp + i));
        out[r] = hsum512(acc);
    }
}
#endif

static void bf_rows4_c(const uint16_t *w, int64_t k, const void *x_in, float *out) {
    const float *x = x_in;
    for (int r = 0; r < 4; r++) {
        float a = 0;
        for (int64_t i = 0; i < k; i++) a += bf16_to_float(w[r * k + i]) * x[i];
        out[r] = a;
    }
}

/* Inputs as the bf16 pair kernels read them: each 32 values' bf16 (exact: the callers pass bf16
   values), value l and 16 + l side by side, the first in the odd word. */
static void bf16_pair_order(const float *x, void *out, int64_t len) {
    uint16_t *xp = out;
    for (int64_t i = 0; i < len; i += BLOCK)
        for (int l = 0; l < 16; l++) {
            xp[i + 2 * l + 1] = float_to_bf16(x[i + l]);
            xp[i + 2 * l] = float_to_bf16(x[i + 16 + l]);
        }
}

bf_kernels gl_bf_kernels(int isa, int bf16_inputs, int64_t k) {
    bf_kernels kern = {bf_rows_c, bf_rows4_c, NULL, NULL, sizeof(float)};
#ifdef GL_X86
    if (isa == 3 && bf16_inputs && k % BLOCK == 0)
        return (bf_kernels){bfp_rows_512, bfp_rows4_512, bfp_rows4n_512, bf16_pair_order, 2};
    if (isa >= 2) kern.rows = bf_rows_512, kern.rows4 = bf_rows4_512;
    if (isa == 1) kern.rows = bf_rows_256, kern.rows4 = bf_rows4_256;
#endif
    (void)isa, (void)bf16_inputs, (void)k;
    return kern;
}

/* ------------------------------------------------------------------ dispatch */

int gl_best_isa(void) {
#ifdef GL_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        return __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bf16") ? 3 : 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

/* ------------------------------------------------------------------ shared pieces */

/* The rows [begin, end) of `rows` (even-aligned) that thread `tid` of `nth` computes. */
void gl_split_rows(int64_t rows, int tid, int nth, int64_t *begin, int64_t *end) {
    int64_t pairs = (rows + 1) / 2;
    *begin = 2 * (pairs * tid / nth);
    *end = 2 * (pairs * (tid + 1) / nth);
    if (*end > rows) *end = rows;
}

/* Position of element k of a row in its de-interleaved copy. */
int64_t gl_deinterleaved(int64_t k) {
    int64_t i = k % BLOCK;
    return k - i + (i & 1 ? 16 + i / 2 : i / 2);
}

void gl_deinterleave(const float *x, void *out, int64_t len) {
    float *xd = out;
    for (int64_t k = 0; k < len; k++) xd[gl_deinterleaved(k)] = x[k];
}

/* out[j * ldo + r - r0] = W[r] . x[j] for rows [r0, r1) of an MXFP4 matrix W (b, s: its first
   row's blocks and scales, `groups` blocks a row) and n inputs x in kern's form, one after
   another: four rows a pass for one input, else two (an odd last row computed twice, stored
   once) for MAX_TOKENS inputs a pass (each row's sum is the same either way). */
void gl_mx_rows_range(mx_kernels kern, const uint8_t *b, const uint8_t *s, int64_t groups,
                      const void *x, int64_t n, int64_t r0, int64_t r1, float *out, int64_t ldo) {
    int64_t k = groups * BLOCK, r = r0;
    for (; n == 1 && r + 4 <= r1; r += 4)
        kern.rows4(b + r * groups * BLOCK_BYTES, s + r * groups, groups, x, out + r - r0);
    for (; r < r1; r += 2) {
        int64_t q = r + 1 < r1 ? r + 1 : r;
        for (int64_t j0 = 0; j0 < n; j0 += MAX_TOKENS) {
            int m = n - j0 < MAX_TOKENS ? (int)(n - j0) : MAX_TOKENS;
            float o0[MAX_TOKENS], o1[MAX_TOKENS];
            kern.rows(b + r * groups * BLOCK_BYTES, s + r * groups, b + q * groups * BLOCK_BYTES,
                      s + q * groups, groups, (const char *)x + j0 * k * kern.size, k, m, o0, o1);
            for (int j = 0; j < m; j++) {
                out[(j0 + j) * ldo + r - r0] = o0[j];
                if (q != r) out[(j0 + j) * ldo + q - r0] = o1[j];
            }
        }
    }
}

/* One expert's gate_up rows [r0, r1) (r0 even; row 2i the gate and 2i+1 the up of activation
   i) against its n inputs (kern's form, one every xrow bytes from x), its biases added (bias:
   the expert's 2I, bf16 values when bias_bf16) and each pair's SwiGLU stored in a[j * ni + i],
   ROW_TILE rows and MAX_TOKENS inputs at a time. */
void gl_expert_gate_up(mx_kernels kern, const uint8_t *b, const uint8_t *s, int64_t groups,
                       const char *x, int64_t xrow, int64_t n, int64_t r0, int64_t r1,
                       const void *bias, int bias_bf16, float alpha, float limit, float *a,
                       int64_t ni) {
    float tile[MAX_TOKENS * ROW_TILE];
    for (int64_t rt = r0; n > 0 && rt < r1; rt += ROW_TILE) {
        int64_t re = rt + ROW_TILE < r1 ? rt + ROW_TILE : r1;
        for (int64_t j0 = 0; j0 < n; j0 += MAX_TOKENS) {
            int64_t m = n - j0 < MAX_TOKENS ? n - j0 : MAX_TOKENS;
            gl_mx_rows_range(kern, b, s, groups, x + j0 * xrow, m, rt, re, tile, ROW_TILE);
            for (int64_t j = 0; j < m; j++)
                for (int64_t r = rt; r < re; r += 2)
                    a[(j0 + j) * ni + gl_deinterleaved(r / 2)] =
                        gl_swiglu(tile[j * ROW_TILE + r - rt] + gl_load(bias_bf16, bias, r),
                                  tile[j * ROW_TILE + r + 1 - rt] + gl_load(bias_bf16, bias, r + 1),
                                  alpha, limit);
        }
    }
}

/* One expert's down rows [r0, r1) against its n activations a[j * ni], its biases added (bias:
   the expert's H, bf16 values when bias_bf16), weighted by w[j] and added to row tok[j] of out
   (ldo floats a row), ROW_TILE rows and MAX_TOKENS inputs at a time. */
void gl_expert_down(mx_kernels kern, const uint8_t *b, const uint8_t *s, int64_t groups,
                    const float *a, int64_t ni, int64_t n, int64_t r0, int64_t r1,
                    const void *bias, int bias_bf16, const float *w, const int64_t *tok,
                    float *out, int64_t ldo) {
    float tile[MAX_TOKENS * ROW_TILE];
    for (int64_t rt = r0; n > 0 && rt < r1; rt += ROW_TILE) {
        int64_t re = rt + ROW_TILE < r1 ? rt + ROW_TILE : r1;
        for (int64_t j0 = 0; j0 < n; j0 += MAX_TOKENS) {
            int64_t m = n - j0 < MAX_TOKENS ? n - j0 : MAX_TOKENS;
            gl_mx_rows_range(kern, b, s, groups, a + j0 * ni, m, rt, re, tile, ROW_TILE);
            for (int64_t j = 0; j < m; j++) {
                float *o = out + tok[j0 + j] * ldo;
                for (int64_t r = rt; r < re; r++)
                    o[r] += w[j0 + j] * (tile[j * ROW_TILE + r - rt] + gl_load(bias_bf16, bias, r));
            }
        }
    }
}

/* out[j * ldo + r] = W[r] . x[j] for rows [r0, r1) of a bf16 matrix W [R, k] and n inputs x
   in kern's form: four rows a pass where the kernels have one for that many inputs, else two
   (each row's sum is the same either way). */
void gl_bf_rows_range(bf_kernels kern, const uint16_t *w, int64_t k, const void *x, int64_t n,
                      int64_t r0, int64_t r1, float *out, int64_t ldo) {
    int64_t r = r0;
    for (; n == 1 && r + 4 <= r1; r += 4) kern.rows4(w + r * k, k, x, out + r);
    for (; kern.rows4n != NULL && n <= 4 && r + 4 <= r1; r += 4) {
        float o[16];
        kern.rows4n(w + r * k, k, x, (int)n, o);
        for (int64_t j = 0; j < n; j++)
            for (int i = 0; i < 4; i++) out[j * ldo + r + i] = o[4 * j + i];
    }
    for (; r < r1; r += 2) {
        int64_t q = r + 1 < r1 ? r + 1 : r; /* an odd last row is computed twice, stored once */
        for (int64_t j0 = 0; j0 < n; j0 += MAX_TOKENS) {
            int m = n - j0 < MAX_TOKENS ? (int)(n - j0) : MAX_TOKENS;
            float o0[MAX_TOKENS], o1[MAX_TOKENS];
            kern.rows(w + r * k, w + q * k, k, (const char *)x + j0 * k * kern.size, m, o0, o1);
            for (int j = 0; j < m; j++) {
                out[(j0 + j) * ldo + r] = o0[j];
                if (q != r) out[(j0 + j) * ldo + q] = o1[j];
            }
        }
    }
}

/* ------------------------------------------------------------------ entry points */

/* y[n, rows] = x[n, K] W^T + bias (bias may be NULL), W packed MXFP4 [rows, K]; x holds bf16
   values when `x_bf16`. `xd` is scratch for n*K floats. */
void gl_mxfp4_matmul(int isa, const uint8_t *blocks, const uint8_t *scales, const float *bias,
                     const float *x, int x_bf16, float *xd, float *y, int64_t rows,
                     int64_t groups, int64_t n, int nthreads) {
    mx_kernels kern = gl_mx_kernels(isa, x_bf16);
    int64_t k = groups * BLOCK;
#pragma omp parallel num_threads(nthreads)
    {
        int tid = thread_id(), nth = thread_count();
        for (int64_t j = tid; j < n; j += nth) kern.prepare(x + j * k, (char *)xd + j * k * kern.size, k);
#pragma omp barrier
        int64_t r0, r1;
        gl_split_rows(rows, tid, nth, &r0, &r1);
        gl_mx_rows_range(kern, blocks, scales, groups, xd, n, r0, r1, y + r0, rows);
        for (int64_t j = 0; bias != NULL && j < n; j++)
            for (int64_t r = r0; r < r1; r++) y[j * rows + r] += bias[r];
    }
}

/* One layer's routed experts: out[t] += Σ w_p (W2_e swiglu(W1_e x_t + b1_e) + b2_e) over the
   (token, expert) pairs p, which come sorted by expert: pairs offsets[u] .. offsets[u+1]-1 use
   expert ids[u]. xs[P, H] are the pairs' input rows (bf16 values when `xs_bf16`); wt[P] their
   routing weights, tok[P] their token; bias1[U, 2I] and bias2[U, H] the used experts' biases
   in fp32. Scratch: xd[P, H] and ad[P, I] floats. out[T, H] is accumulated into, in the order
   of the pairs. */
void gl_mxfp4_experts(int isa, int64_t n_used, const int64_t *ids, const int64_t *offsets,
                      const float *xs, int xs_bf16, const float *wt, const int64_t *tok,
                      const uint8_t *blocks1, const uint8_t *scales1, const float *bias1,
                      const uint8_t *blocks2, const uint8_t *scales2, const float *bias2,
                      int64_t hidden, int64_t intermediate, float alpha, float limit, float *xd,
                      float *ad, float *out, int nthreads) {
    mx_kernels k1 = gl_mx_kernels(isa, xs_bf16), k2 = gl_mx_kernels(isa, 0);
    int64_t g1 = hidden / BLOCK, g2 = intermediate / BLOCK, rows1 = 2 * intermediate;
    int64_t npairs = offsets[n_used], xrow = hidden * k1.size;
#pragma omp parallel num_threads(nthreads)
    {
        int tid = thread_id(), nth = thread_count();
        for (int64_t p = tid; p < npairs; p += nth) k1.prepare(xs + p * hidden, (char *)xd + p * xrow, hidden);
#pragma omp barrier
        int64_t r0, r1;
        gl_split_rows(rows1, tid, nth, &r0, &r1);
        for (int64_t u = 0; u < n_used; u++) {
            int64_t e = ids[u], p0 = offsets[u];
            gl_expert_gate_up(k1, blocks1 + e * rows1 * g1 * BLOCK_BYTES, scales1 + e * rows1 * g1,
                              g1, (char *)xd + p0 * xrow, xrow, offsets[u + 1] - p0, r0, r1,
                              bias1 + u * rows1, 0, alpha, limit, ad + p0 * intermediate,
                              intermediate);
        }
#pragma omp barrier
        gl_split_rows(hidden, tid, nth, &r0, &r1);
        for (int64_t u = 0; u < n_used; u++) {
            int64_t e = ids[u], p0 = offsets[u];
            gl_expert_down(k2, blocks2 + e * hidden * g2 * BLOCK_BYTES, scales2 + e * hidden * g2,
                           g2, ad + p0 * intermediate, intermediate, offsets[u + 1] - p0, r0, r1,
                           bias2 + u * hidden, 0, wt + p0, tok + p0, out, hidden);
        }
    }
}

/* y[n, rows] = x[n, K] W^T + bias (bias may be NULL) for a bf16 matrix W [rows, K]; x holds
   bf16 values when `x_bf16`. `xk` is scratch for n*K floats. */
void gl_bf16_matmul(int isa, const uint16_t *w, const float *bias, const float *x, int x_bf16,
                    float *xk, float *y, int64_t rows, int64_t k, int64_t n, int nthreads) {
    bf_kernels kern = gl_bf_kernels(isa, x_bf16, k);
    if (kern.prepare != NULL) {
        for (int64_t j = 0; j < n; j++) kern.prepare(x + j * k, (char *)xk + j * k * kern.size, k);
        x = xk;
    }
#pragma omp parallel num_threads(nthreads)
    {
        int64_t r0, r1;
        gl_split_rows(rows, thread_id(), thread_count(), &r0, &r1);
        gl_bf_rows_range(kern, w, k, x, n, r0, r1, y, rows);
        for (int64_t j = 0; j < n; j++)
            for (int64_t r = r0; r < r1; r++) y[j * rows + r] += bias ? bias[r] : 0.0f;
    }
}
