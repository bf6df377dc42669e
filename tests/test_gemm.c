/* test_gemm.c - every GEMM backend against a double-precision naive product.
 *
 * Covers ccoe_gemm_ref and the ref/blis/xsmm/auto contexts through both the threaded and the
 * serial entry points: all four transpose combinations, odd and degenerate shapes, alpha/beta
 * variants (beta = 0 over NaN garbage), strided sub-matrix views whose surroundings must stay
 * untouched, K = 0, the serial entry inside an OpenMP parallel region, the kernel set BLIS
 * really runs (the slow reference fallback on AVX-512 CPUs is a bug), a user's BLIS_ARCH_TYPE
 * (respected when valid, an error instead of a BLIS abort when not), the per-shape call profile,
 * and the parse/name API.
 * Speed is not asserted here (see ccoe_gemm_measure_gflops).
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/wait.h>
#include <unistd.h>

#include <omp.h>

#include "gemm.h"
#include "perf.h"
#include "testutil.h"

#define SENTINEL 12345.0f

/* Whether BLIS_ARCH_TYPE was set before this process touched it (ccoe_gemm_init may set it). */
static int user_set_blis_arch;

/* BLIS reads BLIS_ARCH_TYPE once per process, so the user-value cases run in forked children
 * (before this process initialises anything); these hold their exit codes (0 = as expected). */
static int child_bad_arch_rc = -1, child_user_arch_rc = -1, child_bad_sup_rc = -1;
static int child_blis_sup_rc = -1;

enum { NCTX = 4 };
static ccoe_gemm ctx[NCTX]; /* ref, blis, xsmm, auto; all with 2 threads */

static int setup_contexts(void **state)
{
    (void)state;
    static const ccoe_gemm_backend bk[NCTX] = {CCOE_GEMM_REF, CCOE_GEMM_BLIS, CCOE_GEMM_XSMM,
                                               CCOE_GEMM_AUTO};
    for (int i = 0; i < NCTX; i++) {
        ccoe_error err;
        ccoe_error_clear(&err);
        if (ccoe_gemm_init(&ctx[i], bk[i], 2, &err) != CCOE_OK) {
            fprintf(stderr, "ccoe_gemm_init(%s): %s\n", ccoe_gemm_backend_name(bk[i]), err.msg);
            return -1;
        }
    }
    return 0;
}

/* One problem: operands with padded leading dimensions, the original C, and the oracle. */
typedef struct gcase {
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    float *A, *B, *C0; /* stored A, stored B, C before the call (rows x ldc, padded) */
    size_t na, nb, nc;
    double *want;  /* (M, N) */
    double *bound; /* (M, N) error bound per element */
} gcase;

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    assert_non_null(p);
    return p;
}

static void case_make(gcase *c, int ta, int tb, int M, int N, int K, float alpha, float beta,
                      int pad, uint64_t seed)
{
    memset(c, 0, sizeof *c);
    c->ta = ta, c->tb = tb, c->M = M, c->N = N, c->K = K, c->alpha = alpha, c->beta = beta;
    int arows = ta ? K : M, acols = ta ? M : K;
    int brows = tb ? N : K, bcols = tb ? K : N;
    c->lda = acols + pad;
    c->ldb = bcols + pad;
    c->ldc = N + pad;
    c->na = (size_t)arows * c->lda;
    c->nb = (size_t)brows * c->ldb;
    c->nc = (size_t)M * c->ldc + pad; /* a little past the last row too */
    c->A = xmalloc(c->na * sizeof(float));
    c->B = xmalloc(c->nb * sizeof(float));
    c->C0 = xmalloc(c->nc * sizeof(float));
    tu_fill_uniform(c->A, c->na, seed, 1.0f);
    tu_fill_uniform(c->B, c->nb, seed + 1, 1.0f);
    for (size_t i = 0; i < c->nc; i++)
        c->C0[i] = SENTINEL;
    float *cfill = xmalloc((size_t)M * N * sizeof(float) + 1);
    tu_fill_uniform(cfill, (size_t)M * N, seed + 2, 1.0f);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            c->C0[(size_t)i * c->ldc + j] = beta == 0.0f ? NAN : cfill[(size_t)i * N + j];
    free(cfill);

    /* Oracle in double: want = alpha * sum_p op(A)[i][p] op(B)[p][j] + beta * C0. */
    c->want = xmalloc((size_t)M * N * sizeof(double) + 1);
    c->bound = xmalloc((size_t)M * N * sizeof(double) + 1);
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double s = 0.0, sabs = 0.0;
            for (int p = 0; p < K; p++) {
                double a = ta ? c->A[(size_t)p * c->lda + i] : c->A[(size_t)i * c->lda + p];
                double b = tb ? c->B[(size_t)j * c->ldb + p] : c->B[(size_t)p * c->ldb + j];
                s += a * b;
                sabs += fabs(a * b);
            }
            double c0 = beta == 0.0f ? 0.0 : (double)c->C0[(size_t)i * c->ldc + j];
            c->want[(size_t)i * N + j] = (double)alpha * s + (double)beta * c0;
            /* float summation of K products, then the alpha/beta update: error <= gamma_(K+2)
             * times the absolute values; twice that leaves room for any summation order. */
            c->bound[(size_t)i * N + j] =
                2.0 * (K + 2) * (double)FLT_EPSILON *
                    (fabs((double)alpha) * sabs + fabs((double)beta * c0)) +
                1e-30;
        }
    }
}

static void case_free(gcase *c)
{
    free(c->A);
    free(c->B);
    free(c->C0);
    free(c->want);
    free(c->bound);
}

/* Checks C against the oracle inside the view and the sentinel outside; prints the first bad
 * element. Returns 1 if fine. */
static int case_check(const gcase *c, const float *C, const char *who)
{
    for (size_t idx = 0; idx < c->nc; idx++) {
        size_t i = idx / (size_t)c->ldc, j = idx % (size_t)c->ldc;
        int inside = i < (size_t)c->M && j < (size_t)c->N;
        if (!inside) {
            if (C[idx] != SENTINEL) {
                fprintf(stderr, "%s: ta=%d tb=%d M=%d N=%d K=%d: wrote outside the view at "
                        "row %zu col %zu\n", who, c->ta, c->tb, c->M, c->N, c->K, i, j);
                return 0;
            }
            continue;
        }
        double want = c->want[i * c->N + j], bound = c->bound[i * c->N + j];
        double got = C[idx];
        if (!(fabs(got - want) <= bound)) {
            fprintf(stderr, "%s: ta=%d tb=%d M=%d N=%d K=%d alpha=%g beta=%g lda=%d ldb=%d "
                    "ldc=%d: C[%zu][%zu] = %.9g, want %.9g (bound %.3g)\n", who, c->ta, c->tb,
                    c->M, c->N, c->K, (double)c->alpha, (double)c->beta, c->lda, c->ldb, c->ldc,
                    i, j, got, want, bound);
            return 0;
        }
    }
    return 1;
}

/* Runs the case through ccoe_gemm_ref and every context (threaded and serial entry). */
static int case_run_all(const gcase *c)
{
    float *C = xmalloc(c->nc * sizeof(float));
    int ok = 1;
    for (int v = 0; v < 1 + 2 * NCTX; v++) {
        memcpy(C, c->C0, c->nc * sizeof(float));
        char who[64];
        if (v == 0) {
            snprintf(who, sizeof who, "ccoe_gemm_ref");
            ccoe_gemm_ref(c->ta, c->tb, c->M, c->N, c->K, c->alpha, c->A, c->lda, c->B, c->ldb,
                          c->beta, C, c->ldc);
        } else {
            const ccoe_gemm *g = &ctx[(v - 1) / 2];
            int serial = (v - 1) % 2;
            snprintf(who, sizeof who, "%s/%s", ccoe_gemm_backend_name(g->backend),
                     serial ? "serial" : "run");
            (serial ? ccoe_gemm_run_serial : ccoe_gemm_run)(g, c->ta, c->tb, c->M, c->N, c->K,
                                                             c->alpha, c->A, c->lda, c->B,
                                                             c->ldb, c->beta, C, c->ldc);
        }
        ok &= case_check(c, C, who);
    }
    free(C);
    return ok;
}

static int check_shape(int M, int N, int K, float alpha, float beta, int pad, uint64_t seed)
{
    int ok = 1;
    for (int t = 0; t < 4; t++) {
        gcase c;
        case_make(&c, t & 1, t >> 1, M, N, K, alpha, beta, pad, seed + 17u * t);
        ok &= case_run_all(&c);
        case_free(&c);
    }
    return ok;
}

static const int small_shapes[][3] = {
    {1, 1, 1},   {1, 17, 1},   {1, 1, 33},    {5, 1, 1},   {7, 13, 5},  {33, 65, 17},
    {127, 1, 255}, {1, 129, 64}, {64, 64, 64}, {17, 3, 130}, {101, 96, 64}, {48, 80, 1},
};
static const float alpha_beta[][2] = {{1.0f, 0.0f}, {1.0f, 1.0f}, {0.5f, -1.5f},
                                      {-2.0f, 0.0f}, {1.0f, 0.25f}, {0.0f, 0.5f}};

static void test_small_shapes(void **state)
{
    (void)state;
    int ok = 1;
    uint64_t seed = 100;
    for (size_t s = 0; s < sizeof small_shapes / sizeof small_shapes[0]; s++)
        for (size_t ab = 0; ab < sizeof alpha_beta / sizeof alpha_beta[0]; ab++)
            for (int pad = 0; pad <= 3; pad += 3)
                ok &= check_shape(small_shapes[s][0], small_shapes[s][1], small_shapes[s][2],
                                  alpha_beta[ab][0], alpha_beta[ab][1], pad, seed++);
    assert_true(ok);
}

/* Shapes large enough for BLIS's blocked path, the threaded libxsmm row split, and both sides of
 * the AUTO threshold and of BLIS's small-problem ("sup") policy: 16x1030x1100 is large but thin
 * (sup kept), 200x130x170 small (sup kept), the others take the packed path. */
static void test_large_shapes(void **state)
{
    (void)state;
    static const int shapes[][3] = {{256, 768, 256}, {128, 1100, 300}, {200, 130, 170},
                                    {16, 1030, 1100}};
    int ok = 1;
    uint64_t seed = 5000;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        ok &= check_shape(shapes[s][0], shapes[s][1], shapes[s][2], 1.0f, 0.0f, 5, seed++);
        ok &= check_shape(shapes[s][0], shapes[s][1], shapes[s][2], 1.0f, 1.0f, 0, seed++);
    }
    ok &= check_shape(256, 768, 256, 0.125f, -1.0f, 0, seed++);
    assert_true(ok);
}

/* K = 0: C = beta * C, A and B never read (NULL here); M or N = 0: C untouched. */
static void test_degenerate(void **state)
{
    (void)state;
    enum { M = 5, N = 7, LDC = 9 };
    float C[M * LDC];
    for (int v = 0; v < 1 + NCTX; v++) {
        for (int which = 0; which < 3; which++) {
            float beta = which == 0 ? 0.0f : which == 1 ? 0.5f : 1.0f;
            for (int i = 0; i < M * LDC; i++)
                C[i] = (i % LDC < N) ? (beta == 0.0f ? NAN : (float)i) : SENTINEL;
            if (v == 0)
                ccoe_gemm_ref(0, 0, M, N, 0, 1.0f, NULL, 1, NULL, N, beta, C, LDC);
            else
                ccoe_gemm_run(&ctx[v - 1], 0, 1, M, N, 0, 1.0f, NULL, 1, NULL, 1, beta, C, LDC);
            for (int i = 0; i < M * LDC; i++) {
                float want = (i % LDC < N) ? (beta == 0.0f ? 0.0f : beta * (float)i) : SENTINEL;
                assert_true(C[i] == want);
            }
        }
        for (int i = 0; i < M * LDC; i++)
            C[i] = SENTINEL;
        float A[4] = {1, 2, 3, 4};
        if (v == 0) {
            ccoe_gemm_ref(0, 0, 0, N, 2, 1.0f, A, 2, A, N, 0.0f, C, LDC);
            ccoe_gemm_ref(0, 0, M, 0, 2, 1.0f, A, 2, A, 1, 0.0f, C, LDC);
        } else {
            ccoe_gemm_run(&ctx[v - 1], 0, 0, 0, N, 2, 1.0f, A, 2, A, N, 0.0f, C, LDC);
            ccoe_gemm_run_serial(&ctx[v - 1], 0, 0, M, 0, 2, 1.0f, A, 2, A, 1, 0.0f, C, LDC);
        }
        for (int i = 0; i < M * LDC; i++)
            assert_true(C[i] == SENTINEL);
    }
}

/* The serial entry from two threads of a parallel region, each on its own output, for shapes
 * that take the libxsmm path and ones that fall back to BLIS (transposed B, alpha != 1). */
static void test_serial_in_parallel_region(void **state)
{
    (void)state;
    enum { NC = 4 };
    static const int shapes[NC][3] = {{64, 48, 32}, {33, 65, 17}, {150, 140, 130}, {7, 300, 90}};
    gcase cs[NC];
    for (int i = 0; i < NC; i++)
        case_make(&cs[i], i & 1, (i >> 1) & 1, shapes[i][0], shapes[i][1], shapes[i][2],
                  i == 3 ? 0.75f : 1.0f, i == 2 ? 1.0f : 0.0f, 2, 900 + (uint64_t)i);
    for (int v = 0; v < NCTX; v++) {
        int ok[2] = {0, 0};
        int nthreads = 0;
#pragma omp parallel num_threads(2)
        {
            int t = omp_get_thread_num();
#pragma omp single
            nthreads = omp_get_num_threads();
            float *C[NC];
            int good = 1;
            for (int rep = 0; rep < 3; rep++) {
                for (int i = 0; i < NC; i++) {
                    /* thread t works on cases t, t+2 first, then the others */
                    const gcase *c = &cs[(i + t) % NC];
                    C[i] = malloc(c->nc * sizeof(float));
                    if (!C[i]) {
                        good = 0;
                        continue;
                    }
                    memcpy(C[i], c->C0, c->nc * sizeof(float));
                    ccoe_gemm_run_serial(&ctx[v], c->ta, c->tb, c->M, c->N, c->K, c->alpha,
                                         c->A, c->lda, c->B, c->ldb, c->beta, C[i], c->ldc);
                }
                for (int i = 0; i < NC; i++) {
                    if (!C[i])
                        continue;
                    good &= case_check(&cs[(i + t) % NC], C[i], "serial in parallel region");
                    free(C[i]);
                }
            }
            ok[t] = good;
        }
        assert_int_equal(nthreads, 2);
        assert_true(ok[0] && ok[1]);
    }
    for (int i = 0; i < NC; i++)
        case_free(&cs[i]);
}

static const ccoe_gemm_prof_entry *prof_find(const ccoe_gemm_prof *p, int ta, int tb, int M, int N,
                                             int K)
{
    for (int i = 0; i < p->n; i++)
        if (p->e[i].transa == ta && p->e[i].transb == tb && p->e[i].M == M && p->e[i].N == N &&
            p->e[i].K == K)
            return &p->e[i];
    return NULL;
}

/* The per-shape profile (`ccoe bench --profile`): every call counted once under its exact
 * (transa, transb, M, N, K), serial calls from several threads included; results unchanged;
 * shapes beyond the table's size are counted as dropped, not lost silently; no table, no
 * counting. */
static void test_profile(void **state)
{
    (void)state;
    for (int v = 0; v < NCTX; v++) {
        ccoe_gemm g = ctx[v];
        ccoe_gemm_prof *p = calloc(1, sizeof *p);
        assert_non_null(p);
        g.prof = p;
        gcase a, b;
        case_make(&a, 0, 1, 33, 65, 17, 1.0f, 0.0f, 1, 41);
        case_make(&b, 1, 0, 64, 48, 32, 1.0f, 1.0f, 0, 42);
        float *C = xmalloc(a.nc * sizeof(float));
        for (int rep = 0; rep < 3; rep++) {
            memcpy(C, a.C0, a.nc * sizeof(float));
            ccoe_gemm_run(&g, 0, 1, 33, 65, 17, 1.0f, a.A, a.lda, a.B, a.ldb, 0.0f, C, a.ldc);
            assert_true(case_check(&a, C, "profiled run"));
        }
        free(C);
        int good = 1;
#pragma omp parallel num_threads(2) reduction(&& : good)
        for (int rep = 0; rep < 5; rep++) {
            float *Cb = malloc(b.nc * sizeof(float));
            if (!Cb) {
                good = 0;
                continue;
            }
            memcpy(Cb, b.C0, b.nc * sizeof(float));
            ccoe_gemm_run_serial(&g, 1, 0, 64, 48, 32, 1.0f, b.A, b.lda, b.B, b.ldb, 1.0f, Cb,
                                 b.ldc);
            good = good && case_check(&b, Cb, "profiled serial run");
            free(Cb);
        }
        assert_true(good);
        assert_int_equal(p->n, 2);
        const ccoe_gemm_prof_entry *ea = prof_find(p, 0, 1, 33, 65, 17);
        const ccoe_gemm_prof_entry *eb = prof_find(p, 1, 0, 64, 48, 32);
        assert_non_null(ea);
        assert_non_null(eb);
        assert_int_equal(ea->calls, 3);
        assert_int_equal(eb->calls, 10); /* 5 per thread, 2 threads */
        assert_true(ea->seconds > 0.0 && eb->seconds > 0.0);
        assert_int_equal(p->dropped, 0);
        case_free(&a);
        case_free(&b);

        /* more distinct shapes than the table holds: the extra calls are counted as dropped
         * (A is 1 x K and B is K x 1: both read K floats) */
        enum { KMAX = CCOE_GEMM_PROF_MAX + 5 };
        float ones[KMAX], out = 0.0f;
        for (int k = 0; k < KMAX; k++)
            ones[k] = 1.0f;
        for (int k = 1; k <= KMAX; k++)
            ccoe_gemm_run(&g, 0, 0, 1, 1, k, 1.0f, ones, k, ones, 1, 0.0f, &out, 1);
        assert_int_equal(p->n, CCOE_GEMM_PROF_MAX);
        assert_int_equal(p->dropped, 7); /* shapes 1x1xK, K = 95..101 (2 of the 96 used above) */

        /* no table: nothing is counted */
        g.prof = NULL;
        const ccoe_gemm_prof_entry *e1 = prof_find(p, 0, 0, 1, 1, 1);
        assert_non_null(e1);
        assert_int_equal(e1->calls, 1);
        ccoe_gemm_run(&g, 0, 0, 1, 1, 1, 1.0f, ones, 1, ones, 1, 0.0f, &out, 1);
        assert_int_equal(e1->calls, 1);
        free(p);
    }
}

/* Debian's BLIS falls back to its reference kernels on CPUs it does not know: init must have
 * chosen real kernels. */
static void test_blis_kernel_set(void **state)
{
    (void)state;
    ccoe_gemm g;
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_BLIS, 1, &err), CCOE_OK);
    printf("kernel set: %s (auto: %s)\n", g.kernel_set, ctx[3].kernel_set);
    assert_int_equal(g.backend, CCOE_GEMM_BLIS);
    assert_int_equal(g.nthreads, 1);
    assert_int_equal(strncmp(g.kernel_set, "blis:", 5), 0);
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        assert_null(strstr(g.kernel_set, "generic"));
        if (!user_set_blis_arch)
            assert_string_equal(g.kernel_set, "blis:skx");
    }
    assert_string_equal(ctx[0].kernel_set, "ref");
    assert_non_null(strstr(ctx[2].kernel_set, "xsmm:"));
}

static void test_init_args(void **state)
{
    (void)state;
    ccoe_gemm g;
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_REF, 0, &err), CCOE_OK);
    assert_int_equal(g.nthreads, 1);
    assert_int_equal(g.backend, CCOE_GEMM_REF);
    assert_int_equal(ccoe_gemm_init(&g, (ccoe_gemm_backend)42, 1, &err), CCOE_ERR_ARG);
    assert_non_null(strstr(err.msg, "42"));
    /* leave the process threads as the other tests expect */
    assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_AUTO, 2, &err), CCOE_OK);
    assert_int_equal(g.backend, CCOE_GEMM_AUTO);
}

static void test_parse_and_names(void **state)
{
    (void)state;
    static const ccoe_gemm_backend all[] = {CCOE_GEMM_AUTO, CCOE_GEMM_REF, CCOE_GEMM_BLIS,
                                            CCOE_GEMM_XSMM};
    static const char *names[] = {"auto", "ref", "blis", "xsmm"};
    ccoe_error err;
    for (int i = 0; i < 4; i++) {
        ccoe_gemm_backend b = (ccoe_gemm_backend)99;
        ccoe_error_clear(&err);
        assert_string_equal(ccoe_gemm_backend_name(all[i]), names[i]);
        assert_int_equal(ccoe_gemm_backend_parse(names[i], &b, &err), CCOE_OK);
        assert_int_equal(b, all[i]);
    }
    ccoe_gemm_backend b = CCOE_GEMM_BLIS;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_gemm_backend_parse("mkl", &b, &err), CCOE_ERR_ARG);
    assert_int_equal(err.status, CCOE_ERR_ARG);
    assert_non_null(strstr(err.msg, "'mkl'"));
    assert_non_null(strstr(err.msg, "auto, ref, blis, xsmm"));
    assert_int_equal(b, CCOE_GEMM_BLIS); /* untouched on error */
    assert_int_equal(ccoe_gemm_backend_parse("BLIS", &b, &err), CCOE_ERR_ARG);
    assert_int_equal(ccoe_gemm_backend_parse("", &b, &err), CCOE_ERR_ARG);
    assert_int_equal(ccoe_gemm_backend_parse(NULL, &b, &err), CCOE_ERR_ARG);
}

static void test_measure_gflops(void **state)
{
    (void)state;
    double r = ccoe_gemm_measure_gflops(&ctx[3], 96, 0.02);
    assert_true(r > 0.0 && isfinite(r));
    assert_true(ccoe_gemm_measure_gflops(&ctx[3], 0, 0.02) == 0.0);
}

/* Child: an invalid BLIS_ARCH_TYPE must be an error naming the value, not a BLIS abort; the
 * ref backend needs no BLIS and still works. */
static int child_bad_arch(void)
{
    setenv("BLIS_ARCH_TYPE", "skx", 1); /* BLIS itself would silently read this as 0 */
    ccoe_gemm g;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(&g, CCOE_GEMM_BLIS, 1, &err) != CCOE_ERR_BACKEND)
        return 1;
    if (!strstr(err.msg, "BLIS_ARCH_TYPE='skx'"))
        return 2;
    if (ccoe_gemm_init(&g, CCOE_GEMM_AUTO, 1, &err) != CCOE_ERR_BACKEND)
        return 3;
    if (ccoe_gemm_init(&g, CCOE_GEMM_REF, 1, &err) != CCOE_OK)
        return 4;
    return 0;
}

/* Child: a valid user choice is respected and reported (3 = haswell, AVX2 kernels). */
static int child_user_arch(void)
{
    setenv("BLIS_ARCH_TYPE", "3", 1);
    ccoe_gemm g;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(&g, CCOE_GEMM_BLIS, 1, &err) != CCOE_OK)
        return 1;
    if (strcmp(g.kernel_set, "blis:haswell") != 0)
        return 2;
    float a[2] = {1.0f, 2.0f}, b[2] = {3.0f, 4.0f}, c[1] = {NAN};
    ccoe_gemm_run(&g, 0, 0, 1, 1, 2, 1.0f, a, 2, b, 1, 0.0f, c, 1);
    return c[0] == 11.0f ? 0 : 3;
}

/* Child: CCOE_BLIS_SUP=off shows in the kernel set and the packed path still computes the
 * product of a shape BLIS would otherwise send down its small path; a bad value is an error. */
static int child_blis_sup(void)
{
    setenv("CCOE_BLIS_SUP", "off", 1);
    ccoe_gemm g;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(&g, CCOE_GEMM_BLIS, 2, &err) != CCOE_OK)
        return 1;
    if (!strstr(g.kernel_set, ",sup-off"))
        return 2;
    enum { M = 200, N = 130, K = 170 };
    static float a[M * K], b[K * N], c[M * N], r[M * N];
    for (int i = 0; i < M * K; i++)
        a[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    for (int i = 0; i < K * N; i++)
        b[i] = (float)((i * 53) % 97) / 97.0f - 0.5f;
    ccoe_gemm_run(&g, 0, 1, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
    ccoe_gemm_ref(0, 1, M, N, K, 1.0f, a, K, b, K, 0.0f, r, N);
    for (int i = 0; i < M * N; i++)
        if (fabsf(c[i] - r[i]) > 1e-4f * (1.0f + fabsf(r[i])))
            return 3;
    return 0;
}

static int child_bad_sup(void)
{
    setenv("CCOE_BLIS_SUP", "fast", 1);
    ccoe_gemm g;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(&g, CCOE_GEMM_AUTO, 1, &err) != CCOE_ERR_BACKEND)
        return 1;
    return strstr(err.msg, "CCOE_BLIS_SUP='fast'") ? 0 : 2;
}

static int run_child(int (*fn)(void))
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -2;
    if (pid == 0)
        _exit(fn());
    int st = 0;
    if (waitpid(pid, &st, 0) != pid)
        return -3;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static void test_user_blis_arch(void **state)
{
    (void)state;
    if (child_bad_arch_rc != 0)
        fprintf(stderr, "child with BLIS_ARCH_TYPE=skx: code %d\n", child_bad_arch_rc);
    assert_int_equal(child_bad_arch_rc, 0);
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        if (child_user_arch_rc != 0)
            fprintf(stderr, "child with BLIS_ARCH_TYPE=3: code %d\n", child_user_arch_rc);
        assert_int_equal(child_user_arch_rc, 0);
    }
}

static void test_blis_sup_env(void **state)
{
    (void)state;
    if (child_bad_sup_rc != 0)
        fprintf(stderr, "child with CCOE_BLIS_SUP=fast: code %d\n", child_bad_sup_rc);
    assert_int_equal(child_bad_sup_rc, 0);
    if (child_blis_sup_rc != 0)
        fprintf(stderr, "child with CCOE_BLIS_SUP=off: code %d\n", child_blis_sup_rc);
    assert_int_equal(child_blis_sup_rc, 0);
}

/* Benchmark, not a test (CCOE_GEMM_BENCH=1 only; nothing is asserted on time): GFLOP/s of the
 * BLIS context (2 threads, best of 3 batches of about 0.3 s) for the shapes behind the
 * small-problem ("sup") policy in src/gemm.c. Run it once per CCOE_BLIS_SUP value to compare:
 *   CCOE_GEMM_BENCH=1 CCOE_BLIS_SUP=on  build/test_gemm
 *   CCOE_GEMM_BENCH=1 CCOE_BLIS_SUP=off build/test_gemm      (and unset: the policy itself) */
static void test_bench(void **state)
{
    (void)state;
    const char *env = getenv("CCOE_GEMM_BENCH");
    if (!env || strcmp(env, "1") != 0)
        skip();
    static const int shapes[][3] = {
        {16, 768, 768},   {32, 768, 768},   {64, 768, 768},   {128, 768, 768}, {256, 768, 3072},
        {256, 3072, 768}, {128, 3072, 768}, {32, 3072, 768},  {768, 768, 64},  {1024, 256, 64},
        {128, 128, 128},  {256, 256, 256},  {4096, 64, 64},   {64, 64, 4096},  {256, 1024, 1024}};
    static const char *ops[] = {"AB", "ABt", "AtB"};
    const ccoe_gemm *g = &ctx[1];
    size_t cap = (size_t)4096 * 3072;
    float *A = malloc(cap * sizeof *A), *B = malloc(cap * sizeof *B), *C = malloc(cap * sizeof *C);
    assert_non_null(A);
    assert_non_null(B);
    assert_non_null(C);
    for (size_t i = 0; i < cap; i++)
        A[i] = B[i] = C[i] = (float)(i % 7) * 0.1f;
    printf("GEMM bench, %s, 2 threads (GFLOP/s, best of 3)\n| op | M | N | K | GFLOP/s |\n"
           "|---|---|---|---|---|\n",
           g->kernel_set);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        const double flop = 2.0 * M * N * K;
        const long reps = (long)(6e9 / flop) + 1;
        for (int o = 0; o < 3; o++) {
            const int ta = o == 2, tb = o == 1;
            double best = 1e30;
            for (int t = 0; t < 3; t++) {
                double t0 = ccoe_now();
                for (long r = 0; r < reps; r++)
                    ccoe_gemm_run(g, ta, tb, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, 0.0f,
                                  C, N);
                double d = (ccoe_now() - t0) / (double)reps;
                best = d < best ? d : best;
            }
            printf("| %s | %d | %d | %d | %.1f |\n", ops[o], M, N, K, flop / best * 1e-9);
        }
    }
    free(A);
    free(B);
    free(C);
}

int main(void)
{
    const char *env = getenv("BLIS_ARCH_TYPE");
    user_set_blis_arch = env && env[0];
    child_bad_arch_rc = run_child(child_bad_arch);
    child_bad_sup_rc = run_child(child_bad_sup);
    child_blis_sup_rc = run_child(child_blis_sup);
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        child_user_arch_rc = run_child(child_user_arch);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_and_names),
        cmocka_unit_test(test_blis_kernel_set),
        cmocka_unit_test(test_user_blis_arch),
        cmocka_unit_test(test_blis_sup_env),
        cmocka_unit_test(test_small_shapes),
        cmocka_unit_test(test_large_shapes),
        cmocka_unit_test(test_degenerate),
        cmocka_unit_test(test_serial_in_parallel_region),
        cmocka_unit_test(test_profile),
        cmocka_unit_test(test_init_args),
        cmocka_unit_test(test_measure_gflops),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, setup_contexts, NULL);
}
