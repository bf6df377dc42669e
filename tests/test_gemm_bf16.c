/* test_gemm_bf16.c - the bf16 GEMM (ccoe_gemm_run_bf16) and its rounding (ccoe_bf16_round).
 *
 * Rounding: hand cases (ties to even, NaN, infinities, overflow, subnormals, signed zero) and
 * every bf16 pattern round-tripping. GEMM: every transpose combination, alpha/beta variants
 * (beta = 0 over NaN garbage), M/N/K of 1, odd K, shapes past each cache block, strided views
 * whose surroundings must stay untouched; each result against
 *  - a double-precision product of the bf16-rounded operands, within the fp32 accumulation
 *    bound (K + 8) u sum|alpha a b| + 2u |beta c| (u = 2^-24): the kernel may differ from exact
 *    arithmetic on the rounded inputs only by its fp32 sums;
 *  - the fp32 product of the unrounded operands, within the bf16 bound 2^-7 sum|alpha a b|
 *    (times 1.01) plus the accumulation term: bf16 keeps 8 significant bits, so rounding moves
 *    each operand by at most 2^-8 relative and each product by at most (1 + 2^-8)^2 - 1, just
 *    over 2^-7.
 * Also: bit-identical results for 1 and 2 threads, the serial entry and the serial entry inside
 * a parallel region; the error on a CPU without AVX512-BF16 (simulated with CCOE_GEMM_NO_BF16);
 * the profile's bf16 entries. On a CPU without AVX512-BF16 the GEMM tests skip.
 */
#define _GNU_SOURCE /* setenv */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "gemm.h"
#include "testutil.h"

#define SENTINEL 12345.0f

static ccoe_gemm g1, g2; /* auto backend, bf16 enabled; 1 and 2 threads */
static int have_bf16;

static int setup(void **state)
{
    (void)state;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(&g1, CCOE_GEMM_AUTO, 1, &err) != CCOE_OK ||
        ccoe_gemm_init(&g2, CCOE_GEMM_AUTO, 2, &err) != CCOE_OK) {
        fprintf(stderr, "ccoe_gemm_init: %s\n", err.msg);
        return -1;
    }
    have_bf16 = ccoe_gemm_bf16_available();
    if (!have_bf16) {
        fprintf(stderr, "this CPU has no AVX512-BF16: the bf16 GEMM tests skip\n");
        return 0;
    }
    if (ccoe_gemm_set_precision(&g1, CCOE_PRECISION_BF16, &err) != CCOE_OK ||
        ccoe_gemm_set_precision(&g2, CCOE_PRECISION_BF16, &err) != CCOE_OK) {
        fprintf(stderr, "ccoe_gemm_set_precision: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ccoe_gemm_free(&g1);
    ccoe_gemm_free(&g2);
    return 0;
}

/* ---- rounding ---- */

static float f_of(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static void test_round_hand_cases(void **state)
{
    (void)state;
    static const struct {
        uint32_t in;
        uint16_t out;
    } k[] = {
        {0x3f800000u, 0x3f80}, /* 1.0 exact */
        {0x3f808000u, 0x3f80}, /* tie between 0x3f80 and 0x3f81: to even (down) */
        {0x3f818000u, 0x3f82}, /* tie between 0x3f81 and 0x3f82: to even (up) */
        {0x3f807fffu, 0x3f80}, /* just below half */
        {0x3f808001u, 0x3f81}, /* just above half */
        {0xbf808000u, 0xbf80}, /* negative tie: to even, magnitude down */
        {0xbf818000u, 0xbf82}, /* negative tie: magnitude up */
        {0x3fffffffu, 0x4000}, /* carry into the exponent */
        {0x00000000u, 0x0000}, /* +0 */
        {0x80000000u, 0x8000}, /* -0 */
        {0x7f800000u, 0x7f80}, /* +inf */
        {0xff800000u, 0xff80}, /* -inf */
        {0x7f7f0000u, 0x7f7f}, /* the largest bf16 */
        {0x7f7f7fffu, 0x7f7f}, /* below the midpoint to infinity */
        {0x7f7f8000u, 0x7f80}, /* tie at the top (0x7f7f is odd): overflows to +inf */
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds to +inf */
        {0xff7fffffu, 0xff80}, /* -FLT_MAX to -inf */
        {0x00000001u, 0x0000}, /* smallest subnormal: rounds to +0 */
        {0x00008000u, 0x0000}, /* subnormal tie: to even (0) */
        {0x00018000u, 0x0002}, /* subnormal tie: to even (2) */
        {0x0000c000u, 0x0001}, /* subnormal above half: kept as the bf16 subnormal 1 */
        {0x00400000u, 0x0040}, /* a bf16 subnormal exactly */
        {0x807fffffu, 0x8080}, /* the largest negative subnormal rounds to the smallest normal */
        {0x7fc00000u, 0x7fc0}, /* quiet NaN */
        {0xffc00000u, 0xffc0}, /* negative quiet NaN */
        {0x7f800001u, 0x7fc0}, /* signalling NaN, payload in the low bits only: stays a NaN */
        {0x7fbfffffu, 0x7fff}, /* signalling NaN: quietened, not rounded into infinity */
        {0xff800001u, 0xffc0},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        uint16_t got = ccoe_bf16_round(f_of(k[i].in));
        if (got != k[i].out)
            fprintf(stderr, "round(0x%08x) = 0x%04x, want 0x%04x\n", k[i].in, got, k[i].out);
        assert_int_equal(got, k[i].out);
    }
    assert_true(isnan(ccoe_bf16_float(ccoe_bf16_round(f_of(0x7f800001u)))));
    assert_true(ccoe_bf16_float(0x3f80) == 1.0f);
    assert_true(ccoe_bf16_float(0xc040) == -3.0f);
}

/* Every bf16 value is a float that rounds to itself; its neighbours' midpoints round to even. */
static void test_round_all_patterns(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000u; h++) {
        const uint32_t u = h << 16;
        if ((u & 0x7fffffffu) > 0x7f800000u)
            continue; /* NaN: covered above */
        assert_int_equal(ccoe_bf16_round(f_of(u)), h);
        if ((h & 0x7fffu) == 0x7f80u)
            continue; /* infinities have no upper neighbour */
        /* the midpoint to the next pattern up (in magnitude): ties to the even one */
        const uint16_t even = (h & 1u) ? (uint16_t)(h + 1) : (uint16_t)h;
        assert_int_equal(ccoe_bf16_round(f_of(u | 0x8000u)), even);
        assert_int_equal(ccoe_bf16_round(f_of(u | 0x7fffu)), h);
        assert_int_equal(ccoe_bf16_round(f_of(u | 0x8001u)), (uint16_t)(h + 1));
    }
}

/* ---- GEMM ---- */

typedef struct gcase {
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    float *A, *B, *C0;
    double *ref_bf, *ref_fp, *tol_bf, *tol_fp; /* (M, N) */
} gcase;

static size_t a_rows(const gcase *c) { return (size_t)(c->ta ? c->K : c->M); }
static size_t b_rows(const gcase *c) { return (size_t)(c->tb ? c->N : c->K); }

static double rnd(float x) { return (double)ccoe_bf16_float(ccoe_bf16_round(x)); }

static void case_make(gcase *c, int ta, int tb, int M, int N, int K, float alpha, float beta,
                      uint64_t seed)
{
    *c = (gcase){ta, tb, M, N, K, (ta ? M : K) + 3, (tb ? K : N) + 5, N + 2, alpha, beta,
                 NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    c->A = tu_fnew(a_rows(c) * c->lda);
    c->B = tu_fnew(b_rows(c) * c->ldb);
    c->C0 = tu_fnew((size_t)(M + 1) * c->ldc);
    tu_fill_uniform(c->A, a_rows(c) * c->lda, seed, 1.0f);
    tu_fill_uniform(c->B, b_rows(c) * c->ldb, seed + 1, 1.0f);
    tu_fill_uniform(c->C0, (size_t)(M + 1) * c->ldc, seed + 2, 1.0f);
    c->ref_bf = tu_dnew((size_t)M * N);
    c->ref_fp = tu_dnew((size_t)M * N);
    c->tol_bf = tu_dnew((size_t)M * N);
    c->tol_fp = tu_dnew((size_t)M * N);
    const double u = ldexp(1.0, -24);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double sb = 0, sf = 0, sabs = 0;
            for (int p = 0; p < K; p++) {
                float a = ta ? c->A[(size_t)p * c->lda + i] : c->A[(size_t)i * c->lda + p];
                float b = tb ? c->B[(size_t)j * c->ldb + p] : c->B[(size_t)p * c->ldb + j];
                sb += rnd(a) * rnd(b);
                sf += (double)a * b;
                sabs += fabs((double)a * b);
            }
            const double c0 = beta == 0.0f ? 0.0 : beta * (double)c->C0[(size_t)i * c->ldc + j];
            const size_t o = (size_t)i * N + j;
            c->ref_bf[o] = alpha * sb + c0;
            c->ref_fp[o] = alpha * sf + c0;
            const double acc = (K + 8) * u * fabs(alpha) * sabs * 1.01 + 2 * u * fabs(c0) + 1e-30;
            c->tol_bf[o] = acc;
            c->tol_fp[o] = ldexp(1.0, -7) * fabs(alpha) * sabs * 1.01 + acc;
        }
}

static void case_free(gcase *c)
{
    free(c->A);
    free(c->B);
    free(c->C0);
    free(c->ref_bf);
    free(c->ref_fp);
    free(c->tol_bf);
    free(c->tol_fp);
}

/* C before the call: C0 where beta != 0, NaN garbage where beta == 0 (must not be read); the
 * padding columns and the extra row hold a sentinel that must survive. */
static float *case_c(const gcase *c)
{
    float *C = tu_fnew((size_t)(c->M + 1) * c->ldc);
    for (int i = 0; i <= c->M; i++)
        for (int j = 0; j < c->ldc; j++) {
            const size_t o = (size_t)i * c->ldc + j;
            C[o] = (i == c->M || j >= c->N) ? SENTINEL : c->beta == 0.0f ? NAN : c->C0[o];
        }
    return C;
}

static void case_check(const gcase *c, const float *C, const char *who)
{
    int bad = 0;
    for (int i = 0; i <= c->M && bad < 5; i++)
        for (int j = 0; j < c->ldc && bad < 5; j++) {
            const float got = C[(size_t)i * c->ldc + j];
            if (i == c->M || j >= c->N) {
                if (got != SENTINEL) {
                    fprintf(stderr, "%s: wrote outside C at (%d, %d)\n", who, i, j);
                    bad++;
                }
                continue;
            }
            const size_t o = (size_t)i * c->N + j;
            const double eb = fabs(got - c->ref_bf[o]), ef = fabs(got - c->ref_fp[o]);
            if (!(eb <= c->tol_bf[o]) || !(ef <= c->tol_fp[o])) {
                fprintf(stderr,
                        "%s ta%d tb%d M%d N%d K%d alpha %g beta %g at (%d, %d): %.9g vs bf16 "
                        "ref %.9g (err %.3g, tol %.3g), fp32 ref %.9g (err %.3g, tol %.3g)\n",
                        who, c->ta, c->tb, c->M, c->N, c->K, c->alpha, c->beta, i, j, got,
                        c->ref_bf[o], eb, c->tol_bf[o], c->ref_fp[o], ef, c->tol_fp[o]);
                bad++;
            }
        }
    assert_int_equal(bad, 0);
}

static void run_case(const gcase *c, const ccoe_gemm *g, int serial, float *C)
{
    (serial ? ccoe_gemm_run_bf16_serial : ccoe_gemm_run_bf16)(
        g, c->ta, c->tb, c->M, c->N, c->K, c->alpha, c->A, c->lda, c->B, c->ldb, c->beta, C,
        c->ldc);
}

static void test_gemm_cases(void **state)
{
    (void)state;
    if (!have_bf16)
        skip();
    static const int shapes[][3] = {
        {1, 1, 1},    {1, 37, 5},    {7, 1, 3},     {1, 1, 300},  {33, 65, 17},
        {8, 32, 2},   {9, 33, 3},    {16, 16, 16},  {64, 64, 64}, {100, 50, 257},
        {17, 96, 1},  {200, 47, 513}, {47, 300, 31}, {130, 2100, 40}, {400, 64, 70},
    };
    static const float ab[][2] = {{1.0f, 0.0f}, {1.0f, 1.0f}, {0.5f, 1.0f}, {-2.0f, 0.0f},
                                  {1.0f, 0.25f}};
    uint64_t seed = 100;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (size_t v = 0; v < sizeof ab / sizeof ab[0]; v++) {
                    /* all alpha/beta pairs on the small shapes, two on the large ones */
                    if ((long)shapes[s][0] * shapes[s][1] * shapes[s][2] > 200000 && v > 1)
                        continue;
                    gcase c;
                    case_make(&c, ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], ab[v][0],
                              ab[v][1], seed += 3);
                    float *C1 = case_c(&c), *C2 = case_c(&c), *Cs = case_c(&c);
                    run_case(&c, &g1, 0, C1);
                    run_case(&c, &g2, 0, C2);
                    run_case(&c, &g2, 1, Cs);
                    case_check(&c, C1, "1 thread");
                    case_check(&c, C2, "2 threads");
                    /* the same sums in the same order whatever the threads */
                    assert_memory_equal(C1, C2, (size_t)(c.M + 1) * c.ldc * sizeof(float));
                    assert_memory_equal(C1, Cs, (size_t)(c.M + 1) * c.ldc * sizeof(float));
                    free(C1);
                    free(C2);
                    free(Cs);
                    case_free(&c);
                }
}

/* The model's shapes (token rows x layer widths) in all three uses of a linear layer. */
static void test_gemm_model_shapes(void **state)
{
    (void)state;
    if (!have_bf16)
        skip();
    gcase c[3];
    case_make(&c[0], 0, 1, 256, 768, 256, 1.0f, 1.0f, 7);  /* forward: inp W^T (+ bias) */
    case_make(&c[1], 0, 0, 256, 256, 768, 1.0f, 1.0f, 8);  /* dinp += dout W */
    case_make(&c[2], 1, 0, 768, 256, 256, 1.0f, 1.0f, 9);  /* dW += dout^T inp */
    for (int i = 0; i < 3; i++) {
        float *C = case_c(&c[i]);
        run_case(&c[i], &g2, 0, C);
        case_check(&c[i], C, "model shape");
        free(C);
        case_free(&c[i]);
    }
}

/* Serial calls from every thread of a parallel region at once: each uses its own scratch. */
static void test_serial_in_parallel(void **state)
{
    (void)state;
    if (!have_bf16)
        skip();
    enum { NT = 4 }; /* more threads than the context was set up for: the shared slot */
    gcase c;
    case_make(&c, 0, 1, 70, 90, 130, 1.0f, 0.0f, 11);
    float *want = case_c(&c);
    run_case(&c, &g1, 0, want);
    case_check(&c, want, "serial reference");
    float *C[NT];
    for (int t = 0; t < NT; t++)
        C[t] = case_c(&c);
#pragma omp parallel for num_threads(NT) schedule(static, 1)
    for (int t = 0; t < NT; t++)
        run_case(&c, &g2, 1, C[t]);
    for (int t = 0; t < NT; t++) {
        assert_memory_equal(C[t], want, (size_t)(c.M + 1) * c.ldc * sizeof(float));
        free(C[t]);
    }
    free(want);
    case_free(&c);
}

/* The linear entry: exactly ccoe_gemm_run in fp32, exactly the bf16 GEMM in bf16. */
static void test_linear_entry(void **state)
{
    (void)state;
    if (!have_bf16)
        skip();
    ccoe_error err;
    gcase c;
    case_make(&c, 0, 1, 40, 50, 60, 1.0f, 1.0f, 13);
    float *a = case_c(&c), *b = case_c(&c);
    ccoe_gemm f;
    assert_int_equal(ccoe_gemm_init(&f, CCOE_GEMM_AUTO, 2, &err), CCOE_OK);
    assert_int_equal(f.precision, CCOE_PRECISION_FP32);
    ccoe_gemm_run(&f, 0, 1, c.M, c.N, c.K, 1.0f, c.A, c.lda, c.B, c.ldb, 1.0f, a, c.ldc);
    ccoe_gemm_run_linear(&f, 0, 1, c.M, c.N, c.K, 1.0f, c.A, c.lda, c.B, c.ldb, 1.0f, b, c.ldc);
    assert_memory_equal(a, b, (size_t)(c.M + 1) * c.ldc * sizeof(float));
    assert_int_equal(ccoe_gemm_set_precision(&f, CCOE_PRECISION_BF16, &err), CCOE_OK);
    float *d = case_c(&c), *e = case_c(&c);
    ccoe_gemm_run_bf16(&f, 0, 1, c.M, c.N, c.K, 1.0f, c.A, c.lda, c.B, c.ldb, 1.0f, d, c.ldc);
    ccoe_gemm_run_linear_serial(&f, 0, 1, c.M, c.N, c.K, 1.0f, c.A, c.lda, c.B, c.ldb, 1.0f, e,
                                c.ldc);
    assert_memory_equal(d, e, (size_t)(c.M + 1) * c.ldc * sizeof(float));
    assert_true(memcmp(a, d, (size_t)(c.M + 1) * c.ldc * sizeof(float)) != 0);
    case_check(&c, d, "linear");
    ccoe_gemm_free(&f);
    assert_null(f.bf16);
    free(a);
    free(b);
    free(d);
    free(e);
    case_free(&c);
}

/* bf16 calls appear in the profile as their own entries. */
static void test_profile(void **state)
{
    (void)state;
    if (!have_bf16)
        skip();
    ccoe_gemm g = g2;
    ccoe_gemm_prof *p = calloc(1, sizeof *p);
    assert_non_null(p);
    g.prof = p;
    gcase c;
    case_make(&c, 0, 0, 20, 30, 40, 1.0f, 0.0f, 17);
    float *C = case_c(&c);
    run_case(&c, &g, 0, C);
    run_case(&c, &g, 1, C);
    ccoe_gemm_run(&g, 0, 0, c.M, c.N, c.K, 1.0f, c.A, c.lda, c.B, c.ldb, 0.0f, C, c.ldc);
    assert_int_equal(p->n, 2);
    assert_int_equal(p->e[0].bf16, 1);
    assert_int_equal(p->e[0].calls, 2);
    assert_int_equal(p->e[1].bf16, 0);
    assert_int_equal(p->e[1].calls, 1);
    free(p);
    free(C);
    case_free(&c);
}

/* Without AVX512-BF16 (simulated): a clear error naming the instructions and the fix. */
static void test_no_bf16_cpu(void **state)
{
    (void)state;
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_gemm g;
    assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_AUTO, 1, &err), CCOE_OK);
    setenv("CCOE_GEMM_NO_BF16", "1", 1);
    assert_int_equal(ccoe_gemm_bf16_available(), 0);
    assert_int_equal(ccoe_gemm_set_precision(&g, CCOE_PRECISION_BF16, &err), CCOE_ERR_BACKEND);
    TU_ASSERT_MSG_HAS(err, "AVX512-BF16");
    TU_ASSERT_MSG_HAS(err, "avx512_bf16");
    TU_ASSERT_MSG_HAS(err, "run.precision = fp32");
    assert_int_equal(g.precision, CCOE_PRECISION_FP32);
    assert_null(g.bf16);
    unsetenv("CCOE_GEMM_NO_BF16");
    assert_int_equal(ccoe_gemm_set_precision(&g, CCOE_PRECISION_FP32, &err), CCOE_OK);
    ccoe_gemm_free(&g);
}

static void test_precision_names(void **state)
{
    (void)state;
    ccoe_error err;
    ccoe_precision p;
    assert_int_equal(ccoe_precision_parse("bf16", &p, &err), CCOE_OK);
    assert_int_equal(p, CCOE_PRECISION_BF16);
    assert_int_equal(ccoe_precision_parse("fp32", &p, &err), CCOE_OK);
    assert_int_equal(p, CCOE_PRECISION_FP32);
    assert_string_equal(ccoe_precision_name(CCOE_PRECISION_BF16), "bf16");
    assert_int_equal(ccoe_precision_parse("fp16", &p, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "fp16");
    TU_ASSERT_MSG_HAS(err, "fp32, bf16");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_hand_cases), cmocka_unit_test(test_round_all_patterns),
        cmocka_unit_test(test_gemm_cases),       cmocka_unit_test(test_gemm_model_shapes),
        cmocka_unit_test(test_serial_in_parallel), cmocka_unit_test(test_linear_entry),
        cmocka_unit_test(test_profile),          cmocka_unit_test(test_no_bf16_cpu),
        cmocka_unit_test(test_precision_names),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
