/* bench.h - training throughput benchmark on fixed shapes (random tokens, no data set):
 * tokens/s and model-FLOP utilisation against the measured sgemm rate and FP32 FMA peak.
 * A measurement tool: nothing here asserts speed. */
#ifndef CCOE_BENCH_H
#define CCOE_BENCH_H

#include <stdio.h>

#include "status.h"

typedef struct ccoe_bench_opts {
    const char *shape; /* "small", "tiny-wide", "gpt2-124m", "qwen2-0.5b-l4" or "all" */
    int steps;         /* measured steps (after 2 warm-up steps) */
    int threads;       /* 0 = auto (run.threads = auto, threads.h) */
    const char *gemm;  /* backend name */
    const char *ffn;   /* "gelu" or "swiglu" */
    const char *moe;   /* "none", or a gate: every block becomes E=8, k=2 experts of hidden F/2
                        * (the same active FLOPs per token as the dense FFN) */
    const char *ccoe;  /* "none", or a CCoE form (tail, prefix, ffn): one expert of L/2 layers
                        * serves every sequence; measures full training of that model, then
                        * isolated training of the expert (base frozen) */
    int profile;       /* nonzero: after each shape, a table of its GEMM calls by shape (calls
                        * and time per step, GFLOP/s, share of the step) */
    const char *precision; /* run.precision of the measured runs: "fp32" (NULL too), "bf16", or
                            * "both": each shape in fp32, then in bf16, then their ratio */
} ccoe_bench_opts;

ccoe_status ccoe_bench_run(const ccoe_bench_opts *o, FILE *out, ccoe_error *err);

#endif
