/* fakecomm.c - the in-process P-rank communicator of the tests (see fakecomm.h). Every
 * collective posts this rank's buffers in the shared world, waits at a barrier, reads the other
 * ranks' buffers, and waits again before anyone may reuse them. */
#include "fakecomm.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct world {
    int P;
    pthread_barrier_t bar;
    pthread_mutex_t lock;
    int errors;
    const void *send[TU_FAKE_MAX_RANKS];
    void *recv[TU_FAKE_MAX_RANKS];
    const size_t *sc[TU_FAKE_MAX_RANKS], *sd[TU_FAKE_MAX_RANKS];
    size_t n[TU_FAKE_MAX_RANKS];
    int root[TU_FAKE_MAX_RANKS];
} world;

typedef struct rank_ctx {
    ccoe_comm comm;
    world *w;
    void (*fn)(ccoe_comm *, void *);
    void *arg;
} rank_ctx;

static world *W(ccoe_comm *c) { return (world *)c->impl; }

static void sync_all(ccoe_comm *c) { pthread_barrier_wait(&W(c)->bar); }

static ccoe_status misuse(ccoe_comm *c, ccoe_error *err, const char *what)
{
    pthread_mutex_lock(&W(c)->lock);
    W(c)->errors++;
    pthread_mutex_unlock(&W(c)->lock);
    return ccoe_error_set(err, CCOE_ERR_COMM, "fake rank %d: %s", c->rank, what);
}

/* In-place sums in rank order (each rank computes the same sum from the posted buffers). */
#define FAKE_ALLREDUCE(name, T, OP)                                                          \
    static ccoe_status name(ccoe_comm *c, T *buf, size_t n, ccoe_error *err)                \
    {                                                                                        \
        world *w = W(c);                                                                     \
        w->send[c->rank] = buf;                                                              \
        w->n[c->rank] = n;                                                                   \
        sync_all(c);                                                                         \
        int bad = 0;                                                                         \
        for (int p = 0; p < w->P; p++)                                                       \
            bad |= w->n[p] != n;                                                             \
        T *tmp = malloc((n ? n : 1) * sizeof(T));                                            \
        for (size_t i = 0; i < n && !bad; i++) {                                             \
            T acc = ((const T *)w->send[0])[i];                                              \
            for (int p = 1; p < w->P; p++) {                                                 \
                T v = ((const T *)w->send[p])[i];                                            \
                acc = OP;                                                                    \
            }                                                                                \
            tmp[i] = acc;                                                                    \
        }                                                                                    \
        sync_all(c);                                                                         \
        if (!bad && n)                                                                       \
            memcpy(buf, tmp, n * sizeof(T));                                                 \
        free(tmp);                                                                           \
        return bad ? misuse(c, err, "allreduce sizes differ between ranks") : CCOE_OK;      \
    }

FAKE_ALLREDUCE(f_allreduce_f32, float, acc + v)
FAKE_ALLREDUCE(f_allreduce_f64, double, acc + v)
FAKE_ALLREDUCE(f_allreduce_i64, int64_t, acc + v)
FAKE_ALLREDUCE(f_allreduce_max_f64, double, v > acc ? v : acc)

static ccoe_status f_iallreduce_f32(ccoe_comm *c, float *buf, size_t n, ccoe_comm_req *req,
                                    ccoe_error *err)
{
    req->n = 0;
    return f_allreduce_f32(c, buf, n, err);
}

static ccoe_status f_wait(ccoe_comm *c, ccoe_comm_req *req, ccoe_error *err)
{
    req->n = 0;
    return CCOE_OK;
}

static ccoe_status f_bcast(ccoe_comm *c, void *buf, size_t n, int root, ccoe_error *err)
{
    world *w = W(c);
    w->recv[c->rank] = buf;
    w->n[c->rank] = n;
    w->root[c->rank] = root;
    sync_all(c);
    int bad = root < 0 || root >= w->P;
    for (int p = 0; p < w->P && !bad; p++)
        bad |= w->n[p] != n || w->root[p] != root;
    if (!bad && c->rank != root && n)
        memcpy(buf, w->recv[root], n);
    sync_all(c);
    return bad ? misuse(c, err, "bcast sizes or roots differ") : CCOE_OK;
}

static ccoe_status f_alltoall_i64(ccoe_comm *c, const int64_t *send, int64_t *recv,
                                  ccoe_error *err)
{
    world *w = W(c);
    w->send[c->rank] = send;
    sync_all(c);
    for (int p = 0; p < w->P; p++)
        recv[p] = ((const int64_t *)w->send[p])[c->rank];
    sync_all(c);
    return CCOE_OK;
}

static ccoe_status f_alltoallv_f32(ccoe_comm *c, const float *send, const size_t *send_counts,
                                   const size_t *send_displs, float *recv,
                                   const size_t *recv_counts, const size_t *recv_displs,
                                   ccoe_error *err)
{
    world *w = W(c);
    w->send[c->rank] = send;
    w->sc[c->rank] = send_counts;
    w->sd[c->rank] = send_displs;
    sync_all(c);
    int bad = 0;
    for (int p = 0; p < w->P; p++) {
        size_t n = w->sc[p][c->rank];
        if (n != recv_counts[p]) {
            bad = 1;
            continue;
        }
        if (n) {
            memcpy(recv + recv_displs[p], (const float *)w->send[p] + w->sd[p][c->rank],
                   n * sizeof(float));
            if (p != c->rank)
                c->stats.bytes_exchanged += n * sizeof(float);
        }
    }
    sync_all(c);
    return bad ? misuse(c, err, "alltoallv receive counts do not match the senders'") : CCOE_OK;
}

static ccoe_status f_allgather(ccoe_comm *c, const void *send, void *recv, size_t n,
                               ccoe_error *err)
{
    world *w = W(c);
    w->send[c->rank] = send;
    w->n[c->rank] = n;
    sync_all(c);
    int bad = 0;
    for (int p = 0; p < w->P; p++) {
        bad |= w->n[p] != n;
        if (!bad && n)
            memcpy((char *)recv + (size_t)p * n, w->send[p], n);
    }
    sync_all(c);
    return bad ? misuse(c, err, "allgather sizes differ between ranks") : CCOE_OK;
}

static ccoe_status f_barrier(ccoe_comm *c, ccoe_error *err)
{
    sync_all(c);
    return CCOE_OK;
}

/* Not needed by the fake-rank tests (only --train-experts with more ranks than experts
 * splits): an error, so a test that reaches it fails instead of hanging. */
static ccoe_status f_split(ccoe_comm *c, int color, int key, ccoe_comm *out, ccoe_error *err)
{
    (void)color, (void)key, (void)out;
    return ccoe_error_set(err, CCOE_ERR_INTERNAL, "rank %d: the fake communicator cannot split",
                          c->rank);
}

static void f_release(ccoe_comm *c) { (void)c; }

static void f_abort(ccoe_comm *c, int code)
{
    fprintf(stderr, "fake rank %d: abort(%d)\n", c->rank, code);
    abort();
}

static const ccoe_comm_ops fake_ops = {
    .name = "fake",
    .allreduce_f32 = f_allreduce_f32,
    .allreduce_f64 = f_allreduce_f64,
    .allreduce_i64 = f_allreduce_i64,
    .allreduce_max_f64 = f_allreduce_max_f64,
    .iallreduce_f32 = f_iallreduce_f32,
    .wait = f_wait,
    .bcast = f_bcast,
    .alltoall_i64 = f_alltoall_i64,
    .alltoallv_f32 = f_alltoallv_f32,
    .allgather = f_allgather,
    .barrier = f_barrier,
    .split = f_split,
    .release = f_release,
    .abort = f_abort,
};

static void *thread_main(void *p)
{
    rank_ctx *r = p;
    r->fn(&r->comm, r->arg);
    return NULL;
}

int tu_fake_run(int P, void (*fn)(ccoe_comm *comm, void *arg), void *arg)
{
    if (P < 1 || P > TU_FAKE_MAX_RANKS)
        return 1;
    world w;
    memset(&w, 0, sizeof w);
    w.P = P;
    pthread_barrier_init(&w.bar, NULL, (unsigned)P);
    pthread_mutex_init(&w.lock, NULL);
    rank_ctx ctx[TU_FAKE_MAX_RANKS];
    pthread_t th[TU_FAKE_MAX_RANKS];
    for (int r = 0; r < P; r++) {
        memset(&ctx[r], 0, sizeof ctx[r]);
        ctx[r].comm.ops = &fake_ops;
        ctx[r].comm.rank = r;
        ctx[r].comm.size = P;
        ctx[r].comm.impl = &w;
        ctx[r].comm.failed_rank = -1;
        ctx[r].w = &w;
        ctx[r].fn = fn;
        ctx[r].arg = arg;
        pthread_create(&th[r], NULL, thread_main, &ctx[r]);
    }
    for (int r = 0; r < P; r++)
        pthread_join(th[r], NULL);
    pthread_barrier_destroy(&w.bar);
    pthread_mutex_destroy(&w.lock);
    return w.errors;
}
