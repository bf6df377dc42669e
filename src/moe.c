/* moe.c - the Mixture-of-Experts layer in float: router, gate, capacity, permuted experts,
 * combine, auxiliary losses; forward and backward. Checked against moe_ref.c.
 *
 * Fast path: tokens are permuted by expert (a counting sort of the (token, slot) pairs into
 * contiguous per-expert row groups, gathered into a packed buffer), each expert runs its FFN on
 * its group (GEMMs through ccoe_linear_* / ccoe_gemm_run_serial: BLIS or libxsmm; the
 * activation runs once over all packed rows), and the combine scatters the weighted rows back
 * per token (OpenMP over tokens, slots in a fixed order, so results do not depend on the thread
 * count). Experts run either one after another with threaded GEMMs or spread over the threads
 * with single-threaded GEMMs (expert_schedule). Backward mirrors it. The E-sized sums of the
 * aux losses run serially in double (O(N E) work, deterministic).
 * Expert parallelism (placement, the global plan, the exchanges, the distributed forward and
 * backward) is in moe_ep.c; it reuses the pieces declared in moe_impl.h.
 * Not here: the gates' own math (variants/), memory (the caller carves it), <mpi.h>.
 */
#include "moe.h"

#include <assert.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kernels.h"
#include "moe_impl.h"
#include "rng.h"

#define ABSENT ((size_t)-1)
#define CV_EPS 1e-10 /* CV^2 = var / (mean^2 + CV_EPS), as tensor2tensor's cv_squared */
/* AUTO schedule: experts in parallel when the busiest thread gets at most this many times the
 * balanced share of rows: two single-threaded GEMMs at once beat one threaded GEMM until the
 * imbalance costs more than threading gains (papers/kernels.md derives 1.2 from measured
 * rates). */
#define CCOE_MOE_PAR_SLACK 1.2

static size_t pad16(size_t n) { return (n + 15) & ~(size_t)15; }

/* ---- configuration ---- */

void ccoe_moe_defaults(ccoe_moe_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->gate, sizeof cfg->gate, "topk");
    cfg->n_experts = 8;
    cfg->top_k = 2;
    cfg->ffn_hidden = 0;
    cfg->expert = CCOE_MOE_GELU;
    cfg->bias = 1;
    cfg->renormalize = 1;
}

static ccoe_status bad(ccoe_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static ccoe_status bad(ccoe_error *err, const char *fmt, ...)
{
    char msg[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ccoe_error_set(err, CCOE_ERR_CONFIG, "moe: %s", msg);
}

ccoe_status ccoe_moe_validate(const ccoe_moe_config *c, ccoe_error *err)
{
    const ccoe_gate_ops *g = ccoe_gate_find(c->gate);
    if (!g) {
        char names[256];
        ccoe_gate_list_names(names, sizeof names, 0);
        return bad(err, "unknown gate '%.31s' (allowed: %s)", c->gate, names);
    }
    const int E = c->n_experts, K = c->top_k;
    if (E < 1 || E > CCOE_MOE_MAX_EXPERTS)
        return bad(err, "n_experts = %d is out of range: use 1..%d", E, CCOE_MOE_MAX_EXPERTS);
    if (K < 1)
        return bad(err, "top_k = %d: each token needs at least one expert (top_k >= 1)", K);
    if (K > E)
        return bad(err, "top_k = %d exceeds n_experts = %d: use top_k <= n_experts", K, E);
    if ((g->flags & CCOE_GATE_ALL_EXPERTS) && K != E)
        return bad(err, "gate %s weights every expert: set top_k = n_experts (%d), not %d",
                   g->name, E, K);
    if ((g->flags & CCOE_GATE_ONE_EXPERT) && K != 1)
        return bad(err, "gate %s sends each token to one expert: set top_k = 1, not %d", g->name,
                   K);
    if (c->ffn_hidden < 1)
        return bad(err, "ffn_hidden = %d: each expert needs a hidden size >= 1", c->ffn_hidden);
    if (c->expert != CCOE_MOE_GELU && c->expert != CCOE_MOE_SWIGLU)
        return bad(err, "expert kind %d is unknown (allowed: gelu, swiglu)", (int)c->expert);
    if (c->bias != 0 && c->bias != 1)
        return bad(err, "bias = %d: use 0 or 1", c->bias);
    if (c->renormalize != 0 && c->renormalize != 1)
        return bad(err, "renormalize = %d: use 0 or 1", c->renormalize);
    if (!c->renormalize && !(g->flags & CCOE_GATE_RENORM_OPT))
        return bad(err, "renormalize = false applies to gate topk only; gate %s defines its "
                   "own weights: leave renormalize = true", g->name);
    double cf = c->capacity_factor, ecf = c->eval_capacity_factor;
    if (!isfinite(cf) || (cf != 0.0 && cf < 1.0))
        return bad(err, "capacity_factor = %g: use 0 (dropless) or a value >= 1", cf);
    if (!isfinite(ecf) || (ecf != 0.0 && ecf < 1.0))
        return bad(err, "eval_capacity_factor = %g: use 0 (dropless evaluation) or a value >= 1",
                   ecf);
    if ((g->flags & CCOE_GATE_DROPLESS) && (cf != 0.0 || ecf != 0.0))
        return bad(err, "capacity_factor = %g, eval_capacity_factor = %g: gate %s routes by a "
                   "rule and is always dropless (a capacity would skip the FFN of the tokens "
                   "the rule sends to a full expert); set both to 0", cf, ecf, g->name);
    const struct {
        const char *name;
        double v;
    } coef[] = {{"noise_eps", c->noise_eps},     {"w_importance", c->w_importance},
                {"w_load", c->w_load},           {"w_switch", c->w_switch},
                {"w_z", c->w_z}};
    for (size_t i = 0; i < sizeof coef / sizeof coef[0]; i++)
        if (!isfinite(coef[i].v) || coef[i].v < 0.0)
            return bad(err, "%s = %g: must be finite and >= 0", coef[i].name, coef[i].v);
    if (!(g->flags & CCOE_GATE_NOISE)) {
        if (c->noise_eps != 0.0)
            return bad(err, "noise_eps = %g is a noise option but gate %s has no noise: set it "
                       "to 0 or use gate noisy_topk", c->noise_eps, g->name);
        if (c->w_load != 0.0)
            return bad(err, "w_load = %g needs the noisy load estimator but gate %s has no "
                       "noise: set it to 0 or use gate noisy_topk", c->w_load, g->name);
    } else if (c->w_load != 0.0 && K == E) {
        return bad(err, "w_load = %g with top_k = n_experts = %d: every expert is always "
                   "selected, the load estimator is undefined; set w_load = 0 or top_k < %d",
                   c->w_load, E, E);
    }
    if (!(g->flags & CCOE_GATE_ROUTER) &&
        (c->w_importance != 0.0 || c->w_switch != 0.0 || c->w_z != 0.0))
        return bad(err, "gate %s has no router: the aux losses (w_importance %g, w_switch "
                   "%g, w_z %g) must be 0", g->name, c->w_importance, c->w_switch, c->w_z);
    if (g->flags & CCOE_GATE_DOMAIN) {
        if (c->n_domains < 1 || c->n_domains > CCOE_MOE_MAX_DOMAINS)
            return bad(err, "gate %s needs a domain table with 1..%d entries, got %d", g->name,
                       CCOE_MOE_MAX_DOMAINS, c->n_domains);
        for (int d = 0; d < c->n_domains; d++)
            if (c->domain_expert[d] < 0 || c->domain_expert[d] >= E)
                return bad(err, "domain_expert[%d] = %d is not an expert index in 0..%d (map "
                           "a domain that should run the base FFN to the expert holding it)",
                           d, (int)c->domain_expert[d], E - 1);
    } else if (c->n_domains != 0) {
        return bad(err, "a domain table (n_domains = %d) is only used by gate domain, not %s",
                   c->n_domains, g->name);
    }
    return CCOE_OK;
}

int ccoe_moe_config_from_section(const ccoe_moe_section *s, const ccoe_model_config *m,
                                 ccoe_moe_config *out)
{
    if (ccoe_gate_is_none(s->gate))
        return 0;
    const ccoe_gate_ops *g = ccoe_gate_find(s->gate);
    ccoe_moe_defaults(out);
    snprintf(out->gate, sizeof out->gate, "%s", s->gate);
    out->n_experts = s->n_experts;
    out->top_k = s->top_k;
    out->ffn_hidden = s->expert_hidden > 0 ? s->expert_hidden : m->ffn_hidden;
    out->expert = m->ffn == CCOE_FFN_SWIGLU ? CCOE_MOE_SWIGLU : CCOE_MOE_GELU;
    out->bias = m->bias;
    out->renormalize = s->renormalize;
    out->capacity_factor = s->capacity_factor;
    out->eval_capacity_factor = s->eval_capacity_factor;
    if (g && (g->flags & CCOE_GATE_DROPLESS)) /* a rule-routed gate ignores capacity */
        out->capacity_factor = out->eval_capacity_factor = 0.0;
    out->noise_eps = s->noise_eps;
    out->w_importance = s->w_importance;
    out->w_load = s->w_load;
    out->w_switch = s->w_switch;
    out->w_z = s->w_z;
    if (g && (g->flags & CCOE_GATE_DOMAIN)) {
        /* expert index = domain id; the data's domain count is checked at session setup */
        out->n_domains = s->n_experts < CCOE_MOE_MAX_DOMAINS ? s->n_experts
                                                             : CCOE_MOE_MAX_DOMAINS;
        for (int d = 0; d < out->n_domains; d++)
            out->domain_expert[d] = d;
    }
    return 1;
}

/* Cross-field rules of [moe] (after model.ffn_hidden is resolved). The layer's own validation
 * (ccoe_moe_validate) checks the rules; its messages "moe: top_k = 9 ..." are rewritten to name
 * the key as it is set ("moe.top_k = 9 ..."). */
ccoe_status ccoe_moe_config_check(const ccoe_config *c, ccoe_error *err)
{
    const ccoe_moe_section *s = &c->moe;
    ccoe_moe_config mc;
    if (!ccoe_moe_config_from_section(s, &c->model, &mc))
        return CCOE_OK;
    const ccoe_gate_ops *g = ccoe_gate_find(s->gate);
    if (s->every > c->model.n_layer)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "moe.every = %d exceeds model.n_layer = %d: no block would be MoE; "
                              "use moe.every <= n_layer or moe.gate = none",
                              s->every, c->model.n_layer);
    if (g && !(g->flags & CCOE_GATE_ROUTER) &&
        (s->w_switch != 0.0 || s->w_z != 0.0 || s->w_importance != 0.0))
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "moe.gate = %s has no router, so it has no balancing losses: "
                              "set moe.w_switch = 0, moe.w_z = 0 and moe.w_importance = 0 (now "
                              "%g, %g, %g)",
                              g->name, s->w_switch, s->w_z, s->w_importance);
    ccoe_status st = ccoe_moe_validate(&mc, err);
    if (st == CCOE_OK || !err)
        return st;
    /* "moe: KEY = ..." -> "moe.KEY = ..." when KEY is a [moe] key */
    static const char *const keys[] = {"gate", "n_experts", "top_k", "renormalize",
                                       "capacity_factor", "eval_capacity_factor", "noise_eps", "w_importance",
                                       "w_load", "w_switch", "w_z", NULL};
    if (strncmp(err->msg, "moe: ", 5) == 0)
        for (size_t i = 0; keys[i]; i++) {
            size_t n = strlen(keys[i]);
            if (strncmp(err->msg + 5, keys[i], n) == 0 && err->msg[5 + n] == ' ') {
                err->msg[3] = '.';
                memmove(err->msg + 4, err->msg + 5, strlen(err->msg + 5) + 1);
                return st;
            }
        }
    return ccoe_error_wrap(err, "[moe] gate = %s", s->gate);
}

static int capacity_at(const ccoe_moe *m, double cf, int N)
{
    if (cf == 0.0)
        return 0;
    double c = ceil(cf * (double)N * (double)m->K / (double)m->E);
    return c > (double)N ? N : (int)c; /* an expert holds a token at most once */
}

int ccoe_moe_capacity(const ccoe_moe *m, int N)
{
    return capacity_at(m, m->cfg.capacity_factor, N);
}

int ccoe_moe_capacity_of(const ccoe_moe *m, int N, int eval)
{
    return capacity_at(m, eval ? m->cfg.eval_capacity_factor : m->cfg.capacity_factor, N);
}

int ccoe_moe_capacity_bound(const ccoe_moe *m, int N)
{
    int a = ccoe_moe_capacity_of(m, N, 0), b = ccoe_moe_capacity_of(m, N, 1);
    return a == 0 || b == 0 ? 0 : a > b ? a : b;
}

ccoe_status ccoe_moe_init(ccoe_moe *m, const ccoe_moe_config *cfg, int C, int maxN,
                          const ccoe_gemm *g, ccoe_error *err)
{
    memset(m, 0, sizeof *m);
    CCOE_TRY(ccoe_moe_validate(cfg, err));
    if (C < 1 || maxN < 1)
        return ccoe_error_set(err, CCOE_ERR_ARG, "moe: C = %d and maxN = %d must be >= 1", C,
                              maxN);
    if ((long long)maxN * cfg->top_k > INT32_MAX)
        return ccoe_error_set(err, CCOE_ERR_ARG, "moe: maxN * top_k = %lld rows exceed the "
                              "int32 row index: use smaller batches", (long long)maxN * cfg->top_k);
    m->cfg = *cfg;
    m->gate = ccoe_gate_find(cfg->gate);
    m->gemm = g;
    m->C = C;
    m->E = cfg->n_experts;
    m->K = cfg->top_k;
    m->F = cfg->ffn_hidden;
    m->F2 = cfg->expert == CCOE_MOE_SWIGLU ? 2 * m->F : m->F;
    m->maxN = maxN;
    long long rows = (long long)maxN * m->K;
    int cap = ccoe_moe_capacity_bound(m, maxN);
    if (cap > 0 && (long long)cap * m->E < rows)
        rows = (long long)cap * m->E;
    m->max_rows = (int)rows;

    const size_t EC = (size_t)m->E * C;
    size_t off = 0;
    m->off_router = m->off_noise = ABSENT;
    m->n_tensors = 0;
    if (m->gate->flags & CCOE_GATE_ROUTER) {
        m->off_router = off;
        off += pad16(EC);
        m->n_tensors++;
    }
    if (m->gate->flags & CCOE_GATE_NOISE) {
        m->off_noise = off;
        off += pad16(EC);
        m->n_tensors++;
    }
    m->off_experts = off;
    size_t o = 0;
    m->off_fc_w = o;
    o += pad16((size_t)m->F2 * C);
    m->off_fc_b = m->off_proj_b = ABSENT;
    if (cfg->bias) {
        m->off_fc_b = o;
        o += pad16((size_t)m->F2);
    }
    m->off_proj_w = o;
    o += pad16((size_t)C * m->F);
    if (cfg->bias) {
        m->off_proj_b = o;
        o += pad16((size_t)C);
    }
    m->expert_stride = o;
    m->num_params = off + (size_t)m->E * o;
    m->n_tensors += m->E * (cfg->bias ? 4 : 2);
    return CCOE_OK;
}

ccoe_status ccoe_moe_check_domains(const ccoe_moe *m, int n_domains, ccoe_error *err)
{
    if (!(m->gate->flags & CCOE_GATE_DOMAIN))
        return CCOE_OK;
    if (n_domains > m->cfg.n_domains)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "moe: the data has %d domains but the domain table maps only %d: "
                              "add an expert for each of domains %d..%d",
                              n_domains, m->cfg.n_domains, m->cfg.n_domains, n_domains - 1);
    return CCOE_OK;
}

/* ---- parameter layout ---- */

void ccoe_moe_tensor_at(const ccoe_moe *m, int i, ccoe_moe_tensor *t)
{
    assert(i >= 0 && i < m->n_tensors);
    memset(t, 0, sizeof *t);
    const int C = m->C;
    int nr = (m->off_router != ABSENT) + (m->off_noise != ABSENT);
    if (i < nr) {
        int noise = i == 1 || m->off_router == ABSENT;
        snprintf(t->name, sizeof t->name, "%s", noise ? "router.noise_weight" : "router.weight");
        t->ndim = 2;
        t->shape[0] = m->E;
        t->shape[1] = C;
        t->offset = noise ? m->off_noise : m->off_router;
        t->numel = (size_t)m->E * C;
        t->decay = 1;
        t->expert = -1;
        return;
    }
    int per = m->cfg.bias ? 4 : 2;
    int e = (i - nr) / per, k = (i - nr) % per;
    if (!m->cfg.bias)
        k *= 2; /* 0 fc.weight, 2 proj.weight */
    static const char *const suffix[4] = {"fc.weight", "fc.bias", "proj.weight", "proj.bias"};
    snprintf(t->name, sizeof t->name, "experts.%d.%s", e, suffix[k]);
    size_t base = m->off_experts + (size_t)e * m->expert_stride;
    t->expert = e;
    t->decay = k == 0 || k == 2;
    t->ndim = t->decay ? 2 : 1;
    switch (k) {
    case 0:
        t->shape[0] = m->F2, t->shape[1] = C, t->offset = base + m->off_fc_w;
        break;
    case 1:
        t->shape[0] = m->F2, t->offset = base + m->off_fc_b;
        break;
    case 2:
        t->shape[0] = C, t->shape[1] = m->F, t->offset = base + m->off_proj_w;
        break;
    default:
        t->shape[0] = C, t->offset = base + m->off_proj_b;
        break;
    }
    t->numel = (size_t)t->shape[0] * (size_t)(t->ndim > 1 ? t->shape[1] : 1);
}

void ccoe_moe_init_weights(const ccoe_moe *m, float *params, uint64_t seed, float std,
                           float proj_std)
{
    memset(params, 0, m->num_params * sizeof(float));
    ccoe_rng r;
    ccoe_rng_seed(&r, seed);
    for (int i = 0; i < m->n_tensors; i++) {
        ccoe_moe_tensor t;
        ccoe_moe_tensor_at(m, i, &t);
        if (t.ndim == 1 || strcmp(t.name, "router.noise_weight") == 0)
            continue; /* zeros */
        float s = strstr(t.name, "proj.weight") ? proj_std : std;
        for (size_t j = 0; j < t.numel; j++)
            params[t.offset + j] = s * ccoe_rng_normal(&r);
    }
}

/* ---- memory ---- */

static void *take(ccoe_arena *a, size_t n, size_t size, int want)
{
    return want ? ccoe_arena_take(a, n * size) : NULL;
}

void ccoe_moe_acts_carve(ccoe_moe_acts *a, const ccoe_moe *m, ccoe_arena *arena)
{
    memset(a, 0, sizeof *a);
    const size_t N = m->maxN, E = m->E, K = m->K, R = m->max_rows, C = m->C;
    const int router = (m->gate->flags & CCOE_GATE_ROUTER) != 0;
    const int noisy = (m->gate->flags & CCOE_GATE_NOISE) != 0;
    a->logits = take(arena, N * E, sizeof(float), router);
    a->noise_logits = take(arena, N * E, sizeof(float), noisy);
    a->noise = take(arena, N * E, sizeof(float), noisy);
    a->probs = take(arena, N * E, sizeof(float), router);
    a->lse = take(arena, N, sizeof(float), router);
    a->load_p = take(arena, N * E, sizeof(float), noisy && m->K < m->E);
    a->ids = take(arena, N * K, sizeof(int32_t), 1);
    a->weights = take(arena, N * K, sizeof(float), 1);
    a->kth = take(arena, N, sizeof(int32_t), 1);
    a->slot = take(arena, N * K, sizeof(int32_t), 1);
    a->row_token = take(arena, R, sizeof(int32_t), 1);
    a->offsets = take(arena, E + 1, sizeof(int32_t), 1);
    a->cursor = take(arena, E, sizeof(int32_t), 1);
    a->xin = take(arena, R * C, sizeof(float), 1);
    a->fch = take(arena, R * m->F2, sizeof(float), 1);
    a->fch_act = take(arena, R * m->F, sizeof(float), 1);
    a->y = take(arena, R * C, sizeof(float), 1);
    a->importance = take(arena, E, sizeof(double), 1);
    a->load = take(arena, E, sizeof(double), 1);
    a->frac = take(arena, E, sizeof(double), 1);
    a->pmean = take(arena, E, sizeof(double), 1);
    const int ep = m->ep_size > 0;
    a->home = take(arena, (size_t)m->max_home * C, sizeof(float), ep);
    a->ep_kept = take(arena, (size_t)m->ep_size * E, sizeof(int32_t), ep);
}

void ccoe_moe_scratch_carve(ccoe_moe_scratch *s, const ccoe_moe *m, ccoe_arena *arena)
{
    memset(s, 0, sizeof *s);
    const size_t N = m->maxN, E = m->E, K = m->K, R = m->max_rows, C = m->C;
    const int router = (m->gate->flags & CCOE_GATE_ROUTER) != 0;
    const int noisy = (m->gate->flags & CCOE_GATE_NOISE) != 0;
    s->dy = take(arena, R * C, sizeof(float), 1);
    s->dfch_act = take(arena, R * m->F, sizeof(float), 1);
    s->dfch = take(arena, R * m->F2, sizeof(float), 1);
    s->dxin = take(arena, R * C, sizeof(float), 1);
    s->dweights = take(arena, N * K, sizeof(float), 1);
    s->dlogits = take(arena, N * E, sizeof(float), router);
    s->dnoise_logits = take(arena, N * E, sizeof(float), noisy);
    const int ep = m->ep_size > 0;
    const size_t P = (size_t)m->ep_size;
    s->home = take(arena, (size_t)m->max_home * C, sizeof(float), ep);
    s->stage = take(arena, (size_t)m->max_recv * C, sizeof(float), ep);
    s->counts = take(arena, (P + 1) * (1 + K * E), sizeof(int32_t), ep);
    s->sums = take(arena, 4 * E + 4, sizeof(double), ep);
    s->send_counts = take(arena, P, sizeof(size_t), ep);
    s->send_displs = take(arena, P, sizeof(size_t), ep);
    s->recv_counts = take(arena, P, sizeof(size_t), ep);
    s->recv_displs = take(arena, P, sizeof(size_t), ep);
    s->cursor = take(arena, P, sizeof(int64_t), ep);
}

size_t ccoe_moe_acts_bytes(const ccoe_moe *m)
{
    ccoe_arena a;
    ccoe_moe_acts tmp;
    ccoe_arena_count(&a);
    ccoe_moe_acts_carve(&tmp, m, &a);
    return a.used;
}

size_t ccoe_moe_scratch_bytes(const ccoe_moe *m)
{
    ccoe_arena a;
    ccoe_moe_scratch tmp;
    ccoe_arena_count(&a);
    ccoe_moe_scratch_carve(&tmp, m, &a);
    return a.used;
}

/* ---- dispatch primitives ---- */

int ccoe_moe_plan(int32_t *slot, int32_t *row_token, int32_t *offsets, int32_t *cursor,
                  const int32_t *ids, int N, int E, int K, int cap)
{
    /* 1. kept rows per expert, by priority (slot rank, then token); mark kept slots 0 */
    for (int e = 0; e <= E; e++)
        offsets[e] = 0;
    for (int j = 0; j < K; j++)
        for (int n = 0; n < N; n++) {
            int32_t e = ids[(size_t)n * K + j];
            assert(e >= 0 && e < E);
            if (cap > 0 && offsets[e + 1] >= cap) {
                slot[(size_t)n * K + j] = -1;
            } else {
                offsets[e + 1]++;
                slot[(size_t)n * K + j] = 0;
            }
        }
    for (int e = 0; e < E; e++) {
        offsets[e + 1] += offsets[e];
        cursor[e] = offsets[e];
    }
    /* 2. rows in token order within each expert's group */
    for (int n = 0; n < N; n++)
        for (int j = 0; j < K; j++) {
            size_t at = (size_t)n * K + j;
            if (slot[at] < 0)
                continue;
            int32_t r = cursor[ids[at]]++;
            slot[at] = r;
            row_token[r] = n;
        }
    return offsets[E];
}

void ccoe_moe_gather(float *rows, const float *inp, const int32_t *row_token, int R, int C)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++)
        memcpy(rows + (size_t)r * C, inp + (size_t)row_token[r] * C, (size_t)C * sizeof(float));
}

void ccoe_moe_combine(float *out, const float *rows, const int32_t *slot, const float *weights,
                      int N, int K, int C)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *restrict o = out + (size_t)n * C;
        memset(o, 0, (size_t)C * sizeof(float));
        for (int j = 0; j < K; j++) {
            int32_t s = slot[(size_t)n * K + j];
            if (s < 0)
                continue;
            const float *restrict y = rows + (size_t)s * C;
            float w = weights[(size_t)n * K + j];
            for (int c = 0; c < C; c++)
                o[c] += w * y[c];
        }
    }
}

/* ---- aux-loss helpers (double) ---- */

/* CV(x)^2 = var / (mean^2 + eps) over E values (population variance). */
static double cv2(const double *x, int E)
{
    double m = 0.0, v = 0.0;
    for (int i = 0; i < E; i++)
        m += x[i];
    m /= E;
    for (int i = 0; i < E; i++)
        v += (x[i] - m) * (x[i] - m);
    v /= E;
    return v / (m * m + CV_EPS);
}

/* d = scale * dCV^2/dx. */
static void cv2_grad(double *d, const double *x, int E, double scale)
{
    double m = 0.0, v = 0.0;
    for (int i = 0; i < E; i++)
        m += x[i];
    m /= E;
    for (int i = 0; i < E; i++)
        v += (x[i] - m) * (x[i] - m);
    v /= E;
    double D = m * m + CV_EPS;
    for (int i = 0; i < E; i++)
        d[i] = scale * (2.0 * (x[i] - m) / (E * D) - 2.0 * v * m / (E * D * D));
}

/* ---- forward ---- */

static const float *expert_param(const ccoe_moe *m, const float *params, int e, size_t off)
{
    return off == ABSENT ? NULL : params + m->off_experts + (size_t)e * m->expert_stride + off;
}

static float *expert_grad(const ccoe_moe *m, float *grads, int e, size_t off)
{
    return off == ABSENT ? NULL : grads + m->off_experts + (size_t)e * m->expert_stride + off;
}

/* The gate's arguments for rows [0, N) of acts (pass: domains and T; NULL in backward). */
ccoe_gate_args ccoe_moe_gate_args(const ccoe_moe *m, const ccoe_moe_acts *a,
                                  const ccoe_moe_pass *pass, int N)
{
    ccoe_gate_args g;
    memset(&g, 0, sizeof g);
    g.N = N;
    g.E = m->E;
    g.K = m->K;
    g.renormalize = m->cfg.renormalize;
    g.noise_eps = (float)m->cfg.noise_eps;
    g.logits = a->logits;
    g.noise_logits = a->noise_logits;
    g.noise = a->noise;
    if (pass) {
        g.domains = pass->domains;
        g.T = pass->T;
        g.tokens = pass->tokens;
    }
    g.domain_expert = m->cfg.domain_expert;
    g.n_domains = m->cfg.n_domains;
    return g;
}

/* ---- expert compute: two schedules ----
 * GEMM-threaded: experts one after another, each GEMM on all threads (ccoe_linear_*).
 * Expert-parallel: experts spread over the threads (most rows first, dynamic), each GEMM on one
 * thread (ccoe_gemm_run_serial). An expert's results do not depend on which thread runs it, and
 * each expert's gradients are written by one thread only. */

enum { STAGE_FC_FWD, STAGE_PROJ_FWD, STAGE_PROJ_BWD, STAGE_FC_BWD };

typedef struct expert_io {
    const ccoe_moe *m;
    const float *params;
    float *grads;           /* backward */
    const ccoe_moe_acts *a; /* its buffers are written in forward */
    ccoe_moe_scratch *s;    /* backward */
} expert_io;

/* out (n, OC) = inp W^T + b; OVERWRITES. */
static void linear_fwd(const ccoe_gemm *g, int serial, float *out, const float *inp,
                       const float *w, const float *b, int n, int IC, int OC)
{
    if (!serial) {
        ccoe_linear_forward(g, out, inp, w, b, n, IC, OC);
        return;
    }
    if (b)
        for (int r = 0; r < n; r++)
            memcpy(out + (size_t)r * OC, b, (size_t)OC * sizeof(float));
    ccoe_gemm_run_linear_serial(g, 0, 1, n, OC, IC, 1.0f, inp, IC, w, IC, b ? 1.0f : 0.0f, out,
                                OC);
}

/* dinp (n, IC) = dout W (OVERWRITES); dw += dout^T inp; db += colsum(dout) (db may be NULL). */
static void linear_bwd(const ccoe_gemm *g, int serial, float *dinp, float *dw, float *db,
                       const float *dout, const float *inp, const float *w, int n, int IC, int OC)
{
    if (!serial) {
        ccoe_gemm_run_linear(g, 0, 0, n, IC, OC, 1.0f, dout, OC, w, IC, 0.0f, dinp, IC);
        ccoe_linear_backward(g, NULL, dw, db, dout, inp, w, n, IC, OC);
        return;
    }
    ccoe_gemm_run_linear_serial(g, 0, 0, n, IC, OC, 1.0f, dout, OC, w, IC, 0.0f, dinp, IC);
    ccoe_gemm_run_linear_serial(g, 1, 0, OC, IC, n, 1.0f, dout, OC, inp, IC, 1.0f, dw, IC);
    if (db)
        for (int r = 0; r < n; r++) {
            const float *restrict d = dout + (size_t)r * OC;
            float *restrict acc = db;
            for (int o = 0; o < OC; o++)
                acc[o] += d[o];
        }
}

static void expert_stage(const expert_io *io, int stage, int e, int serial)
{
    const ccoe_moe *m = io->m;
    const ccoe_moe_acts *a = io->a;
    const ccoe_gemm *g = m->gemm;
    const int C = m->C, F = m->F, F2 = m->F2;
    const size_t r0 = (size_t)a->offsets[e];
    const int ne = a->offsets[e + 1] - a->offsets[e];
    const float *fc_w = expert_param(m, io->params, e, m->off_fc_w);
    const float *proj_w = expert_param(m, io->params, e, m->off_proj_w);
    switch (stage) {
    case STAGE_FC_FWD:
        linear_fwd(g, serial, a->fch + r0 * F2, a->xin + r0 * C, fc_w,
                   expert_param(m, io->params, e, m->off_fc_b), ne, C, F2);
        break;
    case STAGE_PROJ_FWD:
        linear_fwd(g, serial, a->y + r0 * C, a->fch_act + r0 * F, proj_w,
                   expert_param(m, io->params, e, m->off_proj_b), ne, F, C);
        break;
    case STAGE_PROJ_BWD:
        linear_bwd(g, serial, io->s->dfch_act + r0 * F,
                   expert_grad(m, io->grads, e, m->off_proj_w),
                   expert_grad(m, io->grads, e, m->off_proj_b), io->s->dy + r0 * C,
                   a->fch_act + r0 * F, proj_w, ne, F, C);
        break;
    default:
        linear_bwd(g, serial, io->s->dxin + r0 * C, expert_grad(m, io->grads, e, m->off_fc_w),
                   expert_grad(m, io->grads, e, m->off_fc_b), io->s->dfch + r0 * F2,
                   a->xin + r0 * C, fc_w, ne, C, F2);
        break;
    }
}

static void run_stage(const expert_io *io, int stage, const int32_t *order, int n, int parallel)
{
    if (parallel) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int q = 0; q < n; q++)
            expert_stage(io, stage, order[q], 1);
    } else {
        for (int q = 0; q < n; q++)
            expert_stage(io, stage, order[q], 0);
    }
}

/* order (n_order): the non-empty experts, most rows first. Returns 1 for the expert-parallel
 * schedule. AUTO takes it when the threads stay evenly busy: a greedy most-rows-first
 * assignment of the groups to the threads finishes within CCOE_MOE_PAR_SLACK times the
 * perfectly balanced share. */
static int expert_schedule(const ccoe_moe *m, const int32_t *offsets, int32_t *order,
                           int *n_order)
{
    int n = 0;
    for (int e = 0; e < m->E; e++) {
        int rows = offsets[e + 1] - offsets[e];
        if (rows == 0)
            continue;
        int p = n++;
        while (p > 0 && offsets[order[p - 1] + 1] - offsets[order[p - 1]] < rows) {
            order[p] = order[p - 1];
            p--;
        }
        order[p] = e;
    }
    *n_order = n;
    if (m->schedule != CCOE_MOE_SCHED_AUTO)
        return m->schedule == CCOE_MOE_SCHED_EXPERTS;
    int nt = m->gemm->nthreads < 64 ? m->gemm->nthreads : 64;
    if (nt <= 1 || n < 2)
        return 0;
    long bins[64] = {0}, total = 0;
    for (int q = 0; q < n; q++) {
        long rows = offsets[order[q] + 1] - offsets[order[q]];
        int best = 0;
        for (int t = 1; t < nt; t++)
            best = bins[t] < bins[best] ? t : best;
        bins[best] += rows;
        total += rows;
    }
    long makespan = 0;
    for (int t = 0; t < nt; t++)
        makespan = bins[t] > makespan ? bins[t] : makespan;
    return (double)makespan <= CCOE_MOE_PAR_SLACK * (double)total / nt;
}

/* The sums over this call's N rows behind the aux losses: acts' importance, frac (router
 * choices, not yet divided), pmean (sums of softmax(logits)) and load; fills probs, lse and
 * load_p. Returns sum_n lse_n^2. */
double ccoe_moe_aux_sums(const ccoe_moe *m, ccoe_moe_acts *a, const ccoe_gate_args *ga, int N)
{
    const int E = m->E, K = m->K;
    const int router = (m->gate->flags & CCOE_GATE_ROUTER) != 0;
    for (int i = 0; i < E; i++)
        a->importance[i] = a->load[i] = a->frac[i] = a->pmean[i] = 0.0;
    for (size_t t = 0; t < (size_t)N * K; t++) {
        a->importance[a->ids[t]] += a->weights[t];
        a->frac[a->ids[t]] += 1.0;
    }
    if (!router)
        return 0.0;
    float *probs = a->probs, *lse = a->lse;
    const float *logits = a->logits;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        lse[n] = ccoe_gate_softmax(probs + (size_t)n * E, logits + (size_t)n * E, E);
    double z = 0.0;
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * E;
        for (int i = 0; i < E; i++)
            a->pmean[i] += p[i];
        z += (double)lse[n] * lse[n];
    }
    if (a->load_p) {
        m->gate->load_forward(a->load_p, a->ids, a->kth, ga);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < E; i++)
                a->load[i] += a->load_p[(size_t)n * E + i];
    }
    return z;
}

/* Aux-loss values from the sums of ccoe_moe_aux_sums over Ntot rows (one call's, or every rank's
 * allreduced): divides frac and pmean in acts, fills the value fields of st. */
void ccoe_moe_aux_values(const ccoe_moe *m, ccoe_moe_acts *a, ccoe_moe_stats *st, double z,
                         int64_t Ntot)
{
    const int E = m->E, K = m->K;
    const int router = (m->gate->flags & CCOE_GATE_ROUTER) != 0;
    for (int i = 0; i < E; i++)
        a->frac[i] /= (double)Ntot * K;
    if (!router)
        return;
    double sw = 0.0;
    for (int i = 0; i < E; i++) {
        a->pmean[i] /= Ntot;
        sw += a->frac[i] * a->pmean[i];
    }
    st->cv2_importance = cv2(a->importance, E);
    st->switch_value = E * sw;
    st->z_value = z / Ntot;
    if (a->load_p)
        st->cv2_load = cv2(a->load, E);
    st->loss_importance = m->cfg.w_importance * st->cv2_importance;
    st->loss_load = m->cfg.w_load * st->cv2_load;
    st->loss_switch = m->cfg.w_switch * st->switch_value;
    st->loss_z = m->cfg.w_z * st->z_value;
    st->loss_aux = st->loss_importance + st->loss_load + st->loss_switch + st->loss_z;
}

/* Per-token statistics sums over this call's rows: tokens with every slot dropped, gate and
 * router entropies. */
void ccoe_moe_token_sums(const ccoe_moe *m, const ccoe_moe_acts *a, int N, int64_t *dropped,
                         double *h_gate, double *h_router)
{
    const int E = m->E, K = m->K;
    int64_t dropped_tokens = 0;
    double hg = 0.0, hr = 0.0;
    for (int n = 0; n < N; n++) {
        const int32_t *s = a->slot + (size_t)n * K;
        const float *w = a->weights + (size_t)n * K;
        int kept = 0;
        double sum = 0.0, h = 0.0;
        for (int j = 0; j < K; j++) {
            kept += s[j] >= 0;
            sum += w[j];
        }
        dropped_tokens += kept == 0;
        for (int j = 0; j < K; j++)
            if (w[j] > 0.0f && sum > 0.0)
                h -= w[j] / sum * log(w[j] / sum);
        hg += h;
        if (a->probs) {
            const float *p = a->probs + (size_t)n * E;
            for (int i = 0; i < E; i++)
                if (p[i] > 0.0f)
                    hr -= p[i] * log((double)p[i]);
        }
    }
    *dropped = dropped_tokens;
    *h_gate = hg;
    *h_router = hr;
}

/* The statistics from st->tokens_per_expert (filled by the caller), kept rows over all
 * experts, and the sums of ccoe_moe_token_sums, over N rows (global under expert parallelism). */
void ccoe_moe_finish_stats(const ccoe_moe *m, const ccoe_moe_acts *a, ccoe_moe_stats *st,
                           int64_t N, int64_t rows, int64_t dropped_tokens, double hg, double hr)
{
    const int E = m->E, K = m->K;
    st->N = (int)N;
    st->E = E;
    st->K = K;
    st->capacity = a->capacity;
    double mean = (double)rows / E, var = 0.0;
    for (int e = 0; e < E; e++) {
        st->routed_per_expert[e] = (int64_t)llround(a->frac[e] * N * K);
        st->mean_gate_weight[e] = a->importance[e] / N;
        double d = (double)st->tokens_per_expert[e] - mean;
        var += d * d;
    }
    st->load_cv = mean > 0.0 ? sqrt(var / E) / mean : 0.0;
    st->dropped_slots = N * K - rows;
    st->drop_rate = (double)st->dropped_slots / ((double)N * K);
    /* the capacity decision drops max(0, routed_e - cap) slots of expert e whatever the
     * priority order, so the training capacity's drops follow from the routed counts */
    const int cap_train = ccoe_moe_capacity(m, (int)N);
    st->train_dropped_slots = 0;
    for (int e = 0; cap_train > 0 && e < E; e++)
        if (st->routed_per_expert[e] > cap_train)
            st->train_dropped_slots += st->routed_per_expert[e] - cap_train;
    st->train_drop_rate = (double)st->train_dropped_slots / ((double)N * K);
    st->dropped_tokens = dropped_tokens;
    st->gate_entropy = hg / N;
    st->router_entropy = hr / N;
}

static void fill_stats(const ccoe_moe *m, const ccoe_moe_acts *a, ccoe_moe_stats *st, int N)
{
    for (int e = 0; e < m->E; e++)
        st->tokens_per_expert[e] = a->offsets[e + 1] - a->offsets[e];
    int64_t dropped_tokens;
    double hg, hr;
    ccoe_moe_token_sums(m, a, N, &dropped_tokens, &hg, &hr);
    ccoe_moe_finish_stats(m, a, st, N, a->rows, dropped_tokens, hg, hr);
}

/* Router (and noise) logits, the noise draws and the gate: acts' logits, noise, ids, weights,
 * kth for rows [0, N). */
void ccoe_moe_route_forward(const ccoe_moe *m, ccoe_moe_acts *a, const float *inp,
                            const float *params, const ccoe_moe_pass *pass, int N)
{
    const int C = m->C, E = m->E;
    const ccoe_gemm *g = m->gemm;
    if (m->off_router != ABSENT && N > 0)
        ccoe_linear_forward_fp32(g, a->logits, inp, params + m->off_router, NULL, N, C, E);
    if (m->off_noise != ABSENT) {
        if (N > 0)
            ccoe_linear_forward_fp32(g, a->noise_logits, inp, params + m->off_noise, NULL, N, C,
                                     E);
        float *noise = a->noise;
        if (pass && pass->train) {
            const uint64_t seed = pass->seed, step = pass->step, layer = (uint64_t)pass->layer;
            const int64_t off = pass->token_offset;
#pragma omp parallel for schedule(static)
            for (int n = 0; n < N; n++)
                for (int i = 0; i < E; i++)
                    noise[(size_t)n * E + i] = ccoe_hash_normal(
                        seed, step, layer, (uint64_t)(off + n) * (uint64_t)E + (uint64_t)i);
        } else {
            memset(noise, 0, (size_t)N * E * sizeof(float));
        }
    }
    assert(!(m->gate->flags & CCOE_GATE_DOMAIN) || (pass && pass->domains && pass->T >= 1));
    assert(!(m->gate->flags & CCOE_GATE_TOKEN) || (pass && (pass->tokens || N == 0)));
    ccoe_gate_args ga = ccoe_moe_gate_args(m, a, pass, N);
    m->gate->forward(a->ids, a->weights, a->kth, &ga);
}

/* The experts on acts' grouped rows (offsets, xin -> fch, fch_act, y). Returns 1 if they ran
 * in parallel. */
int ccoe_moe_experts_forward(const ccoe_moe *m, ccoe_moe_acts *a, const float *params)
{
    int32_t order[CCOE_MOE_MAX_EXPERTS];
    int n_order = 0;
    int par = expert_schedule(m, a->offsets, order, &n_order);
    expert_io io = {m, params, NULL, a, NULL};
    run_stage(&io, STAGE_FC_FWD, order, n_order, par);
    if (m->cfg.expert == CCOE_MOE_GELU)
        ccoe_gelu_forward(a->fch_act, a->fch, (size_t)a->rows * m->F);
    else
        ccoe_swiglu_forward(a->fch_act, a->fch, a->rows, m->F);
    run_stage(&io, STAGE_PROJ_FWD, order, n_order, par);
    return par;
}

double ccoe_moe_forward(const ccoe_moe *m, float *out, ccoe_moe_acts *a, ccoe_moe_stats *stats,
                        const float *inp, const float *params, const ccoe_moe_pass *pass, int N)
{
    assert(N >= 1 && N <= m->maxN);
    const int C = m->C, E = m->E, K = m->K;
    ccoe_moe_stats local;
    ccoe_moe_stats *st = stats ? stats : &local;
    memset(st, 0, sizeof *st);
    double t0 = omp_get_wtime();

    /* 1. router, noise, gate, aux values */
    ccoe_moe_route_forward(m, a, inp, params, pass, N);
    ccoe_gate_args ga = ccoe_moe_gate_args(m, a, pass, N);
    double z = ccoe_moe_aux_sums(m, a, &ga, N);
    ccoe_moe_aux_values(m, a, st, z, N);
    a->N_total = N;
    double t1 = omp_get_wtime();

    /* 2. dispatch: plan + gather */
    a->N = N;
    a->eval = pass && !pass->train;
    a->capacity = ccoe_moe_capacity_of(m, N, a->eval);
    a->rows = ccoe_moe_plan(a->slot, a->row_token, a->offsets, a->cursor, a->ids, N, E, K,
                            a->capacity);
    a->rows_home = a->rows;
    assert(a->rows <= m->max_rows);
    ccoe_moe_gather(a->xin, inp, a->row_token, a->rows, C);
    double t2 = omp_get_wtime();

    /* 3. experts: fc on each group, the activation on all rows at once, proj on each group */
    st->expert_parallel = ccoe_moe_experts_forward(m, a, params);
    double t3 = omp_get_wtime();

    /* 4. combine */
    ccoe_moe_combine(out, a->y, a->slot, a->weights, N, K, C);
    double t4 = omp_get_wtime();

    if (stats)
        fill_stats(m, a, st, N);
    st->N_local = N;
    st->t_fwd_route = t1 - t0;
    st->t_fwd_dispatch = t2 - t1;
    st->t_fwd_experts = t3 - t2;
    st->t_fwd_combine = t4 - t3;
    return st->loss_aux;
}

/* ---- backward ---- */

/* dweights (N, K) = <dout_n, y[slot]>, dy[slot] = weight * dout_n (each row of y/dy belongs to
 * exactly one kept slot). */
void ccoe_moe_combine_backward(float *dweights, float *dy, const float *y, const ccoe_moe_acts *a,
                               const float *dout, int N, int K, int C)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict d = dout + (size_t)n * C;
        for (int j = 0; j < K; j++) {
            size_t at = (size_t)n * K + j;
            int32_t r = a->slot[at];
            if (r < 0) {
                dweights[at] = 0.0f;
                continue;
            }
            const float *restrict yr = y + (size_t)r * C;
            float *restrict dyr = dy + (size_t)r * C;
            float w = a->weights[at], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < C; c++) {
                dot += d[c] * yr[c];
                dyr[c] = w * d[c];
            }
            dweights[at] = dot;
        }
    }
}

/* The experts' backward on acts' grouped rows: proj backward per group, the activation
 * backward on all rows, fc backward per group; input gradients (s->dxin) overwrite (beta 0),
 * parameter gradients accumulate. */
void ccoe_moe_experts_backward(const ccoe_moe *m, float *grads, ccoe_moe_scratch *s,
                               const ccoe_moe_acts *a, const float *params)
{
    const int F = m->F, F2 = m->F2;
    int32_t order[CCOE_MOE_MAX_EXPERTS];
    int n_order = 0;
    int par = expert_schedule(m, a->offsets, order, &n_order);
    expert_io io = {m, params, grads, a, s};
    run_stage(&io, STAGE_PROJ_BWD, order, n_order, par);
    {
        float *dfch = s->dfch;
#pragma omp parallel for schedule(static)
        for (int r = 0; r < a->rows; r++)
            memset(dfch + (size_t)r * F2, 0, (size_t)F2 * sizeof(float));
    }
    if (m->cfg.expert == CCOE_MOE_GELU)
        ccoe_gelu_backward(s->dfch, a->fch, s->dfch_act, (size_t)a->rows * F);
    else
        ccoe_swiglu_backward(s->dfch, a->fch, s->dfch_act, a->rows, F);
    run_stage(&io, STAGE_FC_BWD, order, n_order, par);
}

/* dinp (N, C) += sum over kept slots (in order j = 0..K-1) of dx[slot]. */
void ccoe_moe_scatter_backward(float *dinp, const float *dx, const int32_t *slot, int N, int K,
                               int C)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *restrict o = dinp + (size_t)n * C;
        for (int j = 0; j < K; j++) {
            int32_t r = slot[(size_t)n * K + j];
            if (r < 0)
                continue;
            const float *restrict d = dx + (size_t)r * C;
            for (int c = 0; c < C; c++)
                o[c] += d[c];
        }
    }
}

/* Gate and router backward with the aux-loss gradients, from s->dweights, for this call's N
 * rows of an objective whose aux losses are means over Ntot rows. */
void ccoe_moe_router_backward(const ccoe_moe *m, float *dinp, float *grads, ccoe_moe_scratch *s,
                              const ccoe_moe_acts *a, const float *inp, const float *params,
                              float aux_scale, int N, int64_t Ntot)
{
    if (m->off_router == ABSENT)
        return;
    const int C = m->C, E = m->E, K = m->K;
    const ccoe_gemm *g = m->gemm;
    const double sc = aux_scale;
    if (m->cfg.w_importance != 0.0) {
        double dimp[CCOE_MOE_MAX_EXPERTS];
        cv2_grad(dimp, a->importance, E, sc * m->cfg.w_importance);
        for (size_t t = 0; t < (size_t)N * K; t++)
            s->dweights[t] += (float)dimp[a->ids[t]];
    }
    ccoe_gate_args ga = ccoe_moe_gate_args(m, a, NULL, N);
    memset(s->dlogits, 0, (size_t)N * E * sizeof(float));
    if (s->dnoise_logits)
        memset(s->dnoise_logits, 0, (size_t)N * E * sizeof(float));
    m->gate->backward(s->dlogits, s->dnoise_logits, s->dweights, a->ids, a->weights, &ga);
    if (m->cfg.w_switch != 0.0 || m->cfg.w_z != 0.0) {
        /* switch: dP_i = w E f_i / N for every token's softmax; z: w 2 lse p / N */
        float csw[CCOE_MOE_MAX_EXPERTS];
        for (int i = 0; i < E; i++)
            csw[i] = (float)(sc * m->cfg.w_switch * E * a->frac[i] / Ntot);
        const float cz = (float)(sc * m->cfg.w_z * 2.0 / Ntot);
        float *dlogits = s->dlogits;
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *p = a->probs + (size_t)n * E;
            float *dl = dlogits + (size_t)n * E;
            float dot = 0.0f;
            for (int i = 0; i < E; i++)
                dot += p[i] * csw[i];
            float zl = cz * a->lse[n];
            for (int i = 0; i < E; i++)
                dl[i] += p[i] * (csw[i] - dot + zl);
        }
    }
    if (m->cfg.w_load != 0.0) {
        double dload[CCOE_MOE_MAX_EXPERTS];
        cv2_grad(dload, a->load, E, sc * m->cfg.w_load);
        m->gate->load_backward(s->dlogits, s->dnoise_logits, dload, a->ids, a->kth, &ga);
    }
    if (N == 0)
        return;
    ccoe_linear_backward_fp32(g, dinp, grads + m->off_router, NULL, s->dlogits, inp,
                              params + m->off_router, N, C, E);
    if (m->off_noise != ABSENT)
        ccoe_linear_backward_fp32(g, dinp, grads + m->off_noise, NULL, s->dnoise_logits, inp,
                                  params + m->off_noise, N, C, E);
}

/* The backward phase times of st from the clock at the start (t0) and at the end of each phase:
 * combine, experts, scatter, gate and router. */
void ccoe_moe_backward_times(ccoe_moe_stats *st, double t0, double t1, double t2, double t3,
                             double t4)
{
    st->t_bwd_combine = t1 - t0;
    st->t_bwd_experts = t2 - t1;
    st->t_bwd_scatter = t3 - t2;
    st->t_bwd_route = t4 - t3;
}

void ccoe_moe_backward(const ccoe_moe *m, float *dinp, float *grads, ccoe_moe_stats *stats,
                       ccoe_moe_scratch *s, const float *dout, const ccoe_moe_acts *a,
                       const float *inp, const float *params, float aux_scale, int N)
{
    assert(N == a->N);
    const int C = m->C, K = m->K;
    double t0 = omp_get_wtime();

    /* 1. combine: dweights = <dout_n, y_slot>, dy_slot = weight * dout_n */
    ccoe_moe_combine_backward(s->dweights, s->dy, a->y, a, dout, N, K, C);
    double t1 = omp_get_wtime();

    /* 2. experts */
    ccoe_moe_experts_backward(m, grads, s, a, params);
    double t2 = omp_get_wtime();

    /* 3. scatter the input gradients back to their tokens (slots in order) */
    ccoe_moe_scatter_backward(dinp, s->dxin, a->slot, N, K, C);
    double t3 = omp_get_wtime();

    /* 4. gate and router, with the aux-loss gradients */
    ccoe_moe_router_backward(m, dinp, grads, s, a, inp, params, aux_scale, N, N);
    double t4 = omp_get_wtime();
    if (stats)
        ccoe_moe_backward_times(stats, t0, t1, t2, t3, t4);
}

/* ---- statistics as JSON ---- */

typedef struct jbuf {
    char *p;
    size_t cap, len;
} jbuf;

static void jput(jbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jput(jbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(b->len < b->cap ? b->p + b->len : NULL, b->len < b->cap ? b->cap - b->len : 0,
                      fmt, ap);
    va_end(ap);
    if (w > 0)
        b->len += (size_t)w;
}

int ccoe_moe_stats_json(const ccoe_moe_stats *s, char *buf, size_t cap)
{
    jbuf b = {buf, cap, 0};
    if (cap)
        buf[0] = '\0';
    jput(&b, "{\"N\":%d,\"E\":%d,\"K\":%d,\"capacity\":%d,\"tokens_per_expert\":[", s->N, s->E,
         s->K, s->capacity);
    for (int e = 0; e < s->E; e++)
        jput(&b, "%s%lld", e ? "," : "", (long long)s->tokens_per_expert[e]);
    jput(&b, "],\"routed_per_expert\":[");
    for (int e = 0; e < s->E; e++)
        jput(&b, "%s%lld", e ? "," : "", (long long)s->routed_per_expert[e]);
    jput(&b, "],\"mean_gate_weight\":[");
    for (int e = 0; e < s->E; e++)
        jput(&b, "%s%.6g", e ? "," : "", s->mean_gate_weight[e]);
    jput(&b,
         "],\"dropped_slots\":%lld,\"dropped_tokens\":%lld,\"drop_rate\":%.6g,"
         "\"gate_entropy\":%.6g,\"router_entropy\":%.6g,\"load_cv\":%.6g,"
         "\"cv2_importance\":%.6g,\"cv2_load\":%.6g,\"switch_value\":%.6g,\"z_value\":%.6g,"
         "\"loss_importance\":%.6g,\"loss_load\":%.6g,\"loss_switch\":%.6g,\"loss_z\":%.6g,"
         "\"loss_aux\":%.6g,\"train_drop_rate\":%.6g",
         (long long)s->dropped_slots, (long long)s->dropped_tokens, s->drop_rate,
         s->gate_entropy, s->router_entropy, s->load_cv, s->cv2_importance, s->cv2_load,
         s->switch_value, s->z_value, s->loss_importance, s->loss_load, s->loss_switch,
         s->loss_z, s->loss_aux, s->train_drop_rate);
    if (s->ep_bytes_meta > 0) /* expert parallelism: this rank's share and its exchanges */
        jput(&b,
             ",\"N_local\":%d,\"ep_bytes_fwd\":%lld,\"ep_bytes_bwd\":%lld,"
             "\"ep_bytes_meta\":%lld,\"ep_exchange_ms\":%.3f",
             s->N_local, (long long)s->ep_bytes_fwd, (long long)s->ep_bytes_bwd,
             (long long)s->ep_bytes_meta, 1e3 * (s->t_fwd_exchange + s->t_bwd_exchange));
    jput(&b, "}");
    return (int)b.len;
}
