/* bench_kernels.c - time per call of the LLaMA/Qwen2-style kernels (RoPE, grouped-query
 * attention) against the multi-head attention they generalise, at Qwen2-0.5B's head shape.
 *
 * What it is: a micro-benchmark printing a table (best of several timed repetitions after a
 * warm-up, so that other load on the machine inflates the figures as little as possible). What
 * it is not: a test of speed (nothing is asserted about time) or of correctness
 * (tests/test_rope_gqa.c). `--quick` runs every kernel once at a small shape: the smoke test
 * registered with CTest, which keeps this file compiling and running.
 *
 * Usage: bench_kernels [--quick] [--threads N] [--batch B] [--reps R] [--seq T]
 * (--seq T: only that sequence length instead of 128 and 512)
 * Attention FLOPs are the causal count of the two forward products, 4 B H hd T(T+1)/2, and 2.5
 * times that for the backward (five products of the same size); decode counts 4 H hd (pos + 1)
 * per sequence. RoPE moves memory rather than computing: it is reported in GB/s of the q and k
 * columns read and written (in place).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gemm.h"
#include "kernels.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *fnew(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) {
        fprintf(stderr, "bench_kernels: out of memory (%zu floats)\n", n);
        exit(1);
    }
    return p;
}

static void fill(float *x, size_t n, unsigned s)
{
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((s >> 8) / 16777216.0 * 2.0 - 1.0);
    }
}

typedef struct bench_args {
    int reps, B, H, Hkv, hd, T;
    const ccoe_gemm *g;
    float *qkv, *out, *lse, *dout, *dqkv, *scratch, *cs, *sn, *kv, *q, *ws;
    int *rows, *pos;
} bench_args;

enum { K_ROPE_F, K_ROPE_B, K_FWD, K_BWD, K_DEC };

static void run_kernel(const bench_args *a, int kind)
{
    const int W = (a->H + 2 * a->Hkv) * a->hd, nh = a->H + a->Hkv;
    switch (kind) {
    case K_ROPE_F:
        ccoe_rope_forward(a->qkv, a->qkv, a->cs, a->sn, a->B, a->T, 0, nh, a->hd, W);
        break;
    case K_ROPE_B:
        ccoe_rope_backward(a->dqkv, a->dqkv, a->cs, a->sn, a->B, a->T, 0, nh, a->hd, W);
        break;
    case K_FWD:
        ccoe_gqa_forward(a->g, a->out, a->lse, a->qkv, a->scratch, a->B, a->T, a->H, a->Hkv,
                         a->hd);
        break;
    case K_BWD:
        ccoe_gqa_backward(a->g, a->dqkv, a->dout, a->qkv, a->out, a->lse, a->scratch, a->B, a->T,
                          a->H, a->Hkv, a->hd);
        break;
    default:
        ccoe_gqa_decode(a->out, a->q, a->kv, (size_t)a->T * 2 * a->Hkv * a->hd, a->rows, a->pos,
                        a->ws, a->B, a->H, a->Hkv, a->hd, a->g->nthreads);
        break;
    }
}

/* Best seconds per call over reps timed calls (after one warm-up call). */
static double best_time(const bench_args *a, int kind)
{
    run_kernel(a, kind);
    double best = INFINITY;
    for (int r = 0; r < a->reps; r++) {
        double t0 = now();
        run_kernel(a, kind);
        double dt = now() - t0;
        best = dt < best ? dt : best;
    }
    return best;
}

/* One shape: rows of the table for RoPE (forward, backward; in place on q and k), attention
 * forward, backward and a decode step at position T - 1 (Hkv == H: multi-head attention, the
 * same code as ccoe_attention_*). */
static void bench_shape(const ccoe_gemm *g, int reps, int B, int T, int H, int Hkv, int hd)
{
    const int W = (H + 2 * Hkv) * hd, C = H * hd, KV = Hkv * hd;
    size_t nq = (size_t)B * T * W, no = (size_t)B * T * C;
    bench_args a = {reps, B, H, Hkv, hd, T, g, fnew(nq), fnew(no), fnew((size_t)B * H * T),
                    fnew(no), fnew(nq), fnew(ccoe_gqa_scratch_floats(B, T, H, Hkv, hd,
                                                                     g->nthreads)),
                    fnew((size_t)T * hd / 2), fnew((size_t)T * hd / 2),
                    fnew((size_t)B * T * 2 * KV), fnew((size_t)B * W),
                    fnew((size_t)g->nthreads * T), NULL, NULL};
    a.rows = malloc((size_t)B * sizeof(int));
    a.pos = malloc((size_t)B * sizeof(int));
    if (!a.rows || !a.pos) {
        fprintf(stderr, "bench_kernels: out of memory\n");
        exit(1);
    }
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_rope_table_init(a.cs, a.sn, T, hd, 1e6, &err) != CCOE_OK) {
        fprintf(stderr, "bench_kernels: %s\n", err.msg);
        exit(1);
    }
    fill(a.qkv, nq, 1);
    fill(a.dout, no, 2);
    fill(a.kv, (size_t)B * T * 2 * KV, 3);
    fill(a.q, (size_t)B * W, 4);
    for (int b = 0; b < B; b++)
        a.rows[b] = b, a.pos[b] = T - 1;
    /* a forward first: the backward needs its out and lse */
    ccoe_gqa_forward(g, a.out, a.lse, a.qkv, a.scratch, B, T, H, Hkv, hd);
    double att = 4.0 * B * H * hd * (double)T * (T + 1) / 2.0;
    double rope_bytes = 2.0 * B * T * (H + Hkv) * hd * sizeof(float);
    const char *label = Hkv == H ? "MHA" : "GQA";
    double t;
    {
        t = best_time(&a, K_ROPE_F);
        printf("| rope forward (q,k) | %s H%d/%d | %d | %4d | %9.1f | %7.2f GB/s |\n", label, H,
               Hkv, B, T, 1e6 * t, rope_bytes / t * 1e-9);
        t = best_time(&a, K_ROPE_B);
        printf("| rope backward (q,k) | %s H%d/%d | %d | %4d | %9.1f | %7.2f GB/s |\n", label, H,
               Hkv, B, T, 1e6 * t, rope_bytes / t * 1e-9);
    }
    t = best_time(&a, K_FWD);
    printf("| attention forward | %s H%d/%d | %d | %4d | %9.1f | %7.2f GFLOP/s |\n", label, H, Hkv,
           B, T, 1e6 * t, att / t * 1e-9);
    memset(a.dqkv, 0, nq * sizeof(float));
    t = best_time(&a, K_BWD);
    printf("| attention backward | %s H%d/%d | %d | %4d | %9.1f | %7.2f GFLOP/s |\n", label, H,
           Hkv, B, T, 1e6 * t, 2.5 * att / t * 1e-9);
    t = best_time(&a, K_DEC);
    printf("| decode step at pos %d | %s H%d/%d | %d | %4d | %9.1f | %7.2f GFLOP/s |\n", T - 1,
           label, H, Hkv, B, T, 1e6 * t, 4.0 * B * H * hd * (double)T / t * 1e-9);
    fflush(stdout);
    float *fl[] = {a.qkv, a.out, a.lse, a.dout, a.dqkv, a.scratch, a.cs, a.sn, a.kv, a.q, a.ws};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    free(a.rows);
    free(a.pos);
}

int main(int argc, char **argv)
{
    int quick = 0, threads = 2, B = 4, reps = 20, seq = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq") && i + 1 < argc)
            seq = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_kernels [--quick] [--threads N] [--batch B] [--reps R] "
                            "[--seq T]\n  (unknown argument '%s')\n", argv[i]);
            return 2;
        }
    }
    if (threads < 1 || B < 1 || reps < 1 || seq < 0) {
        fprintf(stderr, "bench_kernels: --threads, --batch, --reps and --seq must be >= 1\n");
        return 2;
    }
    ccoe_gemm g;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(&g, CCOE_GEMM_AUTO, threads, &err) != CCOE_OK) {
        fprintf(stderr, "bench_kernels: %s\n", err.msg);
        return 1;
    }
    printf("kernels: %s, %d threads, best of %d calls\n\n", g.kernel_set, threads,
           quick ? 1 : reps);
    printf("| kernel | heads (q/kv) | B | T | us/call | rate |\n|---|---|---|---|---|---|\n");
    if (quick) {
        bench_shape(&g, 1, 2, 37, 14, 2, 64);
        bench_shape(&g, 1, 2, 37, 14, 14, 64);
        return 0;
    }
    const int Ts[] = {128, 512, seq};
    for (size_t i = seq ? 2 : 0; i < (seq ? 3 : 2); i++) {
        bench_shape(&g, reps, B, Ts[i], 14, 2, 64);  /* Qwen2-0.5B: 14 query heads, 2 kv heads */
        bench_shape(&g, reps, B, Ts[i], 14, 14, 64); /* the same width as multi-head attention */
    }
    return 0;
}
