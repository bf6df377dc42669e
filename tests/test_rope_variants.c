/* test_rope_variants.c - every variant on LLaMA/Qwen2-style blocks: a RoPE + GQA (H 4, Hkv 2)
 * + q/k/v-only bias + SwiGLU + RMSNorm + untied-head model trained a few steps through every
 * registered MoE gate (variants/gates.def) and every registered CCoE form (variants/forms.def,
 * pre- and post-LN), and isolated expert training of each form's experts. Each run must keep
 * the loss finite and lower it on a fixed batch; isolated training must leave every tensor
 * outside the trained expert bit for bit unchanged. A gate or form added to a registry is run
 * here without an edit of this file. (Gradients of these blocks are checked by finite
 * differences in test_model.c, decoding in test_decode.c.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "config.h"
#include "form.h"
#include "gate.h"
#include "taskmap.h"
#include "gemm.h"
#include "model.h"
#include "moe_cases.h"
#include "optim.h"
#include "rng.h"
#include "session.h"

enum { B = 6, T = 8, V = 40, STEPS = 12 };

static const char k_domains[3][CCOE_NAME_LEN] = {"arith", "code", "prose"};

/* The LLaMA/Qwen2-style block settings every case starts from. */
static const char *const k_rope_sets[] = {
    "model.pos=rope",      "model.n_head=4",        "model.n_kv_head=2",
    "model.qkv_bias=true", "model.bias=false",      "model.ffn=swiglu",
    "model.norm=rmsnorm",  "model.tied_head=false", "model.rope_theta=500",
    "model.norm_eps=1e-6", NULL};

static ccoe_gemm g_gemm;

static int setup(void **state)
{
    (void)state;
    ccoe_error err = {0};
    return ccoe_gemm_init(&g_gemm, CCOE_GEMM_AUTO, 2, &err) == CCOE_OK ? 0 : -1;
}

typedef struct run {
    ccoe_config cfg;
    ccoe_taskmap gt;
    ccoe_model m;
    char name[128];
} run;

/* A 4-block model of the rope settings plus `sets` (NULL-terminated). */
static void open_run(run *r, const char *name, const char *const *sets)
{
    ccoe_error err = {0};
    snprintf(r->name, sizeof r->name, "%s", name);
    ccoe_config_defaults(&r->cfg);
    ccoe_config *c = &r->cfg;
    c->model.n_layer = 4;
    c->model.n_embd = 16;
    c->model.ffn_hidden = 24;
    c->model.vocab_size = V;
    c->model.seq_len = T;
    c->model.init_std = 0.1;
    c->moe.expert_hidden = 12;
    c->moe.capacity_factor = 0;
    c->train.weight_decay = 0.0;
    for (int i = 0; k_rope_sets[i]; i++)
        if (ccoe_config_set(c, k_rope_sets[i], &err) != CCOE_OK)
            fail_msg("%s: %s", name, err.msg);
    for (int i = 0; sets[i]; i++)
        if (ccoe_config_set(c, sets[i], &err) != CCOE_OK)
            fail_msg("%s: %s: %s", name, sets[i], err.msg);
    if (ccoe_session_validate(c, &err) != CCOE_OK)
        fail_msg("%s: %s", name, err.msg);
    if (ccoe_taskmap_build(&r->gt, c, k_domains, 3, &err) != CCOE_OK)
        fail_msg("%s: gating: %s", name, err.msg);
    if (ccoe_model_init_moe(&r->m, &c->model, &r->gt, &c->moe, B, T, &g_gemm, 2, &err) !=
        CCOE_OK)
        fail_msg("%s: %s", name, err.msg);
    ccoe_model_init_weights(&r->m, 17, CCOE_INIT_RANDOM);
    r->m.train = 1; /* noisy gates draw their noise */
    r->m.seed = 1234;
}

typedef struct only_expert {
    int expert; /* -1: every tensor */
} only_expert;

static int on_expert(const ccoe_param *p, void *ctx)
{
    const only_expert *o = ctx;
    return o->expert < 0 || p->expert == o->expert;
}

/* A fixed batch that repeats a short pattern per domain: learnable in a few steps. */
static void fill_batch(int32_t *tok, int32_t *tgt, int32_t *dom)
{
    ccoe_rng r;
    ccoe_rng_seed(&r, 3);
    int32_t pat[3][5];
    for (int d = 0; d < 3; d++)
        for (int i = 0; i < 5; i++)
            pat[d][i] = (int32_t)ccoe_rng_below(&r, V);
    for (int b = 0; b < B; b++) {
        dom[b] = b % 3;
        for (int t = 0; t < T; t++) {
            tok[b * T + t] = pat[dom[b]][(t + b) % 5];
            tgt[b * T + t] = pat[dom[b]][(t + b + 1) % 5];
        }
    }
}

/* STEPS AdamW steps on the fixed batch (on expert `expert`'s tensors only when >= 0, with
 * m.train_path set by the caller); the loss must stay finite and end below its start. */
static void train_and_check(run *r, int expert)
{
    ccoe_model *m = &r->m;
    ccoe_adamw opt;
    ccoe_error err = {0};
    assert_int_equal(ccoe_adamw_init(&opt, m->num_params, &err), CCOE_OK);
    memset(opt.m, 0, m->num_params * sizeof(float));
    memset(opt.v, 0, m->num_params * sizeof(float));
    int32_t tok[B * T], tgt[B * T], dom[B];
    fill_batch(tok, tgt, dom);
    only_expert oe = {expert};
    double first = 0.0, last = 0.0;
    for (int s = 0; s <= STEPS; s++) {
        long n = 0;
        ccoe_model_zero_grad(m);
        double loss = ccoe_model_forward(m, tok, tgt, dom, B, T, &n) / (double)n;
        if (!isfinite(loss))
            fail_msg("%s: loss %g at step %d", r->name, loss, s);
        if (s == 0)
            first = loss;
        last = loss;
        if (s == STEPS)
            break;
        ccoe_model_backward(m, 1.0f / (float)n, 1.0f);
        m->step = (uint64_t)s + 1;
        ccoe_adamw_step_scaled(&opt, m, &r->cfg.train, 1e-2, 1.0f, on_expert, &oe);
    }
    fprintf(stderr, "%-56s loss %.4f -> %.4f\n", r->name, first, last);
    if (!(last < first - 0.05))
        fail_msg("%s: loss did not fall: %.4f -> %.4f", r->name, first, last);
    ccoe_adamw_free(&opt);
}

static void test_every_gate(void **state)
{
    (void)state;
    int ran = 0;
    for (int i = 0; i < ccoe_gate_count(); i++) {
        const ccoe_gate_ops *g = ccoe_gate_at(i);
        char gate[64], k[32], name[96];
        snprintf(gate, sizeof gate, "moe.gate=%s", g->name);
        snprintf(k, sizeof k, "moe.top_k=%d", tu_gate_top_k(g, 4, 2));
        snprintf(name, sizeof name, "rope gqa, MoE gate %s", g->name);
        const int router = (g->flags & CCOE_GATE_ROUTER) != 0; /* balancing losses need one */
        const char *sets[] = {gate, "moe.n_experts=4", k,
                              router ? "moe.w_switch=0.01" : "moe.w_switch=0",
                              router ? "moe.w_z=0.001" : "moe.w_z=0", NULL};
        run r;
        open_run(&r, name, sets);
        assert_true(r.m.n_moe > 0);
        train_and_check(&r, -1);
        ccoe_model_free(&r.m);
        ran++;
    }
    assert_int_equal(ran, ccoe_gate_count());
}

static void test_every_form(void **state)
{
    (void)state;
    int ran = 0;
    for (int f = 0; f < ccoe_form_count(); f++)
        for (int post = 0; post < 2; post++) {
            const ccoe_form_ops *fo = ccoe_form_at(f);
            char form[64], name[96];
            snprintf(form, sizeof form, "ccoe.form=%s", fo->name);
            const char *sets[] = {form,
                                  "ccoe.experts=a:1,b:2",
                                  "ccoe.routes=arith:a,code:b",
                                  post ? "model.block=post_ln" : "model.block=pre_ln",
                                  (fo->flags & CCOE_FF_PREFIX_LAYERS) ? "ccoe.prefix_layers=1"
                                                                       : NULL,
                                  NULL};
            /* the whole model */
            snprintf(name, sizeof name, "rope gqa, form %s, %s", fo->name,
                     post ? "post-LN" : "pre-LN");
            run r;
            open_run(&r, name, sets);
            train_and_check(&r, -1);
            ccoe_model_free(&r.m);
            /* each expert in isolation: only its tensors move */
            for (int e = 0; e < 2; e++) {
                snprintf(name, sizeof name, "rope gqa, form %s, %s, isolated expert %d",
                         fo->name, post ? "post-LN" : "pre-LN", e);
                open_run(&r, name, sets);
                r.m.train_path = 1 + e;
                float *before = malloc(r.m.num_params * sizeof(float));
                assert_non_null(before);
                memcpy(before, r.m.param_block, r.m.num_params * sizeof(float));
                train_and_check(&r, e);
                int moved = 0;
                for (int i = 0; i < r.m.n_params; i++) {
                    const ccoe_param *p = &r.m.params[i];
                    const int same = memcmp(before + p->offset, r.m.param_block + p->offset,
                                            p->numel * sizeof(float)) == 0;
                    if (p->expert != e && !same)
                        fail_msg("%s: %s changed", name, p->name);
                    moved += p->expert == e && !same;
                }
                assert_true(moved > 0);
                free(before);
                ccoe_model_free(&r.m);
            }
            ran++;
        }
    assert_int_equal(ran, 2 * ccoe_form_count());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_gate),
        cmocka_unit_test(test_every_form),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
