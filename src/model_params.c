/* model_params.c - the parameter layout of the model (one block, tensors in a fixed order,
 * each CCoE expert contiguous; model.h), the views of blocks and heads into the parameter and
 * gradient blocks, the block instances and paths, initialisation, copying the base into an
 * expert, and zeroing the gradients.
 */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model_impl.h"
#include "rng.h"

/* ---- parameter layout ---- */

static void add_param(ccoe_model *m, size_t *off, const char *name, int block, int expert,
                      int decay, int ndim, int64_t d0, int64_t d1)
{
    if (m->n_params >= CCOE_MAX_PARAMS) { /* counted; ccoe_model_init reports it */
        m->n_params++;
        return;
    }
    ccoe_param *p = &m->params[m->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 0;
    p->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
    p->offset = *off;
    p->decay = decay;
    p->block = block;
    p->expert = expert;
    /* keep every tensor 64-byte aligned */
    *off += (p->numel + 15) & ~(size_t)15;
}

/* The dense FFN of a block under prefix ("blocks.3." or "experts.arith.blocks.0."); inst is
 * the block instance, or -1 for an Eqs. 6-7 expert FFN (not an instance of its own). */
static void add_mlp(ccoe_model *m, size_t *off, const char *prefix, int inst, int expert)
{
    const ccoe_model_config *c = &m->cfg;
    const int C = c->n_embd, F = c->ffn_hidden;
    static const char *const suffix[4] = {"mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight",
                                          "mlp.proj.bias"};
    const int64_t rows[4] = {m->F2, m->F2, C, C};
    for (int t = 0; t < 4; t++) {
        const int bias = t & 1;
        if (bias && !c->bias)
            continue;
        char name[CCOE_PARAM_NAME];
        if (snprintf(name, sizeof name, "%s%s", prefix, suffix[t]) >= (int)sizeof name)
            name[0] = '\0'; /* cannot happen: expert names are <= 32 chars */
        add_param(m, off, name, inst, expert, !bias, bias ? 1 : 2, rows[t], t == 0 ? C : F);
    }
}

/* The tensors of one block instance under the name prefix ("blocks.3." or
 * "experts.arith.blocks.0."). */
static void add_block(ccoe_model *m, size_t *off, const char *prefix, int inst, int expert)
{
    const ccoe_model_config *c = &m->cfg;
    const int C = c->n_embd;
    const int ln_bias = c->norm == CCOE_NORM_LAYERNORM;
    char name[CCOE_PARAM_NAME];
#define P(suffix, decay, ndim, d0, d1)                                  \
    do {                                                                \
        snprintf(name, sizeof name, "%s%s", prefix, suffix);            \
        add_param(m, off, name, inst, expert, decay, ndim, d0, d1);     \
    } while (0)
    P("ln1.weight", 0, 1, C, 0);
    if (ln_bias)
        P("ln1.bias", 0, 1, C, 0);
    /* rows [q (H hd) | k (Hkv hd) | v (Hkv hd)], each head's rows contiguous */
    const int W = (c->n_head + 2 * ccoe_model_kv_heads(c)) * (C / c->n_head);
    P("attn.qkv.weight", 1, 2, W, C);
    if (c->bias || c->qkv_bias)
        P("attn.qkv.bias", 0, 1, W, 0);
    P("attn.proj.weight", 1, 2, C, C);
    if (c->bias)
        P("attn.proj.bias", 0, 1, C, 0);
    P("ln2.weight", 0, 1, C, 0);
    if (ln_bias)
        P("ln2.bias", 0, 1, C, 0);
    if (m->moe_of && m->moe_of[inst] >= 0) {
        /* the MoE layer's tensors in its own order: offsets relative to the region match */
        const int i = m->moe_of[inst];
        m->moe_offset[i] = *off;
        for (int t = 0; t < m->moe.n_tensors; t++) {
            ccoe_moe_tensor mt;
            ccoe_moe_tensor_at(&m->moe, t, &mt);
            const size_t at = *off;
            snprintf(name, sizeof name, "%smoe.%s", prefix, mt.name);
            add_param(m, off, name, inst, expert, mt.decay, mt.ndim, mt.shape[0], mt.shape[1]);
            assert(m->n_params > CCOE_MAX_PARAMS || at == m->moe_offset[i] + mt.offset);
            (void)at;
        }
        assert(m->n_params > CCOE_MAX_PARAMS || *off == m->moe_offset[i] + m->moe.num_params);
        return;
    }
#undef P
    add_mlp(m, off, prefix, inst, expert);
}

/* Final norm (pre-LN) and untied LM head under prefix ("" or "experts.arith."). A tied head
 * has no tensor of its own. */
static void add_head(ccoe_model *m, size_t *off, const char *prefix, int expert, int untied)
{
    const ccoe_model_config *c = &m->cfg;
    char name[CCOE_PARAM_NAME];
    if (c->block == CCOE_BLOCK_PRE_LN) {
        snprintf(name, sizeof name, "%slnf.weight", prefix);
        add_param(m, off, name, -1, expert, 0, 1, c->n_embd, 0);
        if (c->norm == CCOE_NORM_LAYERNORM) {
            snprintf(name, sizeof name, "%slnf.bias", prefix);
            add_param(m, off, name, -1, expert, 0, 1, c->n_embd, 0);
        }
    }
    if (untied) {
        snprintf(name, sizeof name, "%slm_head.weight", prefix);
        add_param(m, off, name, -1, expert, 1, 2, c->vocab_size, c->n_embd);
    }
}

void model_build_layout(ccoe_model *m)
{
    const ccoe_model_config *c = &m->cfg;
    const ccoe_gating *gt = &m->gating;
    const int L = c->n_layer;
    char prefix[CCOE_PARAM_NAME];
    size_t off = 0;
    m->n_params = 0;
    add_param(m, &off, "wte", -1, -1, 1, 2, c->vocab_size, c->n_embd);
    if (c->pos == CCOE_POS_LEARNED)
        add_param(m, &off, "wpe", -1, -1, 1, 2, c->seq_len, c->n_embd);
    for (int l = 0; l < L; l++) {
        snprintf(prefix, sizeof prefix, "blocks.%d.", l);
        add_block(m, &off, prefix, l, -1);
    }
    add_head(m, &off, "", -1, !c->tied_head);
    int inst = L;
    for (int e = 0; e < gt->n_experts; e++) {
        m->expert_begin[e] = off;
        for (int j = 0; j < gt->experts[e].layers; j++) {
            snprintf(prefix, sizeof prefix, "experts.%s.blocks.%d.", gt->experts[e].name, j);
            if (model_experts_are_ffns(m))
                add_mlp(m, &off, prefix, -1, e);
            else
                add_block(m, &off, prefix, inst++, e);
        }
        if (gt->own_head) {
            snprintf(prefix, sizeof prefix, "experts.%s.", gt->experts[e].name);
            /* an own head is untied: the expert's LM head is its own matrix */
            add_head(m, &off, prefix, e, 1);
        }
        m->expert_end[e] = off;
    }
    m->num_params = off;
}

const ccoe_param *ccoe_model_find_param(const ccoe_model *m, const char *name)
{
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return &m->params[i];
    return NULL;
}

float *model_tensor_at(const ccoe_model *m, float *base, const char *prefix, const char *suffix)
{
    char name[CCOE_PARAM_NAME];
    int n = snprintf(name, sizeof name, "%s%s", prefix, suffix);
    const ccoe_param *p = n < (int)sizeof name ? ccoe_model_find_param(m, name) : NULL;
    return p ? base + p->offset : NULL;
}

static void block_view(const ccoe_model *m, float *base, const char *prefix, ccoe_block_view *b)
{
    b->ln1_w = model_tensor_at(m, base, prefix, "ln1.weight");
    b->ln1_b = model_tensor_at(m, base, prefix, "ln1.bias");
    b->qkv_w = model_tensor_at(m, base, prefix, "attn.qkv.weight");
    b->qkv_b = model_tensor_at(m, base, prefix, "attn.qkv.bias");
    b->proj_w = model_tensor_at(m, base, prefix, "attn.proj.weight");
    b->proj_b = model_tensor_at(m, base, prefix, "attn.proj.bias");
    b->ln2_w = model_tensor_at(m, base, prefix, "ln2.weight");
    b->ln2_b = model_tensor_at(m, base, prefix, "ln2.bias");
    b->fc_w = model_tensor_at(m, base, prefix, "mlp.fc.weight");
    b->fc_b = model_tensor_at(m, base, prefix, "mlp.fc.bias");
    b->fcproj_w = model_tensor_at(m, base, prefix, "mlp.proj.weight");
    b->fcproj_b = model_tensor_at(m, base, prefix, "mlp.proj.bias");
}

static void head_view(const ccoe_model *m, float *base, const char *prefix, int untied,
                      ccoe_head_view *h)
{
    h->lnf_w = model_tensor_at(m, base, prefix, "lnf.weight");
    h->lnf_b = model_tensor_at(m, base, prefix, "lnf.bias");
    h->lm_head = untied ? model_tensor_at(m, base, prefix, "lm_head.weight")
                        : model_tensor_at(m, base, "", "wte");
}

void model_make_views(ccoe_model *m, float *base, ccoe_block_view *blocks, ccoe_head_view *heads,
                       ccoe_block_view *xffn)
{
    const ccoe_gating *gt = &m->gating;
    const int ffn_form = model_experts_are_ffns(m);
    char prefix[CCOE_PARAM_NAME];
    for (int l = 0; l < m->cfg.n_layer; l++) {
        snprintf(prefix, sizeof prefix, "blocks.%d.", l);
        block_view(m, base, prefix, &blocks[l]);
    }
    head_view(m, base, "", !m->cfg.tied_head, &heads[0]);
    int inst = m->cfg.n_layer;
    for (int e = 0; e < gt->n_experts; e++) {
        for (int j = 0; j < gt->experts[e].layers; j++) {
            snprintf(prefix, sizeof prefix, "experts.%s.blocks.%d.", gt->experts[e].name, j);
            block_view(m, base, prefix, ffn_form ? &xffn[m->xffn_first[e] + j] : &blocks[inst++]);
        }
        if (gt->own_head) {
            snprintf(prefix, sizeof prefix, "experts.%s.", gt->experts[e].name);
            head_view(m, base, prefix, 1, &heads[1 + e]);
        }
    }
}

/* Instances, their inputs, and the paths. */
void model_build_paths(ccoe_model *m)
{
    const ccoe_gating *gt = &m->gating;
    const int L = m->cfg.n_layer;
    for (int l = 0; l < L; l++)
        m->inst_input[l] = l - 1;
    m->paths[0] = (ccoe_path){.n_base = L, .first_inst = L, .n_own = 0, .head = 0, .ffn_expert = -1};
    int inst = L;
    for (int e = 0; e < gt->n_experts; e++) {
        const ccoe_expert_spec *x = &gt->experts[e];
        if (model_experts_are_ffns(m)) {
            m->paths[1 + e] = (ccoe_path){.n_base = L,
                                          .first_inst = L,
                                          .n_own = 0,
                                          .head = gt->own_head ? 1 + e : 0,
                                          .ffn_expert = e,
                                          .ffn_from = x->branch};
            continue;
        }
        for (int j = 0; j < x->layers; j++, inst++)
            m->inst_input[inst] = j == 0 ? x->branch - 1 : inst - 1;
        m->paths[1 + e] = (ccoe_path){.n_base = x->branch,
                                      .first_inst = inst - x->layers,
                                      .n_own = x->layers,
                                      .head = gt->own_head ? 1 + e : 0,
                                      .ffn_expert = -1};
    }
    m->n_paths = 1 + gt->n_experts;
    m->n_heads = gt->own_head ? 1 + gt->n_experts : 1;
}

/* The float range [*begin, *end) of block instance k's parameters, padding included. */
void model_inst_range(const ccoe_model *m, int k, size_t *begin, size_t *end)
{
    *begin = m->num_params;
    *end = 0;
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        if (p->block != k)
            continue;
        size_t e = p->offset + ((p->numel + 15) & ~(size_t)15);
        *begin = p->offset < *begin ? p->offset : *begin;
        *end = e > *end ? e : *end;
    }
}

void ccoe_model_init_weights(ccoe_model *m, uint64_t seed, ccoe_expert_init init)
{
    ccoe_rng r;
    ccoe_rng_seed(&r, seed);
    const float std = (float)m->cfg.init_std;
    const float proj_std = std / sqrtf(2.0f * (float)m->cfg.n_layer);
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        float *x = m->param_block + p->offset;
        if (p->block >= 0 && m->moe_of[p->block] >= 0 && strstr(p->name, ".moe."))
            continue; /* MoE regions: below */
        const char *dot = strrchr(p->name, '.');
        /* a norm weight: the component before ".weight" starts with "ln" */
        int is_norm_w = 0;
        if (dot && strcmp(dot, ".weight") == 0) {
            const char *q = dot;
            while (q > p->name && q[-1] != '.')
                q--;
            is_norm_w = strncmp(q, "ln", 2) == 0;
        }
        if (is_norm_w) {
            for (size_t j = 0; j < p->numel; j++)
                x[j] = 1.0f;
        } else if (p->ndim == 1) {
            memset(x, 0, p->numel * sizeof(float));
        } else {
            int is_resid =
                strstr(p->name, "attn.proj.weight") || strstr(p->name, "mlp.proj.weight");
            float s = is_resid ? proj_std : std;
            for (size_t j = 0; j < p->numel; j++)
                x[j] = s * ccoe_rng_normal(&r);
        }
    }
    for (int i = 0; i < m->n_moe; i++)
        ccoe_moe_init_weights(&m->moe, m->param_block + m->moe_offset[i],
                              ccoe_hash4(seed, 0x6d6f65ULL, (uint64_t)m->moe_layer[i], 0), std,
                              proj_std);
    if (init == CCOE_INIT_COPY)
        for (int e = 0; e < m->gating.n_experts; e++)
            ccoe_model_expert_copy_base(m, e);
}

static void copy_tensor(ccoe_model *m, const char *dst, const char *src)
{
    const ccoe_param *d = ccoe_model_find_param(m, dst);
    const ccoe_param *s = ccoe_model_find_param(m, src);
    if (!d)
        return;
    if (!s) {
        /* tied base head copied into an own head: the source is wte */
        if (strstr(dst, "lm_head.weight"))
            s = ccoe_model_find_param(m, "wte");
        if (!s)
            return;
    }
    assert(d->numel == s->numel);
    memcpy(m->param_block + d->offset, m->param_block + s->offset, d->numel * sizeof(float));
}

void ccoe_model_expert_copy_base(ccoe_model *m, int e)
{
    const ccoe_expert_spec *x = &m->gating.experts[e];
    const int L = m->cfg.n_layer;
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        if (p->expert != e)
            continue;
        char src[CCOE_PARAM_NAME];
        const char *rest = p->name + strlen("experts.") + strlen(x->name) + 1;
        int j;
        char suffix[CCOE_PARAM_NAME];
        if (sscanf(rest, "blocks.%d.%95s", &j, suffix) == 2) {
            /* own block j sits at base position branch + j (clamped to the base depth for
             * Eq. 5 experts longer than what follows their prefix) */
            int l = x->branch + j;
            if (l > L - 1)
                l = L - 1;
            if (snprintf(src, sizeof src, "blocks.%d.%s", l, suffix) >= (int)sizeof src)
                continue;
        } else {
            snprintf(src, sizeof src, "%.*s", (int)sizeof src - 1, rest);
        }
        copy_tensor(m, p->name, src);
    }
}

void ccoe_model_zero_grad(ccoe_model *m)
{
    /* threaded: a single thread's memset does not saturate memory bandwidth (124M: 0.5 GB);
     * one chunk without a parallel region (libgomp allocates every one-thread team) */
    const size_t n = m->num_params, chunk = (size_t)1 << 18;
    const long long nchunks = (long long)((n + chunk - 1) / chunk);
    if (nchunks <= 1) {
        memset(m->grad_block, 0, n * sizeof(float));
        return;
    }
#pragma omp parallel for schedule(static)
    for (long long i = 0; i < nchunks; i++) {
        size_t lo = (size_t)i * chunk, len = n - lo < chunk ? n - lo : chunk;
        memset(m->grad_block + lo, 0, len * sizeof(float));
    }
}
