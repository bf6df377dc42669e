/* comm.c - the single-process communicator (rank 0 of 1) and the agreement helpers that work
 * on any communicator. The MPI communicator is in mpi/comm_mpi.c. */
#include "comm.h"

#include <stdlib.h>
#include <string.h>

static ccoe_status serial_noop_f32(ccoe_comm *c, float *buf, size_t n, ccoe_error *err)
{
    return CCOE_OK;
}

static ccoe_status serial_noop_f64(ccoe_comm *c, double *buf, size_t n, ccoe_error *err)
{
    return CCOE_OK;
}

static ccoe_status serial_noop_i64(ccoe_comm *c, int64_t *buf, size_t n, ccoe_error *err)
{
    return CCOE_OK;
}

static ccoe_status serial_iallreduce(ccoe_comm *c, float *buf, size_t n, ccoe_comm_req *req,
                                     ccoe_error *err)
{
    req->n = 0;
    return CCOE_OK;
}

static ccoe_status serial_wait(ccoe_comm *c, ccoe_comm_req *req, ccoe_error *err)
{
    req->n = 0;
    return CCOE_OK;
}

static ccoe_status serial_test(ccoe_comm *c, ccoe_comm_req *req, int *done, ccoe_error *err)
{
    req->n = 0;
    *done = 1;
    return CCOE_OK;
}

static ccoe_status serial_bcast(ccoe_comm *c, void *buf, size_t n, int root, ccoe_error *err)
{
    if (root != 0)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL,
                              "rank 0: bcast from root %d on a single-process communicator", root);
    return CCOE_OK;
}

static ccoe_status serial_alltoall_i64(ccoe_comm *c, const int64_t *send, int64_t *recv,
                                       ccoe_error *err)
{
    recv[0] = send[0];
    return CCOE_OK;
}

static ccoe_status serial_alltoallv_f32(ccoe_comm *c, const float *send, const size_t *send_counts,
                                        const size_t *send_displs, float *recv,
                                        const size_t *recv_counts, const size_t *recv_displs,
                                        ccoe_error *err)
{
    if (send_counts[0] != recv_counts[0])
        return ccoe_error_set(err, CCOE_ERR_INTERNAL,
                              "rank 0: alltoallv sends %zu floats to itself but expects %zu",
                              send_counts[0], recv_counts[0]);
    if (send_counts[0] && send + send_displs[0] != recv + recv_displs[0])
        memmove(recv + recv_displs[0], send + send_displs[0], send_counts[0] * sizeof(float));
    return CCOE_OK;
}

static ccoe_status serial_allgather(ccoe_comm *c, const void *send, void *recv, size_t n,
                                    ccoe_error *err)
{
    if (n && send != recv)
        memmove(recv, send, n);
    return CCOE_OK;
}

static ccoe_status serial_barrier(ccoe_comm *c, ccoe_error *err) { return CCOE_OK; }

static void serial_abort(ccoe_comm *c, int code) { exit(code); }

static ccoe_status serial_split(ccoe_comm *c, int color, int key, ccoe_comm *out,
                                ccoe_error *err)
{
    (void)c, (void)color, (void)key, (void)err;
    ccoe_comm_serial(out);
    return CCOE_OK;
}

static void serial_release(ccoe_comm *c) { (void)c; }

static const ccoe_comm_ops serial_ops = {
    .name = "serial",
    .allreduce_f32 = serial_noop_f32,
    .allreduce_f64 = serial_noop_f64,
    .allreduce_i64 = serial_noop_i64,
    .allreduce_max_f64 = serial_noop_f64,
    .iallreduce_f32 = serial_iallreduce,
    .wait = serial_wait,
    .test = serial_test,
    .bcast = serial_bcast,
    .alltoall_i64 = serial_alltoall_i64,
    .alltoallv_f32 = serial_alltoallv_f32,
    .allgather = serial_allgather,
    .barrier = serial_barrier,
    .split = serial_split,
    .release = serial_release,
    .abort = serial_abort,
};

void ccoe_comm_serial(ccoe_comm *c)
{
    memset(c, 0, sizeof *c);
    c->ops = &serial_ops;
    c->rank = 0;
    c->size = 1;
    c->failed_rank = -1;
    c->step = -1;
}

void ccoe_comm_set_timeout(ccoe_comm *c, double seconds)
{
    if (c->ops->set_timeout)
        c->ops->set_timeout(c, seconds);
}

ccoe_status ccoe_comm_agree_flags(ccoe_comm *c, ccoe_status local, double *flags, int n,
                                  ccoe_error *err)
{
    if (c->size == 1)
        return local;
    if (n < 0 || n > 8)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL, "rank %d: ccoe_comm_agree_flags n = %d",
                              c->rank, n);
    /* max of (P - rank) over the failed ranks: the lowest failing rank */
    double v[9];
    v[0] = local != CCOE_OK ? (double)(c->size - c->rank) : 0.0;
    for (int i = 0; i < n; i++)
        v[1 + i] = flags[i];
    ccoe_error cerr = {0};
    if (c->ops->allreduce_max_f64(c, v, (size_t)n + 1, &cerr) != CCOE_OK) {
        *err = cerr;
        return cerr.status;
    }
    for (int i = 0; i < n; i++)
        flags[i] = v[1 + i];
    if (v[0] == 0.0)
        return CCOE_OK;
    const int root = c->size - (int)v[0];
    /* the failing rank's status and message to everyone */
    struct {
        int32_t status;
        char msg[sizeof err->msg];
    } m;
    memset(&m, 0, sizeof m);
    if (c->rank == root) {
        m.status = (int32_t)local;
        memcpy(m.msg, err->msg, sizeof m.msg);
        m.msg[sizeof m.msg - 1] = '\0';
    }
    if (c->ops->bcast(c, &m, sizeof m, root, &cerr) != CCOE_OK) {
        *err = cerr;
        return cerr.status;
    }
    c->failed_rank = root;
    if (c->rank == root)
        return local;
    ccoe_status st = (ccoe_status)m.status;
    if (st == CCOE_OK)
        st = CCOE_ERR_INTERNAL;
    return ccoe_error_set(err, st, "rank %d failed: %s", root, m.msg);
}

ccoe_status ccoe_comm_agree(ccoe_comm *c, ccoe_status local, ccoe_error *err)
{
    return ccoe_comm_agree_flags(c, local, NULL, 0, err);
}

void ccoe_comm_split(int B, int P, int r, int *b0, int *b1)
{
    *b0 = (int)((int64_t)B * r / P);
    *b1 = (int)((int64_t)B * (r + 1) / P);
}
