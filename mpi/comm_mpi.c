/* comm_mpi.c - src/comm.h's communicator over MPI.
 *
 * What it is: a thin, checked translation of each op to one or a few MPI calls on a duplicate
 * of MPI_COMM_WORLD with MPI_ERRORS_RETURN, timing each call into c->stats. What it is not:
 * no placement or routing decisions, no retries (a failed call leaves the communicator
 * unusable; main aborts the job).
 *
 * Large float allreduces are split into chunks of at most 4 Mi floats (16 MiB): Open MPI
 * 4.1's default allreduce algorithm collapses above about 64 MiB (measured on 2 ranks).
 *
 * The collective watchdog (mpi.timeout; src/watchdog.h for its arithmetic). MPI runs with
 * MPI_THREAD_FUNNELED, so only the main thread calls MPI, and the watchdog has two parts:
 * - arrival: before each operation every rank sends its sequence number on that communicator
 *   (one 8-byte message per peer on a duplicate communicator) and, before the operation's
 *   blocking MPI call, polls with MPI_Test, spinning 50 us and then sleeping 10 us doubling to
 *   1 ms, until every peer's number has come. It knows exactly who is missing: past the timeout
 *   it prints the operation, the caller's phase and step, the wait and the missing ranks, then
 *   calls MPI_Abort(CCOE_EXIT_WATCHDOG). Non-blocking allreduces post their arrival when they
 *   start and are polled the same way when waited for. The payload still travels in the same
 *   blocking calls as without the watchdog (same algorithms, same sums bit for bit).
 * - a monitor thread that never calls MPI: it sleeps (a quarter of the timeout, at most 1 s)
 *   and, if the main thread has been inside one blocking MPI call (every rank had arrived) for
 *   longer than the timeout, prints that and _exits with CCOE_EXIT_WATCHDOG; mpirun then ends
 *   the other ranks. It covers a rank stopped in the middle of a transfer and MPI_Finalize.
 * Both fire only inside an MPI operation of the main thread, never while it writes a file.
 * Cost per operation with P ranks: 2 (P - 1) small messages and the polls (timeout 0: none).
 */
#include "comm_mpi.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

#include "perf.h"
#include "watchdog.h"

#define CHUNK_FLOATS ((size_t)4 << 20) /* 16 MiB */
#define CHUNK_BYTES ((size_t)1 << 30)
#define POOL 1024 /* outstanding non-blocking chunks */
#define WD_RING 16 /* arrival messages a rank may have in flight per peer */
#define WD_TAG 1

typedef struct mpi_state {
    MPI_Comm comm;
    MPI_Request req[POOL];
    int64_t req_seq[POOL]; /* the arrival sequence number of the operation using the slot */
    int free_slots[POOL];
    int n_free;
    int *counts, *displs, *rcounts, *rdispls; /* (P) alltoallv scratch */
    int we_initialised;
    /* watchdog arrival messages (on wd_comm, a duplicate of comm, tag WD_TAG) */
    MPI_Comm wd_comm;
    int64_t seq;           /* operations this rank has announced on comm */
    int64_t *seen;         /* (P) the latest sequence number received from each rank */
    int64_t *rbuf;         /* (P) the posted receive's buffer per peer */
    int64_t sbuf[WD_RING]; /* sequence number k is sent from sbuf[k % WD_RING] */
    MPI_Request *rreq;     /* (P) one posted receive per peer */
    MPI_Request *sreq;     /* (WD_RING, P) the sends of each ring entry */
    int *missing;          /* (P) scratch of the timeout message */
} mpi_state;

static mpi_state *state(ccoe_comm *c) { return (mpi_state *)c->impl; }

/* ---- the watchdog: one per process (one thread calls MPI) ---- */

static struct {
    _Atomic double timeout; /* seconds, <= 0: off */
    /* the main thread's blocking MPI call in progress (enter = 0: none) */
    _Atomic double enter;
    _Atomic unsigned long gen; /* bumped at each entry */
    _Atomic(const char *) op;
    _Atomic(const char *) phase;
    _Atomic long step;
    _Atomic int rank, size;
    /* the monitor thread */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, stop;
} g_wd = {.timeout = CCOE_WD_DEFAULT_TIMEOUT, .mu = PTHREAD_MUTEX_INITIALIZER};

static double wd_timeout(void) { return atomic_load_explicit(&g_wd.timeout, memory_order_relaxed); }

/* " (allreduce of gradients, step 12)" or "" */
static void wd_where(char *buf, size_t cap, const char *phase, long step)
{
    if (phase && step >= 0)
        snprintf(buf, cap, " (%s, step %ld)", phase, step);
    else if (phase)
        snprintf(buf, cap, " (%s)", phase);
    else if (step >= 0)
        snprintf(buf, cap, " (step %ld)", step);
    else
        buf[0] = '\0';
}

/* The main thread enters / leaves a blocking MPI call the monitor watches. */
static void wd_block(const ccoe_comm *c, const char *op)
{
    atomic_fetch_add_explicit(&g_wd.gen, 1, memory_order_relaxed);
    atomic_store_explicit(&g_wd.op, op, memory_order_relaxed);
    atomic_store_explicit(&g_wd.phase, c ? c->phase : NULL, memory_order_relaxed);
    atomic_store_explicit(&g_wd.step, c ? c->step : -1, memory_order_relaxed);
    atomic_store_explicit(&g_wd.rank, c ? c->rank : -1, memory_order_relaxed);
    atomic_store_explicit(&g_wd.size, c ? c->size : 0, memory_order_relaxed);
    atomic_store_explicit(&g_wd.enter, ccoe_now(), memory_order_release);
}

static void wd_unblock(void) { atomic_store_explicit(&g_wd.enter, 0.0, memory_order_release); }

static void *wd_monitor(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_wd.mu);
    while (!g_wd.stop) {
        const double timeout = wd_timeout();
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double p = ccoe_wd_monitor_period(timeout);
        long ns = ts.tv_nsec + (long)(p * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&g_wd.cv, &g_wd.mu, &ts);
        if (g_wd.stop)
            break;
        const double enter = atomic_load_explicit(&g_wd.enter, memory_order_acquire);
        const unsigned long gen = atomic_load_explicit(&g_wd.gen, memory_order_relaxed);
        const char *op = atomic_load_explicit(&g_wd.op, memory_order_relaxed);
        const char *phase = atomic_load_explicit(&g_wd.phase, memory_order_relaxed);
        const long step = atomic_load_explicit(&g_wd.step, memory_order_relaxed);
        const int rank = atomic_load_explicit(&g_wd.rank, memory_order_relaxed);
        const int size = atomic_load_explicit(&g_wd.size, memory_order_relaxed);
        const double now = ccoe_now();
        if (!ccoe_wd_expired(enter, now, timeout) ||
            atomic_load_explicit(&g_wd.enter, memory_order_acquire) != enter ||
            atomic_load_explicit(&g_wd.gen, memory_order_relaxed) != gen)
            continue;
        /* every peer had arrived: one of them stopped inside the call (no MPI here to ask) */
        char where[160], ranks[160];
        int peers[8], n = 0;
        for (int q = 0; q < size && n < 8; q++)
            if (q != rank)
                peers[n++] = q;
        ccoe_wd_format_ranks(ranks, sizeof ranks, peers, size - 1); /* reads at most 8 */
        wd_where(where, sizeof where, phase, step);
        fprintf(stderr,
                "ccoe: [rank %d] watchdog: %s%s has not returned after %.1f s (mpi.timeout = "
                "%g s); every rank had arrived, so %s%s stopped or the network failed during "
                "it; ending the job (exit code %d)\n",
                rank, op ? op : "an MPI call", where, now - enter, timeout,
                size > 2 ? "one of " : "", size > 1 ? ranks : "a rank", CCOE_EXIT_WATCHDOG);
        fflush(stderr);
        _exit(CCOE_EXIT_WATCHDOG); /* no MPI from this thread (MPI_THREAD_FUNNELED) */
    }
    pthread_mutex_unlock(&g_wd.mu);
    return NULL;
}

static void wd_start_monitor(void)
{
    if (g_wd.started)
        return;
    /* the monitor's sleeps are timed on CLOCK_MONOTONIC (the default CLOCK_REALTIME deadline
     * computed from a monotonic clock would lie in the past: the thread would spin) */
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        return;
    int ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
             pthread_cond_init(&g_wd.cv, &ca) == 0;
    pthread_condattr_destroy(&ca);
    /* a missing monitor only loses the in-transfer case; the arrival checks still work */
    if (ok && pthread_create(&g_wd.thread, NULL, wd_monitor, NULL) == 0)
        g_wd.started = 1;
    else if (ok)
        pthread_cond_destroy(&g_wd.cv);
}

static void wd_stop_monitor(void)
{
    if (!g_wd.started)
        return;
    pthread_mutex_lock(&g_wd.mu);
    g_wd.stop = 1;
    pthread_cond_signal(&g_wd.cv);
    pthread_mutex_unlock(&g_wd.mu);
    pthread_join(g_wd.thread, NULL);
    pthread_cond_destroy(&g_wd.cv);
    g_wd.started = 0;
    g_wd.stop = 0;
}

static void wd_sleep(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* Past the timeout in an arrival wait: names the ranks whose arrival k has not come and ends
 * the job. Main thread only. Does not return. */
static void wd_fire(ccoe_comm *c, const char *op, int64_t k, double waited, int data_pending)
{
    mpi_state *s = state(c);
    int n = 0;
    for (int p = 0; p < c->size; p++)
        if (p != c->rank && s->seen[p] < k)
            s->missing[n++] = p;
    char where[160], ranks[160];
    wd_where(where, sizeof where, c->phase, c->step);
    ccoe_wd_format_ranks(ranks, sizeof ranks, s->missing, n);
    if (n > 0)
        fprintf(stderr,
                "ccoe: [rank %d] watchdog: %s%s waited %.1f s (mpi.timeout = %g s) for %s, "
                "which %s not arrived (stopped, stuck or far slower; or a checkpoint write "
                "longer than mpi.timeout); ending the job (exit code %d)\n",
                c->rank, op, where, waited, wd_timeout(), ranks, n == 1 ? "has" : "have",
                CCOE_EXIT_WATCHDOG);
    else
        fprintf(stderr,
                "ccoe: [rank %d] watchdog: %s%s has not finished after %.1f s (mpi.timeout = "
                "%g s) although every rank had started it%s; ending the job (exit code %d)\n",
                c->rank, op, where, waited, wd_timeout(),
                data_pending ? ": a rank stopped or the network failed during the transfer" : "",
                CCOE_EXIT_WATCHDOG);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, CCOE_EXIT_WATCHDOG);
    _exit(CCOE_EXIT_WATCHDOG);
}

static ccoe_status mpi_fail(ccoe_comm *c, int rc, const char *op, size_t n, ccoe_error *err);

/* Polls until every peer's arrival number is >= k (k <= 0: no arrival to wait for) and the
 * n requests reqs are complete (completed ones become MPI_REQUEST_NULL), sleeping between
 * polls; past the timeout ends the job. Main thread only. */
static ccoe_status wd_wait(ccoe_comm *c, const char *op, int64_t k, MPI_Request *reqs, int n,
                           ccoe_error *err)
{
    mpi_state *s = state(c);
    ccoe_wd_wait w;
    ccoe_wd_wait_begin(&w, ccoe_now(), wd_timeout());
    for (;;) {
        int done = 1, flag = 0, rc;
        for (int i = 0; i < n; i++) {
            if (reqs[i] == MPI_REQUEST_NULL)
                continue;
            rc = MPI_Test(&reqs[i], &flag, MPI_STATUS_IGNORE);
            if (rc != MPI_SUCCESS)
                return mpi_fail(c, rc, op, 0, err);
            done &= flag;
        }
        const int data_pending = !done;
        for (int p = 0; p < c->size && k > 0; p++) {
            while (p != c->rank && s->seen[p] < k) {
                rc = MPI_Test(&s->rreq[p], &flag, MPI_STATUS_IGNORE);
                if (rc != MPI_SUCCESS)
                    return mpi_fail(c, rc, op, 0, err);
                if (!flag) {
                    done = 0;
                    break;
                }
                s->seen[p] = s->rbuf[p];
                rc = MPI_Irecv(&s->rbuf[p], 1, MPI_INT64_T, p, WD_TAG, s->wd_comm, &s->rreq[p]);
                if (rc != MPI_SUCCESS)
                    return mpi_fail(c, rc, "MPI_Irecv(watchdog arrival)", 1, err);
            }
        }
        if (done)
            return CCOE_OK;
        const double now = ccoe_now(), d = ccoe_wd_wait_next(&w, now);
        if (d < 0)
            wd_fire(c, op, k, now - w.t0, data_pending);
        if (d > 0)
            wd_sleep(d);
    }
}

/* Announces this rank's next operation to every peer; returns its sequence number (0 when the
 * watchdog is off or P = 1: nothing announced). */
static ccoe_status wd_announce(ccoe_comm *c, const char *op, int64_t *k, ccoe_error *err)
{
    mpi_state *s = state(c);
    *k = 0;
    if (wd_timeout() <= 0 || c->size == 1)
        return CCOE_OK;
    const int64_t next = s->seq + 1;
    MPI_Request *sr = s->sreq + (size_t)(next % WD_RING) * (size_t)c->size;
    CCOE_TRY(wd_wait(c, op, 0, sr, c->size, err)); /* this ring entry's previous sends */
    s->seq = next;
    s->sbuf[next % WD_RING] = next;
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank)
            continue;
        int rc = MPI_Isend(&s->sbuf[next % WD_RING], 1, MPI_INT64_T, p, WD_TAG, s->wd_comm,
                           &sr[p]);
        if (rc != MPI_SUCCESS)
            return mpi_fail(c, rc, "MPI_Isend(watchdog arrival)", 1, err);
    }
    *k = next;
    return CCOE_OK;
}

/* Before a blocking operation: announce, wait (watched) until every rank has arrived, then mark
 * the blocking call for the monitor (wd_unblock after it). */
static ccoe_status wd_enter(ccoe_comm *c, const char *op, ccoe_error *err)
{
    int64_t k = 0;
    CCOE_TRY(wd_announce(c, op, &k, err));
    if (k > 0)
        CCOE_TRY(wd_wait(c, op, k, NULL, 0, err));
    wd_block(c, op);
    return CCOE_OK;
}

static ccoe_status mpi_fail(ccoe_comm *c, int rc, const char *op, size_t n, ccoe_error *err)
{
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    wd_unblock();
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error code %d", rc);
    return ccoe_error_set(err, CCOE_ERR_COMM,
                          "rank %d: %s (%zu elements) failed: %s -- another rank probably "
                          "exited or the network failed; see the other ranks' messages",
                          c->rank, op, n, msg);
}

#define MPI_TRY(c, call, op, n, err)                      \
    do {                                                  \
        int mpi_rc_ = (call);                             \
        if (mpi_rc_ != MPI_SUCCESS)                       \
            return mpi_fail((c), mpi_rc_, (op), (n), (err)); \
    } while (0)

static ccoe_status allreduce_chunked(ccoe_comm *c, void *buf, size_t n, MPI_Datatype type,
                                     size_t elem, MPI_Op op, const char *name, double *timer,
                                     uint64_t *bytes, ccoe_error *err)
{
    double t0 = MPI_Wtime();
    size_t chunk = elem == 4 ? CHUNK_FLOATS : CHUNK_FLOATS / 2;
    CCOE_TRY(wd_enter(c, name, err));
    for (size_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        MPI_TRY(c, MPI_Allreduce(MPI_IN_PLACE, (char *)buf + i * elem, (int)k, type, op,
                                 state(c)->comm),
                name, n, err);
    }
    wd_unblock();
    *timer += MPI_Wtime() - t0;
    *bytes += (uint64_t)n * elem;
    return CCOE_OK;
}

static ccoe_status m_allreduce_f32(ccoe_comm *c, float *buf, size_t n, ccoe_error *err)
{
    return allreduce_chunked(c, buf, n, MPI_FLOAT, 4, MPI_SUM, "MPI_Allreduce(float, sum)",
                             &c->stats.allreduce_s, &c->stats.bytes_allreduce, err);
}

static ccoe_status m_allreduce_f64(ccoe_comm *c, double *buf, size_t n, ccoe_error *err)
{
    return allreduce_chunked(c, buf, n, MPI_DOUBLE, 8, MPI_SUM, "MPI_Allreduce(double, sum)",
                             &c->stats.wait_s, &c->stats.bytes_other, err);
}

static ccoe_status m_allreduce_i64(ccoe_comm *c, int64_t *buf, size_t n, ccoe_error *err)
{
    return allreduce_chunked(c, buf, n, MPI_INT64_T, 8, MPI_SUM, "MPI_Allreduce(int64, sum)",
                             &c->stats.wait_s, &c->stats.bytes_other, err);
}

static ccoe_status m_allreduce_max_f64(ccoe_comm *c, double *buf, size_t n, ccoe_error *err)
{
    return allreduce_chunked(c, buf, n, MPI_DOUBLE, 8, MPI_MAX, "MPI_Allreduce(double, max)",
                             &c->stats.wait_s, &c->stats.bytes_other, err);
}

static ccoe_status m_iallreduce_f32(ccoe_comm *c, float *buf, size_t n, ccoe_comm_req *req,
                                    ccoe_error *err)
{
    mpi_state *s = state(c);
    double t0 = MPI_Wtime();
    req->n = 0;
    size_t chunks = (n + CHUNK_FLOATS - 1) / CHUNK_FLOATS;
    if (chunks > CCOE_COMM_REQ_SLOTS || (int)chunks > s->n_free)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL,
                              "rank %d: non-blocking allreduce of %zu floats needs %zu request "
                              "slots (%d per operation, %d free): use smaller buckets",
                              c->rank, n, chunks, CCOE_COMM_REQ_SLOTS, s->n_free);
    int64_t seq = 0;
    CCOE_TRY(wd_announce(c, "MPI_Iallreduce(float, sum)", &seq, err));
    for (size_t i = 0; i < n; i += CHUNK_FLOATS) {
        size_t k = n - i < CHUNK_FLOATS ? n - i : CHUNK_FLOATS;
        int slot = s->free_slots[--s->n_free];
        int rc = MPI_Iallreduce(MPI_IN_PLACE, buf + i, (int)k, MPI_FLOAT, MPI_SUM, s->comm,
                                &s->req[slot]);
        if (rc != MPI_SUCCESS) {
            s->free_slots[s->n_free++] = slot;
            return mpi_fail(c, rc, "MPI_Iallreduce(float, sum)", n, err);
        }
        s->req_seq[slot] = seq;
        req->slot[req->n++] = slot;
    }
    c->stats.allreduce_s += MPI_Wtime() - t0;
    c->stats.bytes_allreduce += (uint64_t)n * 4;
    return CCOE_OK;
}

static ccoe_status m_wait(ccoe_comm *c, ccoe_comm_req *req, ccoe_error *err)
{
    mpi_state *s = state(c);
    double t0 = MPI_Wtime();
    for (int i = 0; i < req->n; i++) {
        int slot = req->slot[i];
        ccoe_status st = CCOE_OK;
        if (s->req_seq[slot] > 0 || wd_timeout() > 0) /* watched: polls and sleeps */
            st = wd_wait(c, "MPI_Iallreduce(float, sum)", s->req_seq[slot], &s->req[slot], 1,
                         err);
        else {
            int rc = MPI_Wait(&s->req[slot], MPI_STATUS_IGNORE);
            if (rc != MPI_SUCCESS)
                st = mpi_fail(c, rc, "MPI_Wait(Iallreduce)", 0, err);
        }
        s->free_slots[s->n_free++] = slot;
        if (st != CCOE_OK) {
            for (int j = i + 1; j < req->n; j++)
                s->free_slots[s->n_free++] = req->slot[j];
            req->n = 0;
            return st;
        }
    }
    req->n = 0;
    c->stats.allreduce_s += MPI_Wtime() - t0;
    return CCOE_OK;
}

static ccoe_status m_test(ccoe_comm *c, ccoe_comm_req *req, int *done, ccoe_error *err)
{
    mpi_state *s = state(c);
    double t0 = MPI_Wtime();
    *done = 0;
    while (req->n > 0) {
        int slot = req->slot[req->n - 1], flag = 0;
        MPI_TRY(c, MPI_Test(&s->req[slot], &flag, MPI_STATUS_IGNORE), "MPI_Test(Iallreduce)", 0,
                err);
        if (!flag)
            break;
        s->free_slots[s->n_free++] = slot;
        req->n--;
    }
    *done = req->n == 0;
    c->stats.allreduce_s += MPI_Wtime() - t0;
    return CCOE_OK;
}

static ccoe_status m_bcast(ccoe_comm *c, void *buf, size_t n, int root, ccoe_error *err)
{
    double t0 = MPI_Wtime();
    CCOE_TRY(wd_enter(c, "MPI_Bcast(bytes)", err));
    for (size_t i = 0; i < n; i += CHUNK_BYTES) {
        size_t k = n - i < CHUNK_BYTES ? n - i : CHUNK_BYTES;
        MPI_TRY(c, MPI_Bcast((char *)buf + i, (int)k, MPI_BYTE, root, state(c)->comm),
                "MPI_Bcast(bytes)", n, err);
    }
    wd_unblock();
    c->stats.wait_s += MPI_Wtime() - t0;
    if (c->rank == root)
        c->stats.bytes_other += (uint64_t)n;
    return CCOE_OK;
}

static ccoe_status m_alltoall_i64(ccoe_comm *c, const int64_t *send, int64_t *recv,
                                  ccoe_error *err)
{
    double t0 = MPI_Wtime();
    CCOE_TRY(wd_enter(c, "MPI_Alltoall(int64)", err));
    MPI_TRY(c, MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, state(c)->comm),
            "MPI_Alltoall(int64)", (size_t)c->size, err);
    wd_unblock();
    c->stats.exchange_s += MPI_Wtime() - t0;
    c->stats.bytes_exchanged += (uint64_t)(c->size - 1) * 8;
    return CCOE_OK;
}

static ccoe_status m_alltoallv_f32(ccoe_comm *c, const float *send, const size_t *send_counts,
                                   const size_t *send_displs, float *recv,
                                   const size_t *recv_counts, const size_t *recv_displs,
                                   ccoe_error *err)
{
    mpi_state *s = state(c);
    uint64_t sent = 0;
    for (int p = 0; p < c->size; p++) {
        if (send_counts[p] > INT_MAX || send_displs[p] > INT_MAX || recv_counts[p] > INT_MAX ||
            recv_displs[p] > INT_MAX)
            return ccoe_error_set(err, CCOE_ERR_COMM,
                                  "rank %d: alltoallv with rank %d exceeds 2^31 floats (send "
                                  "%zu at %zu, receive %zu at %zu): use smaller batches",
                                  c->rank, p, send_counts[p], send_displs[p], recv_counts[p],
                                  recv_displs[p]);
        s->counts[p] = (int)send_counts[p];
        s->displs[p] = (int)send_displs[p];
        s->rcounts[p] = (int)recv_counts[p];
        s->rdispls[p] = (int)recv_displs[p];
        if (p != c->rank)
            sent += send_counts[p];
    }
    double t0 = MPI_Wtime();
    CCOE_TRY(wd_enter(c, "MPI_Alltoallv(float)", err));
    MPI_TRY(c, MPI_Alltoallv(send, s->counts, s->displs, MPI_FLOAT, recv, s->rcounts, s->rdispls,
                             MPI_FLOAT, s->comm),
            "MPI_Alltoallv(float)", (size_t)sent, err);
    wd_unblock();
    c->stats.exchange_s += MPI_Wtime() - t0;
    c->stats.bytes_exchanged += sent * 4;
    return CCOE_OK;
}

static ccoe_status m_allgather(ccoe_comm *c, const void *send, void *recv, size_t n,
                               ccoe_error *err)
{
    if (n > INT_MAX)
        return ccoe_error_set(err, CCOE_ERR_COMM, "rank %d: allgather of %zu bytes exceeds 2^31",
                              c->rank, n);
    double t0 = MPI_Wtime();
    CCOE_TRY(wd_enter(c, "MPI_Allgather(bytes)", err));
    MPI_TRY(c, MPI_Allgather(send, (int)n, MPI_BYTE, recv, (int)n, MPI_BYTE, state(c)->comm),
            "MPI_Allgather(bytes)", n, err);
    wd_unblock();
    c->stats.exchange_s += MPI_Wtime() - t0;
    c->stats.bytes_exchanged += (uint64_t)n * (uint64_t)(c->size - 1);
    return CCOE_OK;
}

static ccoe_status m_barrier(ccoe_comm *c, ccoe_error *err)
{
    double t0 = MPI_Wtime();
    CCOE_TRY(wd_enter(c, "MPI_Barrier", err));
    MPI_TRY(c, MPI_Barrier(state(c)->comm), "MPI_Barrier", 0, err);
    wd_unblock();
    c->stats.wait_s += MPI_Wtime() - t0;
    return CCOE_OK;
}

static ccoe_status state_from(ccoe_comm *c, MPI_Comm comm, ccoe_error *err);

static ccoe_status m_split(ccoe_comm *c, int color, int key, ccoe_comm *out, ccoe_error *err)
{
    MPI_Comm nc;
    memset(out, 0, sizeof *out);
    out->failed_rank = -1;
    out->step = -1;
    CCOE_TRY(wd_enter(c, "MPI_Comm_split", err));
    MPI_TRY(c, MPI_Comm_split(state(c)->comm, color, key, &nc), "MPI_Comm_split", 1, err);
    wd_unblock();
    int rc = MPI_Comm_set_errhandler(nc, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS) {
        MPI_Comm_free(&nc);
        return mpi_fail(c, rc, "MPI_Comm_set_errhandler", 1, err);
    }
    return state_from(out, nc, err); /* frees nc on failure */
}

/* Frees s and its communicators: the arrival receives still posted are cancelled, the sends
 * (eager, already complete in practice) finished. */
static void state_free(ccoe_comm *c, mpi_state *s)
{
    if (s->rreq) {
        const int P = c->size;
        wd_block(c, "freeing the communicator");
        for (int p = 0; p < P; p++)
            if (s->rreq[p] != MPI_REQUEST_NULL) {
                MPI_Cancel(&s->rreq[p]);
                MPI_Wait(&s->rreq[p], MPI_STATUS_IGNORE);
            }
        MPI_Waitall(WD_RING * P, s->sreq, MPI_STATUSES_IGNORE);
        wd_unblock();
    }
    if (s->wd_comm != MPI_COMM_NULL)
        MPI_Comm_free(&s->wd_comm);
    MPI_Comm_free(&s->comm);
    free(s->counts);
    free(s->seen);
    free(s->rreq);
    free(s);
}

static void m_release(ccoe_comm *c)
{
    mpi_state *s = state(c);
    if (!s)
        return;
    state_free(c, s);
    c->impl = NULL;
}

static void m_set_timeout(ccoe_comm *c, double seconds)
{
    (void)c;
    atomic_store_explicit(&g_wd.timeout, seconds > 0 ? seconds : 0.0, memory_order_relaxed);
}

static void m_abort(ccoe_comm *c, int code)
{
    MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
    exit(code ? code : 1); /* MPI_Abort does not return; this keeps the contract if it did */
}

static const ccoe_comm_ops mpi_ops = {
    .name = "mpi",
    .allreduce_f32 = m_allreduce_f32,
    .allreduce_f64 = m_allreduce_f64,
    .allreduce_i64 = m_allreduce_i64,
    .allreduce_max_f64 = m_allreduce_max_f64,
    .iallreduce_f32 = m_iallreduce_f32,
    .wait = m_wait,
    .test = m_test,
    .bcast = m_bcast,
    .alltoall_i64 = m_alltoall_i64,
    .alltoallv_f32 = m_alltoallv_f32,
    .allgather = m_allgather,
    .barrier = m_barrier,
    .split = m_split,
    .release = m_release,
    .abort = m_abort,
    .set_timeout = m_set_timeout,
};

int ccoe_comm_mpi_launched(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
                                 "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i]))
            return 1;
    return 0;
}

ccoe_status ccoe_comm_mpi_init(ccoe_comm *c, int *argc, char ***argv, ccoe_error *err)
{
    memset(c, 0, sizeof *c);
    c->failed_rank = -1;
    int inited = 0, provided = 0, rc, we_initialised = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS)
            return ccoe_error_set(err, CCOE_ERR_COMM,
                                  "MPI_Init_thread failed (code %d): check the MPI installation "
                                  "(`mpirun --version`) and the launcher",
                                  rc);
        we_initialised = 1;
    }
    /* errors come back as return codes on everything we touch */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm world;
    rc = MPI_Comm_dup(MPI_COMM_WORLD, &world);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_set_errhandler(world, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS)
        return ccoe_error_set(err, CCOE_ERR_COMM, "setting up MPI_COMM_WORLD failed (code %d)",
                              rc);
    CCOE_TRY(state_from(c, world, err));
    state(c)->we_initialised = we_initialised;
    c->step = -1;
    wd_start_monitor();
    return CCOE_OK;
}

/* c over comm (owned from now on: freed here on failure, by release/finalize later). */
static ccoe_status state_from(ccoe_comm *c, MPI_Comm comm, ccoe_error *err)
{
    mpi_state *s = calloc(1, sizeof *s);
    int rc = s ? MPI_Comm_rank(comm, &c->rank) : MPI_SUCCESS;
    if (s && rc == MPI_SUCCESS)
        rc = MPI_Comm_size(comm, &c->size);
    const size_t P = (size_t)c->size;
    if (s && rc == MPI_SUCCESS) {
        s->wd_comm = MPI_COMM_NULL;
        s->counts = calloc(4 * P, sizeof(int));
        s->seen = calloc(3 * P, sizeof(int64_t)); /* seen, rbuf, missing */
        s->rreq = malloc((1 + WD_RING) * P * sizeof(MPI_Request));
    }
    if (s && rc == MPI_SUCCESS && s->counts && s->seen && s->rreq) {
        wd_block(c, "MPI_Comm_dup");
        rc = MPI_Comm_dup(comm, &s->wd_comm);
        wd_unblock();
    }
    if (!s || rc != MPI_SUCCESS || !s->counts || !s->seen || !s->rreq) {
        MPI_Comm_free(&comm);
        if (s) {
            free(s->counts);
            free(s->seen);
            free(s->rreq);
        }
        free(s);
        return rc != MPI_SUCCESS
                   ? ccoe_error_set(err, CCOE_ERR_COMM,
                                    "MPI_Comm_rank/size/dup failed (code %d)", rc)
                   : ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the MPI communicator");
    }
    s->comm = comm;
    s->displs = s->counts + P;
    s->rcounts = s->counts + 2 * P;
    s->rdispls = s->counts + 3 * P;
    s->rbuf = s->seen + P;
    s->missing = (int *)(s->seen + 2 * P);
    s->sreq = s->rreq + P;
    for (size_t i = 0; i < (1 + WD_RING) * P; i++)
        s->rreq[i] = MPI_REQUEST_NULL;
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank)
            continue;
        rc = MPI_Irecv(&s->rbuf[p], 1, MPI_INT64_T, p, WD_TAG, s->wd_comm, &s->rreq[p]);
        if (rc != MPI_SUCCESS) {
            c->impl = s;
            ccoe_status st = mpi_fail(c, rc, "MPI_Irecv(watchdog arrival)", 1, err);
            state_free(c, s);
            c->impl = NULL;
            return st;
        }
    }
    for (int i = 0; i < POOL; i++) {
        s->req[i] = MPI_REQUEST_NULL;
        s->free_slots[i] = POOL - 1 - i;
    }
    s->n_free = POOL;
    c->ops = &mpi_ops;
    c->impl = s;
    return CCOE_OK;
}

void ccoe_comm_mpi_finalize(ccoe_comm *c)
{
    mpi_state *s = state(c);
    if (!s)
        return;
    int we = s->we_initialised;
    state_free(c, s);
    c->impl = NULL;
    int fin = 0;
    MPI_Finalized(&fin);
    if (we && !fin) {
        wd_block(c, "MPI_Finalize");
        MPI_Finalize();
        wd_unblock();
    }
    wd_stop_monitor();
}
