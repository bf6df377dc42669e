/* model_cost.c - FLOP and parameter accounting of the model: the training FLOPs of a plain
 * stack, of the last forward and backward (with CCoE paths and MoE blocks), and each path's
 * forward FLOPs and parameters.
 */
#include <string.h>

#include "model_impl.h"

double ccoe_model_train_flops_per_token(const ccoe_model_config *c, int n_blocks, int T)
{
    const double C = c->n_embd, V = c->vocab_size, L = n_blocks, F = c->ffn_hidden;
    const double F2 = c->ffn == CCOE_FFN_SWIGLU ? 2.0 * F : F;
    /* q (C) and k, v (Hkv hd each) rows of the fused projection */
    const double Wqkv = C + 2.0 * ccoe_model_kv_heads(c) * (c->n_embd / c->n_head);
    double matmul_params = L * (Wqkv * C + C * C + F2 * C + C * F) + V * C;
    return 6.0 * matmul_params + 12.0 * L * C * T;
}

double ccoe_model_last_flops(const ccoe_model *m)
{
    const ccoe_model_config *c = &m->cfg;
    const double C = c->n_embd, V = c->vocab_size, T = m->last_T, F = c->ffn_hidden;
    const double Wqkv = m->W; /* rows of the fused q|k|v projection */
    const double Pb = Wqkv * C + C * C + (double)m->F2 * C + C * F; /* matmul params/block */
    /* an MoE block instead: the router matrices, K routed and every shared expert per token */
    double Pmoe = Pb;
    if (m->n_moe > 0) {
        const ccoe_moe *x = &m->moe;
        const double routers = (x->off_router != (size_t)-1) + (x->off_noise != (size_t)-1);
        Pmoe = Wqkv * C + C * C + routers * x->E * C +
               (x->K + x->cfg.n_shared) * ((double)x->F2 * C + C * x->F);
    }
    double total = 0.0;
    for (int gi = 0; gi < m->n_groups; gi++) {
        const ccoe_path *pa = &m->paths[m->group_path[gi]];
        const double tokens = (double)(m->group_r1[gi] - m->group_r0[gi]) * T;
        const double blocks = pa->n_base + pa->n_own;
        double base_moe = 0.0; /* MoE blocks among this path's base blocks */
        for (int l = 0; l < pa->n_base; l++)
            base_moe += m->moe_of[l] >= 0;
        double fwd = 2.0 * (blocks * Pb + base_moe * (Pmoe - Pb) + V * C) + 4.0 * blocks * C * T;
        /* isolated training differentiates the head and the expert's own blocks (Eqs. 6-7: the
         * blocks from its first FFN up) */
        const double depth = pa->ffn_expert >= 0 ? c->n_layer - pa->ffn_from : pa->n_own;
        double bwd;
        if (m->train_path >= 0)
            bwd = m->group_path[gi] == m->train_path
                      ? 2.0 * (2.0 * (depth * Pb + V * C) + 4.0 * depth * C * T)
                      : 0.0;
        else
            bwd = 2.0 * fwd;
        total += tokens * (fwd + bwd);
    }
    return total;
}

/* Whether parameter p is used by a token on `path` (its blocks, FFNs and head). */
static int param_on_path(const ccoe_model *m, const ccoe_param *p, int path)
{
    const ccoe_path *pa = &m->paths[path];
    if (p->block >= 0) {
        if (p->block >= pa->first_inst && p->block < pa->first_inst + pa->n_own)
            return 1;
        if (p->block >= pa->n_base)
            return 0;
        /* Eqs. 6-7: the base FFN of a block where the path's expert FFN takes over */
        return !(pa->ffn_expert >= 0 && p->block >= pa->ffn_from && strstr(p->name, ".mlp."));
    }
    if (p->expert >= 0) /* an expert's head, or (Eqs. 6-7) its FFNs */
        return pa->ffn_expert == p->expert || (pa->head > 0 && pa->head == 1 + p->expert);
    return strcmp(p->name, "wte") == 0 || strcmp(p->name, "wpe") == 0 || pa->head == 0;
}

double ccoe_model_path_forward_flops(const ccoe_model *m, int path, int T)
{
    const ccoe_path *pa = &m->paths[path];
    const double C = m->cfg.n_embd, V = m->cfg.vocab_size;
    double matmul = V * C; /* the LM head */
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        /* block matrices (embeddings are lookups; heads are counted above) */
        if (p->ndim != 2 || strcmp(p->name, "wte") == 0 || strcmp(p->name, "wpe") == 0 ||
            strstr(p->name, "lm_head.weight") || !param_on_path(m, p, path))
            continue;
        double n = (double)p->numel;
        /* an MoE expert matrix is used by k of the E experts' tokens: count k/E of them */
        if (strstr(p->name, ".moe.experts.") && m->n_moe > 0)
            n *= (double)m->moe.K / (double)m->moe.E;
        matmul += n;
    }
    return 2.0 * matmul + 4.0 * (pa->n_base + pa->n_own) * C * T;
}

size_t ccoe_model_path_params(const ccoe_model *m, int path)
{
    size_t n = 0;
    for (int i = 0; i < m->n_params; i++)
        if (param_on_path(m, &m->params[i], path))
            n += m->params[i].numel;
    return n;
}
