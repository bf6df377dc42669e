/* test_kernels.c - the transformer kernels (kernels.c) and their references (kernels_ref.c).
 *
 * 1. Every reference backward against central finite differences of a random linear objective
 *    L = sum(out * R) (cross-entropy: L = scale * sum of losses), in double, on odd shapes and
 *    size-1 dimensions.
 * 2. Every fast float kernel, forward and backward, against its reference on the same inputs;
 *    backward is called twice on pre-filled gradients to check that it accumulates (cross-entropy
 *    backward, which overwrites, is called on garbage).
 * 3. Attention: causality, and T large enough to take several query tiles.
 * Not here: GEMM backends themselves (test_gemm.c) and speed (benchmarks).
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "gemm.h"
#include "kernels.h"
#include "kernels_ref.h"
#include "rng.h"

#define FD_H 1e-6
#define FD_ATOL 1e-8
#define FD_RTOL 1e-6

/* float kernel vs double reference */
#define F_ATOL 1e-5
#define F_RTOL 1e-4
/* for sums over n rows of O(1) terms that may cancel (dweight, dbias): float rounding grows
 * like sqrt(n) (seen: 1.5e-5 over 128 terms without vectorisation) */
#define F_ATOL_SUM(n) (F_ATOL * sqrt((double)(n)))

static ccoe_gemm G; /* the context the trainer would use: AUTO backend, 2 threads */
/* the other backends: the GEMM-based kernels must not depend on which one runs */
static ccoe_gemm G_BLIS, G_REF;

/* ---- helpers ---- */

static void fill_tokens(int32_t *t, size_t n, int V, uint64_t seed)
{
    ccoe_rng r;
    ccoe_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        t[i] = (int32_t)ccoe_rng_below(&r, (uint64_t)V);
}

static int setup_group(void **state)
{
    (void)state;
    return tu_gemm_contexts(&G, &G_BLIS, &G_REF, 2);
}

/* ======================= 1. finite differences of the references ======================= */

typedef struct embed_ctx {
    int B, T, C;
    const int32_t *tok;
    double *wte, *wpe, *out, *R;
} embed_ctx;

static double embed_obj(void *p)
{
    embed_ctx *c = p;
    ccoe_ref_embed_forward(c->out, c->tok, c->wte, c->wpe, c->B, c->T, c->C);
    return tu_ddot(c->out, c->R, (size_t)c->B * c->T * c->C);
}

static void fd_embed_case(int B, int T, int C, int V, uint64_t seed)
{
    size_t n = (size_t)B * T * C;
    int32_t *tok = tu_inew((size_t)B * T);
    fill_tokens(tok, (size_t)B * T, V, seed);
    embed_ctx c = {B, T, C, tok, tu_dnew((size_t)V * C), tu_dnew((size_t)(T + 1) * C), tu_dnew(n), tu_dnew(n)};
    tu_fill_uniform_d(c.wte, (size_t)V * C, seed + 1, 1.0);
    tu_fill_uniform_d(c.wpe, (size_t)(T + 1) * C, seed + 2, 1.0);
    tu_fill_uniform_d(c.R, n, seed + 3, 1.0);
    double *dwte = tu_dnew((size_t)V * C), *dwpe = tu_dnew((size_t)(T + 1) * C);
    embed_obj(&c);
    ccoe_ref_embed_backward(dwte, dwpe, c.R, tok, B, T, C);
    TU_ASSERT_GRAD("embed dwte", embed_obj, &c, c.wte, dwte, (size_t)V * C, FD_H, FD_ATOL, FD_RTOL);
    TU_ASSERT_GRAD("embed dwpe", embed_obj, &c, c.wpe, dwpe, (size_t)(T + 1) * C, FD_H, FD_ATOL,
                   FD_RTOL);
    free(tok);
    free(c.wte);
    free(c.wpe);
    free(c.out);
    free(c.R);
    free(dwte);
    free(dwpe);
}

static void test_fd_embed(void **state)
{
    (void)state;
    fd_embed_case(2, 3, 5, 4, 11); /* 6 tokens from 4: repeats */
    fd_embed_case(1, 1, 1, 1, 12);
    fd_embed_case(3, 2, 7, 9, 13);
}

typedef struct norm_ctx {
    int N, C;
    double *inp, *w, *b, *out, *mean, *rstd, *R;
    int rms;
} norm_ctx;

static double norm_obj(void *p)
{
    norm_ctx *c = p;
    if (c->rms)
        ccoe_ref_rmsnorm_forward(c->out, c->rstd, c->inp, c->w, c->N, c->C);
    else
        ccoe_ref_layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C);
    return tu_ddot(c->out, c->R, (size_t)c->N * c->C);
}

static void fd_norm_case(int rms, int N, int C, uint64_t seed)
{
    size_t n = (size_t)N * C;
    norm_ctx c = {N, C, tu_dnew(n), tu_dnew(C), tu_dnew(C), tu_dnew(n), tu_dnew(N), tu_dnew(N), tu_dnew(n), rms};
    tu_fill_uniform_d(c.inp, n, seed, 2.0);
    tu_fill_uniform_d(c.w, C, seed + 1, 1.5);
    tu_fill_uniform_d(c.b, C, seed + 2, 1.0);
    tu_fill_uniform_d(c.R, n, seed + 3, 1.0);
    double *dinp = tu_dnew(n), *dw = tu_dnew(C), *db = tu_dnew(C);
    norm_obj(&c);
    if (rms)
        ccoe_ref_rmsnorm_backward(dinp, dw, c.R, c.inp, c.w, c.rstd, N, C);
    else
        ccoe_ref_layernorm_backward(dinp, dw, db, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
    const char *name = rms ? "rmsnorm" : "layernorm";
    char what[64];
    snprintf(what, sizeof what, "%s dinp N%d C%d", name, N, C);
    TU_ASSERT_GRAD(what, norm_obj, &c, c.inp, dinp, n, FD_H, FD_ATOL, FD_RTOL);
    snprintf(what, sizeof what, "%s dweight N%d C%d", name, N, C);
    TU_ASSERT_GRAD(what, norm_obj, &c, c.w, dw, C, FD_H, FD_ATOL, FD_RTOL);
    if (!rms) {
        snprintf(what, sizeof what, "%s dbias N%d C%d", name, N, C);
        TU_ASSERT_GRAD(what, norm_obj, &c, c.b, db, C, FD_H, FD_ATOL, FD_RTOL);
    }
    free(c.inp);
    free(c.w);
    free(c.b);
    free(c.out);
    free(c.mean);
    free(c.rstd);
    free(c.R);
    free(dinp);
    free(dw);
    free(db);
}

static void test_fd_layernorm(void **state)
{
    (void)state;
    fd_norm_case(0, 3, 7, 21);
    fd_norm_case(0, 1, 2, 22);
    fd_norm_case(0, 2, 1, 23); /* C = 1: out = bias, zero input gradient */
    fd_norm_case(0, 4, 33, 24);
}

static void test_fd_rmsnorm(void **state)
{
    (void)state;
    fd_norm_case(1, 3, 7, 31);
    fd_norm_case(1, 1, 1, 32);
    fd_norm_case(1, 4, 33, 33);
}

typedef struct linear_ctx {
    int N, IC, OC;
    double *inp, *w, *b, *out, *R;
} linear_ctx;

static double linear_obj(void *p)
{
    linear_ctx *c = p;
    ccoe_ref_linear_forward(c->out, c->inp, c->w, c->b, c->N, c->IC, c->OC);
    return tu_ddot(c->out, c->R, (size_t)c->N * c->OC);
}

static void fd_linear_case(int N, int IC, int OC, int with_bias, uint64_t seed)
{
    linear_ctx c = {N,         IC, OC, tu_dnew((size_t)N * IC), tu_dnew((size_t)OC * IC),
                    tu_dnew(OC),  tu_dnew((size_t)N * OC), tu_dnew((size_t)N * OC)};
    tu_fill_uniform_d(c.inp, (size_t)N * IC, seed, 1.0);
    tu_fill_uniform_d(c.w, (size_t)OC * IC, seed + 1, 1.0);
    tu_fill_uniform_d(c.b, OC, seed + 2, 1.0);
    tu_fill_uniform_d(c.R, (size_t)N * OC, seed + 3, 1.0);
    double *bias = c.b;
    if (!with_bias)
        c.b = NULL;
    double *dinp = tu_dnew((size_t)N * IC), *dw = tu_dnew((size_t)OC * IC), *db = tu_dnew(OC);
    linear_obj(&c);
    ccoe_ref_linear_backward(dinp, dw, with_bias ? db : NULL, c.R, c.inp, c.w, N, IC, OC);
    TU_ASSERT_GRAD("linear dinp", linear_obj, &c, c.inp, dinp, (size_t)N * IC, FD_H, FD_ATOL,
                   FD_RTOL);
    TU_ASSERT_GRAD("linear dweight", linear_obj, &c, c.w, dw, (size_t)OC * IC, FD_H, FD_ATOL,
                   FD_RTOL);
    if (with_bias)
        TU_ASSERT_GRAD("linear dbias", linear_obj, &c, c.b, db, OC, FD_H, FD_ATOL, FD_RTOL);
    for (int o = 0; o < OC && !with_bias; o++)
        assert_true(db[o] == 0.0); /* NULL dbias: nothing written anywhere */
    free(c.inp);
    free(c.w);
    free(bias);
    free(c.out);
    free(c.R);
    free(dinp);
    free(dw);
    free(db);
}

static void test_fd_linear(void **state)
{
    (void)state;
    fd_linear_case(3, 5, 4, 1, 41);
    fd_linear_case(1, 1, 1, 1, 42);
    fd_linear_case(2, 7, 3, 0, 43);
}

typedef struct attn_ctx {
    int B, T, C, H;
    double *qkv, *out, *lse, *R;
} attn_ctx;

static double attn_obj(void *p)
{
    attn_ctx *c = p;
    ccoe_ref_attention_forward(c->out, c->lse, c->qkv, c->B, c->T, c->C, c->H);
    return tu_ddot(c->out, c->R, (size_t)c->B * c->T * c->C);
}

static void fd_attention_case(int B, int T, int C, int H, uint64_t seed)
{
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C;
    attn_ctx c = {B, T, C, H, tu_dnew(nq), tu_dnew(no), tu_dnew((size_t)B * H * T), tu_dnew(no)};
    tu_fill_uniform_d(c.qkv, nq, seed, 1.5);
    tu_fill_uniform_d(c.R, no, seed + 1, 1.0);
    double *dqkv = tu_dnew(nq);
    attn_obj(&c);
    ccoe_ref_attention_backward(dqkv, c.R, c.qkv, c.out, c.lse, B, T, C, H);
    char what[64];
    snprintf(what, sizeof what, "attention dqkv B%d T%d C%d H%d", B, T, C, H);
    TU_ASSERT_GRAD(what, attn_obj, &c, c.qkv, dqkv, nq, FD_H, FD_ATOL, FD_RTOL);
    free(c.qkv);
    free(c.out);
    free(c.lse);
    free(c.R);
    free(dqkv);
}

static void test_fd_attention(void **state)
{
    (void)state;
    fd_attention_case(2, 5, 6, 2, 51);
    fd_attention_case(1, 1, 3, 1, 52); /* T = 1: out = v, no gradient to q or k */
    fd_attention_case(1, 4, 4, 4, 53); /* hd = 1 */
    fd_attention_case(2, 6, 10, 1, 54);
}

typedef struct pointwise_ctx {
    int N, F; /* gelu: N elements; swiglu: N rows of 2F */
    int swiglu;
    double *inp, *out, *R;
} pointwise_ctx;

static double pointwise_obj(void *p)
{
    pointwise_ctx *c = p;
    size_t n = c->swiglu ? (size_t)c->N * c->F : (size_t)c->N;
    if (c->swiglu)
        ccoe_ref_swiglu_forward(c->out, c->inp, c->N, c->F);
    else
        ccoe_ref_gelu_forward(c->out, c->inp, n);
    return tu_ddot(c->out, c->R, n);
}

static void fd_pointwise_case(int swiglu, int N, int F, uint64_t seed)
{
    size_t nin = swiglu ? (size_t)N * 2 * F : (size_t)N;
    size_t nout = swiglu ? (size_t)N * F : (size_t)N;
    pointwise_ctx c = {N, F, swiglu, tu_dnew(nin), tu_dnew(nout), tu_dnew(nout)};
    tu_fill_uniform_d(c.inp, nin, seed, 4.0);
    tu_fill_uniform_d(c.R, nout, seed + 1, 1.0);
    double *dinp = tu_dnew(nin);
    pointwise_obj(&c);
    if (swiglu)
        ccoe_ref_swiglu_backward(dinp, c.inp, c.R, N, F);
    else
        ccoe_ref_gelu_backward(dinp, c.inp, c.R, nin);
    TU_ASSERT_GRAD(swiglu ? "swiglu dinp" : "gelu dinp", pointwise_obj, &c, c.inp, dinp, nin, FD_H,
                   FD_ATOL, FD_RTOL);
    free(c.inp);
    free(c.out);
    free(c.R);
    free(dinp);
}

static void test_fd_gelu(void **state)
{
    (void)state;
    fd_pointwise_case(0, 37, 0, 61);
    fd_pointwise_case(0, 1, 0, 62);
}

static void test_fd_swiglu(void **state)
{
    (void)state;
    fd_pointwise_case(1, 3, 5, 71);
    fd_pointwise_case(1, 1, 1, 72);
}

typedef struct ce_ctx {
    int N, V;
    const int32_t *tgt;
    double scale;
    double *logits, *probs, *losses;
} ce_ctx;

static double ce_obj(void *p)
{
    ce_ctx *c = p;
    return c->scale * ccoe_ref_crossentropy_forward(c->losses, c->probs, c->logits, c->tgt, c->N,
                                                    c->V);
}

static void fd_crossentropy_case(int N, int V, int ignore_row, uint64_t seed)
{
    int32_t *tgt = tu_inew(N);
    fill_tokens(tgt, N, V, seed);
    int counted = N;
    if (ignore_row >= 0 && ignore_row < N) {
        tgt[ignore_row] = -1;
        counted--;
    }
    ce_ctx c = {N, V, tgt, counted > 0 ? 1.0 / counted : 1.0, tu_dnew((size_t)N * V),
                tu_dnew((size_t)N * V), tu_dnew(N)};
    tu_fill_uniform_d(c.logits, (size_t)N * V, seed + 1, 3.0);
    double *dl = tu_dnew((size_t)N * V);
    double loss = ce_obj(&c);
    assert_true(isfinite(loss));
    if (ignore_row >= 0 && ignore_row < N)
        assert_true(c.losses[ignore_row] == 0.0);
    ccoe_ref_crossentropy_backward(dl, c.probs, tgt, c.scale, N, V);
    TU_ASSERT_GRAD("crossentropy dlogits", ce_obj, &c, c.logits, dl, (size_t)N * V, FD_H, FD_ATOL,
                   FD_RTOL);
    free(tgt);
    free(c.logits);
    free(c.probs);
    free(c.losses);
    free(dl);
}

static void test_fd_crossentropy(void **state)
{
    (void)state;
    fd_crossentropy_case(4, 7, 2, 81);
    fd_crossentropy_case(1, 1, -1, 82); /* V = 1: loss 0, gradient 0 */
    fd_crossentropy_case(3, 11, -1, 83);
}

/* ======================= 2. fast float kernels vs references ======================= */

static void fast_embed_case(int B, int T, int C, int V, uint64_t seed)
{
    size_t n = (size_t)B * T * C, nte = (size_t)V * C, npe = (size_t)(T + 2) * C;
    int32_t *tok = tu_inew((size_t)B * T);
    fill_tokens(tok, (size_t)B * T, V, seed);
    float *wte = tu_fnew(nte), *wpe = tu_fnew(npe), *out = tu_fnew(n), *dout = tu_fnew(n);
    double *wte_d = tu_dnew(nte), *wpe_d = tu_dnew(npe), *out_d = tu_dnew(n), *dout_d = tu_dnew(n);
    tu_fill_pair(wte, wte_d, nte, seed + 1, 1.0f);
    tu_fill_pair(wpe, wpe_d, npe, seed + 2, 1.0f);
    tu_fill_pair(dout, dout_d, n, seed + 3, 1.0f);
    tu_fill_uniform(out, n, seed + 4, 9.0f); /* garbage: forward overwrites */
    ccoe_embed_forward(out, tok, wte, wpe, B, T, C);
    ccoe_ref_embed_forward(out_d, tok, wte_d, wpe_d, B, T, C);
    TU_ASSERT_CLOSE("embed out", out, out_d, n, F_ATOL, F_RTOL);

    float *dwte = tu_fnew(nte), *dwpe = tu_fnew(npe);
    double *dwte_d = tu_dnew(nte), *dwpe_d = tu_dnew(npe), *want = tu_dnew(nte > npe ? nte : npe);
    tu_fill_uniform(dwte, nte, seed + 5, 1.0f);
    tu_fill_uniform(dwpe, npe, seed + 6, 1.0f);
    float *dwte0 = tu_fnew(nte), *dwpe0 = tu_fnew(npe);
    memcpy(dwte0, dwte, nte * sizeof(float));
    memcpy(dwpe0, dwpe, npe * sizeof(float));
    ccoe_embed_backward(dwte, dwpe, dout, tok, B, T, C);
    ccoe_embed_backward(dwte, dwpe, dout, tok, B, T, C);
    ccoe_ref_embed_backward(dwte_d, dwpe_d, dout_d, tok, B, T, C);
    tu_twice_plus(want, dwte0, dwte_d, nte);
    TU_ASSERT_CLOSE("embed dwte", dwte, want, nte, F_ATOL, F_RTOL);
    tu_twice_plus(want, dwpe0, dwpe_d, npe);
    TU_ASSERT_CLOSE("embed dwpe", dwpe, want, npe, F_ATOL, F_RTOL);
    free(tok);
    free(wte);
    free(wpe);
    free(out);
    free(dout);
    free(wte_d);
    free(wpe_d);
    free(out_d);
    free(dout_d);
    free(dwte);
    free(dwpe);
    free(dwte_d);
    free(dwpe_d);
    free(want);
    free(dwte0);
    free(dwpe0);
}

static void test_fast_embed(void **state)
{
    (void)state;
    fast_embed_case(2, 3, 5, 4, 111);
    fast_embed_case(1, 1, 1, 1, 112);
    fast_embed_case(4, 33, 70, 13, 113); /* token ids split across threads, many repeats */
    fast_embed_case(3, 20, 48, 1, 114);  /* one token id: one thread does all of dwte */
}

static void fast_norm_case(int rms, int N, int C, uint64_t seed)
{
    size_t n = (size_t)N * C;
    const char *name = rms ? "rmsnorm" : "layernorm";
    char what[80];
    float *inp = tu_fnew(n), *w = tu_fnew(C), *b = tu_fnew(C), *out = tu_fnew(n), *mean = tu_fnew(N),
          *rstd = tu_fnew(N), *dout = tu_fnew(n);
    double *inp_d = tu_dnew(n), *w_d = tu_dnew(C), *b_d = tu_dnew(C), *out_d = tu_dnew(n), *mean_d = tu_dnew(N),
           *rstd_d = tu_dnew(N), *dout_d = tu_dnew(n);
    tu_fill_pair(inp, inp_d, n, seed, 2.0f);
    /* a common offset per row exercises the two-pass variance */
    for (int r = 0; r < N; r++)
        for (int c = 0; c < C; c++) {
            inp[(size_t)r * C + c] += 3.0f;
            inp_d[(size_t)r * C + c] = inp[(size_t)r * C + c];
        }
    tu_fill_pair(w, w_d, C, seed + 1, 1.5f);
    tu_fill_pair(b, b_d, C, seed + 2, 1.0f);
    tu_fill_pair(dout, dout_d, n, seed + 3, 1.0f);
    tu_fill_uniform(out, n, seed + 4, 9.0f);
    if (rms) {
        ccoe_rmsnorm_forward(out, rstd, inp, w, N, C);
        ccoe_ref_rmsnorm_forward(out_d, rstd_d, inp_d, w_d, N, C);
    } else {
        ccoe_layernorm_forward(out, mean, rstd, inp, w, b, N, C);
        ccoe_ref_layernorm_forward(out_d, mean_d, rstd_d, inp_d, w_d, b_d, N, C);
        snprintf(what, sizeof what, "%s mean N%d C%d", name, N, C);
        TU_ASSERT_CLOSE(what, mean, mean_d, N, F_ATOL, F_RTOL);
    }
    snprintf(what, sizeof what, "%s out N%d C%d", name, N, C);
    TU_ASSERT_CLOSE(what, out, out_d, n, F_ATOL, F_RTOL);
    snprintf(what, sizeof what, "%s rstd N%d C%d", name, N, C);
    TU_ASSERT_CLOSE(what, rstd, rstd_d, N, F_ATOL, F_RTOL);

    float *dinp = tu_fnew(n), *dw = tu_fnew(C), *db = tu_fnew(C), *dinp0 = tu_fnew(n), *dw0 = tu_fnew(C),
          *db0 = tu_fnew(C);
    double *dinp_d = tu_dnew(n), *dw_d = tu_dnew(C), *db_d = tu_dnew(C), *want = tu_dnew(n);
    tu_fill_uniform(dinp, n, seed + 5, 1.0f);
    tu_fill_uniform(dw, C, seed + 6, 1.0f);
    tu_fill_uniform(db, C, seed + 7, 1.0f);
    memcpy(dinp0, dinp, n * sizeof(float));
    memcpy(dw0, dw, C * sizeof(float));
    memcpy(db0, db, C * sizeof(float));
    for (int k = 0; k < 2; k++) {
        if (rms)
            ccoe_rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
        else
            ccoe_layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
    }
    if (rms)
        ccoe_ref_rmsnorm_backward(dinp_d, dw_d, dout_d, inp_d, w_d, rstd_d, N, C);
    else
        ccoe_ref_layernorm_backward(dinp_d, dw_d, db_d, dout_d, inp_d, w_d, mean_d, rstd_d, N, C);
    /* the input gradient is a difference of O(1) terms: allow a little more absolute error */
    tu_twice_plus(want, dinp0, dinp_d, n);
    snprintf(what, sizeof what, "%s dinp N%d C%d", name, N, C);
    TU_ASSERT_CLOSE(what, dinp, want, n, 4 * F_ATOL, F_RTOL);
    tu_twice_plus(want, dw0, dw_d, C);
    snprintf(what, sizeof what, "%s dweight N%d C%d", name, N, C);
    TU_ASSERT_CLOSE(what, dw, want, C, F_ATOL_SUM(2 * N), F_RTOL);
    if (!rms) {
        tu_twice_plus(want, db0, db_d, C);
        snprintf(what, sizeof what, "%s dbias N%d C%d", name, N, C);
        TU_ASSERT_CLOSE(what, db, want, C, F_ATOL_SUM(2 * N), F_RTOL);
    }
    float *fl[] = {inp, w, b, out, mean, rstd, dout, dinp, dw, db, dinp0, dw0, db0};
    double *dl[] = {inp_d, w_d, b_d, out_d, mean_d, rstd_d, dout_d, dinp_d, dw_d, db_d, want};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++)
        free(dl[i]);
}

static void test_fast_layernorm(void **state)
{
    (void)state;
    fast_norm_case(0, 3, 7, 121);
    fast_norm_case(0, 1, 1, 122);
    fast_norm_case(0, 5, 1, 123);
    fast_norm_case(0, 37, 257, 124);
    fast_norm_case(0, 64, 768, 125);
}

static void test_fast_rmsnorm(void **state)
{
    (void)state;
    fast_norm_case(1, 3, 7, 131);
    fast_norm_case(1, 1, 1, 132);
    fast_norm_case(1, 37, 257, 133);
    fast_norm_case(1, 64, 768, 134);
}

static void fast_linear_case_g(const ccoe_gemm *g, int N, int IC, int OC, int with_bias,
                               int with_dinp, uint64_t seed)
{
    size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    char what[80];
    float *inp = tu_fnew(ni), *w = tu_fnew(nw), *b = tu_fnew(OC), *out = tu_fnew(no), *dout = tu_fnew(no);
    double *inp_d = tu_dnew(ni), *w_d = tu_dnew(nw), *b_d = tu_dnew(OC), *out_d = tu_dnew(no),
           *dout_d = tu_dnew(no);
    tu_fill_pair(inp, inp_d, ni, seed, 1.0f);
    tu_fill_pair(w, w_d, nw, seed + 1, 1.0f);
    tu_fill_pair(b, b_d, OC, seed + 2, 1.0f);
    tu_fill_pair(dout, dout_d, no, seed + 3, 1.0f);
    tu_fill_uniform(out, no, seed + 4, 9.0f);
    ccoe_linear_forward(g, out, inp, w, with_bias ? b : NULL, N, IC, OC);
    ccoe_ref_linear_forward(out_d, inp_d, w_d, with_bias ? b_d : NULL, N, IC, OC);
    snprintf(what, sizeof what, "linear out N%d IC%d OC%d", N, IC, OC);
    TU_ASSERT_CLOSE(what, out, out_d, no, F_ATOL, F_RTOL);

    float *dinp = tu_fnew(ni), *dw = tu_fnew(nw), *db = tu_fnew(OC), *dinp0 = tu_fnew(ni), *dw0 = tu_fnew(nw),
          *db0 = tu_fnew(OC);
    double *dinp_d = tu_dnew(ni), *dw_d = tu_dnew(nw), *db_d = tu_dnew(OC);
    size_t nmax = ni > nw ? ni : nw;
    double *want = tu_dnew(nmax > (size_t)OC ? nmax : (size_t)OC);
    tu_fill_uniform(dinp, ni, seed + 5, 1.0f);
    tu_fill_uniform(dw, nw, seed + 6, 1.0f);
    tu_fill_uniform(db, OC, seed + 7, 1.0f);
    memcpy(dinp0, dinp, ni * sizeof(float));
    memcpy(dw0, dw, nw * sizeof(float));
    memcpy(db0, db, OC * sizeof(float));
    for (int k = 0; k < 2; k++)
        ccoe_linear_backward(g, with_dinp ? dinp : NULL, dw, with_bias ? db : NULL, dout, inp, w,
                             N, IC, OC);
    ccoe_ref_linear_backward(dinp_d, dw_d, db_d, dout_d, inp_d, w_d, N, IC, OC);
    if (with_dinp) {
        tu_twice_plus(want, dinp0, dinp_d, ni);
        snprintf(what, sizeof what, "linear dinp N%d IC%d OC%d", N, IC, OC);
        TU_ASSERT_CLOSE(what, dinp, want, ni, F_ATOL, F_RTOL);
    } else {
        assert_memory_equal(dinp, dinp0, ni * sizeof(float));
    }
    tu_twice_plus(want, dw0, dw_d, nw);
    snprintf(what, sizeof what, "linear dweight N%d IC%d OC%d", N, IC, OC);
    TU_ASSERT_CLOSE(what, dw, want, nw, F_ATOL_SUM(2 * N), F_RTOL);
    if (with_bias) {
        tu_twice_plus(want, db0, db_d, OC);
        snprintf(what, sizeof what, "linear dbias N%d IC%d OC%d", N, IC, OC);
        TU_ASSERT_CLOSE(what, db, want, OC, F_ATOL_SUM(2 * N), F_RTOL);
    } else {
        assert_memory_equal(db, db0, OC * sizeof(float));
    }
    float *fl[] = {inp, w, b, out, dout, dinp, dw, db, dinp0, dw0, db0};
    double *dl[] = {inp_d, w_d, b_d, out_d, dout_d, dinp_d, dw_d, db_d, want};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++)
        free(dl[i]);
}

static void fast_linear_case(int N, int IC, int OC, int with_bias, int with_dinp, uint64_t seed)
{
    fast_linear_case_g(&G, N, IC, OC, with_bias, with_dinp, seed);
}

static void test_fast_linear(void **state)
{
    (void)state;
    fast_linear_case(3, 5, 4, 1, 1, 141);
    fast_linear_case(1, 1, 1, 1, 1, 142);
    fast_linear_case(7, 33, 17, 0, 1, 143);
    fast_linear_case(5, 9, 6, 1, 0, 144); /* first layer: no dinp */
    fast_linear_case(130, 96, 80, 1, 1, 145);
    fast_linear_case_g(&G_BLIS, 7, 33, 17, 1, 1, 146);
    fast_linear_case_g(&G_REF, 7, 33, 17, 1, 1, 147);
}

/* Fast attention forward + backward vs the reference; qscale sharpens the softmax. */
static void fast_attention_case_g(const ccoe_gemm *g, int B, int T, int C, int H, float qscale,
                                  uint64_t seed)
{
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, nl = (size_t)B * H * T;
    char what[160];
    float *qkv = tu_fnew(nq), *out = tu_fnew(no), *lse = tu_fnew(nl), *dout = tu_fnew(no), *dqkv = tu_fnew(nq),
          *dqkv0 = tu_fnew(nq);
    double *qkv_d = tu_dnew(nq), *out_d = tu_dnew(no), *lse_d = tu_dnew(nl), *dout_d = tu_dnew(no),
           *dqkv_d = tu_dnew(nq), *want = tu_dnew(nq);
    size_t ns = ccoe_attention_scratch_floats(B, T, C, H, g->nthreads);
    float *scratch = tu_fnew(ns);
    tu_fill_pair(qkv, qkv_d, nq, seed, qscale);
    tu_fill_pair(dout, dout_d, no, seed + 1, 1.0f);
    tu_fill_uniform(out, no, seed + 2, 9.0f);
    tu_fill_uniform(lse, nl, seed + 3, 9.0f);
    tu_fill_uniform(scratch, ns, seed + 4, 9.0f);
    ccoe_attention_forward(g, out, lse, qkv, scratch, B, T, C, H);
    ccoe_ref_attention_forward(out_d, lse_d, qkv_d, B, T, C, H);
    snprintf(what, sizeof what, "attention out B%d T%d C%d H%d %s", B, T, C, H, g->kernel_set);
    TU_ASSERT_CLOSE(what, out, out_d, no, F_ATOL, F_RTOL);
    snprintf(what, sizeof what, "attention lse B%d T%d C%d H%d %s", B, T, C, H, g->kernel_set);
    TU_ASSERT_CLOSE(what, lse, lse_d, nl, F_ATOL, F_RTOL);

    tu_fill_uniform(dqkv, nq, seed + 5, 1.0f);
    memcpy(dqkv0, dqkv, nq * sizeof(float));
    tu_fill_uniform(scratch, ns, seed + 6, 9.0f);
    for (int k = 0; k < 2; k++)
        ccoe_attention_backward(g, dqkv, dout, qkv, out, lse, scratch, B, T, C, H);
    ccoe_ref_attention_backward(dqkv_d, dout_d, qkv_d, out_d, lse_d, B, T, C, H);
    tu_twice_plus(want, dqkv0, dqkv_d, nq);
    snprintf(what, sizeof what, "attention dqkv B%d T%d C%d H%d %s", B, T, C, H, g->kernel_set);
    TU_ASSERT_CLOSE(what, dqkv, want, nq, F_ATOL, F_RTOL);
    float *fl[] = {qkv, out, lse, dout, dqkv, dqkv0, scratch};
    double *dl[] = {qkv_d, out_d, lse_d, dout_d, dqkv_d, want};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++)
        free(dl[i]);
}

static void fast_attention_case(int B, int T, int C, int H, float qscale, uint64_t seed)
{
    fast_attention_case_g(&G, B, T, C, H, qscale, seed);
}

static void test_fast_attention(void **state)
{
    (void)state;
    fast_attention_case(2, 5, 6, 2, 1.0f, 151);
    fast_attention_case(1, 1, 3, 1, 1.0f, 152);
    fast_attention_case(1, 4, 4, 4, 1.0f, 153);  /* hd = 1 */
    fast_attention_case(3, 17, 40, 5, 2.0f, 154); /* B*H = 15 over 2 threads */
    fast_attention_case(2, 64, 64, 2, 1.0f, 155);
    fast_attention_case(1, 129, 48, 2, 1.0f, 156); /* several query tiles, the last of one row */
    fast_attention_case_g(&G_BLIS, 3, 17, 40, 5, 2.0f, 157);
    fast_attention_case_g(&G_BLIS, 1, 129, 48, 2, 1.0f, 158);
    fast_attention_case_g(&G_REF, 2, 70, 24, 3, 1.0f, 159);
}

static void test_attention_tiled_long(void **state)
{
    (void)state;
    fast_attention_case(1, 300, 64, 1, 1.0f, 161); /* tiles of 128, 128, 44 */
    fast_attention_case(2, 257, 48, 2, 2.0f, 162);
}

/* Changing token t0 (its q, k and v) must leave every output and lse of earlier tokens bitwise
 * unchanged and must change the output at t0. */
static void test_attention_causal(void **state)
{
    (void)state;
    const int B = 2, T = 300, C = 64, H = 2;
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, nl = (size_t)B * H * T;
    float *qkv = tu_fnew(nq), *out1 = tu_fnew(no), *out2 = tu_fnew(no), *lse1 = tu_fnew(nl),
          *lse2 = tu_fnew(nl);
    float *scratch = tu_fnew(ccoe_attention_scratch_floats(B, T, C, H, G.nthreads));
    tu_fill_uniform(qkv, nq, 171, 1.0f);
    ccoe_attention_forward(&G, out1, lse1, qkv, scratch, B, T, C, H);
    const int cases[] = {1, 127, 128, 200, T - 1};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int t0 = cases[ci], b0 = (int)(ci % 2);
        float *row = qkv + ((size_t)b0 * T + t0) * 3 * C;
        float saved[3 * 64];
        memcpy(saved, row, sizeof saved);
        for (int c = 0; c < 3 * C; c++)
            row[c] = -row[c] + 0.5f;
        ccoe_attention_forward(&G, out2, lse2, qkv, scratch, B, T, C, H);
        memcpy(row, saved, sizeof saved);
        for (int b = 0; b < B; b++) {
            int tend = b == b0 ? t0 : T; /* other batch rows: nothing may change */
            assert_memory_equal(out1 + (size_t)b * T * C, out2 + (size_t)b * T * C,
                                (size_t)tend * C * sizeof(float));
            for (int h = 0; h < H; h++)
                assert_memory_equal(lse1 + ((size_t)b * H + h) * T, lse2 + ((size_t)b * H + h) * T,
                                    (size_t)tend * sizeof(float));
        }
        float diff = 0.0f;
        for (int c = 0; c < C; c++)
            diff += fabsf(out1[((size_t)b0 * T + t0) * C + c] - out2[((size_t)b0 * T + t0) * C + c]);
        assert_true(diff > 1e-3f);
    }
    free(qkv);
    free(out1);
    free(out2);
    free(lse1);
    free(lse2);
    free(scratch);
}

/* Scratch sized for the largest T must serve every shorter T (the model sizes it once). */
static void test_attention_scratch_monotone(void **state)
{
    (void)state;
    const int CH[][2] = {{64, 1}, {256, 4}, {768, 12}, {48, 48}};
    for (size_t k = 0; k < sizeof CH / sizeof CH[0]; k++)
        for (int T = 2; T <= 1100; T++) {
            int C = CH[k][0], H = CH[k][1];
            assert_true(ccoe_attention_scratch_floats(1, T, C, H, 2) >=
                        ccoe_attention_scratch_floats(1, T - 1, C, H, 2));
            assert_true(ccoe_attention_scratch_floats(1, T, C, H, 2) >=
                        ccoe_attention_scratch_floats(1, T, C, H, 1));
        }
}

/* A NaN input must surface as a NaN loss (the trainer turns that into an error status) rather
 * than be hidden by the max subtraction or the exp clamps. */
static void test_nan_propagates(void **state)
{
    (void)state;
    const int N = 3, V = 40;
    float logits[3 * 40], probs[3 * 40], losses[3];
    int32_t tgt[3] = {1, 2, 3};
    tu_fill_uniform(logits, (size_t)N * V, 221, 2.0f);
    logits[V + 17] = NAN; /* row 1 */
    double loss = ccoe_crossentropy_forward(losses, probs, logits, tgt, N, V);
    assert_true(isnan(loss));
    assert_true(isnan(losses[1]));
    assert_false(isnan(losses[0]) || isnan(losses[2]));

    float x[20], y[20];
    tu_fill_uniform(x, 20, 222, 2.0f);
    x[5] = NAN;
    ccoe_gelu_forward(y, x, 20);
    assert_true(isnan(y[5]));
    x[10] = NAN; /* rows of 2F = 10: x[5] is up (row 0, col 0), x[10] gate (row 1, col 0) */
    ccoe_swiglu_forward(y, x, 2, 5);
    assert_true(isnan(y[0]));
    assert_true(isnan(y[5]));
    assert_false(isnan(y[1]) || isnan(y[6]));
}

static void fast_pointwise_case(int kind, int N, int F, float scale, uint64_t seed)
{
    /* kind 0: gelu on N elements; kind 1: swiglu on N rows of 2F; kind 2: residual. */
    size_t nin = kind == 1 ? (size_t)N * 2 * F : (size_t)N;
    size_t nout = kind == 1 ? (size_t)N * F : (size_t)N;
    const char *name = kind == 0 ? "gelu" : kind == 1 ? "swiglu" : "residual";
    char what[64];
    float *inp = tu_fnew(nin), *inp2 = tu_fnew(nin), *out = tu_fnew(nout), *dout = tu_fnew(nout),
          *dinp = tu_fnew(nin), *dinp2 = tu_fnew(nin), *dinp0 = tu_fnew(nin), *dinp20 = tu_fnew(nin);
    double *inp_d = tu_dnew(nin), *out_d = tu_dnew(nout), *dout_d = tu_dnew(nout), *dinp_d = tu_dnew(nin),
           *want = tu_dnew(nin);
    tu_fill_pair(inp, inp_d, nin, seed, scale);
    tu_fill_uniform(inp2, nin, seed + 1, scale);
    tu_fill_pair(dout, dout_d, nout, seed + 2, 1.0f);
    tu_fill_uniform(out, nout, seed + 3, 9.0f);
    tu_fill_uniform(dinp, nin, seed + 4, 1.0f);
    tu_fill_uniform(dinp2, nin, seed + 5, 1.0f);
    memcpy(dinp0, dinp, nin * sizeof(float));
    memcpy(dinp20, dinp2, nin * sizeof(float));
    if (kind == 0) {
        ccoe_gelu_forward(out, inp, nin);
        ccoe_ref_gelu_forward(out_d, inp_d, nin);
        for (int k = 0; k < 2; k++)
            ccoe_gelu_backward(dinp, inp, dout, nin);
        ccoe_ref_gelu_backward(dinp_d, inp_d, dout_d, nin);
    } else if (kind == 1) {
        ccoe_swiglu_forward(out, inp, N, F);
        ccoe_ref_swiglu_forward(out_d, inp_d, N, F);
        for (int k = 0; k < 2; k++)
            ccoe_swiglu_backward(dinp, inp, dout, N, F);
        ccoe_ref_swiglu_backward(dinp_d, inp_d, dout_d, N, F);
    } else {
        ccoe_residual_forward(out, inp, inp2, nin);
        for (size_t i = 0; i < nin; i++)
            out_d[i] = (double)inp[i] + (double)inp2[i];
        for (int k = 0; k < 2; k++)
            ccoe_residual_backward(dinp, dinp2, dout, nin);
        memcpy(dinp_d, dout_d, nin * sizeof(double));
        tu_twice_plus(want, dinp20, dinp_d, nin);
        snprintf(what, sizeof what, "%s db N%d", name, N);
        TU_ASSERT_CLOSE(what, dinp2, want, nin, F_ATOL, F_RTOL);
    }
    snprintf(what, sizeof what, "%s out N%d F%d", name, N, F);
    TU_ASSERT_CLOSE(what, out, out_d, nout, F_ATOL, F_RTOL);
    tu_twice_plus(want, dinp0, dinp_d, nin);
    snprintf(what, sizeof what, "%s dinp N%d F%d", name, N, F);
    TU_ASSERT_CLOSE(what, dinp, want, nin, F_ATOL, F_RTOL);
    float *fl[] = {inp, inp2, out, dout, dinp, dinp2, dinp0, dinp20};
    double *dl[] = {inp_d, out_d, dout_d, dinp_d, want};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++)
        free(dl[i]);
}

static void test_fast_gelu(void **state)
{
    (void)state;
    fast_pointwise_case(0, 1, 0, 3.0f, 181);
    fast_pointwise_case(0, 1001, 0, 6.0f, 182);
    fast_pointwise_case(0, 100003, 0, 60.0f, 183); /* tails: exp clamps, no NaN */
}

static void test_fast_swiglu(void **state)
{
    (void)state;
    fast_pointwise_case(1, 1, 1, 3.0f, 191);
    fast_pointwise_case(1, 7, 33, 6.0f, 192);
    fast_pointwise_case(1, 64, 300, 100.0f, 193);
}

static void test_fast_residual(void **state)
{
    (void)state;
    fast_pointwise_case(2, 1, 0, 1.0f, 201);
    fast_pointwise_case(2, 100003, 0, 1.0f, 202);
}

/* alias: 0 separate buffers, 1 probs == logits and dlogits == probs. */
static void fast_crossentropy_case(int N, int V, float scale, int alias, uint64_t seed)
{
    size_t n = (size_t)N * V;
    char what[80];
    int32_t *tgt = tu_inew(N);
    fill_tokens(tgt, N, V, seed);
    if (N > 2)
        tgt[N / 2] = -1;
    int counted = 0;
    for (int i = 0; i < N; i++)
        counted += tgt[i] >= 0;
    float *logits = tu_fnew(n), *probs = alias ? logits : tu_fnew(n), *losses = tu_fnew(N);
    float *dl = alias ? probs : tu_fnew(n);
    double *logits_d = tu_dnew(n), *probs_d = tu_dnew(n), *losses_d = tu_dnew(N), *dl_d = tu_dnew(n);
    tu_fill_pair(logits, logits_d, n, seed + 1, scale);
    if (!alias)
        tu_fill_uniform(probs, n, seed + 2, 9.0f);
    double loss = ccoe_crossentropy_forward(losses, probs, logits, tgt, N, V);
    double loss_d = ccoe_ref_crossentropy_forward(losses_d, probs_d, logits_d, tgt, N, V);
    snprintf(what, sizeof what, "crossentropy probs N%d V%d", N, V);
    TU_ASSERT_CLOSE(what, probs, probs_d, n, 1e-7, F_RTOL);
    snprintf(what, sizeof what, "crossentropy losses N%d V%d", N, V);
    TU_ASSERT_CLOSE(what, losses, losses_d, N, F_ATOL, F_RTOL);
    assert_true(fabs(loss - loss_d) <= F_ATOL * N + F_RTOL * fabs(loss_d));
    for (int i = 0; i < N; i++)
        if (tgt[i] < 0)
            assert_true(losses[i] == 0.0f);

    float sc = counted ? 1.0f / (float)counted : 1.0f;
    if (!alias)
        for (size_t i = 0; i < n; i++)
            dl[i] = NAN; /* overwritten, not accumulated */
    ccoe_crossentropy_backward(dl, probs, tgt, sc, N, V);
    ccoe_ref_crossentropy_backward(dl_d, probs_d, tgt, sc, N, V);
    snprintf(what, sizeof what, "crossentropy dlogits N%d V%d", N, V);
    TU_ASSERT_CLOSE(what, dl, dl_d, n, 1e-7, F_RTOL);
    free(tgt);
    free(logits);
    if (!alias) {
        free(probs);
        free(dl);
    }
    free(losses);
    free(logits_d);
    free(probs_d);
    free(losses_d);
    free(dl_d);
}

static void test_fast_crossentropy(void **state)
{
    (void)state;
    fast_crossentropy_case(4, 7, 3.0f, 0, 211);
    fast_crossentropy_case(1, 1, 3.0f, 0, 212);
    fast_crossentropy_case(5, 257, 10.0f, 1, 213);
    fast_crossentropy_case(3, 50304, 5.0f, 0, 214);
    fast_crossentropy_case(3, 50304, 5.0f, 1, 215);
    fast_crossentropy_case(6, 33, 2000.0f, 0, 216); /* huge logit spread: stable, no NaN */
}

/* The row reductions (dweight, dbias, embedding gradients, the summed loss) keep the serial
 * order, so their results are bitwise the same on 1 and 2 threads. */
static void test_thread_count_invariance(void **state)
{
    (void)state;
    const int B = 3, T = 37, C = 80, V = 11, N = B * T;
    size_t n = (size_t)N * C;
    int32_t *tok = tu_inew(N);
    fill_tokens(tok, N, V, 231);
    float *inp = tu_fnew(n), *dout = tu_fnew(n), *w = tu_fnew(C), *mean = tu_fnew(N), *rstd = tu_fnew(N),
          *out = tu_fnew(n), *losses = tu_fnew(N), *probs = tu_fnew(n);
    tu_fill_uniform(inp, n, 232, 2.0f);
    tu_fill_uniform(dout, n, 233, 1.0f);
    tu_fill_uniform(w, C, 234, 1.0f);
    ccoe_layernorm_forward(out, mean, rstd, inp, w, w, N, C);
    float *res[2][5];
    double loss[2];
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        for (int j = 0; j < 5; j++)
            res[k][j] = tu_fnew(n);
        ccoe_layernorm_backward(res[k][0], res[k][1], res[k][2], dout, inp, w, mean, rstd, N, C);
        ccoe_embed_backward(res[k][3], res[k][4], dout, tok, B, T, C);
        loss[k] = ccoe_crossentropy_forward(losses, probs, inp, tok, N, C);
    }
    omp_set_num_threads(G.nthreads);
    for (int j = 0; j < 5; j++) {
        assert_memory_equal(res[0][j], res[1][j], n * sizeof(float));
        free(res[0][j]);
        free(res[1][j]);
    }
    assert_true(loss[0] == loss[1]);
    float *fl[] = {inp, dout, w, mean, rstd, out, losses, probs};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        free(fl[i]);
    free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_embed),
        cmocka_unit_test(test_fd_layernorm),
        cmocka_unit_test(test_fd_rmsnorm),
        cmocka_unit_test(test_fd_linear),
        cmocka_unit_test(test_fd_attention),
        cmocka_unit_test(test_fd_gelu),
        cmocka_unit_test(test_fd_swiglu),
        cmocka_unit_test(test_fd_crossentropy),
        cmocka_unit_test(test_fast_embed),
        cmocka_unit_test(test_fast_layernorm),
        cmocka_unit_test(test_fast_rmsnorm),
        cmocka_unit_test(test_fast_linear),
        cmocka_unit_test(test_fast_attention),
        cmocka_unit_test(test_attention_tiled_long),
        cmocka_unit_test(test_attention_causal),
        cmocka_unit_test(test_attention_scratch_monotone),
        cmocka_unit_test(test_nan_propagates),
        cmocka_unit_test(test_fast_gelu),
        cmocka_unit_test(test_fast_swiglu),
        cmocka_unit_test(test_fast_residual),
        cmocka_unit_test(test_fast_crossentropy),
        cmocka_unit_test(test_thread_count_invariance),
    };
    return cmocka_run_group_tests(tests, setup_group, NULL);
}
