/* model_place.c - CCoE expert placement (Eqs. 4-7 over ranks; ccoe_model_set_placement in
 * model.h): which rank computes which rows, and the forward and backward passes around the
 * exchanges. The rows travel through a ccoe_row_exchange (src/row_exchange.h); the form's
 * table says where (variants/form.h: after the branch point, or at every covered FFN).
 */
#include <assert.h>
#include <string.h>

#include "kernels.h"
#include "model_impl.h"
#include "placement.h"

ccoe_status ccoe_model_set_placement(ccoe_model *m, ccoe_comm *comm, int global_maxB,
                                     const int32_t *owner, ccoe_error *err)
{
    const ccoe_taskmap *gt = &m->taskmap;
    if (gt->n_experts == 0 || !gt->ops) {
        char forms[128];
        ccoe_form_list_names(forms, sizeof forms);
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "CCoE expert placement needs a ccoe.form (%s) with at least one "
                              "expert",
                              forms);
    }
    if (gt->ops->validate_placement)
        CCOE_TRY(gt->ops->validate_placement(gt->own_head, err));
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
    /* rows of up to T (C + 1) floats: a branch input and its targets (Eqs. 4-5) */
    CCOE_TRY(ccoe_row_exchange_init(&m->rx, P, comm->rank, m->n_paths, (int)local, (int)G, row_f,
                                    err));
    /* activations: this rank's rows, then up to the global batch of received rows */
    m->maxB = (int)(local + G);
    ccoe_arena_free(&m->act_mem);
    CCOE_TRY(model_alloc_acts(m, err));
    m->place_maxB = (int)local;
    m->place = 1;
    return CCOE_OK;
}

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

/* COLLECTIVE: every rank's rows per path (rx.counts), once per forward. */
void model_place_count_rows(ccoe_model *m, int B)
{
    ccoe_error err;
    ccoe_error_clear(&err);
    if (m->comm_status != CCOE_OK) {
        /* nothing arrives then: plans receive no rows */
        ccoe_row_exchange_clear_counts(&m->rx);
        return;
    }
    if (ccoe_row_exchange_count(&m->rx, m->comm, m->row_path, B, &err) != CCOE_OK)
        model_comm_failed(m, "CCoE expert placement", &err);
}

/* Plans exchange k (place_dest) of `unit` floats per row from rx.counts
 * (ccoe_row_exchange_plan): the received groups follow the local ones in group_*. Returns the
 * rows all ranks send in this exchange (the same on every rank: 0 = nothing to exchange). */
static long place_plan(ccoe_model *m, int k, int B, size_t unit)
{
    int dest[CCOE_MAX_EXPERTS + 1], order[CCOE_MAX_EXPERTS + 1];
    for (int p = 0; p < m->n_paths; p++)
        dest[p] = place_dest(m, k, p);
    model_path_order(m, order);
    const long total =
        ccoe_row_exchange_plan(&m->rx, dest, order, m->row_path, B, unit,
                               m->group_path + m->n_groups, m->group_r0 + m->n_groups,
                               m->group_r1 + m->n_groups);
    assert(B + m->rx.R <= m->maxB);
    return total;
}

/* COLLECTIVE: the planned exchange, rx.send -> rx.recv (back = 0) or the reverse; skipped
 * once an exchange has failed. */
static void place_exchange(ccoe_model *m, int back)
{
    ccoe_error err;
    ccoe_error_clear(&err);
    if (m->comm_status != CCOE_OK)
        return;
    if (ccoe_row_exchange_run(&m->rx, m->comm, back, &err) != CCOE_OK)
        model_comm_failed(m, "CCoE expert placement", &err);
}

/* Eqs. 6-7 placement: whether instance k's FFN exchanges rows (some expert covers it; the
 * same on every rank). */
int model_place_ffn_layer(const ccoe_model *m, int k)
{
    if (!m->place || !m->place_active || m->taskmap.ops->exchange != CCOE_EXCHANGE_FFN)
        return 0;
    for (int p = 1; p < m->n_paths; p++)
        if (place_dest(m, k, p) >= 0)
            return 1;
    return 0;
}

/* One FFN pass of instance k on this rank's rows [0, B) (fn: model_ffn_run_forward or
 * model_ffn_run_backward on io): the rows of paths the instance keeps here run locally; for the
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
    ccoe_row_exchange_gather(&m->rx, CCOE_ROWS_SENT, there, TC);
    place_exchange(m, 0);
    ccoe_row_exchange_scatter(&m->rx, CCOE_ROWS_RECEIVED, 0, there, TC);
    if (backward)
        memset(back + (size_t)B * TC, 0, (size_t)m->rx.R * TC * sizeof(float));
    for (int gi = m->n_groups; gi < m->n_groups + m->rx.n_rgroups; gi++)
        fn(m, k, m->group_path[gi], m->group_r0[gi], m->group_r1[gi], 0, T, (void *)io);
    ccoe_row_exchange_gather(&m->rx, CCOE_ROWS_RECEIVED, back, TC);
    place_exchange(m, 1);
    ccoe_row_exchange_scatter(&m->rx, CCOE_ROWS_SENT, backward, back, TC);
}

/* out = FFN(inp) of instance k on this rank's rows [0, B), expert rows on their owners. */
void model_place_ffn_forward(ccoe_model *m, int k, int B, int T, float *out, float *inp)
{
    const ffn_run_io io = {.out = out, .inp = inp};
    place_ffn_pass(m, k, B, T, model_ffn_run_forward, &io, inp, out, 0);
}

/* dinp += dFFN/dinp^T dout of instance k, the plan of model_place_ffn_forward: the owners
 * accumulate the experts' gradients. */
void model_place_ffn_backward(ccoe_model *m, int k, int B, int T, float *dinp, float *dout,
                               float *inp)
{
    const ffn_run_io io = {.out = dinp, .src = dout, .inp = inp};
    place_ffn_pass(m, k, B, T, model_ffn_run_backward, &io, dout, dinp, 1);
}

/* Eqs. 4-5: after the base prefix on the local rows [0, B) (model_place_count_rows done): sends
 * every expert row's branch input and targets to the expert's owner, runs the received groups
 * (own blocks, head) and the local base-path group's head, and returns the cross-entropy sum
 * of those rows. */
double model_place_forward(ccoe_model *m, const int32_t *targets, int B, int T, long *count)
{
    const size_t C = (size_t)m->cfg.n_embd, V = (size_t)m->cfg.vocab_size;
    const size_t TC = (size_t)T * C, row_f = (size_t)T * (C + 1);
    assert(targets);
    (void)targets;
    place_plan(m, -1, B, row_f);
    for (int i = 0; i < m->rx.nsend; i++) {
        const int r = m->rx.send_row[i];
        float *dst = m->rx.send + (size_t)i * row_f;
        memcpy(dst, model_inst_output(m, m->paths[m->row_path[r]].n_base - 1, r, T),
               TC * sizeof(float));
        for (int t = 0; t < T; t++)
            dst[TC + t] = (float)m->tgt_sorted[(size_t)r * T + t]; /* exact: |v| < 2^24 */
    }
    place_exchange(m, 0);
    const int R = m->rx.R, ng = m->rx.n_rgroups;
    for (int i = 0; i < R; i++) {
        const int row = m->rx.recv_row[i];
        const float *src = m->rx.recv + (size_t)i * row_f;
        int p = -1;
        for (int gi = m->n_groups; gi < m->n_groups + ng; gi++)
            if (row >= m->group_r0[gi] && row < m->group_r1[gi])
                p = m->group_path[gi];
        m->row_path[row] = p;
        memcpy(model_inst_output(m, m->paths[p].n_base - 1, row, T), src, TC * sizeof(float));
        for (int t = 0; t < T; t++)
            m->tgt_sorted[(size_t)row * T + t] = (int32_t)src[TC + t];
    }
    double loss = 0.0;
    long n = 0;
    for (int gi = 0; gi < m->n_groups + ng; gi++) {
        if (!place_head_group(m, gi))
            continue;
        const int r0 = m->group_r0[gi], nb = m->group_r1[gi] - r0;
        model_group_forward(m, m->group_path[gi], r0, nb, T);
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

/* Backward of the heads and groups model_place_forward ran; leaves d(branch input) of every local
 * expert row (returned by its owner) in dx. */
void model_place_backward(ccoe_model *m, float scale, float aux_scale)
{
    const int T = m->last_T, B = m->rx.B, R = m->rx.R;
    const size_t C = (size_t)m->cfg.n_embd, V = (size_t)m->cfg.vocab_size;
    const size_t TC = (size_t)T * C, row_f = (size_t)T * (C + 1);
    memset(m->dx, 0, (size_t)(B + R) * TC * sizeof(float));
    for (int gi = 0; gi < m->n_groups + m->rx.n_rgroups; gi++) {
        if (!place_head_group(m, gi))
            continue;
        const int r0 = m->group_r0[gi], nb = m->group_r1[gi] - r0;
        const size_t row = (size_t)r0 * T;
        ccoe_crossentropy_backward(m->logits + row * V, m->logits + row * V,
                                   m->tgt_sorted + row, scale, nb * T, (int)V);
        model_group_backward(m, m->group_path[gi], r0, nb, T, aux_scale);
    }
    /* d(branch input) of the received rows back to their ranks: the reverse exchange, T*C
     * floats per row (the forward's counts without the targets) */
    ccoe_row_exchange_reunit(&m->rx, row_f, TC);
    ccoe_row_exchange_gather(&m->rx, CCOE_ROWS_RECEIVED, m->dx, TC);
    place_exchange(m, 1);
    ccoe_row_exchange_scatter(&m->rx, CCOE_ROWS_SENT, 0, m->dx, TC);
}
