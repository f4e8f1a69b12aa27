/* The optional q8 form of the dense decode matrices (attention projections, head): int8 weights
   with one fp32 scale per row, w ~ q * scale, read at half the bytes of bf16. Not exact: each
   weight moves by up to half a step, max|row| / 254; the compiled decode step uses it only when
   asked (`cpu-q8` kernels). Products of the int8 code with the fp32 input sum in fp32 (the code
   widens exactly), and the row's sum is scaled once at the end. */

#include <math.h>

#include "kernels.h"

#define Q8_MAX 127.0f

/* Element i of W (bf16, else fp32) as a float. */
INLINE float element(const void *w, int bf16, int64_t i) {
    return bf16 ? bf16_to_float(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

/* q[r], scale[r] for rows [r0, r1) of W [rows, k] (bf16, else fp32): scale =
   max|row| / 127, q = the nearest integer to w / scale (ties to even). */
static void quantize_rows(const void *w, int bf16, int64_t k, int64_t r0, int64_t r1, int8_t *q,
                          float *scale) {
    for (int64_t r = r0; r < r1; r++) {
        float most = 0;
        for (int64_t i = 0; i < k; i++) {
            float v = element(w, bf16, r * k + i);
            most = fabsf(v) > most ? fabsf(v) : most;
        }
        float s = most / Q8_MAX, inv = most > 0 ? Q8_MAX / most : 0;
        scale[r] = s;
        for (int64_t i = 0; i < k; i++)
            q[r * k + i] =
                (int8_t)nearbyintf(fminf(fmaxf(element(w, bf16, r * k + i) * inv, -Q8_MAX), Q8_MAX));
    }
}

/* The q8 form of W [rows, k] (bf16 if `bf16`, else fp32): codes q [rows, k], scales [rows].
   `inv` is computed as 127 / max|row| and the code as w * inv, rounded: a test recomputes it. */
void gl_quantize_q8(const void *w, int bf16, int64_t rows, int64_t k, int8_t *q, float *scale,
                    int nthreads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        int64_t r0, r1;
        gl_split_rows(rows, thread_id(), thread_count(), &r0, &r1);
        quantize_rows(w, bf16, k, r0, r1, q, scale);
    }
}

/* ------------------------------------------------------------------ row kernels
   Sum of q[i] * x[i] in fp32, sixteen lanes then the lanes as a fixed tree (`gl_lanes_sum`; the
   AVX2 kernel keeps the sixteen lanes as two vectors): the same sum on every ISA. */

static void q8_rows_c(const int8_t *w, int64_t k, const float *x, int64_t n, int64_t ldx,
                      float *out) {
    for (int64_t j = 0; j < n; j++) {
        float lane[16] = {0};
        for (int64_t i = 0; i < k; i++) lane[i % 16] = fmaf((float)w[i], x[j * ldx + i], lane[i % 16]);
        out[j] = gl_lanes_sum(lane);
    }
}

#ifdef GL_X86
#define Q8_AHEAD 8 /* rows asked for ahead, into L2 */

AVX512 static void q8_rows_512(const int8_t *w, int64_t k, const float *x, int64_t n,
                               int64_t ldx, float *out) {
    for (int64_t j = 0; j < n; j++) {
        __m512 acc = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= k; i += 16) {
            if (j == 0 && i % 64 == 0) _mm_prefetch((const char *)w + i + Q8_AHEAD * k, _MM_HINT_T1);
            __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + i))));
            acc = _mm512_fmadd_ps(q, _mm512_loadu_ps(x + j * ldx + i), acc);
        }
        float lane[16];
        _mm512_storeu_ps(lane, acc);
        for (; i < k; i++) lane[i % 16] = fmaf((float)w[i], x[j * ldx + i], lane[i % 16]);
        out[j] = gl_lanes_sum(lane);
    }
}

AVX2 static void q8_rows_256(const int8_t *w, int64_t k, const float *x, int64_t n,
                             int64_t ldx, float *out) {
    for (int64_t j = 0; j < n; j++) {
        __m256 lo = _mm256_setzero_ps(), hi = lo;
        int64_t i = 0;
        for (; i + 16 <= k; i += 16) {
            if (j == 0 && i % 64 == 0) _mm_prefetch((const char *)w + i + Q8_AHEAD * k, _MM_HINT_T1);
            __m128i b = _mm_loadu_si128((const __m128i *)(w + i));
            __m256 q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
            __m256 q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
            lo = _mm256_fmadd_ps(q0, _mm256_loadu_ps(x + j * ldx + i), lo);
            hi = _mm256_fmadd_ps(q1, _mm256_loadu_ps(x + j * ldx + i + 8), hi);
        }
        float lane[16];
        _mm256_storeu_ps(lane, lo), _mm256_storeu_ps(lane + 8, hi);
        for (; i < k; i++) lane[i % 16] = fmaf((float)w[i], x[j * ldx + i], lane[i % 16]);
        out[j] = gl_lanes_sum(lane);
    }
}
#endif

q8_rows_fn gl_q8_rows_for(int isa) {
#ifdef GL_X86
    if (isa >= 2) return q8_rows_512;
    if (isa == 1) return q8_rows_256;
#endif
    (void)isa;
    return q8_rows_c;
}
