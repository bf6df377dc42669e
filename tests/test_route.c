/* test_route.c - routing without a domain label (src/route.h, papers/routing.md): the domain
 * router's gradient against central finite differences (linear and one tanh layer); the
 * posterior over paths is causal (the weights used for the token at t do not move when the
 * tokens after t change, in the pure function and through the model) and follows a path whose
 * likelihood is forced dominant, in evaluation and in generation; the router trained on the
 * embedded data's domains (base frozen, random base weights) tells them apart; routed
 * generation equals rule generation when the router names one domain, and the base's when every
 * path equals the base; rule mode through the routed evaluation gives exactly
 * ccoe_eval_domains' losses; a router survives a checkpoint round trip and one that does not
 * fit is refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#include "checkpoint.h"
#include "config.h"
#include "eval.h"
#include "form.h"
#include "route.h"
#include "session.h"

/* ---- the router's backward ---- */

static void router_fd(int H)
{
    enum { C = 7, D = 4, N = 9 };
    ccoe_domain_router r;
    ccoe_error err = {0};
    assert_int_equal(ccoe_router_init(&r, 1, C, H, D, 3, &err), CCOE_OK);
    ccoe_router_init_weights(&r, 3);
    tu_fill_uniform(r.b1, (size_t)H, 4, 0.3f);
    tu_fill_uniform(r.b2, D, 5, 0.3f);
    for (int i = 0; i < 3 * C; i++) {
        r.mu[i] = 0.1f * (float)i;
        r.sigma[i] = 0.5f + 0.25f * (float)(i % 5);
    }
    float x[N * C];
    tu_fill_uniform(x, N * C, 6, 2.0f);
    const int32_t lab[N] = {0, 3, 2, -1, 1, 1, 0, 3, 2}; /* -1: not counted */
    float *g = calloc(r.n, sizeof *g);
    double *fd = tu_dnew(r.n);
    const double base = ccoe_router_loss(&r, x, lab, N, 4, g, NULL);
    assert_true(base > 0.0);
    const float h = 1e-3f;
    for (size_t j = 0; j < r.n; j++) {
        const float keep = r.params[j];
        r.params[j] = keep + h;
        const float up = r.params[j];
        const double lp = ccoe_router_loss(&r, x, lab, N, 4, NULL, NULL);
        r.params[j] = keep - h;
        const float dn = r.params[j];
        const double lm = ccoe_router_loss(&r, x, lab, N, 4, NULL, NULL);
        r.params[j] = keep;
        fd[j] = (lp - lm) / ((double)up - (double)dn);
    }
    double *gd = tu_dnew(r.n);
    tu_to_double(gd, g, r.n);
    TU_ASSERT_CLOSE_D("router gradient vs finite differences", gd, fd, r.n, 1e-5, 1e-3);
    /* a gradient that is not zero: the check could fail */
    double norm = 0.0;
    for (size_t j = 0; j < r.n; j++)
        norm += gd[j] * gd[j];
    assert_true(norm > 1e-4);
    free(g);
    free(fd);
    free(gd);
    ccoe_router_free(&r);
}

static void test_router_backward_linear(void **state)
{
    (void)state;
    router_fd(0);
}

static void test_router_backward_hidden(void **state)
{
    (void)state;
    router_fd(5);
}

/* ---- the posterior, pure ---- */

static void test_posterior_pure(void **state)
{
    (void)state;
    enum { P = 3, T = 6 };
    float ll[P * T];
    for (int t = 0; t < T; t++) {
        ll[0 * T + t] = -3.0f;
        ll[1 * T + t] = -0.5f; /* path 1 explains every token best */
        ll[2 * T + t] = -2.0f;
    }
    int32_t tg[T] = {1, 1, -1, 1, 1, 1};
    double w[T * P], w2[T * P];
    ccoe_route_posterior(ll, T, tg, P, T, w);
    for (int p = 0; p < P; p++) /* no context yet: the uniform prior */
        assert_true(fabs(w[p] - 1.0 / P) < 1e-15);
    for (int t = 0; t < T; t++) {
        double s = 0.0;
        for (int p = 0; p < P; p++)
            s += w[t * P + p];
        assert_true(fabs(s - 1.0) < 1e-12);
    }
    /* the weights after t tokens: prior times the likelihoods of targets 0..t-1 */
    const double a0 = -3.0 * 2, a1 = -0.5 * 2, a2 = -2.0 * 2; /* at t = 3: targets 0, 1 */
    const double z = exp(a0) + exp(a1) + exp(a2);
    assert_true(fabs(w[3 * P + 1] - exp(a1) / z) < 1e-12);
    assert_true(w[5 * P + 1] > 0.9);
    /* causality: changing targets t.. leaves the weights of positions <= t */
    for (int t0 = 0; t0 < T; t0++) {
        float l2[P * T];
        memcpy(l2, ll, sizeof l2);
        for (int p = 0; p < P; p++)
            for (int t = t0; t < T; t++)
                l2[p * T + t] = -10.0f * (float)(p + 1);
        ccoe_route_posterior(l2, T, tg, P, T, w2);
        assert_memory_equal(w, w2, (size_t)(t0 + 1) * P * sizeof *w);
    }
}

/* ---- through the model ---- */

static ccoe_gemm g_gemm;

static void route_config(ccoe_config *cfg, int own_head, int C, int T)
{
    ccoe_config_defaults(cfg);
    cfg->model.n_layer = 2;
    cfg->model.n_embd = C;
    cfg->model.n_head = 2;
    cfg->model.seq_len = T;
    cfg->train.batch_size = 8;
    cfg->data.task_examples = 0;
    cfg->ccoe.form = ccoe_form_find("tail")->id;
    snprintf(cfg->ccoe.experts, sizeof cfg->ccoe.experts, "arith:1 code:1");
    snprintf(cfg->ccoe.routes, sizeof cfg->ccoe.routes, "arith:arith code:code");
    cfg->ccoe.own_head = own_head;
    cfg->run.threads = 1;
}

static void open_session_sized(ccoe_session *s, int own_head, int C, int T)
{
    ccoe_config cfg;
    route_config(&cfg, own_head, C, T);
    ccoe_error err = {0};
    assert_int_equal(ccoe_session_validate(&cfg, &err), CCOE_OK);
    assert_int_equal(ccoe_session_open(s, &cfg, 1, &err), CCOE_OK);
    ccoe_model_init_weights(&s->model, 7, CCOE_INIT_RANDOM);
}

static void open_session(ccoe_session *s, int own_head)
{
    open_session_sized(s, own_head, 32, 16);
}

/* Makes path q's head predict token `tok` with probability near 1 whatever the input, and the
 * other heads uniform: lnf gives the constant vector e_0, lm_head maps it to logit 12 at tok. */
static void force_head(ccoe_model *m, int q, int tok)
{
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size;
    for (int h = 0; h < m->n_heads; h++) {
        ccoe_head_view *hv = &m->w_heads[h];
        memset(hv->lnf_w, 0, (size_t)C * sizeof(float));
        memset(hv->lnf_b, 0, (size_t)C * sizeof(float));
        hv->lnf_b[0] = 1.0f;
        memset(hv->lm_head, 0, (size_t)V * C * sizeof(float));
    }
    m->w_heads[m->paths[q].head].lm_head[(size_t)tok * C] = 12.0f;
}

static void test_posterior_dominant_path(void **state)
{
    (void)state;
    ccoe_session s;
    open_session(&s, 1);
    ccoe_model *m = &s.model;
    assert_int_equal(m->n_paths, 3);
    const int q = 2, tok = 5, B = 2, T = 16, P = 3;
    force_head(m, q, tok);
    int32_t tokens[2 * 16], targets[2 * 16];
    for (int i = 0; i < B * T; i++) {
        tokens[i] = tok;
        targets[i] = tok;
    }
    targets[T - 1] = -1;
    ccoe_route_ws w;
    ccoe_error err = {0};
    assert_int_equal(ccoe_route_ws_init(&w, m, B, T, m->taskmap.n_domains, &err), CCOE_OK);
    float loss[2 * 16], loss_arg[2 * 16];
    int32_t path[2 * 16];
    double weights[2 * 16 * 3];
    long count = 0;
    const ccoe_routing mix = {.mode = CCOE_ROUTING_POSTERIOR};
    const double sum =
        ccoe_route_batch(m, &mix, &w, tokens, targets, B, T, loss, path, weights, &count);
    assert_int_equal(count, B * T - 1);
    for (int p = 0; p < P; p++) /* position 0: the prior */
        assert_true(fabs(weights[p] - 1.0 / P) < 1e-12);
    for (int b = 0; b < B; b++)
        for (int t = 1; t < T; t++) {
            assert_int_equal(path[b * T + t], q);
            if (t >= 3)
                assert_true(weights[((size_t)b * T + t) * P + q] > 0.999);
        }
    /* the mixture's loss approaches the dominant path's: -log p_q(tok) is about 0 */
    assert_true(sum / (double)count < 0.5);
    assert_true(loss[T + T - 2] < 1e-2);
    /* the argmax path takes q's loss from the second token on */
    const ccoe_routing am = {.mode = CCOE_ROUTING_POSTERIOR, .argmax = 1};
    ccoe_route_batch(m, &am, &w, tokens, targets, B, T, loss_arg, path, NULL, &count);
    for (int t = 1; t < T - 1; t++)
        assert_true(loss_arg[t] < 1e-2);
    /* generation: a prompt of byte 5s (the byte tokenizer's id 5) already picks q by its
     * likelihood, and q's text is more 5s; under the mixture too */
    const char *prompts[1] = {"\x05\x05\x05\x05"};
    char out0[64], *outs[1] = {out0};
    int paths[1] = {-1};
    const ccoe_gen_opts go = {.max_new = 4};
    assert_int_equal(
        ccoe_generate_routed(m, &s.tok, &s.batch, prompts, 1, &am, &go, outs, 64, paths, &err),
        CCOE_OK);
    assert_int_equal(paths[0], q);
    assert_string_equal(out0, "\x05\x05\x05\x05");
    paths[0] = -1;
    assert_int_equal(
        ccoe_generate_routed(m, &s.tok, &s.batch, prompts, 1, &mix, &go, outs, 64, paths, &err),
        CCOE_OK);
    assert_int_equal(paths[0], q);
    assert_string_equal(out0, "\x05\x05\x05\x05");
    ccoe_route_ws_free(&w);
    ccoe_session_close(&s);
}

static void test_posterior_causal_in_model(void **state)
{
    (void)state;
    ccoe_session s;
    open_session(&s, 0);
    ccoe_model *m = &s.model;
    const int B = 3, T = 16, P = m->n_paths;
    int32_t tokens[3 * 16], targets[3 * 16], tk2[3 * 16], tg2[3 * 16];
    for (int i = 0; i < B * T; i++)
        tokens[i] = (int32_t)((i * 37 + 11) % 90) + 3;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            targets[b * T + t] = t + 1 < T ? tokens[b * T + t + 1] : 17;
    ccoe_route_ws w;
    ccoe_error err = {0};
    assert_int_equal(ccoe_route_ws_init(&w, m, B, T, m->taskmap.n_domains, &err), CCOE_OK);
    float loss[3 * 16];
    int32_t path[3 * 16];
    double *w1 = tu_dnew((size_t)B * T * P), *w2 = tu_dnew((size_t)B * T * P);
    const ccoe_routing mix = {.mode = CCOE_ROUTING_POSTERIOR};
    ccoe_route_batch(m, &mix, &w, tokens, targets, B, T, loss, path, w1, NULL);
    int moved = 0;
    for (int t0 = 0; t0 + 1 < T; t0 += 3) {
        /* tokens t0 + 1 .. change, so do targets t0 .. */
        memcpy(tk2, tokens, sizeof tk2);
        for (int b = 0; b < B; b++)
            for (int t = t0 + 1; t < T; t++)
                tk2[b * T + t] = (int32_t)((t * 53 + b * 7) % 80) + 5;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                tg2[b * T + t] = t + 1 < T ? tk2[b * T + t + 1] : 17;
        ccoe_route_batch(m, &mix, &w, tk2, tg2, B, T, loss, path, w2, NULL);
        for (int b = 0; b < B; b++) {
            const size_t at = (size_t)b * T * P;
            assert_memory_equal(w1 + at, w2 + at, (size_t)(t0 + 1) * P * sizeof *w1);
            /* the test could fail: later weights do move */
            moved |= memcmp(w1 + at, w2 + at, (size_t)T * P * sizeof *w1) != 0;
        }
    }
    assert_true(moved);
    free(w1);
    free(w2);
    ccoe_route_ws_free(&w);
    ccoe_session_close(&s);
}

static void test_classifier_learns_domains(void **state)
{
    (void)state;
    ccoe_session s;
    /* windows of 64 bytes: the word problems (arith), stories (prose) and SQL questions are
     * all English, and a 16-byte window often cannot tell them apart */
    open_session_sized(&s, 0, 64, 64);
    ccoe_model *m = &s.model;
    ccoe_domain_router r;
    double acc = 0.0;
    ccoe_error err = {0};
    const ccoe_router_train_opts o = {.steps = 150, .hidden = 64, .lr = 0.003, .seed = 1,
                                      .log = stdout};
    /* the base stays frozen: its parameters are bit-identical afterwards */
    float *before = malloc(m->num_params * sizeof(float));
    memcpy(before, m->param_block, m->num_params * sizeof(float));
    assert_int_equal(ccoe_router_train(m, &s.data, &s.batch, &o, &r, &acc, &err), CCOE_OK);
    assert_memory_equal(before, m->param_block, m->num_params * sizeof(float));
    free(before);
    printf("router validation domain accuracy %.4f\n", acc);
    assert_true(acc > 0.8); /* chance: 0.2 (five domains) */
    assert_int_equal(r.layer, 1);
    /* routed evaluation: routing accuracy high, and the losses are finite */
    const ccoe_routing rt = {.mode = CCOE_ROUTING_CLASSIFIER, .router = &r};
    ccoe_route_eval ev[CCOE_MAX_DOMAINS];
    assert_int_equal(ccoe_route_eval_domains(m, &s.data, &s.tok, &s.batch, 2, &rt, NULL, ev, &err),
                     CCOE_OK);
    double racc = 0.0, n = 0.0;
    for (int d = 0; d < s.data.n_domains; d++) {
        assert_true(isfinite(ev[d].loss));
        racc += ev[d].route_acc * (double)ev[d].tokens;
        n += (double)ev[d].tokens;
        assert_true(ev[d].route_acc >= ev[d].domain_acc);
    }
    printf("classifier routing accuracy %.4f\n", racc / n);
    assert_true(racc / n > 0.85);
    /* checkpoint round trip */
    char dir[] = "/tmp/ccoe-route-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/a.safetensors", dir);
    snprintf(b, sizeof b, "%s/b.safetensors", dir);
    assert_int_equal(ccoe_checkpoint_save(a, &s.cfg, m, NULL, NULL, &err), CCOE_OK);
    assert_int_equal(ccoe_router_save(a, b, &r, m, &err), CCOE_OK);
    ccoe_config cfg2;
    ccoe_st_file *f = NULL;
    assert_int_equal(ccoe_checkpoint_open(b, &cfg2, &f, &err), CCOE_OK);
    assert_int_equal(ccoe_checkpoint_load(f, b, m, NULL, NULL, &err), CCOE_OK);
    ccoe_domain_router r2;
    int found = 0;
    assert_int_equal(ccoe_router_load(f, b, m, &r2, &found, &err), CCOE_OK);
    assert_int_equal(found, 1);
    assert_int_equal(r2.n, r.n);
    assert_memory_equal(r2.params, r.params, (r.n + 2 * (size_t)r.Tn * r.C) * sizeof(float));
    ccoe_router_free(&r2);
    ccoe_st_close(f);
    /* a file without a router: found = 0 */
    assert_int_equal(ccoe_checkpoint_open(a, &cfg2, &f, &err), CCOE_OK);
    assert_int_equal(ccoe_router_load(f, a, m, &r2 /* unused */, &found, &err), CCOE_OK);
    assert_int_equal(found, 0);
    ccoe_st_close(f);
    /* a router of another width is refused with the fix named */
    ccoe_domain_router bad;
    assert_int_equal(ccoe_router_init(&bad, 0, 8, 0, s.data.n_domains, 16, &err), CCOE_OK);
    const ccoe_routing rb = {.mode = CCOE_ROUTING_CLASSIFIER, .router = &bad};
    assert_int_equal(ccoe_routing_check(m, &rb, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "train it again with `ccoe train-router`");
    const ccoe_routing rn = {.mode = CCOE_ROUTING_CLASSIFIER};
    assert_int_equal(ccoe_routing_check(m, &rn, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "ccoe train-router CHECKPOINT -o OUT");
    ccoe_router_free(&bad);
    ccoe_router_free(&r2);
    unlink(a);
    unlink(b);
    rmdir(dir);
    ccoe_router_free(&r);
    ccoe_session_close(&s);
}

/* Routed generation runs each prompt down every path with its own cache rows: a router that
 * always names domain code generates exactly what the rule generates for domain code, and the
 * posterior's argmax over paths that all equal the base (experts initialised as copies) is the
 * base path's text. */
static void test_routed_generation_matches_rule(void **state)
{
    (void)state;
    ccoe_session s;
    open_session(&s, 0);
    ccoe_model *m = &s.model;
    ccoe_error err = {0};
    const char *prompts[2] = {"12+30=", "def f(x):"};
    char a0[64], a1[64], b0[64], b1[64];
    char *ra[2] = {a0, a1}, *rb[2] = {b0, b1};
    const ccoe_gen_opts go = {.max_new = 6};
    const int code = ccoe_data_domain_index(&s.data, "code");
    const int prose = ccoe_data_domain_index(&s.data, "prose");
    assert_true(code >= 0 && prose >= 0);
    assert_int_equal(m->taskmap.route[code] + 1, 2);
    assert_int_equal(ccoe_generate(m, &s.tok, &s.batch, prompts, code, 2, &go, ra, 64, &err),
                     CCOE_OK);
    ccoe_domain_router r;
    assert_int_equal(ccoe_router_init(&r, ccoe_route_feature_layer(m), m->cfg.n_embd, 0,
                                      s.data.n_domains, 16, &err),
                     CCOE_OK);
    r.b2[code] = 10.0f; /* every position: domain code */
    const ccoe_routing cls = {.mode = CCOE_ROUTING_CLASSIFIER, .router = &r};
    int paths[2] = {-1, -1};
    assert_int_equal(
        ccoe_generate_routed(m, &s.tok, &s.batch, prompts, 2, &cls, &go, rb, 64, paths, &err),
        CCOE_OK);
    assert_int_equal(paths[0], 2);
    assert_int_equal(paths[1], 2);
    assert_string_equal(a0, b0);
    assert_string_equal(a1, b1);
    /* the base path's text differs from the code expert's (the test could fail) */
    char c0[64], c1[64], *rc[2] = {c0, c1};
    assert_int_equal(ccoe_generate(m, &s.tok, &s.batch, prompts, prose, 2, &go, rc, 64, &err),
                     CCOE_OK);
    assert_true(strcmp(a0, c0) != 0 || strcmp(a1, c1) != 0);
    /* experts as copies of the base: every path is the base; the argmax posterior (ties to the
     * base) generates the base's text */
    ccoe_model_init_weights(m, 7, CCOE_INIT_COPY);
    assert_int_equal(ccoe_generate(m, &s.tok, &s.batch, prompts, prose, 2, &go, rc, 64, &err),
                     CCOE_OK);
    const ccoe_routing am = {.mode = CCOE_ROUTING_POSTERIOR, .argmax = 1};
    assert_int_equal(
        ccoe_generate_routed(m, &s.tok, &s.batch, prompts, 2, &am, &go, rb, 64, paths, &err),
        CCOE_OK);
    assert_string_equal(c0, b0);
    assert_string_equal(c1, b1);
    /* more prompts than the batch holds rows for every path: refused, naming the fix */
    const char *many[3] = {"a", "b", "c"};
    char *rm[3] = {a0, a1, b0};
    assert_int_equal(
        ccoe_generate_routed(m, &s.tok, &s.batch, many, 3, &am, &go, rm, 64, NULL, &err),
        CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "raise train.batch_size");
    ccoe_router_free(&r);
    ccoe_session_close(&s);
}

static void test_rule_matches_eval(void **state)
{
    (void)state;
    ccoe_session s;
    open_session(&s, 0);
    ccoe_error err = {0};
    ccoe_domain_eval ev[CCOE_MAX_DOMAINS];
    ccoe_route_eval re[CCOE_MAX_DOMAINS];
    assert_int_equal(
        ccoe_eval_domains(&s.model, &s.data, &s.tok, &s.batch, 2, 0, NULL, ev, &err), CCOE_OK);
    const ccoe_routing rule = {.mode = CCOE_ROUTING_RULE};
    assert_int_equal(
        ccoe_route_eval_domains(&s.model, &s.data, &s.tok, &s.batch, 2, &rule, NULL, re, &err),
        CCOE_OK);
    for (int d = 0; d < s.data.n_domains; d++) {
        assert_true(ev[d].loss == re[d].loss);
        assert_int_equal(ev[d].tokens, re[d].tokens);
        assert_true(re[d].route_acc == 1.0);
    }
    /* a model without experts refuses the other modes, naming the fix */
    ccoe_session_close(&s);
    ccoe_config cfg;
    ccoe_config_defaults(&cfg);
    cfg.model.n_layer = 1;
    cfg.model.n_embd = 16;
    cfg.model.n_head = 2;
    cfg.model.seq_len = 16;
    cfg.train.batch_size = 2;
    cfg.data.task_examples = 0;
    assert_int_equal(ccoe_session_validate(&cfg, &err), CCOE_OK);
    assert_int_equal(ccoe_session_open(&s, &cfg, 1, &err), CCOE_OK);
    const ccoe_routing post = {.mode = CCOE_ROUTING_POSTERIOR};
    assert_int_equal(
        ccoe_route_eval_domains(&s.model, &s.data, &s.tok, &s.batch, 1, &post, NULL, re, &err),
        CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "use --routing rule");
    ccoe_session_close(&s);
}

int main(void)
{
    ccoe_error err = {0};
    if (ccoe_gemm_init(&g_gemm, CCOE_GEMM_AUTO, 1, &err) != CCOE_OK)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router_backward_linear),
        cmocka_unit_test(test_router_backward_hidden),
        cmocka_unit_test(test_posterior_pure),
        cmocka_unit_test(test_posterior_dominant_path),
        cmocka_unit_test(test_posterior_causal_in_model),
        cmocka_unit_test(test_classifier_learns_domains),
        cmocka_unit_test(test_routed_generation_matches_rule),
        cmocka_unit_test(test_rule_matches_eval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
