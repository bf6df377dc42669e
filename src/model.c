/* model.c - parameter layout and the forward/backward composition of the transformer.
 *
 * The per-layer math lives in kernels.c; this file only wires layers together, carves memory
 * and initialises weights. Derivations are in papers/transformer.md.
 */
#include "model.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "rng.h"

/* ---- parameter layout ---- */

static void add_param(ccoe_model *m, size_t *off, const char *name, int block, int decay,
                      int ndim, int64_t d0, int64_t d1)
{
    assert(m->n_params < CCOE_MAX_PARAMS);
    ccoe_param *p = &m->params[m->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 0;
    p->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
    p->offset = *off;
    p->decay = decay;
    p->block = block;
    /* keep every tensor 64-byte aligned */
    *off += (p->numel + 15) & ~(size_t)15;
}

static void build_layout(ccoe_model *m)
{
    const ccoe_model_config *c = &m->cfg;
    const int C = c->n_embd, V = c->vocab_size, T = c->seq_len, F = c->ffn_hidden;
    const int has_ln_bias = c->norm == CCOE_NORM_LAYERNORM;
    size_t off = 0;
    char name[CCOE_PARAM_NAME];
    m->n_params = 0;
    add_param(m, &off, "wte", -1, 1, 2, V, C);
    add_param(m, &off, "wpe", -1, 1, 2, T, C);
    for (int l = 0; l < c->n_layer; l++) {
#define P(suffix, decay, ndim, d0, d1)                                   \
    do {                                                                 \
        snprintf(name, sizeof name, "blocks.%d.%s", l, suffix);          \
        add_param(m, &off, name, l, decay, ndim, d0, d1);                \
    } while (0)
        P("ln1.weight", 0, 1, C, 0);
        if (has_ln_bias)
            P("ln1.bias", 0, 1, C, 0);
        P("attn.qkv.weight", 1, 2, 3 * C, C);
        if (c->bias)
            P("attn.qkv.bias", 0, 1, 3 * C, 0);
        P("attn.proj.weight", 1, 2, C, C);
        if (c->bias)
            P("attn.proj.bias", 0, 1, C, 0);
        P("ln2.weight", 0, 1, C, 0);
        if (has_ln_bias)
            P("ln2.bias", 0, 1, C, 0);
        P("mlp.fc.weight", 1, 2, m->F2, C);
        if (c->bias)
            P("mlp.fc.bias", 0, 1, m->F2, 0);
        P("mlp.proj.weight", 1, 2, C, F);
        if (c->bias)
            P("mlp.proj.bias", 0, 1, C, 0);
#undef P
    }
    if (c->block == CCOE_BLOCK_PRE_LN) {
        add_param(m, &off, "lnf.weight", -1, 0, 1, C, 0);
        if (has_ln_bias)
            add_param(m, &off, "lnf.bias", -1, 0, 1, C, 0);
    }
    if (!c->tied_head)
        add_param(m, &off, "lm_head.weight", -1, 1, 2, V, C);
    m->num_params = off;
}

const ccoe_param *ccoe_model_find_param(const ccoe_model *m, const char *name)
{
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return &m->params[i];
    return NULL;
}

static float *tensor_at(const ccoe_model *m, float *base, const char *name)
{
    const ccoe_param *p = ccoe_model_find_param(m, name);
    return p ? base + p->offset : NULL;
}

static void make_view(ccoe_model *m, float *base, ccoe_model_view *v, ccoe_block_view *blocks)
{
    char name[CCOE_PARAM_NAME];
    v->wte = tensor_at(m, base, "wte");
    v->wpe = tensor_at(m, base, "wpe");
    v->lnf_w = tensor_at(m, base, "lnf.weight");
    v->lnf_b = tensor_at(m, base, "lnf.bias");
    v->lm_head = m->cfg.tied_head ? v->wte : tensor_at(m, base, "lm_head.weight");
    v->blocks = blocks;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        ccoe_block_view *b = &blocks[l];
#define T_(field, suffix)                                            \
    do {                                                             \
        snprintf(name, sizeof name, "blocks.%d.%s", l, suffix);      \
        b->field = tensor_at(m, base, name);                         \
    } while (0)
        T_(ln1_w, "ln1.weight");
        T_(ln1_b, "ln1.bias");
        T_(qkv_w, "attn.qkv.weight");
        T_(qkv_b, "attn.qkv.bias");
        T_(proj_w, "attn.proj.weight");
        T_(proj_b, "attn.proj.bias");
        T_(ln2_w, "ln2.weight");
        T_(ln2_b, "ln2.bias");
        T_(fc_w, "mlp.fc.weight");
        T_(fc_b, "mlp.fc.bias");
        T_(fcproj_w, "mlp.proj.weight");
        T_(fcproj_b, "mlp.proj.bias");
#undef T_
    }
}

/* ---- activations ---- */

static void carve_acts(ccoe_model *m, ccoe_arena *a)
{
    const ccoe_model_config *c = &m->cfg;
    const size_t N = (size_t)m->maxB * m->maxT, C = c->n_embd, V = c->vocab_size;
    const size_t F = c->ffn_hidden, F2 = m->F2, H = c->n_head;
    m->emb = ccoe_arena_floats(a, N * C);
    m->acts = ccoe_arena_take(a, sizeof(ccoe_block_acts) * c->n_layer);
    for (int l = 0; l < c->n_layer; l++) {
        ccoe_block_acts tmp;
        tmp.ln1 = ccoe_arena_floats(a, N * C);
        tmp.ln1_mean = ccoe_arena_floats(a, N);
        tmp.ln1_rstd = ccoe_arena_floats(a, N);
        tmp.qkv = ccoe_arena_floats(a, N * 3 * C);
        tmp.atty = ccoe_arena_floats(a, N * C);
        tmp.lse = ccoe_arena_floats(a, (size_t)m->maxB * H * m->maxT);
        tmp.res1 = ccoe_arena_floats(a, N * C);
        tmp.ln2 = ccoe_arena_floats(a, N * C);
        tmp.ln2_mean = ccoe_arena_floats(a, N);
        tmp.ln2_rstd = ccoe_arena_floats(a, N);
        tmp.fch = ccoe_arena_floats(a, N * F2);
        tmp.fch_act = ccoe_arena_floats(a, N * F);
        tmp.res2 = ccoe_arena_floats(a, N * C);
        if (m->acts)
            m->acts[l] = tmp;
    }
    m->lnf = ccoe_arena_floats(a, N * C);
    m->lnf_mean = ccoe_arena_floats(a, N);
    m->lnf_rstd = ccoe_arena_floats(a, N);
    m->logits = ccoe_arena_floats(a, N * V);
    m->losses = ccoe_arena_floats(a, N);
    m->dx = ccoe_arena_floats(a, N * C);
    m->dtmp = ccoe_arena_floats(a, N * C);
    m->dln = ccoe_arena_floats(a, N * C);
    m->datty = ccoe_arena_floats(a, N * C);
    m->dqkv = ccoe_arena_floats(a, N * 3 * C);
    m->dfch = ccoe_arena_floats(a, N * F2);
    m->dfch_act = ccoe_arena_floats(a, N * F);
    m->attn_scratch =
        ccoe_arena_floats(a, ccoe_attention_scratch_floats(m->maxB, m->maxT, (int)C, (int)H,
                                                           m->nthreads));
}

ccoe_status ccoe_model_init(ccoe_model *m, const ccoe_model_config *cfg, int maxB, int maxT,
                            const ccoe_gemm *g, int nthreads, ccoe_error *err)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    if (cfg->vocab_size <= 0 || cfg->ffn_hidden <= 0)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL,
                              "model config not resolved (vocab_size %d, ffn_hidden %d)",
                              cfg->vocab_size, cfg->ffn_hidden);
    if (maxT > cfg->seq_len || maxT < 1 || maxB < 1)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "batch shape B=%d T=%d does not fit model.seq_len=%d", maxB, maxT,
                              cfg->seq_len);
    m->F2 = cfg->ffn == CCOE_FFN_SWIGLU ? 2 * cfg->ffn_hidden : cfg->ffn_hidden;
    m->maxB = maxB;
    m->maxT = maxT;
    m->gemm = g;
    m->nthreads = nthreads > 0 ? nthreads : 1;
    build_layout(m);

    CCOE_TRY(ccoe_arena_alloc(&m->param_mem, m->num_params * sizeof(float), "parameters", err));
    CCOE_TRY(ccoe_arena_alloc(&m->grad_mem, m->num_params * sizeof(float), "gradients", err));
    m->param_block = (float *)m->param_mem.base;
    m->grad_block = (float *)m->grad_mem.base;
    m->w_blocks = ccoe_aligned_calloc(sizeof(ccoe_block_view) * cfg->n_layer);
    m->g_blocks = ccoe_aligned_calloc(sizeof(ccoe_block_view) * cfg->n_layer);
    if (!m->w_blocks || !m->g_blocks)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate block views");
    make_view(m, m->param_block, &m->w, m->w_blocks);
    make_view(m, m->grad_block, &m->g, m->g_blocks);

    ccoe_arena count;
    ccoe_arena_count(&count);
    carve_acts(m, &count);
    CCOE_TRY(ccoe_arena_alloc(&m->act_mem, count.used, "activations", err));
    carve_acts(m, &m->act_mem);
    assert(m->act_mem.used == count.used);
    m->act_floats = count.used / sizeof(float);
    return CCOE_OK;
}

void ccoe_model_free(ccoe_model *m)
{
    ccoe_arena_free(&m->param_mem);
    ccoe_arena_free(&m->grad_mem);
    ccoe_arena_free(&m->act_mem);
    free(m->w_blocks);
    free(m->g_blocks);
    m->w_blocks = m->g_blocks = NULL;
}

void ccoe_model_init_weights(ccoe_model *m, uint64_t seed)
{
    ccoe_rng r;
    ccoe_rng_seed(&r, seed);
    const float std = (float)m->cfg.init_std;
    const float proj_std = std / sqrtf(2.0f * (float)m->cfg.n_layer);
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        float *x = m->param_block + p->offset;
        const char *dot = strrchr(p->name, '.');
        int is_norm_w = strstr(p->name, "ln") && dot && strcmp(dot, ".weight") == 0;
        if (is_norm_w) {
            for (size_t j = 0; j < p->numel; j++)
                x[j] = 1.0f;
        } else if (p->ndim == 1) {
            memset(x, 0, p->numel * sizeof(float));
        } else {
            int is_resid = strstr(p->name, "attn.proj.weight") || strstr(p->name, "mlp.proj.weight");
            float s = is_resid ? proj_std : std;
            for (size_t j = 0; j < p->numel; j++)
                x[j] = s * ccoe_rng_normal(&r);
        }
    }
}

void ccoe_model_zero_grad(ccoe_model *m)
{
    memset(m->grad_block, 0, m->num_params * sizeof(float));
}

/* ---- norms: LayerNorm or RMSNorm by config ---- */

static void norm_forward(const ccoe_model *m, float *out, float *mean, float *rstd,
                         const float *inp, const float *w, const float *b, int N)
{
    if (m->cfg.norm == CCOE_NORM_LAYERNORM)
        ccoe_layernorm_forward(out, mean, rstd, inp, w, b, N, m->cfg.n_embd);
    else
        ccoe_rmsnorm_forward(out, rstd, inp, w, N, m->cfg.n_embd);
}

static void norm_backward(const ccoe_model *m, float *dinp, float *dw, float *db,
                          const float *dout, const float *inp, const float *w, const float *mean,
                          const float *rstd, int N)
{
    if (m->cfg.norm == CCOE_NORM_LAYERNORM)
        ccoe_layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, m->cfg.n_embd);
    else
        ccoe_rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, m->cfg.n_embd);
}

/* ---- FFN and attention sublayers ---- */

/* out(N,C) = FFN(inp) */
static void ffn_forward(const ccoe_model *m, const ccoe_block_view *w, ccoe_block_acts *a,
                        float *out, const float *inp, int N)
{
    const int C = m->cfg.n_embd, F = m->cfg.ffn_hidden;
    ccoe_linear_forward(m->gemm, a->fch, inp, w->fc_w, w->fc_b, N, C, m->F2);
    if (m->cfg.ffn == CCOE_FFN_GELU)
        ccoe_gelu_forward(a->fch_act, a->fch, (size_t)N * F);
    else
        ccoe_swiglu_forward(a->fch_act, a->fch, N, F);
    ccoe_linear_forward(m->gemm, out, a->fch_act, w->fcproj_w, w->fcproj_b, N, F, C);
}

/* dinp(N,C) += dFFN/dinp^T dout; parameter grads accumulate into gw. */
static void ffn_backward(ccoe_model *m, const ccoe_block_view *w, ccoe_block_view *gw,
                         const ccoe_block_acts *a, float *dinp, const float *dout,
                         const float *inp, int N)
{
    const int C = m->cfg.n_embd, F = m->cfg.ffn_hidden;
    memset(m->dfch_act, 0, (size_t)N * F * sizeof(float));
    ccoe_linear_backward(m->gemm, m->dfch_act, gw->fcproj_w, gw->fcproj_b, dout, a->fch_act,
                         w->fcproj_w, N, F, C);
    memset(m->dfch, 0, (size_t)N * m->F2 * sizeof(float));
    if (m->cfg.ffn == CCOE_FFN_GELU)
        ccoe_gelu_backward(m->dfch, a->fch, m->dfch_act, (size_t)N * F);
    else
        ccoe_swiglu_backward(m->dfch, a->fch, m->dfch_act, N, F);
    ccoe_linear_backward(m->gemm, dinp, gw->fc_w, gw->fc_b, m->dfch, inp, w->fc_w, N, C, m->F2);
}

/* out(N,C) = Proj(Attn(QKV(inp))) */
static void attn_forward(const ccoe_model *m, const ccoe_block_view *w, ccoe_block_acts *a,
                         float *out, const float *inp, int B, int T)
{
    const int C = m->cfg.n_embd, N = B * T;
    ccoe_linear_forward(m->gemm, a->qkv, inp, w->qkv_w, w->qkv_b, N, C, 3 * C);
    ccoe_attention_forward(m->gemm, a->atty, a->lse, a->qkv, m->attn_scratch, B, T, C,
                           m->cfg.n_head);
    ccoe_linear_forward(m->gemm, out, a->atty, w->proj_w, w->proj_b, N, C, C);
}

static void attn_backward(ccoe_model *m, const ccoe_block_view *w, ccoe_block_view *gw,
                          const ccoe_block_acts *a, float *dinp, const float *dout,
                          const float *inp, int B, int T)
{
    const int C = m->cfg.n_embd, N = B * T;
    memset(m->datty, 0, (size_t)N * C * sizeof(float));
    ccoe_linear_backward(m->gemm, m->datty, gw->proj_w, gw->proj_b, dout, a->atty, w->proj_w, N,
                         C, C);
    memset(m->dqkv, 0, (size_t)N * 3 * C * sizeof(float));
    ccoe_attention_backward(m->gemm, m->dqkv, m->datty, a->qkv, a->atty, a->lse,
                            m->attn_scratch, B, T, C, m->cfg.n_head);
    ccoe_linear_backward(m->gemm, dinp, gw->qkv_w, gw->qkv_b, m->dqkv, inp, w->qkv_w, N, C,
                         3 * C);
}

/* ---- blocks ---- */

static const float *block_output(const ccoe_model *m, int l)
{
    const ccoe_block_acts *a = &m->acts[l];
    return m->cfg.block == CCOE_BLOCK_PRE_LN ? a->res2 : a->ln2;
}

static const float *block_input(const ccoe_model *m, int l)
{
    return l == 0 ? m->emb : block_output(m, l - 1);
}

static void block_forward(ccoe_model *m, int l, int B, int T)
{
    const ccoe_block_view *w = &m->w.blocks[l];
    ccoe_block_acts *a = &m->acts[l];
    const int C = m->cfg.n_embd, N = B * T;
    const size_t NC = (size_t)N * C;
    const float *x = block_input(m, l);
    if (m->cfg.block == CCOE_BLOCK_PRE_LN) {
        norm_forward(m, a->ln1, a->ln1_mean, a->ln1_rstd, x, w->ln1_w, w->ln1_b, N);
        attn_forward(m, w, a, a->res1, a->ln1, B, T);
        ccoe_residual_forward(a->res1, a->res1, x, NC);
        norm_forward(m, a->ln2, a->ln2_mean, a->ln2_rstd, a->res1, w->ln2_w, w->ln2_b, N);
        ffn_forward(m, w, a, a->res2, a->ln2, N);
        ccoe_residual_forward(a->res2, a->res2, a->res1, NC);
    } else {
        attn_forward(m, w, a, a->res1, x, B, T);
        ccoe_residual_forward(a->res1, a->res1, x, NC);
        norm_forward(m, a->ln1, a->ln1_mean, a->ln1_rstd, a->res1, w->ln1_w, w->ln1_b, N);
        ffn_forward(m, w, a, a->res2, a->ln1, N);
        ccoe_residual_forward(a->res2, a->res2, a->ln1, NC);
        norm_forward(m, a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, w->ln2_w, w->ln2_b, N);
    }
}

/* On entry m->dx holds d(block output); on exit d(block input). */
static void block_backward(ccoe_model *m, int l, int B, int T)
{
    const ccoe_block_view *w = &m->w.blocks[l];
    ccoe_block_view *gw = &m->g.blocks[l];
    const ccoe_block_acts *a = &m->acts[l];
    const int C = m->cfg.n_embd, N = B * T;
    const size_t NC = (size_t)N * C;
    const float *x = block_input(m, l);
    float *dx = m->dx;
    if (m->cfg.block == CCOE_BLOCK_PRE_LN) {
        /* res2 = res1 + FFN(LN2(res1)): dx carries d(res2) and becomes d(res1) */
        memset(m->dln, 0, NC * sizeof(float));
        ffn_backward(m, w, gw, a, m->dln, dx, a->ln2, N);
        norm_backward(m, dx, gw->ln2_w, gw->ln2_b, m->dln, a->res1, w->ln2_w, a->ln2_mean,
                      a->ln2_rstd, N);
        /* res1 = x + Attn(LN1(x)) */
        memset(m->dln, 0, NC * sizeof(float));
        attn_backward(m, w, gw, a, m->dln, dx, a->ln1, B, T);
        norm_backward(m, dx, gw->ln1_w, gw->ln1_b, m->dln, x, w->ln1_w, a->ln1_mean,
                      a->ln1_rstd, N);
    } else {
        /* y = LN2(res2): dtmp = d(res2) */
        memset(m->dtmp, 0, NC * sizeof(float));
        norm_backward(m, m->dtmp, gw->ln2_w, gw->ln2_b, dx, a->res2, w->ln2_w, a->ln2_mean,
                      a->ln2_rstd, N);
        /* res2 = h + FFN(h): dx = d(h) */
        memcpy(dx, m->dtmp, NC * sizeof(float));
        ffn_backward(m, w, gw, a, dx, m->dtmp, a->ln1, N);
        /* h = LN1(res1): dtmp = d(res1) */
        memset(m->dtmp, 0, NC * sizeof(float));
        norm_backward(m, m->dtmp, gw->ln1_w, gw->ln1_b, dx, a->res1, w->ln1_w, a->ln1_mean,
                      a->ln1_rstd, N);
        /* res1 = x + Attn(x): dx = d(x) */
        memcpy(dx, m->dtmp, NC * sizeof(float));
        attn_backward(m, w, gw, a, dx, m->dtmp, x, B, T);
    }
}

/* ---- whole model ---- */

static const float *final_hidden(const ccoe_model *m)
{
    return m->cfg.block == CCOE_BLOCK_PRE_LN ? m->lnf : block_output(m, m->cfg.n_layer - 1);
}

double ccoe_model_forward(ccoe_model *m, const int32_t *tokens, const int32_t *targets,
                          const int32_t *domains, int B, int T, long *count)
{
    (void)domains; /* the dense model does not route */
    assert(B >= 1 && B <= m->maxB && T >= 1 && T <= m->maxT);
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size, N = B * T, L = m->cfg.n_layer;
    ccoe_embed_forward(m->emb, tokens, m->w.wte, m->w.wpe, B, T, C);
    for (int l = 0; l < L; l++)
        block_forward(m, l, B, T);
    const float *h = block_input(m, L);
    if (m->cfg.block == CCOE_BLOCK_PRE_LN) {
        norm_forward(m, m->lnf, m->lnf_mean, m->lnf_rstd, h, m->w.lnf_w, m->w.lnf_b, N);
    }
    ccoe_linear_forward(m->gemm, m->logits, final_hidden(m), m->w.lm_head, NULL, N, C, V);
    if (count)
        *count = 0;
    if (!targets)
        return 0.0;
    long n = 0;
    for (int i = 0; i < N; i++)
        n += targets[i] >= 0;
    if (count)
        *count = n;
    return ccoe_crossentropy_forward(m->losses, m->logits, m->logits, targets, N, V);
}

void ccoe_model_backward(ccoe_model *m, const int32_t *tokens, const int32_t *targets, int B,
                         int T, float scale)
{
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size, N = B * T, L = m->cfg.n_layer;
    const size_t NC = (size_t)N * C;
    /* logits hold the probabilities after the forward; turn them into dlogits in place */
    ccoe_crossentropy_backward(m->logits, m->logits, targets, scale, N, V);
    float *dh = m->cfg.block == CCOE_BLOCK_PRE_LN ? m->dtmp : m->dx;
    memset(dh, 0, NC * sizeof(float));
    ccoe_linear_backward(m->gemm, dh, m->g.lm_head, NULL, m->logits, final_hidden(m),
                         m->w.lm_head, N, C, V);
    if (m->cfg.block == CCOE_BLOCK_PRE_LN) {
        memset(m->dx, 0, NC * sizeof(float));
        norm_backward(m, m->dx, m->g.lnf_w, m->g.lnf_b, dh, block_input(m, L), m->w.lnf_w,
                      m->lnf_mean, m->lnf_rstd, N);
    }
    for (int l = L - 1; l >= 0; l--)
        block_backward(m, l, B, T);
    ccoe_embed_backward(m->g.wte, m->g.wpe, m->dx, tokens, B, T, C);
}

const float *ccoe_model_logits(const ccoe_model *m, int b, int t, int T)
{
    return m->logits + ((size_t)b * T + t) * m->cfg.vocab_size;
}

double ccoe_model_train_flops_per_token(const ccoe_model_config *c, int T)
{
    const double C = c->n_embd, V = c->vocab_size, L = c->n_layer, F = c->ffn_hidden;
    const double F2 = c->ffn == CCOE_FFN_SWIGLU ? 2.0 * F : F;
    double matmul_params = L * (3.0 * C * C + C * C + F2 * C + C * F) + V * C;
    return 6.0 * matmul_params + 12.0 * L * C * T;
}
