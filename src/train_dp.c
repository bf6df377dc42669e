/* train_dp.c - the trainer's state spread over ranks: the data-parallel gradient buckets and
 * their allreduce (blocking after backward, or non-blocking from the model's grad_ready hook),
 * the float spans and owners of expert-parallel MoE experts and placed CCoE experts (left out
 * of the sum, updated only by their owner, gathered from it), the global gradient norm and the
 * end-of-run check that the replicas agree. Every function that communicates says COLLECTIVE.
 * Not here: the step itself (train.c), the comm implementations (src/comm.c, mpi/). */
#include "train_impl.h"

#include <math.h>
#include <stdlib.h>

#include "placement.h"

/* The expert-parallel span holding float offset `off`, or -1 (the replicated parameters). */
static int ep_span_of(const train_ctx *t, size_t off)
{
    for (int i = 0; i < t->n_ep; i++)
        if (off >= t->ep_span[i][0] && off < t->ep_span[i][1])
            return i;
    return -1;
}

/* Whether the gradient of p is summed over ranks. Every parameter is replicated under data
 * parallelism except the experts of an expert-parallel MoE layer: an owner's gradient is
 * already complete (it saw every rank's tokens) and the other ranks' is zero (src/moe.h). */
static int param_replicated(const train_ctx *t, const ccoe_param *p)
{
    return ep_span_of(t, p->offset) < 0;
}

/* Expert parallelism: the spans and owners of every MoE expert (the trainer updates only the
 * experts it owns, and gathers them from their owners before a checkpoint). */
ccoe_status ccoe_train_ep_setup(train_ctx *t, ccoe_error *err)
{
    const ccoe_model *m = &t->s->model;
    if (m->n_moe == 0 || !m->comm || m->comm->size <= 1 || m->moe.ep_size != m->comm->size)
        return CCOE_OK;
    if (t->expert >= 0)
        return CCOE_OK; /* isolated CCoE expert training: the base (and its MoE) is frozen */
    size_t n = (size_t)m->n_moe * (size_t)m->moe.E;
    t->ep_span = malloc(n * sizeof *t->ep_span);
    t->ep_owner = malloc(n * sizeof *t->ep_owner);
    if (!t->ep_span || !t->ep_owner)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the expert placement");
    for (int i = 0; i < m->n_moe; i++)
        for (int e = 0; e < m->moe.E; e++) {
            size_t b, end;
            ccoe_moe_expert_span(&m->moe, e, &b, &end);
            t->ep_span[t->n_ep][0] = m->moe_offset[i] + b;
            t->ep_span[t->n_ep][1] = m->moe_offset[i] + end;
            t->ep_owner[t->n_ep] = ccoe_moe_expert_owner(&m->moe, e);
            t->n_ep++;
        }
    return CCOE_OK;
}

/* CCoE expert placement: each CCoE expert's float range is owned by the rank that runs it
 * (ccoe_model_set_placement); like an expert-parallel MoE expert its gradient is complete
 * there, left out of the gradient sum, updated only there and gathered before a checkpoint. */
ccoe_status ccoe_train_place_setup(train_ctx *t, ccoe_error *err)
{
    ccoe_model *m = &t->s->model;
    const int E = m->taskmap.n_experts;
    /* the balanced policy weighs each expert by the training sequences routed to it (the same
     * data, hence the same map, on every rank) */
    double load[CCOE_MAX_EXPERTS];
    ccoe_placement_ccoe_load(&m->taskmap, &t->s->data, load);
    CCOE_TRY(ccoe_placement_map(&t->s->cfg.mpi, E, t->P, load, t->place_map, err));
    t->n_place = E;
    CCOE_TRY(ccoe_model_set_placement(m, t->comm, t->s->cfg.train.batch_size, t->place_map,
                                      err));
    t->ep_span = malloc((size_t)E * sizeof *t->ep_span);
    t->ep_owner = malloc((size_t)E * sizeof *t->ep_owner);
    if (!t->ep_span || !t->ep_owner)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the expert placement");
    for (int e = 0; e < E; e++) { /* experts follow each other in the layout: increasing */
        t->ep_span[e][0] = m->expert_begin[e];
        t->ep_span[e][1] = m->expert_end[e];
        t->ep_owner[e] = m->place_owner[e];
    }
    t->n_ep = E;
    t->placed = 1;
    return CCOE_OK;
}

/* AdamW filter: isolated training's expert, and never another rank's MoE expert. */
int ccoe_train_update_filter(const ccoe_param *p, void *ctx)
{
    const train_ctx *t = ctx;
    if (t->expert >= 0 && p->expert != t->expert)
        return 0;
    int sp = ep_span_of(t, p->offset);
    return sp < 0 || t->ep_owner[sp] == t->rank;
}

/* COLLECTIVE: every MoE expert's parameters and AdamW moments from its owner to every rank
 * (before a checkpoint: the other ranks' copies are stale). */
ccoe_status ccoe_train_ep_gather_what(train_ctx *t, int moments, ccoe_error *err)
{
    ccoe_model *m = &t->s->model;
    for (int i = 0; i < t->n_ep; i++) {
        size_t off = t->ep_span[i][0], len = (t->ep_span[i][1] - off) * sizeof(float);
        int root = t->ep_owner[i];
        CCOE_TRY(t->comm->ops->bcast(t->comm, m->param_block + off, len, root, err));
        if (!moments)
            continue;
        CCOE_TRY(t->comm->ops->bcast(t->comm, t->opt.m + off, len, root, err));
        CCOE_TRY(t->comm->ops->bcast(t->comm, t->opt.v + off, len, root, err));
    }
    return CCOE_OK;
}

/* COLLECTIVE: ccoe_train_ep_gather_what with the AdamW moments. */
ccoe_status ccoe_train_ep_gather(train_ctx *t, ccoe_error *err)
{
    return ccoe_train_ep_gather_what(t, 1, err);
}

/* COLLECTIVE: the global gradient norm over [grad_begin, grad_end): the replicated part is the
 * same on every rank after the allreduce; the expert-parallel experts' squares are summed over
 * their owners. */
ccoe_status ccoe_train_grad_norm(train_ctx *t, double *out, ccoe_error *err)
{
    const float *g = t->s->model.grad_block;
    if (t->n_ep == 0) {
        *out = ccoe_grad_norm(g, t->grad_begin, t->grad_end);
        return CCOE_OK;
    }
    double rep = 0.0, own = 0.0;
    size_t at = t->grad_begin;
    for (int i = 0; i <= t->n_ep; i++) { /* spans are in increasing order */
        size_t b = i < t->n_ep ? t->ep_span[i][0] : t->grad_end;
        if (b > at) {
            double x = ccoe_grad_norm(g, at, b);
            rep += x * x;
        }
        if (i < t->n_ep) {
            if (t->ep_owner[i] == t->rank) {
                double x = ccoe_grad_norm(g, t->ep_span[i][0], t->ep_span[i][1]);
                own += x * x;
            }
            at = t->ep_span[i][1];
        }
    }
    CCOE_TRY(t->comm->ops->allreduce_f64(t->comm, &own, 1, err));
    *out = sqrt(rep + own);
    return CCOE_OK;
}

/* The buckets: the replicated parameters inside [grad_begin, grad_end) (with isolated expert
 * training only the expert's own tensors), merged into contiguous ranges, cut into pieces of
 * at most DP_BUCKET_FLOATS from the top, ordered by descending offset (backward finishes the
 * top of the layout first). */
ccoe_status ccoe_train_dp_plan(train_ctx *t, ccoe_error *err)
{
    const ccoe_model *m = &t->s->model;
    size_t (*ranges)[2] = malloc(((size_t)m->n_params + 1) * sizeof *ranges);
    if (!ranges)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the allreduce plan");
    int nr = 0;
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        size_t b = p->offset, e = p->offset + ((p->numel + 15) & ~(size_t)15);
        if (b < t->grad_begin || e > t->grad_end || !param_replicated(t, p))
            continue;
        if (t->expert >= 0 && p->expert != t->expert)
            continue;
        if (nr > 0 && ranges[nr - 1][1] == b)
            ranges[nr - 1][1] = e;
        else {
            ranges[nr][0] = b;
            ranges[nr][1] = e;
            nr++;
        }
    }
    size_t nb = 0;
    for (int r = 0; r < nr; r++)
        nb += (ranges[r][1] - ranges[r][0] + DP_BUCKET_FLOATS - 1) / DP_BUCKET_FLOATS;
    t->buckets = calloc(nb ? nb : 1, sizeof *t->buckets);
    if (!t->buckets) {
        free(ranges);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the allreduce plan");
    }
    int k = 0;
    for (int r = nr - 1; r >= 0; r--)
        for (size_t e = ranges[r][1]; e > ranges[r][0];) {
            size_t b = e - ranges[r][0] > DP_BUCKET_FLOATS ? e - DP_BUCKET_FLOATS : ranges[r][0];
            t->buckets[k].begin = b;
            t->buckets[k].end = e;
            k++;
            e = b;
        }
    t->n_buckets = k;
    free(ranges);
    return CCOE_OK;
}

/* Before a step's last backward: no bucket ready or started, no hook failure. */
void ccoe_train_dp_reset(train_ctx *t)
{
    for (int i = 0; i < t->n_buckets; i++)
        t->buckets[i].ready = 0;
    t->issued = 0;
    t->hook_st = CCOE_OK;
}

/* Starts the buckets that are complete, in plan order (every rank starts the same sequence). */
static void dp_issue(train_ctx *t, int all)
{
    ccoe_comm *c = t->comm;
    float *g = t->s->model.grad_block;
    while (t->hook_st == CCOE_OK && t->issued < t->n_buckets) {
        dp_bucket *b = &t->buckets[t->issued];
        if (!all && b->ready < b->end - b->begin)
            break;
        t->hook_st = c->ops->iallreduce_f32(c, g + b->begin, b->end - b->begin, &b->req,
                                            &t->hook_err);
        t->issued++;
    }
}

/* The model's grad_ready hook: [begin, end) of the gradient block is final. */
void ccoe_train_dp_ready(void *ctx, size_t begin, size_t end)
{
    train_ctx *t = ctx;
    for (int i = t->issued; i < t->n_buckets; i++) {
        dp_bucket *b = &t->buckets[i];
        size_t lo = b->begin > begin ? b->begin : begin, hi = b->end < end ? b->end : end;
        if (lo < hi)
            b->ready += hi - lo;
    }
    dp_issue(t, 0);
    /* MPI advances non-blocking collectives only inside MPI calls: give the started ones a
     * push between blocks so they overlap the rest of backward */
    for (int i = 0; i < t->issued && t->hook_st == CCOE_OK; i++) {
        int done = 0;
        if (t->buckets[i].req.n > 0)
            t->hook_st = t->comm->ops->test(t->comm, &t->buckets[i].req, &done, &t->hook_err);
    }
}

/* Starts what backward did not announce, then waits for every bucket. */
ccoe_status ccoe_train_dp_finish(train_ctx *t, ccoe_error *err)
{
    if (!t->o->allreduce_overlap) { /* blocking, bucket by bucket in plan order */
        for (; t->issued < t->n_buckets; t->issued++) {
            const dp_bucket *b = &t->buckets[t->issued];
            CCOE_TRY(t->comm->ops->allreduce_f32(t->comm, t->s->model.grad_block + b->begin,
                                                 b->end - b->begin, err));
        }
        return CCOE_OK;
    }
    dp_issue(t, 1);
    ccoe_status st = t->hook_st;
    if (st != CCOE_OK)
        *err = t->hook_err;
    for (int i = 0; i < t->issued; i++) {
        ccoe_status w = t->comm->ops->wait(t->comm, &t->buckets[i].req, st ? NULL : err);
        if (st == CCOE_OK)
            st = w;
    }
    return st;
}

/* FNV-1a over the replicated parameters: the replicas must agree bit for bit. */
static uint64_t replicated_hash(const train_ctx *t)
{
    const float *w = t->s->model.param_block;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int i = 0; i < t->n_buckets; i++) {
        const unsigned char *p = (const unsigned char *)(w + t->buckets[i].begin);
        size_t n = (t->buckets[i].end - t->buckets[i].begin) * sizeof(float);
        for (size_t j = 0; j < n; j++)
            h = (h ^ p[j]) * 0x100000001b3ULL;
    }
    return h;
}

/* COLLECTIVE: the replicas' parameters are identical (a self-verifying invariant). */
ccoe_status ccoe_train_check_replicas(train_ctx *t, ccoe_error *err)
{
    if (t->P == 1)
        return CCOE_OK;
    uint64_t h = replicated_hash(t);
    uint64_t *all = malloc((size_t)t->P * sizeof *all);
    if (!all)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "rank %d: out of memory", t->rank);
    ccoe_status st = t->comm->ops->allgather(t->comm, &h, all, sizeof h, err);
    for (int r = 1; st == CCOE_OK && r < t->P; r++)
        if (all[r] != all[0]) {
            st = ccoe_error_set(err, CCOE_ERR_INTERNAL,
                                "the replicated parameters of rank %d differ from rank 0's "
                                "after step %ld (a non-deterministic reduction: please report "
                                "this bug)",
                                r, t->st.step);
            t->comm->failed_rank = 0; /* every rank sees the same table */
        }
    free(all);
    return st;
}
