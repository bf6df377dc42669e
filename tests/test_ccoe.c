/* test_ccoe.c - the CCoE formulations at tiny size: gradients of every tensor of an Eq. 4
 * (tail), Eq. 5 (prefix) and Eqs. 6-7 (ffn) model on mixed-domain batches against finite
 * differences; Eqs. 6-7 experts copied from the base equal the base;
 * Eq. 4 with every l_i = 0 equals the base; Eq. 5 with l_b = L - l_i equals Eq. 4; isolated
 * expert training touches only the expert; the task-expert matrix keeps existing entries when
 * an expert is pushed; bad gating configs are refused with clear errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "config.h"
#include "form.h"
#include "taskmap.h"
#include "gemm.h"
#include "model.h"
#include "rng.h"

static const char k_domains[4][CCOE_NAME_LEN] = {"arith", "code", "prose", "sql"};

static ccoe_gemm g_gemm;

static ccoe_config base_config(ccoe_block_kind block)
{
    ccoe_config c;
    ccoe_config_defaults(&c);
    c.model.n_layer = 4;
    c.model.n_embd = 16;
    c.model.n_head = 2;
    c.model.ffn_hidden = 24;
    c.model.vocab_size = 40;
    c.model.seq_len = 6;
    c.model.block = block;
    c.model.init_std = 0.3;
    return c;
}

static void build(ccoe_model *m, ccoe_taskmap *gt, ccoe_config *c, int B)
{
    ccoe_error err = {0};
    if (ccoe_taskmap_build(gt, c, k_domains, 4, &err) != CCOE_OK)
        fail_msg("gating: %s", err.msg);
    assert_int_equal(ccoe_model_init(m, &c->model, gt, B, c->model.seq_len, &g_gemm, 1, &err),
                     CCOE_OK);
}

static void fill_batch(int32_t *tok, int32_t *tgt, int32_t *dom, int B, int T, int V,
                       uint64_t seed)
{
    ccoe_rng r;
    ccoe_rng_seed(&r, seed);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)ccoe_rng_below(&r, (uint64_t)V);
        tgt[i] = (int32_t)ccoe_rng_below(&r, (uint64_t)V);
    }
    for (int b = 0; b < B; b++)
        dom[b] = (int32_t)((b * 3 + 1) % 4); /* every domain, interleaved */
}

typedef struct batch {
    const int32_t *tok, *tgt, *dom;
    int B, T;
} batch;

static double mean_loss(ccoe_model *m, void *ctx)
{
    const batch *b = ctx;
    long n = 0;
    double s = ccoe_model_forward(m, b->tok, b->tgt, b->dom, b->B, b->T, &n);
    return s / (double)n;
}

/* Directional finite differences per tensor, as in test_model.c. */
static void gradcheck(ccoe_config *c)
{
    const int B = 6, T = c->model.seq_len;
    ccoe_model m;
    ccoe_taskmap gt;
    build(&m, &gt, c, B);
    ccoe_model_init_weights(&m, 5, CCOE_INIT_RANDOM);
    ccoe_rng r;
    ccoe_rng_seed(&r, 17);
    for (int i = 0; i < m.n_params; i++)
        if (m.params[i].ndim == 1)
            for (size_t j = 0; j < m.params[i].numel; j++)
                m.param_block[m.params[i].offset + j] += 0.2f * (ccoe_rng_uniform(&r) - 0.5f);
    int32_t tok[64], tgt[64], dom[8];
    fill_batch(tok, tgt, dom, B, T, c->model.vocab_size, 3);
    ccoe_model_zero_grad(&m);
    long count = 0;
    ccoe_model_forward(&m, tok, tgt, dom, B, T, &count);
    ccoe_model_backward(&m, 1.0f / (float)count, 1.0f);
    char what[32];
    snprintf(what, sizeof what, "form %d", c->ccoe.form);
    batch bt = {tok, tgt, dom, B, T};
    assert_int_equal(tu_model_gradcheck(&m, mean_loss, &bt, 4321, 2e-3f, 2e-3, 2e-2, what), 0);
    ccoe_model_free(&m);
}

static void set_ccoe(ccoe_config *c, ccoe_form form, const char *experts, const char *routes,
                     int prefix, int own_head)
{
    c->ccoe.form = form;
    snprintf(c->ccoe.experts, sizeof c->ccoe.experts, "%s", experts);
    snprintf(c->ccoe.routes, sizeof c->ccoe.routes, "%s", routes);
    c->ccoe.prefix_layers = prefix;
    c->ccoe.own_head = own_head;
}

/* ccoe.prefix_layers for a form: L - deepest for forms that branch at prefix_layers (Eq. 5),
 * so every expert ends at the last base block as under tail and ffn; 0 for the others. */
static int prefix_for(const ccoe_form_ops *f, int L, int deepest)
{
    return (f->flags & CCOE_FF_PREFIX_LAYERS) ? L - deepest : 0;
}

/* Every registered form (variants/forms.def), pre- and post-LN, shared and own heads, on
 * mixed-domain batches: every tensor against finite differences. A new form is checked
 * without edits here. */
static void test_gradcheck_forms(void **state)
{
    (void)state;
    for (int f = 0; f < ccoe_form_count(); f++)
        for (int block = 0; block < 2; block++)
            for (int own = 0; own < 2; own++) {
                const ccoe_form_ops *fo = ccoe_form_at(f);
                ccoe_config c = base_config((ccoe_block_kind)block);
                set_ccoe(&c, fo->id, "a:1 b:2", "arith:a code:b sql:a",
                         prefix_for(fo, c.model.n_layer, 2), own);
                gradcheck(&c);
            }
}

static void test_gradcheck_prefix(void **state)
{
    (void)state;
    for (int own = 0; own < 2; own++) {
        ccoe_config c = base_config(CCOE_BLOCK_PRE_LN);
        set_ccoe(&c, CCOE_FORM_PREFIX, "a:2 b:1", "arith:a prose:b", 1, own);
        gradcheck(&c);
    }
}


/* logits of every (b, t) of the last forward into out (B*T*V) in original row order */
static void logits_of(const ccoe_model *m, float *out, int B, int T)
{
    const int V = m->cfg.vocab_size;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            memcpy(out + ((size_t)b * T + t) * V, ccoe_model_logits(m, b, t), V * sizeof(float));
}

/* copies every tensor of src into the same-named tensor of dst (must exist) */
static void copy_params(ccoe_model *dst, const ccoe_model *src)
{
    for (int i = 0; i < src->n_params; i++) {
        const ccoe_param *p = &src->params[i];
        const ccoe_param *q = ccoe_model_find_param(dst, p->name);
        assert_non_null(q);
        assert_int_equal(q->numel, p->numel);
        memcpy(dst->param_block + q->offset, src->param_block + p->offset,
               p->numel * sizeof(float));
    }
}

/* Every registered form: experts initialised as copies of the base (CCOE_INIT_COPY's
 * contract: each expert starts as the base at its position) compute the base model's logits
 * exactly, pre- and post-LN, shared and own heads; the plain base model is the reference. */
static void test_forms_copy_equals_base(void **state)
{
    (void)state;
    const int B = 6, T = 6, V = 40;
    for (int f = 0; f < ccoe_form_count(); f++)
        for (int block = 0; block < 2; block++)
            for (int own = 0; own < 2; own++) {
                const ccoe_form_ops *fo = ccoe_form_at(f);
                ccoe_config cb = base_config((ccoe_block_kind)block), ce = cb;
                set_ccoe(&ce, fo->id, "a:2 b:2", "arith:a code:b prose:b",
                         prefix_for(fo, cb.model.n_layer, 2), own);
                ccoe_model mb, me;
                ccoe_taskmap gb, ge;
                build(&mb, &gb, &cb, B);
                build(&me, &ge, &ce, B);
                ccoe_model_init_weights(&mb, 9, CCOE_INIT_RANDOM);
                ccoe_model_init_weights(&me, 1, CCOE_INIT_RANDOM);
                copy_params(&me, &mb);
                for (int e = 0; e < ge.n_experts; e++)
                    ccoe_model_expert_copy_base(&me, e);
                int32_t tok[64], tgt[64], dom[8];
                fill_batch(tok, tgt, dom, B, T, V, 4);
                const size_t n = (size_t)B * T * V;
                float *lb = malloc(n * sizeof(float)), *le = malloc(n * sizeof(float));
                ccoe_model_forward(&mb, tok, NULL, dom, B, T, NULL);
                logits_of(&mb, lb, B, T);
                ccoe_model_forward(&me, tok, NULL, dom, B, T, NULL);
                logits_of(&me, le, B, T);
                if (memcmp(lb, le, n * sizeof(float)) != 0)
                    fail_msg("form %s block %d own_head %d: copied experts differ from the base",
                             fo->name, block, own);
                free(lb);
                free(le);
                ccoe_model_free(&mb);
                ccoe_model_free(&me);
            }
}

/* The registry (variants/form_registry.c): names, ids and lookups agree, every form's name is
 * a ccoe.form value the config accepts with its id, and each form refuses an expert above its
 * default cap with the cap's message. */
static void test_form_registry(void **state)
{
    (void)state;
    char names[256];
    ccoe_form_list_names(names, sizeof names);
    assert_true(ccoe_form_count() >= 3);
    assert_null(ccoe_form_find("none"));
    assert_null(ccoe_form_find("nope"));
    assert_null(ccoe_form_by_id((ccoe_form)0));
    ccoe_config c = base_config(CCOE_BLOCK_PRE_LN);
    assert_null(ccoe_form_of(&c)); /* default ccoe.form = none */
    for (int f = 0; f < ccoe_form_count(); f++) {
        const ccoe_form_ops *fo = ccoe_form_at(f);
        assert_non_null(fo);
        assert_ptr_equal(ccoe_form_find(fo->name), fo);
        assert_ptr_equal(ccoe_form_by_id(fo->id), fo);
        assert_non_null(strstr(names, fo->name));
        assert_non_null(ccoe_form_for_file_kind(fo->file_kind));
        assert_true(fo->default_cap && fo->branch && fo->path_name && fo->title && fo->help);
        char set[64];
        snprintf(set, sizeof set, "ccoe.form=%s", fo->name);
        ccoe_error err = {0};
        ccoe_config k = base_config(CCOE_BLOCK_PRE_LN);
        if (ccoe_config_set(&k, set, &err) != CCOE_OK)
            fail_msg("config refuses registered form '%s': %s", fo->name, err.msg);
        assert_ptr_equal(ccoe_form_of(&k), fo);
        /* above the default cap: refused naming the cap (or, past a form's layer limit, the
         * limit: "only L") */
        const int L = k.model.n_layer, over = fo->default_cap(L) + 1;
        char experts[32], needle[32];
        snprintf(experts, sizeof experts, "a:%d", over);
        snprintf(needle, sizeof needle, "cap %d", fo->default_cap(L));
        set_ccoe(&k, fo->id, experts, "arith:a", prefix_for(fo, L, 0), 0);
        ccoe_taskmap g;
        const ccoe_status st = ccoe_taskmap_build(&g, &k, k_domains, 4, &err);
        assert_int_equal(st, CCOE_ERR_CONFIG);
        if (!strstr(err.msg, needle) && !strstr(err.msg, "only"))
            fail_msg("form %s: '%s' lacks '%s'", fo->name, err.msg, needle);
    }
    assert_null(ccoe_form_at(ccoe_form_count()));
    assert_null(ccoe_form_at(-1));
}

static void test_zero_layer_experts_equal_base(void **state)
{
    (void)state;
    const int B = 5, T = 6;
    ccoe_config cb = base_config(CCOE_BLOCK_PRE_LN), ce = cb;
    set_ccoe(&ce, CCOE_FORM_TAIL, "a:0 b:0", "arith:a code:b prose:b", 0, 0);
    ccoe_model mb, me;
    ccoe_taskmap gb, ge;
    build(&mb, &gb, &cb, B);
    build(&me, &ge, &ce, B);
    ccoe_model_init_weights(&mb, 9, CCOE_INIT_RANDOM);
    copy_params(&me, &mb);
    int32_t tok[64], tgt[64], dom[8];
    fill_batch(tok, tgt, dom, B, T, cb.model.vocab_size, 4);
    float *lb = malloc((size_t)B * T * 40 * sizeof(float)), *le = malloc((size_t)B * T * 40 * sizeof(float));
    ccoe_model_forward(&mb, tok, NULL, dom, B, T, NULL);
    logits_of(&mb, lb, B, T);
    ccoe_model_forward(&me, tok, NULL, dom, B, T, NULL);
    logits_of(&me, le, B, T);
    assert_memory_equal(lb, le, (size_t)B * T * 40 * sizeof(float));
    free(lb);
    free(le);
    ccoe_model_free(&mb);
    ccoe_model_free(&me);
}

/* Eqs. 6-7 experts initialised as copies of the base FFNs they replace compute the base model
 * exactly; a trained-looking change to one expert moves only its domains' logits. */
static void test_ffn_copy_equals_base(void **state)
{
    (void)state;
    const int B = 6, T = 6, V = 40;
    ccoe_config cb = base_config(CCOE_BLOCK_POST_LN), ce = cb;
    set_ccoe(&ce, CCOE_FORM_FFN, "a:2 b:1", "arith:a code:b prose:b", 0, 0);
    ccoe_model mb, me;
    ccoe_taskmap gb, ge;
    build(&mb, &gb, &cb, B);
    build(&me, &ge, &ce, B);
    assert_int_equal(me.n_inst, 4); /* FFN experts are no block instances */
    ccoe_model_init_weights(&mb, 9, CCOE_INIT_RANDOM);
    ccoe_model_init_weights(&me, 1, CCOE_INIT_RANDOM);
    copy_params(&me, &mb);
    for (int e = 0; e < ge.n_experts; e++)
        ccoe_model_expert_copy_base(&me, e);
    int32_t tok[64], tgt[64], dom[8];
    fill_batch(tok, tgt, dom, B, T, V, 4);
    const size_t n = (size_t)B * T * V;
    float *lb = malloc(n * sizeof(float)), *le = malloc(n * sizeof(float));
    ccoe_model_forward(&mb, tok, NULL, dom, B, T, NULL);
    logits_of(&mb, lb, B, T);
    ccoe_model_forward(&me, tok, NULL, dom, B, T, NULL);
    logits_of(&me, le, B, T);
    assert_memory_equal(lb, le, n * sizeof(float));
    /* perturb expert a's FFN in block 3: only arith rows (domain 0) change */
    const ccoe_param *p = ccoe_model_find_param(&me, "experts.a.blocks.1.mlp.fc.weight");
    assert_non_null(p);
    assert_int_equal(p->expert, 0);
    me.param_block[p->offset] += 0.5f;
    ccoe_model_forward(&me, tok, NULL, dom, B, T, NULL);
    logits_of(&me, le, B, T);
    for (int b = 0; b < B; b++) {
        const size_t o = (size_t)b * T * V, len = (size_t)T * V * sizeof(float);
        if (dom[b] == 0)
            assert_memory_not_equal(lb + o, le + o, len);
        else
            assert_memory_equal(lb + o, le + o, len);
    }
    /* path costs: an FFN expert path has the base's size; the base FFNs it bypasses are not
     * counted, the expert's are */
    assert_int_equal(ccoe_model_path_params(&me, 1), ccoe_model_path_params(&me, 0));
    assert_true(ccoe_model_path_forward_flops(&me, 1, T) == ccoe_model_path_forward_flops(&me, 0, T));
    free(lb);
    free(le);
    ccoe_model_free(&mb);
    ccoe_model_free(&me);
}

/* Eqs. 6-7 isolated training: the expert's FFN gradients equal the full backward's; blocks
 * below the expert's first FFN and the other experts get none. */
static void test_ffn_isolated_backward(void **state)
{
    (void)state;
    const int B = 6, T = 6;
    ccoe_config c = base_config(CCOE_BLOCK_POST_LN);
    set_ccoe(&c, CCOE_FORM_FFN, "a:1 b:2", "arith:a code:b", 0, 0);
    ccoe_model m;
    ccoe_taskmap gt;
    build(&m, &gt, &c, B);
    ccoe_model_init_weights(&m, 21, CCOE_INIT_RANDOM);
    int32_t tok[64], tgt[64], dom[8];
    fill_batch(tok, tgt, dom, B, T, c.model.vocab_size, 6);
    float *full = malloc(m.num_params * sizeof(float));
    ccoe_model_zero_grad(&m);
    long n;
    ccoe_model_forward(&m, tok, tgt, dom, B, T, &n);
    ccoe_model_backward(&m, 1.0f, 1.0f);
    memcpy(full, m.grad_block, m.num_params * sizeof(float));
    m.train_path = 2; /* expert b: FFNs of blocks 2 and 3 */
    ccoe_model_zero_grad(&m);
    ccoe_model_forward(&m, tok, tgt, dom, B, T, &n);
    ccoe_model_backward(&m, 1.0f, 1.0f);
    int checked = 0;
    for (int i = 0; i < m.n_params; i++) {
        const ccoe_param *p = &m.params[i];
        const float *gi = m.grad_block + p->offset;
        if (p->expert == 1) {
            assert_memory_equal(gi, full + p->offset, p->numel * sizeof(float));
            checked++;
        } else if (p->expert == 0 || (p->block >= 0 && p->block < 2) ||
                   strcmp(p->name, "wpe") == 0) {
            for (size_t j = 0; j < p->numel; j++)
                assert_true(gi[j] == 0.0f);
        }
    }
    assert_int_equal(checked, 8); /* 2 FFNs x (fc, proj) x (weight, bias) */
    free(full);
    ccoe_model_free(&m);
}

static void test_prefix_equals_tail(void **state)
{
    (void)state;
    const int B = 6, T = 6;
    /* Eq. 4 with l = 2 on L = 4 branches at block 2; Eq. 5 with l_b = 2 and l = 2 is the same */
    ccoe_config ct = base_config(CCOE_BLOCK_POST_LN), cp = ct;
    set_ccoe(&ct, CCOE_FORM_TAIL, "a:2 b:2", "arith:a sql:b", 0, 1);
    set_ccoe(&cp, CCOE_FORM_PREFIX, "a:2 b:2", "arith:a sql:b", 2, 1);
    ccoe_model mt, mp;
    ccoe_taskmap gtt, gtp;
    build(&mt, &gtt, &ct, B);
    build(&mp, &gtp, &cp, B);
    ccoe_model_init_weights(&mt, 11, CCOE_INIT_RANDOM);
    copy_params(&mp, &mt);
    int32_t tok[64], tgt[64], dom[8];
    fill_batch(tok, tgt, dom, B, T, ct.model.vocab_size, 5);
    long n1, n2;
    double l1 = ccoe_model_forward(&mt, tok, tgt, dom, B, T, &n1);
    double l2 = ccoe_model_forward(&mp, tok, tgt, dom, B, T, &n2);
    assert_int_equal(n1, n2);
    assert_true(l1 == l2);
    ccoe_model_free(&mt);
    ccoe_model_free(&mp);
}

/* With train_path set, only the expert's tensors get gradients, and they equal the full
 * backward's; the copy initialisation reproduces the base blocks it replaces. */
static void test_isolated_backward(void **state)
{
    (void)state;
    const int B = 6, T = 6;
    ccoe_config c = base_config(CCOE_BLOCK_PRE_LN);
    set_ccoe(&c, CCOE_FORM_TAIL, "a:1 b:2", "arith:a code:b", 0, 0);
    ccoe_model m;
    ccoe_taskmap gt;
    build(&m, &gt, &c, B);
    ccoe_model_init_weights(&m, 21, CCOE_INIT_COPY);
    /* copy init: expert b's block 0 equals base block 2 */
    const ccoe_param *e = ccoe_model_find_param(&m, "experts.b.blocks.0.mlp.fc.weight");
    const ccoe_param *s = ccoe_model_find_param(&m, "blocks.2.mlp.fc.weight");
    assert_non_null(e);
    assert_non_null(s);
    assert_memory_equal(m.param_block + e->offset, m.param_block + s->offset,
                        e->numel * sizeof(float));
    int32_t tok[64], tgt[64], dom[8];
    fill_batch(tok, tgt, dom, B, T, c.model.vocab_size, 6);
    float *full = malloc(m.num_params * sizeof(float));
    ccoe_model_zero_grad(&m);
    long n;
    ccoe_model_forward(&m, tok, tgt, dom, B, T, &n);
    ccoe_model_backward(&m, 1.0f, 1.0f);
    memcpy(full, m.grad_block, m.num_params * sizeof(float));
    m.train_path = 2; /* expert b */
    ccoe_model_zero_grad(&m);
    ccoe_model_forward(&m, tok, tgt, dom, B, T, &n);
    ccoe_model_backward(&m, 1.0f, 1.0f);
    for (int i = 0; i < m.n_params; i++) {
        const ccoe_param *p = &m.params[i];
        const float *gi = m.grad_block + p->offset;
        if (p->expert == 1) {
            assert_memory_equal(gi, full + p->offset, p->numel * sizeof(float));
        } else if (p->block >= 0 || p->expert >= 0) {
            for (size_t j = 0; j < p->numel; j++)
                assert_true(gi[j] == 0.0f);
        }
    }
    free(full);
    ccoe_model_free(&m);
}

/* GEMM calls of one backward, counted by the profile. */
static long backward_gemm_calls(ccoe_model *m)
{
    static ccoe_gemm_prof prof;
    memset(&prof, 0, sizeof prof);
    g_gemm.prof = &prof;
    ccoe_model_backward(m, 1.0f, 1.0f);
    g_gemm.prof = NULL;
    long calls = prof.dropped;
    for (int i = 0; i < prof.n; i++)
        calls += prof.e[i].calls;
    return calls;
}

/* Isolated training on a frozen base (ccoe_model_set_train_path): the base blocks below the
 * expert run forward only. Checked: they share one set of activations (the arena is smaller by
 * their qkv/FFN buffers at least), the loss and every gradient equal those of the model that
 * keeps every block's activations, the backward's GEMM calls do not grow with the base's depth
 * (tail, prefix: its backward never runs), and a prefill + decode step on the forward-only
 * model gives the same logits. */
static void test_frozen_prefix_forward_only(void **state)
{
    (void)state;
    const int B = 6, T = 6;
    const struct { ccoe_form form; ccoe_block_kind block; int prefix; int path, want_fwd; } cases[] = {
        {CCOE_FORM_TAIL, CCOE_BLOCK_PRE_LN, 0, 2, 4},
        {CCOE_FORM_PREFIX, CCOE_BLOCK_POST_LN, 1, 1, 4},
        {CCOE_FORM_FFN, CCOE_BLOCK_PRE_LN, 0, 2, 2}, /* expert b covers blocks 2, 3 */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        long calls[2] = {0, 0};
        for (int deep = 0; deep < 2; deep++) {
            ccoe_config cfg = base_config(cases[c].block);
            cfg.model.n_layer = deep ? 6 : 4;
            set_ccoe(&cfg, cases[c].form, "a:1 b:2", "arith:a code:b", cases[c].prefix, 1);
            if (cases[c].form == CCOE_FORM_FFN)
                cfg.ccoe.own_head = 0;
            ccoe_model ma, mb;
            ccoe_taskmap gta, gtb;
            build(&ma, &gta, &cfg, B);
            build(&mb, &gtb, &cfg, B);
            ccoe_model_init_weights(&ma, 31, CCOE_INIT_RANDOM);
            copy_params(&mb, &ma);
            ccoe_error err = {0};
            ma.train_path = cases[c].path; /* every block keeps its activations */
            assert_int_equal(ccoe_model_set_train_path(&mb, cases[c].path, &err), CCOE_OK);
            const int fwd = cases[c].want_fwd + (deep ? 2 : 0);
            assert_int_equal(mb.fwd_only, fwd);
            const size_t N = (size_t)B * T, W = (size_t)mb.W, F = (size_t)cfg.model.ffn_hidden;
            for (int k = 1; k < mb.fwd_only; k++) {
                assert_ptr_equal(mb.acts[k].qkv, mb.acts[0].qkv);
                assert_ptr_equal(mb.acts[k].fch, mb.acts[0].fch);
                assert_ptr_equal(mb.acts[k].res2, mb.acts[k % 2].res2);
            }
            assert_ptr_not_equal(mb.acts[0].res2, mb.acts[1].res2);
            assert_ptr_not_equal(mb.acts[mb.fwd_only].qkv, mb.acts[0].qkv);
            assert_true(ma.act_floats - mb.act_floats >=
                        (size_t)(mb.fwd_only - 1) * N * (W + 2 * F));
            int32_t tok[64], tgt[64], dom[8];
            fill_batch(tok, tgt, dom, B, T, cfg.model.vocab_size, 8);
            long na, nb;
            ccoe_model_zero_grad(&ma);
            ccoe_model_zero_grad(&mb);
            double la = ccoe_model_forward(&ma, tok, tgt, dom, B, T, &na);
            double lb = ccoe_model_forward(&mb, tok, tgt, dom, B, T, &nb);
            assert_true(la == lb);
            ccoe_model_backward(&ma, 1.0f, 1.0f);
            calls[deep] = backward_gemm_calls(&mb);
            assert_memory_equal(ma.grad_block, mb.grad_block, ma.num_params * sizeof(float));
            /* decoding on the forward-only model */
            assert_int_equal(ccoe_model_decode_prefill(&ma, tok, dom, B, T - 1, &err), CCOE_OK);
            assert_int_equal(ccoe_model_decode_prefill(&mb, tok, dom, B, T - 1, &err), CCOE_OK);
            int32_t next[8];
            int seq[8], pos[8];
            for (int b = 0; b < B; b++) {
                next[b] = tok[b * T + T - 1];
                seq[b] = b;
                pos[b] = T - 1;
            }
            ccoe_model_decode_step(&ma, next, seq, pos, B);
            ccoe_model_decode_step(&mb, next, seq, pos, B);
            for (int b = 0; b < B; b++)
                assert_memory_equal(ccoe_model_logits(&ma, b, 0), ccoe_model_logits(&mb, b, 0),
                                    (size_t)cfg.model.vocab_size * sizeof(float));
            /* training everything again needs every block's activations back */
            assert_int_equal(ccoe_model_set_train_path(&mb, -1, &err), CCOE_OK);
            assert_int_equal(mb.fwd_only, 0);
            assert_int_equal(mb.act_floats, ma.act_floats);
            ccoe_model_free(&ma);
            ccoe_model_free(&mb);
        }
        /* two more frozen blocks, not one GEMM call more in the backward (ffn: the expert's
         * blocks move down with the base's end, the differentiated ones stay two) */
        assert_true(calls[0] > 0);
        assert_int_equal(calls[0], calls[1]);
    }
}

static void test_gating_matrix(void **state)
{
    (void)state;
    ccoe_config c = base_config(CCOE_BLOCK_PRE_LN);
    c.model.n_layer = 8;
    set_ccoe(&c, CCOE_FORM_TAIL, "a:2 b:4 c:2", "arith:a code:b prose:c", 0, 0);
    ccoe_taskmap g1, g2;
    ccoe_error err = {0};
    assert_int_equal(ccoe_taskmap_build(&g1, &c, k_domains, 4, &err), CCOE_OK);
    assert_int_equal(g1.experts[0].branch, 6);
    assert_int_equal(g1.experts[0].pos, 0);
    assert_int_equal(g1.experts[1].branch, 4);
    assert_int_equal(g1.experts[1].pos, 0);
    assert_int_equal(g1.experts[2].pos, 1); /* second expert at CoE layer 6 */
    assert_int_equal(g1.route[3], -1);      /* sql: base */
    const char *doms[] = {"sql"};
    assert_int_equal(ccoe_taskmap_config_add(&c, "d", 2, doms, 1, &err), CCOE_OK);
    assert_int_equal(ccoe_taskmap_build(&g2, &c, k_domains, 4, &err), CCOE_OK);
    for (int e = 0; e < g1.n_experts; e++) {
        assert_string_equal(g1.experts[e].name, g2.experts[e].name);
        assert_int_equal(g1.experts[e].layers, g2.experts[e].layers);
        assert_int_equal(g1.experts[e].pos, g2.experts[e].pos);
    }
    for (int d = 0; d < 3; d++)
        assert_int_equal(g1.route[d], g2.route[d]);
    assert_int_equal(g2.experts[3].pos, 2); /* appended last at its CoE layer */
    assert_int_equal(g2.route[3], 3);
    assert_int_equal(ccoe_taskmap_config_remove(&c, "b", &err), CCOE_OK);
    assert_int_equal(ccoe_taskmap_build(&g2, &c, k_domains, 4, &err), CCOE_OK);
    assert_int_equal(g2.n_experts, 3);
    assert_int_equal(g2.route[1], -1); /* code falls back to the base */
}

static void expect_bad(const char *experts, const char *routes, ccoe_form form, int prefix,
                       const char *needle)
{
    ccoe_config c = base_config(CCOE_BLOCK_PRE_LN);
    set_ccoe(&c, form, experts, routes, prefix, 0);
    ccoe_taskmap g;
    ccoe_error err = {0};
    assert_int_equal(ccoe_taskmap_build(&g, &c, k_domains, 4, &err), CCOE_ERR_CONFIG);
    if (!strstr(err.msg, needle))
        fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void test_bad_gating(void **state)
{
    (void)state;
    expect_bad("a:1", "law:a", CCOE_FORM_TAIL, 0, "unknown domain 'law'");
    expect_bad("a:1", "arith:zz", CCOE_FORM_TAIL, 0, "'zz'");
    expect_bad("a:1", "arith:a arith:a", CCOE_FORM_TAIL, 0, "routed twice");
    expect_bad("a:1 a:2", "", CCOE_FORM_TAIL, 0, "listed twice");
    expect_bad("a:5", "", CCOE_FORM_TAIL, 0, "only 4");
    expect_bad("a:3", "", CCOE_FORM_TAIL, 0, "cap 2");
    expect_bad("a", "", CCOE_FORM_TAIL, 0, "LEFT:RIGHT");
    expect_bad("a:x", "", CCOE_FORM_TAIL, 0, "layer count");
    expect_bad("a:1", "", CCOE_FORM_PREFIX, 9, "prefix_layers");
    expect_bad("a:1", "", CCOE_FORM_NONE, 0, "ccoe.form = none");
    expect_bad("a:5", "", CCOE_FORM_FFN, 0, "only 4");
    expect_bad("a:1", "law:a", CCOE_FORM_FFN, 0, "unknown domain 'law'");
    {
        ccoe_config c = base_config(CCOE_BLOCK_POST_LN);
        set_ccoe(&c, CCOE_FORM_FFN, "a:1", "arith:a", 0, 0);
        snprintf(c.moe.gate, sizeof c.moe.gate, "topk");
        ccoe_taskmap g;
        ccoe_error err = {0};
        assert_int_equal(ccoe_taskmap_build(&g, &c, k_domains, 4, &err), CCOE_ERR_CONFIG);
        assert_non_null(strstr(err.msg, "moe.gate = none"));
    }
}

static int setup(void **state)
{
    (void)state;
    ccoe_error err = {0};
    return ccoe_gemm_init(&g_gemm, CCOE_GEMM_REF, 1, &err) == CCOE_OK ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form_registry),
        cmocka_unit_test(test_gradcheck_forms),
        cmocka_unit_test(test_gradcheck_prefix),
        cmocka_unit_test(test_forms_copy_equals_base),
        cmocka_unit_test(test_ffn_copy_equals_base),
        cmocka_unit_test(test_ffn_isolated_backward),
        cmocka_unit_test(test_zero_layer_experts_equal_base),
        cmocka_unit_test(test_prefix_equals_tail),
        cmocka_unit_test(test_isolated_backward),
        cmocka_unit_test(test_frozen_prefix_forward_only),
        cmocka_unit_test(test_gating_matrix),
        cmocka_unit_test(test_bad_gating),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
