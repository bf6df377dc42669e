/* model.c - the network: the transformer's composition with CCoE paths (Eqs. 4-7) as a
 * generalisation of the plain stack, and MoE blocks in place of dense FFNs.
 *
 * Set-up carves the activations and the MoE blocks; then the sublayers (norm, attention, FFN
 * or MoE), the blocks built from them, the paths (rows sorted by path, each group's own blocks
 * and head) and the whole forward and backward. The per-layer math lives in kernels.c; the
 * parameter layout in model_params.c, decoding in model_decode.c, expert placement over ranks
 * in model_place.c, FLOP and parameter accounting in model_cost.c (model_impl.h). Derivations
 * are in papers/transformer.md and papers/ccoe.md.
 */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model_impl.h"

/* ---- activations ---- */

static void carve_acts(ccoe_model *m, ccoe_arena *a)
{
    const ccoe_model_config *c = &m->cfg;
    const size_t B = (size_t)m->maxB, N = B * m->maxT, C = c->n_embd, V = c->vocab_size;
    const size_t F = c->ffn_hidden, F2 = m->F2, H = c->n_head, W = m->W;
    m->tok_sorted = ccoe_arena_take(a, N * sizeof(int32_t));
    m->tgt_sorted = ccoe_arena_take(a, N * sizeof(int32_t));
    m->row_of = ccoe_arena_take(a, B * sizeof(int));
    m->seq_at = ccoe_arena_take(a, B * sizeof(int));
    m->row_path = ccoe_arena_take(a, B * sizeof(int));
    m->group_path = ccoe_arena_take(a, B * sizeof(int));
    m->group_r0 = ccoe_arena_take(a, B * sizeof(int));
    m->group_r1 = ccoe_arena_take(a, B * sizeof(int));
    m->emb = ccoe_arena_floats(a, N * C);
    m->acts = ccoe_arena_take(a, sizeof(ccoe_block_acts) * (size_t)m->n_inst);
    for (int k = 0; k < m->n_inst; k++) {
        ccoe_block_acts t;
        t.ln1 = ccoe_arena_floats(a, N * C);
        t.ln1_mean = ccoe_arena_floats(a, N);
        t.ln1_rstd = ccoe_arena_floats(a, N);
        t.qkv = ccoe_arena_floats(a, N * W);
        t.atty = ccoe_arena_floats(a, N * C);
        t.lse = ccoe_arena_floats(a, B * H * m->maxT);
        t.res1 = ccoe_arena_floats(a, N * C);
        t.ln2 = ccoe_arena_floats(a, N * C);
        t.ln2_mean = ccoe_arena_floats(a, N);
        t.ln2_rstd = ccoe_arena_floats(a, N);
        t.fch = t.fch_act = NULL;
        if (m->moe_of[k] < 0) {
            t.fch = ccoe_arena_floats(a, N * F2);
            t.fch_act = ccoe_arena_floats(a, N * F);
        }
        t.res2 = ccoe_arena_floats(a, N * C);
        if (m->acts)
            m->acts[k] = t;
    }
    if (m->n_moe > 0) {
        m->moe_acts = ccoe_arena_take(a, sizeof(ccoe_moe_acts) * (size_t)m->n_moe);
        for (int i = 0; i < m->n_moe; i++) {
            ccoe_moe_acts t;
            ccoe_moe_acts_carve(&t, &m->moe, a);
            if (m->moe_acts)
                m->moe_acts[i] = t;
        }
        ccoe_moe_scratch_carve(&m->moe_scratch, &m->moe, a);
        m->moe_domains = ccoe_arena_take(a, B * sizeof(int32_t));
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
    m->dqkv = ccoe_arena_floats(a, N * W);
    m->dfch = ccoe_arena_floats(a, N * F2);
    m->dfch_act = ccoe_arena_floats(a, N * F);
    m->attn_scratch = ccoe_arena_floats(
        a, ccoe_gqa_scratch_floats(m->maxB, m->maxT, (int)H, m->Hkv, m->hd, m->nthreads));
    m->rope_cos = m->rope_sin = NULL;
    if (c->pos == CCOE_POS_ROPE) {
        m->rope_cos = ccoe_arena_floats(a, (size_t)m->maxT * (m->hd / 2));
        m->rope_sin = ccoe_arena_floats(a, (size_t)m->maxT * (m->hd / 2));
    }
}

/* Sizes the activations with a counting pass, allocates them and carves them. */
ccoe_status model_alloc_acts(ccoe_model *m, ccoe_error *err)
{
    ccoe_arena count;
    ccoe_arena_count(&count);
    carve_acts(m, &count);
    CCOE_TRY(ccoe_arena_alloc(&m->act_mem, count.used, "activations", err));
    carve_acts(m, &m->act_mem);
    assert(m->act_mem.used == count.used);
    m->act_floats = count.used / sizeof(float);
    if (m->rope_cos)
        CCOE_TRY(ccoe_rope_table_init(m->rope_cos, m->rope_sin, m->maxT, m->hd,
                                      m->cfg.rope_theta, err));
    return CCOE_OK;
}

/* The MoE layer and the MoE blocks (allocates the small per-block arrays; setup only). */
static ccoe_status setup_moe(ccoe_model *m, const ccoe_moe_section *sec, ccoe_error *err)
{
    m->moe_of = ccoe_aligned_calloc(sizeof(int) * (size_t)m->n_inst);
    if (!m->moe_of)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate model views");
    for (int k = 0; k < m->n_inst; k++)
        m->moe_of[k] = -1;
    ccoe_moe_config lc;
    if (!sec || !ccoe_moe_config_from_section(sec, &m->cfg, &lc))
        return CCOE_OK;
    if (ccoe_moe_init(&m->moe, &lc, m->cfg.n_embd, m->maxB * m->maxT, m->gemm, err) != CCOE_OK)
        return ccoe_error_wrap(err, "[moe]");
    for (int l = 0; l < m->cfg.n_layer; l++)
        if (ccoe_config_moe_block(sec, l))
            m->moe_of[l] = m->n_moe++;
    if (m->n_moe == 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "moe.every = %d selects none of the %d blocks: use moe.every <= "
                              "model.n_layer or moe.gate = none",
                              sec->every, m->cfg.n_layer);
    const size_t n = (size_t)m->n_moe, E = (size_t)m->moe.E;
    m->moe_layer = ccoe_aligned_calloc(sizeof(int) * n);
    m->moe_offset = ccoe_aligned_calloc(sizeof(size_t) * n);
    m->moe_stats = ccoe_aligned_calloc(sizeof(ccoe_moe_stats) * n);
    m->moe_tot_tokens = ccoe_aligned_calloc(sizeof(int64_t) * n * E);
    m->moe_tot_rows = ccoe_aligned_calloc(sizeof(int64_t) * n);
    m->moe_tot_dropped = ccoe_aligned_calloc(sizeof(int64_t) * n * 3);
    m->moe_tot_entropy = ccoe_aligned_calloc(sizeof(double) * n * 2);
    if (!m->moe_layer || !m->moe_offset || !m->moe_stats || !m->moe_tot_tokens ||
        !m->moe_tot_rows || !m->moe_tot_dropped || !m->moe_tot_entropy)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the MoE statistics");
    for (int l = 0; l < m->cfg.n_layer; l++)
        if (m->moe_of[l] >= 0)
            m->moe_layer[m->moe_of[l]] = l;
    return CCOE_OK;
}

ccoe_status ccoe_model_set_comm(ccoe_model *m, ccoe_comm *comm, const int32_t *owner,
                                ccoe_error *err)
{
    m->comm = comm;
    if (m->n_moe == 0 || !comm || comm->size <= 1)
        return CCOE_OK;
    /* every rank must run every MoE block in every forward: a CCoE path that leaves the base
     * before an MoE block could give one rank no rows there while the others exchange */
    for (int p = 0; p < m->n_paths; p++)
        for (int i = 0; i < m->n_moe; i++)
            if (m->paths[p].n_base <= m->moe_layer[i]) {
                m->comm = NULL;
                return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                      "expert parallelism on %d ranks: CCoE expert path %d leaves "
                                      "the base before MoE block %d, so some ranks could skip "
                                      "its token exchange; place the CCoE experts after the "
                                      "last MoE block or run on one process",
                                      comm->size, p, m->moe_layer[i]);
            }
    /* expert parallelism: the experts on their owners (NULL: contiguous blocks per rank); the
     * MoE buffers grow to the rows this rank's experts may receive (from ranks with up to the
     * largest maxB of any rank), so the activations are carved again */
    double peer = (double)m->maxB * m->maxT;
    CCOE_TRY(comm->ops->allreduce_max_f64(comm, &peer, 1, err));
    CCOE_TRY(ccoe_moe_set_placement(&m->moe, comm->size, comm->rank, owner, (int)peer, err));
    ccoe_arena_free(&m->act_mem);
    return model_alloc_acts(m, err);
}

static int moe_distributed(const ccoe_model *m);

int ccoe_model_forward_collective(const ccoe_model *m)
{
    return (m->n_moe > 0 && moe_distributed(m)) || (m->place && m->place_active);
}

void ccoe_model_moe_reset_totals(ccoe_model *m)
{
    const size_t n = (size_t)m->n_moe, E = (size_t)m->moe.E;
    if (n == 0)
        return;
    memset(m->moe_tot_tokens, 0, sizeof(int64_t) * n * E);
    memset(m->moe_tot_rows, 0, sizeof(int64_t) * n);
    memset(m->moe_tot_dropped, 0, sizeof(int64_t) * n * 3);
    memset(m->moe_tot_entropy, 0, sizeof(double) * n * 2);
}

ccoe_status ccoe_model_init(ccoe_model *m, const ccoe_model_config *cfg,
                            const ccoe_taskmap *gating, int maxB, int maxT, const ccoe_gemm *g,
                            int nthreads, ccoe_error *err)
{
    return ccoe_model_init_moe(m, cfg, gating, NULL, maxB, maxT, g, nthreads, err);
}

static ccoe_status model_init(ccoe_model *m, const ccoe_model_config *cfg,
                              const ccoe_taskmap *gating, const ccoe_moe_section *moe, int maxB,
                              int maxT, const ccoe_gemm *g, int nthreads, int grads,
                              ccoe_error *err);

ccoe_status ccoe_model_init_moe(ccoe_model *m, const ccoe_model_config *cfg,
                                const ccoe_taskmap *gating, const ccoe_moe_section *moe, int maxB,
                                int maxT, const ccoe_gemm *g, int nthreads, ccoe_error *err)
{
    return model_init(m, cfg, gating, moe, maxB, maxT, g, nthreads, 1, err);
}

ccoe_status ccoe_model_init_weights_only(ccoe_model *m, const ccoe_model_config *cfg,
                                         const ccoe_taskmap *gating,
                                         const ccoe_moe_section *moe, const ccoe_gemm *g,
                                         ccoe_error *err)
{
    return model_init(m, cfg, gating, moe, 1, 1, g, 1, 0, err);
}

static ccoe_status model_init(ccoe_model *m, const ccoe_model_config *cfg,
                              const ccoe_taskmap *gating, const ccoe_moe_section *moe, int maxB,
                              int maxT, const ccoe_gemm *g, int nthreads, int grads,
                              ccoe_error *err)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    if (gating)
        m->taskmap = *gating;
    m->taskmap.n_layer = cfg->n_layer;
    m->train_path = -1;
    if (cfg->vocab_size <= 0 || cfg->ffn_hidden <= 0)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL,
                              "model config not resolved (vocab_size %d, ffn_hidden %d)",
                              cfg->vocab_size, cfg->ffn_hidden);
    if (maxT > cfg->seq_len || maxT < 1 || maxB < 1)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "batch shape B=%d T=%d does not fit model.seq_len=%d", maxB, maxT,
                              cfg->seq_len);
    m->F2 = cfg->ffn == CCOE_FFN_SWIGLU ? 2 * cfg->ffn_hidden : cfg->ffn_hidden;
    m->Hkv = ccoe_model_kv_heads(cfg);
    m->hd = cfg->n_embd / cfg->n_head;
    m->W = (cfg->n_head + 2 * m->Hkv) * m->hd;
    if (cfg->n_head % m->Hkv != 0 || (cfg->pos == CCOE_POS_ROPE && m->hd % 2 != 0))
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "model.n_kv_head = %d must divide model.n_head = %d, and "
                              "model.pos = rope needs an even head size (n_embd / n_head = %d)",
                              cfg->n_kv_head, cfg->n_head, m->hd);
    m->maxB = maxB;
    m->maxT = maxT;
    m->gemm = g;
    m->nthreads = nthreads > 0 ? nthreads : 1;
    m->n_inst = cfg->n_layer;
    int n_xffn = 0;
    for (int e = 0; e < m->taskmap.n_experts; e++) {
        m->xffn_first[e] = n_xffn;
        if (model_experts_are_ffns(m))
            n_xffn += m->taskmap.experts[e].layers;
        else
            m->n_inst += m->taskmap.experts[e].layers;
    }
    CCOE_TRY(setup_moe(m, moe, err));
    model_build_layout(m);
    if (m->n_params > CCOE_MAX_PARAMS)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "the model has %d tensors, more than the %d supported: use fewer "
                              "layers or experts",
                              m->n_params, CCOE_MAX_PARAMS);

    CCOE_TRY(ccoe_arena_alloc(&m->param_mem, m->num_params * sizeof(float), "parameters", err));
    if (grads) /* a weights-only model has no gradient block (grad_block and g_* views NULL) */
        CCOE_TRY(ccoe_arena_alloc(&m->grad_mem, m->num_params * sizeof(float), "gradients", err));
    m->param_block = (float *)m->param_mem.base;
    m->grad_block = (float *)m->grad_mem.base;
    m->w_blocks = ccoe_aligned_calloc(sizeof(ccoe_block_view) * (size_t)m->n_inst);
    m->g_blocks = ccoe_aligned_calloc(sizeof(ccoe_block_view) * (size_t)m->n_inst);
    m->w_heads = ccoe_aligned_calloc(sizeof(ccoe_head_view) * (CCOE_MAX_EXPERTS + 1));
    m->g_heads = ccoe_aligned_calloc(sizeof(ccoe_head_view) * (CCOE_MAX_EXPERTS + 1));
    m->inst_input = ccoe_aligned_calloc(sizeof(int) * (size_t)m->n_inst);
    m->w_xffn = ccoe_aligned_calloc(sizeof(ccoe_block_view) * (size_t)(n_xffn + 1));
    m->g_xffn = ccoe_aligned_calloc(sizeof(ccoe_block_view) * (size_t)(n_xffn + 1));
    if (!m->w_blocks || !m->g_blocks || !m->w_heads || !m->g_heads || !m->inst_input ||
        !m->w_xffn || !m->g_xffn)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate model views");
    model_build_paths(m);
    model_make_views(m, m->param_block, m->w_blocks, m->w_heads, m->w_xffn);
    m->wte = model_tensor_at(m, m->param_block, "", "wte");
    m->wpe = model_tensor_at(m, m->param_block, "", "wpe");
    if (grads) {
        model_make_views(m, m->grad_block, m->g_blocks, m->g_heads, m->g_xffn);
        m->dwte = model_tensor_at(m, m->grad_block, "", "wte");
        m->dwpe = model_tensor_at(m, m->grad_block, "", "wpe");
    }

    return model_alloc_acts(m, err);
}

void ccoe_model_free(ccoe_model *m)
{
    model_decode_free(m);
    ccoe_arena_free(&m->param_mem);
    ccoe_arena_free(&m->grad_mem);
    ccoe_arena_free(&m->act_mem);
    free(m->w_blocks);
    free(m->g_blocks);
    free(m->w_heads);
    free(m->g_heads);
    free(m->inst_input);
    free(m->w_xffn);
    free(m->g_xffn);
    m->w_xffn = m->g_xffn = NULL;
    ccoe_row_exchange_free(&m->rx);
    m->place = m->place_active = 0;
    free(m->moe_of);
    free(m->moe_layer);
    free(m->moe_offset);
    free(m->moe_stats);
    free(m->moe_tot_tokens);
    free(m->moe_tot_rows);
    free(m->moe_tot_dropped);
    free(m->moe_tot_entropy);
    m->moe_of = m->moe_layer = NULL;
    m->moe_offset = NULL;
    m->moe_stats = NULL;
    m->moe_tot_tokens = m->moe_tot_rows = m->moe_tot_dropped = NULL;
    m->moe_tot_entropy = NULL;
    m->w_blocks = m->g_blocks = NULL;
    m->w_heads = m->g_heads = NULL;
    m->inst_input = NULL;
}

/* ---- norms: LayerNorm or RMSNorm by config ---- */

static void norm_forward(const ccoe_model *m, float *out, float *mean, float *rstd,
                         const float *inp, const float *w, const float *b, int N)
{
    const float eps = (float)m->cfg.norm_eps;
    if (m->cfg.norm == CCOE_NORM_LAYERNORM)
        ccoe_layernorm_forward_eps(out, mean, rstd, inp, w, b, N, m->cfg.n_embd, eps);
    else
        ccoe_rmsnorm_forward_eps(out, rstd, inp, w, N, m->cfg.n_embd, eps);
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

/* ---- activations of one instance at a row range ---- */

/* The instance's activations starting at sequence s0 of the sorted batch (T tokens each). */
static ccoe_block_acts acts_at(const ccoe_model *m, int k, int s0, int T)
{
    const ccoe_block_acts *a = &m->acts[k];
    const size_t r = (size_t)s0 * T, C = m->cfg.n_embd, F = m->cfg.ffn_hidden;
    ccoe_block_acts v;
    v.ln1 = a->ln1 + r * C;
    v.ln1_mean = a->ln1_mean + r;
    v.ln1_rstd = a->ln1_rstd + r;
    v.qkv = a->qkv + r * m->W;
    v.atty = a->atty + r * C;
    v.lse = a->lse + (size_t)s0 * m->cfg.n_head * T;
    v.res1 = a->res1 + r * C;
    v.ln2 = a->ln2 + r * C;
    v.ln2_mean = a->ln2_mean + r;
    v.ln2_rstd = a->ln2_rstd + r;
    v.fch = a->fch ? a->fch + r * m->F2 : NULL;
    v.fch_act = a->fch_act ? a->fch_act + r * F : NULL;
    v.res2 = a->res2 + r * C;
    return v;
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

/* The FFN weights (fc/fcproj members) instance k uses on the rows of path p: an Eqs. 6-7
 * expert's own FFN in blocks ffn_from..L-1 of its path, else the block's. */
static ccoe_block_view *ffn_view(const ccoe_model *m, ccoe_block_view *blocks,
                                 ccoe_block_view *xffn, int k, int p)
{
    const ccoe_path *pa = &m->paths[p];
    if (pa->ffn_expert < 0 || k >= m->cfg.n_layer || k < pa->ffn_from)
        return &blocks[k];
    return &xffn[m->xffn_first[pa->ffn_expert] + k - pa->ffn_from];
}

static void for_each_ffn_run(ccoe_model *m, int k, int s0, int nb, int T, ffn_run_fn fn, void *ctx)
{
    if (!model_experts_are_ffns(m) || m->taskmap.n_experts == 0 || k >= m->cfg.n_layer) {
        fn(m, k, 0, s0, s0 + nb, s0, T, ctx);
        return;
    }
    for (int gi = 0; gi < m->n_groups; gi++) {
        int r0 = m->group_r0[gi] > s0 ? m->group_r0[gi] : s0;
        int r1 = m->group_r1[gi] < s0 + nb ? m->group_r1[gi] : s0 + nb;
        if (r1 > r0)
            fn(m, k, m->group_path[gi], r0, r1, s0, T, ctx);
    }
}

void model_ffn_run_forward(ccoe_model *m, int k, int p, int r0, int r1, int s0, int T, void *ctx)
{
    const ffn_run_io *io = ctx;
    const size_t off = (size_t)(r0 - s0) * T * m->cfg.n_embd;
    ccoe_block_acts a = acts_at(m, k, r0, T);
    ffn_forward(m, ffn_view(m, m->w_blocks, m->w_xffn, k, p), &a, io->out + off, io->inp + off,
                (r1 - r0) * T);
}

void model_ffn_run_backward(ccoe_model *m, int k, int p, int r0, int r1, int s0, int T, void *ctx)
{
    const ffn_run_io *io = ctx;
    const size_t off = (size_t)(r0 - s0) * T * m->cfg.n_embd;
    const ccoe_block_acts a = acts_at(m, k, r0, T);
    ffn_backward(m, ffn_view(m, m->w_blocks, m->w_xffn, k, p),
                 ffn_view(m, m->g_blocks, m->g_xffn, k, p), &a, io->out + off, io->src + off,
                 io->inp + off, (r1 - r0) * T);
}

/* out(N,C) = MoE(inp) for MoE block i (base block l on sorted rows [0, nb)); adds its aux loss
 * to m->aux_loss. */
/* Expert parallelism: the MoE blocks exchange tokens when the model runs on several ranks and
 * ccoe_model_set_comm placed the experts (a comm set directly keeps them rank-local). */
static int moe_distributed(const ccoe_model *m)
{
    return m->comm && m->comm->size > 1 && m->moe.ep_size == m->comm->size;
}

/* A failed exchange inside forward/backward (which return no status): the first one is kept
 * (ccoe_model_comm_status) and every later exchange of the model is skipped, so this rank
 * finishes the pass without communicating and its caller ends the job (status.h: library code
 * never exits). */
void model_comm_failed(ccoe_model *m, const char *what, const ccoe_error *err)
{
    if (m->comm_status != CCOE_OK)
        return;
    m->comm_status = CCOE_ERR_COMM;
    ccoe_error_set(&m->comm_err, CCOE_ERR_COMM, "%s: %s", what, err->msg);
}

ccoe_status ccoe_model_comm_status(const ccoe_model *m, ccoe_error *err)
{
    if (m->comm_status == CCOE_OK)
        return CCOE_OK;
    return ccoe_error_set(err, m->comm_status, "%s", m->comm_err.msg);
}

static void moe_forward(ccoe_model *m, int i, float *out, const float *inp, int nb, int T)
{
    const int N = nb * T;
    ccoe_moe_pass pass = {.train = m->train,
                          .seed = m->seed,
                          .step = m->step,
                          .layer = m->moe_layer[i],
                          .token_offset = m->token_offset,
                          .domains = m->moe_domains,
                          .T = T,
                          .tokens = m->tok_sorted};
    ccoe_moe_stats *st = &m->moe_stats[i];
    if (moe_distributed(m)) {
        if (m->comm_status != CCOE_OK)
            return;
        double aux = 0.0;
        ccoe_error err;
        ccoe_error_clear(&err);
        if (ccoe_moe_forward_ep(&m->moe, m->comm, out, &aux, &m->moe_acts[i], &m->moe_scratch,
                                st, inp, m->param_block + m->moe_offset[i], &pass, N,
                                &err) != CCOE_OK) {
            model_comm_failed(m, "MoE expert parallelism", &err);
            return;
        }
        m->aux_loss += aux;
    } else {
        m->aux_loss += ccoe_moe_forward(&m->moe, out, &m->moe_acts[i], st, inp,
                                        m->param_block + m->moe_offset[i], &pass, N);
    }
    if (m->collect_moe) { /* st->N: the tokens the statistics cover (every rank's under EP) */
        const int E = m->moe.E;
        for (int e = 0; e < E; e++)
            m->moe_tot_tokens[(size_t)i * E + e] += st->tokens_per_expert[e];
        m->moe_tot_rows[i] += st->N;
        m->moe_tot_dropped[3 * i] += st->dropped_slots;
        m->moe_tot_dropped[3 * i + 1] += st->dropped_tokens;
        m->moe_tot_dropped[3 * i + 2] += st->train_dropped_slots;
        m->moe_tot_entropy[2 * i] += st->gate_entropy * st->N;
        m->moe_tot_entropy[2 * i + 1] += st->router_entropy * st->N;
    }
}

static void moe_backward(ccoe_model *m, int i, float *dinp, const float *dout, const float *inp,
                         float aux_scale, int nb, int T)
{
    if (moe_distributed(m)) {
        ccoe_error err;
        ccoe_error_clear(&err);
        if (m->comm_status == CCOE_OK &&
            ccoe_moe_backward_ep(&m->moe, m->comm, dinp, m->grad_block + m->moe_offset[i],
                                 &m->moe_stats[i], &m->moe_scratch, dout, &m->moe_acts[i], inp,
                                 m->param_block + m->moe_offset[i], aux_scale, nb * T,
                                 &err) != CCOE_OK)
            model_comm_failed(m, "MoE expert parallelism", &err);
        return;
    }
    ccoe_moe_backward(&m->moe, dinp, m->grad_block + m->moe_offset[i], &m->moe_stats[i],
                      &m->moe_scratch, dout, &m->moe_acts[i], inp,
                      m->param_block + m->moe_offset[i], aux_scale, nb * T);
}

/* out(N,C) = Proj(Attn(QKV(inp))) for instance k on sorted rows [s0, s0 + B). The qkv rows are
 * W = (H + 2 Hkv) hd wide, [q | k | v]; with model.pos = rope, q and k (the first H + Hkv heads)
 * are rotated in place after the projection, at positions 0..T-1 (training, prefill) or at each
 * row's cache position (decode step), so the cache and attention's backward see the rotated
 * ones. */
static void attn_forward(const ccoe_model *m, int k, int s0, const ccoe_block_view *w,
                         ccoe_block_acts *a, float *out, const float *inp, int B, int T)
{
    const int C = m->cfg.n_embd, N = B * T, H = m->cfg.n_head;
    ccoe_linear_forward(m->gemm, a->qkv, inp, w->qkv_w, w->qkv_b, N, C, m->W);
    if (m->rope_cos) {
        if (m->decoding)
            ccoe_rope_forward_at(a->qkv, a->qkv, m->rope_cos, m->rope_sin, m->dec_step_pos + s0,
                                 N, H + m->Hkv, m->hd, m->W);
        else
            ccoe_rope_forward(a->qkv, a->qkv, m->rope_cos, m->rope_sin, B, T, 0, H + m->Hkv,
                              m->hd, m->W);
    }
    if (m->decoding)
        model_attn_decode(m, k, s0, a, B);
    else
        ccoe_gqa_forward(m->gemm, a->atty, a->lse, a->qkv, m->attn_scratch, B, T, H, m->Hkv,
                         m->hd);
    ccoe_linear_forward(m->gemm, out, a->atty, w->proj_w, w->proj_b, N, C, C);
}

/* The backward of attn_forward: attention's gradient of the rotated q, k is turned into that
 * of the projected ones by the inverse rotation (in place in dqkv). */
static void attn_backward(ccoe_model *m, const ccoe_block_view *w, ccoe_block_view *gw,
                          const ccoe_block_acts *a, float *dinp, const float *dout,
                          const float *inp, int B, int T)
{
    const int C = m->cfg.n_embd, N = B * T, H = m->cfg.n_head;
    memset(m->datty, 0, (size_t)N * C * sizeof(float));
    ccoe_linear_backward(m->gemm, m->datty, gw->proj_w, gw->proj_b, dout, a->atty, w->proj_w, N,
                         C, C);
    memset(m->dqkv, 0, (size_t)N * m->W * sizeof(float));
    ccoe_gqa_backward(m->gemm, m->dqkv, m->datty, a->qkv, a->atty, a->lse, m->attn_scratch, B, T,
                      H, m->Hkv, m->hd);
    if (m->rope_cos)
        ccoe_rope_backward(m->dqkv, m->dqkv, m->rope_cos, m->rope_sin, B, T, 0, H + m->Hkv,
                           m->hd, m->W);
    ccoe_linear_backward(m->gemm, dinp, gw->qkv_w, gw->qkv_b, m->dqkv, inp, w->qkv_w, N, C,
                         m->W);
}

/* The FFN sublayer of instance k (MoE block mi >= 0, else dense / Eqs. 6-7 expert FFNs):
 * out = FFN(inp) on sorted sequences [s0, s0 + nb). inp, out: rows of the instance's
 * activations (placed Eqs. 6-7 experts use the rows past nb for the rows they receive). */
static void ffn_sublayer_forward(ccoe_model *m, int k, int mi, int s0, int nb, int T, float *out,
                                 float *inp)
{
    if (mi >= 0)
        moe_forward(m, mi, out, inp, nb, T);
    else if (model_place_ffn_layer(m, k))
        model_place_ffn_forward(m, k, nb, T, out, inp);
    else
        for_each_ffn_run(m, k, s0, nb, T, model_ffn_run_forward, &(ffn_run_io){.out = out, .inp = inp});
}

/* dinp += dFFN/dinp^T dout; parameter gradients accumulate. dout and dinp are model-wide
 * buffers (rows past nb are free scratch). */
static void ffn_sublayer_backward(ccoe_model *m, int k, int mi, int s0, int nb, int T,
                                  float aux_scale, float *dinp, float *dout, float *inp)
{
    if (mi >= 0)
        moe_backward(m, mi, dinp, dout, inp, aux_scale, nb, T);
    else if (model_place_ffn_layer(m, k))
        model_place_ffn_backward(m, k, nb, T, dinp, dout, inp);
    else
        for_each_ffn_run(m, k, s0, nb, T, model_ffn_run_backward,
                         &(ffn_run_io){.out = dinp, .src = dout, .inp = inp});
}

/* ---- blocks: instance k on sorted sequences [s0, s0 + nb) ---- */

static void block_forward(ccoe_model *m, int k, int s0, int nb, int T)
{
    const ccoe_block_view *w = &m->w_blocks[k];
    const int mi = m->moe_of[k]; /* MoE blocks are base blocks: they start at row 0 */
    assert(mi < 0 || s0 == 0);
    ccoe_block_acts a = acts_at(m, k, s0, T);
    const int N = nb * T;
    const size_t NC = (size_t)N * m->cfg.n_embd;
    const float *x = model_inst_output(m, m->inst_input[k], s0, T);
    if (m->cfg.block == CCOE_BLOCK_PRE_LN) {
        norm_forward(m, a.ln1, a.ln1_mean, a.ln1_rstd, x, w->ln1_w, w->ln1_b, N);
        attn_forward(m, k, s0, w, &a, a.res1, a.ln1, nb, T);
        ccoe_residual_forward(a.res1, a.res1, x, NC);
        norm_forward(m, a.ln2, a.ln2_mean, a.ln2_rstd, a.res1, w->ln2_w, w->ln2_b, N);
        ffn_sublayer_forward(m, k, mi, s0, nb, T, a.res2, a.ln2);
        ccoe_residual_forward(a.res2, a.res2, a.res1, NC);
    } else {
        attn_forward(m, k, s0, w, &a, a.res1, x, nb, T);
        ccoe_residual_forward(a.res1, a.res1, x, NC);
        norm_forward(m, a.ln1, a.ln1_mean, a.ln1_rstd, a.res1, w->ln1_w, w->ln1_b, N);
        ffn_sublayer_forward(m, k, mi, s0, nb, T, a.res2, a.ln1);
        ccoe_residual_forward(a.res2, a.res2, a.ln1, NC);
        norm_forward(m, a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, w->ln2_w, w->ln2_b, N);
    }
}

/* On entry dx (at s0) holds d(block output); on exit d(block input). */
static void block_backward(ccoe_model *m, int k, int s0, int nb, int T, float aux_scale)
{
    const ccoe_block_view *w = &m->w_blocks[k];
    const int mi = m->moe_of[k];
    ccoe_block_view *gw = &m->g_blocks[k];
    const ccoe_block_acts a = acts_at(m, k, s0, T);
    const int N = nb * T;
    const size_t NC = (size_t)N * m->cfg.n_embd;
    const float *x = model_inst_output(m, m->inst_input[k], s0, T);
    float *dx = m->dx + (size_t)s0 * T * m->cfg.n_embd;
    if (m->cfg.block == CCOE_BLOCK_PRE_LN) {
        /* res2 = res1 + FFN(LN2(res1)): dx carries d(res2) and becomes d(res1) */
        memset(m->dln, 0, NC * sizeof(float));
        ffn_sublayer_backward(m, k, mi, s0, nb, T, aux_scale, m->dln, dx, a.ln2);
        norm_backward(m, dx, gw->ln2_w, gw->ln2_b, m->dln, a.res1, w->ln2_w, a.ln2_mean,
                      a.ln2_rstd, N);
        /* res1 = x + Attn(LN1(x)) */
        memset(m->dln, 0, NC * sizeof(float));
        attn_backward(m, w, gw, &a, m->dln, dx, a.ln1, nb, T);
        norm_backward(m, dx, gw->ln1_w, gw->ln1_b, m->dln, x, w->ln1_w, a.ln1_mean, a.ln1_rstd,
                      N);
    } else {
        /* y = LN2(res2): dtmp = d(res2) */
        memset(m->dtmp, 0, NC * sizeof(float));
        norm_backward(m, m->dtmp, gw->ln2_w, gw->ln2_b, dx, a.res2, w->ln2_w, a.ln2_mean,
                      a.ln2_rstd, N);
        /* res2 = h + FFN(h): dx = d(h) = FFN'(h)^T dtmp + dtmp (the FFN's part into zeros, as
         * the owner of a placed Eqs. 6-7 expert computes it, then the residual) */
        memset(dx, 0, NC * sizeof(float));
        ffn_sublayer_backward(m, k, mi, s0, nb, T, aux_scale, dx, m->dtmp, a.ln1);
        ccoe_residual_forward(dx, dx, m->dtmp, NC);
        /* h = LN1(res1): dtmp = d(res1) */
        memset(m->dtmp, 0, NC * sizeof(float));
        norm_backward(m, m->dtmp, gw->ln1_w, gw->ln1_b, dx, a.res1, w->ln1_w, a.ln1_mean,
                      a.ln1_rstd, N);
        /* res1 = x + Attn(x): dx = d(x) */
        memcpy(dx, m->dtmp, NC * sizeof(float));
        attn_backward(m, w, gw, &a, dx, m->dtmp, x, nb, T);
    }
}

/* ---- paths ---- */

/* Last instance of path p (its output feeds the head), or -1 for the embedding. */
static int path_last_inst(const ccoe_model *m, int p)
{
    const ccoe_path *pa = &m->paths[p];
    return pa->n_own > 0 ? pa->first_inst + pa->n_own - 1 : pa->n_base - 1;
}

/* The order of the paths in a sorted batch: by n_base descending, then id. */
void model_path_order(const ccoe_model *m, int *order)
{
    for (int p = 0; p < m->n_paths; p++)
        order[p] = p;
    for (int i = 1; i < m->n_paths; i++)
        for (int j = i; j > 0 && m->paths[order[j]].n_base > m->paths[order[j - 1]].n_base; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
}

/* Sorts the batch rows by path: longest base prefix first (so every base block runs on a
 * prefix of the rows), then by path id; stable in the original order. */
void model_sort_rows(ccoe_model *m, const int32_t *domains, int B)
{
    const ccoe_taskmap *gt = &m->taskmap;
    int r = 0;
    int order[CCOE_MAX_EXPERTS + 1];
    model_path_order(m, order);
    m->n_groups = 0;
    for (int oi = 0; oi < m->n_paths; oi++) {
        int p = order[oi];
        int r0 = r;
        for (int b = 0; b < B; b++) {
            int bp = 0;
            if (domains && m->n_paths > 1) {
                int d = domains[b];
                assert(d >= 0 && d < gt->n_domains);
                bp = gt->route[d] + 1;
            }
            if (bp != p)
                continue;
            m->seq_at[r] = b;
            m->row_of[b] = r;
            m->row_path[r] = p;
            r++;
        }
        if (r > r0) {
            m->group_path[m->n_groups] = p;
            m->group_r0[m->n_groups] = r0;
            m->group_r1[m->n_groups] = r;
            m->n_groups++;
        }
    }
    assert(r == B);
}

/* ---- one group of rows: a path's own blocks and its head ---- */

void model_group_forward(ccoe_model *m, int p, int r0, int nb, int T)
{
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size;
    const ccoe_path *pa = &m->paths[p];
    for (int j = 0; j < pa->n_own; j++)
        block_forward(m, pa->first_inst + j, r0, nb, T);
    const ccoe_head_view *h = &m->w_heads[pa->head];
    const size_t row = (size_t)r0 * T;
    const float *hin = model_inst_output(m, path_last_inst(m, p), r0, T);
    if (m->cfg.block == CCOE_BLOCK_PRE_LN) {
        norm_forward(m, m->lnf + row * C, m->lnf_mean + row, m->lnf_rstd + row, hin, h->lnf_w,
                     h->lnf_b, nb * T);
        hin = m->lnf + row * C;
    }
    ccoe_linear_forward(m->gemm, m->logits + row * V, hin, h->lm_head, NULL, nb * T, C, V);
}

/* dlogits at the group's rows -> d(branch input) in dx at those rows (grads accumulated). */
void model_group_backward(ccoe_model *m, int p, int r0, int nb, int T, float aux_scale)
{
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size, n = nb * T;
    const ccoe_path *pa = &m->paths[p];
    const size_t row = (size_t)r0 * T;
    const ccoe_head_view *h = &m->w_heads[pa->head];
    ccoe_head_view *gh = &m->g_heads[pa->head];
    const float *hin = model_inst_output(m, path_last_inst(m, p), r0, T);
    float *dx = m->dx + row * C;
    float *dlogits = m->logits + row * V;
    /* with a shared head under isolated training, the head's gradient is computed (it is
     * needed to reach the expert) but the optimizer does not apply it */
    if (m->cfg.block == CCOE_BLOCK_PRE_LN) {
        memset(m->dtmp, 0, (size_t)n * C * sizeof(float));
        ccoe_linear_backward(m->gemm, m->dtmp, gh->lm_head, NULL, dlogits, m->lnf + row * C,
                             h->lm_head, n, C, V);
        norm_backward(m, dx, gh->lnf_w, gh->lnf_b, m->dtmp, hin, h->lnf_w, m->lnf_mean + row,
                      m->lnf_rstd + row, n);
    } else {
        ccoe_linear_backward(m->gemm, dx, gh->lm_head, NULL, dlogits, hin, h->lm_head, n, C, V);
    }
    for (int j = pa->n_own - 1; j >= 0; j--)
        block_backward(m, pa->first_inst + j, r0, nb, T, aux_scale);
}

/* ---- whole model (CCoE expert placement's passes: model_place.c) ---- */

/* Whether the base blocks exchange rows (expert-parallel MoE blocks, placed Eqs. 6-7 FFNs):
 * then a rank without rows still runs them on zero rows to join every exchange. */
static int blocks_exchange(const ccoe_model *m)
{
    return moe_distributed(m) ||
           (m->place && m->place_active && m->taskmap.ops->exchange == CCOE_EXCHANGE_FFN);
}

/* The base blocks on the sorted rows [0, B) from m->emb: block l on the rows whose path keeps
 * more than l base blocks (a prefix). */
void model_base_forward(ccoe_model *m, int B, int T)
{
    for (int l = 0; l < m->cfg.n_layer; l++) {
        int rows = 0;
        while (rows < B && m->paths[m->row_path[rows]].n_base > l)
            rows++;
        if (rows == 0 && !(B == 0 && blocks_exchange(m)))
            break;
        block_forward(m, l, 0, rows, T);
    }
}

/* Every group's own blocks and head (logits). */
void model_groups_forward(ccoe_model *m, int T)
{
    for (int gi = 0; gi < m->n_groups; gi++)
        model_group_forward(m, m->group_path[gi], m->group_r0[gi], m->group_r1[gi] - m->group_r0[gi], T);
}

double ccoe_model_forward(ccoe_model *m, const int32_t *tokens, const int32_t *targets,
                          const int32_t *domains, int B, int T, long *count)
{
    const int placed = m->place && m->place_active;
    /* zero rows: a rank still joins the expert-parallel MoE exchanges (and the placement's) */
    const int zero_ok = placed || moe_distributed(m);
    (void)zero_ok;
    assert(zero_ok ? B >= 0 && B <= (placed ? m->place_maxB : m->maxB) : B >= 1 && B <= m->maxB);
    assert(T >= 1 && T <= m->maxT);
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size, N = B * T;
    m->last_B = B;
    m->last_T = T;
    model_sort_rows(m, domains, B);
    for (int r = 0; r < B; r++) {
        const size_t src = (size_t)m->seq_at[r] * T, dst = (size_t)r * T;
        memcpy(m->tok_sorted + dst, tokens + src, (size_t)T * sizeof(int32_t));
        if (targets)
            memcpy(m->tgt_sorted + dst, targets + src, (size_t)T * sizeof(int32_t));
        if (m->n_moe > 0)
            m->moe_domains[r] = domains ? domains[m->seq_at[r]] : 0;
    }
    m->aux_loss = 0.0;
    if (placed) {
        m->rx.bytes = 0;
        model_place_count_rows(m, B);
    }
    ccoe_embed_forward(m->emb, m->tok_sorted, m->wte, m->wpe, B, T, C);
    model_base_forward(m, B, T);
    if (placed && m->taskmap.ops->exchange == CCOE_EXCHANGE_BRANCH)
        return model_place_forward(m, targets, B, T, count);
    model_groups_forward(m, T);
    if (count)
        *count = 0;
    if (!targets)
        return 0.0;
    long n = 0;
    for (int i = 0; i < N; i++)
        n += m->tgt_sorted[i] >= 0;
    if (count)
        *count = n;
    return ccoe_crossentropy_forward(m->losses, m->logits, m->logits, m->tgt_sorted, N, V);
}

void ccoe_model_backward(ccoe_model *m, float scale, float aux_scale)
{
    const int B = m->last_B, T = m->last_T;
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size, N = B * T;
    const int only = m->train_path;
    const int placed = m->place && m->place_active;
    if (placed && m->taskmap.ops->exchange == CCOE_EXCHANGE_BRANCH) {
        /* heads here, expert rows' d(branch input) back from their owners into dx */
        model_place_backward(m, scale, aux_scale);
    } else {
        /* logits hold the probabilities after the forward; turn them into dlogits in place */
        ccoe_crossentropy_backward(m->logits, m->logits, m->tgt_sorted, scale, N, V);
        memset(m->dx, 0, (size_t)N * C * sizeof(float));
        /* heads and experts' own blocks, group by group: leaves d(branch input) in dx */
        for (int gi = 0; gi < m->n_groups; gi++) {
            const int p = m->group_path[gi];
            if (only >= 0 && p != only)
                continue;
            model_group_backward(m, p, m->group_r0[gi], m->group_r1[gi] - m->group_r0[gi], T,
                           aux_scale);
        }
    }
    /* grad_ready: the base head and the experts are final now, unless an Eqs. 6-7 expert's
     * FFNs are differentiated inside the base blocks below */
    size_t rb, re, tail_begin = 0;
    int tail_late = 0;
    for (int p = 1; p < m->n_paths; p++)
        tail_late |= m->paths[p].ffn_expert >= 0;
    if (m->grad_ready) {
        model_inst_range(m, m->cfg.n_layer - 1, &rb, &tail_begin);
        if (!tail_late)
            m->grad_ready(m->grad_ready_ctx, tail_begin, m->num_params);
    }
    /* the base is frozen under isolated expert training: nothing below the expert needs a
     * gradient (Eqs. 6-7: the shared blocks above the expert's first FFN are differentiated
     * to reach it; their gradients are not applied) */
    int lowest = 0;
    if (only > 0) {
        if (m->paths[only].ffn_expert < 0)
            return;
        lowest = m->paths[only].ffn_from;
    }
    for (int l = m->cfg.n_layer - 1; l >= lowest; l--) {
        int rows = 0;
        while (rows < B && m->paths[m->row_path[rows]].n_base > l)
            rows++;
        if (rows > 0 || (B == 0 && blocks_exchange(m)))
            block_backward(m, l, 0, rows, T, aux_scale);
        if (m->grad_ready) {
            model_inst_range(m, l, &rb, &re);
            m->grad_ready(m->grad_ready_ctx, rb, re);
        }
    }
    if (m->grad_ready && tail_late)
        m->grad_ready(m->grad_ready_ctx, tail_begin, m->num_params);
    if (only > 0)
        return;
    ccoe_embed_backward(m->dwte, m->dwpe, m->dx, m->tok_sorted, B, T, C);
    if (m->grad_ready) {
        model_inst_range(m, 0, &rb, &re);
        m->grad_ready(m->grad_ready_ctx, 0, rb);
    }
}

const float *ccoe_model_logits(const ccoe_model *m, int b, int t)
{
    return m->logits + ((size_t)m->row_of[b] * m->last_T + t) * m->cfg.vocab_size;
}

