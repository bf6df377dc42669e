/* perf.h - wall-clock timing and the measured FP32 FMA peak (the denominators of model-FLOP
 * utilisation). Measurements only; nothing here asserts speed. */
#ifndef CCOE_PERF_H
#define CCOE_PERF_H

/* Monotonic seconds. */
double ccoe_now(void);

/* Measures the FP32 FMA peak of `nthreads` threads in GFLOP/s by running independent
 * vector FMA chains for about `seconds` (the widest vectors this build supports). */
double ccoe_measure_fma_peak(int nthreads, double seconds);

/* The bf16 dot-product peak of `nthreads` threads in GFLOP/s (vdpbf16ps chains, 64 flops per
 * instruction), or 0 on a CPU without AVX512-BF16: the denominator of bf16 utilisation. */
double ccoe_measure_bf16_peak(int nthreads, double seconds);

/* Vector width the peak measurement used ("avx512", "avx2", "scalar"). */
const char *ccoe_simd_name(void);

#endif
