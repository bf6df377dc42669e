/* test_rope_gqa.c - the kernels of LLaMA/Qwen2-style blocks: rotary position embeddings
 * (ccoe_rope_*), grouped-query attention (ccoe_gqa_*) and the norms' epsilon parameter.
 *
 * 1. Every reference backward (RoPE, GQA, RMSNorm/LayerNorm with eps) against central finite
 *    differences of L = sum(out * R), in double, on odd shapes.
 * 2. The fast float kernels against the references on odd shapes (T not a multiple of the
 *    vector width, head sizes 64, 40, 6, 2), backward called twice to check it accumulates.
 * 3. Conventions: the rotate-half layout on a hand-computed case, the tables against the exact
 *    angles, relative position (q(m) . k(n) depends on m - n only), the inverse rotation.
 * 4. GQA equals multi-head attention over repeated kv heads, and with Hkv == H it is bit for
 *    bit ccoe_attention_*; causality; the decode step (RoPE at each sequence's position, a
 *    cache of 2 Hkv hd floats per position) equals the full forward.
 * Not here: the model (these blocks are not wired into it yet) and speed (tests/bench_kernels.c).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "gemm.h"
#include "kernels.h"
#include "kernels_ref.h"

#define FD_H 1e-6
#define FD_ATOL 1e-8
#define FD_RTOL 1e-6
#define F_ATOL 1e-5
#define F_RTOL 1e-4

static ccoe_gemm G, G_BLIS, G_REF;

static int setup_group(void **state)
{
    (void)state;
    return tu_gemm_contexts(&G, &G_BLIS, &G_REF, 2);
}

/* Float tables for (Tmax, hd, theta) and their exact double copies (the same angles). */
static void rope_tables(float **cf, float **sf, double **cd, double **sd, int Tmax, int hd,
                        double theta)
{
    size_t n = (size_t)Tmax * (hd / 2);
    *cf = tu_fnew(n), *sf = tu_fnew(n), *cd = tu_dnew(n), *sd = tu_dnew(n);
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_rope_table_init(*cf, *sf, Tmax, hd, theta, &err), CCOE_OK);
    tu_to_double(*cd, *cf, n);
    tu_to_double(*sd, *sf, n);
}

/* ======================= 1. finite differences of the references ======================= */

typedef struct rope_ctx {
    int B, T, pos0, nh, hd, stride;
    const double *cs, *sn;
    double *inp, *out, *R;
} rope_ctx;

static double rope_obj(void *p)
{
    rope_ctx *c = p;
    size_t n = (size_t)c->B * c->T * c->stride;
    memset(c->out, 0, n * sizeof(double));
    ccoe_ref_rope_forward(c->out, c->inp, c->cs, c->sn, c->B, c->T, c->pos0, c->nh, c->hd,
                          c->stride);
    return tu_ddot(c->out, c->R, n);
}

static void fd_rope_case(int B, int T, int pos0, int nh, int hd, int stride, double theta,
                         uint64_t seed)
{
    int Tmax = pos0 + T;
    size_t n = (size_t)B * T * stride, nt = (size_t)Tmax * (hd / 2);
    double *cs = tu_dnew(nt), *sn = tu_dnew(nt);
    ccoe_ref_rope_table(cs, sn, Tmax, hd, theta);
    rope_ctx c = {B, T, pos0, nh, hd, stride, cs, sn, tu_dnew(n), tu_dnew(n), tu_dnew(n)};
    tu_fill_uniform_d(c.inp, n, seed, 1.5);
    tu_fill_uniform_d(c.R, n, seed + 1, 1.0);
    double *dinp = tu_dnew(n);
    rope_obj(&c);
    ccoe_ref_rope_backward(dinp, c.R, cs, sn, B, T, pos0, nh, hd, stride);
    char what[80];
    snprintf(what, sizeof what, "rope dinp B%d T%d pos0 %d nh%d hd%d", B, T, pos0, nh, hd);
    TU_ASSERT_GRAD(what, rope_obj, &c, c.inp, dinp, n, FD_H, FD_ATOL, FD_RTOL);
    /* in place: dout's rotated columns replaced by the same gradient */
    double *dd = tu_dnew(n);
    memcpy(dd, c.R, n * sizeof(double));
    ccoe_ref_rope_backward(dd, dd, cs, sn, B, T, pos0, nh, hd, stride);
    for (int r = 0; r < B * T; r++)
        for (int j = 0; j < nh * hd; j++)
            assert_true(dd[(size_t)r * stride + j] == dinp[(size_t)r * stride + j]);
    free(cs), free(sn), free(c.inp), free(c.out), free(c.R), free(dinp), free(dd);
}

static void test_fd_rope(void **state)
{
    (void)state;
    fd_rope_case(2, 5, 0, 3, 4, 17, 10000.0, 301); /* stride beyond the rotated heads */
    fd_rope_case(1, 1, 7, 1, 2, 2, 10000.0, 302);
    fd_rope_case(2, 3, 11, 2, 40, 100, 1e6, 303);
    fd_rope_case(1, 4, 3, 3, 6, 30, 500000.0, 304); /* half = 3 */
}

typedef struct gqa_ctx {
    int B, T, H, Hkv, hd;
    double *qkv, *out, *lse, *R;
} gqa_ctx;

static double gqa_obj(void *p)
{
    gqa_ctx *c = p;
    ccoe_ref_gqa_forward(c->out, c->lse, c->qkv, c->B, c->T, c->H, c->Hkv, c->hd);
    return tu_ddot(c->out, c->R, (size_t)c->B * c->T * c->H * c->hd);
}

static void fd_gqa_case(int B, int T, int H, int Hkv, int hd, uint64_t seed)
{
    size_t W = (size_t)(H + 2 * Hkv) * hd, nq = (size_t)B * T * W, no = (size_t)B * T * H * hd;
    gqa_ctx c = {B, T, H, Hkv, hd, tu_dnew(nq), tu_dnew(no), tu_dnew((size_t)B * H * T),
                 tu_dnew(no)};
    tu_fill_uniform_d(c.qkv, nq, seed, 1.5);
    tu_fill_uniform_d(c.R, no, seed + 1, 1.0);
    double *dqkv = tu_dnew(nq);
    gqa_obj(&c);
    ccoe_ref_gqa_backward(dqkv, c.R, c.qkv, c.out, c.lse, B, T, H, Hkv, hd);
    char what[80];
    snprintf(what, sizeof what, "gqa dqkv B%d T%d H%d Hkv%d hd%d", B, T, H, Hkv, hd);
    TU_ASSERT_GRAD(what, gqa_obj, &c, c.qkv, dqkv, nq, FD_H, FD_ATOL, FD_RTOL);
    free(c.qkv), free(c.out), free(c.lse), free(c.R), free(dqkv);
}

static void test_fd_gqa(void **state)
{
    (void)state;
    fd_gqa_case(2, 5, 4, 2, 3, 311);
    fd_gqa_case(1, 4, 3, 1, 2, 312); /* one kv head for all */
    fd_gqa_case(1, 3, 2, 2, 2, 313); /* Hkv == H */
    fd_gqa_case(1, 1, 2, 1, 4, 314); /* T = 1 */
}

/* With Hkv == H the GQA reference is the multi-head reference. */
static void test_ref_gqa_is_mha(void **state)
{
    (void)state;
    const int B = 2, T = 9, H = 3, hd = 5, C = H * hd;
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, nl = (size_t)B * H * T;
    double *qkv = tu_dnew(nq), *o1 = tu_dnew(no), *o2 = tu_dnew(no), *l1 = tu_dnew(nl),
           *l2 = tu_dnew(nl), *dout = tu_dnew(no), *d1 = tu_dnew(nq), *d2 = tu_dnew(nq);
    tu_fill_uniform_d(qkv, nq, 321, 1.5);
    tu_fill_uniform_d(dout, no, 322, 1.0);
    ccoe_ref_attention_forward(o1, l1, qkv, B, T, C, H);
    ccoe_ref_gqa_forward(o2, l2, qkv, B, T, H, H, hd);
    ccoe_ref_attention_backward(d1, dout, qkv, o1, l1, B, T, C, H);
    ccoe_ref_gqa_backward(d2, dout, qkv, o2, l2, B, T, H, H, hd);
    TU_ASSERT_CLOSE_D("ref gqa out", o2, o1, no, 1e-14, 1e-12);
    TU_ASSERT_CLOSE_D("ref gqa lse", l2, l1, nl, 1e-14, 1e-12);
    TU_ASSERT_CLOSE_D("ref gqa dqkv", d2, d1, nq, 1e-14, 1e-12);
    free(qkv), free(o1), free(o2), free(l1), free(l2), free(dout), free(d1), free(d2);
}

typedef struct norm_ctx {
    int N, C, rms;
    double eps;
    double *inp, *w, *b, *out, *mean, *rstd, *R;
} norm_ctx;

static double norm_obj(void *p)
{
    norm_ctx *c = p;
    if (c->rms)
        ccoe_ref_rmsnorm_forward_eps(c->out, c->rstd, c->inp, c->w, c->N, c->C, c->eps);
    else
        ccoe_ref_layernorm_forward_eps(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C,
                                       c->eps);
    return tu_ddot(c->out, c->R, (size_t)c->N * c->C);
}

/* eps large against the variance, so that a backward ignoring it would fail */
static void fd_norm_eps_case(int rms, int N, int C, double eps, uint64_t seed)
{
    size_t n = (size_t)N * C;
    norm_ctx c = {N,          C,          rms,        eps,       tu_dnew(n), tu_dnew(C),
                  tu_dnew(C), tu_dnew(n), tu_dnew(N), tu_dnew(N), tu_dnew(n)};
    tu_fill_uniform_d(c.inp, n, seed, 0.5);
    tu_fill_uniform_d(c.w, C, seed + 1, 1.5);
    tu_fill_uniform_d(c.b, C, seed + 2, 1.0);
    tu_fill_uniform_d(c.R, n, seed + 3, 1.0);
    double *dinp = tu_dnew(n), *dw = tu_dnew(C), *db = tu_dnew(C);
    norm_obj(&c);
    if (rms)
        ccoe_ref_rmsnorm_backward(dinp, dw, c.R, c.inp, c.w, c.rstd, N, C);
    else
        ccoe_ref_layernorm_backward(dinp, dw, db, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
    char what[80];
    snprintf(what, sizeof what, "%s eps %g dinp", rms ? "rmsnorm" : "layernorm", eps);
    TU_ASSERT_GRAD(what, norm_obj, &c, c.inp, dinp, n, FD_H, FD_ATOL, FD_RTOL);
    snprintf(what, sizeof what, "%s eps %g dweight", rms ? "rmsnorm" : "layernorm", eps);
    TU_ASSERT_GRAD(what, norm_obj, &c, c.w, dw, C, FD_H, FD_ATOL, FD_RTOL);
    free(c.inp), free(c.w), free(c.b), free(c.out), free(c.mean), free(c.rstd), free(c.R);
    free(dinp), free(dw), free(db);
}

static void test_fd_norm_eps(void **state)
{
    (void)state;
    fd_norm_eps_case(1, 3, 7, 0.3, 331);
    fd_norm_eps_case(1, 2, 40, 1e-6, 332);
    fd_norm_eps_case(0, 3, 7, 0.3, 333);
    fd_norm_eps_case(0, 2, 33, 1e-6, 334);
}

/* ======================= 2-3. RoPE: conventions and the fast kernel ======================= */

/* The rotate-half layout on a case computed by hand: hd 4, theta 10000, position 1, so the
 * frequencies are 1 and 10000^(-1/2) = 0.01, and x[0] pairs with x[2], x[1] with x[3]. */
static void test_rope_convention(void **state)
{
    (void)state;
    float cs[2 * 2], sn[2 * 2], x[4] = {1, 2, 3, 4}, y[4];
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_rope_table_init(cs, sn, 2, 4, 10000.0, &err), CCOE_OK);
    ccoe_rope_forward(y, x, cs, sn, 1, 1, 1, 1, 4, 4);
    double want[4] = {1 * cos(1.0) - 3 * sin(1.0), 2 * cos(0.01) - 4 * sin(0.01),
                      3 * cos(1.0) + 1 * sin(1.0), 4 * cos(0.01) + 2 * sin(0.01)};
    TU_ASSERT_CLOSE("rope hand case", y, want, 4, 1e-6, 1e-6);
    /* position 0 is the identity, exactly */
    ccoe_rope_forward(y, x, cs, sn, 1, 1, 0, 1, 4, 4);
    assert_memory_equal(y, x, sizeof x);
}

static void test_rope_table(void **state)
{
    (void)state;
    const int hds[] = {2, 6, 40, 64, 128};
    const double thetas[] = {10000.0, 1e6, 500000.0};
    const int Tmax = 1031;
    for (size_t a = 0; a < sizeof hds / sizeof hds[0]; a++)
        for (size_t b = 0; b < sizeof thetas / sizeof thetas[0]; b++) {
            int hd = hds[a], half = hd / 2;
            size_t n = (size_t)Tmax * half;
            float *cf, *sf;
            double *cd_unused, *sd_unused;
            rope_tables(&cf, &sf, &cd_unused, &sd_unused, Tmax, hd, thetas[b]);
            double *cd = tu_dnew(n), *sd = tu_dnew(n);
            ccoe_ref_rope_table(cd, sd, Tmax, hd, thetas[b]);
            double worst = 0.0;
            for (int p = 0; p < Tmax; p++)
                for (int i = 0; i < half; i++) {
                    /* float32 angles, as transformers forms them: the exponent 2i/hd, theta^that
                     * (its rounding scaled by ln theta), the reciprocal and the product each
                     * round to float, so the angle is off by up to (3 + ln theta) 2^-24 of it */
                    double ang = p * pow(thetas[b], -2.0 * i / hd);
                    double tol = 2e-7 + (3.0 + log(thetas[b])) * ang * ldexp(1.0, -24);
                    size_t k = (size_t)p * half + i;
                    double r = fmax(fabs(cf[k] - cd[k]), fabs(sf[k] - sd[k])) / tol;
                    worst = fmax(worst, r);
                }
            if (worst > 1.0)
                fprintf(stderr, "rope table hd %d theta %g: ratio %g\n", hd, thetas[b], worst);
            assert_true(worst <= 1.0);
            for (int i = 0; i < half; i++)
                assert_true(cf[i] == 1.0f && sf[i] == 0.0f);
            free(cf), free(sf), free(cd_unused), free(sd_unused), free(cd), free(sd);
        }
}

static void test_rope_table_bad_input(void **state)
{
    (void)state;
    float cs[64], sn[64];
    ccoe_error err;
    struct {
        int Tmax, hd;
        double theta;
        const char *text;
    } bad[] = {{4, 5, 10000.0, "head size 5"},  {4, 0, 10000.0, "head size 0"},
               {0, 4, 10000.0, "0 positions"},  {4, 4, NAN, "rope_theta nan"},
               {4, 4, 0.0, "rope_theta 0"},     {4, 4, -5.0, "rope_theta -5"},
               {4, 4, INFINITY, "rope_theta inf"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ccoe_error_clear(&err);
        assert_int_equal(ccoe_rope_table_init(cs, sn, bad[i].Tmax, bad[i].hd, bad[i].theta, &err),
                         CCOE_ERR_ARG);
        TU_ASSERT_MSG_HAS(err, bad[i].text);
    }
}

/* Rotating q at m and k at n keeps q . k a function of m - n (RoPE's point). */
static void test_rope_relative(void **state)
{
    (void)state;
    const int hd = 64, Tmax = 300;
    float *cf, *sf;
    double *cd, *sd;
    rope_tables(&cf, &sf, &cd, &sd, Tmax, hd, 10000.0);
    float q[64], k[64], qr[64], kr[64];
    tu_fill_uniform(q, hd, 341, 1.0f);
    tu_fill_uniform(k, hd, 342, 1.0f);
    const int pairs[][2] = {{5, 2}, {105, 102}, {290, 287}};
    double dots[3];
    for (int c = 0; c < 3; c++) {
        ccoe_rope_forward(qr, q, cf, sf, 1, 1, pairs[c][0], 1, hd, hd);
        ccoe_rope_forward(kr, k, cf, sf, 1, 1, pairs[c][1], 1, hd, hd);
        dots[c] = 0.0;
        for (int j = 0; j < hd; j++)
            dots[c] += (double)qr[j] * kr[j];
    }
    assert_true(fabs(dots[1] - dots[0]) < 1e-3 && fabs(dots[2] - dots[0]) < 1e-3);
    free(cf), free(sf), free(cd), free(sd);
}

static void fast_rope_case(int B, int T, int pos0, int nh, int hd, int stride, double theta,
                           uint64_t seed)
{
    const int Tmax = pos0 + T + 3;
    size_t n = (size_t)B * T * stride;
    char what[160];
    float *cf, *sf;
    double *cd, *sd;
    rope_tables(&cf, &sf, &cd, &sd, Tmax, hd, theta);
    float *inp = tu_fnew(n), *out = tu_fnew(n), *ip = tu_fnew(n), *garbage = tu_fnew(n);
    double *inp_d = tu_dnew(n), *out_d = tu_dnew(n);
    tu_fill_pair(inp, inp_d, n, seed, 2.0f);
    tu_fill_uniform(garbage, n, seed + 1, 9.0f);
    memcpy(out, garbage, n * sizeof(float));
    ccoe_rope_forward(out, inp, cf, sf, B, T, pos0, nh, hd, stride);
    ccoe_ref_rope_forward(out_d, inp_d, cd, sd, B, T, pos0, nh, hd, stride);
    for (int r = 0; r < B * T; r++) /* unrotated columns: untouched */
        for (int j = nh * hd; j < stride; j++) {
            size_t k = (size_t)r * stride + j;
            assert_true(out[k] == garbage[k]);
            out_d[k] = out[k];
        }
    snprintf(what, sizeof what, "rope out B%d T%d pos0 %d nh%d hd%d", B, T, pos0, nh, hd);
    TU_ASSERT_CLOSE(what, out, out_d, n, F_ATOL, F_RTOL);
    memcpy(ip, inp, n * sizeof(float)); /* in place: the same bits */
    ccoe_rope_forward(ip, ip, cf, sf, B, T, pos0, nh, hd, stride);
    for (int r = 0; r < B * T; r++)
        assert_memory_equal(ip + (size_t)r * stride, out + (size_t)r * stride,
                            (size_t)nh * hd * sizeof(float));

    /* backward: accumulates twice; in place it replaces; inverse of the forward */
    float *dout = tu_fnew(n), *dinp = tu_fnew(n), *dinp0 = tu_fnew(n);
    double *dout_d = tu_dnew(n), *dinp_d = tu_dnew(n), *want = tu_dnew(n);
    tu_fill_pair(dout, dout_d, n, seed + 2, 1.0f);
    tu_fill_uniform(dinp, n, seed + 3, 1.0f);
    memcpy(dinp0, dinp, n * sizeof(float));
    for (int k = 0; k < 2; k++)
        ccoe_rope_backward(dinp, dout, cf, sf, B, T, pos0, nh, hd, stride);
    ccoe_ref_rope_backward(dinp_d, dout_d, cd, sd, B, T, pos0, nh, hd, stride);
    tu_twice_plus(want, dinp0, dinp_d, n);
    snprintf(what, sizeof what, "rope dinp B%d T%d pos0 %d nh%d hd%d", B, T, pos0, nh, hd);
    TU_ASSERT_CLOSE(what, dinp, want, n, F_ATOL, F_RTOL);
    ccoe_rope_backward(dout, dout, cf, sf, B, T, pos0, nh, hd, stride);
    for (int r = 0; r < B * T; r++)
        for (int j = nh * hd; j < stride; j++)
            dinp_d[(size_t)r * stride + j] = dout_d[(size_t)r * stride + j];
    snprintf(what, sizeof what, "rope in-place dinp B%d T%d hd%d", B, T, hd);
    TU_ASSERT_CLOSE(what, dout, dinp_d, n, F_ATOL, F_RTOL);
    ccoe_rope_backward(ip, ip, cf, sf, B, T, pos0, nh, hd, stride); /* R^T R x = x */
    snprintf(what, sizeof what, "rope round trip B%d T%d hd%d", B, T, hd);
    TU_ASSERT_CLOSE(what, ip, inp_d, n, 1e-6, 1e-6);

    /* per-row positions: the same bits as the chunk form at those positions */
    if (B == 1) {
        int *pos = malloc((size_t)T * sizeof(int));
        assert_non_null(pos);
        for (int t = 0; t < T; t++)
            pos[t] = pos0 + (t * 7) % T;
        float *at = tu_fnew(n), *one = tu_fnew((size_t)stride);
        ccoe_rope_forward_at(at, inp, cf, sf, pos, T, nh, hd, stride);
        for (int t = 0; t < T; t++) {
            ccoe_rope_forward(one, inp + (size_t)t * stride, cf, sf, 1, 1, pos[t], nh, hd, stride);
            assert_memory_equal(one, at + (size_t)t * stride, (size_t)nh * hd * sizeof(float));
        }
        free(pos), free(at), free(one);
    }
    float *fl[] = {cf, sf, inp, out, ip, garbage, dout, dinp, dinp0};
    double *dl[] = {cd, sd, inp_d, out_d, dout_d, dinp_d, want};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++)
        free(dl[i]);
}

static void test_fast_rope(void **state)
{
    (void)state;
    fast_rope_case(2, 37, 0, 16, 64, 18 * 64, 1e6, 351); /* q and k of H 14, Hkv 2 */
    fast_rope_case(1, 13, 5, 5, 40, 7 * 40, 10000.0, 352);
    fast_rope_case(3, 7, 2, 2, 6, 15, 500000.0, 353);
    fast_rope_case(1, 1, 0, 1, 2, 2, 10000.0, 354);
    fast_rope_case(1, 129, 100, 3, 128, 3 * 128, 10000.0, 355);
}

/* ======================= 4. grouped-query attention ======================= */

static void fast_gqa_case_g(const ccoe_gemm *g, int B, int T, int H, int Hkv, int hd,
                            float qscale, uint64_t seed)
{
    size_t W = (size_t)(H + 2 * Hkv) * hd, nq = (size_t)B * T * W, no = (size_t)B * T * H * hd,
           nl = (size_t)B * H * T;
    char what[160];
    float *qkv = tu_fnew(nq), *out = tu_fnew(no), *lse = tu_fnew(nl), *dout = tu_fnew(no),
          *dqkv = tu_fnew(nq), *dqkv0 = tu_fnew(nq);
    double *qkv_d = tu_dnew(nq), *out_d = tu_dnew(no), *lse_d = tu_dnew(nl), *dout_d = tu_dnew(no),
           *dqkv_d = tu_dnew(nq), *want = tu_dnew(nq);
    size_t ns = ccoe_gqa_scratch_floats(B, T, H, Hkv, hd, g->nthreads);
    float *scratch = tu_fnew(ns);
    tu_fill_pair(qkv, qkv_d, nq, seed, qscale);
    tu_fill_pair(dout, dout_d, no, seed + 1, 1.0f);
    tu_fill_uniform(out, no, seed + 2, 9.0f);
    tu_fill_uniform(lse, nl, seed + 3, 9.0f);
    tu_fill_uniform(scratch, ns, seed + 4, 9.0f);
    ccoe_gqa_forward(g, out, lse, qkv, scratch, B, T, H, Hkv, hd);
    ccoe_ref_gqa_forward(out_d, lse_d, qkv_d, B, T, H, Hkv, hd);
    snprintf(what, sizeof what, "gqa out B%d T%d H%d Hkv%d hd%d %s", B, T, H, Hkv, hd,
             g->kernel_set);
    TU_ASSERT_CLOSE(what, out, out_d, no, F_ATOL, F_RTOL);
    snprintf(what, sizeof what, "gqa lse B%d T%d H%d Hkv%d hd%d", B, T, H, Hkv, hd);
    TU_ASSERT_CLOSE(what, lse, lse_d, nl, F_ATOL, F_RTOL);
    tu_fill_uniform(dqkv, nq, seed + 5, 1.0f);
    memcpy(dqkv0, dqkv, nq * sizeof(float));
    tu_fill_uniform(scratch, ns, seed + 6, 9.0f);
    for (int k = 0; k < 2; k++)
        ccoe_gqa_backward(g, dqkv, dout, qkv, out, lse, scratch, B, T, H, Hkv, hd);
    ccoe_ref_gqa_backward(dqkv_d, dout_d, qkv_d, out_d, lse_d, B, T, H, Hkv, hd);
    tu_twice_plus(want, dqkv0, dqkv_d, nq);
    snprintf(what, sizeof what, "gqa dqkv B%d T%d H%d Hkv%d hd%d %s", B, T, H, Hkv, hd,
             g->kernel_set);
    /* dk, dv sum over H / Hkv heads and up to T rows: allow for the longer sums */
    TU_ASSERT_CLOSE(what, dqkv, want, nq, F_ATOL * sqrt((double)(H / Hkv)), F_RTOL);
    float *fl[] = {qkv, out, lse, dout, dqkv, dqkv0, scratch};
    double *dl[] = {qkv_d, out_d, lse_d, dout_d, dqkv_d, want};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++)
        free(dl[i]);
}

static void test_fast_gqa(void **state)
{
    (void)state;
    fast_gqa_case_g(&G, 2, 37, 14, 2, 64, 1.0f, 361); /* Qwen2-0.5B's heads */
    fast_gqa_case_g(&G, 1, 129, 6, 3, 40, 1.0f, 362);  /* several tiles, the last of one row */
    fast_gqa_case_g(&G, 3, 17, 4, 1, 8, 2.0f, 363);    /* B * Hkv = 3 over 2 threads */
    fast_gqa_case_g(&G, 1, 1, 2, 1, 2, 1.0f, 364);
    fast_gqa_case_g(&G, 2, 33, 4, 4, 40, 1.0f, 365);   /* Hkv == H */
    fast_gqa_case_g(&G_BLIS, 2, 37, 14, 2, 64, 1.0f, 366);
    fast_gqa_case_g(&G_REF, 1, 70, 6, 2, 24, 1.0f, 367);
}

/* Hkv == H: ccoe_gqa_* and ccoe_attention_* give the same bits (forward, backward, decode). */
static void test_gqa_bitwise_mha(void **state)
{
    (void)state;
    const int B = 3, T = 45, H = 4, hd = 40, C = H * hd, nt = 2;
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, nl = (size_t)B * H * T;
    float *qkv = tu_fnew(nq), *o1 = tu_fnew(no), *o2 = tu_fnew(no), *l1 = tu_fnew(nl),
          *l2 = tu_fnew(nl), *dout = tu_fnew(no), *d1 = tu_fnew(nq), *d2 = tu_fnew(nq);
    size_t ns = ccoe_attention_scratch_floats(B, T, C, H, nt);
    assert_true(ns == ccoe_gqa_scratch_floats(B, T, H, H, hd, nt));
    float *scratch = tu_fnew(ns);
    tu_fill_uniform(qkv, nq, 371, 1.5f);
    tu_fill_uniform(dout, no, 372, 1.0f);
    tu_fill_uniform(d1, nq, 373, 1.0f);
    memcpy(d2, d1, nq * sizeof(float));
    ccoe_attention_forward(&G, o1, l1, qkv, scratch, B, T, C, H);
    ccoe_gqa_forward(&G, o2, l2, qkv, scratch, B, T, H, H, hd);
    assert_memory_equal(o1, o2, no * sizeof(float));
    assert_memory_equal(l1, l2, nl * sizeof(float));
    ccoe_attention_backward(&G, d1, dout, qkv, o1, l1, scratch, B, T, C, H);
    ccoe_gqa_backward(&G, d2, dout, qkv, o2, l2, scratch, B, T, H, H, hd);
    assert_memory_equal(d1, d2, nq * sizeof(float));
    /* decode of the last position of each sequence from a cache of [k | v] rows */
    float *kv = tu_fnew((size_t)B * T * 2 * C), *q = tu_fnew((size_t)B * 3 * C),
          *e1 = tu_fnew((size_t)B * C), *e2 = tu_fnew((size_t)B * C), *ws = tu_fnew((size_t)nt * T);
    int rows[3] = {0, 1, 2}, pos[3] = {T - 1, 10, 0};
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++)
            memcpy(kv + ((size_t)b * T + t) * 2 * C, qkv + ((size_t)b * T + t) * 3 * C + C,
                   2 * (size_t)C * sizeof(float));
        memcpy(q + (size_t)b * 3 * C, qkv + ((size_t)b * T + pos[b]) * 3 * C,
               3 * (size_t)C * sizeof(float));
    }
    ccoe_attention_decode(e1, q, kv, (size_t)T * 2 * C, rows, pos, ws, B, C, H, nt);
    ccoe_gqa_decode(e2, q, kv, (size_t)T * 2 * C, rows, pos, ws, B, H, H, hd, nt);
    assert_memory_equal(e1, e2, (size_t)B * C * sizeof(float));
    float *fl[] = {qkv, o1, o2, l1, l2, dout, d1, d2, scratch, kv, q, e1, e2, ws};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
}

/* GQA is multi-head attention over kv heads repeated H / Hkv times (repeat_kv): the forward
 * gives the same bits (the same numbers meet the same operations), and the kv gradients are the
 * group sums of the repeated heads' gradients. */
static void test_gqa_is_repeated_mha(void **state)
{
    (void)state;
    const int B = 2, T = 41, H = 6, Hkv = 2, hd = 40, rep = H / Hkv, C = H * hd;
    const int W = (H + 2 * Hkv) * hd;
    size_t nq = (size_t)B * T * W, nm = (size_t)B * T * 3 * C, no = (size_t)B * T * C,
           nl = (size_t)B * H * T;
    float *qkv = tu_fnew(nq), *mha = tu_fnew(nm), *o1 = tu_fnew(no), *o2 = tu_fnew(no),
          *l1 = tu_fnew(nl), *l2 = tu_fnew(nl), *dout = tu_fnew(no), *dg = tu_fnew(nq),
          *dm = tu_fnew(nm);
    float *scratch = tu_fnew(ccoe_gqa_scratch_floats(B, T, H, Hkv, hd, G.nthreads));
    tu_fill_uniform(qkv, nq, 381, 1.5f);
    tu_fill_uniform(dout, no, 382, 1.0f);
    for (int r = 0; r < B * T; r++) {
        const float *src = qkv + (size_t)r * W;
        float *dst = mha + (size_t)r * 3 * C;
        memcpy(dst, src, (size_t)C * sizeof(float));
        for (int h = 0; h < H; h++) {
            memcpy(dst + C + h * hd, src + (H + h / rep) * hd, (size_t)hd * sizeof(float));
            memcpy(dst + 2 * C + h * hd, src + (H + Hkv + h / rep) * hd, (size_t)hd * sizeof(float));
        }
    }
    ccoe_gqa_forward(&G, o1, l1, qkv, scratch, B, T, H, Hkv, hd);
    ccoe_attention_forward(&G, o2, l2, mha, scratch, B, T, C, H);
    assert_memory_equal(o1, o2, no * sizeof(float));
    assert_memory_equal(l1, l2, nl * sizeof(float));
    ccoe_gqa_backward(&G, dg, dout, qkv, o1, l1, scratch, B, T, H, Hkv, hd);
    ccoe_attention_backward(&G, dm, dout, mha, o2, l2, scratch, B, T, C, H);
    double *want = tu_dnew(nq);
    for (int r = 0; r < B * T; r++) {
        const float *m = dm + (size_t)r * 3 * C;
        double *w = want + (size_t)r * W;
        for (int j = 0; j < C; j++)
            w[j] = m[j];
        for (int h = 0; h < H; h++)
            for (int d = 0; d < hd; d++) {
                w[(H + h / rep) * hd + d] += m[C + h * hd + d];
                w[(H + Hkv + h / rep) * hd + d] += m[2 * C + h * hd + d];
            }
    }
    TU_ASSERT_CLOSE("gqa dqkv vs repeated mha", dg, want, nq, 1e-6, 1e-5);
    for (int r = 0; r < B * T; r++) /* the q gradient: the same operations, the same bits */
        assert_memory_equal(dg + (size_t)r * W, dm + (size_t)r * 3 * C, (size_t)C * sizeof(float));
    float *fl[] = {qkv, mha, o1, o2, l1, l2, dout, dg, dm, scratch};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    free(want);
}

/* Changing token t0 leaves every earlier output bitwise unchanged and changes the output at t0;
 * a thread count of 1 gives the same bits as 2. */
static void test_gqa_causal_threads(void **state)
{
    (void)state;
    const int B = 2, T = 70, H = 6, Hkv = 2, hd = 16, W = (H + 2 * Hkv) * hd, C = H * hd;
    size_t nq = (size_t)B * T * W, no = (size_t)B * T * C, nl = (size_t)B * H * T;
    float *qkv = tu_fnew(nq), *o1 = tu_fnew(no), *o2 = tu_fnew(no), *l1 = tu_fnew(nl),
          *l2 = tu_fnew(nl);
    ccoe_gemm g1;
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_gemm_init(&g1, CCOE_GEMM_AUTO, 1, &err), CCOE_OK);
    float *scratch = tu_fnew(ccoe_gqa_scratch_floats(B, T, H, Hkv, hd, 2));
    tu_fill_uniform(qkv, nq, 391, 1.0f);
    ccoe_gqa_forward(&G, o1, l1, qkv, scratch, B, T, H, Hkv, hd);
    ccoe_gqa_forward(&g1, o2, l2, qkv, scratch, B, T, H, Hkv, hd);
    assert_memory_equal(o1, o2, no * sizeof(float));
    assert_memory_equal(l1, l2, nl * sizeof(float));
    ccoe_gemm_init(&G, CCOE_GEMM_AUTO, 2, &err); /* restores the global thread count */
    const int t0 = 33, b0 = 1;
    float *row = qkv + ((size_t)b0 * T + t0) * W;
    for (int c = 0; c < W; c++)
        row[c] = -row[c] + 0.5f;
    ccoe_gqa_forward(&G, o2, l2, qkv, scratch, B, T, H, Hkv, hd);
    assert_memory_equal(o1, o2, ((size_t)T + t0) * C * sizeof(float)); /* batch 0 and b0's past */
    float diff = 0.0f;
    for (int c = 0; c < C; c++)
        diff += fabsf(o1[((size_t)b0 * T + t0) * C + c] - o2[((size_t)b0 * T + t0) * C + c]);
    assert_true(diff > 1e-3f);
    free(qkv), free(o1), free(o2), free(l1), free(l2), free(scratch);
}

/* RoPE + GQA decoding: every sequence's rows are rotated at their own positions, their keys and
 * values joined to a cache of 2 Hkv hd floats per position, and each step's output equals the
 * full (rotated) forward's row at that position. Also: rotating a chunk that starts at pos0
 * gives the same bits as the full sequence's rows. */
static void test_gqa_rope_decode(void **state)
{
    (void)state;
    const int B = 3, T = 23, H = 14, Hkv = 2, hd = 64, nt = 2, W = (H + 2 * Hkv) * hd;
    const int C = H * hd, KV = Hkv * hd, nh = H + Hkv;
    size_t nq = (size_t)B * T * W, no = (size_t)B * T * C;
    float *cf, *sf;
    double *cd, *sd;
    rope_tables(&cf, &sf, &cd, &sd, T, hd, 1e6);
    float *raw = tu_fnew(nq), *rot = tu_fnew(nq), *out = tu_fnew(no),
          *lse = tu_fnew((size_t)B * H * T);
    float *scratch = tu_fnew(ccoe_gqa_scratch_floats(B, T, H, Hkv, hd, nt));
    tu_fill_uniform(raw, nq, 401, 1.5f);
    ccoe_rope_forward(rot, raw, cf, sf, B, T, 0, nh, hd, W);
    for (int r = 0; r < B * T; r++) /* v is not rotated: copy it */
        memcpy(rot + (size_t)r * W + (size_t)nh * hd, raw + (size_t)r * W + (size_t)nh * hd,
               (size_t)KV * sizeof(float));
    ccoe_gqa_forward(&G, out, lse, rot, scratch, B, T, H, Hkv, hd);

    /* chunk [t0, T) of sequence 1 rotated with pos0 = t0 */
    const int t0 = 9;
    float *chunk = tu_fnew((size_t)(T - t0) * W);
    ccoe_rope_forward(chunk, raw + ((size_t)T + t0) * W, cf, sf, 1, T - t0, t0, nh, hd, W);
    for (int t = 0; t < T - t0; t++)
        assert_memory_equal(chunk + (size_t)t * W, rot + ((size_t)T + t0 + t) * W,
                            (size_t)nh * hd * sizeof(float));

    /* steps: sequence b starts decoding at len0[b] (its prompt fills the cache first) */
    float *kv = tu_fnew((size_t)B * T * 2 * KV), *q = tu_fnew((size_t)B * W),
          *dec = tu_fnew((size_t)B * C), *ws = tu_fnew((size_t)nt * T);
    double *want = tu_dnew((size_t)B * C);
    const int len0[3] = {0, 5, 12};
    for (int b = 0; b < B; b++)
        for (int t = 0; t < len0[b]; t++)
            memcpy(kv + ((size_t)b * T + t) * 2 * KV, rot + ((size_t)b * T + t) * W + C,
                   2 * (size_t)KV * sizeof(float));
    int rows[3], pos[3];
    double worst = 0.0;
    for (int step = 0; step < T; step++) {
        int n = 0;
        for (int b = 0; b < B; b++)
            if (len0[b] + step < T) {
                rows[n] = b;
                pos[n] = len0[b] + step;
                memcpy(q + (size_t)n * W, raw + ((size_t)b * T + pos[n]) * W,
                       (size_t)W * sizeof(float));
                n++;
            }
        if (n == 0)
            break;
        ccoe_rope_forward_at(q, q, cf, sf, pos, n, nh, hd, W);
        for (int i = 0; i < n; i++) {
            memcpy(kv + ((size_t)rows[i] * T + pos[i]) * 2 * KV, q + (size_t)i * W + C,
                   2 * (size_t)KV * sizeof(float));
            tu_to_double(want + (size_t)i * C, out + ((size_t)rows[i] * T + pos[i]) * C,
                         (size_t)C);
        }
        ccoe_gqa_decode(dec, q, kv, (size_t)T * 2 * KV, rows, pos, ws, n, H, Hkv, hd, nt);
        worst = fmax(worst, tu_close_ratio("gqa rope decode", dec, want, (size_t)n * C, 1e-5,
                                           1e-4));
    }
    assert_true(worst <= 1.0);
    float *fl[] = {cf, sf, raw, rot, out, lse, scratch, chunk, kv, q, dec, ws};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    free(cd), free(sd), free(want);
}

/* ======================= norms with epsilon ======================= */

static void fast_norm_eps_case(int rms, int N, int C, float eps, uint64_t seed)
{
    size_t n = (size_t)N * C;
    char what[80];
    float *inp = tu_fnew(n), *w = tu_fnew(C), *b = tu_fnew(C), *out = tu_fnew(n),
          *out2 = tu_fnew(n), *mean = tu_fnew(N), *rstd = tu_fnew(N), *rstd2 = tu_fnew(N);
    double *inp_d = tu_dnew(n), *w_d = tu_dnew(C), *b_d = tu_dnew(C), *out_d = tu_dnew(n),
           *mean_d = tu_dnew(N), *rstd_d = tu_dnew(N);
    tu_fill_pair(inp, inp_d, n, seed, 0.01f); /* variance ~3e-5: eps 1e-6 vs 1e-5 matters */
    tu_fill_pair(w, w_d, C, seed + 1, 1.5f);
    tu_fill_pair(b, b_d, C, seed + 2, 1.0f);
    if (rms) {
        ccoe_rmsnorm_forward_eps(out, rstd, inp, w, N, C, eps);
        ccoe_ref_rmsnorm_forward_eps(out_d, rstd_d, inp_d, w_d, N, C, (double)eps);
        ccoe_rmsnorm_forward(out2, rstd2, inp, w, N, C);
    } else {
        ccoe_layernorm_forward_eps(out, mean, rstd, inp, w, b, N, C, eps);
        ccoe_ref_layernorm_forward_eps(out_d, mean_d, rstd_d, inp_d, w_d, b_d, N, C, (double)eps);
        ccoe_layernorm_forward(out2, mean, rstd2, inp, w, b, N, C);
    }
    snprintf(what, sizeof what, "%s eps %g out N%d C%d", rms ? "rmsnorm" : "layernorm", eps, N, C);
    TU_ASSERT_CLOSE(what, out, out_d, n, F_ATOL, F_RTOL);
    snprintf(what, sizeof what, "%s eps %g rstd", rms ? "rmsnorm" : "layernorm", eps);
    TU_ASSERT_CLOSE(what, rstd, rstd_d, N, F_ATOL, F_RTOL);
    if (eps == 1e-5f) { /* the default: the same bits as the form without eps */
        assert_memory_equal(out, out2, n * sizeof(float));
        assert_memory_equal(rstd, rstd2, N * sizeof(float));
    } else { /* another eps really changes the result */
        assert_true(memcmp(rstd, rstd2, N * sizeof(float)) != 0);
    }
    float *fl[] = {inp, w, b, out, out2, mean, rstd, rstd2};
    double *dl[] = {inp_d, w_d, b_d, out_d, mean_d, rstd_d};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++)
        free(dl[i]);
}

static void test_fast_norm_eps(void **state)
{
    (void)state;
    for (int rms = 0; rms < 2; rms++) {
        fast_norm_eps_case(rms, 37, 257, 1e-6f, 411);
        fast_norm_eps_case(rms, 5, 896, 1e-5f, 412);
        fast_norm_eps_case(rms, 3, 7, 0.25f, 413);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_rope),
        cmocka_unit_test(test_fd_gqa),
        cmocka_unit_test(test_ref_gqa_is_mha),
        cmocka_unit_test(test_fd_norm_eps),
        cmocka_unit_test(test_rope_convention),
        cmocka_unit_test(test_rope_table),
        cmocka_unit_test(test_rope_table_bad_input),
        cmocka_unit_test(test_rope_relative),
        cmocka_unit_test(test_fast_rope),
        cmocka_unit_test(test_fast_gqa),
        cmocka_unit_test(test_gqa_bitwise_mha),
        cmocka_unit_test(test_gqa_is_repeated_mha),
        cmocka_unit_test(test_gqa_causal_threads),
        cmocka_unit_test(test_gqa_rope_decode),
        cmocka_unit_test(test_fast_norm_eps),
    };
    return cmocka_run_group_tests(tests, setup_group, NULL);
}
