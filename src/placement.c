/* placement.c - the expert -> rank map (see placement.h). */
#include "placement.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "data.h"
#include "gate.h"
#include "taskmap.h"

const char *ccoe_placement_name(ccoe_placement_kind k)
{
    switch (k) {
    case CCOE_PLACE_ROUND_ROBIN:
        return "round_robin";
    case CCOE_PLACE_BALANCED:
        return "balanced";
    case CCOE_PLACE_LIST:
        return "list";
    default:
        return "contiguous";
    }
}

ccoe_status ccoe_placement_parse_map(const char *map, int32_t *owner, int cap, int *n,
                                     ccoe_error *err)
{
    int k = 0;
    const char *p = map;
    *n = 0;
    if (!*map)
        return CCOE_OK;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *start = p;
        long v = 0;
        while (isdigit((unsigned char)*p)) {
            v = v * 10 + (*p - '0');
            if (v > 1000000)
                v = 1000001;
            p++;
        }
        const char *end = p;
        while (*p == ' ' || *p == '\t')
            p++;
        if (end == start || (*p && *p != ',')) {
            int len = 0;
            while (start[len] && start[len] != ',')
                len++;
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "mpi.map = '%.80s': entry %d ('%.*s') is not a rank number: "
                                  "write one rank (0, 1, ...) per expert separated by commas, "
                                  "e.g. mpi.map = 0,1,1,0",
                                  map, k, len > 20 ? 20 : len, start);
        }
        if (k >= cap)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "mpi.map has more than %d entries: at most one rank per expert",
                                  cap);
        if (v > 1000000)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "mpi.map entry %d is too large: ranks are below the job's "
                                  "rank count",
                                  k);
        owner[k++] = (int32_t)v;
        if (!*p)
            break;
        p++; /* ',' */
    }
    *n = k;
    return CCOE_OK;
}

int ccoe_placement_expert_count(const ccoe_config *c)
{
    if (!ccoe_gate_is_none(c->moe.gate)) /* the layer's experts: fine-grained ones counted */
        return c->moe.n_experts * (c->moe.granularity > 1 ? c->moe.granularity : 1);
    if (!ccoe_form_of(c))
        return 0;
    int n = 0;
    for (const char *p = c->ccoe.experts; *p;) {
        while (*p && isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        n++;
        while (*p && !isspace((unsigned char)*p))
            p++;
    }
    return n;
}

static ccoe_status list_length(const ccoe_mpi_config *mpi, int n, int E, ccoe_error *err)
{
    if (n == 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "mpi.placement = list needs mpi.map with one rank per expert (%d "
                              "experts), e.g. --set mpi.map=0,1,...; or use mpi.placement = "
                              "contiguous, round_robin or balanced",
                              E);
    if (n != E)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "mpi.map = '%.80s' has %d entries but the model has %d experts "
                              "(MoE: moe.n_experts; CCoE: ccoe.experts): give one rank per "
                              "expert",
                              mpi->map, n, E);
    return CCOE_OK;
}

ccoe_status ccoe_placement_config_check(const ccoe_config *c, ccoe_error *err)
{
    return ccoe_placement_validate(&c->mpi, ccoe_placement_expert_count(c), err);
}

ccoe_status ccoe_placement_validate(const ccoe_mpi_config *mpi, int n_experts, ccoe_error *err)
{
    int32_t owner[CCOE_PLACE_MAX];
    int n = 0;
    CCOE_TRY(ccoe_placement_parse_map(mpi->map, owner, CCOE_PLACE_MAX, &n, err));
    if (mpi->placement == CCOE_PLACE_LIST && n_experts > 0)
        CCOE_TRY(list_length(mpi, n, n_experts, err));
    return CCOE_OK;
}

ccoe_status ccoe_placement_map(const ccoe_mpi_config *mpi, int E, int P, const double *load,
                               int32_t *owner, ccoe_error *err)
{
    if (E < 0 || E > CCOE_PLACE_MAX || P < 1)
        return ccoe_error_set(err, CCOE_ERR_ARG, "placement: %d experts on %d ranks", E, P);
    if (E == 0)
        return CCOE_OK;
    switch (mpi->placement) {
    case CCOE_PLACE_ROUND_ROBIN:
        for (int e = 0; e < E; e++)
            owner[e] = e % P;
        return CCOE_OK;
    case CCOE_PLACE_LIST: {
        int32_t list[CCOE_PLACE_MAX];
        int n = 0;
        CCOE_TRY(ccoe_placement_parse_map(mpi->map, list, CCOE_PLACE_MAX, &n, err));
        CCOE_TRY(list_length(mpi, n, E, err));
        for (int e = 0; e < E; e++)
            owner[e] = list[e];
        for (int e = 0; e < E; e++)
            if (owner[e] >= P)
                return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                      "mpi.map entry %d names rank %d but the job has %d "
                                      "rank%s; pass --set mpi.map=... with ranks 0..%d or "
                                      "--set mpi.placement=contiguous",
                                      e, (int)owner[e], P, P == 1 ? "" : "s", P - 1);
        return CCOE_OK;
    }
    case CCOE_PLACE_BALANCED:
        if (load) {
            /* largest load first (ties: lower expert), onto the least loaded rank (ties: fewer
             * experts, then lower rank) */
            double rank_load[CCOE_PLACE_MAX];
            int rank_n[CCOE_PLACE_MAX], done[CCOE_PLACE_MAX];
            const int R = P < CCOE_PLACE_MAX ? P : CCOE_PLACE_MAX;
            for (int q = 0; q < R; q++) {
                rank_load[q] = 0.0;
                rank_n[q] = 0;
            }
            for (int e = 0; e < E; e++)
                done[e] = 0;
            for (int k = 0; k < E; k++) {
                int best = -1;
                for (int e = 0; e < E; e++)
                    if (!done[e] && (best < 0 || load[e] > load[best]))
                        best = e;
                int q = 0;
                for (int c = 1; c < R; c++)
                    if (rank_load[c] < rank_load[q] ||
                        (rank_load[c] == rank_load[q] && rank_n[c] < rank_n[q]))
                        q = c;
                done[best] = 1;
                owner[best] = q;
                rank_load[q] += load[best];
                rank_n[q]++;
            }
            return CCOE_OK;
        }
        break; /* no a-priori load (MoE experts): contiguous */
    default:
        break;
    }
    /* contiguous: e is on the last rank q with floor(q E / P) <= e */
    for (int e = 0; e < E; e++)
        owner[e] = (int32_t)(((long long)(e + 1) * P - 1) / E);
    return CCOE_OK;
}

void ccoe_placement_ccoe_load(const ccoe_taskmap *gt, const ccoe_dataset *ds, double *load)
{
    for (int e = 0; e < gt->n_experts; e++)
        load[e] = 0.0;
    for (int d = 0; d < gt->n_domains && d < ds->n_domains; d++)
        if (gt->route[d] >= 0 && gt->route[d] < gt->n_experts)
            load[gt->route[d]] += (double)ds->domains[d].n_train;
}

void ccoe_placement_format(const int32_t *owner, int E, const char *const *names, char *buf,
                           size_t cap)
{
    size_t used = 0;
    if (cap)
        buf[0] = '\0';
    for (int e = 0; e < E && used + 1 < cap; e++) {
        int w = names ? snprintf(buf + used, cap - used, "%s%s->%d", e ? " " : "", names[e],
                                 (int)owner[e])
                      : snprintf(buf + used, cap - used, "%s%d->%d", e ? " " : "", e,
                                 (int)owner[e]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}
