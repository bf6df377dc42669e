/* ep_cases.c - per-rank checks of the expert-parallel MoE layer and model (see ep_cases.h). */
#include "ep_cases.h"

#include "moe_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "config.h"
#include "moe_ep_train.h"
#include "eval.h"
#include "model.h"
#include "moe.h"
#include "optim.h"
#include "placement.h"
#include "rng.h"
#include "session.h"

#define T_SEQ 4 /* rows per sequence (domain gate) */

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "[rank %d] %s:%d: check failed: %s (%s)\n", comm->rank, __FILE__,  \
                    __LINE__, #cond, what);                                                  \
            fails++;                                                                         \
        }                                                                                    \
    } while (0)

#define CHECK_OK(expr)                                                                       \
    do {                                                                                     \
        ccoe_status st_ = (expr);                                                            \
        if (st_ != CCOE_OK) {                                                                \
            fprintf(stderr, "[rank %d] %s:%d: %s failed: %s (%s)\n", comm->rank, __FILE__,     \
                    __LINE__, #expr, err.msg, what);                                         \
            return fails + 1;                                                                \
        }                                                                                    \
    } while (0)

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        abort();
    }
    return p;
}

static void fill_uniform(float *x, size_t n, uint64_t seed, float scale)
{
    ccoe_rng r;
    ccoe_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * (2.0f * ccoe_rng_uniform(&r) - 1.0f);
}

/* 0 if |a - b| <= atol + rtol |b| everywhere; else prints the worst element and returns 1. */
static int close_f(int rank, const char *what, const float *a, const float *b, size_t n,
                   double atol, double rtol)
{
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)a[i] - (double)b[i]) / (atol + rtol * fabs((double)b[i]));
        if (!(r <= worst)) { /* NaN counts as worst */
            worst = isnan(r) ? INFINITY : r;
            at = i;
        }
    }
    if (worst <= 1.0)
        return 0;
    fprintf(stderr, "[rank %d] %s: element %zu is %.9g, reference %.9g\n", rank, what, at,
            (double)a[at], (double)b[at]);
    return 1;
}

/* ---- a layer with its memory ---- */

typedef struct layer {
    ccoe_moe m;
    ccoe_arena mem;
    ccoe_moe_acts a;
    ccoe_moe_scratch s;
} layer;

/* P = 0: the serial layer. */
static ccoe_status layer_init(layer *L, const ccoe_moe_config *cfg, const ccoe_gemm *g, int C,
                              int maxN, int P, int rank, const int32_t *owner, ccoe_error *err)
{
    memset(L, 0, sizeof *L);
    CCOE_TRY(ccoe_moe_init(&L->m, cfg, C, maxN, g, err));
    if (P > 0)
        CCOE_TRY(ccoe_moe_set_placement(&L->m, P, rank, owner, maxN, err));
    size_t ab = ccoe_moe_acts_bytes(&L->m), sb = ccoe_moe_scratch_bytes(&L->m);
    CCOE_TRY(ccoe_arena_alloc(&L->mem, ab + sb, "moe ep test", err));
    ccoe_moe_acts_carve(&L->a, &L->m, &L->mem);
    ccoe_moe_scratch_carve(&L->s, &L->m, &L->mem);
    if (L->mem.used != ab + sb)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL, "sizing and carving disagree");
    return CCOE_OK;
}

/* A layer case (tests/util/moe_cases.h); N and C stay 0: the checks size their own. */
typedef tu_moe_case lcase;

static void case_config(const lcase *c, ccoe_moe_config *cfg) { tu_moe_case_config(c, cfg); }

/* Uneven splits of n items over P ranks with an empty rank when P > 2 (the lists below), else
 * balanced. */
static void split_of(int n, int P, int *split, const int *const *lists, int n_lists)
{
    if (P <= n_lists && lists[P - 1]) {
        int s = 0;
        for (int r = 0; r < P; r++)
            s += lists[P - 1][r];
        if (s == n) {
            memcpy(split, lists[P - 1], (size_t)P * sizeof(int));
            return;
        }
    }
    for (int r = 0; r < P; r++) {
        int b0, b1;
        ccoe_comm_split(n, P, r, &b0, &b1);
        split[r] = b1 - b0;
    }
}

static int row0_of(const int *split, int r)
{
    int s = 0;
    for (int q = 0; q < r; q++)
        s += split[q];
    return s;
}

static int max_of(const int *split, int P)
{
    int m = 1;
    for (int r = 0; r < P; r++)
        m = split[r] > m ? split[r] : m;
    return m;
}

/* ---- dispatch -> identity experts -> combine ---- */

static int round_trip(ccoe_comm *comm, const ccoe_gemm *g, const lcase *c, const int32_t *owner,
                      int unused_expert)
{
    const int P = comm->size, r = comm->rank, C = 5, K = c->K, E = c->E, Ntot = 23;
    char what[128];
    snprintf(what, sizeof what, "round trip E=%d K=%d cf=%g P=%d %s unused %d", E, K, c->cf, P,
             owner ? "interleaved" : "contiguous", unused_expert);
    int fails = 0;
    ccoe_error err;
    ccoe_error_clear(&err);
    static const int s1[] = {23}, s2[] = {10, 13}, s3[] = {9, 0, 14}, s4[] = {6, 7, 0, 10};
    const int *const lists[] = {s1, s2, s3, s4};
    int split[64];
    split_of(Ntot, P, split, lists, 4);
    const int N = split[r], row0 = row0_of(split, r);

    /* global routing (the same on every rank): distinct experts per token, skewed to low
     * indexes so that capacity bites; the rows encode their global token */
    int32_t *ids = xcalloc((size_t)Ntot * K, sizeof(int32_t));
    float *w = xcalloc((size_t)Ntot * K, sizeof(float));
    float *inp = xcalloc((size_t)Ntot * C, sizeof(float));
    ccoe_rng rng;
    ccoe_rng_seed(&rng, 77);
    for (int n = 0; n < Ntot; n++) {
        for (int j = 0; j < K; j++) {
            int e, dup;
            do {
                int e1 = (int)ccoe_rng_below(&rng, (uint64_t)E);
                int e2 = (int)ccoe_rng_below(&rng, (uint64_t)E);
                e = e1 < e2 ? e1 : e2;
                dup = e == unused_expert;
                for (int i = 0; i < j; i++)
                    dup |= ids[(size_t)n * K + i] == e;
            } while (dup);
            ids[(size_t)n * K + j] = e;
            w[(size_t)n * K + j] = 0.25f + 0.5f * ccoe_rng_uniform(&rng);
        }
        for (int ch = 0; ch < C; ch++)
            inp[(size_t)n * C + ch] = (float)n + 0.01f * (float)ch;
    }
    ccoe_moe_config cfg;
    case_config(c, &cfg);

    /* the serial plan on the concatenated batch */
    layer S;
    CHECK_OK(layer_init(&S, &cfg, g, C, Ntot, 0, 0, NULL, &err));
    const int cap = ccoe_moe_capacity(&S.m, Ntot);
    const int R = ccoe_moe_plan(S.a.slot, S.a.row_token, S.a.offsets, S.a.cursor, ids, Ntot, E,
                                K, cap);
    ccoe_moe_gather(S.a.xin, inp, S.a.row_token, R, C);
    float *out_ref = xcalloc((size_t)Ntot * C, sizeof(float));
    ccoe_moe_combine(out_ref, S.a.xin, S.a.slot, w, Ntot, K, C);

    /* the distributed round trip on this rank's slice */
    layer L;
    CHECK_OK(layer_init(&L, &cfg, g, C, max_of(split, P), P, r, owner, &err));
    ccoe_moe_acts *a = &L.a;
    memcpy(a->ids, ids + (size_t)row0 * K, (size_t)N * K * sizeof(int32_t));
    memcpy(a->weights, w + (size_t)row0 * K, (size_t)N * K * sizeof(float));
    CHECK_OK(ccoe_moe_ep_route(&L.m, comm, a, &L.s, NULL, N, &err));
    CHECK(a->N_total == Ntot);
    CHECK(a->capacity == cap);
    int64_t drops = 0;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < K; j++) {
            size_t at = (size_t)n * K + j, gat = (size_t)(row0 + n) * K + j;
            int32_t s = a->slot[at];
            CHECK((s >= 0) == (S.a.slot[gat] >= 0)); /* the global kept set */
            drops += s < 0;
            if (s >= 0)
                memcpy(a->home + (size_t)s * C, inp + (size_t)(row0 + n) * C,
                       (size_t)C * sizeof(float));
        }
    int64_t bytes = 0;
    CHECK_OK(ccoe_moe_ep_to_experts(&L.m, comm, a->xin, a->home, a, &L.s, &bytes, NULL, &err));
    for (int e = 0; e < E; e++) { /* each owned expert: its rows in the global token order */
        if (ccoe_moe_expert_owner(&L.m, e) != r)
            continue;
        int n_e = S.a.offsets[e + 1] - S.a.offsets[e];
        CHECK(a->offsets[e + 1] - a->offsets[e] == n_e);
        if (e == unused_expert)
            CHECK(n_e == 0);
        if (a->offsets[e + 1] - a->offsets[e] == n_e)
            CHECK(memcmp(a->xin + (size_t)a->offsets[e] * C, S.a.xin + (size_t)S.a.offsets[e] * C,
                         (size_t)n_e * C * sizeof(float)) == 0);
    }
    memset(a->home, 0, (size_t)L.m.max_home * C * sizeof(float));
    CHECK_OK(ccoe_moe_ep_to_home(&L.m, comm, a->home, a->xin, a, &L.s, &bytes, NULL, &err));
    float *out = xcalloc((size_t)(N ? N : 1) * C, sizeof(float));
    ccoe_moe_combine(out, a->home, a->slot, a->weights, N, K, C);
    CHECK(memcmp(out, out_ref + (size_t)row0 * C, (size_t)N * C * sizeof(float)) == 0);
    /* totals over ranks: the drops of the serial plan; bytes only for rows that move */
    int64_t tot[2] = {drops, bytes};
    CHECK_OK(comm->ops->allreduce_i64(comm, tot, 2, &err));
    CHECK(tot[0] == (int64_t)Ntot * K - R);
    if (c->cf > 0)
        CHECK(tot[0] > 0); /* the case exercises global capacity */
    CHECK(tot[1] <= 2 * (int64_t)R * C * (int64_t)sizeof(float));
    CHECK(P > 1 ? tot[1] > 0 : tot[1] == 0);
    free(out);
    free(out_ref);
    free(ids);
    free(w);
    free(inp);
    ccoe_arena_free(&S.mem);
    ccoe_arena_free(&L.mem);
    return fails;
}

int tu_ep_round_trips(ccoe_comm *comm, const ccoe_gemm *g)
{
    static const lcase cap = {"topk", 0, 0, 5, 2, 1, 0, 1, 1, 1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    static const lcase dropless = {"topk", 0, 0, 5, 2, 1, 0, 1, 1, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    static const lcase three = {"topk", 0, 0, 3, 2, 1, 0, 1, 1, 1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    int32_t map[5];
    for (int e = 0; e < 5; e++)
        map[e] = (e + 1) % comm->size; /* interleaved */
    int fails = 0;
    for (int u = -1; u <= 4; u += 5) { /* u = 4: expert 4 is never chosen */
        fails += round_trip(comm, g, &cap, NULL, u);
        fails += round_trip(comm, g, &cap, map, u);
        fails += round_trip(comm, g, &dropless, NULL, u);
    }
    fails += round_trip(comm, g, &three, NULL, -1); /* with 4 ranks one owns no expert */
    return fails;
}

/* ---- layer equivalence ---- */

static ccoe_moe_pass make_pass(const lcase *c, const int32_t *domains, const int32_t *tokens,
                               int64_t offset)
{
    ccoe_moe_pass p;
    memset(&p, 0, sizeof p);
    p.train = c->train > 0;
    p.seed = 4321;
    p.step = 3;
    p.layer = 1;
    p.token_offset = offset;
    p.domains = domains;
    p.T = T_SEQ;
    p.tokens = tokens;
    return p;
}

static void fill_params(const ccoe_moe *m, float *p, uint64_t seed)
{
    memset(p, 0, m->num_params * sizeof(float));
    for (int i = 0; i < m->n_tensors; i++) {
        ccoe_moe_tensor t;
        ccoe_moe_tensor_at(m, i, &t);
        float scale = t.ndim == 2 ? 2.0f / sqrtf((float)t.shape[1]) : 0.3f;
        fill_uniform(p + t.offset, t.numel, seed + 7 * (uint64_t)i, scale);
    }
}

static int layer_case(ccoe_comm *comm, const ccoe_gemm *g, const lcase *c, int interleaved)
{
    const int P = comm->size, r = comm->rank, C = 8, nseq = 12, Ntot = nseq * T_SEQ;
    char what[128];
    snprintf(what, sizeof what, "layer %s E=%d K=%d cf=%g train=%d P=%d %s", c->gate, c->E, c->K,
             c->cf, c->train, P, interleaved ? "interleaved" : "contiguous");
    int fails = 0;
    ccoe_error err;
    ccoe_error_clear(&err);
    static const int s1[] = {12}, s2[] = {5, 7}, s3[] = {4, 0, 8}, s4[] = {3, 3, 0, 6};
    const int *const lists[] = {s1, s2, s3, s4};
    int split[64];
    split_of(nseq, P, split, lists, 4);
    const int N = split[r] * T_SEQ, row0 = row0_of(split, r) * T_SEQ;
    int32_t owner[CCOE_MOE_MAX_EXPERTS];
    for (int e = 0; e < c->E; e++)
        owner[e] = (e + 1) % P;

    ccoe_moe_config cfg;
    case_config(c, &cfg);
    layer S;
    CHECK_OK(layer_init(&S, &cfg, g, C, Ntot, 0, 0, NULL, &err));
    const size_t np = S.m.num_params, NC = (size_t)Ntot * C;
    float *params = xcalloc(np, sizeof(float)), *inp = xcalloc(NC, sizeof(float));
    float *dout = xcalloc(NC, sizeof(float));
    fill_params(&S.m, params, 11);
    fill_uniform(inp, NC, 12, 1.0f);
    fill_uniform(dout, NC, 13, 1.0f);
    int32_t domains[64];
    for (int b = 0; b < nseq; b++)
        domains[b] = (int32_t)((b * 3 + 1) % 4);
    int32_t tokens[12 * T_SEQ]; /* token-id gates: ids over a vocabulary of 97 */
    for (int n = 0; n < Ntot; n++)
        tokens[n] = (int32_t)((n * 37 + 5) % 97);

    /* the serial layer on the whole batch (every rank computes it) */
    float *out_ref = xcalloc(NC, sizeof(float)), *dinp_ref = xcalloc(NC, sizeof(float));
    float *g_ref = xcalloc(np, sizeof(float));
    ccoe_moe_stats st_ref;
    ccoe_moe_pass pass = make_pass(c, domains, tokens, 0);
    double aux_ref = ccoe_moe_forward(&S.m, out_ref, &S.a, &st_ref, inp, params, &pass, Ntot);
    ccoe_moe_backward(&S.m, dinp_ref, g_ref, &st_ref, &S.s, dout, &S.a, inp, params, 0.5f, Ntot);

    /* this rank's slice */
    layer L;
    CHECK_OK(layer_init(&L, &cfg, g, C, max_of(split, P) * T_SEQ, P, r,
                        interleaved ? owner : NULL, &err));
    float *out = xcalloc(NC, sizeof(float)), *dinp = xcalloc(NC, sizeof(float));
    float *grads = xcalloc(np, sizeof(float));
    ccoe_moe_stats st;
    double aux = 0.0;
    ccoe_moe_pass lp = make_pass(c, domains + row0 / T_SEQ, tokens + row0, row0);
    CHECK_OK(ccoe_moe_forward_ep(&L.m, comm, out, &aux, &L.a, &L.s, &st, inp + (size_t)row0 * C,
                                 params, &lp, N, &err));
    CHECK_OK(ccoe_moe_backward_ep(&L.m, comm, dinp, grads, &st, &L.s, dout + (size_t)row0 * C,
                                  &L.a, inp + (size_t)row0 * C, params, 0.5f, N, &err));
    const size_t nc = (size_t)N * C;
    if (P == 1) { /* the distributed path on one rank is the serial layer, bit for bit */
        CHECK(memcmp(out, out_ref, NC * sizeof(float)) == 0);
        CHECK(memcmp(dinp, dinp_ref, NC * sizeof(float)) == 0);
        CHECK(memcmp(grads, g_ref, np * sizeof(float)) == 0);
        CHECK(aux == aux_ref);
    }
    fails += close_f(r, what, out, out_ref + (size_t)row0 * C, nc, 1e-6, 1e-5);
    fails += close_f(r, what, dinp, dinp_ref + (size_t)row0 * C, nc, 1e-6, 1e-5);
    /* the aux loss: the serial value, and the same bits on every rank */
    CHECK(fabs(aux - aux_ref) <= 1e-9 * fabs(aux_ref) + 1e-12);
    double mm[2] = {aux, -aux};
    CHECK_OK(comm->ops->allreduce_max_f64(comm, mm, 2, &err));
    CHECK(mm[0] == aux && -mm[1] == aux);
    /* global statistics */
    CHECK(st.N == Ntot && st.N_local == N);
    CHECK(st.capacity == st_ref.capacity);
    CHECK(st.dropped_slots == st_ref.dropped_slots);
    CHECK(st.dropped_tokens == st_ref.dropped_tokens);
    for (int e = 0; e < c->E; e++) {
        CHECK(st.tokens_per_expert[e] == st_ref.tokens_per_expert[e]);
        CHECK(st.routed_per_expert[e] == st_ref.routed_per_expert[e]);
    }
    CHECK(fabs(st.gate_entropy - st_ref.gate_entropy) <= 1e-9);
    CHECK(fabs(st.router_entropy - st_ref.router_entropy) <= 1e-9);
    CHECK(fabs(st.load_cv - st_ref.load_cv) <= 1e-12);
    CHECK(P > 1 ? st.ep_bytes_meta > 0 : st.ep_bytes_meta == 0);
    /* router gradients: this rank's share, summed over ranks */
    CHECK_OK(comm->ops->allreduce_f32(comm, grads, S.m.off_experts, &err));
    fails += close_f(r, what, grads, g_ref, S.m.off_experts, 1e-6, 1e-5);
    /* experts: complete on the owner, untouched elsewhere */
    for (int e = 0; e < c->E; e++) {
        size_t b, x;
        ccoe_moe_expert_span(&S.m, e, &b, &x);
        if (ccoe_moe_expert_owner(&L.m, e) == r) {
            fails += close_f(r, what, grads + b, g_ref + b, x - b, 1e-6, 1e-5);
        } else {
            int zero = 1;
            for (size_t i = b; i < x; i++)
                zero &= grads[i] == 0.0f;
            CHECK(zero);
        }
    }
    free(out);
    free(dinp);
    free(grads);
    free(out_ref);
    free(dinp_ref);
    free(g_ref);
    free(params);
    free(inp);
    free(dout);
    ccoe_arena_free(&S.mem);
    ccoe_arena_free(&L.mem);
    return fails;
}

int tu_ep_layer_cases(ccoe_comm *comm, const ccoe_gemm *g)
{
    static const lcase cases[] = {
        /* gate, N, C (unused), E, K, F, swiglu, bias, renorm, cf, w_imp, w_load, w_switch,
         * w_z, noise_eps, train, expect_drops (unused) */
        {"topk", 0, 0, 6, 2, 5, 0, 1, 1, 1.25, 0.1, 0, 0.05, 0.01, 0, 1, 0, 0, 0},
        {"topk", 0, 0, 5, 3, 4, 1, 0, 0, 0.0, 0, 0, 0.1, 0, 0, 1, 0, 0, 0},
        {"topk", 0, 0, 3, 1, 4, 0, 1, 1, 1.0, 0, 0, 0.1, 0.01, 0, 1, 0, 0, 0},
        {"softmax", 0, 0, 4, 4, 3, 0, 1, 1, 0.0, 0.1, 0, 0, 0.01, 0, 1, 0, 0, 0},
        {"noisy_topk", 0, 0, 6, 2, 4, 0, 1, 1, 1.0, 0.1, 0.1, 0.05, 0.01, 1e-2, 1, 0, 0, 0},
        {"noisy_topk", 0, 0, 6, 2, 4, 0, 1, 1, 0.0, 0.1, 0.1, 0, 0, 1e-2, 0, 0, 0, 0}, /* evaluation */
        {"domain", 0, 0, 5, 1, 4, 0, 1, 1, 0.0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
        {"domain", 0, 0, 5, 1, 4, 1, 1, 1, 0.0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
        {"hash", 0, 0, 5, 1, 4, 1, 1, 1, 1.0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, /* fixed routing, drops */
    };
    int fails = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fails += layer_case(comm, g, &cases[i], 0);
        if (comm->size > 1)
            fails += layer_case(comm, g, &cases[i], 1);
    }
    /* every gate of the registry, with the cases its flags allow (moe_cases.c) */
    lcase reg[TU_MOE_MAX_REGISTRY_CASES];
    int n = tu_moe_registry_cases(reg, TU_MOE_MAX_REGISTRY_CASES, 0, 0, 4);
    if (n < ccoe_gate_count()) {
        fprintf(stderr, "[rank %d] registry layer cases: %d cases\n", comm->rank, n);
        return fails + 1;
    }
    for (int i = 0; i < n; i++) {
        fails += layer_case(comm, g, &reg[i], 0);
        if (comm->size > 1)
            fails += layer_case(comm, g, &reg[i], 1);
    }
    return fails;
}

/* ---- model equivalence ---- */

enum { MB = 4, MT = 5, MV = 40 };

typedef struct mcase {
    const char *gate;
    int E, K;
    double cf, w_imp, w_load, w_switch, w_z, noise_eps;
    int rope; /* LLaMA/Qwen2-style blocks: RoPE, GQA (H 4, Hkv 2), q/k/v bias, RMSNorm */
    int n_shared, granularity; /* DeepSeekMoE: shared experts, fine-grained experts (0 = 1) */
} mcase;

/* The model case of a registry layer case (its gate, E, K, capacity and loss weights). */
static mcase mcase_of(const lcase *c)
{
    return (mcase){c->gate,     c->E,   c->K,         c->cf, c->w_imp, c->w_load,
                   c->w_switch, c->w_z, c->noise_eps, 0, c->n_shared, 0};
}

/* The registry's layer cases (moe_cases.c) with a given capacity factor (0: dropless), the
 * first such case of each gate, as model cases; returns their number, -1 on failure. */
static int registry_models(mcase *out, int cap, int dropless)
{
    lcase reg[TU_MOE_MAX_REGISTRY_CASES];
    int n = tu_moe_registry_cases(reg, TU_MOE_MAX_REGISTRY_CASES, 0, 0, 4), k = 0;
    if (n < 0)
        return -1;
    for (int i = 0; i < n && k < cap; i++) {
        if ((reg[i].cf == 0.0) != dropless || reg[i].train <= 0)
            continue;
        if (k > 0 && strcmp(out[k - 1].gate, reg[i].gate) == 0)
            continue;
        out[k++] = mcase_of(&reg[i]);
    }
    return k;
}

static ccoe_status open_model(ccoe_model *m, const mcase *mc, const ccoe_gemm *g, int maxB,
                              ccoe_error *err)
{
    ccoe_config c;
    ccoe_config_defaults(&c);
    c.model.n_layer = 2;
    c.model.n_embd = 16;
    c.model.n_head = 2;
    c.model.ffn_hidden = 32;
    c.model.vocab_size = MV;
    c.model.seq_len = MT;
    c.model.tied_head = 0;
    c.model.init_std = 0.3;
    if (mc->rope) {
        c.model.pos = CCOE_POS_ROPE;
        c.model.rope_theta = 50.0;
        c.model.n_head = 4;
        c.model.n_kv_head = 2;
        c.model.qkv_bias = 1;
        c.model.bias = 0;
        c.model.norm = CCOE_NORM_RMSNORM;
    }
    c.train.batch_size = MB;
    snprintf(c.moe.gate, sizeof c.moe.gate, "%s", mc->gate);
    c.moe.n_experts = mc->E;
    c.moe.top_k = mc->K;
    c.moe.every = 1;
    c.moe.expert_hidden = 12;
    c.moe.capacity_factor = mc->cf;
    c.moe.noise_eps = mc->noise_eps;
    c.moe.w_importance = mc->w_imp;
    c.moe.w_load = mc->w_load;
    c.moe.w_switch = mc->w_switch;
    c.moe.w_z = mc->w_z;
    c.moe.n_shared = mc->n_shared;
    if (mc->granularity > 0)
        c.moe.granularity = mc->granularity;
    CCOE_TRY(ccoe_session_validate(&c, err));
    CCOE_TRY(ccoe_model_init_moe(m, &c.model, NULL, &c.moe, maxB, MT, g, 1, err));
    ccoe_model_init_weights(m, 7, CCOE_INIT_RANDOM);
    ccoe_rng r; /* generic norm weights, biases and noise weights */
    ccoe_rng_seed(&r, 99);
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].ndim == 1 || strstr(m->params[i].name, "noise_weight"))
            for (size_t j = 0; j < m->params[i].numel; j++)
                m->param_block[m->params[i].offset + j] += 0.2f * (ccoe_rng_uniform(&r) - 0.5f);
    m->train = 1;
    m->seed = 1234;
    m->step = 5;
    return CCOE_OK;
}

/* A placement for model_case: policy, and for list the ranks taken mod P (so one case fits
 * every rank count). */
typedef struct mplace {
    ccoe_placement_kind policy;
    int list[8];
} mplace;

/* mb <= MB global rows: with mb < P some ranks have none and still join every exchange.
 * pl: the experts' placement (NULL: contiguous, ccoe_model_set_comm's default). */
static int model_case(ccoe_comm *comm, const ccoe_gemm *g, const mcase *mc, int mb,
                      const mplace *pl)
{
    const int P = comm->size, r = comm->rank;
    char what[160];
    snprintf(what, sizeof what, "model %s E=%d K=%d cf=%g B=%d P=%d placement %s%s shared %d "
             "granularity %d", mc->gate, mc->E, mc->K, mc->cf, mb, P,
             pl ? ccoe_placement_name(pl->policy) : "default", mc->rope ? " rope gqa" : "",
             mc->n_shared, mc->granularity);
    int fails = 0;
    ccoe_error err;
    ccoe_error_clear(&err);
    int32_t tok[MB * MT], tgt[MB * MT], dom[MB];
    long count_all = 0;
    ccoe_rng rng;
    ccoe_rng_seed(&rng, 5);
    for (int i = 0; i < MB * MT; i++) {
        tok[i] = (int32_t)ccoe_rng_below(&rng, MV);
        tgt[i] = i == 3 ? -1 : (int32_t)ccoe_rng_below(&rng, MV);
        count_all += i < mb * MT && tgt[i] >= 0;
    }
    for (int b = 0; b < MB; b++)
        dom[b] = (int32_t)((b * 3 + 2) % mc->E);

    /* serial (every rank) */
    ccoe_model S;
    CHECK_OK(open_model(&S, mc, g, MB, &err));
    ccoe_model_zero_grad(&S);
    long count = 0;
    const double loss_ref = ccoe_model_forward(&S, tok, tgt, dom, mb, MT, &count);
    const double aux_ref = S.aux_loss;
    ccoe_model_backward(&S, 1.0f / (float)count_all, 1.0f);
    const double norm_ref = ccoe_grad_norm(S.grad_block, 0, S.num_params);

    /* this rank's rows */
    int b0, b1;
    ccoe_comm_split(mb, P, r, &b0, &b1);
    const int B = b1 - b0;
    ccoe_model m;
    CHECK_OK(open_model(&m, mc, g, B > 0 ? B : 1, &err));
    int32_t owner[8];
    const int LE = m.moe.E; /* the layer's experts (fine-grained: granularity * E) */
    if (pl) { /* the trainer's map function (src/placement.h) */
        ccoe_mpi_config mpi = {.placement = pl->policy};
        size_t used = 0;
        for (int e = 0; e < LE && pl->policy == CCOE_PLACE_LIST; e++)
            used += (size_t)snprintf(mpi.map + used, sizeof mpi.map - used, "%s%d", e ? "," : "",
                                     pl->list[e] % P);
        CHECK_OK(ccoe_placement_map(&mpi, LE, P, NULL, owner, &err));
    }
    CHECK_OK(ccoe_model_set_comm(&m, comm, pl ? owner : NULL, &err));
    for (int e = 0; e < LE && P > 1; e++) /* the layer follows the map */
        CHECK(ccoe_moe_expert_owner(&m.moe, e) ==
              (pl ? owner[e] : (int)(((long long)(e + 1) * P - 1) / LE)));
    ccoe_model_zero_grad(&m);
    m.token_offset = (int64_t)b0 * MT;
    double sums[2] = {ccoe_model_forward(&m, tok + b0 * MT, tgt + b0 * MT, dom + b0, B, MT,
                                         &count),
                      0.0};
    const double aux = m.aux_loss;
    ccoe_model_backward(&m, 1.0f / (float)count_all, 1.0f);
    ccoe_ep_traffic tr;
    ccoe_ep_traffic_last(&m, &tr);
    sums[1] = (double)tr.bytes_tokens;
    CHECK_OK(comm->ops->allreduce_f64(comm, sums, 2, &err));
    CHECK(fabs(sums[0] - loss_ref) <= 1e-5 * fabs(loss_ref));
    CHECK(fabs(aux - aux_ref) <= 1e-5 * fabs(aux_ref) + 1e-9);
    CHECK(P > 1 ? sums[1] > 0 : sums[1] == 0);
    CHECK_OK(ccoe_ep_allreduce_replicated(&m, comm, m.grad_block, 0, m.num_params, &err));
    double norm = 0.0;
    CHECK_OK(ccoe_ep_grad_norm(&m, comm, m.grad_block, 0, m.num_params, &norm, &err));
    CHECK(fabs(norm - norm_ref) <= 1e-5 * norm_ref);
    /* gradients: replicated ones summed, owned experts complete, the others untouched */
    float *want = xcalloc(m.num_params, sizeof(float));
    memcpy(want, S.grad_block, m.num_params * sizeof(float));
    ccoe_ep_region regions[64];
    int n_regions = ccoe_ep_regions(&m, regions, 64);
    CHECK(P > 1 ? n_regions > 0 && n_regions <= 64 : n_regions == 0);
    for (int k = 0; k < n_regions && k < 64; k++)
        if (regions[k].owner != r)
            memset(want + regions[k].begin, 0, (regions[k].end - regions[k].begin) * 4);
    fails += close_f(r, what, m.grad_block, want, m.num_params, 1e-6, 1e-5);
    /* ownership: expert tensors have owners, the rest is replicated */
    for (int i = 0; i < m.n_params; i++) {
        int is_expert = strstr(m.params[i].name, ".moe.experts.") != NULL;
        int q = ccoe_ep_param_owner(&m, &m.params[i]);
        CHECK(P > 1 ? (q >= 0) == is_expert : q == -1);
        CHECK(ccoe_ep_param_is_local(&m.params[i], &m) == (q < 0 || q == r));
    }
    /* auxiliary-loss-free balancing: the selection bias moves by the global loads, the same on
     * every rank as in one process (the parameter comparison below covers it bit for bit) */
    if (ccoe_moe_has_score_bias(&m.moe)) {
        const ccoe_param *bp = ccoe_model_find_param(&m, "blocks.0.moe.router.score_bias");
        CHECK(bp != NULL);
        float before[CCOE_MOE_MAX_EXPERTS] = {0};
        for (size_t j = 0; bp && j < bp->numel; j++)
            before[j] = m.param_block[bp->offset + j];
        CHECK_OK(ccoe_model_moe_bias_step(&S, NULL, &err));
        CHECK_OK(ccoe_model_moe_bias_step(&m, NULL, &err));
        int moved = 0;
        for (size_t j = 0; bp && j < bp->numel; j++)
            moved += m.param_block[bp->offset + j] != before[j];
        CHECK(moved > 0 || mb == 0);
        /* data parallelism without expert parallelism: each rank's model counts its own rows
         * only, and the update sums the counts over the ranks first. Block 0 only: a capacity
         * decided per rank drops other tokens than the global one, which changes the inputs
         * (and so the loads) of the later blocks */
        ccoe_model D;
        CHECK_OK(open_model(&D, mc, g, B > 0 ? B : 1, &err));
        if (B > 0)
            ccoe_model_forward(&D, tok + b0 * MT, tgt + b0 * MT, dom + b0, B, MT, &count);
        CHECK_OK(ccoe_model_moe_bias_step(&D, comm, &err));
        for (int i = 0; i < D.n_params; i++)
            if (strcmp(D.params[i].name, "blocks.0.moe.router.score_bias") == 0)
                CHECK(memcmp(D.param_block + D.params[i].offset,
                             S.param_block + D.params[i].offset,
                             D.params[i].numel * sizeof(float)) == 0);
        ccoe_model_free(&D);
    }
    /* spoil the experts this rank does not own, then sync them from their owners */
    for (int i = 0; i < m.n_params; i++)
        if (!ccoe_ep_param_is_local(&m.params[i], &m))
            for (size_t j = 0; j < m.params[i].numel; j++)
                m.param_block[m.params[i].offset + j] = -7.0f;
    CHECK_OK(ccoe_ep_sync_experts(&m, comm, m.param_block, &err));
    CHECK(memcmp(m.param_block, S.param_block, m.num_params * sizeof(float)) == 0);
    free(want);
    ccoe_model_free(&m);
    ccoe_model_free(&S);
    return fails;
}

int tu_ep_model_cases(ccoe_comm *comm, const ccoe_gemm *g)
{
    static const mcase cases[] = {
        {"topk", 4, 2, 1.0, 0.1, 0, 0.05, 0.01, 0, 0, 0, 0},
        {"softmax", 3, 3, 0, 0.1, 0, 0, 0.01, 0, 0, 0, 0},
        {"noisy_topk", 4, 2, 1.25, 0.1, 0.1, 0.05, 0.01, 1e-2, 0, 0, 0},
        {"domain", 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0},
        /* DeepSeekMoE: shared experts (replicated, this rank's rows), with a capacity and
         * with the aux-loss-free gate */
        {"topk", 4, 2, 1.0, 0.1, 0, 0.05, 0.01, 0, 0, 2, 0},
        {"lossfree", 4, 2, 1.25, 0, 0, 0, 0.01, 0, 0, 1, 0},
        /* fine-grained experts: granularity 2 gives 8 experts of half width, top-4 (and
         * with 1 shared expert of that width) */
        {"topk", 4, 2, 1.0, 0.1, 0, 0.05, 0.01, 0, 0, 1, 2},
        {"lossfree", 2, 1, 0, 0, 0, 0, 0.01, 0, 0, 0, 4},
    };
    int fails = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        fails += model_case(comm, g, &cases[i], MB, NULL);
    /* B = 3 rows: on 4 ranks one rank has none (forward and backward exchanges) */
    fails += model_case(comm, g, &cases[2], 3, NULL);
    fails += model_case(comm, g, &cases[0], 3, NULL);
    /* non-contiguous placements (mpi.placement): round robin; a list map that leaves rank 1
     * without experts on 4 ranks and gives rank 1 one expert of 4 on 2 */
    const mplace rr = {CCOE_PLACE_ROUND_ROBIN, {0}};
    const mplace list = {CCOE_PLACE_LIST, {3, 0, 0, 2}};
    fails += model_case(comm, g, &cases[0], MB, &rr);
    fails += model_case(comm, g, &cases[2], MB, &list);
    fails += model_case(comm, g, &cases[3], 3, &list);
    fails += model_case(comm, g, &cases[4], 3, &rr);
    fails += model_case(comm, g, &cases[5], 3, &list);
    fails += model_case(comm, g, &cases[6], MB, &rr);
    fails += model_case(comm, g, &cases[6], 3, &list);
    fails += model_case(comm, g, &cases[7], MB, NULL);
    /* every gate of the registry that has a capacity (not CCOE_GATE_DROPLESS), with one and
     * every balancing loss it has */
    mcase reg[TU_MOE_MAX_REGISTRY_CASES];
    int n = registry_models(reg, TU_MOE_MAX_REGISTRY_CASES, 0), with_cap = 0;
    for (int i = 0; i < ccoe_gate_count(); i++)
        with_cap += !(ccoe_gate_at(i)->flags & CCOE_GATE_DROPLESS);
    if (n < with_cap) {
        fprintf(stderr, "[rank %d] registry model cases: %d of %d gates with a capacity\n",
                comm->rank, n, with_cap);
        return fails + 1;
    }
    for (int i = 0; i < n; i++)
        fails += model_case(comm, g, &reg[i], MB, NULL);
    /* the same on RoPE + GQA blocks */
    for (int i = 0; i < n; i++) {
        mcase rc = reg[i];
        rc.rope = 1;
        fails += model_case(comm, g, &rc, MB, NULL);
    }
    return fails;
}

/* ---- incremental decoding under expert parallelism ---- */

/* Every rank decodes the same prompts together (as the evaluation does with expert-parallel
 * MoE layers): the prefill and each step exchange tokens, and the logits equal the serial
 * model's full forward at every (sequence, position). Dropless gates only: with a capacity the
 * drops depend on each call's tokens (model.h). */
static int decode_case(ccoe_comm *comm, const ccoe_gemm *g, const mcase *mc)
{
    char what[160];
    snprintf(what, sizeof what, "decode %s E=%d K=%d P=%d%s", mc->gate, mc->E, mc->K, comm->size,
             mc->rope ? " rope gqa" : "");
    int fails = 0;
    ccoe_error err;
    ccoe_error_clear(&err);
    int32_t tok[MB * MT], dom[MB], pre[MB * 3];
    ccoe_rng rng;
    ccoe_rng_seed(&rng, 11);
    for (int i = 0; i < MB * MT; i++)
        tok[i] = (int32_t)ccoe_rng_below(&rng, MV);
    for (int b = 0; b < MB; b++)
        dom[b] = (int32_t)((b * 3 + 2) % mc->E);
    const int plen[MB] = {2, 1, 3, 2}, Tc = 3;
    for (int b = 0; b < MB; b++)
        for (int t = 0; t < Tc; t++)
            pre[b * Tc + t] = t < plen[b] ? tok[b * MT + t] : 0;
    ccoe_model S, m;
    CHECK_OK(open_model(&S, mc, g, MB, &err));
    S.train = 0;
    ccoe_model_forward(&S, tok, NULL, dom, MB, MT, NULL);
    CHECK_OK(open_model(&m, mc, g, MB, &err));
    m.train = 0;
    CHECK_OK(ccoe_model_set_comm(&m, comm, NULL, &err));
    CHECK_OK(ccoe_model_decode_prefill(&m, pre, dom, MB, Tc, &err));
    CHECK(m.comm_status == CCOE_OK);
    for (int b = 0; b < MB; b++)
        fails += close_f(comm->rank, what, ccoe_model_logits(&m, b, plen[b] - 1),
                         ccoe_model_logits(&S, b, plen[b] - 1), MV, 1e-5, 1e-4);
    int len[MB];
    memcpy(len, plen, sizeof len);
    for (int step = 0; step < MT; step++) {
        int32_t st[MB];
        int seq[MB], pos[MB], n = 0;
        for (int b = 0; b < MB; b++)
            if (len[b] < MT) {
                seq[n] = b;
                pos[n] = len[b];
                st[n++] = tok[b * MT + len[b]++];
            }
        if (n == 0)
            break;
        ccoe_model_decode_step(&m, st, seq, pos, n);
        for (int j = 0; j < n; j++)
            fails += close_f(comm->rank, what, ccoe_model_logits(&m, j, 0),
                             ccoe_model_logits(&S, seq[j], pos[j]), MV, 1e-5, 1e-4);
    }
    CHECK(m.comm_status == CCOE_OK);
    ccoe_model_free(&m);
    ccoe_model_free(&S);
    return fails;
}

int tu_ep_decode_cases(ccoe_comm *comm, const ccoe_gemm *g)
{
    static const mcase cases[] = {
        {"topk", 4, 2, 0, 0.1, 0, 0.05, 0.01, 0, 0, 0, 0},
        {"softmax", 3, 3, 0, 0.1, 0, 0, 0.01, 0, 0, 0, 0},
        {"domain", 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0},
        {"topk", 4, 2, 0, 0.1, 0, 0.05, 0.01, 0, 1, 0, 0}, /* RoPE + GQA blocks */
    };
    int fails = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        fails += decode_case(comm, g, &cases[i]);
    /* every gate of the registry, dropless */
    mcase reg[TU_MOE_MAX_REGISTRY_CASES];
    int n = registry_models(reg, TU_MOE_MAX_REGISTRY_CASES, 1);
    if (n < ccoe_gate_count()) {
        fprintf(stderr, "[rank %d] registry decode cases: %d of %d gates\n", comm->rank, n,
                ccoe_gate_count());
        return fails + 1;
    }
    for (int i = 0; i < n; i++)
        fails += decode_case(comm, g, &reg[i]);
    return fails;
}

/* ---- data-parallel evaluation ---- */

static int eval_case(ccoe_comm *comm, const char *what, const char *const *sets, int n_sets,
                     int expert_parallel)
{
    int fails = 0;
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_config cfg;
    ccoe_config_defaults(&cfg);
    static const char *const base[] = {
        "model.n_layer=2",     "model.n_embd=32",       "model.n_head=2", "model.seq_len=32",
        "train.batch_size=4",  "train.eval_batches=5", "data.task_examples=9",
        "run.threads=1",       "train.seed=5"};
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++)
        CHECK_OK(ccoe_config_set(&cfg, base[i], &err));
    for (int i = 0; i < n_sets; i++)
        CHECK_OK(ccoe_config_set(&cfg, sets[i], &err));
    ccoe_session ref, s;
    CHECK_OK(ccoe_session_open(&ref, &cfg, 1, &err));
    CHECK_OK(ccoe_session_open(&s, &cfg, 1, &err));
    ccoe_model_init_weights(&ref.model, cfg.train.seed, CCOE_INIT_COPY);
    ccoe_model_init_weights(&s.model, cfg.train.seed, CCOE_INIT_COPY);
    if (expert_parallel)
        CHECK_OK(ccoe_model_set_comm(&s.model, comm, NULL, &err));
    CHECK(!expert_parallel || comm->size == 1 || ccoe_model_forward_collective(&s.model));
    ccoe_domain_eval want[CCOE_MAX_DOMAINS], got[CCOE_MAX_DOMAINS];
    CHECK_OK(ccoe_eval_domains(&ref.model, &ref.data, &ref.tok, &ref.batch,
                               cfg.train.eval_batches, 1, NULL, want, &err));
    CHECK_OK(ccoe_eval_domains(&s.model, &s.data, &s.tok, &s.batch, cfg.train.eval_batches, 1,
                               comm, got, &err));
    long tasks = 0;
    for (int d = 0; d < ref.data.n_domains; d++) {
        const ccoe_domain_eval *a = &got[d], *b = &want[d];
        CHECK(a->tokens == b->tokens && a->tokens > 0);
        CHECK(fabs(a->loss - b->loss) <= 1e-12 * fabs(b->loss));
        CHECK(a->task_total == b->task_total && a->task_correct == b->task_correct);
        CHECK(a->n_kinds == b->n_kinds && a->sql_unavailable == b->sql_unavailable);
        for (int k = 0; k < b->n_kinds; k++)
            CHECK(strcmp(a->kinds[k].name, b->kinds[k].name) == 0 &&
                  a->kinds[k].total == b->kinds[k].total &&
                  a->kinds[k].correct == b->kinds[k].correct &&
                  a->kinds[k].errors == b->kinds[k].errors);
        tasks += b->task_total;
    }
    CHECK(tasks == 27); /* 9 examples in each of the 3 task domains */
    const ccoe_model *mr = &ref.model, *ms = &s.model;
    CHECK(mr->n_moe == ms->n_moe);
    for (int l = 0; l < mr->n_moe; l++) {
        const int E = mr->moe.E;
        CHECK(ms->moe_tot_rows[l] == mr->moe_tot_rows[l] && mr->moe_tot_rows[l] > 0);
        for (int e = 0; e < E; e++)
            CHECK(ms->moe_tot_tokens[(size_t)l * E + e] == mr->moe_tot_tokens[(size_t)l * E + e]);
        for (int j = 0; j < 3; j++)
            CHECK(ms->moe_tot_dropped[3 * l + j] == mr->moe_tot_dropped[3 * l + j]);
        for (int j = 0; j < 2; j++) {
            CHECK(fabs(ms->moe_tot_entropy[2 * l + j] - mr->moe_tot_entropy[2 * l + j]) <=
                  1e-9 * (1.0 + fabs(mr->moe_tot_entropy[2 * l + j])));
        }
    }
    ccoe_session_close(&s);
    ccoe_session_close(&ref);
    return fails;
}

int tu_ep_eval_cases(ccoe_comm *comm, const ccoe_gemm *g)
{
    (void)g;
    static const char *const moe[] = {"moe.gate=topk", "moe.n_experts=4", "moe.top_k=2",
                                      "moe.capacity_factor=0"};
    int fails = 0;
    fails += eval_case(comm, "eval split, dense", NULL, 0, 0);
    fails += eval_case(comm, "eval split, MoE (experts on every rank)", moe, 4, 0);
    if (4 % comm->size == 0)
        fails += eval_case(comm, "eval split, expert-parallel MoE", moe, 4, 1);
    return fails;
}
