/* moe.h - the Mixture-of-Experts layer: a drop-in replacement for a block's FFN.
 *
 *   out (N, C) = sum over a token's kept slots j of  weight[n, j] * Expert_{ids[n, j]}(h[n])
 *                + sum over the n_shared shared experts s of Shared_s(h[n])   (DeepSeekMoE)
 *
 * h -> router (logits = h W_g^T, noisy gates also h W_noise^T) -> gate (variants/gate.h:
 * softmax, topk, noisy_topk, domain, hash, lossfree) -> capacity -> experts (FFNs: GELU or SwiGLU, hidden F,
 * biases optional) on contiguous per-expert row groups -> weighted combine. Auxiliary losses
 * (Shazeer importance and load, Switch/GShard, router z-loss) are computed in forward and their
 * gradients added in backward. Math and derivations: papers/moe.md.
 *
 * What it is not: it does not own memory. Parameters and gradients live in the caller's blocks
 * (ccoe_moe_tensor_at gives the layout of the layer's region), saved activations and backward
 * scratch are carved by the caller from its arenas (ccoe_moe_acts_carve, ccoe_moe_scratch_carve)
 * before the first step; forward and backward never allocate. No residual: a token whose slots
 * are all dropped gets out = 0 and the caller's residual carries h.
 *
 * Expert parallelism (ccoe_moe_set_placement, ccoe_moe_forward_ep / ccoe_moe_backward_ep): the
 * experts are spread over the P ranks of a communicator (src/comm.h; the layer never includes
 * <mpi.h>); each rank routes its own tokens, sends each kept (token, expert) row to the rank
 * owning the expert (count exchange, then alltoallv), the owners run their experts and send the
 * outputs back for the weighted combine; backward runs the same plan in reverse. Capacity,
 * aux losses and statistics are global: the same values for any P (papers/moe.md, "Expert
 * parallelism"). The serial functions never communicate.
 *
 * Conventions (as kernels.h): outputs first; forward OVERWRITES out; backward ACCUMULATES into
 * dinp and the gradient region. Dimension letters: N tokens (rows), C channels, E experts, K
 * slots per token (top-k), F expert hidden size (F2 = F, or 2F for SwiGLU's [gate | up] rows),
 * R packed rows (<= N K).
 */
#ifndef CCOE_MOE_H
#define CCOE_MOE_H

#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "comm.h"
#include "config.h"
#include "gate.h"
#include "gemm.h"
#include "status.h"

#define CCOE_MOE_MAX_EXPERTS CCOE_GATE_MAX_EXPERTS
#define CCOE_MOE_MAX_DOMAINS 256
#define CCOE_MOE_NAME 48 /* tensor names relative to the layer: "experts.511.proj.weight" */

typedef enum ccoe_moe_expert_kind {
    CCOE_MOE_GELU = 0,  /* fc (F, C) [+ bias F], GELU, proj (C, F) [+ bias C] */
    CCOE_MOE_SWIGLU = 1 /* fc (2F, C) rows [gate | up] [+ bias 2F], SwiGLU, proj (C, F) [+ bias] */
} ccoe_moe_expert_kind;

/* Plain data (copyable, hashable). ccoe_moe_defaults fills it; ccoe_moe_validate checks it. */
typedef struct ccoe_moe_config {
    char gate[32];          /* a name of the gate registry (variants/gates.def) */
    int n_experts;          /* E, 1..CCOE_MOE_MAX_EXPERTS */
    int top_k;              /* K: 1..E; softmax needs K = E, domain K = 1 */
    int ffn_hidden;         /* F of each expert, >= 1 (fine-grained experts: small F) */
    ccoe_moe_expert_kind expert;
    int bias;               /* experts' linear layers have biases (router never has) */
    int renormalize;        /* topk only: 1 (default) kept weights sum to 1, 0 = raw softmax
                               probabilities; the other gates require 1 */
    double capacity_factor; /* 0 = dropless, else >= 1: capacity = ceil(cf * N * K / E) rows
                               per expert, in training passes (pass->train = 1) */
    double eval_capacity_factor; /* the same for evaluation passes (pass->train = 0:
                               evaluation, decoding); 0 = dropless (the default) */
    double noise_eps;       /* noisy_topk only: sigma = softplus(h W_noise) + noise_eps; 0 is
                               Eq. 3 exactly (tensor2tensor uses 1e-2) */
    double w_importance;    /* Shazeer: w * CV(Importance)^2 */
    double w_load;          /* Shazeer: w * CV(Load)^2, smooth load; noisy_topk with K < E */
    double w_switch;        /* Switch/GShard: w * E * sum_i f_i P_i */
    double w_z;             /* router z-loss: w * mean_n logsumexp(logits_n)^2 */
    double w_seq;           /* gates with CCOE_GATE_SCORE_BIAS (lossfree): DeepSeek-V3's
                               sequence-wise balance loss w * mean over sequences of
                               sum_i f_i P_i on the sigmoid affinities; 0 for other gates */
    double bias_rate;       /* gates with CCOE_GATE_SCORE_BIAS (lossfree): the step of the
                               selection-bias update (ccoe_moe_bias_update); 0 = bias frozen;
                               must be 0 for the other gates */
    int n_shared;           /* shared experts (DeepSeekMoE): FFNs of the routed experts' shape
                               that every token passes through with weight 1, beside its K
                               routed ones; 0..n_experts, default 0 */
    int n_domains;          /* domain gate: entries of domain_expert */
    int32_t domain_expert[CCOE_MOE_MAX_DOMAINS]; /* domain gate: domain d -> expert index */
} ccoe_moe_config;

/* The layer: a validated config plus the derived sizes and the parameter layout. */
/* How the expert FFNs use the threads (ccoe_moe.schedule). */
typedef enum ccoe_moe_schedule {
    CCOE_MOE_SCHED_AUTO = 0, /* experts in parallel when their row groups balance, else GEMMs */
    CCOE_MOE_SCHED_GEMM,     /* experts one after another, each GEMM on all threads */
    CCOE_MOE_SCHED_EXPERTS   /* experts spread over the threads, single-threaded GEMMs */
} ccoe_moe_schedule;

typedef struct ccoe_moe {
    ccoe_moe_config cfg;
    ccoe_moe_schedule schedule; /* AUTO after init; may be changed between calls */
    const ccoe_gate_ops *gate;
    const ccoe_gemm *gemm;   /* borrowed */
    int C, E, K, F, F2;
    int maxN;                /* rows the carved buffers hold */
    int max_rows;            /* R capacity of the packed buffers: min(maxN K, E cap(maxN)) */
    /* parameter layout, in floats from the start of the layer's region; every tensor starts
     * on a 16-float (64-byte) boundary */
    size_t off_router, off_noise; /* (E, C) each, or (size_t)-1 when absent */
    size_t off_score_bias;        /* (E) selection bias (CCOE_GATE_SCORE_BIAS), or -1 */
    size_t off_shared;            /* shared expert s's tensors: [off_shared + s stride, + stride),
                                     -1 when there are none */
    size_t off_experts;           /* expert e's tensors: [off_experts + e stride, + stride) */
    size_t expert_stride;
    size_t off_fc_w, off_fc_b, off_proj_w, off_proj_b; /* within an expert; -1 when absent */
    size_t num_params;            /* floats of the whole region (padding included) */
    int n_tensors;
    /* expert parallelism (ccoe_moe_set_placement); ep_size = 0: not distributed */
    int ep_size, ep_rank;         /* P and this process's rank */
    int ep_local;                 /* experts this rank owns */
    int max_home;                 /* rows of this rank's kept slots: maxN K (0 serially) */
    int max_recv;                 /* rows this rank's experts can receive in one call */
    int ep_max_peer;              /* largest N any rank passes (set_placement's max_peer_rows) */
    int32_t ep_owner[CCOE_MOE_MAX_EXPERTS]; /* (E) rank owning expert e (all 0 serially) */
} ccoe_moe;

/* One parameter tensor of the layer's region. */
typedef struct ccoe_moe_tensor {
    char name[CCOE_MOE_NAME]; /* "router.weight", "router.noise_weight", "router.score_bias",
                                 "shared.0.fc.weight", ... (the routed experts' four names),
                                 "experts.3.fc.weight", "experts.3.fc.bias",
                                 "experts.3.proj.weight", "experts.3.proj.bias" */
    int ndim;
    int64_t shape[2];
    size_t offset;            /* floats from the start of the layer's region */
    size_t numel;
    int decay;                /* 1 for matrices (AdamW decay), 0 for biases and state */
    int expert;               /* owning routed expert, -1 for the router and shared experts
                                 (replicated under expert parallelism) */
} ccoe_moe_tensor;

/* Per-call routing context. */
typedef struct ccoe_moe_pass {
    int train;              /* 1: training (noisy gates draw noise); 0: evaluation, no noise */
    uint64_t seed;          /* noise key: ccoe_hash_normal(seed, step, layer, g * E + i) */
    uint64_t step;          /*   with g = token_offset + n the token's global index */
    int layer;
    int64_t token_offset;   /* global index of row 0 among all tokens of the step (rank offset
                               and micro-batch offset included) */
    const int32_t *domains; /* domain gate: (ceil(N / T)) domain of each sequence */
    int T;                  /* domain gate: rows per sequence (row n has domains[n / T]) */
    const int32_t *tokens;  /* gates with CCOE_GATE_TOKEN (hash): (N) token id of each row */
    int causal;             /* 1: route each row without reading the others (decoding); expert
                               choice then falls back to per-token top-k (ccoe_moe_causal_k) */
} ccoe_moe_pass;

/* Statistics of one forward (and the timings of the backward that follows, if passed there). */
typedef struct ccoe_moe_stats {
    int N, E, K;
    int capacity;              /* rows per expert, 0 = dropless */
    int64_t train_dropped_slots; /* the slots the TRAINING capacity (capacity_factor) drops on
                                    this call's routing: sum_e max(0, routed_e - cap_train);
                                    = dropped_slots in training passes */
    double train_drop_rate;    /* train_dropped_slots / (N K) */
    int64_t tokens_per_expert[CCOE_MOE_MAX_EXPERTS]; /* kept slots per expert (after capacity) */
    int64_t routed_per_expert[CCOE_MOE_MAX_EXPERTS]; /* router choices per expert (before) */
    double mean_gate_weight[CCOE_MOE_MAX_EXPERTS];   /* Importance_i / N (before capacity) */
    int64_t dropped_slots;     /* (token, expert) slots beyond capacity */
    int64_t dropped_tokens;    /* tokens with every slot dropped (output 0) */
    double drop_rate;          /* dropped_slots / (N K) */
    double gate_entropy;       /* mean over tokens of the entropy of the token's K gate weights,
                                  normalised to sum 1 (nats; 0 for K = 1) */
    double router_entropy;     /* mean over tokens of the entropy of softmax(logits) over all E
                                  (0 without a router) */
    double load_cv;            /* CV (std / mean) of tokens_per_expert */
    double cv2_importance;     /* CV(Importance)^2 (unweighted; 0 without a router) */
    double cv2_load;           /* CV(smooth Load)^2 (noisy_topk with K < E, else 0) */
    double switch_value;       /* E sum_i f_i P_i (unweighted) */
    double z_value;            /* mean_n logsumexp(logits_n)^2 (unweighted) */
    double seq_value;          /* sequence-wise balance (lossfree): mean over sequences of
                                  sum_i f_i P_i (unweighted; 0 for other gates) */
    double loss_importance, loss_load, loss_switch, loss_z; /* weighted by the coefficients */
    double loss_seq;           /* w_seq * seq_value */
    double loss_aux;           /* their sum: the value ccoe_moe_forward returns */
    int expert_parallel;       /* 1 if the experts ran in parallel (ccoe_moe_schedule) */
    /* seconds: forward router+gate+aux, dispatch (plan+gather), experts, combine; backward
     * combine, experts, scatter, router+gate+aux (filled when passed to ccoe_moe_backward) */
    double t_fwd_route, t_fwd_dispatch, t_fwd_experts, t_fwd_combine;
    double t_bwd_combine, t_bwd_experts, t_bwd_scatter, t_bwd_route;
    /* expert parallelism (0 serially). N, the counts, drops, entropies, CVs and aux values
     * above are then global (over all ranks); the timings are this rank's. */
    int N_local;               /* this rank's tokens (N is the global count) */
    int64_t ep_bytes_fwd;      /* bytes of token rows this rank sent to other ranks: forward */
    int64_t ep_bytes_bwd;      /*   (dispatch + return) and backward (the same in reverse) */
    int64_t ep_bytes_meta;     /* bytes of counts and sums this rank contributed (allgather,
                                  allreduce; forward only) */
    double t_fwd_exchange;     /* seconds inside collectives, waiting included (part of the */
    double t_bwd_exchange;     /*   dispatch/combine/scatter phases above) */
} ccoe_moe_stats;

/* Saved state of one forward (one per MoE layer; carved by ccoe_moe_acts_carve). */
typedef struct ccoe_moe_acts {
    int N, rows;             /* rows of the last forward; packed rows R used */
    int capacity;            /* of the last forward, 0 = dropless */
    int eval;                /* 1: the forward is an evaluation pass (eval_capacity_factor);
                                0 (as carved): a training pass (capacity_factor) */
    float *logits;           /* (maxN, E) clean router logits (router gates) */
    float *noise_logits;     /* (maxN, E) h W_noise^T (noisy) */
    float *noise;            /* (maxN, E) the standard normals used; zeros in eval (noisy) */
    float *probs;            /* (maxN, E) softmax(logits) (router gates) */
    float *lse;              /* (maxN) logsumexp(logits) (router gates) */
    float *load_p;           /* (maxN, E) smooth load P(x, i) (noisy with K < E) */
    int32_t *ids;            /* (maxN, K) chosen experts, descending score */
    float *weights;          /* (maxN, K) gate values (before capacity) */
    int32_t *kth;            /* (maxN) (K+1)-th expert by noisy score, -1 if none (noisy) */
    int32_t *slot;           /* (maxN, K) packed row of each slot, -1 = dropped */
    int32_t *row_token;      /* (R) token of each packed row */
    int32_t *offsets;        /* (E + 1) expert e owns packed rows [offsets[e], offsets[e+1]) */
    int32_t *cursor;         /* (E) scratch of the plan */
    float *xin;              /* (R, C) gathered inputs */
    float *fch;              /* (R, F2) fc outputs (pre-activation) */
    float *fch_act;          /* (R, F) activations */
    float *y;                /* (R, C) expert outputs, unweighted */
    double *importance;      /* (E) sum_n G(x_n)_i */
    double *load;            /* (E) sum_n P(x_n, i) */
    double *frac;            /* (E) f_i: share of the N K router choices that pick i */
    double *pmean;           /* (E) P_i: mean of softmax(logits)_i */
    int seq_T;               /* rows per sequence of the last forward (pass->T, or N) */
    double seq_sum, n_seq;   /* sequence-wise balance: sum over sequences of sum_i f_i P_i and
                                the number of sequences (global under expert parallelism) */
    /* expert parallelism (carved when m->ep_size > 0; the E-sized sums above are then global,
     * and xin .. y hold the rows this rank's experts received, grouped by expert, within an
     * expert by source rank and token: the global token order) */
    int64_t N_total;         /* tokens of the call over all ranks (= N serially) */
    int rows_home;           /* this rank's kept slots; slot[] indexes home rows */
    float *home;             /* (maxN K, C) this rank's kept slots in send order (owner rank,
                                expert, token): the inputs sent, then the outputs received */
    int32_t *ep_kept;        /* (P, E) kept slots of rank p for expert e (every rank's) */
    int ec_k;                /* expert choice: 0 = batch-level choice, else the per-token
                                top-k of a causal pass (ccoe_moe_causal_k) */
    ccoe_gate_pick *ec_work; /* expert choice: (P max_peer, E) the experts' picks */
    float *ec_scores;        /* expert choice under EP: (P max_peer, E) every rank's scores,
                                then (max_peer, E) this rank's send area */
    int32_t *ec_keep;        /* expert choice under EP: (P max_peer, E) their keep marks */
    /* shared experts (cfg.n_shared > 0; this rank's rows under expert parallelism) */
    float *sh_fch;           /* (n_shared, maxN, F2) fc outputs of every row */
    float *sh_act;           /* (n_shared, maxN, F) activations */
    float *sh_y;             /* (maxN, C) one shared expert's output (forward scratch) */
} ccoe_moe_acts;

/* Backward scratch (may be shared by all MoE layers of a model). */
typedef struct ccoe_moe_scratch {
    float *dy;               /* (R, C) weight * dout, packed */
    float *dfch_act;         /* (R, F) */
    float *dfch;             /* (R, F2) */
    float *dxin;             /* (R, C) */
    float *dweights;         /* (maxN, K) */
    float *dlogits;          /* (maxN, E) */
    float *dnoise_logits;    /* (maxN, E) (noisy) */
    /* expert parallelism (carved when m->ep_size > 0) */
    float *home;             /* (maxN K, C) dy of this rank's slots sent, then dxin received */
    float *stage;            /* (max_recv, C) rows in arrival order (source rank, expert, token) */
    int32_t *counts;         /* (P, 1 + K E) allgathered: each rank's N and per-(round j,
                                expert e) router choices */
    double *sums;            /* (4 E + 6) allreduced sums (aux losses, statistics) */
    size_t *send_counts, *send_displs, *recv_counts, *recv_displs; /* (P) each, in floats */
    int64_t *cursor;         /* (P) */
    /* shared experts (cfg.n_shared > 0) */
    float *sh_dact;          /* (maxN, F) */
    float *sh_dfch;          /* (maxN, F2) */
} ccoe_moe_scratch;

/* ---- setup ---- */

/* Defaults: topk, E 8, K 2, F 0 (must be set), GELU, biases on, renormalize 1, dropless
 * (training and evaluation), no
 * noise_eps, every aux coefficient 0, no domains. */
void ccoe_moe_defaults(ccoe_moe_config *cfg);

/* Checks every field and the cross-field rules; messages name the field, the value and the fix.
 * Rejects (CCOE_ERR_CONFIG): unknown gate (lists the allowed names), E < 1 or too large, K < 1,
 * K > E, softmax with K != E, a one-expert gate with K != 1, F < 1, capacity_factor or
 * eval_capacity_factor < 1 and != 0 (or not finite), a capacity on a CCOE_GATE_DROPLESS gate,
 * negative or non-finite coefficients, noise options (noise_eps, w_load) on a gate without
 * noise, w_load with K = E, renormalize = 0 on a gate other than topk, aux losses on a gate
 * without a router, a domain table that is empty or points outside [0, E). */
ccoe_status ccoe_moe_validate(const ccoe_moe_config *cfg, ccoe_error *err);

/* The MoE layer config of a [moe] section for a resolved model config (expert_hidden 0 ->
 * m->ffn_hidden, expert kind and biases from the model; fine-grained experts, granularity g > 1:
 * n_experts g E, top_k g K, ffn_hidden F / g; a gate with CCOE_GATE_DOMAIN: the table
 * maps domain d to expert d for d < n_experts; a gate with CCOE_GATE_DROPLESS: both capacity
 * factors 0, whatever the section says). Returns 0 (out untouched) when sec->gate is
 * none: a dense model; 1 otherwise. Does not validate (ccoe_moe_config_check does). */
int ccoe_moe_config_from_section(const ccoe_moe_section *sec, const ccoe_model_config *m,
                                 ccoe_moe_config *out);

/* The cross-field rules of the [moe] section of c (model.ffn_hidden resolved, every key in
 * range: after ccoe_config_validate): moe.every against model.n_layer, no balancing losses on
 * a gate without a router, moe.granularity (a learned router with a choice of experts, a
 * divisor of the expert hidden size, g * n_experts within the limit), then ccoe_moe_validate of the layer config with its messages
 * naming the keys ("moe.top_k = 9 ..."). OK when moe.gate = none. */
ccoe_status ccoe_moe_config_check(const ccoe_config *c, ccoe_error *err);

/* Validates cfg and fills m: sizes and parameter layout for inputs of C channels and at most
 * maxN rows per call. Allocates nothing. */
ccoe_status ccoe_moe_init(ccoe_moe *m, const ccoe_moe_config *cfg, int C, int maxN,
                          const ccoe_gemm *g, ccoe_error *err);

/* Checks that domain ids 0..n_domains-1 (those the data can produce) all have a table entry
 * (domain gate only; other gates: OK). Call once at setup: forward asserts it. */
ccoe_status ccoe_moe_check_domains(const ccoe_moe *m, int n_domains, ccoe_error *err);

/* Parameter tensors, in layout order: router.weight, router.noise_weight (noisy),
 * router.score_bias (gates with CCOE_GATE_SCORE_BIAS: state, not trained: its gradient is
 * always 0, so AdamW leaves it unchanged; ccoe_moe_bias_update moves it), for
 * s = 0..n_shared-1 the shared experts shared.s.* (the four names below), then for
 * e = 0..E-1: experts.e.fc.weight, experts.e.fc.bias, experts.e.proj.weight,
 * experts.e.proj.bias (biases when cfg.bias). i in [0, m->n_tensors). */
void ccoe_moe_tensor_at(const ccoe_moe *m, int i, ccoe_moe_tensor *t);

/* Initialises the layer's parameter region (m->num_params floats; padding zeroed): expert fc
 * weights N(0, std), proj weights N(0, proj_std) (the residual-scaled std), biases 0, router
 * N(0, std), noise weights 0 (Shazeer: "no signal and some noise"). Deterministic in seed. */
void ccoe_moe_init_weights(const ccoe_moe *m, float *params, uint64_t seed, float std,
                           float proj_std);

/* Carves the saved activations (one per layer) or the backward scratch (shareable) from an
 * arena; with a counting arena (ccoe_arena_count) only advances a.used, so one pass sizes and a
 * second carves (the model's carve_acts pattern). Buffers a gate does not need stay NULL. */
void ccoe_moe_acts_carve(ccoe_moe_acts *a, const ccoe_moe *m, ccoe_arena *arena);
void ccoe_moe_scratch_carve(ccoe_moe_scratch *s, const ccoe_moe *m, ccoe_arena *arena);
/* Bytes the two carves take (64-byte alignment padding included). */
size_t ccoe_moe_acts_bytes(const ccoe_moe *m);
size_t ccoe_moe_scratch_bytes(const ccoe_moe *m);

/* Rows per expert for a training call of N rows: ceil(capacity_factor N K / E), or 0
 * (dropless). ccoe_moe_capacity_of: the same with eval_capacity_factor when eval = 1. */
int ccoe_moe_capacity(const ccoe_moe *m, int N);
/* Expert choice in a causal pass (pass->causal): the experts per token of the per-token top-k
 * fallback, floor(capacity factor in use) in 1..E (E when it is 0); 0 otherwise (batch-level
 * choice, or another gate). */
int ccoe_moe_causal_k(const ccoe_moe *m, const ccoe_moe_pass *pass);
int ccoe_moe_capacity_of(const ccoe_moe *m, int N, int eval);
/* The largest rows per expert either kind of call can keep (0 = unbounded): buffer sizes. */
int ccoe_moe_capacity_bound(const ccoe_moe *m, int N);

/* ---- auxiliary-loss-free balancing (papers/moe.md) ---- */

/* 1 if the layer's gate selects with a per-expert bias (router.score_bias) that the trainer
 * updates after each step with ccoe_moe_bias_update. */
int ccoe_moe_has_score_bias(const ccoe_moe *m);

/* DeepSeek-V3's update of the selection bias from the loads of one optimizer step:
 *     b_e += rate * sign(mean_i load_i - load_e)   (sign(0) = 0),
 * load (E) = the router choices of expert e over every token of the step (all micro-batches,
 * all ranks: under data parallelism sum them over the ranks first; expert-parallel forwards
 * already count every rank's tokens). params: the layer's region. Nothing for a layer without
 * the bias or with bias_rate = 0. The arithmetic is in float, one add per expert, so every
 * rank given the same loads computes the same bias bit for bit. */
void ccoe_moe_bias_update(const ccoe_moe *m, float *params, const double *load);

/* ---- forward / backward ---- */

/* out (N, C) = MoE(inp (N, C)); OVERWRITES out. params: the layer's region (layout above).
 * pass: noise keys and domains; NULL means no noise, no domains (not for the domain
 * gate) and the training capacity; pass->train = 0 uses eval_capacity_factor. Saves in acts what backward needs (routing, stored noise, expert activations).
 * stats (may be NULL) receives the statistics. Returns the weighted aux loss
 * (stats->loss_aux): means over the N rows of this call. 1 <= N <= maxN. Threads: OpenMP over
 * rows, GEMMs on m->gemm's threads (do not call from a parallel region). */
double ccoe_moe_forward(const ccoe_moe *m, float *out, ccoe_moe_acts *acts, ccoe_moe_stats *stats,
                        const float *inp, const float *params, const ccoe_moe_pass *pass, int N);

/* Backward of the last forward on acts (same inp, params, N): ACCUMULATES
 *   dinp (N, C) += d/dinp, grads (the layer's region in the gradient block) += d/dparams
 * of  sum(dout * out) + aux_scale * aux,  dout (N, C) the gradient of the loss w.r.t. out
 * (already carrying the CE scale). The model passes aux_scale = 1 / grad_accum (see
 * papers/moe.md). stats (may be NULL) receives the backward timings. */
void ccoe_moe_backward(const ccoe_moe *m, float *dinp, float *grads, ccoe_moe_stats *stats,
                       ccoe_moe_scratch *s, const float *dout, const ccoe_moe_acts *acts,
                       const float *inp, const float *params, float aux_scale, int N);

/* ---- dispatch primitives (used by forward/backward; public for tests and mpi/) ---- */

/* Dispatch plan: each (token n, slot j) gets a packed row slot[n K + j] with rows of expert e
 * contiguous in [offsets[e], offsets[e+1]), experts in index order, tokens within a group in
 * token order; row_token[r] is the token of row r. cap > 0 keeps at most cap rows per expert,
 * filled by priority: every token's first choice (in token order), then every second choice,
 * ...; the rest get slot -1. cap <= 0: dropless. cursor (E) is scratch. Returns the rows used. */
int ccoe_moe_plan(int32_t *slot, int32_t *row_token, int32_t *offsets, int32_t *cursor,
                  const int32_t *ids, int N, int E, int K, int cap);
/* rows (R, C): rows[r] = inp[row_token[r]]. OVERWRITES. */
void ccoe_moe_gather(float *rows, const float *inp, const int32_t *row_token, int R, int C);
/* out (N, C) = sum over slots j with slot >= 0 of weights[n K + j] * rows[slot[n K + j]];
 * OVERWRITES (tokens with every slot dropped get 0). Slots are summed in order j = 0..K-1. */
void ccoe_moe_combine(float *out, const float *rows, const int32_t *slot, const float *weights,
                      int N, int K, int C);

/* ---- expert parallelism (papers/moe.md, "Expert parallelism") ----
 *
 * Contract for a data-parallel trainer (ranks hold contiguous slices of the global batch):
 * - Every rank holds the whole parameter region (layout unchanged) but computes, and should
 *   update, only the experts it owns (ccoe_moe_expert_owner); the router is replicated. After
 *   ccoe_moe_backward_ep the gradient of an owned expert is complete on its owner (it saw every
 *   rank's tokens) and zero-contribution elsewhere: do NOT allreduce expert regions. Router
 *   gradients are this rank's share: allreduce (sum) them with the other replicated tensors.
 * - Gradient convention: the losses are global sums/means, so the trainer SUMS gradients over
 *   ranks and scales the CE by the global token count (dout = dCE_global/dout); aux_scale =
 *   1 / grad_accum as serially. A trainer that averages instead must multiply aux_scale by P
 *   and divide the owned expert gradients by P.
 * - Non-owned expert regions go stale; before writing a checkpoint (or evaluating with the
 *   serial layer) broadcast each expert's region (params and optimizer moments) from its owner.
 * - Every call is collective on the communicator: all ranks call forward (and backward) of
 *   every MoE layer the same number of times, with any N >= 0 of their own.
 * - Noise keys: pass->token_offset must be the global index of this rank's row 0 in the step,
 *   so noisy gates draw the same noise for any P. */

/* Places the experts on P ranks; this process is `rank`. owner (E) gives each expert's rank,
 * NULL = contiguous blocks (rank q owns experts [floor(q E / P), floor((q + 1) E / P)); ranks
 * may own none when P > E). max_peer_rows: the largest N any rank will pass to one call (the
 * same value on every rank; 0 = this layer's maxN, right when every rank has the same maxN):
 * it bounds the rows this rank's experts can receive. Resizes the layer's buffers (max_rows,
 * max_home, max_recv): call before carving acts and scratch. P = 1 is allowed (the distributed
 * path on one rank, which equals the serial layer bit for bit). CCOE_ERR_CONFIG for an owner
 * outside [0, P). */
ccoe_status ccoe_moe_set_placement(ccoe_moe *m, int P, int rank, const int32_t *owner,
                                   int max_peer_rows, ccoe_error *err);

/* The rank owning expert e (0 when not distributed). */
int ccoe_moe_expert_owner(const ccoe_moe *m, int e);

/* Expert e's parameters: floats [*begin, *end) of the layer's region (one contiguous range:
 * its fc and proj tensors and padding). */
void ccoe_moe_expert_span(const ccoe_moe *m, int e, size_t *begin, size_t *end);

/* Distributed forward: as ccoe_moe_forward on this rank's N rows (0 <= N <= maxN, and every
 * rank's N <= ep_max_peer: checked on every rank after the count exchange, CCOE_ERR_ARG), with
 * capacity, aux losses and statistics over all ranks' tokens. *aux receives the global
 * weighted aux loss (the same value on every rank, = the serial value on the concatenated
 * batch). s: scratch (shared with backward and other layers). COLLECTIVE on comm, whose size
 * and rank must match ccoe_moe_set_placement (CCOE_ERR_INTERNAL otherwise); CCOE_ERR_COMM when
 * an exchange fails (the communicator is then unusable). */
ccoe_status ccoe_moe_forward_ep(const ccoe_moe *m, ccoe_comm *comm, float *out,
                                double *aux, ccoe_moe_acts *acts, ccoe_moe_scratch *s,
                                ccoe_moe_stats *stats, const float *inp, const float *params,
                                const ccoe_moe_pass *pass, int N, ccoe_error *err);

/* Distributed backward of the last ccoe_moe_forward_ep: ACCUMULATES dinp (N, C) (this rank's
 * rows), the router gradients (this rank's share of the global objective) and the gradients of
 * the experts this rank owns (complete); non-owned expert gradients are not touched. Same
 * objective as ccoe_moe_backward with the global aux loss. COLLECTIVE on comm. */
ccoe_status ccoe_moe_backward_ep(const ccoe_moe *m, ccoe_comm *comm, float *dinp,
                                 float *grads, ccoe_moe_stats *stats, ccoe_moe_scratch *s,
                                 const float *dout, const ccoe_moe_acts *acts, const float *inp,
                                 const float *params, float aux_scale, int N, ccoe_error *err);

/* The distributed dispatch primitives (used by forward/backward; public for tests).
 * ccoe_moe_ep_route: from acts->ids (N, K) of every rank, the global capacity decisions and
 * the plan (capacity by acts->eval: eval_capacity_factor for evaluation passes):
 * acts->slot (home row or -1), rows_home, ep_kept, N_total, capacity, and the
 * grouped layout of the rows this rank's experts receive (offsets (E + 1), rows). COLLECTIVE
 * (one allgather of K E + 1 int32 per rank). */
ccoe_status ccoe_moe_ep_route(const ccoe_moe *m, ccoe_comm *comm, ccoe_moe_acts *acts,
                              ccoe_moe_scratch *s, ccoe_moe_stats *stats, int N,
                              ccoe_error *err);
/* rows (acts->rows, C) grouped at the owners <- home (rows_home, C) in send order; and the
 * reverse. OVERWRITE their outputs. Bytes sent to other ranks are added to *bytes (may be NULL)
 * and the time to *seconds (may be NULL). COLLECTIVE (one alltoallv each). */
ccoe_status ccoe_moe_ep_to_experts(const ccoe_moe *m, ccoe_comm *comm, float *rows,
                                   const float *home, const ccoe_moe_acts *acts,
                                   ccoe_moe_scratch *s, int64_t *bytes, double *seconds,
                                   ccoe_error *err);
ccoe_status ccoe_moe_ep_to_home(const ccoe_moe *m, ccoe_comm *comm, float *home,
                                const float *rows, const ccoe_moe_acts *acts,
                                ccoe_moe_scratch *s, int64_t *bytes, double *seconds,
                                ccoe_error *err);

/* Writes the statistics as one JSON object (no newline) into buf; returns the length it needs
 * (like snprintf), so a return >= cap means truncated. */
int ccoe_moe_stats_json(const ccoe_moe_stats *s, char *buf, size_t cap);

/* ---- double-precision reference (moe_ref.c): the oracle, never on the training path ---- */

/* Routing held fixed: expert choices, capacity decisions and noise come from outside (usually
 * from a fast forward's acts), so the reference is a smooth function of inputs and parameters
 * and finite differences are well defined. */
typedef struct ccoe_moe_routing {
    const int32_t *ids;    /* (N, K) */
    const int32_t *slot;   /* (N, K) < 0 = slot dropped by capacity; NULL = nothing dropped */
    const int32_t *kth;    /* (N) noisy gates (load estimator) */
    int T;                 /* rows per sequence (sequence-wise balance loss); 0 = all N rows */
    const double *noise;   /* (N, E) noisy gates */
} ccoe_moe_routing;

typedef struct ccoe_moe_aux {
    double importance, load, switch_, z, seq; /* weighted by the coefficients */
    double total;
} ccoe_moe_aux;

/* Scratch doubles the reference needs (per-token buffers and E-sized sums; independent of N). */
size_t ccoe_moe_ref_scratch_doubles(const ccoe_moe *m);
/* out (N, C) OVERWRITTEN; aux (may be NULL) the weighted aux losses; returns aux total.
 * params: a double copy of the layer's region (same layout). */
double ccoe_moe_ref_forward(const ccoe_moe *m, double *out, ccoe_moe_aux *aux, const double *inp,
                            const double *params, const ccoe_moe_routing *r, double *scratch,
                            int N);
/* dinp (N, C) += ..., dparams += ... of sum(dout * out) + aux_scale * aux. */
void ccoe_moe_ref_backward(const ccoe_moe *m, double *dinp, double *dparams, const double *dout,
                           const double *inp, const double *params, const ccoe_moe_routing *r,
                           double aux_scale, double *scratch, int N);
/* The expert-choice selection by its definition, for the tests: keep (N, E) in expert order,
 * 0 if row n is among expert e's cap best rows of S (N, E) (its rank = the rows with a larger
 * score, or an equal one and a lower index, is below cap; cap = 0 or >= N keeps all), or with
 * k_causal >= 1 if e is among row n's k_causal best experts (ties to the lower expert). */
void ccoe_moe_ref_expert_choice(int32_t *keep, const double *S, int64_t N, int E, int64_t cap,
                                int k_causal);

#endif
