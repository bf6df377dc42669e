/* test_moe_build.c - sparse upcycling and the Branch-Train-MiX merge (src/moe_build.h):
 *   - an upcycled model's loss equals the dense model's on the same batch, for every gate whose
 *     combine weights sum to one (identical experts: the mixture is the FFN itself), and each
 *     expert tensor is a bit-exact copy of its block's FFN tensor; the router is random or zero;
 *   - a merged FFN-form CCoE model with the domain gate (domain d -> expert d, the CCoE routes in
 *     the same order) reproduces the CCoE model's loss per domain;
 *   - a merged tail-form model's shared tensors are the means over the paths;
 *   - bad input is refused and writes nothing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#include "checkpoint.h"
#include "config.h"
#include "gemm.h"
#include "model.h"
#include "moe_build.h"
#include "rng.h"
#include "session.h"
#include "taskmap.h"
#include "train.h"

enum { B = 4, T = 16 };

static char g_dir[64];
static char g_dense[200], g_ffn[200], g_tail[200];

static int train_to(ccoe_config *cfg, const char *name, char *ck, size_t cap)
{
    char out[128];
    snprintf(out, sizeof out, "%s/%s", g_dir, name);
    snprintf(cfg->train.out_dir, sizeof cfg->train.out_dir, "%s", out);
    ccoe_error err = {0};
    if (ccoe_session_validate(cfg, &err) != CCOE_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    ccoe_train_opts o = {.progress = 0, .quiet = 1};
    if (ccoe_train_run(cfg, &o, &err) != CCOE_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    snprintf(ck, cap, "%s/checkpoint.safetensors", out);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/ccoe-test-build-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    ccoe_config cfg;
    tu_tiny_train_config(&cfg, "", 4);
    cfg.model.n_layer = 2;
    if (train_to(&cfg, "dense", g_dense, sizeof g_dense))
        return -1;
    /* the five builtin domains routed in id order to five FFN experts of 1 or 2 blocks */
    tu_tiny_train_config(&cfg, "", 4);
    cfg.model.n_layer = 2;
    cfg.ccoe.form = CCOE_FORM_FFN;
    snprintf(cfg.ccoe.experts, sizeof cfg.ccoe.experts, "a:1 b:2 c:1 d:2 e:1");
    snprintf(cfg.ccoe.routes, sizeof cfg.ccoe.routes,
             "arith:a strings:b code:c prose:d sql:e");
    if (train_to(&cfg, "ffn", g_ffn, sizeof g_ffn))
        return -1;
    tu_tiny_train_config(&cfg, "", 4);
    cfg.model.n_layer = 2;
    cfg.ccoe.form = CCOE_FORM_TAIL;
    snprintf(cfg.ccoe.experts, sizeof cfg.ccoe.experts, "a:1 b:1");
    snprintf(cfg.ccoe.routes, sizeof cfg.ccoe.routes, "arith:a code:b");
    return train_to(&cfg, "tail", g_tail, sizeof g_tail);
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A checkpoint loaded into a model for batches of (B, T). */
typedef struct loaded {
    ccoe_config cfg;
    ccoe_taskmap g;
    ccoe_gemm gemm;
    ccoe_model m;
} loaded;

static void load(loaded *x, const char *path)
{
    ccoe_error err = {0};
    ccoe_st_file *f = NULL;
    assert_int_equal(ccoe_checkpoint_open(path, &x->cfg, &f, &err), CCOE_OK);
    char names[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
    int nd = ccoe_checkpoint_domains(f, &x->cfg, names);
    assert_int_equal(ccoe_taskmap_build(&x->g, &x->cfg, (const char(*)[CCOE_NAME_LEN])names, nd,
                                        &err),
                     CCOE_OK);
    assert_int_equal(ccoe_gemm_init(&x->gemm, CCOE_GEMM_REF, 1, &err), CCOE_OK);
    assert_int_equal(ccoe_model_init_moe(&x->m, &x->cfg.model, &x->g, &x->cfg.moe, B, T,
                                         &x->gemm, 1, &err),
                     CCOE_OK);
    assert_int_equal(ccoe_checkpoint_load(f, path, &x->m, NULL, NULL, &err), CCOE_OK);
    ccoe_st_close(f);
}

/* Mean loss of a fixed evaluation batch (domains d = 0..B-1 when dom is set). */
static double batch_loss(loaded *x, const int32_t *dom)
{
    int32_t tok[B * T], tgt[B * T];
    ccoe_rng r;
    ccoe_rng_seed(&r, 99);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)ccoe_rng_below(&r, 256);
        tgt[i] = (int32_t)ccoe_rng_below(&r, 256);
    }
    long n = 0;
    x->m.train = 0;
    double s = ccoe_model_forward(&x->m, tok, tgt, dom, B, T, &n);
    return s / (double)n;
}

static void out_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s.safetensors", g_dir, name);
}

static void test_upcycle_loss_equals_dense(void **state)
{
    (void)state;
    loaded d;
    load(&d, g_dense);
    const double want = batch_loss(&d, NULL);
    static const struct {
        const char *gate;
        int E, K, every;
        ccoe_router_init router;
    } cases[] = {{"topk", 4, 2, 1, CCOE_ROUTER_RANDOM}, {"topk", 4, 1, 2, CCOE_ROUTER_RANDOM},
                 {"topk", 3, 2, 1, CCOE_ROUTER_ZERO},   {"noisy_topk", 4, 2, 1, CCOE_ROUTER_RANDOM},
                 {"softmax", 3, 3, 1, CCOE_ROUTER_RANDOM}, {"hash", 4, 1, 1, CCOE_ROUTER_RANDOM}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char out[200];
        out_path(out, sizeof out, "up");
        unlink(out);
        ccoe_build_opts o = {.gate = cases[c].gate, .n_experts = cases[c].E,
                             .top_k = cases[c].K, .every = cases[c].every,
                             .router = cases[c].router};
        ccoe_build_report rep;
        ccoe_error err = {0};
        ccoe_status st = ccoe_moe_upcycle(g_dense, out, &o, &rep, &err);
        if (st != CCOE_OK)
            fail_msg("%s: %s", cases[c].gate, err.msg);
        assert_true(rep.sums_to_one);
        loaded u;
        load(&u, out);
        assert_int_equal(u.m.n_moe, cases[c].every == 1 ? 2 : 1);
        const double got = batch_loss(&u, NULL);
        /* the same FFN on every kept slot, weights summing to one: equal up to the rounding of
         * the weighted sum (exactly for one expert per token: its weight is 1) */
        if (cases[c].K == 1)
            assert_true(got == want);
        if (fabs(got - want) > 1e-6 * fabs(want))
            fail_msg("%s E%d K%d: upcycled loss %.9g, dense %.9g", cases[c].gate, cases[c].E,
                     cases[c].K, got, want);
        /* every expert tensor is the block's FFN tensor, bit for bit; the router as asked */
        for (int i = 0; i < u.m.n_params; i++) {
            const ccoe_param *p = &u.m.params[i];
            int l, e, n = 0;
            char role[96];
            if (sscanf(p->name, "blocks.%d.moe.experts.%d.%n", &l, &e, &n) == 2 && n > 0) {
                snprintf(role, sizeof role, "blocks.%d.mlp.%s", l, p->name + n);
                const ccoe_param *q = ccoe_model_find_param(&d.m, role);
                assert_non_null(q);
                assert_memory_equal(u.m.param_block + p->offset, d.m.param_block + q->offset,
                                    p->numel * sizeof(float));
            } else if (strstr(p->name, ".moe.router.weight")) {
                double sq = 0;
                for (size_t j = 0; j < p->numel; j++)
                    sq += (double)u.m.param_block[p->offset + j] * u.m.param_block[p->offset + j];
                assert_true(cases[c].router == CCOE_ROUTER_ZERO ? sq == 0 : sq > 0);
            } else if (!strstr(p->name, ".moe.")) {
                const ccoe_param *q = ccoe_model_find_param(&d.m, p->name);
                assert_non_null(q);
                assert_memory_equal(u.m.param_block + p->offset, d.m.param_block + q->offset,
                                    p->numel * sizeof(float));
            }
        }
        ccoe_model_free(&u.m);
    }
    ccoe_model_free(&d.m);
}

static void test_upcycle_refuses(void **state)
{
    (void)state;
    char out[200], up[200];
    out_path(out, sizeof out, "never");
    out_path(up, sizeof up, "up2");
    ccoe_build_report rep;
    ccoe_error err = {0};
    ccoe_build_opts o = {.gate = "topk", .n_experts = 2, .top_k = 3};
    assert_int_not_equal(ccoe_moe_upcycle(g_dense, out, &o, &rep, &err), CCOE_OK);
    assert_non_null(strstr(err.msg, "--top-k 3 exceeds the 2 experts"));
    o.top_k = 2;
    o.n_experts = 0;
    assert_int_not_equal(ccoe_moe_upcycle(g_dense, out, &o, &rep, &err), CCOE_OK);
    assert_non_null(strstr(err.msg, "out of range"));
    o.n_experts = 2;
    assert_int_not_equal(ccoe_moe_upcycle("/nonexistent/x.safetensors", out, &o, &rep, &err),
                         CCOE_OK);
    assert_int_equal(ccoe_moe_upcycle(g_dense, up, &o, &rep, &err), CCOE_OK);
    assert_int_not_equal(ccoe_moe_upcycle(up, out, &o, &rep, &err), CCOE_OK);
    assert_non_null(strstr(err.msg, "already has MoE layers"));
    assert_int_not_equal(ccoe_moe_merge(g_dense, out, &o, &rep, &err), CCOE_OK);
    assert_non_null(strstr(err.msg, "has no CCoE experts"));
    assert_int_not_equal(access(out, F_OK), 0); /* nothing written */
}

static void test_merge_ffn_reproduces_paths(void **state)
{
    (void)state;
    char out[200];
    out_path(out, sizeof out, "merged");
    ccoe_build_opts o = {.gate = "domain"};
    ccoe_build_report rep;
    ccoe_error err = {0};
    if (ccoe_moe_merge(g_ffn, out, &o, &rep, &err) != CCOE_OK)
        fail_msg("%s", err.msg);
    assert_int_equal(rep.n_experts, 5);
    assert_int_equal(rep.averaged, 0); /* form ffn: every tensor outside the FFNs is shared */
    loaded c, m;
    load(&c, g_ffn);
    load(&m, out);
    assert_int_equal(m.m.n_moe, 2);
    assert_int_equal(m.g.n_experts, 0);
    /* each sequence a domain: the domain gate sends it to the expert its CCoE route names */
    for (int first = 0; first < 5; first += 2) {
        int32_t dom[B];
        for (int b = 0; b < B; b++)
            dom[b] = (first + b) % 5;
        const double want = batch_loss(&c, dom), got = batch_loss(&m, dom);
        if (fabs(got - want) > 1e-6 * fabs(want))
            fail_msg("domains from %d: merged %.9g, CCoE %.9g", first, got, want);
    }
    ccoe_model_free(&c.m);
    ccoe_model_free(&m.m);
}

static void test_merge_tail_averages(void **state)
{
    (void)state;
    char out[200];
    out_path(out, sizeof out, "merged_tail");
    ccoe_build_opts o = {.gate = "topk", .top_k = 2, .with_base = 1};
    ccoe_build_report rep;
    ccoe_error err = {0};
    if (ccoe_moe_merge(g_tail, out, &o, &rep, &err) != CCOE_OK)
        fail_msg("%s", err.msg);
    assert_int_equal(rep.n_experts, 3);
    assert_true(rep.averaged > 0);
    loaded c, m;
    load(&c, g_tail);
    load(&m, out);
    /* block 1 (the experts' one block): the mean of a's, b's and the base's tensors */
    const char *names[] = {"ln1.weight", "attn.qkv.weight", "attn.proj.weight", "ln2.bias"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        char n0[96], na[96], nb[96];
        snprintf(n0, sizeof n0, "blocks.1.%s", names[k]);
        snprintf(na, sizeof na, "experts.a.blocks.0.%s", names[k]);
        snprintf(nb, sizeof nb, "experts.b.blocks.0.%s", names[k]);
        const ccoe_param *pm = ccoe_model_find_param(&m.m, n0);
        const ccoe_param *p0 = ccoe_model_find_param(&c.m, n0);
        const ccoe_param *pa = ccoe_model_find_param(&c.m, na);
        const ccoe_param *pb = ccoe_model_find_param(&c.m, nb);
        assert_true(pm && p0 && pa && pb);
        for (size_t j = 0; j < pm->numel; j++) {
            double mean = ((double)c.m.param_block[pa->offset + j] +
                           (double)c.m.param_block[pb->offset + j] +
                           (double)c.m.param_block[p0->offset + j]) / 3.0;
            assert_true(m.m.param_block[pm->offset + j] == (float)mean);
        }
    }
    /* expert 0 of block 1 is a's FFN, expert 2 (the base) the base's; block 0: all the base's */
    const struct {
        const char *merged, *src;
    } ffn[] = {{"blocks.1.moe.experts.0.fc.weight", "experts.a.blocks.0.mlp.fc.weight"},
               {"blocks.1.moe.experts.1.proj.weight", "experts.b.blocks.0.mlp.proj.weight"},
               {"blocks.1.moe.experts.2.fc.weight", "blocks.1.mlp.fc.weight"},
               {"blocks.0.moe.experts.0.fc.weight", "blocks.0.mlp.fc.weight"}};
    for (size_t k = 0; k < sizeof ffn / sizeof ffn[0]; k++) {
        const ccoe_param *pm = ccoe_model_find_param(&m.m, ffn[k].merged);
        const ccoe_param *ps = ccoe_model_find_param(&c.m, ffn[k].src);
        assert_true(pm && ps && pm->numel == ps->numel);
        assert_memory_equal(m.m.param_block + pm->offset, c.m.param_block + ps->offset,
                            pm->numel * sizeof(float));
    }
    ccoe_model_free(&c.m);
    ccoe_model_free(&m.m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upcycle_loss_equals_dense),
        cmocka_unit_test(test_upcycle_refuses),
        cmocka_unit_test(test_merge_ffn_reproduces_paths),
        cmocka_unit_test(test_merge_tail_averages),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
