/* train.c - the training loop, single-process or data-parallel over a ccoe_comm.
 *
 * Data parallelism (opts->comm with P > 1): train.batch_size stays the GLOBAL micro-batch.
 * Every rank reads the same data stream and takes the contiguous rows [b0, b1) of each
 * micro-batch (ccoe_comm_split), so the run does what one process would do: token counts and
 * losses are summed over ranks, the backward scale uses the global token count, and the
 * gradients of the replicated parameters are summed by allreduces of buckets (contiguous
 * float ranges of at most DP_BUCKET_FLOATS) in one fixed order on every rank: with
 * opts->allreduce_overlap non-blocking ones started from the model's grad_ready hook as soon as
 * backward has finished them and waited after backward, by default blocking ones after
 * backward (faster with Open MPI 4.1 on this 2-core machine: papers/mpi.md). Clipping and AdamW then run identically everywhere, so the replicas stay
 * bit-identical (checked at the end). Rank 0 alone prints, writes metrics and checkpoints.
 *
 * Failures: before every step the ranks agree (one tiny allreduce) on local failures, stop
 * signals and the time limit, so a rank that failed makes every rank return an error naming it
 * instead of leaving the others in a collective; errors that cannot wait for the agreement
 * are returned with comm->failed_rank = -1 and main aborts the job (among them a failed
 * exchange inside the model's forward or backward: ccoe_model_comm_status).
 *
 * Several CCoE experts at once (opts->train_experts): rank r trains the experts placed on it
 * one after another, each exactly as `ccoe.train_expert = NAME` would (fresh optimizer, its
 * domains' data from position 0); the experts' regions are then broadcast from their owners
 * and rank 0 writes one checkpoint. */
#include "train.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "checkpoint_tokenizer.h"
#include "fs.h"
#include "optim.h"
#include "perf.h"
#include "placement.h"
#include "session.h"

#define DP_BUCKET_FLOATS ((size_t)1 << 19) /* 2 MiB buckets: several per model to overlap */

static volatile sig_atomic_t g_stop_signal = 0;

static void on_signal(int sig) { g_stop_signal = sig; }

static void format_eta(char *out, size_t cap, double seconds)
{
    if (!(seconds >= 0) || seconds > 360000)
        seconds = 0;
    long s = (long)seconds;
    snprintf(out, cap, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
}

/* One bucket of the gradient allreduce: floats [begin, end) of the gradient block. */
typedef struct dp_bucket {
    size_t begin, end;
    size_t ready;       /* floats of it that backward has finished this step */
    ccoe_comm_req req;
} dp_bucket;

typedef struct train_ctx {
    ccoe_session *s;
    ccoe_comm *comm;         /* the ranks this loop runs over (a serial one when P = 1) */
    ccoe_comm serial;        /* used when the caller passes none, and per expert */
    int rank, P;
    int b0, b1;              /* this rank's rows of every global micro-batch */
    ccoe_adamw opt;
    ccoe_train_state st;
    FILE *metrics;           /* rank 0: metrics_path, opened by ccoe_fs_open_output */
    char metrics_path[CCOE_STR + 96];
    char ckpt_path[CCOE_STR + 64];
    double flops_per_token;
    double peak_gflops, gemm_gflops;
    double step_flops;       /* model FLOPs of the last step, summed over ranks */
    int expert;              /* isolated expert training: its index, else -1 */
    size_t grad_begin, grad_end; /* the trained float range of the parameter block */
    int bar;
    int quiet;               /* no printing (opts->quiet, or a rank other than 0) */
    int expert_mode;         /* one expert of --train-experts: no checkpoints, no evaluation */
    int placed;              /* CCoE experts placed on owner ranks (--ccoe-placement experts) */
    double aux;              /* mean over micro-batches of the summed MoE aux loss, last step */
    char *json;              /* buffer for ccoe_moe_stats_json (MoE models) */
    size_t json_cap;
    /* data-parallel gradient buckets, in issue order (descending offsets) */
    dp_bucket *buckets;
    int n_buckets, issued;
    /* expert-parallel MoE (the model's comm spreads each MoE layer's experts over the ranks):
     * every expert's float range, its owner; n_ep = 0 otherwise */
    size_t (*ep_span)[2];
    int *ep_owner;
    int n_ep;
    /* the expert -> rank map (src/placement.h) of the MoE layers or the CCoE experts, printed
     * at start and recorded in the metrics; n_place = 0: nothing placed */
    int32_t place_map[CCOE_PLACE_MAX];
    int n_place;
    ccoe_status hook_st;     /* first failure inside the grad_ready hook */
    ccoe_error hook_err;
    const ccoe_train_opts *o;
} train_ctx;

static int only_expert(const ccoe_param *p, void *ctx)
{
    return p->expert == *(const int *)ctx;
}

static int test_hook(const train_ctx *t, const char *mode, long step)
{
    const ccoe_train_opts *o = t->o;
    return o->test_fail_mode && strcmp(o->test_fail_mode, mode) == 0 &&
           o->test_fail_rank == t->rank && (step < 0 || o->test_fail_step == step);
}

/* ---- data-parallel gradient buckets ---- */

/* The expert-parallel span holding float offset `off`, or -1 (the replicated parameters). */
static int ep_span_of(const train_ctx *t, size_t off)
{
    for (int i = 0; i < t->n_ep; i++)
        if (off >= t->ep_span[i][0] && off < t->ep_span[i][1])
            return i;
    return -1;
}

/* Whether the gradient of p is summed over ranks. Every parameter is replicated under data
 * parallelism except the experts of an expert-parallel MoE layer: an owner's gradient is
 * already complete (it saw every rank's tokens) and the other ranks' is zero (src/moe.h). */
static int param_replicated(const train_ctx *t, const ccoe_param *p)
{
    return ep_span_of(t, p->offset) < 0;
}

/* Expert parallelism: the spans and owners of every MoE expert (the trainer updates only the
 * experts it owns, and gathers them from their owners before a checkpoint). */
static ccoe_status ep_setup(train_ctx *t, ccoe_error *err)
{
    const ccoe_model *m = &t->s->model;
    if (m->n_moe == 0 || !m->comm || m->comm->size <= 1 || m->moe.ep_size != m->comm->size)
        return CCOE_OK;
    if (t->expert >= 0)
        return CCOE_OK; /* isolated CCoE expert training: the base (and its MoE) is frozen */
    size_t n = (size_t)m->n_moe * (size_t)m->moe.E;
    t->ep_span = malloc(n * sizeof *t->ep_span);
    t->ep_owner = malloc(n * sizeof *t->ep_owner);
    if (!t->ep_span || !t->ep_owner)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the expert placement");
    for (int i = 0; i < m->n_moe; i++)
        for (int e = 0; e < m->moe.E; e++) {
            size_t b, end;
            ccoe_moe_expert_span(&m->moe, e, &b, &end);
            t->ep_span[t->n_ep][0] = m->moe_offset[i] + b;
            t->ep_span[t->n_ep][1] = m->moe_offset[i] + end;
            t->ep_owner[t->n_ep] = ccoe_moe_expert_owner(&m->moe, e);
            t->n_ep++;
        }
    return CCOE_OK;
}

/* CCoE expert placement: each CCoE expert's float range is owned by the rank that runs it
 * (ccoe_model_set_placement); like an expert-parallel MoE expert its gradient is complete
 * there, left out of the gradient sum, updated only there and gathered before a checkpoint. */
static ccoe_status place_setup(train_ctx *t, ccoe_error *err)
{
    ccoe_model *m = &t->s->model;
    const int E = m->gating.n_experts;
    /* the balanced policy weighs each expert by the training sequences routed to it (the same
     * data, hence the same map, on every rank) */
    double load[CCOE_MAX_EXPERTS];
    ccoe_placement_ccoe_load(&m->gating, &t->s->data, load);
    CCOE_TRY(ccoe_placement_map(&t->s->cfg.mpi, E, t->P, load, t->place_map, err));
    t->n_place = E;
    CCOE_TRY(ccoe_model_set_placement(m, t->comm, t->s->cfg.train.batch_size, t->place_map,
                                      err));
    t->ep_span = malloc((size_t)E * sizeof *t->ep_span);
    t->ep_owner = malloc((size_t)E * sizeof *t->ep_owner);
    if (!t->ep_span || !t->ep_owner)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the expert placement");
    for (int e = 0; e < E; e++) { /* experts follow each other in the layout: increasing */
        t->ep_span[e][0] = m->expert_begin[e];
        t->ep_span[e][1] = m->expert_end[e];
        t->ep_owner[e] = m->place_owner[e];
    }
    t->n_ep = E;
    t->placed = 1;
    return CCOE_OK;
}

/* AdamW filter: isolated training's expert, and never another rank's MoE expert. */
static int update_filter(const ccoe_param *p, void *ctx)
{
    const train_ctx *t = ctx;
    if (t->expert >= 0 && p->expert != t->expert)
        return 0;
    int sp = ep_span_of(t, p->offset);
    return sp < 0 || t->ep_owner[sp] == t->rank;
}

/* COLLECTIVE: every MoE expert's parameters and AdamW moments from its owner to every rank
 * (before a checkpoint: the other ranks' copies are stale). */
static ccoe_status ep_gather_what(train_ctx *t, int moments, ccoe_error *err)
{
    ccoe_model *m = &t->s->model;
    for (int i = 0; i < t->n_ep; i++) {
        size_t off = t->ep_span[i][0], len = (t->ep_span[i][1] - off) * sizeof(float);
        int root = t->ep_owner[i];
        CCOE_TRY(t->comm->ops->bcast(t->comm, m->param_block + off, len, root, err));
        if (!moments)
            continue;
        CCOE_TRY(t->comm->ops->bcast(t->comm, t->opt.m + off, len, root, err));
        CCOE_TRY(t->comm->ops->bcast(t->comm, t->opt.v + off, len, root, err));
    }
    return CCOE_OK;
}

static ccoe_status ep_gather(train_ctx *t, ccoe_error *err) { return ep_gather_what(t, 1, err); }

/* COLLECTIVE: the global gradient norm over [grad_begin, grad_end): the replicated part is the
 * same on every rank after the allreduce; the expert-parallel experts' squares are summed over
 * their owners. */
static ccoe_status grad_norm(train_ctx *t, double *out, ccoe_error *err)
{
    const float *g = t->s->model.grad_block;
    if (t->n_ep == 0) {
        *out = ccoe_grad_norm(g, t->grad_begin, t->grad_end);
        return CCOE_OK;
    }
    double rep = 0.0, own = 0.0;
    size_t at = t->grad_begin;
    for (int i = 0; i <= t->n_ep; i++) { /* spans are in increasing order */
        size_t b = i < t->n_ep ? t->ep_span[i][0] : t->grad_end;
        if (b > at) {
            double x = ccoe_grad_norm(g, at, b);
            rep += x * x;
        }
        if (i < t->n_ep) {
            if (t->ep_owner[i] == t->rank) {
                double x = ccoe_grad_norm(g, t->ep_span[i][0], t->ep_span[i][1]);
                own += x * x;
            }
            at = t->ep_span[i][1];
        }
    }
    CCOE_TRY(t->comm->ops->allreduce_f64(t->comm, &own, 1, err));
    *out = sqrt(rep + own);
    return CCOE_OK;
}

/* The buckets: the replicated parameters inside [grad_begin, grad_end) (with isolated expert
 * training only the expert's own tensors), merged into contiguous ranges, cut into pieces of
 * at most DP_BUCKET_FLOATS from the top, ordered by descending offset (backward finishes the
 * top of the layout first). */
static ccoe_status dp_plan(train_ctx *t, ccoe_error *err)
{
    const ccoe_model *m = &t->s->model;
    size_t (*ranges)[2] = malloc(((size_t)m->n_params + 1) * sizeof *ranges);
    if (!ranges)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the allreduce plan");
    int nr = 0;
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        size_t b = p->offset, e = p->offset + ((p->numel + 15) & ~(size_t)15);
        if (b < t->grad_begin || e > t->grad_end || !param_replicated(t, p))
            continue;
        if (t->expert >= 0 && p->expert != t->expert)
            continue;
        if (nr > 0 && ranges[nr - 1][1] == b)
            ranges[nr - 1][1] = e;
        else {
            ranges[nr][0] = b;
            ranges[nr][1] = e;
            nr++;
        }
    }
    size_t nb = 0;
    for (int r = 0; r < nr; r++)
        nb += (ranges[r][1] - ranges[r][0] + DP_BUCKET_FLOATS - 1) / DP_BUCKET_FLOATS;
    t->buckets = calloc(nb ? nb : 1, sizeof *t->buckets);
    if (!t->buckets) {
        free(ranges);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the allreduce plan");
    }
    int k = 0;
    for (int r = nr - 1; r >= 0; r--)
        for (size_t e = ranges[r][1]; e > ranges[r][0];) {
            size_t b = e - ranges[r][0] > DP_BUCKET_FLOATS ? e - DP_BUCKET_FLOATS : ranges[r][0];
            t->buckets[k].begin = b;
            t->buckets[k].end = e;
            k++;
            e = b;
        }
    t->n_buckets = k;
    free(ranges);
    return CCOE_OK;
}

static void dp_reset(train_ctx *t)
{
    for (int i = 0; i < t->n_buckets; i++)
        t->buckets[i].ready = 0;
    t->issued = 0;
    t->hook_st = CCOE_OK;
}

/* Starts the buckets that are complete, in plan order (every rank starts the same sequence). */
static void dp_issue(train_ctx *t, int all)
{
    ccoe_comm *c = t->comm;
    float *g = t->s->model.grad_block;
    while (t->hook_st == CCOE_OK && t->issued < t->n_buckets) {
        dp_bucket *b = &t->buckets[t->issued];
        if (!all && b->ready < b->end - b->begin)
            break;
        t->hook_st = c->ops->iallreduce_f32(c, g + b->begin, b->end - b->begin, &b->req,
                                            &t->hook_err);
        t->issued++;
    }
}

/* The model's grad_ready hook: [begin, end) of the gradient block is final. */
static void dp_ready(void *ctx, size_t begin, size_t end)
{
    train_ctx *t = ctx;
    for (int i = t->issued; i < t->n_buckets; i++) {
        dp_bucket *b = &t->buckets[i];
        size_t lo = b->begin > begin ? b->begin : begin, hi = b->end < end ? b->end : end;
        if (lo < hi)
            b->ready += hi - lo;
    }
    dp_issue(t, 0);
    /* MPI advances non-blocking collectives only inside MPI calls: give the started ones a
     * push between blocks so they overlap the rest of backward */
    for (int i = 0; i < t->issued && t->hook_st == CCOE_OK; i++) {
        int done = 0;
        if (t->buckets[i].req.n > 0)
            t->hook_st = t->comm->ops->test(t->comm, &t->buckets[i].req, &done, &t->hook_err);
    }
}

/* Starts what backward did not announce, then waits for every bucket. */
static ccoe_status dp_finish(train_ctx *t, ccoe_error *err)
{
    if (!t->o->allreduce_overlap) { /* blocking, bucket by bucket in plan order */
        for (; t->issued < t->n_buckets; t->issued++) {
            const dp_bucket *b = &t->buckets[t->issued];
            CCOE_TRY(t->comm->ops->allreduce_f32(t->comm, t->s->model.grad_block + b->begin,
                                                 b->end - b->begin, err));
        }
        return CCOE_OK;
    }
    dp_issue(t, 1);
    ccoe_status st = t->hook_st;
    if (st != CCOE_OK)
        *err = t->hook_err;
    for (int i = 0; i < t->issued; i++) {
        ccoe_status w = t->comm->ops->wait(t->comm, &t->buckets[i].req, st ? NULL : err);
        if (st == CCOE_OK)
            st = w;
    }
    return st;
}

/* FNV-1a over the replicated parameters: the replicas must agree bit for bit. */
static uint64_t replicated_hash(const train_ctx *t)
{
    const float *w = t->s->model.param_block;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int i = 0; i < t->n_buckets; i++) {
        const unsigned char *p = (const unsigned char *)(w + t->buckets[i].begin);
        size_t n = (t->buckets[i].end - t->buckets[i].begin) * sizeof(float);
        for (size_t j = 0; j < n; j++)
            h = (h ^ p[j]) * 0x100000001b3ULL;
    }
    return h;
}

/* COLLECTIVE: the replicas' parameters are identical (a self-verifying invariant). */
static ccoe_status check_replicas(train_ctx *t, ccoe_error *err)
{
    if (t->P == 1)
        return CCOE_OK;
    uint64_t h = replicated_hash(t);
    uint64_t *all = malloc((size_t)t->P * sizeof *all);
    if (!all)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "rank %d: out of memory", t->rank);
    ccoe_status st = t->comm->ops->allgather(t->comm, &h, all, sizeof h, err);
    for (int r = 1; st == CCOE_OK && r < t->P; r++)
        if (all[r] != all[0]) {
            st = ccoe_error_set(err, CCOE_ERR_INTERNAL,
                                "the replicated parameters of rank %d differ from rank 0's "
                                "after step %ld (a non-deterministic reduction: please report "
                                "this bug)",
                                r, t->st.step);
            t->comm->failed_rank = 0; /* every rank sees the same table */
        }
    free(all);
    return st;
}

/* ---- checkpoints, metrics, evaluation (rank 0) ---- */

/* COLLECTIVE (expert-parallel MoE experts are gathered first); rank 0 writes. */
static ccoe_status save_checkpoint(train_ctx *t, ccoe_error *err)
{
    /* the ranks wait for rank 0's write in the agreement that follows */
    ccoe_comm_phase(t->comm, "checkpoint save (rank 0 writes)", t->st.step);
    if (t->expert_mode)
        return CCOE_OK;
    if (t->n_ep > 0)
        CCOE_TRY(ep_gather(t, err));
    if (t->rank != 0)
        return CCOE_OK;
    t->st.data_pos = t->s->data.pos;
    return ccoe_checkpoint_save(t->ckpt_path, &t->s->cfg, &t->s->model, &t->opt, &t->st, err);
}

/* Flushes the metrics (rank 0; OK elsewhere): a failed write or flush (disk full, quota, I/O
 * error) fails the run instead of leaving a silently truncated log. */
static ccoe_status metrics_flush(train_ctx *t, ccoe_error *err)
{
    if (!t->metrics)
        return CCOE_OK;
    /* a write that failed inside fprintf left its errno (called right after the writes) */
    if (!ferror(t->metrics)) {
        errno = 0;
        if (fflush(t->metrics) == 0)
            return CCOE_OK;
    }
    int e = errno ? errno : EIO;
    return ccoe_error_set(err, CCOE_ERR_IO, "cannot write the metrics file '%s': %s",
                          t->metrics_path, strerror(e));
}

/* Closes the metrics (rank 0); st is the run's status, a close failure replaces an OK one. */
static ccoe_status metrics_close(train_ctx *t, ccoe_status st, ccoe_error *err)
{
    if (!t->metrics)
        return st;
    ccoe_status fl = metrics_flush(t, st == CCOE_OK ? err : NULL);
    errno = 0;
    int bad = fclose(t->metrics) != 0;
    t->metrics = NULL;
    if (st != CCOE_OK)
        return st;
    if (fl != CCOE_OK)
        return fl;
    if (bad)
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot write the metrics file '%s': %s",
                              t->metrics_path, strerror(errno ? errno : EIO));
    return CCOE_OK;
}

/* On --resume (rank 0): cuts the metrics back to what the checkpoint holds, so that every
 * step appears once: the lines up to the first one of a step after `step` (logged by the run
 * after its last checkpoint, trained again now) or a partly written one (a killed run) stay,
 * the rest is dropped. Lines are in step order; one without a step is kept. */
static ccoe_status metrics_trim(train_ctx *t, long step, ccoe_error *err)
{
    FILE *f = t->metrics;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long long keep = 0, dropped = 0; /* bytes kept; lines dropped */
    rewind(f);
    while ((n = getline(&line, &cap, f)) > 0) {
        const char *k = strstr(line, "\"step\":");
        if (dropped || line[n - 1] != '\n' || (k && strtol(k + 7, NULL, 10) > step))
            dropped++;
        else
            keep += n;
    }
    free(line);
    int e = ferror(f) ? (errno ? errno : EIO) : 0;
    if (!e && dropped && (fflush(f) != 0 || ftruncate(fileno(f), (off_t)keep) != 0))
        e = errno ? errno : EIO;
    if (!e && fseek(f, 0, SEEK_END) != 0)
        e = errno ? errno : EIO;
    if (e)
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot trim the metrics file '%s' to step %ld "
                              "on --resume: %s", t->metrics_path, step, strerror(e));
    if (dropped && !t->quiet)
        fprintf(stderr, "resume: dropped %lld line%s after step %ld from %s (logged after the "
                        "checkpoint; trained again now)\n",
                dropped, dropped == 1 ? "" : "s", step, t->metrics_path);
    return CCOE_OK;
}

/* ,"moe":[{"layer":l, <ccoe_moe_stats_json fields>}, ...] of the last micro-batch. */
static void write_moe_stats(train_ctx *t)
{
    const ccoe_model *m = &t->s->model;
    fputs(",\"moe\":[", t->metrics);
    for (int i = 0; i < m->n_moe; i++) {
        int n = ccoe_moe_stats_json(&m->moe_stats[i], t->json, t->json_cap);
        if (n >= 0 && (size_t)n >= t->json_cap) { /* logging only: grow and retry once */
            char *nb = realloc(t->json, (size_t)n + 1);
            if (nb) {
                t->json = nb;
                t->json_cap = (size_t)n + 1;
                n = ccoe_moe_stats_json(&m->moe_stats[i], t->json, t->json_cap);
            }
        }
        if (n < 1 || (size_t)n >= t->json_cap)
            continue;
        fprintf(t->metrics, "%s{\"layer\":%d,%s", i ? "," : "", m->moe_layer[i], t->json + 1);
    }
    fputc(']', t->metrics);
}

/* Every rank evaluates its share of the batches and tasks (ccoe_eval_domains); with placed
 * CCoE experts rank 0 evaluates every path alone after gathering them. Rank 0 writes.
 * COLLECTIVE. A failed exchange is returned without agreement (the other ranks may wait in
 * it: main ends the job). */
static ccoe_status run_eval(train_ctx *t, int with_tasks, int print_table, ccoe_error *err)
{
    ccoe_session *s = t->s;
    ccoe_comm_phase(t->comm, "evaluation", t->st.step);
    if (t->expert_mode)
        return CCOE_OK;
    ccoe_comm *split = t->comm;
    if (t->placed) {
        /* rank 0 evaluates every path alone: the CCoE experts' parameters from their owners */
        CCOE_TRY(ep_gather_what(t, 0, err));
        s->model.place_active = 0;
        if (t->rank != 0)
            return CCOE_OK;
        split = NULL;
    }
    ccoe_domain_eval ev[CCOE_MAX_DOMAINS];
    CCOE_TRY(ccoe_eval_domains(&s->model, &s->data, &s->tok, &s->batch,
                               s->cfg.train.eval_batches, with_tasks, split, ev, err));
    CCOE_TRY(ccoe_model_comm_status(&s->model, err));
    if (t->rank != 0)
        return CCOE_OK;
    fprintf(t->metrics, "{\"step\":%ld,\"eval\":", t->st.step);
    ccoe_eval_json(t->metrics, &s->data, ev);
    fputs("}\n", t->metrics); /* the caller flushes (metrics_flush) */
    if (print_table) {
        printf("\nper-domain evaluation after %ld steps:\n", t->st.step);
        ccoe_eval_print(stdout, &s->data, ev);
        fflush(stdout);
    }
    return CCOE_OK;
}

/* ---- one optimizer step ---- */

/* The lowest rank whose flag is set (COLLECTIVE; every rank passes its own flag). */
static ccoe_status lowest_rank(train_ctx *t, int flag, int *out, ccoe_error *err)
{
    double v = flag ? (double)(t->P - t->rank) : 0.0;
    CCOE_TRY(t->comm->ops->allreduce_max_f64(t->comm, &v, 1, err));
    *out = v > 0 ? t->P - (int)v : -1;
    return CCOE_OK;
}

/* grad_accum micro-batches, gradient sum over ranks, clip, AdamW. Returns the mean loss.
 * COLLECTIVE on t->comm. */
static ccoe_status train_step(train_ctx *t, double *loss_out, double *gnorm_out, double lr,
                              ccoe_error *err)
{
    ccoe_session *s = t->s;
    ccoe_model *m = &s->model;
    ccoe_comm *c = t->comm;
    const ccoe_train_config *tc = &s->cfg.train;
    const int B = tc->batch_size, T = s->cfg.model.seq_len;
    const int b0 = t->b0, nb = t->b1 - t->b0;
    ccoe_model_zero_grad(m);
    /* summed over ranks: loss, aux * tokens (aux losses are per-rank means), flops */
    double sums[3] = {0.0, 0.0, 0.0};
    double aux_sum = 0.0;
    int64_t tokens = 0;
    const int nan_hook = test_hook(t, "nan", t->st.step + 1);
    /* MoE routing: training noise keyed by (seed, step, layer, token of the step) */
    m->train = 1;
    m->place_active = t->placed; /* forward and backward exchange rows: every rank runs them */
    /* expert-parallel MoE layers exchange tokens too: a rank without rows (B < P) runs the
     * model on zero rows so that it takes part in every exchange */
    const int exchange = t->placed || (t->P > 1 && m->n_moe > 0 && m->moe.ep_size == t->P);
    m->step = (uint64_t)t->st.step;
    const long step = t->st.step + 1;
    for (int micro = 0; micro < tc->grad_accum; micro++) {
        ccoe_comm_phase(c, "forward/backward exchange", step);
        /* every rank reads the whole global micro-batch and keeps its rows */
        ccoe_data_next_batch(&s->data, s->batch.tokens, s->batch.targets, s->batch.domains, B);
        long count = 0;
        double lsum = 0.0, aux = 0.0;
        m->token_offset = ((int64_t)micro * B + b0) * T;
        if (nb > 0 || exchange) {
            lsum = ccoe_model_forward(m, s->batch.tokens + (size_t)b0 * T,
                                      s->batch.targets + (size_t)b0 * T, s->batch.domains + b0,
                                      nb, T, &count);
            aux = m->aux_loss;
            /* a failed exchange: the other ranks may wait in it, so no agreement (main ends
             * the job) */
            CCOE_TRY(ccoe_model_comm_status(m, err));
        }
        if (nan_hook)
            lsum = NAN;
        int64_t gcount = count;
        ccoe_comm_phase(c, "token count", step);
        if (t->P > 1)
            CCOE_TRY(c->ops->allreduce_i64(c, &gcount, 1, err));
        ccoe_comm_phase(c, "forward/backward exchange", step);
        sums[0] += lsum;
        sums[1] += aux * (double)count;
        aux_sum += aux;
        tokens += gcount;
        const int last = micro == tc->grad_accum - 1;
        if (last && t->P > 1) {
            dp_reset(t);
            if (t->o->allreduce_overlap) {
                m->grad_ready = dp_ready;
                m->grad_ready_ctx = t;
            }
        }
        /* every training row is full, so each micro-batch counts B*T tokens; the aux losses
         * are means per micro-batch (papers/moe.md, loss scaling) */
        if ((nb > 0 || exchange) && gcount > 0) {
            ccoe_model_backward(m, 1.0f / ((float)gcount * (float)tc->grad_accum),
                                1.0f / (float)tc->grad_accum);
            CCOE_TRY(ccoe_model_comm_status(m, err));
            sums[2] += ccoe_model_last_flops(m);
        }
        m->grad_ready = NULL;
        m->grad_ready_ctx = NULL;
    }
    m->train = 0;
    m->place_active = 0;
    double loss, aux;
    const int local_bad = !isfinite(sums[0]) || !isfinite(sums[1]);
    if (t->P > 1) {
        ccoe_comm_phase(c, "allreduce of gradients", step);
        CCOE_TRY(dp_finish(t, err));
        ccoe_comm_phase(c, "loss sums", step);
        CCOE_TRY(c->ops->allreduce_f64(c, sums, 3, err));
        loss = sums[0] / (double)tokens;
        aux = sums[1] / (double)tokens;
    } else {
        loss = sums[0] / (double)tokens;
        aux = aux_sum / (double)tc->grad_accum;
    }
    t->step_flops = sums[2];
    double gnorm;
    ccoe_comm_phase(c, "gradient norm", step);
    CCOE_TRY(grad_norm(t, &gnorm, err));
    t->aux = aux;
    *loss_out = loss;
    *gnorm_out = gnorm;
    if (!isfinite(loss) || !isfinite(t->aux) || !isfinite(gnorm)) {
        /* every rank sees the same global values: name the rank whose own loss went bad */
        char where[48] = "";
        if (t->P > 1) {
            int bad = -1;
            CCOE_TRY(lowest_rank(t, local_bad, &bad, err));
            if (bad >= 0)
                snprintf(where, sizeof where, " on rank %d", bad);
            c->failed_rank = bad >= 0 ? bad : 0; /* every rank returns this error */
        }
        return ccoe_error_set(err, CCOE_ERR_NUMERIC,
                              "non-finite %s at step %ld%s (loss %g, MoE aux loss %g, grad norm "
                              "%g, lr %g): lower train.lr, raise train.warmup or set "
                              "train.grad_clip; the last good checkpoint (if any) is kept at %s",
                              !isfinite(loss)    ? "loss"
                              : !isfinite(t->aux) ? "MoE aux loss"
                                                  : "gradient norm",
                              t->st.step + 1, where, loss, t->aux, gnorm, lr, t->ckpt_path);
    }
    /* clipping is fused into the update (the gradient block itself stays unscaled) */
    float gs = tc->grad_clip > 0 && gnorm > tc->grad_clip ? (float)(tc->grad_clip / gnorm) : 1.0f;
    if (t->n_ep > 0)
        ccoe_adamw_step_scaled(&t->opt, m, tc, lr, gs, update_filter, t);
    else if (t->expert >= 0)
        ccoe_adamw_step_scaled(&t->opt, m, tc, lr, gs, only_expert, &t->expert);
    else
        ccoe_adamw_step_scaled(&t->opt, m, tc, lr, gs, NULL, NULL);
    return CCOE_OK;
}

/* ---- the loop ---- */

/* COLLECTIVE on t->comm. A failure on one rank reaches every rank at the next agreement. */
static ccoe_status train_loop(train_ctx *t, const ccoe_train_opts *o, ccoe_error *err)
{
    ccoe_session *s = t->s;
    ccoe_comm *c = t->comm;
    const ccoe_train_config *tc = &s->cfg.train;
    const long tokens_per_step = (long)tc->batch_size * s->cfg.model.seq_len * tc->grad_accum;
    double window_t0 = ccoe_now(), window_tokens = 0, window_flops = 0, run_t0 = ccoe_now();
    double tok_s = 0.0;
    long first_step = t->st.step;
    ccoe_status local = CCOE_OK; /* this rank's failure since the last agreement */
    for (;;) {
        if (local == CCOE_OK && test_hook(t, "error", t->st.step + 1))
            local = ccoe_error_set(err, CCOE_ERR_IO,
                                   "test hook CCOE_TEST_FAIL_MODE=error: injected failure "
                                   "before step %ld",
                                   t->st.step + 1);
        if (test_hook(t, "abort", t->st.step + 1))
            return ccoe_error_set(err, CCOE_ERR_IO,
                                  "test hook CCOE_TEST_FAIL_MODE=abort: injected failure before "
                                  "step %ld, without agreement",
                                  t->st.step + 1);
        if (test_hook(t, "kill", t->st.step + 1))
            raise(SIGKILL);
        /* agreement: failures, a stop signal on any rank, rank 0's clock for --time-limit */
        double flags[2] = {(double)g_stop_signal,
                           t->rank == 0 && o->time_limit > 0 &&
                                   ccoe_now() - run_t0 >= o->time_limit
                               ? 1.0
                               : 0.0};
        ccoe_comm_phase(c, "agreement before the step", t->st.step + 1);
        CCOE_TRY(ccoe_comm_agree_flags(c, local, flags, 2, err));
        if (t->st.step >= tc->steps)
            break;
        const int stop_signal = (int)flags[0], time_up = flags[1] > 0;
        if (t->st.step > first_step &&
            ((o->stop_at > 0 && t->st.step >= o->stop_at) || time_up)) {
            CCOE_TRY(ccoe_comm_agree(c, save_checkpoint(t, err), err));
            if (!t->quiet)
                fprintf(stderr, "stopping after step %ld of %ld (%s); continue with --resume %s\n",
                        t->st.step, tc->steps, o->stop_at > 0 && t->st.step >= o->stop_at
                                                   ? "--stop-at" : "--time-limit",
                        t->ckpt_path);
            return CCOE_OK;
        }
        if (stop_signal) {
            CCOE_TRY(ccoe_comm_agree(c, save_checkpoint(t, err), err));
            c->failed_rank = 0; /* every rank returns this error */
            ccoe_error_set(err, CCOE_ERR_STOPPED,
                           "stopped by signal %d (%s) after step %ld; checkpoint saved to %s: "
                           "continue with --resume %s",
                           stop_signal, strsignal(stop_signal), t->st.step, t->ckpt_path,
                           t->ckpt_path);
            err->signal = stop_signal;
            return CCOE_ERR_STOPPED;
        }
        double lr = ccoe_lr_at(tc, t->st.step);
        double loss, gnorm;
        ccoe_comm_stats c0 = c->stats;
        double t0 = ccoe_now();
        CCOE_TRY(train_step(t, &loss, &gnorm, lr, err));
        double dt = ccoe_now() - t0;
        ccoe_comm_stats c1 = c->stats;
        t->st.step++;
        window_tokens += (double)tokens_per_step;
        window_flops += t->step_flops;
        double step_tok_s = (double)tokens_per_step / dt;
        double step_gflops = t->step_flops / dt * 1e-9 / t->P; /* per rank */
        double mfu = step_gflops / t->peak_gflops;
        int last = t->st.step == tc->steps;
        double ar = (c1.allreduce_s - c0.allreduce_s) * 1e3;
        double ex = (c1.exchange_s - c0.exchange_s) * 1e3;
        double wt = (c1.wait_s - c0.wait_s) * 1e3;
        double compute = dt * 1e3 - ar - ex - wt;
        if (t->metrics) {
            fprintf(t->metrics,
                    "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tok_per_s\":%.1f,"
                    "\"mfu_peak\":%.4f,\"mfu_sgemm\":%.4f,\"step_ms\":%.3f,\"compute_ms\":%.3f,"
                    "\"allreduce_ms\":%.3f,\"exchange_ms\":%.3f,\"wait_ms\":%.3f,"
                    "\"bytes_allreduce\":%llu,\"bytes_exchanged\":%llu",
                    t->st.step, loss, lr, gnorm, step_tok_s, mfu, step_gflops / t->gemm_gflops,
                    dt * 1e3, compute > 0 ? compute : 0.0, ar, ex, wt,
                    (unsigned long long)(c1.bytes_allreduce - c0.bytes_allreduce),
                    (unsigned long long)(c1.bytes_exchanged - c0.bytes_exchanged));
            if (s->model.n_moe > 0) {
                /* loss stays the CE (perplexity); the trained objective adds the aux losses */
                fprintf(t->metrics, ",\"aux_loss\":%.6g,\"objective\":%.6f", t->aux,
                        loss + t->aux);
                if (t->st.step % tc->log_every == 0 || last)
                    write_moe_stats(t);
            }
            fputs("}\n", t->metrics);
            /* every step's line on disk, or the run fails (at the next agreement) saying why */
            local = metrics_flush(t, err);
        }
        if (!t->quiet && (t->st.step % tc->log_every == 0 || last || t->bar)) {
            double now = ccoe_now();
            double mfu_w = 0.0;
            if (now > window_t0) {
                tok_s = window_tokens / (now - window_t0);
                mfu_w = window_flops / t->P / (now - window_t0) * 1e-9 / t->peak_gflops;
            }
            double eta_s = (double)(tc->steps - t->st.step) * (double)tokens_per_step / tok_s;
            char eta[32];
            format_eta(eta, sizeof eta, eta_s);
            const char *who = t->expert_mode ? s->gating.experts[t->expert].name : NULL;
            if (t->bar) {
                int width = 24;
                int filled = (int)((double)width * (double)t->st.step / (double)tc->steps);
                char bar[32];
                for (int i = 0; i < width; i++)
                    bar[i] = i < filled ? '#' : '.';
                bar[width] = '\0';
                fprintf(stderr, "\r%s%s[%s] %ld/%ld loss %.4f | %.0f tok/s | MFU %.1f%% | ETA %s  ",
                        who ? who : "", who ? " " : "", bar, t->st.step, tc->steps, loss, tok_s,
                        100.0 * mfu_w, eta);
                if (last)
                    fputc('\n', stderr);
            } else {
                fprintf(stderr,
                        "%s%sstep %6ld/%ld | loss %.4f | lr %.3g | grad %.3f | %.0f tok/s | MFU "
                        "%.1f%% | ETA %s\n",
                        who ? who : "", who ? ": " : "", t->st.step, tc->steps, loss, lr, gnorm,
                        tok_s, 100.0 * mfu_w, eta);
            }
            fflush(stderr);
            window_t0 = ccoe_now();
            window_tokens = 0;
            window_flops = 0;
        }
        if (!last && tc->eval_every > 0 && t->st.step % tc->eval_every == 0) {
            double e0 = ccoe_now();
            CCOE_TRY(run_eval(t, 0, 0, err));
            if (local == CCOE_OK)
                local = metrics_flush(t, err);
            window_t0 += ccoe_now() - e0; /* evaluation is not training throughput */
        }
        if (local == CCOE_OK && !last && tc->ckpt_every > 0 && t->st.step % tc->ckpt_every == 0)
            local = save_checkpoint(t, err);
    }
    double total = ccoe_now() - run_t0;
    if (!t->quiet && t->st.step > first_step)
        fprintf(stderr, "%s%strained %ld steps in %.1f s (%.0f tok/s average incl. evaluation)\n",
                t->expert_mode ? s->gating.experts[t->expert].name : "",
                t->expert_mode ? ": " : "", t->st.step - first_step, total,
                (double)(t->st.step - first_step) * (double)tokens_per_step / total);
    if (t->expert_mode)
        return CCOE_OK;
    CCOE_TRY(check_replicas(t, err));
    CCOE_TRY(ccoe_comm_agree(c, save_checkpoint(t, err), err));
    CCOE_TRY(run_eval(t, 1, !t->quiet, err));
    CCOE_TRY(ccoe_comm_agree(c, metrics_flush(t, err), err));
    if (!t->quiet)
        printf("checkpoint: %s\nmetrics:    %s/metrics.jsonl\n", t->ckpt_path,
               s->cfg.train.out_dir);
    return CCOE_OK;
}

/* ---- several experts at once ---- */

/* Parses "all" or "A,B,C" into expert indices (gating order for all). */
static ccoe_status parse_expert_list(const ccoe_gating *g, const char *spec, int *ids, int *n,
                                     ccoe_error *err)
{
    *n = 0;
    if (g->n_experts == 0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "--train-experts %s, but the model has no CCoE experts: set "
                              "ccoe.form and ccoe.experts",
                              spec);
    if (strcmp(spec, "all") == 0) {
        for (int e = 0; e < g->n_experts; e++)
            ids[(*n)++] = e;
        return CCOE_OK;
    }
    char buf[CCOE_STR];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int e = ccoe_gating_find_expert(g, tok);
        if (e < 0)
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "--train-experts: '%s' is not an expert of ccoe.experts (%s)",
                                  tok, spec);
        for (int i = 0; i < *n; i++)
            if (ids[i] == e)
                return ccoe_error_set(err, CCOE_ERR_ARG, "--train-experts names '%s' twice",
                                      tok);
        ids[(*n)++] = e;
    }
    if (*n == 0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "--train-experts needs 'all' or a comma-separated list of experts");
    return CCOE_OK;
}

/* The domains routed to expert e; 0 if none. */
static uint32_t expert_domains(const ccoe_gating *g, int e)
{
    uint32_t mask = 0;
    for (int d = 0; d < g->n_domains; d++)
        if (g->route[d] == e)
            mask |= 1u << d;
    return mask;
}

/* Trains one expert in isolation on this rank, as ccoe.train_expert = its name would. */
static ccoe_status train_one_expert(train_ctx *t, int e, const ccoe_train_opts *o,
                                    ccoe_error *err)
{
    ccoe_session *s = t->s;
    ccoe_model *m = &s->model;
    CCOE_TRY(ccoe_data_restrict(&s->data, expert_domains(&s->gating, e), err));
    ccoe_data_seek(&s->data, 0);
    t->expert = e;
    m->train_path = 1 + e;
    t->grad_begin = m->expert_begin[e];
    t->grad_end = m->expert_end[e];
    t->opt.t = 0; /* the expert's moments are still zero: nothing else touched them */
    memset(&t->st, 0, sizeof t->st);
    ccoe_rng_seed(&t->st.rng, s->cfg.train.seed ^ 0x7261696eULL);
    /* data parallel inside a group: the allreduce buckets of this expert's tensors */
    ccoe_status st = CCOE_OK;
    free(t->buckets);
    t->buckets = NULL;
    t->n_buckets = 0;
    if (t->P > 1)
        st = dp_plan(t, err);
    /* the metrics: this rank's, or its group's first rank's (t->comm: the group) */
    t->metrics = NULL;
    if (st == CCOE_OK && t->rank == 0) {
        snprintf(t->metrics_path, sizeof t->metrics_path, "%s/metrics.%s.jsonl",
                 s->cfg.train.out_dir, s->gating.experts[e].name);
        t->metrics = ccoe_fs_open_output(t->metrics_path, 0, "metrics file", err);
        if (!t->metrics)
            st = err->status;
        else
            fprintf(t->metrics,
                    "{\"event\":\"start\",\"expert\":\"%s\",\"ranks\":%d,\"step\":0}\n",
                    s->gating.experts[e].name, t->P);
    }
    st = ccoe_comm_agree(t->comm, st, err);
    if (st == CCOE_OK)
        st = train_loop(t, o, err);
    return metrics_close(t, st, err);
}

/* ---- set-up ---- */

static ccoe_status setup(train_ctx *t, ccoe_session *s, ccoe_config *cfg, const ccoe_train_opts *o,
                         ccoe_st_file **resume_file, int *have_session, ccoe_error *err)
{
    if (o->resume) {
        /* the checkpoint's stored config wins over the command line for everything that shapes
         * the run; only the step budget, logging and output knobs may change */
        ccoe_config stored;
        CCOE_TRY(ccoe_checkpoint_open(o->resume, &stored, resume_file, err));
        CCOE_TRY(ccoe_ckpt_tok_check(*resume_file, o->resume, cfg->data.tokenizer, err));
        stored.train.steps = cfg->train.steps;
        stored.train.log_every = cfg->train.log_every;
        stored.train.eval_every = cfg->train.eval_every;
        stored.train.ckpt_every = cfg->train.ckpt_every;
        stored.run = cfg->run;
        stored.mpi.timeout = cfg->mpi.timeout; /* a property of this job, not of the run */
        memcpy(stored.train.out_dir, cfg->train.out_dir, sizeof stored.train.out_dir);
        /* the placement is the checkpoint's unless --set mpi.KEY=... changes it (it moves
         * experts between ranks, not the math) */
        for (int i = 0; i < o->n_mpi_sets; i++)
            CCOE_TRY(ccoe_config_set(&stored, o->mpi_sets[i], err));
        CCOE_TRY(ccoe_config_validate(&stored, err));
        *cfg = stored;
    }
    /* a list map must fit this job's rank count (before anything is loaded or written) */
    if (t->P > 1 && !o->train_experts &&
        (strcmp(cfg->moe.gate, "none") != 0 || o->ccoe_placement)) {
        int32_t owner[CCOE_PLACE_MAX];
        CCOE_TRY(ccoe_placement_map(&cfg->mpi, ccoe_placement_expert_count(cfg), t->P, NULL,
                                    owner, err));
    }
    if (o->train_experts && (o->resume || cfg->ccoe.train_expert[0] || o->stop_at > 0 ||
                             o->time_limit > 0))
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "--train-experts trains every listed expert to train.steps in "
                              "one go: it excludes --resume, --stop-at, --time-limit and "
                              "ccoe.train_expert");
    snprintf(t->ckpt_path, sizeof t->ckpt_path, "%s/checkpoint.safetensors", cfg->train.out_dir);
    if (t->rank == 0) {
        if (!o->resume && !o->force && access(t->ckpt_path, F_OK) == 0)
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "%s already exists: continue it with --resume %s, start over "
                                  "with --force, or choose another train.out_dir",
                                  t->ckpt_path, t->ckpt_path);
    }
    if (t->rank == 0 || o->train_experts)
        CCOE_TRY(ccoe_fs_mkdirs(cfg->train.out_dir, err));
    /* a run killed while writing its checkpoint left a full-size temporary file: remove those
     * that are a minute old and whose writer is gone (before this run writes any) */
    if (t->rank == 0)
        ccoe_remove_stale_temps(t->ckpt_path, 60, stderr);
    if (test_hook(t, "file", -1))
        snprintf(cfg->data.manifest, sizeof cfg->data.manifest, "%s",
                 "/nonexistent/ccoe-test-hook/manifest.ini");
    CCOE_TRY(ccoe_session_open(s, cfg, 1, err));
    *have_session = 1;
    t->grad_begin = 0;
    t->grad_end = s->model.num_params;
    CCOE_TRY(ccoe_adamw_init(&t->opt, s->model.num_params, err));
    if (s->model.n_moe > 0) {
        t->json_cap = 4096 + (size_t)s->model.moe.E * 64;
        t->json = malloc(t->json_cap);
        if (!t->json)
            return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the MoE log buffer");
    }
    if (s->cfg.ccoe.train_expert[0]) {
        /* isolated expert training: only the expert learns, only on its domains' data */
        int e = ccoe_gating_find_expert(&s->gating, s->cfg.ccoe.train_expert);
        uint32_t mask = expert_domains(&s->gating, e);
        if (!mask)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "ccoe.train_expert = %s, but no domain routes to it: add "
                                  "DOMAIN:%s to ccoe.routes",
                                  s->cfg.ccoe.train_expert, s->cfg.ccoe.train_expert);
        CCOE_TRY(ccoe_data_restrict(&s->data, mask, err));
        t->expert = e;
        s->model.train_path = 1 + e;
        t->grad_begin = s->model.expert_begin[e];
        t->grad_end = s->model.expert_end[e];
    }
    ccoe_rng_seed(&t->st.rng, s->cfg.train.seed ^ 0x7261696eULL);
    if (*resume_file) {
        ccoe_status st = ccoe_checkpoint_load(*resume_file, o->resume, &s->model, &t->opt, &t->st,
                                              err);
        ccoe_st_close(*resume_file);
        *resume_file = NULL;
        CCOE_TRY(st);
        ccoe_data_seek(&s->data, t->st.data_pos);
    } else if (o->init_from) {
        ccoe_config other;
        ccoe_st_file *f = NULL;
        int missing[CCOE_MAX_EXPERTS] = {0};
        ccoe_model_init_weights(&s->model, s->cfg.train.seed, CCOE_INIT_RANDOM);
        ccoe_status st = ccoe_checkpoint_open(o->init_from, &other, &f, err);
        if (st == CCOE_OK)
            st = ccoe_ckpt_tok_check(f, o->init_from, s->cfg.data.tokenizer, err);
        if (st == CCOE_OK)
            st = ccoe_checkpoint_load_init(f, o->init_from, &s->model, missing, err);
        ccoe_st_close(f);
        CCOE_TRY(st);
        for (int e = 0; e < s->gating.n_experts; e++)
            if (missing[e] && s->cfg.ccoe.init == CCOE_INIT_COPY)
                ccoe_model_expert_copy_base(&s->model, e);
        ccoe_data_seek(&s->data, 0);
    } else {
        ccoe_model_init_weights(&s->model, s->cfg.train.seed, s->cfg.ccoe.init);
        ccoe_data_seek(&s->data, 0);
    }
    if (t->rank == 0) {
        snprintf(t->metrics_path, sizeof t->metrics_path, "%s/metrics.jsonl",
                 s->cfg.train.out_dir);
        t->metrics = ccoe_fs_open_output(t->metrics_path, o->resume != NULL, "metrics file", err);
        if (!t->metrics)
            return err->status;
        if (o->resume)
            CCOE_TRY(metrics_trim(t, t->st.step, err));
    }
    t->flops_per_token =
        ccoe_model_train_flops_per_token(&s->cfg.model, s->cfg.model.n_layer, s->cfg.model.seq_len);
    t->peak_gflops = ccoe_measure_fma_peak(s->cfg.run.threads, 0.15);
    t->gemm_gflops = ccoe_gemm_measure_gflops(&s->gemm, 768, 0.2);
    return CCOE_OK;
}

static void print_start(train_ctx *t, const ccoe_train_opts *o)
{
    ccoe_session *s = t->s;
    char *ini = ccoe_config_to_ini(&s->cfg);
    fprintf(stderr, "# resolved config\n%s", ini ? ini : "");
    free(ini);
    fprintf(stderr,
            "model: %.2fM parameters, %.1f MFLOP/token (train) | data: %d domains, %zu train "
            "/ %zu val sequences of %d tokens\n"
            "threads %d | gemm %s | fp32 peak %.0f GFLOP/s (%s, measured) | sgemm %.0f "
            "GFLOP/s (measured)\n",
            (double)s->model.num_params / 1e6, t->flops_per_token / 1e6, s->data.n_domains,
            s->data.n_train, s->data.n_val, s->cfg.model.seq_len, s->cfg.run.threads,
            s->gemm.kernel_set, t->peak_gflops, ccoe_simd_name(), t->gemm_gflops);
    if (t->P > 1)
        fprintf(stderr,
                "%d ranks (%s): %s; %d gradient buckets of up to %.1f MiB, %s\n", t->P,
                t->comm->ops->name,
                o->train_experts ? "experts trained in parallel"
                                 : "data parallel, global batch split by rows",
                t->n_buckets, (double)DP_BUCKET_FLOATS * 4.0 / (1 << 20),
                o->allreduce_overlap ? "non-blocking allreduce overlapped with backward"
                                     : "blocking allreduce after backward");
    if (t->n_place > 0) {
        const char *names[CCOE_MAX_EXPERTS];
        int ccoe = t->placed;
        for (int e = 0; ccoe && e < t->n_place; e++)
            names[e] = s->gating.experts[e].name;
        char map[4096];
        ccoe_placement_format(t->place_map, t->n_place, ccoe ? names : NULL, map, sizeof map);
        fprintf(stderr, "placement: expert -> rank (%s experts, mpi.placement = %s): %s\n",
                ccoe ? "CCoE" : "MoE (every MoE layer)",
                ccoe_placement_name(s->cfg.mpi.placement), map);
        if (ccoe && t->P <= 64) { /* what balanced evens out: each owner's training sequences */
            double load[CCOE_MAX_EXPERTS], per_rank[64] = {0};
            ccoe_placement_ccoe_load(&s->gating, &s->data, load);
            for (int e = 0; e < t->n_place; e++)
                per_rank[t->place_map[e]] += load[e];
            fputs("placement: training sequences of each rank's experts:", stderr);
            for (int q = 0; q < t->P; q++)
                fprintf(stderr, " %.0f", per_rank[q]);
            fputc('\n', stderr);
        }
    }
    if (o->resume)
        fprintf(stderr, "resuming %s at step %ld\n", o->resume, t->st.step);
    if (o->init_from)
        fprintf(stderr, "weights from %s\n", o->init_from);
    if (s->gating.n_experts > 0)
        ccoe_gating_print(stderr, &s->gating);
    const ccoe_moe_config *mc = &s->model.moe.cfg;
    if (s->model.n_moe > 0 && mc->top_k == 1 &&
        ((strcmp(mc->gate, "topk") == 0 && mc->renormalize) || strcmp(mc->gate, "noisy_topk") == 0))
        fprintf(stderr,
                "warning: moe.gate = %s with moe.top_k = 1%s: the kept expert's weight is always "
                "1, so the router learns only from the balancing losses; use moe.gate = topk "
                "with moe.renormalize = false (Switch) or moe.top_k >= 2\n",
                mc->gate, strcmp(mc->gate, "topk") == 0 ? " and renormalize" : "");
    if (t->expert >= 0)
        fprintf(stderr, "isolated training of expert '%s' (%.2fM parameters); everything "
                        "else is frozen\n",
                s->gating.experts[t->expert].name, (double)(t->grad_end - t->grad_begin) / 1e6);
}

/* --train-experts with more ranks than experts: the first rank of expert i's group (i = n:
 * one past the last group). */
static int group_first(int i, int P, int n) { return (int)((long)i * P / n); }

/* COLLECTIVE: --train-experts. */
static ccoe_status run_experts(train_ctx *t, const ccoe_train_opts *o, ccoe_error *err)
{
    ccoe_session *s = t->s;
    ccoe_comm *world = t->comm;
    int ids[CCOE_MAX_EXPERTS], n = 0;
    ccoe_status local = parse_expert_list(&s->gating, o->train_experts, ids, &n, err);
    for (int i = 0; local == CCOE_OK && i < n; i++)
        if (!expert_domains(&s->gating, ids[i]))
            local = ccoe_error_set(err, CCOE_ERR_CONFIG,
                                   "--train-experts: no domain routes to expert '%s': add "
                                   "DOMAIN:%s to ccoe.routes",
                                   s->gating.experts[ids[i]].name, s->gating.experts[ids[i]].name);
    /* the ranks of the listed experts ([mpi]): every expert trains for the same steps, so the
     * work per rank is its expert count: contiguous and balanced split the list in blocks,
     * round_robin deals it out, list takes each expert's entry of mpi.map (ccoe.experts order) */
    int32_t owner[CCOE_MAX_EXPERTS], full[CCOE_MAX_EXPERTS];
    if (local == CCOE_OK && s->cfg.mpi.placement == CCOE_PLACE_LIST) {
        local = ccoe_placement_map(&s->cfg.mpi, s->gating.n_experts, t->P, NULL, full, err);
        for (int i = 0; local == CCOE_OK && i < n; i++)
            owner[i] = full[ids[i]];
    } else if (local == CCOE_OK) {
        local = ccoe_placement_map(&s->cfg.mpi, n, t->P, NULL, owner, err);
    }
    /* more ranks than experts (and no list map): expert i trains data parallel on the group
     * of ranks [floor(i P / n), floor((i + 1) P / n)), whose first rank owns the result */
    const int groups = local == CCOE_OK && t->P > n && s->cfg.mpi.placement != CCOE_PLACE_LIST;
    int my_group = -1;
    for (int i = 0; groups && i < n; i++) {
        owner[i] = group_first(i, t->P, n);
        if (t->rank >= owner[i] && t->rank < group_first(i + 1, t->P, n))
            my_group = i;
    }
    CCOE_TRY(ccoe_comm_agree(world, local, err));
    if (!t->quiet) {
        fprintf(stderr, "training %d experts in parallel over %d ranks (mpi.placement = %s):", n,
                t->P, ccoe_placement_name(s->cfg.mpi.placement));
        for (int i = 0; groups && i < n; i++) {
            const int r1 = group_first(i + 1, t->P, n) - 1;
            if (r1 > owner[i])
                fprintf(stderr, " ranks %d-%d [%s]", owner[i], r1, s->gating.experts[ids[i]].name);
            else
                fprintf(stderr, " rank %d [%s]", owner[i], s->gating.experts[ids[i]].name);
        }
        int idle = 0;
        for (int r = 0; !groups && r < t->P; r++) {
            fprintf(stderr, " rank %d [", r);
            int k = 0;
            for (int i = 0; i < n; i++)
                if (owner[i] == r)
                    fprintf(stderr, "%s%s", k++ ? " " : "", s->gating.experts[ids[i]].name);
            fputs(k ? "]" : "idle]", stderr);
            idle += k == 0;
        }
        if (idle)
            fprintf(stderr, " (%d idle rank%s: name %s in mpi.map, or drop mpi.placement = list "
                            "to use every rank)",
                    idle, idle == 1 ? "" : "s", idle == 1 ? "it" : "them");
        if (groups)
            fputs(" (each group data parallel)", stderr);
        fputc('\n', stderr);
    }
    /* each expert on its rank alone, or on its group (communicating only inside it): a failure
     * returns at once and main aborts the job (the other ranks may be training for long) */
    ccoe_comm group;
    if (groups)
        CCOE_TRY(world->ops->split(world, my_group, t->rank, &group, err));
    FILE *main_metrics = t->metrics;
    char main_path[sizeof t->metrics_path];
    memcpy(main_path, t->metrics_path, sizeof main_path);
    const int world_rank = t->rank, was_quiet = t->quiet;
    t->comm = groups ? &group : &t->serial;
    t->P = t->comm->size;
    t->rank = t->comm->rank;
    ccoe_comm_split(s->cfg.train.batch_size, t->P, t->rank, &t->b0, &t->b1);
    t->quiet = was_quiet || t->rank != 0; /* a group's first rank reports */
    t->expert_mode = 1;
    for (int i = 0; i < n && local == CCOE_OK; i++)
        if (groups ? i == my_group : owner[i] == world_rank)
            local = train_one_expert(t, ids[i], o, err);
    t->metrics = main_metrics;
    memcpy(t->metrics_path, main_path, sizeof main_path);
    t->comm = world;
    t->P = world->size;
    t->rank = world_rank;
    ccoe_comm_split(s->cfg.train.batch_size, t->P, t->rank, &t->b0, &t->b1);
    t->quiet = was_quiet;
    t->expert_mode = 0;
    if (groups)
        group.ops->release(&group);
    if (local != CCOE_OK && groups) /* rank numbers inside the message count within the group */
        return ccoe_error_wrap(err, "expert %s (group of ranks %d-%d)",
                               s->gating.experts[ids[my_group]].name, owner[my_group],
                               group_first(my_group + 1, t->P, n) - 1);
    if (local != CCOE_OK)
        return local;
    CCOE_TRY(ccoe_comm_agree(world, CCOE_OK, err));
    /* gather: each expert's parameters and moments from its owner */
    ccoe_model *m = &s->model;
    for (int i = 0; i < n; i++) {
        const int e = ids[i], r = owner[i];
        size_t off = m->expert_begin[e], len = (m->expert_end[e] - off) * sizeof(float);
        CCOE_TRY(world->ops->bcast(world, m->param_block + off, len, r, err));
        CCOE_TRY(world->ops->bcast(world, t->opt.m + off, len, r, err));
        CCOE_TRY(world->ops->bcast(world, t->opt.v + off, len, r, err));
    }
    /* the result holds every expert trained: store it as a plain (all-trainable) model */
    t->expert = -1;
    m->train_path = -1;
    s->cfg.ccoe.train_expert[0] = '\0';
    t->st.step = s->cfg.train.steps;
    t->st.data_pos = 0;
    t->opt.t = s->cfg.train.steps;
    if (t->rank == 0) {
        t->st.data_pos = s->data.pos;
        local = ccoe_checkpoint_save(t->ckpt_path, &s->cfg, m, &t->opt, &t->st, err);
    }
    CCOE_TRY(ccoe_comm_agree(world, local, err));
    CCOE_TRY(run_eval(t, 1, !t->quiet, err));
    CCOE_TRY(ccoe_comm_agree(world, metrics_flush(t, err), err));
    if (!t->quiet)
        printf("checkpoint: %s\nmetrics:    %s/metrics.<expert>.jsonl\n", t->ckpt_path,
               s->cfg.train.out_dir);
    return CCOE_OK;
}

ccoe_status ccoe_train_run(const ccoe_config *cfg_in, const ccoe_train_opts *o, ccoe_error *err)
{
    ccoe_config cfg = *cfg_in;
    ccoe_st_file *resume_file = NULL;
    ccoe_session s;
    int have_session = 0;
    train_ctx t;
    memset(&t, 0, sizeof t);
    memset(&s, 0, sizeof s);
    ccoe_comm_serial(&t.serial);
    t.comm = o->comm ? o->comm : &t.serial;
    t.comm->failed_rank = -1;
    t.rank = t.comm->rank;
    t.P = t.comm->size;
    t.o = o;
    t.s = &s;
    t.expert = -1;
    t.quiet = o->quiet || t.rank != 0;
    ccoe_status st = setup(&t, &s, &cfg, o, &resume_file, &have_session, err);
    /* every rank learns whether any failed, and that all configs are the same */
    uint64_t h = have_session ? ccoe_config_hash(&s.cfg) : 0;
    double flags[4] = {(double)(h >> 32), (double)(h & 0xffffffffu), -(double)(h >> 32),
                       -(double)(h & 0xffffffffu)};
    st = ccoe_comm_agree_flags(t.comm, st, flags, 4, err);
    if (st == CCOE_OK && (flags[0] != -flags[2] || flags[1] != -flags[3])) {
        st = ccoe_error_set(err, CCOE_ERR_CONFIG,
                            "the ranks resolved different configs (hash of rank %d: %016llx): "
                            "give every rank the same config file, data and command line",
                            t.rank, (unsigned long long)h);
        t.comm->failed_rank = 0;
    }
    /* every rank has the same config now: the same watchdog timeout, set at the same point */
    if (st == CCOE_OK)
        ccoe_comm_set_timeout(t.comm, s.cfg.mpi.timeout);
    /* the model communicates too (expert-parallel MoE layers), except while experts train
     * independently; COLLECTIVE, then agreed on */
    if (st == CCOE_OK && t.P > 1 && !o->train_experts) {
        const int32_t *owner = NULL;
        if (s.model.n_moe > 0) {
            st = ccoe_placement_map(&s.cfg.mpi, s.model.moe.E, t.P, NULL, t.place_map, err);
            t.n_place = s.model.moe.E;
            owner = t.place_map;
        }
        if (st == CCOE_OK)
            st = ccoe_model_set_comm(&s.model, t.comm, owner, err);
        if (st == CCOE_OK)
            st = ep_setup(&t, err);
        if (st == CCOE_OK && o->ccoe_placement)
            st = place_setup(&t, err);
        if (st == CCOE_OK)
            st = dp_plan(&t, err);
        st = ccoe_comm_agree(t.comm, st, err);
    }
    if (st != CCOE_OK)
        goto done;
    ccoe_comm_split(s.cfg.train.batch_size, t.P, t.rank, &t.b0, &t.b1);
    t.bar = o->progress < 0 ? isatty(fileno(stderr)) : o->progress;
    if (!t.quiet)
        print_start(&t, o);
    if (t.metrics)
        fprintf(t.metrics,
                "{\"event\":\"start\",\"step\":%ld,\"params\":%zu,\"flops_per_token\":%.0f,"
                "\"peak_gflops\":%.1f,\"sgemm_gflops\":%.1f,\"threads\":%d,\"ranks\":%d,"
                "\"gemm\":\"%s\",\"config_hash\":\"%016llx\"}\n",
                t.st.step, s.model.num_params, t.flops_per_token, t.peak_gflops, t.gemm_gflops,
                s.cfg.run.threads, t.P, s.gemm.kernel_set,
                (unsigned long long)ccoe_config_hash(&s.cfg));
    if (t.metrics && t.n_place > 0) {
        fprintf(t.metrics, "{\"event\":\"placement\",\"step\":%ld,\"experts\":\"%s\","
                           "\"policy\":\"%s\",\"ranks\":%d,\"owner\":[",
                t.st.step, t.placed ? "ccoe" : "moe", ccoe_placement_name(s.cfg.mpi.placement),
                t.P);
        for (int e = 0; e < t.n_place; e++)
            fprintf(t.metrics, "%s%d", e ? "," : "", (int)t.place_map[e]);
        fputs("]}\n", t.metrics);
    }
    g_stop_signal = 0;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    st = o->train_experts ? run_experts(&t, o, err) : train_loop(&t, o, err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
done:
    st = metrics_close(&t, st, err);
    ccoe_st_close(resume_file);
    ccoe_adamw_free(&t.opt);
    free(t.json);
    free(t.buckets);
    free(t.ep_span);
    free(t.ep_owner);
    if (have_session)
        ccoe_session_close(&s);
    return st;
}
