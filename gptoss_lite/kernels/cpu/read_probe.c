/* The read rate the kernels are bound by: threads stream a buffer once, as the kernels stream
   weights (each thread a contiguous share, 64-byte loads, several rows in flight, the bytes a
   little ahead asked for), and the fastest of a few passes is timed from inside the parallel
   region, so starting the threads is not counted. */

#define _POSIX_C_SOURCE 199309L /* clock_gettime */

#include <time.h>

#include "kernels.h"

#define LINE 64

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* XOR of the bytes [begin, end) read as `streams` equal runs side by side, prefetching `ahead`
   bytes on in each run (0: no prefetch). */
static uint64_t read_c(const uint8_t *p, int64_t len, int streams, int64_t ahead) {
    uint64_t acc = 0;
    int64_t run = len / streams / LINE * LINE;
    for (int64_t i = 0; i < run; i += LINE)
        for (int s = 0; s < streams; s++) {
            const uint64_t *q = (const uint64_t *)(p + s * run + i);
            for (int j = 0; j < LINE / 8; j++) acc ^= q[j];
        }
    (void)ahead;
    return acc;
}

#ifdef GL_X86
AVX512 static uint64_t read_512(const uint8_t *p, int64_t len, int streams, int64_t ahead) {
    __m512i acc = _mm512_setzero_si512();
    int64_t run = len / streams / LINE * LINE;
    for (int64_t i = 0; i < run; i += LINE)
        for (int s = 0; s < streams; s++) {
            const uint8_t *q = p + s * run + i;
            if (ahead) _mm_prefetch((const char *)q + ahead, _MM_HINT_T0);
            acc = _mm512_xor_si512(acc, _mm512_loadu_si512(q));
        }
    return (uint64_t)_mm512_reduce_or_epi64(acc);
}

AVX2 static uint64_t read_256(const uint8_t *p, int64_t len, int streams, int64_t ahead) {
    __m256i acc = _mm256_setzero_si256();
    int64_t run = len / streams / LINE * LINE;
    for (int64_t i = 0; i < run; i += LINE)
        for (int s = 0; s < streams; s++) {
            const uint8_t *q = p + s * run + i;
            if (ahead) _mm_prefetch((const char *)q + ahead, _MM_HINT_T0);
            acc = _mm256_xor_si256(acc, _mm256_loadu_si256((const __m256i *)q));
            acc = _mm256_xor_si256(acc, _mm256_loadu_si256((const __m256i *)(q + 32)));
        }
    return (uint64_t)_mm256_extract_epi64(acc, 0) ^ (uint64_t)_mm256_extract_epi64(acc, 3);
}
#endif

/* The fastest of `rounds` passes over `nbytes` of `buf` by `nthreads` threads, in seconds;
   `streams` runs per thread read side by side, prefetching `ahead` bytes on. */
double gl_read_probe(int isa, const uint8_t *buf, int64_t nbytes, int streams, int64_t ahead,
                     int rounds, int nthreads) {
    uint64_t (*read)(const uint8_t *, int64_t, int, int64_t) = read_c;
#ifdef GL_X86
    if (isa >= 2) read = read_512;
    if (isa == 1) read = read_256;
#endif
    double best = 1e30;
    volatile uint64_t sink = 0;
    for (int r = 0; r < rounds; r++) {
        double start = 0, stop = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
        {
            int tid = thread_id(), nth = thread_count();
            int64_t share = nbytes / nth / LINE * LINE;
#ifdef _OPENMP
#pragma omp barrier
#pragma omp master
#endif
            start = now();
            uint64_t x = read(buf + tid * share, share, streams, ahead);
#ifdef _OPENMP
#pragma omp critical
#endif
            sink ^= x;
#ifdef _OPENMP
#pragma omp barrier
#pragma omp master
#endif
            stop = now();
        }
        if (stop - start < best) best = stop - start;
    }
    return best;
}
