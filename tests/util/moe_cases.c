/* moe_cases.c - shared MoE layer test cases (see moe_cases.h). */
#include "moe_cases.h"

#include <stdio.h>
#include <string.h>

void tu_moe_case_config(const tu_moe_case *c, ccoe_moe_config *cfg)
{
    ccoe_moe_defaults(cfg);
    snprintf(cfg->gate, sizeof cfg->gate, "%s", c->gate);
    cfg->n_experts = c->E;
    cfg->top_k = c->K;
    cfg->ffn_hidden = c->F;
    cfg->expert = c->swiglu ? CCOE_MOE_SWIGLU : CCOE_MOE_GELU;
    cfg->bias = c->bias;
    cfg->renormalize = c->renorm;
    cfg->capacity_factor = c->cf;
    /* evaluation passes keep the case's capacity unless the case asks for dropless ones */
    cfg->eval_capacity_factor = c->train < 0 ? 0.0 : c->cf;
    cfg->w_importance = c->w_imp;
    cfg->w_load = c->w_load;
    cfg->w_switch = c->w_switch;
    cfg->w_z = c->w_z;
    cfg->noise_eps = c->noise_eps;
    cfg->n_shared = c->n_shared;
    cfg->w_seq = c->w_seq;
    const ccoe_gate_ops *g = ccoe_gate_find(c->gate);
    if (g && (g->flags & CCOE_GATE_DOMAIN)) {
        cfg->n_domains = 4;
        for (int d = 0; d < 4; d++)
            cfg->domain_expert[d] = (d * 2 + 1) % c->E; /* d -> 1, 3, 0, 2 for E = 5 */
    }
}

int tu_gate_top_k(const ccoe_gate_ops *g, int E, int K)
{
    if (g->flags & (CCOE_GATE_ALL_EXPERTS | CCOE_GATE_EXPERT_CHOICE))
        return E; /* expert choice: E slots per token, the experts choose among them */
    if (g->flags & CCOE_GATE_ONE_EXPERT)
        return 1;
    return K < E ? K : E;
}

int tu_moe_registry_cases(tu_moe_case *out, int cap, int N, int C, int F)
{
    int n = 0;
    for (int i = 0; i < ccoe_gate_count(); i++) {
        const ccoe_gate_ops *g = ccoe_gate_at(i);
        const int E = 5, K = tu_gate_top_k(g, E, 2);
        const int router = (g->flags & CCOE_GATE_ROUTER) != 0;
        const int noisy = (g->flags & CCOE_GATE_NOISE) != 0;
        tu_moe_case base = {.gate = g->name, .N = N, .C = C, .E = E, .K = K, .F = F,
                            .swiglu = 0, .bias = 1, .renorm = 1, .cf = 1.25, .train = 1};
        if (g->flags & CCOE_GATE_DROPLESS)
            base.cf = 0.0; /* a rule-routed gate has no capacity */
        if (router) {
            base.w_imp = 0.1;
            base.w_switch = 0.05;
            base.w_z = 0.01;
        }
        if (g->flags & CCOE_GATE_SCORE_BIAS)
            base.w_seq = 0.1; /* lossfree: its sequence-wise balance loss too */
        if (noisy) {
            base.noise_eps = 0.01;
            base.w_load = K < E ? 0.1 : 0.0; /* the load estimator needs K < E */
        }
        tu_moe_case v[6];
        int nv = 0;
        v[nv++] = base;
        v[nv] = base; /* dropless, SwiGLU, no biases */
        v[nv].cf = 0.0;
        v[nv].swiglu = 1;
        v[nv++].bias = 0;
        if (g->flags & CCOE_GATE_RENORM_OPT) {
            v[nv] = base;
            v[nv++].renorm = 0;
        }
        if (noisy) {
            v[nv] = base; /* evaluation: no noise drawn */
            v[nv++].train = 0;
        }
        if (base.cf > 0.0) {
            v[nv] = base; /* evaluation under a training capacity: dropless by default */
            v[nv++].train = -1;
        }
        v[nv] = base; /* shared experts (DeepSeekMoE) beside the routed ones */
        v[nv++].n_shared = 2;
        for (int j = 0; j < nv; j++) {
            if (n >= cap) {
                fprintf(stderr, "tu_moe_registry_cases: more than %d cases: raise the cap\n",
                        cap);
                return -1;
            }
            ccoe_moe_config cfg;
            ccoe_error err;
            ccoe_error_clear(&err);
            tu_moe_case_config(&v[j], &cfg);
            if (cfg.ffn_hidden < 1)
                cfg.ffn_hidden = 1; /* F = 0: the caller sizes the experts */
            if (ccoe_moe_validate(&cfg, &err) != CCOE_OK) {
                fprintf(stderr,
                        "gate %s: a case built from its flags is rejected (%s); describe the "
                        "gate's rules with flags of variants/gate.h or extend moe_cases.c\n",
                        g->name, err.msg);
                return -1;
            }
            out[n++] = v[j];
        }
    }
    return n;
}

void tu_gate_skip(const ccoe_gate_ops *g, const char *mode, const char *why)
{
    fprintf(stderr, "skip gate %s in %s: %s\n", g->name, mode, why);
}
