/* moe_ep_train.c - expert parallelism at the model level: parameter ownership, replicated-gradient
 * sums, the global gradient norm, expert synchronisation, exchange counters (see moe_ep_train.h).
 * Everything communicates through the comm table; the token exchange itself is in moe_ep.c. */
#include "moe_ep_train.h"

#include <math.h>
#include <string.h>

static int distributed(const ccoe_model *m) { return m->n_moe > 0 && m->moe.ep_size > 1; }

int ccoe_ep_regions(const ccoe_model *m, ccoe_ep_region *out, int cap)
{
    if (!distributed(m))
        return 0;
    int n = 0;
    ccoe_ep_region cur = {0, 0, -1};
    for (int i = 0; i < m->n_moe; i++)
        for (int e = 0; e < m->moe.E; e++) {
            size_t b, x;
            ccoe_moe_expert_span(&m->moe, e, &b, &x);
            b += m->moe_offset[i];
            x += m->moe_offset[i];
            int q = ccoe_moe_expert_owner(&m->moe, e);
            if (n > 0 && cur.owner == q && cur.end == b) {
                cur.end = x; /* the same owner continues the region */
            } else {
                cur = (ccoe_ep_region){b, x, q};
                n++;
            }
            if (n <= cap)
                out[n - 1] = cur;
        }
    return n;
}

int ccoe_ep_param_owner(const ccoe_model *m, const ccoe_param *p)
{
    if (!distributed(m))
        return -1;
    const size_t span = (size_t)m->moe.E * m->moe.expert_stride;
    for (int i = 0; i < m->n_moe; i++) {
        size_t base = m->moe_offset[i] + m->moe.off_experts;
        if (p->offset >= base && p->offset < base + span)
            return ccoe_moe_expert_owner(&m->moe, (int)((p->offset - base) / m->moe.expert_stride));
    }
    return -1;
}

int ccoe_ep_param_is_local(const ccoe_param *p, void *ctx)
{
    const ccoe_model *m = ctx;
    int q = ccoe_ep_param_owner(m, p);
    return q < 0 || q == m->moe.ep_rank;
}

/* Calls fn on each maximal replicated sub-range of [begin, end). */
typedef ccoe_status (*range_fn)(ccoe_comm *c, float *x, size_t n, void *ctx, ccoe_error *err);

static ccoe_status for_replicated(const ccoe_model *m, ccoe_comm *c, float *x, size_t begin,
                                  size_t end, range_fn fn, void *ctx, ccoe_error *err)
{
    size_t at = begin;
    for (int i = 0; i < m->n_moe && distributed(m); i++) {
        size_t b = m->moe_offset[i] + m->moe.off_experts;
        size_t e = b + (size_t)m->moe.E * m->moe.expert_stride;
        if (b > at && at < end)
            CCOE_TRY(fn(c, x + at, (b < end ? b : end) - at, ctx, err));
        if (e > at)
            at = e;
    }
    if (at < end)
        CCOE_TRY(fn(c, x + at, end - at, ctx, err));
    return CCOE_OK;
}

static ccoe_status sum_range(ccoe_comm *c, float *x, size_t n, void *ctx, ccoe_error *err)
{
    (void)ctx;
    return c->ops->allreduce_f32(c, x, n, err);
}

static ccoe_status sq_range(ccoe_comm *c, float *x, size_t n, void *ctx, ccoe_error *err)
{
    (void)c;
    (void)err;
    double s = 0.0;
    for (size_t j = 0; j < n; j++)
        s += (double)x[j] * x[j];
    *(double *)ctx += s;
    return CCOE_OK;
}

ccoe_status ccoe_ep_allreduce_replicated(const ccoe_model *m, ccoe_comm *comm, float *grads,
                                         size_t begin, size_t end, ccoe_error *err)
{
    if (comm->size <= 1)
        return CCOE_OK;
    return for_replicated(m, comm, grads, begin, end, sum_range, NULL, err);
}

ccoe_status ccoe_ep_grad_norm(const ccoe_model *m, ccoe_comm *comm, const float *grads,
                              size_t begin, size_t end, double *norm, ccoe_error *err)
{
    double rep = 0.0;
    CCOE_TRY(for_replicated(m, comm, (float *)grads, begin, end, sq_range, &rep, err));
    double own = 0.0;
    if (distributed(m)) {
        const int me = m->moe.ep_rank;
        for (int i = 0; i < m->n_moe; i++)
            for (int e = 0; e < m->moe.E; e++) {
                if (ccoe_moe_expert_owner(&m->moe, e) != me)
                    continue;
                size_t b, x;
                ccoe_moe_expert_span(&m->moe, e, &b, &x);
                b += m->moe_offset[i];
                x += m->moe_offset[i];
                b = b < begin ? begin : b;
                x = x > end ? end : x;
                for (size_t j = b; j < x; j++)
                    own += (double)grads[j] * grads[j];
            }
        CCOE_TRY(comm->ops->allreduce_f64(comm, &own, 1, err));
    }
    *norm = sqrt(rep + own);
    return CCOE_OK;
}

ccoe_status ccoe_ep_sync_experts(const ccoe_model *m, ccoe_comm *comm, float *block,
                                 ccoe_error *err)
{
    if (!distributed(m))
        return CCOE_OK;
    const int E = m->moe.E;
    for (int i = 0; i < m->n_moe; i++)
        for (int e = 0; e < E;) {
            /* one broadcast per run of adjacent experts with one owner */
            const int q = ccoe_moe_expert_owner(&m->moe, e);
            int last = e;
            while (last + 1 < E && ccoe_moe_expert_owner(&m->moe, last + 1) == q)
                last++;
            size_t b, x, b2, x2;
            ccoe_moe_expert_span(&m->moe, e, &b, &x);
            ccoe_moe_expert_span(&m->moe, last, &b2, &x2);
            CCOE_TRY(comm->ops->bcast(comm, block + m->moe_offset[i] + b,
                                      (x2 - b) * sizeof(float), q, err));
            e = last + 1;
        }
    return CCOE_OK;
}

void ccoe_ep_traffic_last(const ccoe_model *m, ccoe_ep_traffic *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < m->n_moe; i++) {
        const ccoe_moe_stats *s = &m->moe_stats[i];
        t->bytes_tokens += s->ep_bytes_fwd + s->ep_bytes_bwd;
        t->bytes_meta += s->ep_bytes_meta;
        t->seconds += s->t_fwd_exchange + s->t_bwd_exchange;
    }
}
