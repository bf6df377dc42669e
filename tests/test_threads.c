/* test_threads.c - run.threads = auto (src/threads.h): the policy fed simulated machines (quiet,
 * a busy neighbour from the start, one that comes and goes, noisy step times, more cores), and
 * the reductions whose result must not depend on the thread count (the gradient norm; the GEMM
 * and the layers' own splits) since auto changes the count during a run.
 * The end-to-end run (auto switching under a forced slowdown gives the fixed runs' losses and
 * weights) is tests/cli/threads.sh. */
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "kernels.h"
#include "optim.h"
#include "threads.h"

/* A simulated machine: the step time with n threads at step i. */
typedef double (*machine_fn)(int n, long i, void *ctx);

typedef struct sim {
    double total;  /* seconds the policy's choices took */
    double oracle; /* seconds the best count of each step would have taken */
    long steps_on[8];
} sim;

/* Runs `steps` steps under the policy; returns the fraction of the best-count speed reached. */
static double simulate(ccoe_threads_auto *a, int max, long steps, machine_fn f, void *ctx,
                       sim *s)
{
    memset(s, 0, sizeof *s);
    ccoe_threads_auto_init(a, max);
    for (long i = 0; i < steps; i++) {
        int n = a->cur;
        assert_true(n >= 1 && n <= max);
        double t = f(n, i, ctx);
        double best = t;
        for (int k = 1; k <= max; k++)
            best = f(k, i, ctx) < best ? f(k, i, ctx) : best;
        s->total += t;
        s->oracle += best;
        s->steps_on[n < 8 ? n : 7]++;
        ccoe_threads_auto_step(a, t);
    }
    return s->oracle / s->total;
}

/* Deterministic noise in [-amp, amp] from the step index. */
static double noise(long i, double amp)
{
    uint64_t x = (uint64_t)i * 0x9E3779B97F4A7C15ULL;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 32;
    return amp * (2.0 * (double)(x % 1000003) / 1000003.0 - 1.0);
}

/* 2 cores, quiet: 2 threads take 0.135 s, 1 thread 0.26 s (the small bench shape's ratio),
 * with +-5 % noise; the first step of each count pays a one-time cost. */
static double quiet2(int n, long i, void *ctx)
{
    (void)ctx;
    double t = n >= 2 ? 0.135 : 0.26;
    return t * (1.0 + noise(i, 0.05)) + (i == 0 ? 0.5 : 0.0);
}

/* 2 cores beside one busy process: 2 threads collapse (0.52 s), 1 thread keeps 0.27 s. */
static double busy2(int n, long i, void *ctx)
{
    (void)ctx;
    return (n >= 2 ? 0.52 : 0.27) * (1.0 + noise(i, 0.1));
}

/* Quiet, then a neighbour for steps [from, to), then quiet again. */
typedef struct window {
    long from, to;
} window;

static double comes_and_goes(int n, long i, void *ctx)
{
    const window *w = ctx;
    return i >= w->from && i < w->to ? busy2(n, i, NULL) : quiet2(n, i + 1, NULL);
}

static void test_quiet_stays_on_all_threads(void **state)
{
    (void)state;
    ccoe_threads_auto a;
    sim s;
    double eff = simulate(&a, 2, 2000, quiet2, NULL, &s);
    assert_int_equal(a.cur, 2);
    assert_int_equal(a.probes, 1); /* the start-up probe, never again: the speed did not jump */
    assert_int_equal(a.switches, 0);
    /* only the probe's warm-up and timed steps ran on 1 thread */
    assert_int_equal(s.steps_on[1], CCOE_THREADS_WARM_STEPS + CCOE_THREADS_PROBE_STEPS);
    assert_true(eff > 0.99);
}

static void test_busy_neighbour_takes_one_thread(void **state)
{
    (void)state;
    ccoe_threads_auto a;
    sim s;
    double eff = simulate(&a, 2, 2000, busy2, NULL, &s); /* about 9 minutes of steps */
    assert_int_equal(a.cur, 1);
    assert_int_equal(a.switches, 1);
    /* the later probes of 2 threads back off: 10, 20, 40, 80, 160, 160 ... seconds apart */
    assert_true(a.probes >= 4 && a.probes <= 8);
    assert_true(a.interval == CCOE_THREADS_INTERVAL_MAX_S);
    assert_true(eff >= 0.95);
    assert_true(s.steps_on[1] > 9 * s.steps_on[2]);
}

static void test_neighbour_comes_and_goes(void **state)
{
    (void)state;
    ccoe_threads_auto a;
    sim s;
    window w = {300, 800};
    ccoe_threads_auto_init(&a, 2);
    double eff = simulate(&a, 2, 2000, comes_and_goes, &w, &s);
    assert_true(eff >= 0.9);
    /* track it step by step: on 1 within a few steps of the neighbour's arrival, back on 2
     * within one probe interval of its departure */
    ccoe_threads_auto_init(&a, 2);
    long first_one = -1, back_on_two = -1;
    for (long i = 0; i < 2000; i++) {
        ccoe_threads_auto_step(&a, comes_and_goes(a.cur, i, &w));
        if (i >= w.from && first_one < 0 && a.cur == 1 && !a.probing)
            first_one = i;
        if (i >= w.to && back_on_two < 0 && a.cur == 2 && !a.probing)
            back_on_two = i;
    }
    assert_true(first_one >= w.from && first_one <= w.from + 8);
    /* the interval may have grown to 80 s while the neighbour stayed (500 steps of 0.27 s) */
    assert_true(back_on_two >= w.to && back_on_two <= w.to + (long)(160.0 / 0.135) + 8);
    assert_int_equal(a.cur, 2);
}

/* 4 cores, one busy neighbour: 3 threads are best (4 wait for the descheduled one). */
static double busy4(int n, long i, void *ctx)
{
    (void)ctx;
    double t = n == 4 ? 0.6 : 0.3 / (double)n;
    return t * (1.0 + noise(i, 0.05));
}

static void test_more_cores(void **state)
{
    (void)state;
    ccoe_threads_auto a;
    ccoe_threads_auto_init(&a, 4);
    assert_int_equal(a.n_cand, 3);
    assert_int_equal(a.cand[0], 4);
    assert_int_equal(a.cand[1], 3);
    assert_int_equal(a.cand[2], 1);
    sim s;
    double eff = simulate(&a, 4, 3000, busy4, NULL, &s);
    assert_int_equal(a.cur, 3);
    assert_true(eff >= 0.9);
    /* one CPU: nothing to decide, ever */
    ccoe_threads_auto_init(&a, 1);
    assert_int_equal(a.n_cand, 1);
    for (int i = 0; i < 100; i++)
        assert_int_equal(ccoe_threads_auto_step(&a, 1.0 + i), 1);
    assert_int_equal(a.probes, 0);
    ccoe_threads_auto_init(&a, 0); /* below 1 means 1 */
    assert_int_equal(a.cur, 1);
    /* a clock that did not move, or garbage, is a very fast step, never a crash or NaN */
    ccoe_threads_auto_init(&a, 2);
    for (int i = 0; i < 50; i++)
        ccoe_threads_auto_step(&a, i % 3 == 0 ? 0.0 : i % 3 == 1 ? -1.0 : NAN);
    assert_true(a.cur == 1 || a.cur == 2);
    assert_true(a.ref >= 0.0 && isfinite(a.ref));
}

/* The margin: a smaller count must be clearly faster, so a tie keeps all threads. */
static void test_ties_keep_more_threads(void **state)
{
    (void)state;
    ccoe_threads_auto a;
    ccoe_threads_auto_init(&a, 2);
    const int probe = CCOE_THREADS_WARM_STEPS + CCOE_THREADS_PROBE_STEPS;
    for (int i = 0; i < probe; i++)
        ccoe_threads_auto_step(&a, 1.0); /* 2 threads */
    assert_int_equal(a.cur, 1);
    for (int i = 0; i < probe; i++)
        ccoe_threads_auto_step(&a, 1.0 - 0.5 * CCOE_THREADS_MARGIN); /* 1 thread, a bit faster */
    assert_false(a.probing);
    assert_int_equal(a.cur, 2);
    assert_true(a.ref == 1.0);
}

/* The gradient norm with 1, 2, 3 and 5 threads: the same bits (it is split into a fixed number
 * of parts, whatever the thread count). */
static void test_grad_norm_thread_independent(void **state)
{
    (void)state;
    const size_t n = 1000003; /* above the serial threshold, not a multiple of anything */
    float *g = malloc(n * sizeof *g);
    assert_non_null(g);
    uint64_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        g[i] = (float)((double)(x >> 40) / (double)(1ULL << 24) - 0.5) * (i % 7 == 0 ? 30.0f : 1.0f);
    }
    const int counts[] = {1, 2, 3, 5};
    double first = 0.0, first_sub = 0.0;
    for (int k = 0; k < 4; k++) {
        omp_set_num_threads(counts[k]);
        double v = ccoe_grad_norm(g, 0, n), sub = ccoe_grad_norm(g, 17, n - 5);
        if (k == 0) {
            first = v;
            first_sub = sub;
        }
        assert_memory_equal(&v, &first, sizeof v);
        assert_memory_equal(&sub, &first_sub, sizeof sub);
    }
    /* and it is the norm (double reference) */
    double ref = 0.0;
    for (size_t i = 0; i < n; i++)
        ref += (double)g[i] * g[i];
    assert_true(fabs(first - sqrt(ref)) <= 1e-12 * sqrt(ref));
    omp_set_num_threads(2);
    free(g);
}

/* A layer pass and the GEMMs it calls, with the context switched between 2 and 1 threads by
 * ccoe_gemm_set_threads: bit-identical outputs and gradients (the splits are by output element,
 * the GEMM backends split C, never K). */
static void test_layers_thread_independent(void **state)
{
    (void)state;
    const int N = 256, IC = 192, OC = 320;
    float *inp = malloc((size_t)N * IC * sizeof(float)), *w = malloc((size_t)OC * IC * sizeof(float));
    float *b = malloc((size_t)OC * sizeof(float)), *dout = malloc((size_t)N * OC * sizeof(float));
    float *out[2], *dinp[2], *dw[2], *db[2], *ln[2], *dln[2], *lw = malloc(IC * sizeof(float));
    float *lb = malloc(IC * sizeof(float)), *mean = malloc(N * sizeof(float)),
          *rstd = malloc(N * sizeof(float)), *dlw[2], *dlb[2];
    assert_non_null(inp);
    assert_non_null(w);
    assert_non_null(b);
    assert_non_null(dout);
    assert_non_null(lw);
    assert_non_null(lb);
    assert_non_null(mean);
    assert_non_null(rstd);
    uint64_t x = 99;
#define FILL(p, cnt)                                                                              \
    for (size_t i_ = 0; i_ < (size_t)(cnt); i_++) {                                               \
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;                                  \
        (p)[i_] = (float)((double)(x >> 40) / (double)(1ULL << 24) - 0.5);                        \
    }
    FILL(inp, N * IC);
    FILL(w, OC * IC);
    FILL(b, OC);
    FILL(dout, N * OC);
    FILL(lw, IC);
    FILL(lb, IC);
    ccoe_error err;
    ccoe_gemm g;
    assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_AUTO, 2, &err), CCOE_OK);
    for (int r = 0; r < 2; r++) {
        ccoe_gemm_set_threads(&g, r == 0 ? 2 : 1);
        assert_int_equal(g.nthreads, r == 0 ? 2 : 1);
        out[r] = calloc((size_t)N * OC, sizeof(float));
        dinp[r] = calloc((size_t)N * IC, sizeof(float));
        dw[r] = calloc((size_t)OC * IC, sizeof(float));
        db[r] = calloc((size_t)OC, sizeof(float));
        ln[r] = calloc((size_t)N * IC, sizeof(float));
        dln[r] = calloc((size_t)N * IC, sizeof(float));
        dlw[r] = calloc(IC, sizeof(float));
        dlb[r] = calloc(IC, sizeof(float));
        assert_non_null(out[r]);
        assert_non_null(dinp[r]);
        assert_non_null(dw[r]);
        assert_non_null(db[r]);
        assert_non_null(ln[r]);
        assert_non_null(dln[r]);
        assert_non_null(dlw[r]);
        assert_non_null(dlb[r]);
        ccoe_layernorm_forward(ln[r], mean, rstd, inp, lw, lb, N, IC);
        ccoe_linear_forward(&g, out[r], ln[r], w, b, N, IC, OC);
        ccoe_linear_backward(&g, dinp[r], dw[r], db[r], dout, ln[r], w, N, IC, OC);
        ccoe_layernorm_backward(dln[r], dlw[r], dlb[r], dinp[r], inp, lw, mean, rstd, N, IC);
    }
    assert_memory_equal(out[0], out[1], (size_t)N * OC * sizeof(float));
    assert_memory_equal(dinp[0], dinp[1], (size_t)N * IC * sizeof(float));
    assert_memory_equal(dw[0], dw[1], (size_t)OC * IC * sizeof(float));
    assert_memory_equal(db[0], db[1], (size_t)OC * sizeof(float));
    assert_memory_equal(dln[0], dln[1], (size_t)N * IC * sizeof(float));
    assert_memory_equal(dlw[0], dlw[1], IC * sizeof(float));
    assert_memory_equal(dlb[0], dlb[1], IC * sizeof(float));
    for (int r = 0; r < 2; r++) {
        free(out[r]);
        free(dinp[r]);
        free(dw[r]);
        free(db[r]);
        free(ln[r]);
        free(dln[r]);
        free(dlw[r]);
        free(dlb[r]);
    }
    ccoe_gemm_set_threads(&g, 2);
    free(inp);
    free(w);
    free(b);
    free(dout);
    free(lw);
    free(lb);
    free(mean);
    free(rstd);
}

static void test_available(void **state)
{
    (void)state;
    int n = ccoe_threads_available();
    assert_true(n >= 1 && n <= 1 << 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quiet_stays_on_all_threads),
        cmocka_unit_test(test_busy_neighbour_takes_one_thread),
        cmocka_unit_test(test_neighbour_comes_and_goes),
        cmocka_unit_test(test_more_cores),
        cmocka_unit_test(test_ties_keep_more_threads),
        cmocka_unit_test(test_grad_norm_thread_independent),
        cmocka_unit_test(test_layers_thread_independent),
        cmocka_unit_test(test_available),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
