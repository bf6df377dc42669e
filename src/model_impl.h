/* model_impl.h - what the files of the model share and nothing else includes.
 *
 * The model is one object (ccoe_model, model.h) whose code is split by kind of state:
 *   model.c         the network: set-up of activations and MoE blocks, the blocks, the paths,
 *                   forward and backward;
 *   model_params.c  the parameter layout, tensor views, initialisation, expert copies;
 *   model_decode.c  incremental decoding (the KV cache, prefill, step);
 *   model_place.c   CCoE expert placement over ranks (rows through src/row_exchange.h);
 *   model_cost.c    FLOP and parameter accounting.
 * Functions here are internal (model_ prefix); the public API is model.h.
 */
#ifndef CCOE_MODEL_IMPL_H
#define CCOE_MODEL_IMPL_H

#include "model.h"

/* Whether the CCoE experts are FFNs of base blocks (form flag CCOE_FF_EXPERT_FFN, Eqs. 6-7)
 * rather than whole blocks of their own (Eqs. 4-5). */
static inline int model_experts_are_ffns(const ccoe_model *m)
{
    return ccoe_form_expert_ffn(m->taskmap.ops);
}

/* Output of instance k (or the embedding for k = -1) at sequence s0. */
static inline float *model_inst_output(const ccoe_model *m, int k, int s0, int T)
{
    const size_t r = (size_t)s0 * T * m->cfg.n_embd;
    if (k < 0)
        return m->emb + r;
    const ccoe_block_acts *a = &m->acts[k];
    return (m->cfg.block == CCOE_BLOCK_PRE_LN ? a->res2 : a->ln2) + r;
}

/* ---- model_params.c ---- */

/* The parameter layout of m's config, gating and MoE blocks (m->params, num_params,
 * expert_begin/end). Counts past CCOE_MAX_PARAMS without writing (the caller reports it). */
void model_build_layout(ccoe_model *m);
/* The tensor PREFIX SUFFIX inside base (the parameter or gradient block), or NULL. */
float *model_tensor_at(const ccoe_model *m, float *base, const char *prefix, const char *suffix);
/* Block, head and (Eqs. 6-7) expert-FFN views into base. */
void model_make_views(ccoe_model *m, float *base, ccoe_block_view *blocks,
                      ccoe_head_view *heads, ccoe_block_view *xffn);
/* Block instances, their inputs, and the paths. */
void model_build_paths(ccoe_model *m);
/* The float range [*begin, *end) of block instance k's parameters, padding included. */
void model_inst_range(const ccoe_model *m, int k, size_t *begin, size_t *end);

/* ---- model.c ---- */

/* Sizes the activations for m->maxB rows with a counting pass, allocates them and carves them. */
ccoe_status model_alloc_acts(ccoe_model *m, ccoe_error *err);
/* The order of the paths in a sorted batch: by n_base descending, then id. order (n_paths). */
void model_path_order(const ccoe_model *m, int *order);
/* Sorts the batch rows by path (row_of, seq_at, row_path, group_*). */
void model_sort_rows(ccoe_model *m, const int32_t *domains, int B);
/* The base blocks on sorted rows [0, B); every group's own blocks and head. */
void model_base_forward(ccoe_model *m, int B, int T);
void model_groups_forward(ccoe_model *m, int T);
/* One group of rows [r0, r0 + nb) of path p: its own blocks and head, and their backward. */
void model_group_forward(ccoe_model *m, int p, int r0, int nb, int T);
void model_group_backward(ccoe_model *m, int p, int r0, int nb, int T, float aux_scale);
/* Keeps the first failed exchange inside forward/backward (ccoe_model_comm_status). */
void model_comm_failed(ccoe_model *m, const char *what, const ccoe_error *err);

/* One FFN run: instance k's FFN on sorted sequences [r0, r1) of path p, within a block range
 * starting at sequence s0 (ctx: ffn_run_io). */
typedef void (*ffn_run_fn)(ccoe_model *m, int k, int p, int r0, int r1, int s0, int T, void *ctx);

/* Pointers at sequence s0 of the block's range, for one FFN run. */
typedef struct ffn_run_io {
    float *out;       /* forward: FFN output; backward: dinp */
    const float *src; /* backward: dout */
    const float *inp; /* FFN input */
} ffn_run_io;

void model_ffn_run_forward(ccoe_model *m, int k, int p, int r0, int r1, int s0, int T, void *ctx);
void model_ffn_run_backward(ccoe_model *m, int k, int p, int r0, int r1, int s0, int T,
                            void *ctx);

/* ---- model_decode.c ---- */

/* Decode step: the new token of sorted rows [s0, s0 + nb) joins instance k's cache, then
 * attends to its sequence's cached positions. */
void model_attn_decode(const ccoe_model *m, int k, int s0, ccoe_block_acts *a, int nb);
/* Prefill: the keys and values of instance k's sorted rows [s0, s0 + nb) (qkv at row s0,
 * after RoPE) into the cache, at cache rows s0.. (a prefill's rows are its cache rows). */
void model_prefill_keep_kv(const ccoe_model *m, int k, int s0, int nb, int T, const float *qkv);
/* Frees the decoding cache. */
void model_decode_free(ccoe_model *m);

/* ---- model_place.c ---- */

/* COLLECTIVE: every rank's rows per path, once per placed forward. */
void model_place_count_rows(ccoe_model *m, int B);
/* Eqs. 6-7 placement: whether instance k's FFN exchanges rows (the same on every rank). */
int model_place_ffn_layer(const ccoe_model *m, int k);
/* COLLECTIVE: FFN of instance k on this rank's rows [0, B), expert rows on their owners, and
 * its backward (dinp += ...). */
void model_place_ffn_forward(ccoe_model *m, int k, int B, int T, float *out, float *inp);
void model_place_ffn_backward(ccoe_model *m, int k, int B, int T, float *dinp, float *dout,
                              float *inp);
/* COLLECTIVE: Eqs. 4-5 after the base prefix: expert rows to their owners, heads, loss sum. */
double model_place_forward(ccoe_model *m, const int32_t *targets, int B, int T, long *count);
/* COLLECTIVE: backward of model_place_forward; d(branch input) of local rows in dx. */
void model_place_backward(ccoe_model *m, float scale, float aux_scale);

#endif
