/* perf.c - timing and peak-FLOP measurement. */
#include "perf.h"

#include <omp.h>
#include <time.h>

#include <immintrin.h>

double ccoe_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *ccoe_simd_name(void)
{
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#else
    return "scalar";
#endif
}

/* Runs `iters` rounds of 12 independent FMA chains; returns flops done. */
static double fma_chains(long iters, float *sink)
{
#if defined(__AVX512F__)
    __m512 a[12];
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++)
            a[i] = _mm512_fmadd_ps(a[i], x, y);
    __m512 s = a[0];
    for (int i = 1; i < 12; i++)
        s = _mm512_add_ps(s, a[i]);
    *sink += _mm512_reduce_add_ps(s);
    return (double)iters * 12.0 * 16.0 * 2.0;
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 a[12];
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++)
            a[i] = _mm256_fmadd_ps(a[i], x, y);
    float out[8];
    __m256 s = a[0];
    for (int i = 1; i < 12; i++)
        s = _mm256_add_ps(s, a[i]);
    _mm256_storeu_ps(out, s);
    for (int i = 0; i < 8; i++)
        *sink += out[i];
    return (double)iters * 12.0 * 8.0 * 2.0;
#else
    float a[12];
    for (int i = 0; i < 12; i++)
        a[i] = (float)i;
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++)
            a[i] = a[i] * 0.999999f + 1e-7f;
    for (int i = 0; i < 12; i++)
        *sink += a[i];
    return (double)iters * 12.0 * 2.0;
#endif
}

/* Runs `iters` rounds of 12 independent vdpbf16ps chains; returns flops done. Built for
 * AVX512-BF16 whatever the build flags: called only after a cpuid check. */
__attribute__((target("avx512f,avx512bf16"))) static double bf16_chains(long iters, float *sink)
{
    __m512 a[12];
    const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f7f3f7f); /* pairs of 0.996 */
    const __m512bh y = (__m512bh)_mm512_set1_epi32(0x33d633d6); /* pairs of 1e-7 */
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++)
            a[i] = _mm512_dpbf16_ps(a[i], x, y);
    __m512 s = a[0];
    for (int i = 1; i < 12; i++)
        s = _mm512_add_ps(s, a[i]);
    *sink += _mm512_reduce_add_ps(s);
    return (double)iters * 12.0 * 16.0 * 4.0;
}

/* The best of three rounds of `chains` on nthreads threads for about `seconds` in all. */
static double measure_peak(double (*chains)(long, float *), int nthreads, double seconds)
{
    if (nthreads < 1)
        nthreads = 1;
    double best = 0.0;
    float sink = 0.0f;
    /* a few rounds; keep the best (other processes only slow it down) */
    for (int round = 0; round < 3; round++) {
        double flops = 0.0;
        double t0 = ccoe_now();
#pragma omp parallel num_threads(nthreads) reduction(+ : flops) reduction(+ : sink)
        {
            double f = 0.0;
            float s = 0.0f;
            double start = ccoe_now();
            long iters = 1L << 20;
            while (ccoe_now() - start < seconds / 3.0)
                f += chains(iters, &s);
            flops += f;
            sink += s;
        }
        double dt = ccoe_now() - t0;
        double g = flops / dt * 1e-9;
        if (g > best)
            best = g;
    }
    /* keep the compiler from removing the chains */
    if (sink == 12345.678f)
        best += 0.0;
    return best;
}

double ccoe_measure_fma_peak(int nthreads, double seconds)
{
    return measure_peak(fma_chains, nthreads, seconds);
}

double ccoe_measure_bf16_peak(int nthreads, double seconds)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bf16"))
        return 0.0;
    return measure_peak(bf16_chains, nthreads, seconds);
}
