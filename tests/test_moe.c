/* test_moe.c - the MoE layer (moe.c), its reference (moe_ref.c) and the gates (variants/).
 *
 * 1. Gates: selection order and ties; every gate's reference backward and the noisy load
 *    estimator against central finite differences (double, selection fixed, stored noise
 *    reused); the float gates against their references.
 * 2. The whole-layer reference against finite differences (inputs, router, noise and expert
 *    weights), each aux loss on its own and all together, with capacity drops.
 * 3. The fast float layer against the reference (output, aux loss, every gradient, accumulating)
 *    for each gate, renormalise on/off, GELU and SwiGLU, biases on/off, capacity with drops and
 *    dropless, odd shapes (N = 1, E = 1, K = 1, F not a multiple of 16).
 * 4. Invariants: weights sum to 1, tokens_per_expert + dropped_slots = N K, dispatch -> identity
 *    -> combine returns the input, E = K = 1 equals the dense FFN, the domain gate follows its
 *    table, noise does not depend on the batch split, no noise in evaluation.
 * 5. A large balancing coefficient lowers the load CV (SGD on the router only, aux loss only).
 * 6. Bad configurations are rejected with messages naming the field.
 * Speed is not asserted: with CCOE_MOE_BENCH=1 test_bench prints timings (MoE vs dense FFN).
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "moe_cases.h"

#include "gate.h"
#include "gemm.h"
#include "kernels.h"
#include "moe.h"
#include "rng.h"

#define FD_H 1e-6
#define FD_ATOL 1e-8
#define FD_RTOL 1e-6

/* float layer vs double reference */
#define F_ATOL 2e-5
#define F_RTOL 2e-4

static ccoe_gemm G; /* AUTO backend, 2 threads: what the trainer uses */

/* ---- helpers ---- */

static int setup_group(void **state)
{
    (void)state;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(&G, CCOE_GEMM_AUTO, 2, &err) != CCOE_OK) {
        fprintf(stderr, "gemm init: %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* One test configuration (tests/util/moe_cases.h). */
typedef tu_moe_case moe_case;

static void case_config(const moe_case *c, ccoe_moe_config *cfg) { tu_moe_case_config(c, cfg); }

/* A layer with its memory: parameters, gradients, saved activations, scratch, I/O buffers. */
typedef struct fx {
    ccoe_moe m;
    ccoe_arena mem;
    ccoe_moe_acts a;
    ccoe_moe_scratch s;
    float *params, *grads, *inp, *out, *dout, *dinp;
    int32_t domains[64];
    int32_t *tokens; /* (N) token ids (gates with CCOE_GATE_TOKEN) */
    ccoe_moe_pass pass;
    int N;
} fx;

/* Random parameters, tensor by tensor (scaled like a trained layer: O(1) logits), padding 0. */
static void fill_params(const ccoe_moe *m, float *p, uint64_t seed)
{
    memset(p, 0, m->num_params * sizeof(float));
    for (int i = 0; i < m->n_tensors; i++) {
        ccoe_moe_tensor t;
        ccoe_moe_tensor_at(m, i, &t);
        float scale = t.ndim == 2 ? 2.0f / sqrtf((float)t.shape[1]) : 0.3f;
        if (strstr(t.name, "noise"))
            scale = 1.0f / sqrtf((float)t.shape[1]);
        tu_fill_uniform(p + t.offset, t.numel, seed + 7 * (uint64_t)i, scale);
    }
}

static void fx_init(fx *f, const ccoe_moe_config *cfg, int C, int N, int train, uint64_t seed)
{
    memset(f, 0, sizeof *f);
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_status st = ccoe_moe_init(&f->m, cfg, C, N, &G, &err);
    if (st != CCOE_OK)
        fprintf(stderr, "moe init: %s\n", err.msg);
    assert_int_equal(st, CCOE_OK);
    size_t ab = ccoe_moe_acts_bytes(&f->m), sb = ccoe_moe_scratch_bytes(&f->m);
    assert_int_equal(ccoe_arena_alloc(&f->mem, ab + sb, "moe test", &err), CCOE_OK);
    ccoe_moe_acts_carve(&f->a, &f->m, &f->mem);
    ccoe_moe_scratch_carve(&f->s, &f->m, &f->mem);
    assert_true(f->mem.used == ab + sb); /* sizing pass and carving pass agree */
    f->N = N;
    f->params = tu_fnew(f->m.num_params);
    f->grads = tu_fnew(f->m.num_params);
    f->inp = tu_fnew((size_t)N * C);
    f->out = tu_fnew((size_t)N * C);
    f->dout = tu_fnew((size_t)N * C);
    f->dinp = tu_fnew((size_t)N * C);
    fill_params(&f->m, f->params, seed);
    tu_fill_uniform(f->inp, (size_t)N * C, seed + 1000, 1.0f);
    tu_fill_uniform(f->dout, (size_t)N * C, seed + 2000, 1.0f);
    /* domain gate: sequences of T = 8 rows, domains cycling 0..3 */
    for (int b = 0; b < 64; b++)
        f->domains[b] = (int32_t)((b * 3 + 1) % 4);
    f->pass.train = train;
    f->pass.seed = 1234;
    f->pass.step = 7;
    f->pass.layer = 2;
    f->pass.token_offset = 0;
    f->pass.domains = f->domains;
    f->pass.T = 8;
    /* token-id gates: ids spread over a vocabulary of 97 (every row gets one) */
    f->tokens = malloc((size_t)N * sizeof(int32_t));
    assert_non_null(f->tokens);
    for (int n = 0; n < N; n++)
        f->tokens[n] = (int32_t)(((uint64_t)n * 37u + seed) % 97u);
    f->pass.tokens = f->tokens;
}

static void fx_free(fx *f)
{
    ccoe_arena_free(&f->mem);
    free(f->params);
    free(f->grads);
    free(f->inp);
    free(f->out);
    free(f->dout);
    free(f->dinp);
    free(f->tokens);
}

/* Double copies of what the reference needs: routing from the fast forward's acts. */
typedef struct ref_routing {
    ccoe_moe_routing r;
    double *noise;
} ref_routing;

static void routing_from_acts(ref_routing *rr, const fx *f)
{
    rr->noise = NULL;
    rr->r.ids = f->a.ids;
    rr->r.slot = f->a.slot;
    rr->r.kth = f->a.kth;
    rr->r.T = f->a.seq_T; /* the sequences of the fast forward (pass.T) */
    rr->r.noise = NULL;
    if (f->a.noise) {
        rr->noise = tu_dnew((size_t)f->N * f->m.E);
        tu_to_double(rr->noise, f->a.noise, (size_t)f->N * f->m.E);
        rr->r.noise = rr->noise;
    }
}

/* ======================= 1. gates ======================= */

static void test_gate_select(void **state)
{
    (void)state;
    int32_t ids[8], kth;
    const float s1[6] = {0.5f, 2.0f, 2.0f, -1.0f, 3.0f, 2.0f};
    ccoe_gate_select(ids, &kth, s1, 6, 3);
    assert_int_equal(ids[0], 4);
    assert_int_equal(ids[1], 1); /* ties: lower index first */
    assert_int_equal(ids[2], 2);
    assert_int_equal(kth, 5);
    ccoe_gate_select(ids, &kth, s1, 6, 6);
    const int32_t want[6] = {4, 1, 2, 5, 0, 3};
    for (int j = 0; j < 6; j++)
        assert_int_equal(ids[j], want[j]);
    assert_int_equal(kth, -1);
    const float s2[4] = {1.0f, 1.0f, 1.0f, 1.0f}; /* all equal */
    ccoe_gate_select(ids, &kth, s2, 4, 2);
    assert_int_equal(ids[0], 0);
    assert_int_equal(ids[1], 1);
    assert_int_equal(kth, 2);
    /* NaN scores never produce invalid or repeated indices */
    const float s3[5] = {NAN, 1.0f, NAN, 4.0f, 2.0f};
    ccoe_gate_select(ids, &kth, s3, 5, 3);
    int seen[5] = {0};
    for (int j = 0; j < 3; j++) {
        assert_true(ids[j] >= 0 && ids[j] < 5);
        assert_int_equal(seen[ids[j]]++, 0);
    }
    assert_true(kth >= 0 && kth < 5 && !seen[kth]);
    /* random scores against a brute-force ranking (rank = number of entries ahead) */
    ccoe_rng r;
    ccoe_rng_seed(&r, 5);
    for (int trial = 0; trial < 200; trial++) {
        int E = 1 + (int)ccoe_rng_below(&r, 20), K = 1 + (int)ccoe_rng_below(&r, (uint64_t)E);
        float s[20];
        for (int i = 0; i < E; i++)
            s[i] = (float)ccoe_rng_below(&r, 5); /* many ties */
        int32_t id[20];
        ccoe_gate_select(id, &kth, s, E, K);
        for (int i = 0; i < E; i++) {
            int rank = 0;
            for (int q = 0; q < E; q++)
                rank += s[q] > s[i] || (s[q] == s[i] && q < i);
            if (rank < K)
                assert_int_equal(id[rank], i);
            else if (rank == K)
                assert_int_equal(kth, i);
        }
        if (K == E)
            assert_int_equal(kth, -1);
    }
}

typedef struct gate_ctx {
    const ccoe_gate_ops *g;
    ccoe_gate_ref_args a;
    double *logits, *nl, *noise, *out, *R;
    int32_t ids[CCOE_GATE_MAX_EXPERTS];
    int32_t kth;
    int load; /* objective: 0 = sum_j w_j R_j, 1 = sum_i P_i R_i */
} gate_ctx;

static double gate_obj(void *p)
{
    gate_ctx *c = p;
    if (c->load) {
        c->g->ref_load(c->out, c->ids, c->kth, &c->a);
        return tu_ddot(c->out, c->R, (size_t)c->a.E);
    }
    c->g->ref_weights(c->out, c->ids, &c->a);
    return tu_ddot(c->out, c->R, (size_t)c->a.K);
}

/* Scores the gate selects on, for one token (float, as the fast path). */
static void gate_scores(float *H, const gate_ctx *c)
{
    for (int i = 0; i < c->a.E; i++) {
        H[i] = (float)c->logits[i];
        if (c->nl)
            H[i] += (float)(c->noise[i] * (ccoe_gate_softplus_d(c->nl[i]) + c->a.noise_eps));
    }
}

static void fd_gate_case(const char *name, int E, int K, int renorm, double eps, int load,
                         uint64_t seed)
{
    gate_ctx c;
    memset(&c, 0, sizeof c);
    c.g = ccoe_gate_find(name);
    assert_non_null(c.g);
    int noisy = (c.g->flags & CCOE_GATE_NOISE) != 0;
    c.logits = tu_dnew(E);
    c.nl = noisy ? tu_dnew(E) : NULL;
    c.noise = noisy ? tu_dnew(E) : NULL;
    c.out = tu_dnew(E);
    c.R = tu_dnew(E);
    tu_fill_uniform_d(c.logits, E, seed, 2.0);
    tu_fill_uniform_d(c.R, E, seed + 1, 1.0);
    if (noisy) {
        tu_fill_uniform_d(c.nl, E, seed + 2, 2.0);
        for (int i = 0; i < E; i++)
            c.noise[i] = ccoe_hash_normal(seed, 0, 0, (uint64_t)i);
    }
    c.a = (ccoe_gate_ref_args){E, K, renorm, eps, c.logits, c.nl, c.noise};
    c.load = load;
    float H[CCOE_GATE_MAX_EXPERTS];
    gate_scores(H, &c);
    ccoe_gate_select(c.ids, &c.kth, H, E, K);
    double *dl = tu_dnew(E), *dnl = tu_dnew(E);
    gate_obj(&c);
    if (load)
        c.g->ref_load_backward(dl, dnl, c.R, c.ids, c.kth, &c.a);
    else
        c.g->ref_backward(dl, dnl, c.R, c.ids, &c.a);
    char what[96];
    snprintf(what, sizeof what, "gate %s%s E%d K%d renorm %d dlogits", name,
             load ? " load" : "", E, K, renorm);
    TU_ASSERT_GRAD(what, gate_obj, &c, c.logits, dl, (size_t)E, FD_H, FD_ATOL, FD_RTOL);
    if (noisy) {
        snprintf(what, sizeof what, "gate %s%s E%d K%d dnoise_logits", name, load ? " load" : "",
                 E, K);
        TU_ASSERT_GRAD(what, gate_obj, &c, c.nl, dnl, (size_t)E, FD_H, FD_ATOL, FD_RTOL);
    }
    free(c.logits);
    free(c.nl);
    free(c.noise);
    free(c.out);
    free(c.R);
    free(dl);
    free(dnl);
}

static void test_fd_gates(void **state)
{
    (void)state;
    for (uint64_t s = 0; s < 4; s++) {
        fd_gate_case("softmax", 5, 5, 1, 0.0, 0, 100 + s);
        fd_gate_case("softmax", 1, 1, 1, 0.0, 0, 110 + s);
        fd_gate_case("topk", 6, 2, 1, 0.0, 0, 120 + s);
        fd_gate_case("topk", 6, 2, 0, 0.0, 0, 130 + s);
        fd_gate_case("topk", 4, 1, 0, 0.0, 0, 140 + s);
        fd_gate_case("topk", 3, 3, 0, 0.0, 0, 150 + s);
        fd_gate_case("noisy_topk", 7, 3, 1, 0.0, 0, 160 + s);
        fd_gate_case("noisy_topk", 4, 4, 1, 0.01, 0, 170 + s);
        fd_gate_case("noisy_topk", 7, 3, 1, 0.0, 1, 180 + s); /* smooth load estimator */
        fd_gate_case("noisy_topk", 5, 1, 1, 0.01, 1, 190 + s);
        fd_gate_case("noisy_topk", 2, 1, 1, 0.0, 1, 200 + s);
    }
}

/* Float gates (all N tokens, threaded) against their references, token by token. */
static void fast_gate_case(const char *name, int N, int E, int K, int renorm, float eps,
                           uint64_t seed)
{
    const ccoe_gate_ops *g = ccoe_gate_find(name);
    assert_non_null(g);
    int noisy = (g->flags & CCOE_GATE_NOISE) != 0;
    size_t NE = (size_t)N * E, NK = (size_t)N * K;
    float *logits = tu_fnew(NE), *nl = tu_fnew(NE), *noise = tu_fnew(NE), *w = tu_fnew(NK), *dw = tu_fnew(NK);
    float *dl = tu_fnew(NE), *dnl = tu_fnew(NE), *P = tu_fnew(NE);
    int32_t *ids = calloc(NK, sizeof *ids), *kth = calloc((size_t)N, sizeof *kth);
    assert_non_null(ids);
    assert_non_null(kth);
    tu_fill_uniform(logits, NE, seed, 2.0f);
    tu_fill_uniform(nl, NE, seed + 1, 2.0f);
    tu_fill_uniform(dw, NK, seed + 2, 1.0f);
    tu_fill_uniform(dl, NE, seed + 3, 1.0f); /* pre-filled: backward accumulates */
    tu_fill_uniform(dnl, NE, seed + 4, 1.0f);
    for (size_t i = 0; i < NE; i++)
        noise[i] = ccoe_hash_normal(seed, 1, 2, i);
    double *dl0 = tu_dnew(NE), *dnl0 = tu_dnew(NE);
    tu_to_double(dl0, dl, NE);
    tu_to_double(dnl0, dnl, NE);
    ccoe_gate_args a = {.N = N, .E = E, .K = K, .renormalize = renorm, .noise_eps = eps,
                        .logits = logits, .noise_logits = nl, .noise = noise};
    g->forward(ids, w, kth, &a);
    g->backward(dl, dnl, dw, ids, w, &a);
    double *dload = tu_dnew(E);
    tu_fill_uniform_d(dload, E, seed + 5, 1.0);
    if (noisy && K < E) {
        g->load_forward(P, ids, kth, &a);
        g->load_backward(dl, dnl, dload, ids, kth, &a);
    }
    double ld[CCOE_GATE_MAX_EXPERTS], nld[CCOE_GATE_MAX_EXPERTS], nzd[CCOE_GATE_MAX_EXPERTS];
    double wr[CCOE_GATE_MAX_EXPERTS], dwd[CCOE_GATE_MAX_EXPERTS], Pr[CCOE_GATE_MAX_EXPERTS];
    char what[96];
    for (int n = 0; n < N; n++) {
        tu_to_double(ld, logits + (size_t)n * E, (size_t)E);
        tu_to_double(nld, nl + (size_t)n * E, (size_t)E);
        tu_to_double(nzd, noise + (size_t)n * E, (size_t)E);
        tu_to_double(dwd, dw + (size_t)n * K, (size_t)K);
        ccoe_gate_ref_args ra = {E, K, renorm, eps, ld, nld, nzd};
        const int32_t *id = ids + (size_t)n * K;
        /* the selection: descending scores */
        float H[CCOE_GATE_MAX_EXPERTS];
        for (int i = 0; i < E; i++)
            H[i] = logits[(size_t)n * E + i] +
                   (noisy ? noise[(size_t)n * E + i] *
                                (ccoe_gate_softplus(nl[(size_t)n * E + i]) + eps)
                          : 0.0f);
        int32_t want[CCOE_GATE_MAX_EXPERTS], wkth;
        ccoe_gate_select(want, &wkth, H, E, K);
        for (int j = 0; j < K; j++)
            assert_int_equal(id[j], want[j]);
        if (noisy)
            assert_int_equal(kth[n], wkth);
        g->ref_weights(wr, id, &ra);
        snprintf(what, sizeof what, "%s weights token %d", name, n);
        TU_ASSERT_CLOSE(what, w + (size_t)n * K, wr, (size_t)K, 1e-6, 1e-5);
        double *gl = dl0 + (size_t)n * E, *gnl = dnl0 + (size_t)n * E;
        g->ref_backward(gl, gnl, dwd, id, &ra);
        if (noisy && K < E) {
            g->ref_load(Pr, id, kth[n], &ra);
            snprintf(what, sizeof what, "%s load P token %d", name, n);
            TU_ASSERT_CLOSE(what, P + (size_t)n * E, Pr, (size_t)E, 1e-6, 1e-5);
            g->ref_load_backward(gl, gnl, dload, id, kth[n], &ra);
        }
    }
    snprintf(what, sizeof what, "%s dlogits", name);
    TU_ASSERT_CLOSE(what, dl, dl0, NE, 1e-6, 1e-5);
    if (noisy) {
        snprintf(what, sizeof what, "%s dnoise_logits", name);
        TU_ASSERT_CLOSE(what, dnl, dnl0, NE, 1e-6, 1e-5);
    }
    free(logits);
    free(nl);
    free(noise);
    free(w);
    free(dw);
    free(dl);
    free(dnl);
    free(P);
    free(ids);
    free(kth);
    free(dl0);
    free(dnl0);
    free(dload);
}

static void test_fast_gates(void **state)
{
    (void)state;
    fast_gate_case("softmax", 37, 6, 6, 1, 0.0f, 300);
    fast_gate_case("softmax", 5, 1, 1, 1, 0.0f, 301);
    fast_gate_case("topk", 41, 8, 2, 1, 0.0f, 302);
    fast_gate_case("topk", 41, 8, 3, 0, 0.0f, 303);
    fast_gate_case("topk", 3, 5, 5, 0, 0.0f, 304);
    fast_gate_case("noisy_topk", 43, 8, 2, 1, 0.0f, 305);
    fast_gate_case("noisy_topk", 17, 6, 1, 1, 0.01f, 306);
    fast_gate_case("noisy_topk", 9, 4, 4, 1, 0.0f, 307);
}

/* Every learned gate of the registry, with shapes its flags allow: a gate added to
 * variants/gates.def is checked by finite differences and fast-vs-reference here without
 * an edit of this file (the hand-written cases above cover each gate's corners). */
static void test_registry_gates(void **state)
{
    (void)state;
    int checked = 0;
    for (int i = 0; i < ccoe_gate_count(); i++) {
        const ccoe_gate_ops *g = ccoe_gate_at(i);
        if (!(g->flags & CCOE_GATE_ROUTER)) {
            /* rule-based: no gradient; the registry layer tests below still check it */
            tu_gate_skip(g, "gate finite differences", "no router (CCOE_GATE_ROUTER unset)");
            continue;
        }
        const int E = 6;
        const int K = tu_gate_top_k(g, E, 2);
        for (uint64_t s = 0; s < 2; s++) {
            fd_gate_case(g->name, E, K, 1, 0.0, 0, 700 + 10 * (uint64_t)i + s);
            if (g->load_forward)
                fd_gate_case(g->name, E, K, 1, 0.0, 1, 800 + 10 * (uint64_t)i + s);
            if (g->flags & CCOE_GATE_RENORM_OPT)
                fd_gate_case(g->name, E, K, 0, 0.0, 0, 900 + 10 * (uint64_t)i + s);
        }
        fast_gate_case(g->name, 29, E, K, 1, 0.0f, 1000 + (uint64_t)i);
        checked++;
    }
    assert_true(checked >= 3); /* softmax, topk, noisy_topk at least */
}

/* ======================= 2. the reference layer vs finite differences ======================= */

typedef struct lref_ctx {
    const ccoe_moe *m;
    double *params, *inp, *out, *R, *scratch;
    ccoe_moe_routing r;
    double aux_scale;
    int N;
} lref_ctx;

static double lref_obj(void *p)
{
    lref_ctx *c = p;
    double aux = ccoe_moe_ref_forward(c->m, c->out, NULL, c->inp, c->params, &c->r, c->scratch,
                                      c->N);
    return tu_ddot(c->out, c->R, (size_t)c->N * c->m->C) + c->aux_scale * aux;
}

static void fd_layer_case(const moe_case *mc, uint64_t seed)
{
    ccoe_moe_config cfg;
    case_config(mc, &cfg);
    fx f;
    fx_init(&f, &cfg, mc->C, mc->N, mc->train > 0, seed);
    ccoe_moe_stats st;
    ccoe_moe_forward(&f.m, f.out, &f.a, &st, f.inp, f.params, &f.pass, f.N); /* the routing */
    if (mc->expect_drops)
        assert_true(st.dropped_slots > 0);
    const ccoe_moe *m = &f.m;
    size_t NC = (size_t)f.N * m->C, P = m->num_params;
    lref_ctx c = {m, tu_dnew(P), tu_dnew(NC), tu_dnew(NC), tu_dnew(NC), tu_dnew(ccoe_moe_ref_scratch_doubles(m)),
                  {0}, 0.7, f.N};
    tu_to_double(c.params, f.params, P);
    tu_to_double(c.inp, f.inp, NC);
    tu_to_double(c.R, f.dout, NC);
    ref_routing rr;
    routing_from_acts(&rr, &f);
    c.r = rr.r;
    double *dinp = tu_dnew(NC), *dparams = tu_dnew(P);
    lref_obj(&c);
    ccoe_moe_ref_backward(m, dinp, dparams, c.R, c.inp, c.params, &c.r, c.aux_scale, c.scratch,
                          f.N);
    char what[128];
    snprintf(what, sizeof what, "ref layer %s N%d E%d K%d dinp", mc->gate, mc->N, mc->E, mc->K);
    TU_ASSERT_GRAD(what, lref_obj, &c, c.inp, dinp, NC, FD_H, FD_ATOL, FD_RTOL);
    for (int i = 0; i < m->n_tensors; i++) {
        ccoe_moe_tensor t;
        ccoe_moe_tensor_at(m, i, &t);
        snprintf(what, sizeof what, "ref layer %s N%d E%d K%d d%s", mc->gate, mc->N, mc->E, mc->K,
                 t.name);
        TU_ASSERT_GRAD(what, lref_obj, &c, c.params + t.offset, dparams + t.offset, t.numel, FD_H,
                       FD_ATOL, FD_RTOL);
    }
    free(c.params);
    free(c.inp);
    free(c.out);
    free(c.R);
    free(c.scratch);
    free(rr.noise);
    free(dinp);
    free(dparams);
    fx_free(&f);
}

static void test_fd_layer(void **state)
{
    (void)state;
    /*                 gate          N  C  E  K  F sw b rn  cf   imp  load sw   z   eps tr drops */
    const moe_case cases[] = {
        {"topk",         9, 5, 4, 2, 3, 0, 1, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0},
        {"topk",         9, 5, 4, 2, 3, 0, 1, 1, 0.0, 0.8, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0},
        {"topk",         9, 5, 4, 2, 3, 1, 0, 0, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0, 0, 0, 0},
        {"topk",         9, 5, 4, 2, 3, 0, 1, 0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.0, 0, 0, 0, 0},
        {"topk",        12, 4, 3, 2, 2, 0, 1, 1, 1.0, 0.5, 0.0, 0.4, 0.2, 0.0, 0, 1, 0, 0},
        {"softmax",      7, 4, 3, 3, 3, 1, 1, 1, 0.0, 0.6, 0.0, 0.5, 0.2, 0.0, 0, 0, 0, 0},
        {"noisy_topk",   9, 5, 5, 2, 3, 0, 1, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 0, 0, 0},
        {"noisy_topk",   9, 5, 5, 2, 3, 0, 1, 1, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 1, 0, 0, 0},
        {"noisy_topk",   9, 5, 5, 2, 3, 1, 0, 1, 0.0, 0.7, 0.0, 0.0, 0.0, 0.01, 1, 0, 0, 0},
        {"noisy_topk",  12, 4, 4, 2, 2, 0, 1, 1, 1.0, 0.5, 0.6, 0.4, 0.2, 0.0, 1, 1, 0, 0},
        {"noisy_topk",   6, 3, 3, 1, 2, 1, 1, 1, 0.0, 0.5, 0.6, 0.4, 0.2, 0.01, 0, 0, 0, 0},
        {"domain",      16, 4, 5, 1, 3, 0, 1, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 0, 0, 0},
        /* fixed routing with drops: the hash gate (the domain gate is always dropless) */
        {"hash",        16, 4, 5, 1, 3, 0, 1, 1, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 1, 0, 0},
        /* shared experts beside routed ones with drops; beside the domain rule; SwiGLU */
        {"topk",        12, 4, 3, 2, 2, 0, 1, 1, 1.0, 0.5, 0.0, 0.4, 0.2, 0.0, 0, 1, 2, 0},
        {"domain",      16, 4, 5, 1, 3, 1, 0, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 0, 1, 0},
        {"lossfree",     9, 5, 5, 2, 3, 1, 1, 1, 0.0, 0.0, 0.0, 0.3, 0.1, 0.0, 1, 0, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        fd_layer_case(&cases[i], 400 + 10 * i);
}

/* ======================= 3. fast layer vs reference, with invariants ======================= */

static void check_invariants(const moe_case *mc, const fx *f, const ccoe_moe_stats *st)
{
    const ccoe_moe *m = &f->m;
    const int N = f->N, E = m->E, K = m->K;
    int64_t sum = 0;
    for (int e = 0; e < E; e++) {
        sum += st->tokens_per_expert[e];
        if (st->capacity > 0)
            assert_true(st->tokens_per_expert[e] <= st->capacity);
    }
    assert_true(sum + st->dropped_slots == (int64_t)N * K);
    assert_int_equal(sum, f->a.rows);
    if (mc->cf == 0.0)
        assert_true(st->dropped_slots == 0 && st->dropped_tokens == 0);
    if (mc->expect_drops)
        assert_true(st->dropped_slots > 0);
    int64_t dropped_tokens = 0, routed[CCOE_MOE_MAX_EXPERTS] = {0};
    /* weights sum to 1 unless a gate that honours renormalize = 0 has it off */
    int normalised = mc->renorm || !(ccoe_gate_find(mc->gate)->flags & CCOE_GATE_RENORM_OPT);
    for (int n = 0; n < N; n++) {
        const int32_t *id = f->a.ids + (size_t)n * K, *sl = f->a.slot + (size_t)n * K;
        const float *w = f->a.weights + (size_t)n * K;
        double ws = 0.0;
        int kept = 0;
        for (int j = 0; j < K; j++) {
            assert_true(id[j] >= 0 && id[j] < E);
            for (int q = 0; q < j; q++)
                assert_true(id[q] != id[j]);
            routed[id[j]]++;
            ws += w[j];
            assert_true(w[j] >= 0.0f);
            if (sl[j] >= 0) {
                kept++;
                assert_true(sl[j] >= f->a.offsets[id[j]] && sl[j] < f->a.offsets[id[j] + 1]);
                assert_int_equal(f->a.row_token[sl[j]], n);
            }
        }
        dropped_tokens += kept == 0;
        if (normalised)
            assert_true(fabs(ws - 1.0) < 1e-5);
        else
            assert_true(ws <= 1.0 + 1e-5);
    }
    assert_true(dropped_tokens == st->dropped_tokens);
    for (int e = 0; e < E; e++)
        assert_true(routed[e] == st->routed_per_expert[e]);
    /* tokens whose slots all dropped output 0 (the residual carries them), or only the shared
     * experts' sum */
    for (int n = 0; n < N && m->cfg.n_shared == 0; n++) {
        int kept = 0;
        for (int j = 0; j < K; j++)
            kept += f->a.slot[(size_t)n * K + j] >= 0;
        if (!kept)
            for (int c = 0; c < m->C; c++)
                assert_true(f->out[(size_t)n * m->C + c] == 0.0f);
    }
}

static void fast_case(const moe_case *mc, ccoe_moe_schedule sched, uint64_t seed)
{
    ccoe_moe_config cfg;
    case_config(mc, &cfg);
    fx f;
    fx_init(&f, &cfg, mc->C, mc->N, mc->train > 0, seed);
    f.m.schedule = sched;
    const ccoe_moe *m = &f.m;
    const int N = f.N;
    const size_t NC = (size_t)N * m->C, P = m->num_params;
    ccoe_moe_stats st;
    double aux = ccoe_moe_forward(m, f.out, &f.a, &st, f.inp, f.params, &f.pass, N);
    check_invariants(mc, &f, &st);
    assert_true(fabs(aux - st.loss_aux) < 1e-12);

    ref_routing rr;
    routing_from_acts(&rr, &f);
    double *pd = tu_dnew(P), *xd = tu_dnew(NC), *od = tu_dnew(NC), *dd = tu_dnew(NC);
    double *scratch = tu_dnew(ccoe_moe_ref_scratch_doubles(m));
    tu_to_double(pd, f.params, P);
    tu_to_double(xd, f.inp, NC);
    tu_to_double(dd, f.dout, NC);
    ccoe_moe_aux ra;
    double aux_ref = ccoe_moe_ref_forward(m, od, &ra, xd, pd, &rr.r, scratch, N);
    char what[160];
    if (sched != CCOE_MOE_SCHED_AUTO)
        assert_int_equal(st.expert_parallel, sched == CCOE_MOE_SCHED_EXPERTS);
    snprintf(what, sizeof what, "fast %s N%d C%d E%d K%d F%d sw%d b%d rn%d cf%g sched%d out",
             mc->gate, N, mc->C, mc->E, mc->K, mc->F, mc->swiglu, mc->bias, mc->renorm, mc->cf,
             (int)sched);
    TU_ASSERT_CLOSE(what, f.out, od, NC, F_ATOL, F_RTOL);
    const double aux_parts[4] = {st.loss_importance, st.loss_load, st.loss_switch, st.loss_z};
    const double ref_parts[4] = {ra.importance, ra.load, ra.switch_, ra.z};
    for (int i = 0; i < 4; i++)
        assert_true(fabs(aux_parts[i] - ref_parts[i]) <= 1e-5 + 1e-4 * fabs(ref_parts[i]));
    assert_true(fabs(aux - aux_ref) <= 1e-5 + 1e-4 * fabs(aux_ref));

    /* backward onto pre-filled gradients (it accumulates) */
    const float aux_scale = 0.75f;
    float *g0 = tu_fnew(P), *x0 = tu_fnew(NC);
    tu_fill_uniform(g0, P, seed + 50, 1.0f);
    tu_fill_uniform(x0, NC, seed + 51, 1.0f);
    memcpy(f.grads, g0, P * sizeof(float));
    memcpy(f.dinp, x0, NC * sizeof(float));
    ccoe_moe_backward(m, f.dinp, f.grads, &st, &f.s, f.dout, &f.a, f.inp, f.params, aux_scale, N);
    double *gd = tu_dnew(P), *dxd = tu_dnew(NC);
    tu_to_double(gd, g0, P);
    tu_to_double(dxd, x0, NC);
    ccoe_moe_ref_backward(m, dxd, gd, dd, xd, pd, &rr.r, aux_scale, scratch, N);
    snprintf(what, sizeof what, "fast %s N%d E%d K%d sw%d cf%g dinp", mc->gate, N, mc->E, mc->K,
             mc->swiglu, mc->cf);
    TU_ASSERT_CLOSE(what, f.dinp, dxd, NC, F_ATOL * sqrt((double)mc->K), F_RTOL);
    const double atol_sum = F_ATOL * sqrt((double)N * mc->K);
    for (int i = 0; i < m->n_tensors; i++) {
        ccoe_moe_tensor t;
        ccoe_moe_tensor_at(m, i, &t);
        snprintf(what, sizeof what, "fast %s N%d E%d K%d sw%d cf%g d%s", mc->gate, N, mc->E,
                 mc->K, mc->swiglu, mc->cf, t.name);
        TU_ASSERT_CLOSE(what, f.grads + t.offset, gd + t.offset, t.numel, atol_sum, F_RTOL);
    }
    TU_ASSERT_CLOSE("whole gradient region (padding untouched)", f.grads, gd, P, atol_sum, F_RTOL);
    free(pd);
    free(xd);
    free(od);
    free(dd);
    free(scratch);
    free(rr.noise);
    free(g0);
    free(x0);
    free(gd);
    free(dxd);
    fx_free(&f);
}

static void test_fast_vs_ref(void **state)
{
    (void)state;
    /*                 gate          N   C  E  K   F sw b rn  cf    imp  load sw   z    eps tr drops */
    const moe_case cases[] = {
        {"topk",        37, 24, 4, 2, 19, 0, 1, 1, 0.0,  0.5, 0.0, 0.3, 0.1, 0.0, 0, 0, 0, 0},
        {"topk",        40, 16, 5, 2, 21, 1, 0, 0, 1.0,  0.5, 0.0, 0.3, 0.1, 0.0, 0, 1, 0, 0},
        {"topk",        40, 16, 5, 2, 21, 0, 1, 0, 0.0,  0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0},
        {"topk",        40, 16, 5, 3, 21, 1, 1, 1, 1.0,  0.2, 0.0, 0.0, 0.0, 0.0, 0, 1, 0, 0},
        {"noisy_topk",  33, 20, 6, 2, 17, 0, 1, 1, 1.25, 0.4, 0.6, 0.2, 0.1, 0.0, 1, 0, 0, 0},
        {"noisy_topk",  33, 20, 7, 3, 18, 1, 1, 1, 0.0,  0.4, 0.6, 0.2, 0.1, 0.01, 0, 0, 0, 0},
        {"noisy_topk",  48, 12, 6, 2, 9,  0, 0, 1, 1.0,  0.4, 0.6, 0.2, 0.1, 0.0, 1, 1, 0, 0},
        {"softmax",     29, 16, 3, 3, 20, 0, 1, 1, 0.0,  0.5, 0.0, 0.3, 0.1, 0.0, 0, 0, 0, 0},
        {"softmax",     29, 16, 4, 4, 20, 1, 0, 1, 1.0,  0.5, 0.0, 0.3, 0.1, 0.0, 0, 0, 0, 0},
        {"domain",      40, 16, 5, 1, 13, 0, 1, 1, 0.0,  0.0, 0.0, 0.0, 0.0, 0.0, 1, 0, 0, 0},
        {"domain",      40, 16, 5, 1, 13, 1, 1, 1, 0.0,  0.0, 0.0, 0.0, 0.0, 0.0, 1, 0, 0, 0},
        {"hash",        40, 16, 5, 1, 13, 1, 1, 1, 1.0,  0.0, 0.0, 0.0, 0.0, 0.0, 1, 1, 0, 0},
        /* DeepSeekMoE shapes: fine-grained (granularity 4 of E 4, K 2, F 20: 16 experts of 5,
         * top-8) with 2 shared experts; lossfree with drops and a shared expert */
        {"topk",        40, 16, 16, 8, 5, 1, 1, 1, 1.0,  0.2, 0.0, 0.3, 0.1, 0.0, 1, 1, 2, 0},
        {"lossfree",    40, 16, 16, 8, 5, 0, 1, 1, 0.0,  0.0, 0.0, 0.3, 0.1, 0.0, 1, 0, 2, 0},
        {"lossfree",    40, 16, 5, 2, 21, 0, 1, 1, 1.0,  0.0, 0.0, 0.3, 0.1, 0.0, 1, 1, 1, 0},
        /* odd shapes: N = 1, E = 1, K = 1, F = 1, C = 1 */
        {"topk",         1, 24, 3, 2, 19, 0, 1, 1, 0.0,  0.5, 0.0, 0.3, 0.1, 0.0, 0, 0, 0, 0},
        {"topk",         1, 24, 3, 2, 19, 1, 1, 0, 1.0,  0.5, 0.0, 0.3, 0.1, 0.0, 0, 0, 0, 0},
        {"topk",        23, 17, 1, 1, 33, 0, 1, 1, 0.0,  0.5, 0.0, 0.3, 0.1, 0.0, 0, 0, 0, 0},
        {"softmax",     23, 17, 1, 1, 33, 1, 1, 1, 1.0,  0.5, 0.0, 0.3, 0.1, 0.0, 0, 0, 0, 0},
        {"noisy_topk",  23, 17, 4, 1, 1,  0, 1, 1, 1.0,  0.5, 0.5, 0.3, 0.1, 0.0, 1, 1, 0, 0},
        {"noisy_topk",  11, 1,  3, 2, 5,  1, 1, 1, 0.0,  0.5, 0.5, 0.3, 0.1, 0.0, 1, 0, 0, 0},
        /* enough rows for threaded GEMMs */
        {"noisy_topk", 300, 48, 8, 2, 80, 0, 1, 1, 1.0,  0.3, 0.3, 0.3, 0.1, 0.0, 1, 1, 0, 0},
        {"topk",       300, 40, 6, 2, 72, 1, 0, 1, 0.0,  0.3, 0.0, 0.3, 0.1, 0.0, 0, 0, 0, 0},
    };
    const ccoe_moe_schedule sched[3] = {CCOE_MOE_SCHED_AUTO, CCOE_MOE_SCHED_GEMM,
                                        CCOE_MOE_SCHED_EXPERTS};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            fast_case(&cases[i], sched[k], 600 + 10 * i);
}

/* Every gate of the registry through the whole layer (tests/util/moe_cases.c builds its cases
 * from the gate's flags): the reference against finite differences, the fast layer against
 * the reference under each schedule. A gate added to variants/gates.def is checked here
 * without an edit. */
static void test_registry_layers(void **state)
{
    (void)state;
    tu_moe_case cases[TU_MOE_MAX_REGISTRY_CASES];
    int n = tu_moe_registry_cases(cases, TU_MOE_MAX_REGISTRY_CASES, 9, 5, 3);
    assert_true(n >= ccoe_gate_count());
    for (int i = 0; i < n; i++)
        fd_layer_case(&cases[i], 1100 + 10 * (uint64_t)i);
    n = tu_moe_registry_cases(cases, TU_MOE_MAX_REGISTRY_CASES, 37, 24, 19);
    assert_true(n >= ccoe_gate_count());
    const ccoe_moe_schedule sched[3] = {CCOE_MOE_SCHED_AUTO, CCOE_MOE_SCHED_GEMM,
                                        CCOE_MOE_SCHED_EXPERTS};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < n; i++)
            fast_case(&cases[i], sched[k], 1300 + 10 * (uint64_t)i);
}

/* ======================= 4. invariants ======================= */

/* dispatch -> identity experts -> combine returns sum of kept weights times the input: the
 * input itself when dropless and normalised. */
static void test_identity_dispatch(void **state)
{
    (void)state;
    const int N = 53, C = 11, E = 6, K = 3;
    float *x = tu_fnew((size_t)N * C), *rows = tu_fnew((size_t)N * K * C), *out = tu_fnew((size_t)N * C);
    float *w = tu_fnew((size_t)N * K);
    int32_t *ids = calloc((size_t)N * K, sizeof *ids), *slot = calloc((size_t)N * K, sizeof *slot);
    int32_t *row_token = calloc((size_t)N * K, sizeof *row_token);
    int32_t offsets[E + 1], cursor[E];
    assert_non_null(ids);
    assert_non_null(slot);
    assert_non_null(row_token);
    tu_fill_uniform(x, (size_t)N * C, 900, 1.0f);
    ccoe_rng r;
    ccoe_rng_seed(&r, 901);
    for (int n = 0; n < N; n++) {
        float sc[E];
        for (int i = 0; i < E; i++)
            sc[i] = ccoe_rng_uniform(&r) + (i == 0 ? 0.7f : 0.0f); /* expert 0 overloaded */
        ccoe_gate_select(ids + (size_t)n * K, NULL, sc, E, K);
        float s = 0.0f;
        for (int j = 0; j < K; j++)
            s += (w[(size_t)n * K + j] = 0.1f + ccoe_rng_uniform(&r));
        for (int j = 0; j < K; j++)
            w[(size_t)n * K + j] /= s;
    }
    for (int cap = 0; cap <= 30; cap += 10) { /* 0 = dropless, then ever looser limits */
        int R = ccoe_moe_plan(slot, row_token, offsets, cursor, ids, N, E, K, cap);
        assert_int_equal(offsets[0], 0);
        assert_int_equal(offsets[E], R);
        ccoe_moe_gather(rows, x, row_token, R, C);
        ccoe_moe_combine(out, rows, slot, w, N, K, C); /* experts = identity */
        int dropped = 0;
        for (int n = 0; n < N; n++) {
            float kept = 0.0f;
            for (int j = 0; j < K; j++) {
                if (slot[(size_t)n * K + j] >= 0)
                    kept += w[(size_t)n * K + j];
                else
                    dropped++;
            }
            for (int c = 0; c < C; c++)
                assert_true(fabsf(out[(size_t)n * C + c] - kept * x[(size_t)n * C + c]) < 1e-6f);
            if (cap == 0)
                assert_true(fabsf(kept - 1.0f) < 1e-6f);
        }
        assert_int_equal(R + dropped, N * K);
        if (cap == 10)
            assert_true(dropped > 0);
        /* priority: a second choice is kept only if no first choice to that expert was dropped */
        if (cap > 0)
            for (int e = 0; e < E; e++)
                for (int n = 0; n < N; n++)
                    for (int j = 1; j < K; j++)
                        if (ids[(size_t)n * K + j] == e && slot[(size_t)n * K + j] >= 0)
                            for (int q = 0; q < N; q++)
                                for (int jj = 0; jj < j; jj++)
                                    if (ids[(size_t)q * K + jj] == e)
                                        assert_true(slot[(size_t)q * K + jj] >= 0);
    }
    free(x);
    free(rows);
    free(out);
    free(w);
    free(ids);
    free(slot);
    free(row_token);
}

/* E = 1, K = 1 is the dense FFN: forward and backward against the kernels composed by hand. */
static void dense_case(int swiglu, int bias)
{
    const int N = 45, C = 24, F = 37, F2 = swiglu ? 2 * F : F;
    moe_case mc = {"topk", N, C, 1, 1, F, swiglu, bias, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0};
    ccoe_moe_config cfg;
    case_config(&mc, &cfg);
    fx f;
    fx_init(&f, &cfg, C, N, 0, 950 + (uint64_t)swiglu);
    const ccoe_moe *m = &f.m;
    const float *fc_w = f.params + m->off_experts + m->off_fc_w;
    const float *fc_b = bias ? f.params + m->off_experts + m->off_fc_b : NULL;
    const float *pj_w = f.params + m->off_experts + m->off_proj_w;
    const float *pj_b = bias ? f.params + m->off_experts + m->off_proj_b : NULL;
    float *h = tu_fnew((size_t)N * F2), *act = tu_fnew((size_t)N * F), *out = tu_fnew((size_t)N * C);
    ccoe_linear_forward(&G, h, f.inp, fc_w, fc_b, N, C, F2);
    if (swiglu)
        ccoe_swiglu_forward(act, h, N, F);
    else
        ccoe_gelu_forward(act, h, (size_t)N * F);
    ccoe_linear_forward(&G, out, act, pj_w, pj_b, N, F, C);
    ccoe_moe_forward(m, f.out, &f.a, NULL, f.inp, f.params, &f.pass, N);
    size_t same = 0;
    for (size_t i = 0; i < (size_t)N * C; i++)
        same += f.out[i] == out[i];
    double *od = tu_dnew((size_t)N * C);
    tu_to_double(od, out, (size_t)N * C);
    TU_ASSERT_CLOSE("E=K=1 vs dense FFN", f.out, od, (size_t)N * C, 1e-6, 1e-6);
    printf("E=K=1 vs dense (swiglu %d): %zu of %d outputs bitwise equal\n", swiglu, same, N * C);

    /* backward: expert grads equal the dense FFN's; router gradient 0 (its weight is 1) */
    float *dg = tu_fnew(m->num_params), *dact = tu_fnew((size_t)N * F), *dh = tu_fnew((size_t)N * F2);
    float *dx = tu_fnew((size_t)N * C);
    ccoe_moe_backward(m, f.dinp, f.grads, NULL, &f.s, f.dout, &f.a, f.inp, f.params, 1.0f, N);
    float *base = dg + m->off_experts;
    ccoe_linear_backward(&G, dact, base + m->off_proj_w, bias ? base + m->off_proj_b : NULL,
                         f.dout, act, pj_w, N, F, C);
    if (swiglu)
        ccoe_swiglu_backward(dh, h, dact, N, F);
    else
        ccoe_gelu_backward(dh, h, dact, (size_t)N * F);
    ccoe_linear_backward(&G, dx, base + m->off_fc_w, bias ? base + m->off_fc_b : NULL, dh, f.inp,
                         fc_w, N, C, F2);
    double *want = tu_dnew(m->num_params), *wx = tu_dnew((size_t)N * C);
    tu_to_double(want, dg, m->num_params);
    tu_to_double(wx, dx, (size_t)N * C);
    TU_ASSERT_CLOSE("E=K=1 grads vs dense", f.grads, want, m->num_params, 1e-5, 1e-5);
    TU_ASSERT_CLOSE("E=K=1 dinp vs dense", f.dinp, wx, (size_t)N * C, 1e-6, 1e-5);
    free(h);
    free(act);
    free(out);
    free(od);
    free(dg);
    free(dact);
    free(dh);
    free(dx);
    free(want);
    free(wx);
    fx_free(&f);
}

static void test_dense_equivalence(void **state)
{
    (void)state;
    dense_case(0, 1);
    dense_case(1, 0);
}

static void test_domain_gate(void **state)
{
    (void)state;
    moe_case mc = {"domain", 64, 8, 5, 1, 6, 0, 1, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 0, 0, 0};
    ccoe_moe_config cfg;
    case_config(&mc, &cfg);
    fx f;
    fx_init(&f, &cfg, mc.C, mc.N, 1, 990);
    ccoe_moe_stats st;
    double aux = ccoe_moe_forward(&f.m, f.out, &f.a, &st, f.inp, f.params, &f.pass, f.N);
    assert_true(aux == 0.0);
    assert_int_equal(f.m.num_params, f.m.off_experts + 5 * f.m.expert_stride); /* no router */
    for (int n = 0; n < f.N; n++) {
        int32_t d = f.domains[n / f.pass.T];
        assert_int_equal(f.a.ids[n], cfg.domain_expert[d]);
        assert_true(f.a.weights[n] == 1.0f);
    }
    int64_t per[CCOE_MOE_MAX_EXPERTS] = {0};
    for (int n = 0; n < f.N; n++)
        per[cfg.domain_expert[f.domains[n / f.pass.T]]]++;
    for (int e = 0; e < 5; e++)
        assert_true(per[e] == st.tokens_per_expert[e]);
    assert_true(st.gate_entropy == 0.0 && st.router_entropy == 0.0);
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_moe_check_domains(&f.m, 4, &err), CCOE_OK);
    assert_int_equal(ccoe_moe_check_domains(&f.m, 6, &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "4..5"));
    fx_free(&f);
}

/* Hash routing: each row goes to the expert of its token id, weight 1, no router; the map is
 * a bijection on every block of E consecutive ids (balanced over any vocabulary to within one)
 * and not the plain residue v mod E. */
static void test_hash_gate(void **state)
{
    (void)state;
    moe_case mc = {"hash", 64, 8, 5, 1, 6, 0, 1, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 0, 0, 0};
    ccoe_moe_config cfg;
    case_config(&mc, &cfg);
    fx f;
    fx_init(&f, &cfg, mc.C, mc.N, 1, 991);
    ccoe_moe_stats st;
    double aux = ccoe_moe_forward(&f.m, f.out, &f.a, &st, f.inp, f.params, &f.pass, f.N);
    assert_true(aux == 0.0);
    assert_int_equal(f.m.num_params, f.m.off_experts + 5 * f.m.expert_stride); /* no router */
    assert_true(f.m.off_router == (size_t)-1);
    int64_t per[CCOE_MOE_MAX_EXPERTS] = {0};
    for (int n = 0; n < f.N; n++) {
        int e = ccoe_gate_hash_expert(f.tokens[n], 5);
        assert_int_equal(f.a.ids[n], e);
        assert_true(f.a.weights[n] == 1.0f);
        per[e]++;
    }
    for (int e = 0; e < 5; e++)
        assert_true(per[e] == st.tokens_per_expert[e]);
    assert_true(st.gate_entropy == 0.0 && st.router_entropy == 0.0);
    fx_free(&f);
    /* balance over vocabularies of several sizes and several E; not the identity residue map */
    const int Es[] = {2, 3, 5, 8, 16}, Vs[] = {1, 7, 256, 1000, 50257};
    for (size_t i = 0; i < sizeof Es / sizeof Es[0]; i++)
        for (size_t j = 0; j < sizeof Vs / sizeof Vs[0]; j++) {
            const int E = Es[i], V = Vs[j];
            int64_t cnt[16] = {0}, mod_same = 0;
            for (int v = 0; v < V; v++) {
                int e = ccoe_gate_hash_expert(v, E);
                assert_true(e >= 0 && e < E);
                cnt[e]++;
                mod_same += e == v % E;
            }
            int64_t lo = cnt[0], hi = cnt[0];
            for (int e = 1; e < E; e++) {
                lo = cnt[e] < lo ? cnt[e] : lo;
                hi = cnt[e] > hi ? cnt[e] : hi;
            }
            assert_true(hi - lo <= 1);
            if (V >= 256) /* the per-block shift varies: about 1/E of ids keep v mod E */
                assert_true(E >= 3 ? mod_same < V / 2 : mod_same < (3 * V) / 4);
        }
    /* each block of E consecutive ids is a permutation of the experts */
    for (int b = 0; b < 100; b++) {
        int seen[8] = {0};
        for (int k = 0; k < 8; k++)
            seen[ccoe_gate_hash_expert(b * 8 + k, 8)]++;
        for (int e = 0; e < 8; e++)
            assert_int_equal(seen[e], 1);
    }
}

/* Noise is keyed by the global token index: N rows at once == two halves with offsets. */
static void test_noise_split(void **state)
{
    (void)state;
    const int N = 22, C = 12, E = 6;
    moe_case mc = {"noisy_topk", N, C, E, 2, 10, 0, 1, 1, 0.0, 0.1, 0.1, 0.0, 0.0, 0.0, 1, 0, 0, 0};
    ccoe_moe_config cfg;
    case_config(&mc, &cfg);
    fx f;
    fx_init(&f, &cfg, C, N, 1, 1100);
    f.pass.token_offset = 5000;
    ccoe_moe_forward(&f.m, f.out, &f.a, NULL, f.inp, f.params, &f.pass, N);
    float *noise = tu_fnew((size_t)N * E), *out = tu_fnew((size_t)N * C);
    int32_t *ids = calloc((size_t)N * 2, sizeof *ids);
    assert_non_null(ids);
    memcpy(noise, f.a.noise, (size_t)N * E * sizeof(float));
    memcpy(out, f.out, (size_t)N * C * sizeof(float));
    memcpy(ids, f.a.ids, (size_t)N * 2 * sizeof(int32_t));
    const int split[2][2] = {{0, 9}, {9, N}}; /* uneven halves */
    for (int h = 0; h < 2; h++) {
        int n0 = split[h][0], nh = split[h][1] - n0;
        f.pass.token_offset = 5000 + n0;
        ccoe_moe_forward(&f.m, f.out, &f.a, NULL, f.inp + (size_t)n0 * C, f.params, &f.pass, nh);
        assert_memory_equal(f.a.noise, noise + (size_t)n0 * E, (size_t)nh * E * sizeof(float));
        assert_memory_equal(f.a.ids, ids + (size_t)n0 * 2, (size_t)nh * 2 * sizeof(int32_t));
        double *od = tu_dnew((size_t)nh * C);
        tu_to_double(od, out + (size_t)n0 * C, (size_t)nh * C);
        TU_ASSERT_CLOSE("split forward", f.out, od, (size_t)nh * C, 1e-6, 1e-6);
        free(od);
    }
    /* other keys give other noise */
    f.pass.token_offset = 5000;
    f.pass.step = 8;
    ccoe_moe_forward(&f.m, f.out, &f.a, NULL, f.inp, f.params, &f.pass, N);
    assert_true(memcmp(f.a.noise, noise, (size_t)N * E * sizeof(float)) != 0);
    /* evaluation: no noise, so the top-k of the clean logits */
    f.pass.train = 0;
    ccoe_moe_forward(&f.m, f.out, &f.a, NULL, f.inp, f.params, &f.pass, N);
    for (size_t i = 0; i < (size_t)N * E; i++)
        assert_true(f.a.noise[i] == 0.0f);
    for (int n = 0; n < N; n++) {
        int32_t want[2];
        ccoe_gate_select(want, NULL, f.a.logits + (size_t)n * E, E, 2);
        assert_int_equal(f.a.ids[n * 2], want[0]);
        assert_int_equal(f.a.ids[n * 2 + 1], want[1]);
    }
    free(noise);
    free(out);
    free(ids);
    fx_free(&f);
}

/* ======================= 5. balancing ======================= */

/* SGD on the router (and noise) weights with loss = aux only, from a router that sends most
 * tokens to experts 0 and 1. Returns the hard-load CV before and after (mean of the last 5). */
static void balance_run(const char *gate, double w_imp, double w_load, double w_switch,
                        double lr, double *cv0, double *cv1)
{
    const int N = 512, C = 16, E = 8, steps = 50;
    moe_case mc = {gate, N, C, E, 2, 4, 0, 1, 1, 0.0, w_imp, w_load, w_switch, 0.0, 0.0, 1, 0, 0, 0};
    ccoe_moe_config cfg;
    case_config(&mc, &cfg);
    fx f;
    fx_init(&f, &cfg, C, N, 1, 1200);
    const ccoe_moe *m = &f.m;
    float u[16];
    tu_fill_uniform(u, C, 1201, 1.0f);
    float *g = tu_fnew((size_t)N * C);
    tu_fill_uniform(g, (size_t)N * C, 1202, 1.0f);
    for (size_t i = 0; i < (size_t)N * C; i++)
        f.inp[i] = u[i % C] + 0.5f * g[i];
    float *wg = f.params + m->off_router;
    tu_fill_uniform(wg, (size_t)E * C, 1203, 0.1f);
    for (int c = 0; c < C; c++) {
        wg[0 * C + c] += 0.6f * u[c];
        wg[1 * C + c] += 0.5f * u[c];
    }
    memset(f.dout, 0, (size_t)N * C * sizeof(float));
    ccoe_moe_stats st;
    double tail = 0.0;
    for (int s = 0; s < steps; s++) {
        f.pass.step = (uint64_t)s;
        ccoe_moe_forward(m, f.out, &f.a, &st, f.inp, f.params, &f.pass, N);
        if (s == 0)
            *cv0 = st.load_cv;
        if (s >= steps - 5)
            tail += st.load_cv / 5.0;
        memset(f.grads, 0, m->num_params * sizeof(float));
        ccoe_moe_backward(m, f.dinp, f.grads, NULL, &f.s, f.dout, &f.a, f.inp, f.params, 1.0f, N);
        size_t n_router = m->off_experts; /* router (and noise) weights come first */
        for (size_t i = 0; i < n_router; i++)
            f.params[i] -= (float)lr * f.grads[i];
    }
    *cv1 = tail;
    printf("balance %s (imp %g load %g switch %g): load CV %.3f -> %.3f\n", gate, w_imp, w_load,
           w_switch, *cv0, *cv1);
    free(g);
    fx_free(&f);
}

static void test_balancing_lowers_cv(void **state)
{
    (void)state;
    double a, b;
    balance_run("noisy_topk", 1.0, 1.0, 0.0, 2.0, &a, &b);
    assert_true(a > 1.0);
    assert_true(b < 0.5 * a);
    /* Switch loss on plain top-k: a smaller step, since every token shares the dominant input
     * direction and a large step flips all of them to another expert pair at once (then the
     * softmax saturates and the gradient vanishes: seen at lr 0.5 and above) */
    balance_run("topk", 0.0, 0.0, 1.0, 0.05, &a, &b);
    assert_true(a > 1.0);
    assert_true(b < 0.5 * a);

}

/* Auxiliary-loss-free balancing (gate lossfree): the update rule exactly; the bias decides the
 * selection but not the weights; the bias alone (no gradient, no aux loss) balances an
 * unbalanced router on fixed inputs. */
static void test_lossfree_bias(void **state)
{
    (void)state;
    const int N = 512, C = 16, E = 8;
    moe_case mc = {"lossfree", N, C, E, 2, 4, 0, 1, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 0, 0, 0};
    ccoe_moe_config cfg;
    case_config(&mc, &cfg);
    cfg.bias_rate = 0.01;
    fx f;
    fx_init(&f, &cfg, C, N, 1, 1300);
    const ccoe_moe *m = &f.m;
    assert_true(ccoe_moe_has_score_bias(m));
    float *b = f.params + m->off_score_bias;

    /* 1. b_e += rate * sign(mean load - load_e): mean 3 here, sign(0) = 0 */
    const double load[8] = {0, 1, 2, 3, 3, 4, 5, 6};
    memset(b, 0, (size_t)E * sizeof(float));
    ccoe_moe_bias_update(m, f.params, load);
    for (int e = 0; e < E; e++)
        assert_true(b[e] == (load[e] < 3 ? 0.01f : load[e] > 3 ? -0.01f : 0.0f));
    ccoe_moe_config frozen = cfg;
    frozen.bias_rate = 0.0; /* rate 0: the bias stays */
    ccoe_moe mf = *m;
    mf.cfg = frozen;
    ccoe_moe_bias_update(&mf, f.params, load);
    assert_true(b[0] == 0.01f && b[7] == -0.01f);

    /* 2. a large bias on expert 3 puts it in every token's selection; the weights stay the
     * affinities normalised over the kept experts */
    memset(b, 0, (size_t)E * sizeof(float));
    b[3] = 5.0f;
    ccoe_moe_forward(m, f.out, &f.a, NULL, f.inp, f.params, &f.pass, N);
    for (int n = 0; n < N; n++) {
        const int32_t *id = f.a.ids + (size_t)n * 2;
        const float *w = f.a.weights + (size_t)n * 2;
        assert_int_equal(id[0], 3);
        float s0 = ccoe_gate_sigmoid(f.a.logits[(size_t)n * E + id[0]]);
        float s1 = ccoe_gate_sigmoid(f.a.logits[(size_t)n * E + id[1]]);
        assert_true(fabsf(w[0] - s0 / (s0 + s1)) <= 1e-6f);
        assert_true(fabsf(w[1] - s1 / (s0 + s1)) <= 1e-6f);
    }

    /* 3. an unbalanced router (a shared input direction favours experts 0 and 1): the bias
     * updates alone lower the load CV */
    float u[16];
    tu_fill_uniform(u, C, 1301, 1.0f);
    float *g = tu_fnew((size_t)N * C);
    tu_fill_uniform(g, (size_t)N * C, 1302, 1.0f);
    for (size_t i = 0; i < (size_t)N * C; i++)
        f.inp[i] = u[i % C] + 0.5f * g[i];
    float *wg = f.params + m->off_router;
    tu_fill_uniform(wg, (size_t)E * C, 1303, 0.1f);
    for (int c = 0; c < C; c++) {
        wg[0 * C + c] += 0.6f * u[c];
        wg[1 * C + c] += 0.5f * u[c];
    }
    memset(b, 0, (size_t)E * sizeof(float));
    ccoe_moe_stats st;
    double cv0 = 0.0, tail = 0.0;
    const int steps = 200;
    for (int s = 0; s < steps; s++) {
        ccoe_moe_forward(m, f.out, &f.a, &st, f.inp, f.params, &f.pass, N);
        if (s == 0)
            cv0 = st.load_cv;
        if (s >= steps - 10)
            tail += st.load_cv / 10.0;
        double l[CCOE_MOE_MAX_EXPERTS];
        for (int e = 0; e < E; e++)
            l[e] = (double)st.routed_per_expert[e];
        ccoe_moe_bias_update(m, f.params, l);
    }
    printf("balance lossfree (bias rate 0.01, no aux loss): load CV %.3f -> %.3f\n", cv0, tail);
    assert_true(cv0 > 1.0);
    assert_true(tail < 0.5 * cv0);
    free(g);
    fx_free(&f);
}

/* Fine-grained experts (moe.granularity = g): the section's E, K, F become g E, g K, F / g (the
 * active expert parameters per token unchanged); bad settings name the key and the fix. */
static void test_granularity(void **state)
{
    (void)state;
    ccoe_config c;
    ccoe_config_defaults(&c);
    c.model.ffn_hidden = 48;
    snprintf(c.moe.gate, sizeof c.moe.gate, "topk");
    c.moe.n_experts = 4;
    c.moe.top_k = 2;
    c.moe.granularity = 3;
    c.moe.n_shared = 1;
    ccoe_moe_config mc;
    assert_int_equal(ccoe_moe_config_from_section(&c.moe, &c.model, &mc), 1);
    assert_int_equal(mc.n_experts, 12);
    assert_int_equal(mc.top_k, 6);
    assert_int_equal(mc.ffn_hidden, 16);
    assert_int_equal(mc.n_shared, 1); /* one shared expert of the fine-grained width */
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_moe_config_check(&c, &err), CCOE_OK);
    c.moe.expert_hidden = 40; /* explicit expert width: 40 / 4 */
    c.moe.granularity = 4;
    assert_int_equal(ccoe_moe_config_from_section(&c.moe, &c.model, &mc), 1);
    assert_int_equal(mc.ffn_hidden, 10);
    assert_int_equal(mc.top_k, 8);
    /* granularity 1 is the plain layer */
    c.moe.granularity = 1;
    assert_int_equal(ccoe_moe_config_from_section(&c.moe, &c.model, &mc), 1);
    assert_true(mc.n_experts == 4 && mc.top_k == 2 && mc.ffn_hidden == 40);
    /* bad input */
    c.moe.granularity = 3; /* 40 % 3 != 0 */
    assert_int_equal(ccoe_moe_config_check(&c, &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "moe.granularity = 3 does not divide the expert hidden size 40"));
    c.moe.granularity = 2;
    c.moe.n_experts = 300; /* 600 experts */
    assert_int_equal(ccoe_moe_config_check(&c, &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "moe.granularity = 2 times moe.n_experts = 300"));
    c.moe.n_experts = 4;
    snprintf(c.moe.gate, sizeof c.moe.gate, "hash");
    c.moe.top_k = 1;
    c.moe.w_switch = c.moe.w_z = 0.0;
    assert_int_equal(ccoe_moe_config_check(&c, &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "gate hash routes by a rule: set moe.granularity = 1"));
    snprintf(c.moe.gate, sizeof c.moe.gate, "domain");
    c.moe.capacity_factor = 0.0;
    assert_int_equal(ccoe_moe_config_check(&c, &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "moe.granularity"));
}

/* ======================= 6. configuration and layout ======================= */

static void expect_bad(const ccoe_moe_config *cfg, const char *needle)
{
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_status s = ccoe_moe_validate(cfg, &err);
    if (s == CCOE_OK || !strstr(err.msg, needle))
        fprintf(stderr, "expected an error naming '%s', got status %d: %s\n", needle, (int)s,
                err.msg);
    assert_int_equal(s, CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, needle));
}

static void test_validate(void **state)
{
    (void)state;
    ccoe_moe_config ok, c;
    ccoe_moe_defaults(&ok);
    ok.ffn_hidden = 64;
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_moe_validate(&ok, &err), CCOE_OK);

    c = ok, c.top_k = 9;
    expect_bad(&c, "top_k = 9 exceeds n_experts = 8");
    c = ok, c.top_k = 0;
    expect_bad(&c, "top_k = 0");
    c = ok, c.top_k = -2;
    expect_bad(&c, "top_k = -2");
    c = ok, c.capacity_factor = 0.5;
    expect_bad(&c, "capacity_factor = 0.5");
    c = ok, c.eval_capacity_factor = 0.5;
    expect_bad(&c, "eval_capacity_factor = 0.5");
    c = ok, c.capacity_factor = -1.0;
    expect_bad(&c, "capacity_factor");
    c = ok, c.capacity_factor = NAN;
    expect_bad(&c, "capacity_factor");
    c = ok, c.noise_eps = 0.01;
    expect_bad(&c, "noise_eps");
    c = ok, c.w_load = 0.1;
    expect_bad(&c, "w_load");
    c = ok, c.bias_rate = 0.001; /* a selection bias only on gate lossfree */
    expect_bad(&c, "bias_rate = 0.001 applies to a gate with a selection bias");
    c = ok, snprintf(c.gate, sizeof c.gate, "lossfree"), c.bias_rate = -1.0;
    expect_bad(&c, "bias_rate = -1");
    c = ok, c.n_shared = c.n_experts + 1; /* shared experts larger than the layer */
    expect_bad(&c, "n_shared = ");
    c = ok, c.n_shared = -1;
    expect_bad(&c, "n_shared = -1");
    c = ok, c.n_experts = 0, c.top_k = 1;
    expect_bad(&c, "n_experts = 0");
    c = ok, c.n_experts = CCOE_MOE_MAX_EXPERTS + 1;
    expect_bad(&c, "n_experts");
    c = ok, snprintf(c.gate, sizeof c.gate, "switch");
    {
        /* today "(allowed: softmax, topk, noisy_topk, domain)": the registry's names */
        char names[256], want[320];
        ccoe_gate_list_names(names, sizeof names, 0);
        snprintf(want, sizeof want, "unknown gate 'switch' (allowed: %s)", names);
        expect_bad(&c, want);
    }
    c = ok, c.w_switch = -0.01;
    expect_bad(&c, "w_switch = -0.01");
    c = ok, c.w_importance = -1.0;
    expect_bad(&c, "w_importance");
    c = ok, c.w_z = INFINITY;
    expect_bad(&c, "w_z");
    c = ok, c.ffn_hidden = 0;
    expect_bad(&c, "ffn_hidden");
    c = ok, snprintf(c.gate, sizeof c.gate, "softmax");
    expect_bad(&c, "top_k = n_experts");
    c = ok, snprintf(c.gate, sizeof c.gate, "noisy_topk"), c.renormalize = 0;
    expect_bad(&c, "renormalize");
    c = ok, snprintf(c.gate, sizeof c.gate, "noisy_topk"), c.top_k = 8, c.w_load = 1.0;
    expect_bad(&c, "w_load");
    c = ok, snprintf(c.gate, sizeof c.gate, "noisy_topk"), c.noise_eps = -1.0;
    expect_bad(&c, "noise_eps");
    c = ok, snprintf(c.gate, sizeof c.gate, "domain");
    expect_bad(&c, "top_k = 1");
    c = ok, snprintf(c.gate, sizeof c.gate, "domain"), c.top_k = 1;
    expect_bad(&c, "domain table");
    c.n_domains = 2, c.domain_expert[0] = 0, c.domain_expert[1] = 8;
    expect_bad(&c, "domain_expert[1] = 8");
    c.domain_expert[1] = 7;
    assert_int_equal(ccoe_moe_validate(&c, &err), CCOE_OK);
    c.capacity_factor = 1.25; /* a rule-routed gate is always dropless */
    expect_bad(&c, "always dropless");
    c.capacity_factor = 0.0, c.eval_capacity_factor = 2.0;
    expect_bad(&c, "always dropless");
    c.eval_capacity_factor = 0.0;
    c.w_switch = 0.1;
    expect_bad(&c, "no router");
    c = ok, c.n_domains = 2;
    expect_bad(&c, "only used by gate domain");
    /* valid corner cases */
    c = ok, c.n_experts = 1, c.top_k = 1, c.capacity_factor = 1.0;
    assert_int_equal(ccoe_moe_validate(&c, &err), CCOE_OK);
    c = ok, snprintf(c.gate, sizeof c.gate, "noisy_topk"), c.w_load = 0.01, c.noise_eps = 0.01;
    assert_int_equal(ccoe_moe_validate(&c, &err), CCOE_OK);
    /* init: shape errors */
    ccoe_moe m;
    assert_int_equal(ccoe_moe_init(&m, &ok, 0, 16, &G, &err), CCOE_ERR_ARG);
    assert_int_equal(ccoe_moe_init(&m, &ok, 16, 0, &G, &err), CCOE_ERR_ARG);
    c = ok, c.top_k = 0;
    assert_int_equal(ccoe_moe_init(&m, &c, 16, 16, &G, &err), CCOE_ERR_CONFIG);
}

static void test_layout(void **state)
{
    (void)state;
    ccoe_moe_config cfg;
    ccoe_moe_defaults(&cfg);
    snprintf(cfg.gate, sizeof cfg.gate, "noisy_topk");
    cfg.n_experts = 3;
    cfg.ffn_hidden = 10;
    cfg.expert = CCOE_MOE_SWIGLU;
    ccoe_moe m;
    ccoe_error err;
    assert_int_equal(ccoe_moe_init(&m, &cfg, 7, 16, &G, &err), CCOE_OK);
    assert_int_equal(m.n_tensors, 2 + 3 * 4);
    const char *want[6] = {"router.weight", "router.noise_weight", "experts.0.fc.weight",
                           "experts.0.fc.bias", "experts.0.proj.weight", "experts.0.proj.bias"};
    size_t prev_end = 0;
    for (int i = 0; i < m.n_tensors; i++) {
        ccoe_moe_tensor t;
        ccoe_moe_tensor_at(&m, i, &t);
        if (i < 6)
            assert_string_equal(t.name, want[i]);
        assert_true(t.offset % 16 == 0);       /* 64-byte aligned */
        assert_true(t.offset >= prev_end);     /* in order, no overlap */
        assert_true(t.offset - prev_end < 16); /* only alignment padding between */
        prev_end = t.offset + t.numel;
        if (t.expert >= 0) { /* inside its expert's contiguous region */
            size_t lo = m.off_experts + (size_t)t.expert * m.expert_stride;
            assert_true(t.offset >= lo && t.offset + t.numel <= lo + m.expert_stride);
        }
        if (strcmp(t.name, "experts.2.fc.weight") == 0)
            assert_true(t.shape[0] == 20 && t.shape[1] == 7 && t.decay == 1);
        if (strcmp(t.name, "experts.2.proj.weight") == 0)
            assert_true(t.shape[0] == 7 && t.shape[1] == 10);
        if (strcmp(t.name, "experts.1.proj.bias") == 0)
            assert_true(t.ndim == 1 && t.shape[0] == 7 && t.decay == 0);
    }
    assert_true(prev_end <= m.num_params && m.num_params - prev_end < 16);
    float *p = tu_fnew(m.num_params), *q = tu_fnew(m.num_params);
    ccoe_moe_init_weights(&m, p, 42, 0.02f, 0.01f);
    ccoe_moe_init_weights(&m, q, 42, 0.02f, 0.01f);
    assert_memory_equal(p, q, m.num_params * sizeof(float));
    for (size_t i = 0; i < (size_t)3 * 7; i++)
        assert_true(p[m.off_noise + i] == 0.0f);
    assert_true(p[m.off_router] != 0.0f);
    free(p);
    free(q);
    /* workspace: dropless holds maxN K rows; a capacity limit below that shrinks it */
    ccoe_moe_config c2 = cfg;
    snprintf(c2.gate, sizeof c2.gate, "topk");
    c2.n_experts = 8;
    c2.top_k = 8;
    c2.capacity_factor = 1.0;
    assert_int_equal(ccoe_moe_init(&m, &c2, 7, 100, &G, &err), CCOE_OK);
    assert_int_equal(m.max_rows, 800);
    assert_int_equal(ccoe_moe_capacity(&m, 100), 100);
    c2.top_k = 2;
    c2.capacity_factor = 1.25;
    assert_int_equal(ccoe_moe_init(&m, &c2, 7, 100, &G, &err), CCOE_OK);
    assert_int_equal(ccoe_moe_capacity(&m, 100), 32); /* ceil(1.25 * 100 * 2 / 8) */
    assert_int_equal(ccoe_moe_capacity(&m, 1), 1);
    assert_true(ccoe_moe_acts_bytes(&m) > 0 && ccoe_moe_scratch_bytes(&m) > 0);
    /* the lossfree gate's bias state and shared experts: after the router, before the routed
     * experts, replicated (expert -1), the routed experts' names unchanged */
    ccoe_moe_config c3 = cfg;
    snprintf(c3.gate, sizeof c3.gate, "lossfree");
    c3.noise_eps = 0.0;
    c3.w_load = 0.0;
    c3.n_shared = 2;
    assert_int_equal(ccoe_moe_init(&m, &c3, 7, 10, &G, &err), CCOE_OK);
    const char *want3[4] = {"router.weight", "router.score_bias", "shared.0.fc.weight",
                            "shared.0.fc.bias"};
    for (int i = 0; i < 4; i++) {
        ccoe_moe_tensor t;
        ccoe_moe_tensor_at(&m, i, &t);
        assert_string_equal(t.name, want3[i]);
        assert_int_equal(t.expert, -1);
    }
    ccoe_moe_tensor t3;
    ccoe_moe_tensor_at(&m, 2 + 2 * 4, &t3); /* the first routed tensor */
    assert_string_equal(t3.name, "experts.0.fc.weight");
    assert_int_equal(t3.expert, 0);
    assert_true(t3.offset == m.off_experts);
    assert_true(m.off_shared + 2 * m.expert_stride == m.off_experts);
    assert_int_equal(m.n_tensors, 2 + (2 + 3) * 4);
}

/* Capacity is a training device: an evaluation pass (pass.train = 0) uses eval_capacity_factor
 * (default 0: dropless) and reports what the training capacity would have dropped of the same
 * routing; a training pass's train_dropped_slots equals its own drops. */
static void test_eval_dropless(void **state)
{
    (void)state;
    const int N = 40, C = 8, E = 4;
    moe_case mc = {"topk", N, C, E, 2, 6, 0, 1, 1, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1, 1, 0, 0};
    ccoe_moe_config cfg, dl;
    case_config(&mc, &cfg);
    assert_true(cfg.capacity_factor == 1.0 && cfg.eval_capacity_factor == 0.0);
    dl = cfg, dl.capacity_factor = 0.0; /* the same layer, dropless everywhere */
    fx f, g;
    fx_init(&f, &cfg, C, N, 1, 1400);
    fx_init(&g, &dl, C, N, 1, 1400);
    assert_true(f.m.max_rows == N * 2); /* buffers hold a dropless evaluation */
    /* skew the inputs so that capacity bites: every token prefers the same experts */
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            f.inp[(size_t)n * C + c] = g.inp[(size_t)n * C + c] =
                f.params[f.m.off_router + c] * 3.0f + 0.1f * f.inp[(size_t)n * C + c];
    memcpy(g.params, f.params, f.m.num_params * sizeof(float));
    ccoe_moe_stats tr, ev, ref;
    ccoe_moe_forward(&f.m, f.out, &f.a, &tr, f.inp, f.params, &f.pass, N);
    assert_true(tr.dropped_slots > 0 && tr.capacity > 0);
    assert_true(tr.train_dropped_slots == tr.dropped_slots && tr.train_drop_rate == tr.drop_rate);
    f.pass.train = 0;
    ccoe_moe_forward(&f.m, f.out, &f.a, &ev, f.inp, f.params, &f.pass, N);
    assert_int_equal(ev.capacity, 0);
    assert_true(ev.dropped_slots == 0 && ev.drop_rate == 0.0);
    assert_true(ev.train_dropped_slots == tr.dropped_slots); /* topk: same routing */
    g.pass.train = 0;
    ccoe_moe_forward(&g.m, g.out, &g.a, &ref, g.inp, g.params, &g.pass, N);
    assert_memory_equal(f.out, g.out, (size_t)N * C * sizeof(float)); /* = dropless layer */
    assert_true(ref.train_dropped_slots == 0); /* dropless training: nothing to drop */
    char buf[4096];
    ccoe_moe_stats_json(&ev, buf, sizeof buf);
    assert_non_null(strstr(buf, "\"train_drop_rate\""));
    fx_free(&g);
    fx_free(&f);
    /* asked otherwise: eval_capacity_factor = capacity_factor drops as training does (the same
     * seed and skew: the same inputs and routing) */
    cfg.eval_capacity_factor = 1.0;
    fx_init(&f, &cfg, C, N, 0, 1400);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            f.inp[(size_t)n * C + c] =
                f.params[f.m.off_router + c] * 3.0f + 0.1f * f.inp[(size_t)n * C + c];
    ccoe_moe_forward(&f.m, f.out, &f.a, &ev, f.inp, f.params, &f.pass, N);
    assert_true(ev.capacity == tr.capacity && ev.dropped_slots == tr.dropped_slots);
    fx_free(&f);
}

/* Expert choice: the gate's selection against its definition (ccoe_moe_ref_expert_choice),
 * ties included, in slot and in expert order; the layer keeps exactly cap rows per expert,
 * gives a token picked by no expert output 0, and in a causal pass routes each row alone. */
static void test_expert_choice(void **state)
{
    (void)state;
    const ccoe_gate_ops *g = ccoe_gate_find("expert_choice");
    assert_non_null(g);
    assert_true(g->choose && (g->flags & CCOE_GATE_EXPERT_CHOICE));
    enum { N = 37, E = 5 };
    float logits[N * E], w[N * E], byx[N * E];
    int32_t ids[N * E], keep[N * E], keep2[N * E], want[N * E];
    double S[N * E];
    tu_fill_uniform(logits, N * E, 77, 2.0f);
    for (int t = 0; t < N * E; t++) /* coarse values: ties between rows and between experts */
        logits[t] = roundf(logits[t] * 2.0f) * 0.5f;
    ccoe_gate_args a = {.N = N, .E = E, .K = E, .renormalize = 1, .logits = logits};
    g->forward(ids, w, NULL, &a);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < E; j++)
            byx[n * E + ids[n * E + j]] = w[n * E + j];
    for (int t = 0; t < N * E; t++)
        S[t] = byx[t];
    ccoe_gate_pick work[N * E];
    const int64_t caps[] = {1, 7, 12, 36, 37, 0};
    for (int c = 0; c < 8; c++) {
        const int64_t cap = c < 6 ? caps[c] : 3;
        const int kc = c < 6 ? 0 : c - 5; /* the last two: causal top-1 and top-2 */
        ccoe_moe_ref_expert_choice(want, S, N, E, cap, kc);
        g->choose(keep2, NULL, byx, N, E, cap, kc, work);
        assert_memory_equal(keep2, want, sizeof want);
        g->choose(keep, ids, w, N, E, cap, kc, work);
        for (int n = 0; n < N; n++)
            for (int j = 0; j < E; j++)
                assert_int_equal(keep[n * E + j], want[n * E + ids[n * E + j]]);
        for (int e = 0; e < E && kc == 0 && cap > 0; e++) {
            int kept = 0;
            for (int n = 0; n < N; n++)
                kept += want[n * E + e] == 0;
            assert_int_equal(kept, cap < N ? cap : N);
        }
    }

    /* the layer: cf = 1.25 over E = 4 experts of N = 40 rows, cap = ceil(1.25 40 / 4) = 13 */
    const int L = 40, C = 8;
    moe_case mc = {"expert_choice", L, C, 4, 4, 6, 0, 1, 1, 1.25, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 1, 0, 0};
    ccoe_moe_config cfg;
    case_config(&mc, &cfg);
    fx f;
    fx_init(&f, &cfg, C, L, 1, 1500);
    assert_int_equal(ccoe_moe_capacity(&f.m, L), 13);
    ccoe_moe_stats st;
    ccoe_moe_forward(&f.m, f.out, &f.a, &st, f.inp, f.params, &f.pass, L);
    assert_int_equal(st.capacity, 13);
    int64_t picked_by_none = 0;
    for (int e = 0; e < 4; e++)
        assert_int_equal(st.tokens_per_expert[e], 13);
    for (int n = 0; n < L; n++) {
        int kept = 0;
        for (int j = 0; j < 4; j++)
            kept += f.a.slot[n * 4 + j] >= 0;
        if (kept == 0) {
            picked_by_none++;
            for (int c = 0; c < C; c++) /* residual only: the layer adds nothing */
                assert_true(f.out[(size_t)n * C + c] == 0.0f);
        }
    }
    assert_int_equal(st.dropped_tokens, picked_by_none);
    /* causal: floor(1.25) = 1 expert per row, and row 5 alone routes as within the batch */
    f.pass.causal = 1;
    assert_int_equal(ccoe_moe_causal_k(&f.m, &f.pass), 1);
    ccoe_moe_forward(&f.m, f.out, &f.a, &st, f.inp, f.params, &f.pass, L);
    assert_int_equal(st.dropped_tokens, 0);
    float row5[8];
    memcpy(row5, f.out + 5 * C, sizeof row5);
    for (int n = 0; n < L; n++) {
        int kept = 0;
        for (int j = 0; j < 4; j++)
            kept += f.a.slot[n * 4 + j] >= 0;
        assert_int_equal(kept, 1);
    }
    ccoe_moe_forward(&f.m, f.out, &f.a, &st, f.inp + 5 * C, f.params, &f.pass, 1);
    assert_memory_equal(f.out, row5, sizeof row5);
    fx_free(&f);

    /* bad input: a top_k of its own, a domain table */
    ccoe_error err;
    ccoe_error_clear(&err);
    cfg.top_k = 2;
    assert_int_equal(ccoe_moe_validate(&cfg, &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "top_k"));
    assert_non_null(strstr(err.msg, "capacity_factor"));
    case_config(&mc, &cfg);
    cfg.n_domains = 2;
    assert_int_equal(ccoe_moe_validate(&cfg, &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "domain"));
    ccoe_config c;
    ccoe_config_defaults(&c);
    c.model.ffn_hidden = 32;
    snprintf(c.moe.gate, sizeof c.moe.gate, "expert_choice");
    c.moe.top_k = 3;
    assert_int_equal(ccoe_moe_config_check(&c, &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "moe.top_k = 3"));
    assert_non_null(strstr(err.msg, "moe.capacity_factor"));
    c.moe.top_k = 2; /* the default: accepted, the layer runs with K = E */
    assert_int_equal(ccoe_moe_config_check(&c, &err), CCOE_OK);
    ccoe_moe_config_from_section(&c.moe, &c.model, &cfg);
    assert_int_equal(cfg.top_k, c.moe.n_experts);
    assert_true(cfg.eval_capacity_factor == cfg.capacity_factor); /* eval chooses as training */
    c.moe.granularity = 2; /* fine-grained: K = the 2E split experts, experts per token x 2 */
    assert_int_equal(ccoe_moe_config_check(&c, &err), CCOE_OK);
    ccoe_moe_config_from_section(&c.moe, &c.model, &cfg);
    assert_int_equal(cfg.n_experts, 2 * c.moe.n_experts);
    assert_int_equal(cfg.top_k, cfg.n_experts);
    assert_true(cfg.capacity_factor == 2.0 * c.moe.capacity_factor);
}

static void test_stats_json(void **state)
{
    (void)state;
    moe_case mc = {"noisy_topk", 30, 8, 4, 2, 6, 0, 1, 1, 1.0, 0.1, 0.1, 0.1, 0.1, 0.0, 1, 0, 0, 0};
    ccoe_moe_config cfg;
    case_config(&mc, &cfg);
    fx f;
    fx_init(&f, &cfg, mc.C, mc.N, 1, 1300);
    ccoe_moe_stats st;
    ccoe_moe_forward(&f.m, f.out, &f.a, &st, f.inp, f.params, &f.pass, f.N);
    assert_true(st.router_entropy > 0.0 && st.router_entropy <= log(4.0) + 1e-9);
    assert_true(st.gate_entropy > 0.0 && st.gate_entropy <= log(2.0) + 1e-9);
    assert_true(st.cv2_load > 0.0 && st.cv2_importance > 0.0 && st.z_value > 0.0);
    char buf[4096];
    int n = ccoe_moe_stats_json(&st, buf, sizeof buf);
    assert_true(n > 0 && (size_t)n < sizeof buf && (size_t)n == strlen(buf));
    assert_true(buf[0] == '{' && buf[n - 1] == '}');
    const char *keys[] = {"\"tokens_per_expert\":[", "\"dropped_slots\"", "\"drop_rate\"",
                          "\"router_entropy\"", "\"load_cv\"", "\"loss_load\"", "\"loss_aux\""};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        assert_non_null(strstr(buf, keys[i]));
    char small[16];
    assert_int_equal(ccoe_moe_stats_json(&st, small, sizeof small), n); /* truncation reported */
    assert_int_equal((int)strlen(small), 15);
    fx_free(&f);
}

/* ======================= benchmark (CCOE_MOE_BENCH=1 only; no assertions on time) ========== */

static double bench_moe(const char *gate, int E, int K, int F, double cf,
                        ccoe_moe_schedule sched, int iters, ccoe_moe_stats *acc)
{
    const int N = 1024, C = 256;
    moe_case mc = {gate, N, C, E, K, F, 0, 1, 1, cf, 0.01, 0.0, 0.01, 0.001, 0.0, 1, 0, 0, 0};
    if (ccoe_gate_find(gate)->flags & CCOE_GATE_NOISE)
        mc.w_load = 0.01;
    ccoe_moe_config cfg;
    case_config(&mc, &cfg);
    fx f;
    fx_init(&f, &cfg, C, N, 1, 1400);
    f.m.schedule = sched;
    memset(acc, 0, sizeof *acc);
    ccoe_moe_stats st;
    double best = 1e30;
    for (int it = 0; it < iters + 2; it++) {
        double t0 = omp_get_wtime();
        ccoe_moe_forward(&f.m, f.out, &f.a, &st, f.inp, f.params, &f.pass, N);
        ccoe_moe_backward(&f.m, f.dinp, f.grads, &st, &f.s, f.dout, &f.a, f.inp, f.params, 1.0f,
                          N);
        double t = omp_get_wtime() - t0;
        if (it >= 2) { /* warm-up excluded */
            best = t < best ? t : best;
            acc->t_fwd_route += st.t_fwd_route / iters;
            acc->t_fwd_dispatch += st.t_fwd_dispatch / iters;
            acc->t_fwd_experts += st.t_fwd_experts / iters;
            acc->t_fwd_combine += st.t_fwd_combine / iters;
            acc->t_bwd_combine += st.t_bwd_combine / iters;
            acc->t_bwd_experts += st.t_bwd_experts / iters;
            acc->t_bwd_scatter += st.t_bwd_scatter / iters;
            acc->t_bwd_route += st.t_bwd_route / iters;
            acc->expert_parallel = st.expert_parallel;
            acc->load_cv = st.load_cv;
        }
    }
    fx_free(&f);
    return best;
}

static double bench_dense(int iters)
{
    const int N = 1024, C = 256, F = 2048;
    float *x = tu_fnew((size_t)N * C), *h = tu_fnew((size_t)N * F), *a = tu_fnew((size_t)N * F);
    float *y = tu_fnew((size_t)N * C), *d = tu_fnew((size_t)N * C), *dx = tu_fnew((size_t)N * C);
    float *w1 = tu_fnew((size_t)F * C), *b1 = tu_fnew(F), *w2 = tu_fnew((size_t)C * F), *b2 = tu_fnew(C);
    float *g1 = tu_fnew((size_t)F * C), *gb1 = tu_fnew(F), *g2 = tu_fnew((size_t)C * F), *gb2 = tu_fnew(C);
    float *da = tu_fnew((size_t)N * F), *dh = tu_fnew((size_t)N * F);
    tu_fill_uniform(x, (size_t)N * C, 1, 1.0f);
    tu_fill_uniform(w1, (size_t)F * C, 2, 0.06f);
    tu_fill_uniform(w2, (size_t)C * F, 3, 0.03f);
    tu_fill_uniform(d, (size_t)N * C, 4, 1.0f);
    double best = 1e30;
    for (int it = 0; it < iters + 2; it++) {
        double t0 = omp_get_wtime();
        /* exactly the model's ffn_forward / ffn_backward */
        ccoe_linear_forward(&G, h, x, w1, b1, N, C, F);
        ccoe_gelu_forward(a, h, (size_t)N * F);
        ccoe_linear_forward(&G, y, a, w2, b2, N, F, C);
        memset(da, 0, (size_t)N * F * sizeof(float));
        ccoe_linear_backward(&G, da, g2, gb2, d, a, w2, N, F, C);
        memset(dh, 0, (size_t)N * F * sizeof(float));
        ccoe_gelu_backward(dh, h, da, (size_t)N * F);
        ccoe_linear_backward(&G, dx, g1, gb1, dh, x, w1, N, C, F);
        double t = omp_get_wtime() - t0;
        if (it >= 2)
            best = t < best ? t : best;
    }
    float *all[] = {x, h, a, y, d, dx, w1, b1, w2, b2, g1, gb1, g2, gb2, da, dh};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
    return best;
}

static void test_bench(void **state)
{
    (void)state;
    const char *env = getenv("CCOE_MOE_BENCH");
    if (!env || strcmp(env, "1") != 0) {
        printf("test_bench: set CCOE_MOE_BENCH=1 to time the layer\n");
        return;
    }
    const int iters = 20;
    const double flops = 3.0 * 2.0 * 2.0 * 1024.0 * 256.0 * 2048.0; /* fwd + bwd, both GEMMs */
    printf("gemm: %s, %d threads\n", G.kernel_set, G.nthreads);
    {
        ccoe_moe_config cfg;
        moe_case mc = {"topk", 1024, 256, 8, 2, 1024, 0, 1, 1, 0.0, 0, 0, 0, 0, 0, 1, 0, 0, 0};
        case_config(&mc, &cfg);
        ccoe_moe m;
        ccoe_error err;
        assert_int_equal(ccoe_moe_init(&m, &cfg, 256, 1024, &G, &err), CCOE_OK);
        printf("memory E=8 K=2 F=1024 maxN=1024: params %.2f MiB, acts %.2f MiB per layer, "
               "scratch %.2f MiB shared (dense F=2048 saves %.2f MiB per layer)\n",
               m.num_params * 4.0 / 1048576.0, ccoe_moe_acts_bytes(&m) / 1048576.0,
               ccoe_moe_scratch_bytes(&m) / 1048576.0, 2.0 * 1024 * 2048 * 4 / 1048576.0);
    }
    double td = bench_dense(iters);
    printf("dense FFN F=2048: fwd+bwd %.2f ms (%.0f GFLOP/s)\n", td * 1e3, flops / td * 1e-9);
    const struct {
        const char *gate;
        int E, K, F;
        double cf;
        ccoe_moe_schedule sched;
    } runs[] = {
        {"topk", 8, 2, 1024, 0.0, CCOE_MOE_SCHED_AUTO},
        {"topk", 8, 2, 1024, 0.0, CCOE_MOE_SCHED_GEMM},
        {"topk", 8, 2, 1024, 0.0, CCOE_MOE_SCHED_EXPERTS},
        {"topk", 8, 2, 1024, 1.25, CCOE_MOE_SCHED_AUTO},
        {"noisy_topk", 8, 2, 1024, 0.0, CCOE_MOE_SCHED_AUTO},
        {"topk", 32, 8, 256, 0.0, CCOE_MOE_SCHED_AUTO}, /* fine-grained, same active FLOPs */
        {"topk", 32, 8, 256, 0.0, CCOE_MOE_SCHED_GEMM},
    };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        ccoe_moe_stats s;
        double t = bench_moe(runs[i].gate, runs[i].E, runs[i].K, runs[i].F, runs[i].cf,
                             runs[i].sched, iters, &s);
        double fwd = s.t_fwd_route + s.t_fwd_dispatch + s.t_fwd_experts + s.t_fwd_combine;
        double bwd = s.t_bwd_combine + s.t_bwd_experts + s.t_bwd_scatter + s.t_bwd_route;
        double route = s.t_fwd_route + s.t_fwd_dispatch + s.t_fwd_combine + s.t_bwd_combine +
                       s.t_bwd_scatter + s.t_bwd_route;
        printf("moe %s E=%d K=%d F=%d cf=%g sched=%d (experts parallel %d, load CV %.2f): fwd+bwd best %.2f ms (%.0f GFLOP/s active), "
               "%.2fx dense; mean fwd %.2f ms [route %.3f dispatch %.3f experts %.2f combine "
               "%.3f], bwd %.2f ms [combine %.3f experts %.2f scatter %.3f route %.3f]; "
               "routing+permutation share %.1f%%\n",
               runs[i].gate, runs[i].E, runs[i].K, runs[i].F, runs[i].cf, (int)runs[i].sched, s.expert_parallel, s.load_cv, t * 1e3, flops / t * 1e-9, t / td, fwd * 1e3,
               s.t_fwd_route * 1e3, s.t_fwd_dispatch * 1e3, s.t_fwd_experts * 1e3,
               s.t_fwd_combine * 1e3, bwd * 1e3, s.t_bwd_combine * 1e3, s.t_bwd_experts * 1e3,
               s.t_bwd_scatter * 1e3, s.t_bwd_route * 1e3, 100.0 * route / (fwd + bwd));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gate_select),
        cmocka_unit_test(test_fd_gates),
        cmocka_unit_test(test_fast_gates),
        cmocka_unit_test(test_registry_gates),
        cmocka_unit_test(test_fd_layer),
        cmocka_unit_test(test_fast_vs_ref),
        cmocka_unit_test(test_registry_layers),
        cmocka_unit_test(test_identity_dispatch),
        cmocka_unit_test(test_dense_equivalence),
        cmocka_unit_test(test_domain_gate),
        cmocka_unit_test(test_hash_gate),
        cmocka_unit_test(test_eval_dropless),
        cmocka_unit_test(test_expert_choice),
        cmocka_unit_test(test_noise_split),
        cmocka_unit_test(test_balancing_lowers_cv),
        cmocka_unit_test(test_lossfree_bias),
        cmocka_unit_test(test_granularity),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_stats_json),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, setup_group, NULL);
}
