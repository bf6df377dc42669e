/* model.h - the decoder-only transformer: parameter layout, forward and backward.
 *
 * All parameters live in one aligned block, gradients in a second block with the same layout,
 * activations in a third, each sized from the config and a maximum (B, T) before the first step.
 * Order: wte (V,C), wpe (T,C) (model.pos = learned only), base blocks 0..L-1, base final norm (pre-LN only), lm_head (V,C)
 * unless tied, then each CCoE expert contiguously (its blocks, then its own norm/head if
 * configured), so an expert is one copy, one send, one safetensors slice. Tensor names
 * ("wte", "blocks.3.attn.qkv.weight", "experts.arith.blocks.0.mlp.fc.weight", ...) are listed
 * in the README.
 *
 * CCoE (Eqs. 4-5): every sequence follows the path of its domain: the base prefix, then its
 * expert's blocks and head. Rows of a batch are sorted by path so each block runs once on a
 * contiguous row range: base block l on the rows whose prefix is longer than l, expert blocks on
 * their group. Eqs. 6-7 (form = ffn): every path runs all L base blocks; in blocks L - l_e ..
 * L - 1 the rows of expert e's group use the expert's FFN ("experts.<name>.blocks.<j>.mlp.*",
 * j = 0 .. l_e - 1, contiguous like any expert) instead of the base FFN.
 *
 * Blocks are pre-LN (x + Attn(LN(x)), then x + FFN(LN(x))) or post-LN (CCoE Eqs. 6-7:
 * h = LN(x + Attn(x)), y = LN(h + FFN(h))). Forward/backward never allocate.
 *
 * Mixture of Experts ([moe], src/moe.h): base blocks selected by ccoe_config_moe_block have an
 * MoE layer instead of the dense FFN; its tensors ("blocks.3.moe.router.weight",
 * "blocks.3.moe.experts.5.fc.weight", ...) take the place of mlp.* in the layout, in the
 * layer's order (ccoe_moe_tensor_at), so each MoE block's region is one contiguous range and
 * each expert within it too. CCoE expert blocks stay dense.
 */
#ifndef CCOE_MODEL_H
#define CCOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "comm.h"
#include "config.h"
#include "taskmap.h"
#include "gemm.h"
#include "moe.h"
#include "row_exchange.h"
#include "status.h"

#define CCOE_MAX_PARAMS 4096
#define CCOE_PARAM_NAME 96 /* "experts.<name, <= 32>.blocks.<j>.attn.qkv.weight" fits */

/* One named tensor inside the parameter block. */
typedef struct ccoe_param {
    char name[CCOE_PARAM_NAME];
    int ndim;
    int64_t shape[4];
    size_t offset; /* in floats from the start of the block */
    size_t numel;
    int decay;     /* AdamW weight decay applies (matrices only) */
    int block;     /* block instance index, or -1 for embeddings / heads */
    int expert;    /* owning CCoE expert, or -1 for the base */
} ccoe_param;

/* Pointers of one transformer block into a parameter-shaped block (params or grads). NULL
 * where the config has no such tensor (biases off, RMSNorm has no bias). */
typedef struct ccoe_block_view {
    float *ln1_w, *ln1_b;     /* (C) */
    float *qkv_w, *qkv_b;     /* (W, C), (W); W = (H + 2 Hkv) hd rows [q | k | v] */
    float *proj_w, *proj_b;   /* (C, C), (C) */
    float *ln2_w, *ln2_b;     /* (C) */
    float *fc_w, *fc_b;       /* (F or 2F for swiglu, C), (F or 2F) */
    float *fcproj_w, *fcproj_b; /* (C, F), (C) */
} ccoe_block_view;

/* Final norm (pre-LN only) and LM head of one path. */
typedef struct ccoe_head_view {
    float *lnf_w, *lnf_b; /* (C) */
    float *lm_head;       /* (V, C); == wte when tied */
} ccoe_head_view;

/* Saved activations of one block instance (capacity maxB*maxT rows). */
typedef struct ccoe_block_acts {
    float *ln1, *ln1_mean, *ln1_rstd; /* (N,C), (N), (N); post-LN: LN(x + attn) */
    float *qkv;                       /* (N, W); q, k rotated with RoPE */
    float *atty;                      /* (N, C) attention output before projection */
    float *lse;                       /* (B, H, T) */
    float *res1;                      /* (N, C) x + attn */
    float *ln2, *ln2_mean, *ln2_rstd; /* (N,C), (N), (N); post-LN: the block output */
    float *fch;                       /* (N, F) or (N, 2F); NULL for an MoE block */
    float *fch_act;                   /* (N, F); NULL for an MoE block */
    float *res2;                      /* (N, C) */
} ccoe_block_acts;

/* One execution path: the base prefix, then (for an expert) the expert's own blocks, then a
 * head. Path 0 is the base model; path 1 + e is expert e. */
typedef struct ccoe_path {
    int n_base;        /* base blocks 0..n_base-1 run first */
    int first_inst;    /* first block instance of the expert's own blocks */
    int n_own;         /* the expert's own blocks */
    int head;          /* head index (0 = the base head) */
    int ffn_expert;    /* Eqs. 6-7: expert whose FFNs replace the base FFNs of blocks
                        * ffn_from..L-1 on this path; -1 = none */
    int ffn_from;
} ccoe_path;

typedef struct ccoe_model {
    ccoe_model_config cfg;
    ccoe_taskmap taskmap;    /* CCoE structure (zero experts for a plain model) */
    int F2;                 /* rows of fc_w: F (gelu) or 2F (swiglu) */
    int Hkv, hd, W;         /* key/value heads, head size, qkv row width (H + 2 Hkv) hd */
    int maxB, maxT;         /* activation capacity */
    const ccoe_gemm *gemm;  /* borrowed */
    int nthreads;

    ccoe_param params[CCOE_MAX_PARAMS];
    int n_params;           /* tensors */
    size_t num_params;      /* floats */
    size_t expert_begin[CCOE_MAX_EXPERTS], expert_end[CCOE_MAX_EXPERTS]; /* float ranges */

    int n_inst;             /* block instances: L base, then each expert's l_j in order */
    int *inst_input;        /* (n_inst) instance whose output feeds it; -1 = the embedding */
    int n_heads;            /* 1, or 1 + n_experts with own heads */
    int n_paths;            /* 1 + n_experts */
    ccoe_path paths[CCOE_MAX_EXPERTS + 1];
    int train_path;         /* >= 0: isolated expert training; backward touches only this path */

    ccoe_arena param_mem, grad_mem, act_mem;
    float *param_block;     /* (num_params) */
    float *grad_block;      /* (num_params) */
    float *wte, *wpe;       /* params: (V, C), (T, C) or NULL (RoPE) */
    float *dwte, *dwpe;     /* grads */
    ccoe_block_view *w_blocks, *g_blocks; /* (n_inst) */
    /* Eqs. 6-7 (form = ffn): expert e's FFN j (fc/fcproj members only) at xffn_first[e] + j */
    ccoe_block_view *w_xffn, *g_xffn;     /* (sum of l_e) */
    int xffn_first[CCOE_MAX_EXPERTS];
    ccoe_head_view *w_heads, *g_heads;    /* (n_heads) */

    /* activations */
    int32_t *tok_sorted, *tgt_sorted; /* (N) the batch with rows sorted by path */
    int *row_of;            /* (maxB) sorted row of original sequence b */
    int *seq_at;            /* (maxB) original sequence at sorted row r */
    int *row_path;          /* (maxB) path of sorted row r */
    int n_groups;           /* contiguous runs of rows with one path, last forward */
    int *group_path, *group_r0, *group_r1; /* (maxB) */
    int last_B, last_T;
    float *emb;             /* (N, C) */
    ccoe_block_acts *acts;  /* (n_inst) */
    float *lnf, *lnf_mean, *lnf_rstd; /* (N,C), (N), (N) */
    float *logits;          /* (N, V); probs after the loss, dlogits in backward */
    float *losses;          /* (N) */
    /* backward scratch */
    float *dx, *dtmp, *dln, *datty, *dqkv, *dfch, *dfch_act;
    float *attn_scratch;
    float *rope_cos, *rope_sin; /* (maxT, hd / 2) each when model.pos = rope, else NULL */
    size_t act_floats;

    /* Mixture of Experts (n_moe = 0: a dense model) */
    int n_moe;              /* MoE blocks */
    ccoe_moe moe;           /* the layer (sizes, parameter layout), shared by every MoE block */
    int *moe_of;            /* (n_inst) index among the MoE blocks, -1 = dense FFN */
    int *moe_layer;         /* (n_moe) base block of each MoE block */
    size_t *moe_offset;     /* (n_moe) start of each MoE block's region in the param block */
    ccoe_moe_acts *moe_acts;      /* (n_moe) saved state of the last forward */
    ccoe_moe_scratch moe_scratch; /* backward scratch shared by the MoE blocks */
    int32_t *moe_domains;   /* (maxB) domain of each sorted row (domain gate) */
    ccoe_moe_stats *moe_stats; /* (n_moe) statistics of the last forward (and its backward) */
    double aux_loss;        /* sum over MoE blocks of the weighted aux losses, last forward */
    /* routing context of the next forwards (ccoe_moe_pass): set by the caller */
    int train;              /* 1: training (noisy gates draw noise); 0 (default): evaluation */
    uint64_t seed;          /* noise key */
    uint64_t step;          /* optimizer step (noise key) */
    int64_t token_offset;   /* global index of row 0 of the next forward among the step's tokens */
    ccoe_comm *comm;        /* borrowed; NULL = serial (one rank). Set by the trainer. */
    /* optional (NULL = none): ccoe_model_backward calls grad_ready(grad_ready_ctx, begin, end)
     * as soon as the gradients of the float range [begin, end) of the gradient block are final,
     * in this order and whatever the data: [end of base block L-1, num_params) (base head and
     * every CCoE expert) first, then base blocks L-1 .. 0 (each its own range) and last
     * [0, start of block 0) (wte, wpe); with train_path > 0 only the first call. The trainer
     * starts the data-parallel gradient allreduce of finished buckets from it (src/train_dp.c). */
    void (*grad_ready)(void *ctx, size_t begin, size_t end);
    void *grad_ready_ctx;
    /* CCoE expert placement (Eqs. 4-5 over ranks; ccoe_model_set_placement). Rows
     * [0, rx.B) of the activations are this rank's sorted rows, rows [rx.B, rx.B + rx.R) the
     * rows other ranks (and this one) sent to the experts it owns; the received groups follow
     * the local ones in group_* (indices n_groups .. n_groups + rx.n_rgroups). */
    int place;                 /* placement set up (ccoe_model_set_placement) */
    int place_active;          /* forward/backward exchange; the trainer sets it while training */
    int place_owner[CCOE_MAX_EXPERTS]; /* rank of each CCoE expert (src/placement.h) */
    int place_maxB;            /* local rows a forward may pass (maxB before placement) */
    /* the rows' exchange (plan of the last exchange; rx.B local rows, rx.R received, rx.bytes
     * sent to other ranks by the last forward + backward) */
    ccoe_row_exchange rx;
    /* the first failed exchange inside forward/backward (CCOE_OK: none): from then on the
     * model skips its exchanges (the communicator is unusable); ccoe_model_comm_status */
    ccoe_status comm_status;
    ccoe_error comm_err;
    /* incremental decoding (ccoe_model_decode_prefill / _step): the keys and values of every
     * block instance, (n_inst, dec_maxB, maxT, 2C), allocated by the first prefill */
    float *kv_cache;
    int dec_maxB;
    int decoding;              /* a decode step runs: attention reads and extends kv_cache */
    int dec_B;                 /* sequences of the last prefill */
    int dec_has_domains;
    int *dec_row;              /* (dec_maxB) cache row of each prefilled sequence */
    int32_t *dec_domain;       /* (dec_maxB) domain of each prefilled sequence */
    int *dec_step_row, *dec_step_pos; /* (dec_maxB) cache row and position of each sorted row */
    int32_t *dec_step_dom;     /* (dec_maxB) domain of each step row, step order */
    /* totals over the forwards since ccoe_model_moe_reset_totals, while collect_moe is set */
    int collect_moe;
    int64_t *moe_tot_tokens;  /* (n_moe, E) kept slots per expert */
    int64_t *moe_tot_rows;    /* (n_moe) tokens routed */
    int64_t *moe_tot_dropped; /* (n_moe, 3) dropped slots, dropped tokens, and the slots the
                                 training capacity would drop (ccoe_moe_stats) */
    double *moe_tot_entropy;  /* (n_moe, 2) token-weighted sums of gate and router entropy */
} ccoe_model;

/* Builds the layout and allocates params, grads and activations for batches up to (maxB,maxT).
 * cfg must be validated and its vocab_size resolved. gating (may be NULL: a plain model)
 * adds each CCoE expert's blocks (and heads) and the domain -> path routing. */
ccoe_status ccoe_model_init(ccoe_model *m, const ccoe_model_config *cfg,
                            const ccoe_taskmap *gating, int maxB, int maxT, const ccoe_gemm *g,
                            int nthreads, ccoe_error *err);
/* The same with Mixture-of-Experts FFNs: moe (may be NULL, or gate none: a dense model, as
 * ccoe_model_init) selects the MoE blocks and the layer; the [moe] section must have passed
 * ccoe_config_validate together with cfg. Anything that rebuilds a model from a stored config
 * must use this with &config.moe, or an MoE checkpoint will not load. */
ccoe_status ccoe_model_init_moe(ccoe_model *m, const ccoe_model_config *cfg,
                                const ccoe_taskmap *gating, const ccoe_moe_section *moe, int maxB,
                                int maxT, const ccoe_gemm *g, int nthreads, ccoe_error *err);
/* A model that only holds weights, for converting or inspecting them (import, export): the
 * layout and parameters of ccoe_model_init_moe, no gradient block (grad_block and the gradient
 * views NULL) and activations for one token only. Forward on B = T = 1 works; backward,
 * zero_grad and the optimizer must not be called. */
ccoe_status ccoe_model_init_weights_only(ccoe_model *m, const ccoe_model_config *cfg,
                                         const ccoe_taskmap *gating,
                                         const ccoe_moe_section *moe, const ccoe_gemm *g,
                                         ccoe_error *err);
void ccoe_model_free(ccoe_model *m);

/* GPT-2 initialisation from seed: N(0, init_std), residual projections scaled by 1/sqrt(2L),
 * norm weights 1, biases 0; MoE regions by ccoe_moe_init_weights (router N(0, init_std), noise
 * weights 0, expert projections the residual-scaled std). With init = copy, each expert then starts as a copy of the base
 * blocks at its position (and of the base head). */
void ccoe_model_init_weights(ccoe_model *m, uint64_t seed, ccoe_expert_init init);

/* Copies the base blocks expert e replaces (its position in the base: blocks branch..) and the
 * base head into expert e (the `copy` initialisation of a new expert). */
void ccoe_model_expert_copy_base(ccoe_model *m, int e);

/* Forward on tokens (B,T) (B <= maxB, T <= maxT). domains (B) is each sequence's domain id,
 * which selects its path (may be NULL: every sequence takes the base path). With targets (B,T)
 * (entries < 0 ignored), computes the loss: returns the SUM of per-token losses and sets
 * *count to the number counted. Without targets (NULL) only the logits (B,T,V) are computed;
 * returns 0. MoE blocks route with the pass {train, seed, step, layer, token_offset, domains}
 * taken from the model's fields (domains NULL: every sequence is domain 0 for the domain gate)
 * and leave the summed aux loss in m->aux_loss (not part of the returned sum) and their
 * statistics in m->moe_stats. */
double ccoe_model_forward(ccoe_model *m, const int32_t *tokens, const int32_t *targets,
                          const int32_t *domains, int B, int T, long *count);

/* Backward of the last forward (which must have had targets, and reuses its routing):
 * ACCUMULATES into the gradient block d(loss_sum * scale + aux_loss * aux_scale)/d(params)
 * (the trainer passes scale = 1 / (tokens * grad_accum) and aux_scale = 1 / grad_accum;
 * papers/moe.md). With train_path >= 0 only that path's own parameters receive gradients (the
 * frozen base is not differentiated). */
void ccoe_model_backward(ccoe_model *m, float scale, float aux_scale);

/* Sets the communicator the model runs on (borrowed; NULL = serial). For an MoE model on more
 * than one rank this turns on expert parallelism: expert e of every MoE layer on rank owner[e]
 * (moe.E entries, the same on every rank, e.g. from ccoe_placement_map; NULL = contiguous
 * blocks of experts per rank; ccoe_moe_set_placement), MoE buffers resized and the
 * activations carved again, so call it after ccoe_model_init_moe and before the first
 * forward, on every rank (COLLECTIVE: the
 * ranks agree on the largest batch any of them passes, maxB may differ). From then on every
 * forward and backward of the model is COLLECTIVE on comm (each MoE block exchanges tokens);
 * the trainer's side of the contract (which parameter regions each rank owns, gradient sums,
 * syncing experts before a checkpoint) is in src/moe_ep_train.h. Setting m->comm directly instead keeps
 * the MoE blocks rank-local (plain data parallelism: every rank runs every expert on its own
 * rows; capacity and aux losses per rank, not equal to the one-process run). */
ccoe_status ccoe_model_set_comm(ccoe_model *m, ccoe_comm *comm, const int32_t *owner,
                                ccoe_error *err);

/* CCoE expert placement (Eqs. 4-5 and 6-7 under MPI, no MoE blocks): expert e lives on rank
 * owner[e] (gating.n_experts entries, the same on every rank, e.g. from ccoe_placement_map;
 * NULL = contiguous blocks of experts per rank; a rank may own none; CCOE_ERR_CONFIG for an
 * owner outside [0, P)). Sets m->comm and grows the activations to this rank's maxB plus
 * global_maxB received rows (the received rows are at most the global batch). From then on,
 * while m->place_active
 * is set, forward and backward are COLLECTIVE: every rank runs the base prefix on its own rows
 * (B = 0 allowed), sends each expert row's branch input and targets to the expert's owner
 * (alltoallv), the owner runs the expert blocks, head and cross-entropy, and backward returns
 * d(branch input) the same way. Base-path rows stay local. Forward must have targets (training
 * only: evaluate with place_active = 0 after syncing the experts from their owners); the
 * returned loss sum and count cover the rows whose loss this rank computed (its base-path rows
 * and its received rows), so their sums over ranks are the global ones; ccoe_model_logits is
 * not valid for expert rows. Form ffn (Eqs. 6-7; shared head only, CCOE_ERR_CONFIG for own
 * heads): every row runs every base block and the head on its own rank; in each block an
 * expert covers, the expert rows' FFN input goes to the owner, which runs the expert's FFN on
 * every rank's rows at once, and the output (backward: d(FFN input)) comes back; forward
 * returns this rank's rows' loss as without placement. An expert's gradient is complete on
 * its owner and zero elsewhere.
 * Call once, after ccoe_model_init and before the first forward, on every rank. */
ccoe_status ccoe_model_set_placement(ccoe_model *m, ccoe_comm *comm, int global_maxB,
                                     const int32_t *owner, ccoe_error *err);

/* CCOE_OK, or the first failed exchange (CCOE_ERR_COMM, copied into err) of the forwards and
 * backwards since the comm was set: forward and backward return no status, so the caller
 * checks this after each of them and must end the job (the other ranks may be waiting in the
 * exchange this rank left); the model's outputs after a failure are meaningless. */
ccoe_status ccoe_model_comm_status(const ccoe_model *m, ccoe_error *err);

/* Incremental decoding (greedy generation). ccoe_model_decode_prefill is ccoe_model_forward
 * without targets on tokens (B,T) (the logits of every position as there) that also keeps the
 * keys and values of every block, so that ccoe_model_decode_step extends the sequences one
 * token at a time without recomputing their prefixes. Not with placement active (evaluate the
 * gathered model); COLLECTIVE under expert-parallel MoE like the forward. The first call
 * allocates the cache (CCOE_ERR_NOMEM). */
ccoe_status ccoe_model_decode_prefill(ccoe_model *m, const int32_t *tokens,
                                      const int32_t *domains, int B, int T, ccoe_error *err);
/* One token for each of n prefilled sequences: sequence seq[j] (its index in the prefill
 * batch, distinct) gets token tok[j] at position pos[j] < maxT; positions 0 .. pos[j] - 1 of
 * it must have been computed (by the prefill, for positions < its T, or by earlier steps). The
 * logits of the new token: ccoe_model_logits(m, j, 0). Equals a full forward on the extended
 * sequences up to rounding, except that an MoE layer with capacity_factor > 0 decides its
 * capacity over the tokens of each call. */
void ccoe_model_decode_step(ccoe_model *m, const int32_t *tok, const int *seq, const int *pos,
                            int n);

/* Zeroes the MoE totals (the per-expert counts the evaluation prints). */
void ccoe_model_moe_reset_totals(ccoe_model *m);

/* 1 if a forward exchanges rows with the other ranks (expert-parallel MoE blocks, or active
 * CCoE placement): then every rank must run every forward, with zero rows if need be. */
int ccoe_model_forward_collective(const ccoe_model *m);

/* Zeroes the gradient block. */
void ccoe_model_zero_grad(ccoe_model *m);

/* Logits row of (b, t) of the last forward: (V). */
const float *ccoe_model_logits(const ccoe_model *m, int b, int t);

/* Looks a parameter tensor up by name; NULL if absent. */
const ccoe_param *ccoe_model_find_param(const ccoe_model *m, const char *name);

/* Model FLOPs per trained token (forward + backward = 3x forward; matmuls incl. the LM head
 * plus causal-attention score/value products, PaLM convention 6N + 12 L C T) of a path with
 * n_blocks blocks. */
double ccoe_model_train_flops_per_token(const ccoe_model_config *cfg, int n_blocks, int T);

/* Model FLOPs of the last forward + backward (per path actually taken; with train_path >= 0
 * the backward covers only the trained expert and its head). */
double ccoe_model_last_flops(const ccoe_model *m);

/* Forward model FLOPs per token of `path` at sequence length T (inference cost: matmuls of
 * its blocks and head, 2 per multiply-add, plus causal-attention products as 4 L C T). MoE
 * blocks count their k active experts. */
double ccoe_model_path_forward_flops(const ccoe_model *m, int path, int T);

/* Parameters a token of `path` uses (embeddings, its blocks, its head). */
size_t ccoe_model_path_params(const ccoe_model *m, int path);

#endif
