/* row_exchange.h - rows of a sorted batch sent to the rank that computes them, and back: the
 * communication of CCoE expert placement (src/model_place.c), as its own object.
 *
 * A batch's rows are sorted by path (src/model.c). For one exchange every path has a
 * destination: the rank that computes its rows there, or -1 (the rows stay). Plan: from every
 * rank's rows per path (ccoe_row_exchange_count), this rank's rows of remote-computed paths are
 * sent grouped by destination rank and then in sorted row order; from each rank come its rows
 * of the paths this rank computes, in that rank's sorted order. The received rows are given
 * model rows B, B+1, ... grouped by path (in the caller's path order), then by source rank: the
 * order the one-process batch has, so the owner computes them as one contiguous group per path.
 * Every rank's rows must be sorted by path in that same order (the receiver places each
 * source's rows by path from the counts alone).
 * Gather copies rows of a buffer into the send (or receive) buffer, exchange moves them, scatter
 * copies (or adds) them back into rows of a buffer. The reverse exchange (back = 1) returns
 * what the owners computed into the rows they came from.
 *
 * Memory: every buffer is sized at init from the largest batch; count, plan, gather, exchange
 * and scatter never allocate. Collectivity is marked per function.
 */
#ifndef CCOE_ROW_EXCHANGE_H
#define CCOE_ROW_EXCHANGE_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "status.h"

/* Which rows a gather or scatter touches: the rows this rank sends (in send order) or the rows
 * it received (in receive order). */
typedef enum ccoe_rows_side { CCOE_ROWS_SENT = 0, CCOE_ROWS_RECEIVED = 1 } ccoe_rows_side;

typedef struct ccoe_row_exchange {
    int P, rank;                /* ranks of the communicator, this rank */
    int n_paths;
    int max_send, max_recv;     /* rows: this rank's largest batch, every rank's together */
    size_t max_unit;            /* largest floats per row */
    int32_t *counts;            /* (P, n_paths) rows per path of every rank, last count */
    int32_t *mine;              /* (n_paths) this rank's rows per path (count scratch) */
    size_t *sc, *sd, *rc, *rd;  /* (P) each: send/receive counts and displacements, floats */
    float *send, *recv;         /* (max_send, max_unit), (max_recv, max_unit) */
    int *send_row;              /* (max_send) local row of each sent row, send order */
    int *recv_row;              /* (max_recv) model row of each received row, receive order */
    int B;                      /* local rows of the last plan */
    int nsend;                  /* rows this rank sends in the last plan */
    int R;                      /* rows this rank receives in the last plan (model rows B..) */
    int n_rgroups;              /* received groups of the last plan */
    uint64_t bytes;             /* bytes sent to other ranks since the last reset */
} ccoe_row_exchange;

/* Sizes and allocates every buffer: P ranks (this one `rank`), n_paths paths, up to max_send
 * local rows and max_recv received rows of up to max_unit floats. */
ccoe_status ccoe_row_exchange_init(ccoe_row_exchange *x, int P, int rank, int n_paths,
                                   int max_send, int max_recv, size_t max_unit,
                                   ccoe_error *err);
void ccoe_row_exchange_free(ccoe_row_exchange *x);

/* COLLECTIVE: every rank's rows per path into counts; row_path (B) is the path of each local
 * row. On failure counts are zeroed (plans then receive nothing) and the error returned. */
ccoe_status ccoe_row_exchange_count(ccoe_row_exchange *x, ccoe_comm *comm, const int *row_path,
                                    int B, ccoe_error *err);
/* No counts (a failed communicator): every rank's rows are taken as zero. */
void ccoe_row_exchange_clear_counts(ccoe_row_exchange *x);

/* Plans one exchange of `unit` floats per row (unit <= max_unit) from counts: dest (n_paths)
 * the computing rank of each path or -1, order (n_paths) the path order of the sorted batch,
 * row_path (B) the path of each local row. The received groups (path, first and one-past-last
 * model row) go to group_path/r0/r1[0 .. n_rgroups). Returns the rows all ranks send (the same
 * on every rank: 0 = nothing to exchange). */
long ccoe_row_exchange_plan(ccoe_row_exchange *x, const int *dest, const int *order,
                            const int *row_path, int B, size_t unit, int *group_path,
                            int *group_r0, int *group_r1);

/* Changes the planned counts and displacements from old_unit to new_unit floats per row (the
 * same rows exchanged with a different payload, e.g. the reverse of a forward exchange). */
void ccoe_row_exchange_reunit(ccoe_row_exchange *x, size_t old_unit, size_t new_unit);

/* Copies rows of src (rows of `unit` floats, indexed by local or model row) into the buffer of
 * `side` in that side's order. */
void ccoe_row_exchange_gather(ccoe_row_exchange *x, ccoe_rows_side side, const float *src,
                              size_t unit);
/* Copies the buffer of `side` into the rows of dst (add = 1: dst += buffer). */
void ccoe_row_exchange_scatter(const ccoe_row_exchange *x, ccoe_rows_side side, int add,
                               float *dst, size_t unit);

/* COLLECTIVE: the planned exchange, send -> recv (back = 0) or recv -> send (back = 1). Adds
 * the bytes sent to other ranks to x->bytes. */
ccoe_status ccoe_row_exchange_run(ccoe_row_exchange *x, ccoe_comm *comm, int back,
                                  ccoe_error *err);

#endif
