/* moe_ep_train.h - expert parallelism at the model level: the trainer's side of the contract.
 *
 * With ccoe_model_set_comm on P > 1 ranks, every MoE block places its experts on the ranks
 * (contiguous blocks; src/moe.h) and exchanges tokens inside forward and backward. Every rank
 * still holds the whole parameter block (layout and checkpoints unchanged), but the gradient of
 * an expert is computed only by its owner, where it is complete (every rank's tokens); the
 * other ranks never touch it (it stays zero after ccoe_model_zero_grad). Everything else is
 * replicated and each rank's gradient is its share of the global objective.
 *
 * A data-parallel trainer then does, per step (ranks = contiguous slices of the global batch):
 *   1. token_offset = global index of the rank's first row in the step (noise keys), the CE
 *      scaled by 1 / (global counted tokens * grad_accum), aux_scale = 1 / grad_accum: the
 *      gradients are SUMMED over ranks, not averaged (src/moe.h explains the other choice);
 *   2. EITHER (simple) allreduce the whole gradient block: non-owners hold exact zeros in
 *      expert regions, so every rank gets every expert's complete gradient and may update all
 *      parameters; replicas stay identical, no sync needed, but expert gradients cross the
 *      network;
 *      OR (expert-parallel) ccoe_ep_allreduce_replicated, ccoe_ep_grad_norm for clipping,
 *      AdamW only on tensors with ccoe_ep_param_is_local, and ccoe_ep_sync_experts on the
 *      parameters and both AdamW moments before writing a checkpoint or evaluating on one rank;
 *   3. log ccoe_ep_traffic_last (summed over micro-batches) as the exchange volume and time.
 * Every forward is collective: all ranks run the same number of forwards (evaluation too), or
 * one rank evaluates alone after ccoe_ep_sync_experts with m->comm set to NULL meanwhile (the
 * serial MoE path fits the resized buffers).
 * What it is not: the exchange itself (src/moe_ep.c) or MPI (mpi/).
 */
#ifndef CCOE_MOE_EP_TRAIN_H
#define CCOE_MOE_EP_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "model.h"
#include "status.h"

/* Floats [begin, end) of the parameter block owned by one rank (one or more adjacent experts
 * of one MoE block). */
typedef struct ccoe_ep_region {
    size_t begin, end;
    int owner;
} ccoe_ep_region;

/* The owned regions in increasing order (adjacent experts of one owner merged); everything
 * else is replicated. Writes at most cap regions, returns how many there are (0 when the model
 * is not expert-parallel: no MoE block or fewer than 2 ranks). */
int ccoe_ep_regions(const ccoe_model *m, ccoe_ep_region *out, int cap);

/* The rank that owns tensor p (a MoE expert's tensor), or -1 for a replicated tensor (and for
 * every tensor when the model is not expert-parallel). */
int ccoe_ep_param_owner(const ccoe_model *m, const ccoe_param *p);

/* Optimizer filter (ccoe_adamw_step): 1 if this rank updates p (replicated or its own expert);
 * ctx is the ccoe_model. */
int ccoe_ep_param_is_local(const ccoe_param *p, void *ctx);

/* Sums grads over the ranks on the replicated floats of [begin, end) (expert regions left as
 * they are). COLLECTIVE on comm. */
ccoe_status ccoe_ep_allreduce_replicated(const ccoe_model *m, ccoe_comm *comm, float *grads,
                                         size_t begin, size_t end, ccoe_error *err);

/* Global L2 norm of the gradient on [begin, end) after ccoe_ep_allreduce_replicated:
 * replicated floats counted once, each expert region from its owner. *norm is the same on every
 * rank. COLLECTIVE on comm. */
ccoe_status ccoe_ep_grad_norm(const ccoe_model *m, ccoe_comm *comm, const float *grads,
                              size_t begin, size_t end, double *norm, ccoe_error *err);

/* Broadcasts every expert region of block (the parameters, or an optimizer moment: anything
 * with the parameter layout) from its owner, so every rank holds the owners' values.
 * COLLECTIVE on comm. */
ccoe_status ccoe_ep_sync_experts(const ccoe_model *m, ccoe_comm *comm, float *block,
                                 ccoe_error *err);

/* Exchange volume and time of the last forward + backward, summed over the MoE blocks. */
typedef struct ccoe_ep_traffic {
    int64_t bytes_tokens; /* token rows this rank sent to other ranks (dispatch, return, their
                             backward) */
    int64_t bytes_meta;   /* counts and aux sums this rank contributed */
    double seconds;       /* inside the MoE collectives, waiting included */
} ccoe_ep_traffic;
void ccoe_ep_traffic_last(const ccoe_model *m, ccoe_ep_traffic *t);

#endif
