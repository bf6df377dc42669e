/* gemm_bf16.h - internal interface between gemm.c and the bf16 kernels of gemm_bf16.c (the GEMM
 * layer only; everyone else calls the ccoe_gemm_* functions of gemm.h). */
#ifndef CCOE_GEMM_BF16_H
#define CCOE_GEMM_BF16_H

#include "gemm.h"

/* Whether this CPU (and OS) runs AVX-512 F/BW/VL/DQ and AVX512-BF16 instructions. */
int gemm_bf16_cpu_ok(void);

/* Packing scratch for one slot per thread of a team of up to max(nthreads, OpenMP's maximum,
 * the processor count) threads, plus one shared slot; NULL when out of memory. */
ccoe_gemm_bf16 *gemm_bf16_new(int nthreads);
void gemm_bf16_free(ccoe_gemm_bf16 *s);

/* The ccoe_gemm_run contract with bf16-rounded operands, on up to nthreads threads (1: the
 * calling thread only, which may be one of a parallel region's). Only after gemm_bf16_cpu_ok. */
void gemm_bf16_run(const ccoe_gemm_bf16 *s, int nthreads, int transa, int transb, int M, int N,
                   int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc);

#endif
