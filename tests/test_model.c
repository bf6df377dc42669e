/* test_model.c - whole-model checks: gradient of every parameter tensor against finite
 * differences of the loss (every block/norm/FFN/head variant), tiny size; forward determinism.
 * The per-kernel double-precision checks live in test_kernels.c; no allocation in the step is
 * checked by test_noalloc.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "config.h"
#include "gemm.h"
#include "model.h"
#include "optim.h"
#include "rng.h"

typedef struct variant {
    ccoe_block_kind block;
    ccoe_norm_kind norm;
    ccoe_ffn_kind ffn;
    int tied, bias;
} variant;

static ccoe_model_config tiny_config(const variant *v)
{
    ccoe_config c;
    ccoe_config_defaults(&c);
    ccoe_model_config m = c.model;
    m.n_layer = 2;
    m.n_embd = 16;
    m.n_head = 2;
    m.ffn_hidden = v->ffn == CCOE_FFN_SWIGLU ? 24 : 32;
    m.vocab_size = 40;
    m.seq_len = 7;
    m.block = v->block;
    m.norm = v->norm;
    m.ffn = v->ffn;
    m.tied_head = v->tied;
    m.bias = v->bias;
    m.init_std = 0.3; /* large weights: gradients far from zero, a real test */
    return m;
}

typedef struct batch {
    const int32_t *tok, *tgt;
    int B, T;
} batch;

static double loss_at(ccoe_model *m, void *ctx)
{
    const batch *b = ctx;
    long n = 0;
    double s = ccoe_model_forward(m, b->tok, b->tgt, NULL, b->B, b->T, &n);
    return s / (double)n;
}

static void check_variant(const variant *v)
{
    ccoe_gemm g;
    ccoe_error err = {0};
    assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_REF, 1, &err), CCOE_OK);
    ccoe_model_config mc = tiny_config(v);
    const int B = 3, T = 7;
    ccoe_model m;
    assert_int_equal(ccoe_model_init(&m, &mc, NULL, B, T, &g, 1, &err), CCOE_OK);
    ccoe_model_init_weights(&m, 7, CCOE_INIT_RANDOM);
    /* perturb the norm weights and biases away from 1/0 so their gradients are generic */
    ccoe_rng r;
    ccoe_rng_seed(&r, 99);
    for (int i = 0; i < m.n_params; i++)
        if (m.params[i].ndim == 1)
            for (size_t j = 0; j < m.params[i].numel; j++)
                m.param_block[m.params[i].offset + j] += 0.2f * (ccoe_rng_uniform(&r) - 0.5f);
    int32_t tok[21], tgt[21];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)ccoe_rng_below(&r, (uint64_t)mc.vocab_size);
        tgt[i] = (int32_t)ccoe_rng_below(&r, (uint64_t)mc.vocab_size);
    }
    tgt[4] = -1; /* an ignored position */

    ccoe_model_zero_grad(&m);
    long count = 0;
    ccoe_model_forward(&m, tok, tgt, NULL, B, T, &count);
    assert_int_equal(count, B * T - 1);
    ccoe_model_backward(&m, 1.0f / (float)count, 1.0f);

    /* For each tensor: derivative along a random direction confined to it. */
    char what[96];
    snprintf(what, sizeof what, "variant block=%d norm=%d ffn=%d tied=%d bias=%d", v->block,
             v->norm, v->ffn, v->tied, v->bias);
    batch bt = {tok, tgt, B, T};
    assert_int_equal(tu_model_gradcheck(&m, loss_at, &bt, 1234, 2e-3f, 2e-3, 2e-2, what), 0);
    ccoe_model_free(&m);
}

static void test_gradcheck_all_variants(void **state)
{
    (void)state;
    for (int block = 0; block < 2; block++)
        for (int norm = 0; norm < 2; norm++)
            for (int ffn = 0; ffn < 2; ffn++)
                for (int tb = 0; tb < 2; tb++) {
                    variant v = {(ccoe_block_kind)block, (ccoe_norm_kind)norm,
                                 (ccoe_ffn_kind)ffn, tb, !tb};
                    check_variant(&v);
                }
}

/* The blocks of LLaMA/Qwen2-style bases: RoPE on q and k, grouped-query attention (H 4, Hkv 2),
 * biases on q/k/v only, SwiGLU, RMSNorm with its own epsilon, an untied head; pre- and post-LN,
 * and with every linear layer biased too. Every tensor's gradient against finite differences;
 * the layout has the GQA qkv shape and no position table. */
static void test_gradcheck_rope_gqa(void **state)
{
    (void)state;
    for (int k = 0; k < 3; k++) {
        ccoe_gemm g;
        ccoe_error err = {0};
        assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_REF, 1, &err), CCOE_OK);
        variant v = {k == 1 ? CCOE_BLOCK_POST_LN : CCOE_BLOCK_PRE_LN, CCOE_NORM_RMSNORM,
                     CCOE_FFN_SWIGLU, 0, k == 2};
        ccoe_model_config mc = tiny_config(&v);
        mc.n_head = 4; /* head size 4 */
        mc.n_kv_head = 2;
        mc.pos = CCOE_POS_ROPE;
        mc.rope_theta = 50.0; /* fast rotations over the 7 positions: the angles matter */
        mc.qkv_bias = 1;
        mc.norm_eps = 1e-3;
        const int B = 3, T = 7;
        ccoe_model m;
        assert_int_equal(ccoe_model_init(&m, &mc, NULL, B, T, &g, 1, &err), CCOE_OK);
        assert_null(ccoe_model_find_param(&m, "wpe"));
        const ccoe_param *q = ccoe_model_find_param(&m, "blocks.0.attn.qkv.weight");
        assert_non_null(q);
        assert_int_equal(q->shape[0], (4 + 2 * 2) * 4);
        assert_int_equal(q->shape[1], 16);
        const ccoe_param *qb = ccoe_model_find_param(&m, "blocks.1.attn.qkv.bias");
        assert_non_null(qb);
        assert_int_equal(qb->numel, 32);
        if (k == 2)
            assert_non_null(ccoe_model_find_param(&m, "blocks.0.attn.proj.bias"));
        else
            assert_null(ccoe_model_find_param(&m, "blocks.0.attn.proj.bias"));
        ccoe_model_init_weights(&m, 7, CCOE_INIT_RANDOM);
        ccoe_rng r;
        ccoe_rng_seed(&r, 99);
        for (int i = 0; i < m.n_params; i++)
            if (m.params[i].ndim == 1)
                for (size_t j = 0; j < m.params[i].numel; j++)
                    m.param_block[m.params[i].offset + j] += 0.2f * (ccoe_rng_uniform(&r) - 0.5f);
        int32_t tok[21], tgt[21];
        for (int i = 0; i < B * T; i++) {
            tok[i] = (int32_t)ccoe_rng_below(&r, (uint64_t)mc.vocab_size);
            tgt[i] = (int32_t)ccoe_rng_below(&r, (uint64_t)mc.vocab_size);
        }
        ccoe_model_zero_grad(&m);
        long count = 0;
        ccoe_model_forward(&m, tok, tgt, NULL, B, T, &count);
        ccoe_model_backward(&m, 1.0f / (float)count, 1.0f);
        char what[96];
        snprintf(what, sizeof what, "rope gqa qkv_bias swiglu rmsnorm untied, case %d", k);
        batch bt = {tok, tgt, B, T};
        assert_int_equal(tu_model_gradcheck(&m, loss_at, &bt, 1234, 2e-3f, 2e-3, 2e-2, what), 0);

        ccoe_model_free(&m);
    }
}

/* The same weights and batch give bit-identical losses and gradients on a second run, and a
 * smaller batch shape than the allocated one works. */
static void test_forward_deterministic(void **state)
{
    (void)state;
    ccoe_gemm g;
    ccoe_error err = {0};
    assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_AUTO, 2, &err), CCOE_OK);
    variant v = {CCOE_BLOCK_PRE_LN, CCOE_NORM_LAYERNORM, CCOE_FFN_GELU, 1, 1};
    ccoe_model_config mc = tiny_config(&v);
    ccoe_model m;
    assert_int_equal(ccoe_model_init(&m, &mc, NULL, 4, 7, &g, 2, &err), CCOE_OK);
    ccoe_model_init_weights(&m, 3, CCOE_INIT_RANDOM);
    int32_t tok[28], tgt[28];
    for (int i = 0; i < 28; i++) {
        tok[i] = i % mc.vocab_size;
        tgt[i] = (i * 7) % mc.vocab_size;
    }
    float *g1 = malloc(m.num_params * sizeof(float));
    double l1 = 0, l2 = 0;
    for (int rep = 0; rep < 2; rep++) {
        ccoe_model_zero_grad(&m);
        long n;
        double l = ccoe_model_forward(&m, tok, tgt, NULL, 2, 5, &n);
        assert_int_equal(n, 10);
        ccoe_model_backward(&m, 0.1f, 1.0f);
        if (rep == 0) {
            l1 = l;
            memcpy(g1, m.grad_block, m.num_params * sizeof(float));
        } else {
            l2 = l;
            assert_memory_equal(g1, m.grad_block, m.num_params * sizeof(float));
        }
    }
    assert_true(l1 == l2);
    free(g1);
    ccoe_model_free(&m);
}

/* Parameter layout: every tensor is inside the block, 64-byte aligned, no overlaps, each block's
 * tensors contiguous, and the count matches the closed form. */
static void test_layout(void **state)
{
    (void)state;
    ccoe_gemm g;
    ccoe_error err = {0};
    assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_REF, 1, &err), CCOE_OK);
    variant v = {CCOE_BLOCK_PRE_LN, CCOE_NORM_LAYERNORM, CCOE_FFN_GELU, 0, 1};
    ccoe_model_config mc = tiny_config(&v);
    ccoe_model m;
    assert_int_equal(ccoe_model_init(&m, &mc, NULL, 1, 7, &g, 1, &err), CCOE_OK);
    size_t C = 16, F = 32, V = 40, T = 7, L = 2;
    size_t per_block = 2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + F * C + F + C * F + C;
    size_t expect = V * C + T * C + L * per_block + 2 * C + V * C;
    size_t sum = 0, end = 0;
    int last_block = -1;
    for (int i = 0; i < m.n_params; i++) {
        const ccoe_param *p = &m.params[i];
        sum += p->numel;
        assert_true(p->offset >= end);
        assert_int_equal(p->offset % 16, 0);
        end = p->offset + p->numel;
        assert_true(end <= m.num_params);
        if (p->block >= 0) {
            assert_true(p->block >= last_block);
            last_block = p->block;
        }
    }
    assert_int_equal(sum, expect);
    assert_non_null(ccoe_model_find_param(&m, "blocks.1.mlp.proj.weight"));
    assert_non_null(ccoe_model_find_param(&m, "lm_head.weight"));
    assert_null(ccoe_model_find_param(&m, "blocks.2.ln1.weight"));
    ccoe_model_free(&m);
}

/* Bad shapes are refused with a message, not an assertion. */
static void test_bad_shape(void **state)
{
    (void)state;
    ccoe_gemm g;
    ccoe_error err = {0};
    assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_REF, 1, &err), CCOE_OK);
    variant v = {CCOE_BLOCK_PRE_LN, CCOE_NORM_LAYERNORM, CCOE_FFN_GELU, 1, 1};
    ccoe_model_config mc = tiny_config(&v);
    ccoe_model m;
    assert_int_equal(ccoe_model_init(&m, &mc, NULL, 2, 8, &g, 1, &err), CCOE_ERR_ARG);
    assert_non_null(strstr(err.msg, "seq_len"));
    ccoe_model_free(&m);
}

/* The optimizer: the fused clipped update equals scaling the gradients and then updating, bit
 * for bit, over several steps and with a filter; it leaves the gradients unscaled; the gradient
 * norm matches a plain sum of squares (odd lengths, 1 and 2 threads). */
static int even_params(const ccoe_param *p, void *ctx)
{
    (void)ctx;
    return p->block % 2 == 0;
}

static void test_adamw_fused_clip(void **state)
{
    (void)state;
    ccoe_gemm g;
    ccoe_error err = {0};
    assert_int_equal(ccoe_gemm_init(&g, CCOE_GEMM_REF, 2, &err), CCOE_OK);
    variant v = {CCOE_BLOCK_PRE_LN, CCOE_NORM_LAYERNORM, CCOE_FFN_GELU, 0, 1};
    ccoe_model_config mc = tiny_config(&v);
    mc.n_embd = 64; /* enough parameters for the threaded paths */
    mc.ffn_hidden = 256;
    ccoe_config c;
    ccoe_config_defaults(&c);
    ccoe_model m;
    assert_int_equal(ccoe_model_init(&m, &mc, NULL, 1, 7, &g, 2, &err), CCOE_OK);
    const size_t n = m.num_params;
    assert_true(n > 65536);
    float *w0 = malloc(n * sizeof(float)), *g0 = malloc(n * sizeof(float));
    float *w1 = malloc(n * sizeof(float));
    ccoe_rng r;
    ccoe_rng_seed(&r, 5);
    for (size_t i = 0; i < n; i++) {
        w0[i] = (float)ccoe_rng_normal(&r);
        g0[i] = (float)ccoe_rng_normal(&r) * 0.01f;
    }
    /* the norm against a plain double loop, odd ranges */
    const size_t ranges[][2] = {{0, n}, {3, n - 5}, {7, 40}, {11, 12}, {0, 70001}};
    for (size_t k = 0; k < sizeof ranges / sizeof ranges[0]; k++) {
        double s = 0.0;
        for (size_t i = ranges[k][0]; i < ranges[k][1]; i++)
            s += (double)g0[i] * (double)g0[i];
        double got = ccoe_grad_norm(g0, ranges[k][0], ranges[k][1]);
        assert_true(fabs(got - sqrt(s)) <= 1e-12 * sqrt(s));
    }
    for (int filtered = 0; filtered < 2; filtered++) {
        ccoe_adamw a, b;
        assert_int_equal(ccoe_adamw_init(&a, n, &err), CCOE_OK);
        assert_int_equal(ccoe_adamw_init(&b, n, &err), CCOE_OK);
        memset(a.m, 0, n * sizeof(float));
        memset(a.v, 0, n * sizeof(float));
        memset(b.m, 0, n * sizeof(float));
        memset(b.v, 0, n * sizeof(float));
        int (*f)(const ccoe_param *, void *) = filtered ? even_params : NULL;
        memcpy(w1, w0, n * sizeof(float));
        for (int step = 0; step < 3; step++) {
            const float s = step == 1 ? 1.0f : 0.37f + 0.1f * (float)step;
            /* fused */
            memcpy(m.param_block, w0, n * sizeof(float));
            memcpy(m.grad_block, g0, n * sizeof(float));
            ccoe_adamw_step_scaled(&a, &m, &c.train, 1e-3, s, f, NULL);
            assert_memory_equal(m.grad_block, g0, n * sizeof(float));
            memcpy(w0, m.param_block, n * sizeof(float));
            /* separate passes */
            memcpy(m.param_block, w1, n * sizeof(float));
            memcpy(m.grad_block, g0, n * sizeof(float));
            ccoe_grad_scale(m.grad_block, 0, n, s);
            ccoe_adamw_step(&b, &m, &c.train, 1e-3, f, NULL);
            memcpy(w1, m.param_block, n * sizeof(float));
            assert_memory_equal(w0, w1, n * sizeof(float));
            assert_memory_equal(a.m, b.m, n * sizeof(float));
            assert_memory_equal(a.v, b.v, n * sizeof(float));
        }
        ccoe_adamw_free(&a);
        ccoe_adamw_free(&b);
    }
    free(w0);
    free(g0);
    free(w1);
    ccoe_model_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_gradcheck_all_variants),
        cmocka_unit_test(test_gradcheck_rope_gqa),
        cmocka_unit_test(test_forward_deterministic),
        cmocka_unit_test(test_bad_shape),
        cmocka_unit_test(test_adamw_fused_clip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
