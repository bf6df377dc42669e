/* comm.h - the communicator the core sees: a small struct of function pointers.
 *
 * src/comm.c provides the single-process communicator (rank 0 of 1: collectives are copies or
 * no-ops) that every run without mpirun uses, plus helpers built on the table (agreement on
 * failures); mpi/comm_mpi.c provides the MPI one. Nothing outside mpi/ includes <mpi.h>:
 * compute code only calls through this table. What it is not: no placement or routing logic
 * (that belongs to the callers), no threads (only the thread that created it calls it).
 *
 * Collectivity: every function marked COLLECTIVE must be called by all ranks of the
 * communicator in the same order with matching sizes (non-blocking ones are started in the
 * same order). Functions return a ccoe_status and fill err with a message naming the rank and
 * the operation; after a failure the communicator is unusable and the caller should return the
 * error (main then calls the abort op so every rank exits, never hangs).
 *
 * Sizes are in elements unless stated; rank-count arrays are (P).
 */
#ifndef CCOE_COMM_H
#define CCOE_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct ccoe_comm ccoe_comm;

#define CCOE_COMM_REQ_SLOTS 8 /* chunks one non-blocking operation may use */

/* A pending non-blocking operation (iallreduce_f32); finished with the wait op. The slots
 * index the implementation's request pool; n = 0: nothing pending. */
typedef struct ccoe_comm_req {
    int n;
    int slot[CCOE_COMM_REQ_SLOTS];
} ccoe_comm_req;

/* Time and volume counters, accumulated by the implementation since creation (the trainer
 * reports per-step differences in metrics.jsonl). Seconds; bytes this rank sent. */
typedef struct ccoe_comm_stats {
    double allreduce_s;         /* float allreduces: blocking ones, starting and waiting for
                                 * non-blocking ones (the data-parallel gradient sum) */
    double exchange_s;          /* alltoall, alltoallv, allgather (expert-parallel dispatch) */
    double wait_s;              /* small reductions, broadcasts, barriers: mostly waiting for
                                 * the slowest rank */
    uint64_t bytes_allreduce;   /* payload of float allreduces */
    uint64_t bytes_exchanged;   /* sent by alltoall / alltoallv / allgather to other ranks */
    uint64_t bytes_other;       /* everything else */
} ccoe_comm_stats;

typedef struct ccoe_comm_ops {
    const char *name; /* "serial", "mpi" */
    /* COLLECTIVE: in-place sum over ranks of n floats / doubles / int64s. For a fixed rank
     * count and n the summation order is fixed, so results repeat bit for bit. */
    ccoe_status (*allreduce_f32)(ccoe_comm *c, float *buf, size_t n, ccoe_error *err);
    ccoe_status (*allreduce_f64)(ccoe_comm *c, double *buf, size_t n, ccoe_error *err);
    ccoe_status (*allreduce_i64)(ccoe_comm *c, int64_t *buf, size_t n, ccoe_error *err);
    /* COLLECTIVE: in-place max over ranks of n doubles. */
    ccoe_status (*allreduce_max_f64)(ccoe_comm *c, double *buf, size_t n, ccoe_error *err);
    /* COLLECTIVE, non-blocking: starts an in-place float sum of buf (n floats, any size: split
     * into chunks of at most 4 Mi floats); buf must not be touched until req is waited. */
    ccoe_status (*iallreduce_f32)(ccoe_comm *c, float *buf, size_t n, ccoe_comm_req *req,
                                  ccoe_error *err);
    /* Finishes req (no-op when nothing is pending); req is empty afterwards. */
    ccoe_status (*wait)(ccoe_comm *c, ccoe_comm_req *req, ccoe_error *err);
    /* Lets pending non-blocking operations progress without blocking (MPI progresses them
     * only inside MPI calls): *done = 1 and req emptied if req has finished. */
    ccoe_status (*test)(ccoe_comm *c, ccoe_comm_req *req, int *done, ccoe_error *err);
    /* COLLECTIVE: rank `root`'s n bytes to every rank. */
    ccoe_status (*bcast)(ccoe_comm *c, void *buf, size_t n, int root, ccoe_error *err);
    /* COLLECTIVE: send[p] goes to rank p, recv[p] comes from rank p (one int64 per rank: the
     * counts exchange before an alltoallv). */
    ccoe_status (*alltoall_i64)(ccoe_comm *c, const int64_t *send, int64_t *recv,
                                ccoe_error *err);
    /* COLLECTIVE: variable exchange of floats; counts and displacements in floats, (P) each;
     * every count must be < 2^31. */
    ccoe_status (*alltoallv_f32)(ccoe_comm *c, const float *send, const size_t *send_counts,
                                 const size_t *send_displs, float *recv,
                                 const size_t *recv_counts, const size_t *recv_displs,
                                 ccoe_error *err);
    /* COLLECTIVE: gather n bytes from every rank into recv (P * n bytes, rank order) on every
     * rank. */
    ccoe_status (*allgather)(ccoe_comm *c, const void *send, void *recv, size_t n,
                             ccoe_error *err);
    ccoe_status (*barrier)(ccoe_comm *c, ccoe_error *err);
    /* COLLECTIVE: the ranks passing the same color form a new communicator *out, ranked by
     * key (ties by rank); free it with release. */
    ccoe_status (*split)(ccoe_comm *c, int color, int key, ccoe_comm *out, ccoe_error *err);
    /* Frees a communicator made by split (never the one main created). */
    void (*release)(ccoe_comm *c);
    /* Ends every rank's process with exit code `code` (the caller prints the message first).
     * Does not return. */
    void (*abort)(ccoe_comm *c, int code);
    /* Optional (NULL: no watchdog, as in the serial communicator). Sets the collective
     * watchdog's timeout in seconds (0 = off) for this process's communicators: a rank that
     * waits longer than that in one operation prints which operation, c->phase and step, how
     * long, and which ranks had not arrived, then ends every rank with CCOE_EXIT_WATCHDOG
     * (src/watchdog.h). Every rank must pass the same value at the same point of the program
     * (between operations, with no non-blocking operation pending): it changes the messages
     * the ranks exchange. */
    void (*set_timeout)(ccoe_comm *c, double seconds);
} ccoe_comm_ops;

struct ccoe_comm {
    const ccoe_comm_ops *ops;
    int rank, size;        /* this process, P */
    void *impl;            /* the implementation's state */
    ccoe_comm_stats stats; /* accumulated by the implementation */
    /* set by ccoe_comm_agree when every rank has learnt of a failure (then no rank waits in a
     * collective and the processes can exit normally, no abort needed): the lowest failing
     * rank; -1 otherwise */
    int failed_rank;
    /* what the caller is doing, named in the watchdog's message ("allreduce of gradients"):
     * a string that outlives the communicator, or NULL; and the training step (< 0: none).
     * Plain stores by the caller: no communication. */
    const char *phase;
    long step;
};

/* The single-process communicator (rank 0 of 1). Always available. */
void ccoe_comm_serial(ccoe_comm *c);

/* COLLECTIVE agreement on failure: every rank passes its local status (and its err holding the
 * message when it failed). If any rank failed, every rank returns a failure: the lowest
 * failing rank R keeps its own error, every other rank gets R's status with the message
 * "rank R failed: <R's message>"; c->failed_rank is set to R on all ranks. With P = 1 returns
 * local unchanged. A communication failure is returned as such (c->failed_rank stays -1). */
ccoe_status ccoe_comm_agree(ccoe_comm *c, ccoe_status local, ccoe_error *err);

/* The same, also agreeing on flags: flags (n doubles, n <= 8) are replaced by their max over
 * ranks (e.g. a stop signal seen by any rank). COLLECTIVE. */
ccoe_status ccoe_comm_agree_flags(ccoe_comm *c, ccoe_status local, double *flags, int n,
                                  ccoe_error *err);

/* Sets the watchdog timeout (ops->set_timeout) if the communicator has one. Every rank at the
 * same point with the same value (see set_timeout). */
void ccoe_comm_set_timeout(ccoe_comm *c, double seconds);

/* Names the caller's current phase and step for the watchdog's message (c->phase, c->step). */
static inline void ccoe_comm_phase(ccoe_comm *c, const char *phase, long step)
{
    c->phase = phase;
    c->step = step;
}

/* Rows [*b0, *b1) of a batch of B rows that rank r of P takes: contiguous, balanced
 * (sizes differ by at most one; a rank may get none when B < P). */
void ccoe_comm_split(int B, int P, int r, int *b0, int *b1);

#endif
