/* test_moe_model.c - the transformer with Mixture-of-Experts FFNs ([moe], src/moe.h in
 * src/model.c): whole-model finite-difference check of every parameter tensor for each gate
 * (objective = mean CE + the summed aux losses, noise held fixed by the step key), a one-expert
 * MoE equals the dense model with the same weights, routing noise only in training, the
 * parameter layout, and the [moe] cross-field validation. The layer itself is checked in
 * test_moe.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "moe_cases.h"

#include "config.h"
#include "gemm.h"
#include "model.h"
#include "rng.h"
#include "session.h"

enum { B = 3, T = 7 };

typedef struct moe_case {
    const char *gate;
    int E, K, every;
    ccoe_block_kind block;
    double capacity;
    double w_importance, w_load, w_switch, w_z, noise_eps;
    int n_shared, granularity; /* DeepSeekMoE: shared experts, fine-grained experts (0 = 1) */
} moe_case;

static ccoe_config tiny_moe_config(const moe_case *mc)
{
    ccoe_config c;
    ccoe_config_defaults(&c);
    c.model.n_layer = 2;
    c.model.n_embd = 16;
    c.model.n_head = 2;
    c.model.ffn_hidden = 32;
    c.model.vocab_size = 40;
    c.model.seq_len = T;
    c.model.block = mc->block;
    c.model.tied_head = 0;
    c.model.init_std = 0.3; /* large weights: gradients far from zero */
    c.train.batch_size = B;
    snprintf(c.moe.gate, sizeof c.moe.gate, "%s", mc->gate);
    c.moe.n_experts = mc->E;
    c.moe.top_k = mc->K;
    c.moe.every = mc->every;
    c.moe.expert_hidden = 12;
    c.moe.capacity_factor = mc->capacity;
    c.moe.noise_eps = mc->noise_eps;
    c.moe.w_importance = mc->w_importance;
    c.moe.w_load = mc->w_load;
    c.moe.w_switch = mc->w_switch;
    c.moe.w_z = mc->w_z;
    c.moe.n_shared = mc->n_shared;
    if (mc->granularity > 0)
        c.moe.granularity = mc->granularity;
    return c;
}

static void open_model(ccoe_model *m, ccoe_config *c, ccoe_gemm *g)
{
    ccoe_error err = {0};
    assert_int_equal(ccoe_gemm_init(g, CCOE_GEMM_REF, 1, &err), CCOE_OK);
    if (ccoe_session_validate(c, &err) != CCOE_OK)
        fail_msg("validate: %s", err.msg);
    if (ccoe_model_init_moe(m, &c->model, NULL, &c->moe, B, T, g, 1, &err) != CCOE_OK)
        fail_msg("model: %s", err.msg);
}

typedef struct batch {
    const int32_t *tok, *tgt, *dom;
} batch;

/* CE mean + aux of one forward (noise keyed by the model's fixed step). */
static double objective(ccoe_model *m, void *ctx)
{
    const batch *b = ctx;
    long n = 0;
    double s = ccoe_model_forward(m, b->tok, b->tgt, b->dom, B, T, &n);
    return s / (double)n + m->aux_loss;
}

static void gradcheck_case(const moe_case *mc)
{
    ccoe_config c = tiny_moe_config(mc);
    ccoe_gemm g;
    ccoe_model m;
    open_model(&m, &c, &g);
    assert_true(m.n_moe >= 1);
    ccoe_model_init_weights(&m, 7, CCOE_INIT_RANDOM);
    ccoe_rng r;
    ccoe_rng_seed(&r, 99);
    /* norm weights, biases and the (zero-initialised) noise weights made generic */
    for (int i = 0; i < m.n_params; i++)
        if (m.params[i].ndim == 1 || strstr(m.params[i].name, "noise_weight"))
            for (size_t j = 0; j < m.params[i].numel; j++)
                m.param_block[m.params[i].offset + j] += 0.2f * (ccoe_rng_uniform(&r) - 0.5f);
    int32_t tok[B * T], tgt[B * T], dom[B] = {0, 2, 1};
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)ccoe_rng_below(&r, 40);
        tgt[i] = (int32_t)ccoe_rng_below(&r, 40);
    }
    tgt[4] = -1;
    m.train = 1; /* noisy gates draw noise: the same (seed, step) gives the same noise */
    m.seed = 1234;
    m.step = 5;
    m.token_offset = 0;

    ccoe_model_zero_grad(&m);
    long count = 0;
    const double obj0 = ccoe_model_forward(&m, tok, tgt, dom, B, T, &count) / (double)count +
                        m.aux_loss;
    const double aux0 = m.aux_loss;
    if (mc->w_switch > 0 || mc->w_z > 0 || mc->w_importance > 0)
        assert_true(aux0 > 0.0);
    ccoe_model_backward(&m, 1.0f / (float)count, 1.0f);

    batch bt = {tok, tgt, dom};
    char what[96];
    snprintf(what, sizeof what, "gate %s E=%d K=%d every=%d block=%d shared=%d granularity=%d",
             mc->gate, mc->E, mc->K, mc->every, mc->block, mc->n_shared, mc->granularity);
    assert_int_equal(tu_model_gradcheck(&m, objective, &bt, 99, 1e-3f, 3e-3, 2e-2, what), 0);
    int checked_moe = 0;
    for (int i = 0; i < m.n_params; i++)
        checked_moe += strstr(m.params[i].name, ".moe.") != NULL;
    assert_true(checked_moe > 0);
    /* the unperturbed objective is reproduced (noise is a function of the key, not state) */
    assert_true(objective(&m, &bt) == obj0);
    ccoe_model_free(&m);
}

static void test_gradcheck_gates(void **state)
{
    (void)state;
    const moe_case cases[] = {
        /* gate, E, K, every, block, capacity, w_imp, w_load, w_switch, w_z, noise_eps */
        {"softmax", 3, 3, 1, CCOE_BLOCK_PRE_LN, 0, 0.1, 0, 0.1, 0.01, 0, 0, 0},
        {"topk", 4, 2, 1, CCOE_BLOCK_PRE_LN, 0, 0.1, 0, 0.1, 0.01, 0, 0, 0},
        {"topk", 4, 2, 1, CCOE_BLOCK_POST_LN, 1.0, 0, 0, 0.1, 0.01, 0, 0, 0}, /* capacity drops */
        {"noisy_topk", 4, 2, 2, CCOE_BLOCK_PRE_LN, 0, 0.1, 0.1, 0.1, 0.01, 0.01, 0, 0},
        {"noisy_topk", 4, 1, 1, CCOE_BLOCK_PRE_LN, 0, 0.1, 0.1, 0.1, 0.01, 0, 0, 0},
        {"domain", 3, 1, 1, CCOE_BLOCK_PRE_LN, 0, 0, 0, 0, 0, 0, 0, 0},
        /* DeepSeekMoE: shared experts, also with the domain rule and under a capacity */
        {"topk", 4, 2, 1, CCOE_BLOCK_PRE_LN, 0, 0.1, 0, 0.1, 0.01, 0, 1, 0},
        {"lossfree", 4, 2, 1, CCOE_BLOCK_POST_LN, 1.0, 0, 0, 0.1, 0.01, 0, 2, 0},
        {"domain", 3, 1, 1, CCOE_BLOCK_PRE_LN, 0, 0, 0, 0, 0, 0, 1, 0},
        /* fine-grained experts: 2 x 3 = 6 experts of width 6, top-4; with a shared one */
        {"topk", 3, 2, 1, CCOE_BLOCK_PRE_LN, 0, 0.1, 0, 0.1, 0.01, 0, 1, 2},
        {"noisy_topk", 2, 1, 1, CCOE_BLOCK_PRE_LN, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01, 0, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        gradcheck_case(&cases[i]);
}

/* Every gate of the registry through the whole model: its dropless case of
 * tests/util/moe_cases.c (top_k and balancing losses from the gate's flags), checked by finite
 * differences. A gate added to variants/gates.def is checked here without an edit. */
static void test_gradcheck_registry(void **state)
{
    (void)state;
    tu_moe_case reg[TU_MOE_MAX_REGISTRY_CASES];
    int n = tu_moe_registry_cases(reg, TU_MOE_MAX_REGISTRY_CASES, 0, 0, 0), gates = 0;
    assert_true(n >= ccoe_gate_count());
    const char *last = "";
    for (int i = 0; i < n; i++) {
        const tu_moe_case *c = &reg[i];
        if (c->cf != 0.0 || c->train <= 0 || strcmp(c->gate, last) == 0)
            continue;
        last = c->gate;
        moe_case mc = {c->gate, c->E, c->K, 1, CCOE_BLOCK_PRE_LN, 0.0, c->w_imp, c->w_load,
                       c->w_switch, c->w_z, c->noise_eps, c->n_shared, 0};
        gradcheck_case(&mc);
        gates++;
    }
    assert_int_equal(gates, ccoe_gate_count());
}

/* topk with E = 1, K = 1, expert_hidden = F, dropless, no aux: the dense model's loss and
 * gradients with the FFN weights copied into expert 0. */
static void test_one_expert_is_dense(void **state)
{
    (void)state;
    moe_case mc = {"topk", 1, 1, 1, CCOE_BLOCK_PRE_LN, 0, 0, 0, 0, 0, 0, 0, 0};
    ccoe_config c = tiny_moe_config(&mc);
    c.moe.expert_hidden = 0; /* = model.ffn_hidden */
    ccoe_gemm g;
    ccoe_model moe_m;
    open_model(&moe_m, &c, &g);
    ccoe_model dense;
    ccoe_error err = {0};
    assert_int_equal(ccoe_model_init(&dense, &c.model, NULL, B, T, &g, 1, &err), CCOE_OK);
    ccoe_model_init_weights(&dense, 3, CCOE_INIT_RANDOM);
    ccoe_model_init_weights(&moe_m, 3, CCOE_INIT_RANDOM);
    static const char *const map[][2] = {{"mlp.fc.weight", "moe.experts.0.fc.weight"},
                                         {"mlp.fc.bias", "moe.experts.0.fc.bias"},
                                         {"mlp.proj.weight", "moe.experts.0.proj.weight"},
                                         {"mlp.proj.bias", "moe.experts.0.proj.bias"}};
    for (int i = 0; i < dense.n_params; i++) {
        const ccoe_param *p = &dense.params[i];
        char name[CCOE_PARAM_NAME];
        snprintf(name, sizeof name, "%s", p->name);
        for (size_t k = 0; k < 4; k++) {
            char *at = strstr(name, map[k][0]);
            if (at)
                snprintf(at, sizeof name - (size_t)(at - name), "%s", map[k][1]);
        }
        const ccoe_param *q = ccoe_model_find_param(&moe_m, name);
        if (!q)
            fail_msg("MoE model lacks %s", name);
        assert_int_equal(q->numel, p->numel);
        memcpy(moe_m.param_block + q->offset, dense.param_block + p->offset,
               p->numel * sizeof(float));
    }
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 5 + 1) % 40;
        tgt[i] = (i * 7 + 3) % 40;
    }
    long n1, n2;
    ccoe_model_zero_grad(&dense);
    ccoe_model_zero_grad(&moe_m);
    double l1 = ccoe_model_forward(&dense, tok, tgt, NULL, B, T, &n1);
    double l2 = ccoe_model_forward(&moe_m, tok, tgt, NULL, B, T, &n2);
    assert_int_equal(n1, n2);
    assert_true(fabs(l1 - l2) <= 1e-6 * fabs(l1));
    assert_true(moe_m.aux_loss == 0.0);
    ccoe_model_backward(&dense, 1.0f / (float)n1, 1.0f);
    ccoe_model_backward(&moe_m, 1.0f / (float)n2, 1.0f);
    for (int i = 0; i < dense.n_params; i++) {
        const ccoe_param *p = &dense.params[i];
        if (strstr(p->name, "mlp."))
            continue;
        const ccoe_param *q = ccoe_model_find_param(&moe_m, p->name);
        assert_non_null(q);
        for (size_t j = 0; j < p->numel; j++) {
            float a = dense.grad_block[p->offset + j], b = moe_m.grad_block[q->offset + j];
            assert_true(fabsf(a - b) <= 1e-5f + 1e-4f * fabsf(a));
        }
    }
    ccoe_model_free(&dense);
    ccoe_model_free(&moe_m);
}

/* Noise only in training and keyed by the step; statistics and totals are filled. */
static void test_noise_and_stats(void **state)
{
    (void)state;
    moe_case mc = {"noisy_topk", 4, 2, 1, CCOE_BLOCK_PRE_LN, 1.25, 0, 0, 0.01, 0.001, 0.5, 0, 0};
    ccoe_config c = tiny_moe_config(&mc);
    ccoe_gemm g;
    ccoe_model m;
    open_model(&m, &c, &g);
    ccoe_model_init_weights(&m, 5, CCOE_INIT_RANDOM);
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 3 + 2) % 40;
        tgt[i] = (i * 11 + 1) % 40;
    }
    long n;
    m.train = 0;
    m.step = 1;
    double e1 = ccoe_model_forward(&m, tok, tgt, NULL, B, T, &n);
    m.step = 2;
    double e2 = ccoe_model_forward(&m, tok, tgt, NULL, B, T, &n);
    assert_true(e1 == e2);
    m.train = 1;
    double t1 = ccoe_model_forward(&m, tok, tgt, NULL, B, T, &n);
    double t1b = ccoe_model_forward(&m, tok, tgt, NULL, B, T, &n);
    m.step = 3;
    double t2 = ccoe_model_forward(&m, tok, tgt, NULL, B, T, &n);
    assert_true(t1 == t1b);
    assert_true(t1 != t2);
    assert_true(t1 != e1);
    /* stats: every slot kept or dropped; totals only while collecting */
    ccoe_model_moe_reset_totals(&m);
    m.collect_moe = 1;
    ccoe_model_forward(&m, tok, tgt, NULL, B, T, &n);
    m.collect_moe = 0;
    ccoe_model_forward(&m, tok, tgt, NULL, B, T, &n);
    for (int i = 0; i < m.n_moe; i++) {
        const ccoe_moe_stats *s = &m.moe_stats[i];
        int64_t kept = 0, tot = 0;
        for (int e = 0; e < s->E; e++) {
            kept += s->tokens_per_expert[e];
            tot += m.moe_tot_tokens[(size_t)i * s->E + e];
        }
        assert_int_equal(s->N, B * T);
        assert_int_equal(kept + s->dropped_slots, (int64_t)B * T * 2);
        assert_int_equal(m.moe_tot_rows[i], B * T);
        assert_int_equal(tot + m.moe_tot_dropped[3 * i], (int64_t)B * T * 2);
    }
    ccoe_model_free(&m);
}

/* Layout: MoE blocks hold the layer's tensors in its order, contiguous, 64-byte aligned; the
 * dense blocks keep mlp.*. */
static void test_layout(void **state)
{
    (void)state;
    moe_case mc = {"noisy_topk", 4, 2, 2, CCOE_BLOCK_PRE_LN, 1.25, 0, 0, 0.01, 0.001, 0, 0, 0};
    ccoe_config c = tiny_moe_config(&mc);
    ccoe_gemm g;
    ccoe_model m;
    open_model(&m, &c, &g);
    assert_int_equal(m.n_moe, 1);
    assert_int_equal(m.moe_layer[0], 1);
    assert_non_null(ccoe_model_find_param(&m, "blocks.0.mlp.fc.weight"));
    assert_null(ccoe_model_find_param(&m, "blocks.1.mlp.fc.weight"));
    const ccoe_param *r = ccoe_model_find_param(&m, "blocks.1.moe.router.weight");
    const ccoe_param *nw = ccoe_model_find_param(&m, "blocks.1.moe.router.noise_weight");
    const ccoe_param *e3 = ccoe_model_find_param(&m, "blocks.1.moe.experts.3.proj.bias");
    assert_non_null(r);
    assert_non_null(nw);
    assert_non_null(e3);
    assert_int_equal(r->offset, m.moe_offset[0]);
    assert_int_equal(r->shape[0], 4);
    assert_int_equal(r->shape[1], 16);
    assert_true(e3->offset + e3->numel <= m.moe_offset[0] + m.moe.num_params);
    const ccoe_param *fc = ccoe_model_find_param(&m, "blocks.1.moe.experts.2.fc.weight");
    assert_non_null(fc);
    assert_int_equal(fc->offset, m.moe_offset[0] + m.moe.off_experts + 2 * m.moe.expert_stride);
    assert_int_equal(fc->shape[0], 12);
    for (int i = 0; i < m.n_params; i++)
        assert_int_equal(m.params[i].offset % 16, 0);
    /* noise weights start at 0, the router does not */
    float nsum = 0, rsum = 0;
    ccoe_model_init_weights(&m, 1, CCOE_INIT_RANDOM);
    for (size_t j = 0; j < nw->numel; j++)
        nsum += fabsf(m.param_block[nw->offset + j]);
    for (size_t j = 0; j < r->numel; j++)
        rsum += fabsf(m.param_block[r->offset + j]);
    assert_true(nsum == 0.0f);
    assert_true(rsum > 0.0f);
    ccoe_model_free(&m);
}

static void expect_invalid(const char *const *sets, const char *needle)
{
    ccoe_config c;
    ccoe_config_defaults(&c);
    ccoe_error err = {0};
    for (int i = 0; sets[i]; i++)
        assert_int_equal(ccoe_config_set(&c, sets[i], &err), CCOE_OK);
    ccoe_status st = ccoe_session_validate(&c, &err);
    if (st != CCOE_ERR_CONFIG || !strstr(err.msg, needle))
        fail_msg("expected a config error naming '%s', got %d: %s", needle, st, err.msg);
}

static void test_validate(void **state)
{
    (void)state;
    ccoe_config c;
    ccoe_config_defaults(&c);
    ccoe_error err = {0};
    assert_string_equal(c.moe.gate, "none");
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    assert_int_equal(ccoe_config_set(&c, "moe.gate=noisy_topk", &err), CCOE_OK);
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    assert_int_equal(ccoe_config_set(&c, "moe.gate=switch", &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "moe.gate"));

    const char *k_gt_e[] = {"moe.gate=topk", "moe.n_experts=4", "moe.top_k=9", NULL};
    expect_invalid(k_gt_e, "moe.top_k");
    const char *cap[] = {"moe.gate=topk", "moe.capacity_factor=0.5", NULL};
    expect_invalid(cap, "moe.capacity_factor");
    const char *noise[] = {"moe.gate=topk", "moe.noise_eps=0.01", NULL};
    expect_invalid(noise, "moe.noise_eps");
    const char *load[] = {"moe.gate=softmax", "moe.top_k=8", "moe.w_load=0.1", NULL};
    expect_invalid(load, "moe.w_load");
    const char *every[] = {"moe.gate=topk", "moe.every=5", NULL};
    expect_invalid(every, "moe.every");
    const char *sm[] = {"moe.gate=softmax", NULL};
    expect_invalid(sm, "top_k");
    const char *dom[] = {"moe.gate=domain", "moe.top_k=1", NULL};
    expect_invalid(dom, "moe.w_switch");
    const char *renorm[] = {"moe.gate=noisy_topk", "moe.renormalize=false", NULL};
    expect_invalid(renorm, "moe.renormalize");
    /* gate none ignores the other [moe] keys: the dense model */
    ccoe_config_defaults(&c);
    assert_int_equal(ccoe_config_set(&c, "moe.top_k=9", &err), CCOE_OK);
    assert_int_equal(ccoe_config_set(&c, "moe.n_experts=4", &err), CCOE_OK);
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_one_expert_is_dense),
        cmocka_unit_test(test_noise_and_stats),
        cmocka_unit_test(test_gradcheck_gates),
        cmocka_unit_test(test_gradcheck_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
