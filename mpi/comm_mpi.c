/* comm_mpi.c - src/comm.h's communicator over MPI.
 *
 * What it is: a thin, checked translation of each op to one or a few MPI calls on a duplicate
 * of MPI_COMM_WORLD with MPI_ERRORS_RETURN, timing each call into c->stats. What it is not:
 * no placement or routing decisions, no retries (a failed call leaves the communicator
 * unusable; main aborts the job).
 *
 * Large float allreduces are split into chunks of at most 4 Mi floats (16 MiB): Open MPI
 * 4.1's default allreduce algorithm collapses above about 64 MiB (measured on 2 ranks).
 */
#include "comm_mpi.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#define CHUNK_FLOATS ((size_t)4 << 20) /* 16 MiB */
#define CHUNK_BYTES ((size_t)1 << 30)
#define POOL 1024 /* outstanding non-blocking chunks */

typedef struct mpi_state {
    MPI_Comm comm;
    MPI_Request req[POOL];
    int free_slots[POOL];
    int n_free;
    int *counts, *displs, *rcounts, *rdispls; /* (P) alltoallv scratch */
    int we_initialised;
} mpi_state;

static mpi_state *state(ccoe_comm *c) { return (mpi_state *)c->impl; }

static ccoe_status mpi_fail(ccoe_comm *c, int rc, const char *op, size_t n, ccoe_error *err)
{
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
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
    for (size_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        MPI_TRY(c, MPI_Allreduce(MPI_IN_PLACE, (char *)buf + i * elem, (int)k, type, op,
                                 state(c)->comm),
                name, n, err);
    }
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
    for (size_t i = 0; i < n; i += CHUNK_FLOATS) {
        size_t k = n - i < CHUNK_FLOATS ? n - i : CHUNK_FLOATS;
        int slot = s->free_slots[--s->n_free];
        int rc = MPI_Iallreduce(MPI_IN_PLACE, buf + i, (int)k, MPI_FLOAT, MPI_SUM, s->comm,
                                &s->req[slot]);
        if (rc != MPI_SUCCESS) {
            s->free_slots[s->n_free++] = slot;
            return mpi_fail(c, rc, "MPI_Iallreduce(float, sum)", n, err);
        }
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
        int rc = MPI_Wait(&s->req[slot], MPI_STATUS_IGNORE);
        s->free_slots[s->n_free++] = slot;
        if (rc != MPI_SUCCESS) {
            for (int j = i + 1; j < req->n; j++)
                s->free_slots[s->n_free++] = req->slot[j];
            req->n = 0;
            return mpi_fail(c, rc, "MPI_Wait(Iallreduce)", 0, err);
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
    for (size_t i = 0; i < n; i += CHUNK_BYTES) {
        size_t k = n - i < CHUNK_BYTES ? n - i : CHUNK_BYTES;
        MPI_TRY(c, MPI_Bcast((char *)buf + i, (int)k, MPI_BYTE, root, state(c)->comm),
                "MPI_Bcast(bytes)", n, err);
    }
    c->stats.wait_s += MPI_Wtime() - t0;
    if (c->rank == root)
        c->stats.bytes_other += (uint64_t)n;
    return CCOE_OK;
}

static ccoe_status m_alltoall_i64(ccoe_comm *c, const int64_t *send, int64_t *recv,
                                  ccoe_error *err)
{
    double t0 = MPI_Wtime();
    MPI_TRY(c, MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, state(c)->comm),
            "MPI_Alltoall(int64)", (size_t)c->size, err);
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
    MPI_TRY(c, MPI_Alltoallv(send, s->counts, s->displs, MPI_FLOAT, recv, s->rcounts, s->rdispls,
                             MPI_FLOAT, s->comm),
            "MPI_Alltoallv(float)", (size_t)sent, err);
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
    MPI_TRY(c, MPI_Allgather(send, (int)n, MPI_BYTE, recv, (int)n, MPI_BYTE, state(c)->comm),
            "MPI_Allgather(bytes)", n, err);
    c->stats.exchange_s += MPI_Wtime() - t0;
    c->stats.bytes_exchanged += (uint64_t)n * (uint64_t)(c->size - 1);
    return CCOE_OK;
}

static ccoe_status m_barrier(ccoe_comm *c, ccoe_error *err)
{
    double t0 = MPI_Wtime();
    MPI_TRY(c, MPI_Barrier(state(c)->comm), "MPI_Barrier", 0, err);
    c->stats.wait_s += MPI_Wtime() - t0;
    return CCOE_OK;
}

static ccoe_status state_from(ccoe_comm *c, MPI_Comm comm, ccoe_error *err);

static ccoe_status m_split(ccoe_comm *c, int color, int key, ccoe_comm *out, ccoe_error *err)
{
    MPI_Comm nc;
    memset(out, 0, sizeof *out);
    out->failed_rank = -1;
    MPI_TRY(c, MPI_Comm_split(state(c)->comm, color, key, &nc), "MPI_Comm_split", 1, err);
    int rc = MPI_Comm_set_errhandler(nc, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS) {
        MPI_Comm_free(&nc);
        return mpi_fail(c, rc, "MPI_Comm_set_errhandler", 1, err);
    }
    return state_from(out, nc, err); /* frees nc on failure */
}

static void m_release(ccoe_comm *c)
{
    mpi_state *s = state(c);
    if (!s)
        return;
    MPI_Comm_free(&s->comm);
    free(s->counts);
    free(s);
    c->impl = NULL;
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
    return CCOE_OK;
}

/* c over comm (owned from now on: freed here on failure, by release/finalize later). */
static ccoe_status state_from(ccoe_comm *c, MPI_Comm comm, ccoe_error *err)
{
    mpi_state *s = calloc(1, sizeof *s);
    int rc = s ? MPI_Comm_rank(comm, &c->rank) : MPI_SUCCESS;
    if (s && rc == MPI_SUCCESS)
        rc = MPI_Comm_size(comm, &c->size);
    if (s && rc == MPI_SUCCESS)
        s->counts = calloc(4 * (size_t)c->size, sizeof(int));
    if (!s || rc != MPI_SUCCESS || !s->counts) {
        MPI_Comm_free(&comm);
        if (s)
            free(s->counts);
        free(s);
        return rc != MPI_SUCCESS
                   ? ccoe_error_set(err, CCOE_ERR_COMM, "MPI_Comm_rank/size failed (code %d)", rc)
                   : ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the MPI communicator");
    }
    s->comm = comm;
    const size_t P = (size_t)c->size;
    s->displs = s->counts + P;
    s->rcounts = s->counts + 2 * P;
    s->rdispls = s->counts + 3 * P;
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
    MPI_Comm_free(&s->comm);
    free(s->counts);
    int we = s->we_initialised;
    free(s);
    c->impl = NULL;
    int fin = 0;
    MPI_Finalized(&fin);
    if (we && !fin)
        MPI_Finalize();
}
