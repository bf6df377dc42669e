/* train_experts.c - --train-experts: isolated training of several CCoE experts at once, each
 * on the rank (or group of ranks) the placement gives it, on its own domains' data with the
 * base frozen, exactly as ccoe.train_expert = NAME would; then the experts are gathered from
 * their owners into one checkpoint.
 * Not here: the loop each expert runs (train.c). */
#include "train_impl.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "checkpoint.h"
#include "fs.h"
#include "placement.h"

/* Parses "all" or "A,B,C" into expert indices (gating order for all). */
static ccoe_status parse_expert_list(const ccoe_taskmap *g, const char *spec, int *ids, int *n,
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
        int e = ccoe_taskmap_find_expert(g, tok);
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
uint32_t ccoe_train_expert_domains(const ccoe_taskmap *g, int e)
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
    CCOE_TRY(ccoe_data_restrict(&s->data, ccoe_train_expert_domains(&s->taskmap, e), err));
    ccoe_data_seek(&s->data, 0);
    t->expert = e;
    /* the frozen base runs forward only: its blocks share one set of activations */
    CCOE_TRY(ccoe_model_set_train_path(m, 1 + e, err));
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
        st = ccoe_train_dp_plan(t, err);
    /* the metrics: this rank's, or its group's first rank's (t->comm: the group) */
    t->metrics = NULL;
    if (st == CCOE_OK && t->rank == 0) {
        snprintf(t->metrics_path, sizeof t->metrics_path, "%s/metrics.%s.jsonl",
                 s->cfg.train.out_dir, s->taskmap.experts[e].name);
        t->metrics = ccoe_fs_open_output(t->metrics_path, 0, "metrics file", err);
        if (!t->metrics)
            st = err->status;
        else
            fprintf(t->metrics,
                    "{\"event\":\"start\",\"expert\":\"%s\",\"ranks\":%d,\"step\":0}\n",
                    s->taskmap.experts[e].name, t->P);
    }
    st = ccoe_comm_agree(t->comm, st, err);
    if (st == CCOE_OK)
        st = ccoe_train_loop(t, o, err);
    return ccoe_train_metrics_close(t, st, err);
}

/* --train-experts with more ranks than experts: the first rank of expert i's group (i = n:
 * one past the last group). */
static int group_first(int i, int P, int n) { return (int)((long)i * P / n); }

/* COLLECTIVE: --train-experts. */
ccoe_status ccoe_train_run_experts(train_ctx *t, const ccoe_train_opts *o, ccoe_error *err)
{
    ccoe_session *s = t->s;
    ccoe_comm *world = t->comm;
    int ids[CCOE_MAX_EXPERTS], n = 0;
    ccoe_status local = parse_expert_list(&s->taskmap, o->train_experts, ids, &n, err);
    for (int i = 0; local == CCOE_OK && i < n; i++)
        if (!ccoe_train_expert_domains(&s->taskmap, ids[i]))
            local = ccoe_error_set(err, CCOE_ERR_CONFIG,
                                   "--train-experts: no domain routes to expert '%s': add "
                                   "DOMAIN:%s to ccoe.routes",
                                   s->taskmap.experts[ids[i]].name, s->taskmap.experts[ids[i]].name);
    /* the ranks of the listed experts ([mpi]): every expert trains for the same steps, so the
     * work per rank is its expert count: contiguous and balanced split the list in blocks,
     * round_robin deals it out, list takes each expert's entry of mpi.map (ccoe.experts order) */
    int32_t owner[CCOE_MAX_EXPERTS], full[CCOE_MAX_EXPERTS];
    if (local == CCOE_OK && s->cfg.mpi.placement == CCOE_PLACE_LIST) {
        local = ccoe_placement_map(&s->cfg.mpi, s->taskmap.n_experts, t->P, NULL, full, err);
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
                fprintf(stderr, " ranks %d-%d [%s]", owner[i], r1, s->taskmap.experts[ids[i]].name);
            else
                fprintf(stderr, " rank %d [%s]", owner[i], s->taskmap.experts[ids[i]].name);
        }
        int idle = 0;
        for (int r = 0; !groups && r < t->P; r++) {
            fprintf(stderr, " rank %d [", r);
            int k = 0;
            for (int i = 0; i < n; i++)
                if (owner[i] == r)
                    fprintf(stderr, "%s%s", k++ ? " " : "", s->taskmap.experts[ids[i]].name);
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
                               s->taskmap.experts[ids[my_group]].name, owner[my_group],
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
    return ccoe_train_final_report(t, "metrics.<expert>.jsonl", err);
}
