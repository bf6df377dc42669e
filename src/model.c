/* model.c - parameter layout and the forward/backward composition of the transformer, with
 * CCoE paths (Eqs. 4-5) as a generalisation of the plain stack.
 *
 * The per-layer math lives in kernels.c; this file only wires layers together, carves memory
 * and initialises weights. Derivations are in papers/transformer.md and papers/ccoe.md.
 */
#include "model.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "placement.h"
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
    P("attn.qkv.weight", 1, 2, 3 * C, C);
    if (c->bias)
        P("attn.qkv.bias", 0, 1, 3 * C, 0);
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

static void build_layout(ccoe_model *m)
{
    const ccoe_model_config *c = &m->cfg;
    const ccoe_gating *gt = &m->gating;
    const int L = c->n_layer;
    char prefix[CCOE_PARAM_NAME];
    size_t off = 0;
    m->n_params = 0;
    add_param(m, &off, "wte", -1, -1, 1, 2, c->vocab_size, c->n_embd);
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
            if (gt->form == CCOE_FORM_FFN)
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

static float *tensor_at(const ccoe_model *m, float *base, const char *prefix, const char *suffix)
{
    char name[CCOE_PARAM_NAME];
    int n = snprintf(name, sizeof name, "%s%s", prefix, suffix);
    const ccoe_param *p = n < (int)sizeof name ? ccoe_model_find_param(m, name) : NULL;
    return p ? base + p->offset : NULL;
}

static void block_view(const ccoe_model *m, float *base, const char *prefix, ccoe_block_view *b)
{
    b->ln1_w = tensor_at(m, base, prefix, "ln1.weight");
    b->ln1_b = tensor_at(m, base, prefix, "ln1.bias");
    b->qkv_w = tensor_at(m, base, prefix, "attn.qkv.weight");
    b->qkv_b = tensor_at(m, base, prefix, "attn.qkv.bias");
    b->proj_w = tensor_at(m, base, prefix, "attn.proj.weight");
    b->proj_b = tensor_at(m, base, prefix, "attn.proj.bias");
    b->ln2_w = tensor_at(m, base, prefix, "ln2.weight");
    b->ln2_b = tensor_at(m, base, prefix, "ln2.bias");
    b->fc_w = tensor_at(m, base, prefix, "mlp.fc.weight");
    b->fc_b = tensor_at(m, base, prefix, "mlp.fc.bias");
    b->fcproj_w = tensor_at(m, base, prefix, "mlp.proj.weight");
    b->fcproj_b = tensor_at(m, base, prefix, "mlp.proj.bias");
}

static void head_view(const ccoe_model *m, float *base, const char *prefix, int untied,
                      ccoe_head_view *h)
{
    h->lnf_w = tensor_at(m, base, prefix, "lnf.weight");
    h->lnf_b = tensor_at(m, base, prefix, "lnf.bias");
    h->lm_head = untied ? tensor_at(m, base, prefix, "lm_head.weight")
                        : tensor_at(m, base, "", "wte");
}

static void make_views(ccoe_model *m, float *base, ccoe_block_view *blocks, ccoe_head_view *heads,
                       ccoe_block_view *xffn)
{
    const ccoe_gating *gt = &m->gating;
    const int ffn_form = gt->form == CCOE_FORM_FFN;
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
static void build_paths(ccoe_model *m)
{
    const ccoe_gating *gt = &m->gating;
    const int L = m->cfg.n_layer;
    for (int l = 0; l < L; l++)
        m->inst_input[l] = l - 1;
    m->paths[0] = (ccoe_path){.n_base = L, .first_inst = L, .n_own = 0, .head = 0, .ffn_expert = -1};
    int inst = L;
    for (int e = 0; e < gt->n_experts; e++) {
        const ccoe_expert_spec *x = &gt->experts[e];
        if (gt->form == CCOE_FORM_FFN) {
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

/* ---- activations ---- */

static void carve_acts(ccoe_model *m, ccoe_arena *a)
{
    const ccoe_model_config *c = &m->cfg;
    const size_t B = (size_t)m->maxB, N = B * m->maxT, C = c->n_embd, V = c->vocab_size;
    const size_t F = c->ffn_hidden, F2 = m->F2, H = c->n_head;
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
        t.qkv = ccoe_arena_floats(a, N * 3 * C);
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
    m->dqkv = ccoe_arena_floats(a, N * 3 * C);
    m->dfch = ccoe_arena_floats(a, N * F2);
    m->dfch_act = ccoe_arena_floats(a, N * F);
    m->attn_scratch = ccoe_arena_floats(
        a, ccoe_attention_scratch_floats(m->maxB, m->maxT, (int)C, (int)H, m->nthreads));
}

/* Sizes the activations with a counting pass, allocates them and carves them. */
static ccoe_status alloc_acts(ccoe_model *m, ccoe_error *err)
{
    ccoe_arena count;
    ccoe_arena_count(&count);
    carve_acts(m, &count);
    CCOE_TRY(ccoe_arena_alloc(&m->act_mem, count.used, "activations", err));
    carve_acts(m, &m->act_mem);
    assert(m->act_mem.used == count.used);
    m->act_floats = count.used / sizeof(float);
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
    m->moe_tot_dropped = ccoe_aligned_calloc(sizeof(int64_t) * n * 2);
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
    return alloc_acts(m, err);
}

ccoe_status ccoe_model_set_placement(ccoe_model *m, ccoe_comm *comm, int global_maxB,
                                     const int32_t *owner, ccoe_error *err)
{
    const ccoe_gating *gt = &m->gating;
    if (gt->n_experts == 0 || gt->form == CCOE_FORM_NONE)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "CCoE expert placement needs ccoe.form = tail, prefix or ffn with "
                              "at least one expert");
    if (gt->form == CCOE_FORM_FFN && gt->own_head)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "CCoE expert placement of FFN experts (ccoe.form = ffn) needs the "
                              "shared head: set ccoe.own_head = false or run without placement");
    if (m->n_moe > 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "CCoE expert placement is not combined with MoE blocks (their "
                              "expert parallelism already places the MoE experts)");
    if (m->train_path >= 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "CCoE expert placement does not apply to isolated expert training");
    if (global_maxB < 1)
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "placement: global batch must be >= 1");
    const int P = comm->size;
    int32_t contiguous[CCOE_MAX_EXPERTS];
    if (!owner) {
        const ccoe_mpi_config blocks = {.placement = CCOE_PLACE_CONTIGUOUS};
        CCOE_TRY(ccoe_placement_map(&blocks, gt->n_experts, P, NULL, contiguous, err));
        owner = contiguous;
    }
    for (int e = 0; e < gt->n_experts; e++)
        if (owner[e] < 0 || owner[e] >= P)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "CCoE expert placement: expert %d is assigned to rank %d, but "
                                  "the ranks are 0..%d",
                                  e, (int)owner[e], P - 1);
    m->comm = comm;
    for (int e = 0; e < gt->n_experts; e++)
        m->place_owner[e] = owner[e];
    const size_t T = (size_t)m->maxT, C = (size_t)m->cfg.n_embd;
    const size_t local = (size_t)m->maxB, G = (size_t)global_maxB;
    const size_t row_f = T * (C + 1);
    m->place_counts = calloc((size_t)P * (size_t)m->n_paths, sizeof(int32_t));
    m->place_sc = calloc((size_t)P, sizeof(size_t));
    m->place_sd = calloc((size_t)P, sizeof(size_t));
    m->place_rc = calloc((size_t)P, sizeof(size_t));
    m->place_rd = calloc((size_t)P, sizeof(size_t));
    m->place_send = malloc(local * row_f * sizeof(float) + 64);
    m->place_recv = malloc(G * row_f * sizeof(float) + 64);
    m->place_send_row = malloc(local * sizeof(int) + 16);
    m->place_recv_row = malloc(G * sizeof(int) + 16);
    if (!m->place_counts || !m->place_sc || !m->place_sd || !m->place_rc || !m->place_rd ||
        !m->place_send || !m->place_recv || !m->place_send_row || !m->place_recv_row)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the expert placement buffers");
    /* activations: this rank's rows, then up to the global batch of received rows */
    m->maxB = (int)(local + G);
    ccoe_arena_free(&m->act_mem);
    CCOE_TRY(alloc_acts(m, err));
    m->place_maxB = (int)local;
    m->place = 1;
    return CCOE_OK;
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
    memset(m->moe_tot_dropped, 0, sizeof(int64_t) * n * 2);
    memset(m->moe_tot_entropy, 0, sizeof(double) * n * 2);
}

ccoe_status ccoe_model_init(ccoe_model *m, const ccoe_model_config *cfg,
                            const ccoe_gating *gating, int maxB, int maxT, const ccoe_gemm *g,
                            int nthreads, ccoe_error *err)
{
    return ccoe_model_init_moe(m, cfg, gating, NULL, maxB, maxT, g, nthreads, err);
}

ccoe_status ccoe_model_init_moe(ccoe_model *m, const ccoe_model_config *cfg,
                                const ccoe_gating *gating, const ccoe_moe_section *moe, int maxB,
                                int maxT, const ccoe_gemm *g, int nthreads, ccoe_error *err)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    if (gating)
        m->gating = *gating;
    m->gating.n_layer = cfg->n_layer;
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
    m->maxB = maxB;
    m->maxT = maxT;
    m->gemm = g;
    m->nthreads = nthreads > 0 ? nthreads : 1;
    m->n_inst = cfg->n_layer;
    int n_xffn = 0;
    for (int e = 0; e < m->gating.n_experts; e++) {
        m->xffn_first[e] = n_xffn;
        if (m->gating.form == CCOE_FORM_FFN)
            n_xffn += m->gating.experts[e].layers;
        else
            m->n_inst += m->gating.experts[e].layers;
    }
    CCOE_TRY(setup_moe(m, moe, err));
    build_layout(m);
    if (m->n_params > CCOE_MAX_PARAMS)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "the model has %d tensors, more than the %d supported: use fewer "
                              "layers or experts",
                              m->n_params, CCOE_MAX_PARAMS);

    CCOE_TRY(ccoe_arena_alloc(&m->param_mem, m->num_params * sizeof(float), "parameters", err));
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
    build_paths(m);
    make_views(m, m->param_block, m->w_blocks, m->w_heads, m->w_xffn);
    make_views(m, m->grad_block, m->g_blocks, m->g_heads, m->g_xffn);
    m->wte = tensor_at(m, m->param_block, "", "wte");
    m->wpe = tensor_at(m, m->param_block, "", "wpe");
    m->dwte = tensor_at(m, m->grad_block, "", "wte");
    m->dwpe = tensor_at(m, m->grad_block, "", "wpe");

    return alloc_acts(m, err);
}

static void decode_free(ccoe_model *m);

void ccoe_model_free(ccoe_model *m)
{
    decode_free(m);
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
    free(m->place_counts);
    free(m->place_sc);
    free(m->place_sd);
    free(m->place_rc);
    free(m->place_rd);
    free(m->place_send);
    free(m->place_recv);
    free(m->place_send_row);
    free(m->place_recv_row);
    m->place_counts = NULL;
    m->place_sc = m->place_sd = m->place_rc = m->place_rd = NULL;
    m->place_send = m->place_recv = NULL;
    m->place_send_row = m->place_recv_row = NULL;
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
    v.qkv = a->qkv + r * 3 * C;
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

/* Output of instance k (or the embedding for k = -1) at sequence s0. */
static float *inst_output(const ccoe_model *m, int k, int s0, int T)
{
    const size_t r = (size_t)s0 * T * m->cfg.n_embd;
    if (k < 0)
        return m->emb + r;
    const ccoe_block_acts *a = &m->acts[k];
    return (m->cfg.block == CCOE_BLOCK_PRE_LN ? a->res2 : a->ln2) + r;
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

/* Calls fn on each run of sorted sequences [r0, r1) within [s0, s0 + nb) that shares one FFN:
 * the whole range, or (Eqs. 6-7, base blocks) one call per path group. */
typedef void (*ffn_run_fn)(ccoe_model *m, int k, int p, int r0, int r1, int s0, int T, void *ctx);

static void for_each_ffn_run(ccoe_model *m, int k, int s0, int nb, int T, ffn_run_fn fn, void *ctx)
{
    if (m->gating.form != CCOE_FORM_FFN || m->gating.n_experts == 0 || k >= m->cfg.n_layer) {
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

/* Pointers at sequence s0 of the block's range, for one FFN run. */
typedef struct ffn_run_io {
    float *out;       /* forward: FFN output; backward: dinp */
    const float *src; /* backward: dout */
    const float *inp; /* FFN input */
} ffn_run_io;

static void ffn_run_forward(ccoe_model *m, int k, int p, int r0, int r1, int s0, int T, void *ctx)
{
    const ffn_run_io *io = ctx;
    const size_t off = (size_t)(r0 - s0) * T * m->cfg.n_embd;
    ccoe_block_acts a = acts_at(m, k, r0, T);
    ffn_forward(m, ffn_view(m, m->w_blocks, m->w_xffn, k, p), &a, io->out + off, io->inp + off,
                (r1 - r0) * T);
}

static void ffn_run_backward(ccoe_model *m, int k, int p, int r0, int r1, int s0, int T, void *ctx)
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
static void comm_failed(ccoe_model *m, const char *what, const ccoe_error *err)
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
                          .T = T};
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
            comm_failed(m, "MoE expert parallelism", &err);
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
        m->moe_tot_dropped[2 * i] += st->dropped_slots;
        m->moe_tot_dropped[2 * i + 1] += st->dropped_tokens;
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
            comm_failed(m, "MoE expert parallelism", &err);
        return;
    }
    ccoe_moe_backward(&m->moe, dinp, m->grad_block + m->moe_offset[i], &m->moe_stats[i],
                      &m->moe_scratch, dout, &m->moe_acts[i], inp,
                      m->param_block + m->moe_offset[i], aux_scale, nb * T);
}

/* Keys and values of instance k at cache row c, position t: (2C) = [k | v]. */
static float *kv_at(const ccoe_model *m, int k, int c, int t)
{
    const size_t C2 = 2 * (size_t)m->cfg.n_embd;
    return m->kv_cache + (((size_t)k * m->dec_maxB + c) * m->maxT + t) * C2;
}

/* Decode step: the new token of sorted rows [s0, s0 + nb) (T = 1) joins instance k's cache,
 * then attends to its sequence's cached positions. */
static void attn_decode(const ccoe_model *m, int k, int s0, ccoe_block_acts *a, int nb)
{
    const int C = m->cfg.n_embd;
    for (int r = 0; r < nb; r++)
        memcpy(kv_at(m, k, m->dec_step_row[s0 + r], m->dec_step_pos[s0 + r]),
               a->qkv + (size_t)r * 3 * C + C, 2 * (size_t)C * sizeof(float));
    ccoe_attention_decode(a->atty, a->qkv, kv_at(m, k, 0, 0), (size_t)m->maxT * 2 * C,
                          m->dec_step_row + s0, m->dec_step_pos + s0, m->attn_scratch, nb, C,
                          m->cfg.n_head, m->nthreads);
}

/* out(N,C) = Proj(Attn(QKV(inp))) for instance k on sorted rows [s0, s0 + B) */
static void attn_forward(const ccoe_model *m, int k, int s0, const ccoe_block_view *w,
                         ccoe_block_acts *a, float *out, const float *inp, int B, int T)
{
    const int C = m->cfg.n_embd, N = B * T;
    ccoe_linear_forward(m->gemm, a->qkv, inp, w->qkv_w, w->qkv_b, N, C, 3 * C);
    if (m->decoding)
        attn_decode(m, k, s0, a, B);
    else
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

static int place_ffn_layer(const ccoe_model *m, int k);
static void place_ffn_forward(ccoe_model *m, int k, int B, int T, float *out, float *inp);
static void place_ffn_backward(ccoe_model *m, int k, int B, int T, float *dinp, float *dout,
                               float *inp);

/* The FFN sublayer of instance k (MoE block mi >= 0, else dense / Eqs. 6-7 expert FFNs):
 * out = FFN(inp) on sorted sequences [s0, s0 + nb). inp, out: rows of the instance's
 * activations (placed Eqs. 6-7 experts use the rows past nb for the rows they receive). */
static void ffn_sublayer_forward(ccoe_model *m, int k, int mi, int s0, int nb, int T, float *out,
                                 float *inp)
{
    if (mi >= 0)
        moe_forward(m, mi, out, inp, nb, T);
    else if (place_ffn_layer(m, k))
        place_ffn_forward(m, k, nb, T, out, inp);
    else
        for_each_ffn_run(m, k, s0, nb, T, ffn_run_forward, &(ffn_run_io){.out = out, .inp = inp});
}

/* dinp += dFFN/dinp^T dout; parameter gradients accumulate. dout and dinp are model-wide
 * buffers (rows past nb are free scratch). */
static void ffn_sublayer_backward(ccoe_model *m, int k, int mi, int s0, int nb, int T,
                                  float aux_scale, float *dinp, float *dout, float *inp)
{
    if (mi >= 0)
        moe_backward(m, mi, dinp, dout, inp, aux_scale, nb, T);
    else if (place_ffn_layer(m, k))
        place_ffn_backward(m, k, nb, T, dinp, dout, inp);
    else
        for_each_ffn_run(m, k, s0, nb, T, ffn_run_backward,
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
    const float *x = inst_output(m, m->inst_input[k], s0, T);
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
    const float *x = inst_output(m, m->inst_input[k], s0, T);
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
static void path_order(const ccoe_model *m, int *order)
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
static void sort_rows(ccoe_model *m, const int32_t *domains, int B)
{
    const ccoe_gating *gt = &m->gating;
    int r = 0;
    int order[CCOE_MAX_EXPERTS + 1];
    path_order(m, order);
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

static void group_forward(ccoe_model *m, int p, int r0, int nb, int T)
{
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size;
    const ccoe_path *pa = &m->paths[p];
    for (int j = 0; j < pa->n_own; j++)
        block_forward(m, pa->first_inst + j, r0, nb, T);
    const ccoe_head_view *h = &m->w_heads[pa->head];
    const size_t row = (size_t)r0 * T;
    const float *hin = inst_output(m, path_last_inst(m, p), r0, T);
    if (m->cfg.block == CCOE_BLOCK_PRE_LN) {
        norm_forward(m, m->lnf + row * C, m->lnf_mean + row, m->lnf_rstd + row, hin, h->lnf_w,
                     h->lnf_b, nb * T);
        hin = m->lnf + row * C;
    }
    ccoe_linear_forward(m->gemm, m->logits + row * V, hin, h->lm_head, NULL, nb * T, C, V);
}

/* dlogits at the group's rows -> d(branch input) in dx at those rows (grads accumulated). */
static void group_backward(ccoe_model *m, int p, int r0, int nb, int T, float aux_scale)
{
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size, n = nb * T;
    const ccoe_path *pa = &m->paths[p];
    const size_t row = (size_t)r0 * T;
    const ccoe_head_view *h = &m->w_heads[pa->head];
    ccoe_head_view *gh = &m->g_heads[pa->head];
    const float *hin = inst_output(m, path_last_inst(m, p), r0, T);
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

/* ---- CCoE expert placement: rows travel to their expert's owner and back ---- */

/* The rank that computes path p's rows in exchange k, or -1 when they stay here. k < 0: Eqs.
 * 4-5, after the base prefix (the base path stays local); k >= 0: the FFN of instance k (Eqs.
 * 6-7: an expert's FFN from its first covered block on). */
static int place_dest(const ccoe_model *m, int k, int p)
{
    if (k < 0)
        return p == 0 ? -1 : m->place_owner[p - 1];
    const ccoe_path *pa = &m->paths[p];
    if (pa->ffn_expert < 0 || k < pa->ffn_from || k >= m->cfg.n_layer)
        return -1;
    return m->place_owner[pa->ffn_expert];
}

/* Whether a group computes its head here: a local base-path group or a received group. */
static int place_head_group(const ccoe_model *m, int gi)
{
    return gi >= m->n_groups || place_dest(m, -1, m->group_path[gi]) < 0;
}

/* COLLECTIVE: every rank's rows per path (place_counts), once per forward. */
static void place_count_rows(ccoe_model *m, int B)
{
    ccoe_error err;
    ccoe_error_clear(&err);
    int32_t mine[CCOE_MAX_EXPERTS + 1] = {0};
    for (int r = 0; r < B; r++)
        mine[m->row_path[r]]++;
    const size_t n = (size_t)m->n_paths * sizeof(int32_t);
    if (m->comm_status != CCOE_OK ||
        m->comm->ops->allgather(m->comm, mine, m->place_counts, n, &err) != CCOE_OK) {
        if (m->comm_status == CCOE_OK)
            comm_failed(m, "CCoE expert placement", &err);
        /* nothing arrives then: plans receive no rows */
        memset(m->place_counts, 0, n * (size_t)m->comm->size);
    }
}

/* Plans exchange k (place_dest) of `unit` floats per row from place_counts. Send: this rank's
 * rows of remote-computed paths by destination rank, then in sorted row order (place_send_row,
 * place_sc/sd). Receive: from each rank its rows of the paths this rank computes, in that
 * rank's sorted order; they go to model rows B.. grouped by path, then by source rank (the
 * order of the one-process batch: place_recv_row, place_rc/rd), and the received groups follow
 * the local ones in group_*. Returns the rows all ranks send in this exchange (the same on
 * every rank: 0 = nothing to exchange). */
static long place_plan(ccoe_model *m, int k, int B, size_t unit)
{
    const int P = m->comm->size, me = m->comm->rank, np = m->n_paths;
    size_t at = 0;
    int ns = 0;
    for (int q = 0; q < P; q++) {
        m->place_sd[q] = at;
        for (int r = 0; r < B; r++)
            if (place_dest(m, k, m->row_path[r]) == q) {
                m->place_send_row[ns++] = r;
                at += unit;
            }
        m->place_sc[q] = at - m->place_sd[q];
    }
    m->place_nsend = ns;
    int order[CCOE_MAX_EXPERTS + 1];
    path_order(m, order);
    long total = 0;
    at = 0;
    for (int q = 0; q < P; q++) {
        m->place_rd[q] = at;
        for (int oi = 0; oi < np; oi++) {
            const int d = place_dest(m, k, order[oi]);
            const int32_t n = m->place_counts[(size_t)q * np + order[oi]];
            total += d >= 0 ? n : 0;
            if (d == me)
                at += (size_t)n * unit;
        }
        m->place_rc[q] = at - m->place_rd[q];
    }
    int R = 0, ng = 0;
    for (int oi = 0; oi < np; oi++) {
        const int p = order[oi];
        if (place_dest(m, k, p) != me)
            continue;
        const int g0 = B + R;
        for (int q = 0; q < P; q++) {
            /* index of the first row of (q, p) in receive order */
            size_t idx = m->place_rd[q] / unit;
            for (int oj = 0; oj < oi; oj++)
                if (place_dest(m, k, order[oj]) == me)
                    idx += (size_t)m->place_counts[(size_t)q * np + order[oj]];
            const int n = m->place_counts[(size_t)q * np + p];
            for (int j = 0; j < n; j++)
                m->place_recv_row[idx + (size_t)j] = B + R + j;
            R += n;
        }
        if (B + R > g0) {
            const int gi = m->n_groups + ng++;
            m->group_path[gi] = p;
            m->group_r0[gi] = g0;
            m->group_r1[gi] = B + R;
        }
    }
    assert(B + R <= m->maxB);
    m->place_B = B;
    m->place_R = R;
    m->place_n_rgroups = ng;
    return total;
}

/* COLLECTIVE: the planned exchange, place_send -> place_recv (back = 0) or the reverse. */
static void place_exchange(ccoe_model *m, int back)
{
    ccoe_comm *c = m->comm;
    ccoe_error err;
    ccoe_error_clear(&err);
    const size_t *sc = back ? m->place_rc : m->place_sc, *sd = back ? m->place_rd : m->place_sd;
    const size_t *rc = back ? m->place_sc : m->place_rc, *rd = back ? m->place_sd : m->place_rd;
    if (m->comm_status != CCOE_OK)
        return;
    for (int q = 0; q < c->size; q++)
        if (q != c->rank)
            m->place_bytes += sc[q] * sizeof(float);
    if (c->ops->alltoallv_f32(c, back ? m->place_recv : m->place_send, sc, sd,
                              back ? m->place_send : m->place_recv, rc, rd, &err) != CCOE_OK)
        comm_failed(m, "CCoE expert placement", &err);
}

/* Copies rows between a model buffer x (rows of `unit` floats) and the exchange buffers: the
 * sent rows (place_send_row order) or the received ones (place_recv_row order); to_buf = 1
 * gathers x's rows into the buffer, 0 scatters the buffer into x (add = 1: x += buffer). */
static void place_rows(const ccoe_model *m, int received, int to_buf, int add, float *x,
                       size_t unit)
{
    const int n = received ? m->place_R : m->place_nsend;
    const int *row = received ? m->place_recv_row : m->place_send_row;
    float *buf = received ? m->place_recv : m->place_send;
    for (int i = 0; i < n; i++) {
        float *xr = x + (size_t)row[i] * unit, *br = buf + (size_t)i * unit;
        if (to_buf)
            memcpy(br, xr, unit * sizeof(float));
        else if (add)
            for (size_t j = 0; j < unit; j++)
                xr[j] += br[j];
        else
            memcpy(xr, br, unit * sizeof(float));
    }
}

/* Eqs. 6-7 placement: whether instance k's FFN exchanges rows (some expert covers it; the
 * same on every rank). */
static int place_ffn_layer(const ccoe_model *m, int k)
{
    if (!m->place || !m->place_active || m->gating.form != CCOE_FORM_FFN)
        return 0;
    for (int p = 1; p < m->n_paths; p++)
        if (place_dest(m, k, p) >= 0)
            return 1;
    return 0;
}

/* One FFN pass of instance k on this rank's rows [0, B) (fn: ffn_run_forward or
 * ffn_run_backward on io): the rows of paths the instance keeps here run locally; for the
 * rows of experts covering k, `there` (forward: FFN input; backward: d(FFN output)) goes to
 * the experts' owners, each owner runs fn on every rank's rows of its experts at once (rows
 * B.. of the buffers hold what it received), and `back` (forward: FFN output; backward:
 * d(FFN input), computed into zeros and added at the origin) returns. */
static void place_ffn_pass(ccoe_model *m, int k, int B, int T, ffn_run_fn fn,
                           const ffn_run_io *io, float *there, float *back, int backward)
{
    const size_t TC = (size_t)T * m->cfg.n_embd;
    for (int gi = 0; gi < m->n_groups; gi++)
        if (place_dest(m, k, m->group_path[gi]) < 0)
            fn(m, k, m->group_path[gi], m->group_r0[gi], m->group_r1[gi], 0, T, (void *)io);
    if (place_plan(m, k, B, TC) == 0)
        return;
    place_rows(m, 0, 1, 0, there, TC);
    place_exchange(m, 0);
    place_rows(m, 1, 0, 0, there, TC);
    if (backward)
        memset(back + (size_t)B * TC, 0, (size_t)m->place_R * TC * sizeof(float));
    for (int gi = m->n_groups; gi < m->n_groups + m->place_n_rgroups; gi++)
        fn(m, k, m->group_path[gi], m->group_r0[gi], m->group_r1[gi], 0, T, (void *)io);
    place_rows(m, 1, 1, 0, back, TC);
    place_exchange(m, 1);
    place_rows(m, 0, 0, backward, back, TC);
}

/* out = FFN(inp) of instance k on this rank's rows [0, B), expert rows on their owners. */
static void place_ffn_forward(ccoe_model *m, int k, int B, int T, float *out, float *inp)
{
    const ffn_run_io io = {.out = out, .inp = inp};
    place_ffn_pass(m, k, B, T, ffn_run_forward, &io, inp, out, 0);
}

/* dinp += dFFN/dinp^T dout of instance k, the plan of place_ffn_forward: the owners
 * accumulate the experts' gradients. */
static void place_ffn_backward(ccoe_model *m, int k, int B, int T, float *dinp, float *dout,
                               float *inp)
{
    const ffn_run_io io = {.out = dinp, .src = dout, .inp = inp};
    place_ffn_pass(m, k, B, T, ffn_run_backward, &io, dout, dinp, 1);
}

/* Eqs. 4-5: after the base prefix on the local rows [0, B) (place_count_rows done): sends
 * every expert row's branch input and targets to the expert's owner, runs the received groups
 * (own blocks, head) and the local base-path group's head, and returns the cross-entropy sum
 * of those rows. */
static double place_forward(ccoe_model *m, const int32_t *targets, int B, int T, long *count)
{
    const size_t C = (size_t)m->cfg.n_embd, V = (size_t)m->cfg.vocab_size;
    const size_t TC = (size_t)T * C, row_f = (size_t)T * (C + 1);
    assert(targets);
    (void)targets;
    place_plan(m, -1, B, row_f);
    for (int i = 0; i < m->place_nsend; i++) {
        const int r = m->place_send_row[i];
        float *dst = m->place_send + (size_t)i * row_f;
        memcpy(dst, inst_output(m, m->paths[m->row_path[r]].n_base - 1, r, T),
               TC * sizeof(float));
        for (int t = 0; t < T; t++)
            dst[TC + t] = (float)m->tgt_sorted[(size_t)r * T + t]; /* exact: |v| < 2^24 */
    }
    place_exchange(m, 0);
    const int R = m->place_R, ng = m->place_n_rgroups;
    for (int i = 0; i < R; i++) {
        const int row = m->place_recv_row[i];
        const float *src = m->place_recv + (size_t)i * row_f;
        int p = -1;
        for (int gi = m->n_groups; gi < m->n_groups + ng; gi++)
            if (row >= m->group_r0[gi] && row < m->group_r1[gi])
                p = m->group_path[gi];
        m->row_path[row] = p;
        memcpy(inst_output(m, m->paths[p].n_base - 1, row, T), src, TC * sizeof(float));
        for (int t = 0; t < T; t++)
            m->tgt_sorted[(size_t)row * T + t] = (int32_t)src[TC + t];
    }
    double loss = 0.0;
    long n = 0;
    for (int gi = 0; gi < m->n_groups + ng; gi++) {
        if (!place_head_group(m, gi))
            continue;
        const int r0 = m->group_r0[gi], nb = m->group_r1[gi] - r0;
        group_forward(m, m->group_path[gi], r0, nb, T);
        const size_t row = (size_t)r0 * T, N = (size_t)nb * T;
        for (size_t i = 0; i < N; i++)
            n += m->tgt_sorted[row + i] >= 0;
        loss += ccoe_crossentropy_forward(m->losses + row, m->logits + row * V,
                                          m->logits + row * V, m->tgt_sorted + row, (int)N,
                                          (int)V);
    }
    if (count)
        *count = n;
    return loss;
}

/* Backward of the heads and groups place_forward ran; leaves d(branch input) of every local
 * expert row (returned by its owner) in dx. */
static void place_backward(ccoe_model *m, float scale, float aux_scale)
{
    const int P = m->comm->size, T = m->last_T, B = m->place_B, R = m->place_R;
    const size_t C = (size_t)m->cfg.n_embd, V = (size_t)m->cfg.vocab_size;
    const size_t TC = (size_t)T * C, row_f = (size_t)T * (C + 1);
    memset(m->dx, 0, (size_t)(B + R) * TC * sizeof(float));
    for (int gi = 0; gi < m->n_groups + m->place_n_rgroups; gi++) {
        if (!place_head_group(m, gi))
            continue;
        const int r0 = m->group_r0[gi], nb = m->group_r1[gi] - r0;
        const size_t row = (size_t)r0 * T;
        ccoe_crossentropy_backward(m->logits + row * V, m->logits + row * V,
                                   m->tgt_sorted + row, scale, nb * T, (int)V);
        group_backward(m, m->group_path[gi], r0, nb, T, aux_scale);
    }
    /* d(branch input) of the received rows back to their ranks: the reverse exchange, T*C
     * floats per row (the forward's counts without the targets) */
    for (int q = 0; q < P; q++) {
        m->place_rd[q] = m->place_rd[q] / row_f * TC;
        m->place_rc[q] = m->place_rc[q] / row_f * TC;
        m->place_sd[q] = m->place_sd[q] / row_f * TC;
        m->place_sc[q] = m->place_sc[q] / row_f * TC;
    }
    place_rows(m, 1, 1, 0, m->dx, TC);
    place_exchange(m, 1);
    place_rows(m, 0, 0, 0, m->dx, TC);
}

/* ---- whole model ---- */

/* Whether the base blocks exchange rows (expert-parallel MoE blocks, placed Eqs. 6-7 FFNs):
 * then a rank without rows still runs them on zero rows to join every exchange. */
static int blocks_exchange(const ccoe_model *m)
{
    return moe_distributed(m) ||
           (m->place && m->place_active && m->gating.form == CCOE_FORM_FFN);
}

/* The base blocks on the sorted rows [0, B) from m->emb: block l on the rows whose path keeps
 * more than l base blocks (a prefix). */
static void base_forward(ccoe_model *m, int B, int T)
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
static void groups_forward(ccoe_model *m, int T)
{
    for (int gi = 0; gi < m->n_groups; gi++)
        group_forward(m, m->group_path[gi], m->group_r0[gi], m->group_r1[gi] - m->group_r0[gi], T);
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
    sort_rows(m, domains, B);
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
        m->place_bytes = 0;
        place_count_rows(m, B);
    }
    ccoe_embed_forward(m->emb, m->tok_sorted, m->wte, m->wpe, B, T, C);
    base_forward(m, B, T);
    if (placed && m->gating.form != CCOE_FORM_FFN)
        return place_forward(m, targets, B, T, count);
    groups_forward(m, T);
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

/* ---- incremental decoding ---- */

static void decode_free(ccoe_model *m)
{
    free(m->kv_cache);
    free(m->dec_row);
    free(m->dec_domain);
    free(m->dec_step_row);
    free(m->dec_step_pos);
    free(m->dec_step_dom);
    m->kv_cache = NULL;
    m->dec_row = m->dec_step_row = m->dec_step_pos = NULL;
    m->dec_domain = m->dec_step_dom = NULL;
    m->dec_maxB = 0;
}

ccoe_status ccoe_model_decode_prefill(ccoe_model *m, const int32_t *tokens,
                                      const int32_t *domains, int B, int T, ccoe_error *err)
{
    if (m->place && m->place_active)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "decoding needs the gathered model: clear place_active first");
    if (B < 1 || B > m->maxB || T < 1 || T > m->maxT)
        return ccoe_error_set(err, CCOE_ERR_ARG, "decode batch (%d, %d) outside (%d, %d)", B, T,
                              m->maxB, m->maxT);
    const size_t C2 = 2 * (size_t)m->cfg.n_embd, C3 = 3 * (size_t)m->cfg.n_embd;
    if (m->dec_maxB != m->maxB) {
        decode_free(m);
        const size_t nb = (size_t)m->maxB;
        m->kv_cache = ccoe_aligned_calloc((size_t)m->n_inst * nb * m->maxT * C2 * sizeof(float));
        m->dec_row = ccoe_aligned_calloc(nb * sizeof(int));
        m->dec_domain = ccoe_aligned_calloc(nb * sizeof(int32_t));
        m->dec_step_row = ccoe_aligned_calloc(nb * sizeof(int));
        m->dec_step_pos = ccoe_aligned_calloc(nb * sizeof(int));
        m->dec_step_dom = ccoe_aligned_calloc(nb * sizeof(int32_t));
        if (!m->kv_cache || !m->dec_row || !m->dec_domain || !m->dec_step_row ||
            !m->dec_step_pos || !m->dec_step_dom) {
            decode_free(m);
            return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the decoding cache");
        }
        m->dec_maxB = m->maxB;
    }
    ccoe_model_forward(m, tokens, NULL, domains, B, T, NULL);
    /* every instance's keys and values of every row (rows an instance did not run on hold
     * stale values that their sequences never read: a sequence keeps its path) */
    for (int k = 0; k < m->n_inst; k++)
        for (int r = 0; r < B; r++)
            for (int t = 0; t < T; t++)
                memcpy(kv_at(m, k, r, t), m->acts[k].qkv + ((size_t)r * T + t) * C3 + C2 / 2,
                       C2 * sizeof(float));
    for (int b = 0; b < B; b++) {
        m->dec_row[b] = m->row_of[b];
        m->dec_domain[b] = domains ? domains[b] : 0;
    }
    m->dec_B = B;
    m->dec_has_domains = domains != NULL;
    return CCOE_OK;
}

void ccoe_model_decode_step(ccoe_model *m, const int32_t *tok, const int *seq, const int *pos,
                            int n)
{
    assert(m->kv_cache && n >= 1 && n <= m->dec_B && !(m->place && m->place_active));
    const int C = m->cfg.n_embd;
    for (int j = 0; j < n; j++)
        m->dec_step_dom[j] = m->dec_domain[seq[j]];
    m->last_B = n;
    m->last_T = 1;
    sort_rows(m, m->dec_has_domains ? m->dec_step_dom : NULL, n);
    for (int r = 0; r < n; r++) {
        const int j = m->seq_at[r];
        assert(seq[j] >= 0 && seq[j] < m->dec_B && pos[j] >= 0 && pos[j] < m->maxT);
        m->tok_sorted[r] = tok[j];
        m->dec_step_row[r] = m->dec_row[seq[j]];
        m->dec_step_pos[r] = pos[j];
        if (m->n_moe > 0)
            m->moe_domains[r] = m->dec_step_dom[j];
        /* ccoe_embed_forward's sum at this row's own position (one call per row would open
         * a parallel region per token, which slows task evaluation markedly) */
        const float *te = m->wte + (size_t)tok[j] * C, *pe = m->wpe + (size_t)pos[j] * C;
        float *e = m->emb + (size_t)r * C;
        for (int c = 0; c < C; c++)
            e[c] = te[c] + pe[c];
    }
    m->aux_loss = 0.0;
    m->decoding = 1;
    base_forward(m, n, 1);
    groups_forward(m, 1);
    m->decoding = 0;
}

/* The float range [*begin, *end) of block instance k's parameters, padding included. */
static void inst_range(const ccoe_model *m, int k, size_t *begin, size_t *end)
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

void ccoe_model_backward(ccoe_model *m, float scale, float aux_scale)
{
    const int B = m->last_B, T = m->last_T;
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size, N = B * T;
    const int only = m->train_path;
    const int placed = m->place && m->place_active;
    if (placed && m->gating.form != CCOE_FORM_FFN) {
        /* heads here, expert rows' d(branch input) back from their owners into dx */
        place_backward(m, scale, aux_scale);
    } else {
        /* logits hold the probabilities after the forward; turn them into dlogits in place */
        ccoe_crossentropy_backward(m->logits, m->logits, m->tgt_sorted, scale, N, V);
        memset(m->dx, 0, (size_t)N * C * sizeof(float));
        /* heads and experts' own blocks, group by group: leaves d(branch input) in dx */
        for (int gi = 0; gi < m->n_groups; gi++) {
            const int p = m->group_path[gi];
            if (only >= 0 && p != only)
                continue;
            group_backward(m, p, m->group_r0[gi], m->group_r1[gi] - m->group_r0[gi], T,
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
        inst_range(m, m->cfg.n_layer - 1, &rb, &tail_begin);
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
            inst_range(m, l, &rb, &re);
            m->grad_ready(m->grad_ready_ctx, rb, re);
        }
    }
    if (m->grad_ready && tail_late)
        m->grad_ready(m->grad_ready_ctx, tail_begin, m->num_params);
    if (only > 0)
        return;
    ccoe_embed_backward(m->dwte, m->dwpe, m->dx, m->tok_sorted, B, T, C);
    if (m->grad_ready) {
        inst_range(m, 0, &rb, &re);
        m->grad_ready(m->grad_ready_ctx, 0, rb);
    }
}

const float *ccoe_model_logits(const ccoe_model *m, int b, int t)
{
    return m->logits + ((size_t)m->row_of[b] * m->last_T + t) * m->cfg.vocab_size;
}

double ccoe_model_train_flops_per_token(const ccoe_model_config *c, int n_blocks, int T)
{
    const double C = c->n_embd, V = c->vocab_size, L = n_blocks, F = c->ffn_hidden;
    const double F2 = c->ffn == CCOE_FFN_SWIGLU ? 2.0 * F : F;
    double matmul_params = L * (3.0 * C * C + C * C + F2 * C + C * F) + V * C;
    return 6.0 * matmul_params + 12.0 * L * C * T;
}

double ccoe_model_last_flops(const ccoe_model *m)
{
    const ccoe_model_config *c = &m->cfg;
    const double C = c->n_embd, V = c->vocab_size, T = m->last_T, F = c->ffn_hidden;
    const double Pb = 3.0 * C * C + C * C + (double)m->F2 * C + C * F; /* matmul params/block */
    /* an MoE block instead: the router matrices and K experts per token */
    double Pmoe = Pb;
    if (m->n_moe > 0) {
        const ccoe_moe *x = &m->moe;
        const double routers = (x->off_router != (size_t)-1) + (x->off_noise != (size_t)-1);
        Pmoe = 4.0 * C * C + routers * x->E * C + x->K * ((double)x->F2 * C + C * x->F);
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
