/* row_exchange.c - plan, gather, exchange and scatter of sorted-batch rows (row_exchange.h). */
#include "row_exchange.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

ccoe_status ccoe_row_exchange_init(ccoe_row_exchange *x, int P, int rank, int n_paths,
                                   int max_send, int max_recv, size_t max_unit, ccoe_error *err)
{
    memset(x, 0, sizeof *x);
    if (P < 1 || rank < 0 || rank >= P || n_paths < 1 || max_send < 0 || max_recv < 0)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL,
                              "row exchange: P %d, rank %d, %d paths, rows %d/%d", P, rank,
                              n_paths, max_send, max_recv);
    x->P = P;
    x->rank = rank;
    x->n_paths = n_paths;
    x->max_send = max_send;
    x->max_recv = max_recv;
    x->max_unit = max_unit;
    x->counts = calloc((size_t)P * (size_t)n_paths, sizeof(int32_t));
    x->mine = calloc((size_t)n_paths, sizeof(int32_t));
    x->sc = calloc((size_t)P, sizeof(size_t));
    x->sd = calloc((size_t)P, sizeof(size_t));
    x->rc = calloc((size_t)P, sizeof(size_t));
    x->rd = calloc((size_t)P, sizeof(size_t));
    x->send = malloc((size_t)max_send * max_unit * sizeof(float) + 64);
    x->recv = malloc((size_t)max_recv * max_unit * sizeof(float) + 64);
    x->send_row = malloc((size_t)max_send * sizeof(int) + 16);
    x->recv_row = malloc((size_t)max_recv * sizeof(int) + 16);
    if (!x->counts || !x->mine || !x->sc || !x->sd || !x->rc || !x->rd || !x->send || !x->recv ||
        !x->send_row || !x->recv_row) {
        ccoe_row_exchange_free(x);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the expert placement buffers");
    }
    return CCOE_OK;
}

void ccoe_row_exchange_free(ccoe_row_exchange *x)
{
    free(x->counts);
    free(x->mine);
    free(x->sc);
    free(x->sd);
    free(x->rc);
    free(x->rd);
    free(x->send);
    free(x->recv);
    free(x->send_row);
    free(x->recv_row);
    memset(x, 0, sizeof *x);
}

ccoe_status ccoe_row_exchange_count(ccoe_row_exchange *x, ccoe_comm *comm, const int *row_path,
                                    int B, ccoe_error *err)
{
    const size_t n = (size_t)x->n_paths * sizeof(int32_t);
    memset(x->mine, 0, n);
    for (int r = 0; r < B; r++)
        x->mine[row_path[r]]++;
    ccoe_status st = comm->ops->allgather(comm, x->mine, x->counts, n, err);
    if (st != CCOE_OK)
        ccoe_row_exchange_clear_counts(x);
    return st;
}

void ccoe_row_exchange_clear_counts(ccoe_row_exchange *x)
{
    memset(x->counts, 0, (size_t)x->n_paths * sizeof(int32_t) * (size_t)x->P);
}

long ccoe_row_exchange_plan(ccoe_row_exchange *x, const int *dest, const int *order,
                            const int *row_path, int B, size_t unit, int *group_path,
                            int *group_r0, int *group_r1)
{
    const int P = x->P, me = x->rank, np = x->n_paths;
    assert(unit <= x->max_unit && B <= x->max_send);
    size_t at = 0;
    int ns = 0;
    for (int q = 0; q < P; q++) {
        x->sd[q] = at;
        for (int r = 0; r < B; r++)
            if (dest[row_path[r]] == q) {
                x->send_row[ns++] = r;
                at += unit;
            }
        x->sc[q] = at - x->sd[q];
    }
    x->nsend = ns;
    long total = 0;
    at = 0;
    for (int q = 0; q < P; q++) {
        x->rd[q] = at;
        for (int oi = 0; oi < np; oi++) {
            const int d = dest[order[oi]];
            const int32_t n = x->counts[(size_t)q * np + order[oi]];
            total += d >= 0 ? n : 0;
            if (d == me)
                at += (size_t)n * unit;
        }
        x->rc[q] = at - x->rd[q];
    }
    int R = 0, ng = 0;
    for (int oi = 0; oi < np; oi++) {
        const int p = order[oi];
        if (dest[p] != me)
            continue;
        const int g0 = B + R;
        for (int q = 0; q < P; q++) {
            /* index of the first row of (q, p) in receive order */
            size_t idx = x->rd[q] / unit;
            for (int oj = 0; oj < oi; oj++)
                if (dest[order[oj]] == me)
                    idx += (size_t)x->counts[(size_t)q * np + order[oj]];
            const int n = x->counts[(size_t)q * np + p];
            for (int j = 0; j < n; j++)
                x->recv_row[idx + (size_t)j] = B + R + j;
            R += n;
        }
        if (B + R > g0) {
            group_path[ng] = p;
            group_r0[ng] = g0;
            group_r1[ng] = B + R;
            ng++;
        }
    }
    assert(R <= x->max_recv);
    x->B = B;
    x->R = R;
    x->n_rgroups = ng;
    return total;
}

void ccoe_row_exchange_reunit(ccoe_row_exchange *x, size_t old_unit, size_t new_unit)
{
    for (int q = 0; q < x->P; q++) {
        x->rd[q] = x->rd[q] / old_unit * new_unit;
        x->rc[q] = x->rc[q] / old_unit * new_unit;
        x->sd[q] = x->sd[q] / old_unit * new_unit;
        x->sc[q] = x->sc[q] / old_unit * new_unit;
    }
}

void ccoe_row_exchange_gather(ccoe_row_exchange *x, ccoe_rows_side side, const float *src,
                              size_t unit)
{
    const int received = side == CCOE_ROWS_RECEIVED;
    const int n = received ? x->R : x->nsend;
    const int *row = received ? x->recv_row : x->send_row;
    float *buf = received ? x->recv : x->send;
    for (int i = 0; i < n; i++)
        memcpy(buf + (size_t)i * unit, src + (size_t)row[i] * unit, unit * sizeof(float));
}

void ccoe_row_exchange_scatter(const ccoe_row_exchange *x, ccoe_rows_side side, int add,
                               float *dst, size_t unit)
{
    const int received = side == CCOE_ROWS_RECEIVED;
    const int n = received ? x->R : x->nsend;
    const int *row = received ? x->recv_row : x->send_row;
    const float *buf = received ? x->recv : x->send;
    for (int i = 0; i < n; i++) {
        float *xr = dst + (size_t)row[i] * unit;
        const float *br = buf + (size_t)i * unit;
        if (add)
            for (size_t j = 0; j < unit; j++)
                xr[j] += br[j];
        else
            memcpy(xr, br, unit * sizeof(float));
    }
}

ccoe_status ccoe_row_exchange_run(ccoe_row_exchange *x, ccoe_comm *comm, int back,
                                  ccoe_error *err)
{
    const size_t *sc = back ? x->rc : x->sc, *sd = back ? x->rd : x->sd;
    const size_t *rc = back ? x->sc : x->rc, *rd = back ? x->sd : x->rd;
    for (int q = 0; q < comm->size; q++)
        if (q != comm->rank)
            x->bytes += sc[q] * sizeof(float);
    return comm->ops->alltoallv_f32(comm, back ? x->recv : x->send, sc, sd,
                                    back ? x->send : x->recv, rc, rd, err);
}
