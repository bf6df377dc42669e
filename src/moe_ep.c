/* moe_ep.c - expert parallelism of the MoE layer: placement of the experts on the ranks of a
 * communicator, and the distributed forward and backward.
 *
 * ccoe_moe_forward_ep / ccoe_moe_backward_ep reuse every piece of the serial layer (moe.c, through
 * moe_impl.h): the rank routes its own tokens, the plan becomes global (an allgather of per-(round,
 * expert) counts gives every rank the same capacity decisions), the gather writes this rank's kept
 * slots in send order (owner rank, expert, token), an alltoallv through the comm table moves them
 * to the owners, which regroup them by expert (the global token order within an expert) and run the
 * same expert stages; the outputs go back the same way and the combine reads them from the home
 * rows. The E-sized aux and statistics sums are allreduced before their values are formed, so they
 * are the serial values of the concatenated batch.
 * Not here: the serial layer and its pieces (moe.c), <mpi.h> (all traffic goes through the
 * comm table).
 */
#include "moe.h"

#include <assert.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "comm.h"
#include "moe_impl.h"

ccoe_status ccoe_moe_set_placement(ccoe_moe *m, int P, int rank, const int32_t *owner,
                                   int max_peer_rows, ccoe_error *err)
{
    const int E = m->E, K = m->K;
    if (P < 1 || rank < 0 || rank >= P)
        return ccoe_error_set(err, CCOE_ERR_ARG, "moe: rank %d of %d ranks is not a valid rank",
                              rank, P);
    const int peer = max_peer_rows > 0 ? max_peer_rows : m->maxN;
    if (peer < m->maxN)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "moe: max_peer_rows = %d is below this rank's maxN = %d: pass the "
                              "largest row count of any rank",
                              peer, m->maxN);
    if ((long long)P * peer * K > INT32_MAX)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "moe: %d ranks x %d rows x top_k %d = %lld rows exceed the int32 "
                              "row index: use smaller batches per rank",
                              P, peer, K, (long long)P * peer * K);
    for (int e = 0; e < E; e++) {
        int q = owner ? owner[e] : (int)(((long long)(e + 1) * P - 1) / E);
        if (q < 0 || q >= P)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "moe placement: expert %d is assigned to rank %d, but the "
                                  "ranks are 0..%d: give every expert a rank below %d",
                                  e, q, P - 1, P);
        m->ep_owner[e] = q;
    }
    m->ep_size = P;
    m->ep_rank = rank;
    m->ep_max_peer = peer;
    m->ep_local = 0;
    for (int e = 0; e < E; e++)
        m->ep_local += m->ep_owner[e] == rank;
    /* this rank's slots: at most maxN K; the rows its experts receive: each token of each rank
     * reaches at most min(K, E_local) of them, and each expert keeps at most cap(P maxN) */
    m->max_home = m->maxN * K;
    long long recv = (long long)P * peer * (K < m->ep_local ? K : m->ep_local);
    int cap = ccoe_moe_capacity_bound(m, P * peer);
    if (cap > 0 && (long long)cap * m->ep_local < recv)
        recv = (long long)cap * m->ep_local;
    if (m->gate->choose) { /* a causal pass picks floor(cf) experts per token, any expert */
        ccoe_moe_pass causal = {.causal = 1, .train = 1};
        int kc = ccoe_moe_causal_k(m, &causal);
        causal.train = 0;
        int ke = ccoe_moe_causal_k(m, &causal);
        kc = kc > ke ? kc : ke;
        long long rc = (long long)P * peer * (kc < m->ep_local ? kc : m->ep_local);
        recv = rc > recv ? rc : recv;
    }
    m->max_recv = (int)recv;
    long long rows = (long long)m->maxN * K; /* the serial layer's bound (ccoe_moe_init) */
    int cap1 = ccoe_moe_capacity_bound(m, m->maxN);
    if (cap1 > 0 && (long long)cap1 * E < rows)
        rows = (long long)cap1 * E;
    m->max_rows = (int)(rows > recv ? rows : recv);
    return CCOE_OK;
}

int ccoe_moe_expert_owner(const ccoe_moe *m, int e)
{
    assert(e >= 0 && e < m->E);
    return m->ep_size > 0 ? m->ep_owner[e] : 0;
}

void ccoe_moe_expert_span(const ccoe_moe *m, int e, size_t *begin, size_t *end)
{
    assert(e >= 0 && e < m->E);
    *begin = m->off_experts + (size_t)e * m->expert_stride;
    *end = *begin + m->expert_stride;
}

static ccoe_status ep_check(const ccoe_moe *m, const ccoe_comm *comm, int N, ccoe_error *err)
{
    if (!comm || m->ep_size != comm->size || m->ep_rank != comm->rank)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL,
                              "moe: the layer is placed on %d ranks (this is rank %d) but the "
                              "communicator has %d (rank %d): call ccoe_moe_set_placement "
                              "(ccoe_model_set_comm) before carving and the first forward",
                              m->ep_size, m->ep_rank, comm ? comm->size : 0,
                              comm ? comm->rank : -1);
    assert(N >= 0 && N <= m->maxN);
    return CCOE_OK;
}

static ccoe_status comm_failed(ccoe_error *err, const char *what)
{
    if (err && err->status == CCOE_OK)
        err->status = CCOE_ERR_COMM;
    return ccoe_error_wrap(err, "moe %s", what);
}

/* Expert choice over the global batch: every rank's scores (allgathered, rows of rank p
 * after those of ranks < p: the one-process row order), the same choice on every rank, then
 * this rank's slot marks (0 kept, -1 dropped) and every rank's kept counts per expert. */
static ccoe_status ep_expert_choice(const ccoe_moe *m, ccoe_comm *comm, ccoe_moe_acts *a,
                                    ccoe_moe_scratch *s, ccoe_moe_stats *stats, int N,
                                    int64_t Ntot, int cap, ccoe_error *err)
{
    const int P = m->ep_size, rank = m->ep_rank, E = m->E;
    const size_t W = 1 + (size_t)m->K * E, blk = (size_t)m->ep_max_peer * E;
    float *all = a->ec_scores, *mine = a->ec_scores + (size_t)P * blk;
    memset(mine, 0, blk * sizeof(float)); /* this rank's scores in expert order */
    for (size_t t = 0; t < (size_t)N * E; t++)
        mine[(t / E) * E + a->ids[t]] = a->weights[t];
    double t0 = omp_get_wtime();
    if (comm->ops->allgather(comm, mine, all, blk * sizeof(float), err) != CCOE_OK)
        return comm_failed(err, "expert-choice scores (allgather)");
    if (stats) {
        stats->t_fwd_exchange += omp_get_wtime() - t0;
        stats->ep_bytes_meta += (int64_t)(P - 1) * (int64_t)(blk * sizeof(float));
    }
    /* compact the blocks into Ntot consecutive rows (each moves down or stays) */
    int64_t row0 = 0, my0 = 0;
    for (int p = 0; p < P; p++) {
        const int32_t Np = s->counts[(size_t)p * W];
        if (p == rank)
            my0 = row0;
        memmove(all + (size_t)row0 * E, all + (size_t)p * blk, (size_t)Np * E * sizeof(float));
        row0 += Np;
    }
    assert(row0 == Ntot);
    m->gate->choose(a->ec_keep, NULL, all, Ntot, E, cap, a->ec_k, a->ec_work);
    int64_t r = 0;
    for (int p = 0; p < P; p++) {
        const int32_t Np = s->counts[(size_t)p * W];
        for (int e = 0; e < E; e++)
            a->ep_kept[(size_t)p * E + e] = 0;
        for (int64_t n = r; n < r + Np; n++)
            for (int e = 0; e < E; e++)
                a->ep_kept[(size_t)p * E + e] += a->ec_keep[(size_t)n * E + e] == 0;
        r += Np;
    }
    for (size_t t = 0; t < (size_t)N * E; t++) /* back to this rank's slot order */
        a->slot[t] = a->ec_keep[((size_t)my0 + t / E) * E + a->ids[t]];
    return CCOE_OK;
}

ccoe_status ccoe_moe_ep_route(const ccoe_moe *m, ccoe_comm *comm, ccoe_moe_acts *a,
                              ccoe_moe_scratch *s, ccoe_moe_stats *stats, int N,
                              ccoe_error *err)
{
    CCOE_TRY(ep_check(m, comm, N, err));
    const int P = m->ep_size, rank = m->ep_rank, E = m->E, K = m->K;
    const size_t W = 1 + (size_t)K * E;
    /* 1. count exchange: every rank's N and router choices per (round j, expert e) */
    int32_t *mine = s->counts + (size_t)P * W; /* the send area, after the P received rows */
    memset(mine, 0, W * sizeof(int32_t));
    mine[0] = N;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < K; j++)
            mine[1 + (size_t)j * E + a->ids[(size_t)n * K + j]]++;
    double t0 = omp_get_wtime();
    if (comm->ops->allgather(comm, mine, s->counts, W * sizeof(int32_t), err) != CCOE_OK)
        return comm_failed(err, "count exchange (allgather)");
    if (stats) {
        stats->t_fwd_exchange += omp_get_wtime() - t0;
        stats->ep_bytes_meta += (int64_t)(P - 1) * (int64_t)(W * sizeof(int32_t));
    }
    int64_t Ntot = 0;
    for (int p = 0; p < P; p++) {
        const int32_t Np = s->counts[(size_t)p * W];
        if (Np > m->ep_max_peer) /* every rank sees it: all return, none waits */
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "moe: rank %d passed %d rows but the layer was placed for at "
                                  "most %d rows per rank (ccoe_moe_set_placement max_peer_rows)",
                                  p, (int)Np, m->ep_max_peer);
        Ntot += Np;
    }
    const int cap = ccoe_moe_capacity_of(m, (int)(Ntot > 0 ? Ntot : 1), a->eval);
    int32_t *kept = a->ep_kept;
    if (m->gate->choose) {
        CCOE_TRY(ep_expert_choice(m, comm, a, s, stats, N, Ntot, cap, err));
        goto home_rows;
    }

    /* 2. global priority: round j of every rank before round j + 1; within a round, ranks in
     * order, then tokens. pos = the (round, rank) group's first position in expert e's queue;
     * a slot is kept while its position is below cap (the serial plan on the concatenation) */
    int64_t run[CCOE_MOE_MAX_EXPERTS], cur[CCOE_MOE_MAX_EXPERTS];
    memset(kept, 0, (size_t)P * E * sizeof(int32_t));
    for (int e = 0; e < E; e++)
        run[e] = 0;
    for (int j = 0; j < K; j++) {
        for (int e = 0; e < E; e++) {
            int64_t pos = run[e];
            for (int p = 0; p < P; p++) {
                int64_t c = s->counts[(size_t)p * W + 1 + (size_t)j * E + e];
                if (p == rank)
                    cur[e] = pos;
                int64_t k = c;
                if (cap > 0)
                    k = pos >= cap ? 0 : (cap - pos < c ? cap - pos : c);
                kept[(size_t)p * E + e] += (int32_t)k;
                pos += c;
            }
            run[e] = pos;
        }
        for (int n = 0; n < N; n++) {
            size_t at = (size_t)n * K + j;
            int32_t e = a->ids[at];
            assert(e >= 0 && e < E);
            a->slot[at] = (cap <= 0 || cur[e] < cap) ? 0 : -1;
            cur[e]++;
        }
    }

home_rows:;
    /* 3. home rows in send order: by owner rank, then expert, then token */
    int64_t *qstart = s->cursor;
    for (int q = 0; q < P; q++)
        qstart[q] = 0;
    for (int e = 0; e < E; e++)
        qstart[m->ep_owner[e]] += kept[(size_t)rank * E + e];
    int64_t acc = 0;
    for (int q = 0; q < P; q++) {
        int64_t c = qstart[q];
        qstart[q] = acc;
        acc += c;
    }
    for (int e = 0; e < E; e++) {
        a->cursor[e] = (int32_t)qstart[m->ep_owner[e]];
        qstart[m->ep_owner[e]] += kept[(size_t)rank * E + e];
    }
    for (int n = 0; n < N; n++)
        for (int j = 0; j < K; j++) {
            size_t at = (size_t)n * K + j;
            if (a->slot[at] >= 0)
                a->slot[at] = a->cursor[a->ids[at]]++;
        }
    a->rows_home = (int)acc;
    assert(a->rows_home <= m->max_home);

    /* 4. the rows this rank's experts receive, grouped by expert (sources in rank order) */
    a->offsets[0] = 0;
    for (int e = 0; e < E; e++) {
        int64_t r = 0;
        if (m->ep_owner[e] == rank)
            for (int p = 0; p < P; p++)
                r += kept[(size_t)p * E + e];
        a->offsets[e + 1] = a->offsets[e] + (int32_t)r;
    }
    a->rows = a->offsets[E];
    assert(a->rows <= m->max_recv && a->rows <= m->max_rows);
    a->N = N;
    a->N_total = Ntot;
    a->capacity = cap;
    return CCOE_OK;
}

/* Counts and displacements (floats) of the exchange home -> experts: this rank sends its kept
 * rows of rank q's experts to q and receives from each p the rows of p for its own experts. */
static void ep_exchange_plan(const ccoe_moe *m, const ccoe_moe_acts *a, ccoe_moe_scratch *s)
{
    const int P = m->ep_size, rank = m->ep_rank, E = m->E;
    const size_t C = (size_t)m->C;
    for (int q = 0; q < P; q++)
        s->send_counts[q] = s->recv_counts[q] = 0;
    for (int e = 0; e < E; e++) {
        s->send_counts[m->ep_owner[e]] += (size_t)a->ep_kept[(size_t)rank * E + e];
        if (m->ep_owner[e] == rank)
            for (int p = 0; p < P; p++)
                s->recv_counts[p] += (size_t)a->ep_kept[(size_t)p * E + e];
    }
    size_t so = 0, ro = 0;
    for (int q = 0; q < P; q++) {
        s->send_counts[q] *= C;
        s->recv_counts[q] *= C;
        s->send_displs[q] = so;
        s->recv_displs[q] = ro;
        so += s->send_counts[q];
        ro += s->recv_counts[q];
    }
}

/* Moves rows between the arrival order of stage (source p, expert, token) and the grouped
 * order of rows (expert, source p, token): to_rows = 1 regroups stage -> rows. */
static void ep_regroup(const ccoe_moe *m, const ccoe_moe_acts *a, ccoe_moe_scratch *s,
                       float *rows, float *stage, int to_rows)
{
    const int P = m->ep_size, rank = m->ep_rank, E = m->E;
    const size_t C = (size_t)m->C;
    for (int p = 0; p < P; p++)
        s->cursor[p] = (int64_t)s->recv_displs[p];
    for (int e = 0; e < E; e++) {
        if (m->ep_owner[e] != rank)
            continue;
        size_t g = (size_t)a->offsets[e] * C;
        for (int p = 0; p < P; p++) {
            size_t n = (size_t)a->ep_kept[(size_t)p * E + e] * C;
            float *st = stage + s->cursor[p];
            if (n) {
                if (to_rows)
                    memcpy(rows + g, st, n * sizeof(float));
                else
                    memcpy(st, rows + g, n * sizeof(float));
            }
            s->cursor[p] += (int64_t)n;
            g += n;
        }
    }
}

/* After an exchange started at t0: adds the time since to *seconds and the bytes of the floats
 * sent to the other ranks (counts: floats per rank) to *bytes; either may be NULL. */
static void ep_account(const ccoe_moe *m, const size_t *counts, double t0, int64_t *bytes,
                       double *seconds)
{
    if (seconds)
        *seconds += omp_get_wtime() - t0;
    if (bytes)
        for (int q = 0; q < m->ep_size; q++)
            *bytes += q == m->ep_rank ? 0 : (int64_t)(counts[q] * sizeof(float));
}

ccoe_status ccoe_moe_ep_to_experts(const ccoe_moe *m, ccoe_comm *comm, float *rows,
                                   const float *home, const ccoe_moe_acts *a,
                                   ccoe_moe_scratch *s, int64_t *bytes, double *seconds,
                                   ccoe_error *err)
{
    CCOE_TRY(ep_check(m, comm, a->N, err));
    ep_exchange_plan(m, a, s);
    double t0 = omp_get_wtime();
    if (comm->ops->alltoallv_f32(comm, home, s->send_counts, s->send_displs, s->stage,
                                 s->recv_counts, s->recv_displs, err) != CCOE_OK)
        return comm_failed(err, "dispatch to the experts' ranks (alltoallv)");
    ep_account(m, s->send_counts, t0, bytes, seconds);
    ep_regroup(m, a, s, rows, s->stage, 1);
    return CCOE_OK;
}

ccoe_status ccoe_moe_ep_to_home(const ccoe_moe *m, ccoe_comm *comm, float *home,
                                const float *rows, const ccoe_moe_acts *a,
                                ccoe_moe_scratch *s, int64_t *bytes, double *seconds,
                                ccoe_error *err)
{
    CCOE_TRY(ep_check(m, comm, a->N, err));
    ep_exchange_plan(m, a, s);
    ep_regroup(m, a, s, (float *)rows, s->stage, 0);
    double t0 = omp_get_wtime();
    if (comm->ops->alltoallv_f32(comm, s->stage, s->recv_counts, s->recv_displs, home,
                                 s->send_counts, s->send_displs, err) != CCOE_OK)
        return comm_failed(err, "return to the tokens' ranks (alltoallv)");
    ep_account(m, s->recv_counts, t0, bytes, seconds);
    return CCOE_OK;
}

/* home[slot] = inp[n] for every kept slot. OVERWRITES the rows_home rows. */
static void gather_home(float *home, const float *inp, const int32_t *slot, int N, int K, int C)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int j = 0; j < K; j++) {
            int32_t r = slot[(size_t)n * K + j];
            if (r >= 0)
                memcpy(home + (size_t)r * C, inp + (size_t)n * C, (size_t)C * sizeof(float));
        }
}

ccoe_status ccoe_moe_forward_ep(const ccoe_moe *m, ccoe_comm *comm, float *out, double *aux,
                                ccoe_moe_acts *a, ccoe_moe_scratch *s, ccoe_moe_stats *stats,
                                const float *inp, const float *params,
                                const ccoe_moe_pass *pass, int N, ccoe_error *err)
{
    CCOE_TRY(ep_check(m, comm, N, err));
    const int C = m->C, E = m->E, K = m->K, P = m->ep_size;
    ccoe_moe_stats local;
    ccoe_moe_stats *st = stats ? stats : &local;
    memset(st, 0, sizeof *st);
    double t0 = omp_get_wtime();

    /* 1. router, noise and gate on this rank's rows; the global plan */
    ccoe_moe_route_forward(m, a, inp, params, pass, N);
    a->eval = pass && !pass->train; /* evaluation passes use eval_capacity_factor */
    a->ec_k = ccoe_moe_causal_k(m, pass);
    CCOE_TRY(ccoe_moe_ep_route(m, comm, a, s, st, N, err));

    /* 2. aux and statistics sums over every rank's rows (one allreduce), then their values */
    ccoe_gate_args ga = ccoe_moe_gate_args(m, a, pass, N);
    double z = ccoe_moe_aux_sums(m, a, &ga, N);
    int64_t dropped_tokens;
    double hg, hr;
    ccoe_moe_token_sums(m, a, N, &dropped_tokens, &hg, &hr);
    double *sums = s->sums;
    for (int i = 0; i < E; i++) {
        sums[i] = a->importance[i];
        sums[E + i] = a->frac[i];
        sums[2 * E + i] = a->pmean[i];
        sums[3 * E + i] = a->load[i];
    }
    sums[4 * E] = z;
    sums[4 * E + 1] = hg;
    sums[4 * E + 2] = hr;
    sums[4 * E + 3] = (double)dropped_tokens;
    /* the sequence-wise balance loss (lossfree with w_seq) adds its sum and sequence count */
    const size_t n_sums = 4 * (size_t)E + (m->cfg.w_seq != 0.0 ? 6 : 4);
    sums[4 * E + 4] = a->seq_sum;
    sums[4 * E + 5] = a->n_seq;
    double tx = omp_get_wtime();
    if (comm->ops->allreduce_f64(comm, sums, n_sums, err) != CCOE_OK)
        return comm_failed(err, "aux-loss sums (allreduce)");
    st->t_fwd_exchange += omp_get_wtime() - tx;
    st->ep_bytes_meta += (int64_t)(P - 1) * (int64_t)(n_sums * sizeof(double));
    if (m->cfg.w_seq != 0.0) {
        a->seq_sum = sums[4 * E + 4];
        a->n_seq = sums[4 * E + 5];
    }
    for (int i = 0; i < E; i++) {
        a->importance[i] = sums[i];
        a->frac[i] = sums[E + i];
        a->pmean[i] = sums[2 * E + i];
        a->load[i] = sums[3 * E + i];
    }
    ccoe_moe_aux_values(m, a, st, sums[4 * E], a->N_total);
    double t1 = omp_get_wtime();

    /* 3. dispatch: this rank's kept slots in send order, to the owners, grouped by expert */
    gather_home(a->home, inp, a->slot, N, K, C);
    CCOE_TRY(ccoe_moe_ep_to_experts(m, comm, a->xin, a->home, a, s, &st->ep_bytes_fwd,
                                    &st->t_fwd_exchange, err));
    double t2 = omp_get_wtime();

    /* 4. this rank's experts on every rank's rows */
    st->expert_parallel = ccoe_moe_experts_forward(m, a, params);
    double t3 = omp_get_wtime();

    /* 5. outputs back to the tokens' ranks (into home), weighted combine */
    CCOE_TRY(ccoe_moe_ep_to_home(m, comm, a->home, a->y, a, s, &st->ep_bytes_fwd,
                                 &st->t_fwd_exchange, err));
    ccoe_moe_combine(out, a->home, a->slot, a->weights, N, K, C);
    ccoe_moe_shared_forward(m, a, out, inp, params, N); /* replicated: this rank's rows */
    double t4 = omp_get_wtime();

    if (stats) {
        int64_t rows = 0;
        for (int e = 0; e < E; e++) {
            int64_t k = 0;
            for (int p = 0; p < P; p++)
                k += a->ep_kept[(size_t)p * E + e];
            st->tokens_per_expert[e] = k;
            rows += k;
        }
        ccoe_moe_finish_stats(m, a, st, a->N_total, rows, (int64_t)llround(sums[4 * E + 3]),
                              sums[4 * E + 1], sums[4 * E + 2]);
    }
    st->N_local = N;
    st->t_fwd_route = t1 - t0;
    st->t_fwd_dispatch = t2 - t1;
    st->t_fwd_experts = t3 - t2;
    st->t_fwd_combine = t4 - t3;
    *aux = st->loss_aux;
    return CCOE_OK;
}

ccoe_status ccoe_moe_backward_ep(const ccoe_moe *m, ccoe_comm *comm, float *dinp, float *grads,
                                 ccoe_moe_stats *stats, ccoe_moe_scratch *s, const float *dout,
                                 const ccoe_moe_acts *a, const float *inp, const float *params,
                                 float aux_scale, int N, ccoe_error *err)
{
    CCOE_TRY(ep_check(m, comm, N, err));
    assert(N == a->N);
    const int C = m->C, K = m->K;
    int64_t bytes = 0;
    double tx = 0.0;
    double t0 = omp_get_wtime();

    /* 1. combine backward at home, dy of the kept slots to the experts' ranks */
    ccoe_moe_combine_backward(s->dweights, s->home, a->home, a, dout, N, K, C);
    CCOE_TRY(ccoe_moe_ep_to_experts(m, comm, s->dy, s->home, a, s, &bytes, &tx, err));
    double t1 = omp_get_wtime();

    /* 2. this rank's experts */
    ccoe_moe_experts_backward(m, grads, s, a, params);
    double t2 = omp_get_wtime();

    /* 3. input gradients back home, scattered to their tokens */
    CCOE_TRY(ccoe_moe_ep_to_home(m, comm, s->home, s->dxin, a, s, &bytes, &tx, err));
    ccoe_moe_scatter_backward(dinp, s->home, a->slot, N, K, C);
    double t3 = omp_get_wtime();

    /* 4. gate and router on this rank's rows; the aux losses are means over all ranks' */
    ccoe_moe_router_backward(m, dinp, grads, s, a, inp, params, aux_scale, N, a->N_total);
    ccoe_moe_shared_backward(m, dinp, grads, s, a, dout, inp, params, N);
    double t4 = omp_get_wtime();
    if (stats) {
        ccoe_moe_backward_times(stats, t0, t1, t2, t3, t4);
        stats->ep_bytes_bwd = bytes;
        stats->t_bwd_exchange = tx;
    }
    return CCOE_OK;
}
