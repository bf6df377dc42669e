/* bench_gemm.c - GFLOP/s of the fp32 GEMM (ccoe_gemm_run, backend auto) against the bf16 GEMM
 * (ccoe_gemm_run_bf16) on the linear layers' shapes of `ccoe bench`'s three shapes, in all
 * three uses (forward inp W^T, backward dout W and dout^T inp).
 *
 * What it is: a micro-benchmark printing a table (best of several timed repetitions after a
 * warm-up, so that other load on the machine inflates the figures as little as possible). What
 * it is not: a test (tests/test_gemm_bf16.c checks the results). `--quick` runs each shape once:
 * the smoke test registered with CTest.
 *
 * Usage: bench_gemm [--quick] [--threads N] [--reps R]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "perf.h"

typedef struct shape {
    const char *what;
    int M, N, K; /* tokens, out, in of the linear layer */
} shape;

static const shape k_shapes[] = {
    {"small qkv", 1024, 768, 256},       {"small fc", 1024, 1024, 256},
    {"small fcproj", 1024, 256, 1024},   {"tiny-wide qkv", 1024, 1536, 512},
    {"tiny-wide fc", 1024, 2048, 512},   {"tiny-wide fcproj", 1024, 512, 2048},
    {"124m qkv", 256, 2304, 768},        {"124m fc", 256, 3072, 768},
    {"124m fcproj", 256, 768, 3072},     {"124m lm head", 256, 50304, 768},
};

static float *fnew(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        fprintf(stderr, "bench_gemm: out of memory (%zu floats)\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = (float)((i * 7 + 3) % 13) / 13.0f - 0.5f;
    return p;
}

/* Best seconds per call of one use (0 forward, 1 dinp, 2 dW) of shape s. */
static double time_use(const ccoe_gemm *g, int bf16, int use, const shape *s, int reps,
                       float *x, float *w, float *y)
{
    const int M = s->M, N = s->N, K = s->K;
    double best = 1e30;
    for (int r = -1; r < reps; r++) {
        double t0 = ccoe_now();
        void (*run)(const ccoe_gemm *, int, int, int, int, int, float, const float *, int,
                    const float *, int, float, float *, int) =
            bf16 ? ccoe_gemm_run_bf16 : ccoe_gemm_run;
        if (use == 0) /* y(M,N) = x(M,K) W(N,K)^T */
            run(g, 0, 1, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N);
        else if (use == 1) /* dx(M,K) = dy(M,N) W(N,K) */
            run(g, 0, 0, M, K, N, 1.0f, y, N, w, K, 0.0f, x, K);
        else /* dW(N,K) += dy(M,N)^T x(M,K) */
            run(g, 1, 0, N, K, M, 1.0f, y, N, x, K, 1.0f, w, K);
        double t = ccoe_now() - t0;
        if (r >= 0 && t < best)
            best = t;
    }
    return best;
}

int main(int argc, char **argv)
{
    int threads = 2, reps = 5, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_gemm [--quick] [--threads N] [--reps R]\n");
            return 2;
        }
    }
    if (quick)
        reps = 1;
    ccoe_gemm g;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(&g, CCOE_GEMM_AUTO, threads, &err) != CCOE_OK) {
        fprintf(stderr, "bench_gemm: %s\n", err.msg);
        return 1;
    }
    const int bf16 = ccoe_gemm_set_precision(&g, CCOE_PRECISION_BF16, &err) == CCOE_OK;
    if (!bf16)
        printf("no bf16 GEMM here (%s): fp32 only\n", err.msg);
    printf("threads %d, fp32 %s, bf16 avx512_bf16 micro-kernel\n", threads, g.kernel_set);
    printf("| shape | M N K | use | fp32 GFLOP/s | bf16 GFLOP/s | bf16/fp32 |\n"
           "|---|---|---|---:|---:|---:|\n");
    static const char *uses[3] = {"x W^T", "dy W", "dy^T x"};
    for (size_t i = 0; i < sizeof k_shapes / sizeof k_shapes[0]; i++) {
        const shape *s = &k_shapes[i];
        if (quick && i > 0)
            break;
        float *x = fnew((size_t)s->M * s->K), *w = fnew((size_t)s->N * s->K);
        float *y = fnew((size_t)s->M * s->N);
        for (int use = 0; use < 3; use++) {
            const double fl = 2.0 * s->M * s->N * s->K;
            double tf = time_use(&g, 0, use, s, reps, x, w, y);
            double tb = bf16 ? time_use(&g, 1, use, s, reps, x, w, y) : 0.0;
            printf("| %s | %d %d %d | %s | %.1f | %.1f | %.2f |\n", s->what, s->M, s->N, s->K,
                   uses[use], fl / tf * 1e-9, bf16 ? fl / tb * 1e-9 : 0.0,
                   bf16 ? tf / tb : 0.0);
        }
        free(x);
        free(w);
        free(y);
    }
    ccoe_gemm_free(&g);
    return 0;
}
