/* placement.h - which MPI rank owns each expert: one owner map for the expert-parallel MoE
 * layers (ccoe_model_set_comm) and the CCoE expert placement (ccoe_model_set_placement).
 *
 * Policies (config [mpi], papers/mpi.md): contiguous (rank q owns experts
 * [floor(q E / P), floor((q + 1) E / P)), the default), round_robin (expert e on rank e mod P),
 * balanced (largest load first onto the least loaded rank; the load of a CCoE expert is its
 * share of the training sequences: those of the domains routed to it; MoE experts have no
 * a-priori load, so balanced = contiguous for them) and list (mpi.map, one rank per expert).
 * The map depends only on the config, P and the loads, which every rank computes from the same
 * data: every rank computes the same map. A rank may own no expert (P > E).
 */
#ifndef CCOE_PLACEMENT_H
#define CCOE_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "status.h"

struct ccoe_taskmap;
struct ccoe_dataset;

/* Most experts a map can hold (the larger of the MoE and CCoE limits). */
#define CCOE_PLACE_MAX 1024

/* Parses mpi.map ("r0,r1,...": non-negative decimal ranks separated by commas, blanks around
 * entries allowed) into owner (up to cap entries); *n = the entry count. CCOE_ERR_CONFIG naming
 * mpi.map and the bad entry for anything else (empty entries, signs, text, more than cap). */
ccoe_status ccoe_placement_parse_map(const char *map, int32_t *owner, int cap, int *n,
                                     ccoe_error *err);

/* The number of experts the map of config c places, known without data: moe.n_experts when
 * moe.gate != none, else the entries of ccoe.experts when ccoe.form != none, else 0. */
int ccoe_placement_expert_count(const ccoe_config *c);

/* Checks of the [mpi] section that need no rank count (config load): map syntax; for
 * placement = list a map with exactly n_experts entries (n_experts > 0). */
ccoe_status ccoe_placement_validate(const ccoe_mpi_config *mpi, int n_experts, ccoe_error *err);

/* The cross-field rules of the [mpi] section of c: ccoe_placement_validate with the expert
 * count of c (ccoe_placement_expert_count). Run by ccoe_session_validate. */
ccoe_status ccoe_placement_config_check(const ccoe_config *c, ccoe_error *err);

/* Owner of each of E experts on P ranks (owner: E entries). load (E, or NULL): the balanced
 * policy's per-expert load (NULL: no a-priori load, contiguous). CCOE_ERR_CONFIG for a list map
 * whose length is not E or which names a rank >= P (the message names mpi.map, the entry, P and
 * the fix). Deterministic. */
ccoe_status ccoe_placement_map(const ccoe_mpi_config *mpi, int E, int P, const double *load,
                               int32_t *owner, ccoe_error *err);

/* The balanced policy's load of each CCoE expert: the training sequences of the domains routed
 * to it (load: gt->n_experts entries). */
void ccoe_placement_ccoe_load(const struct ccoe_taskmap *gt, const struct ccoe_dataset *ds,
                              double *load);

/* "0->0 1->1 2->0" (names: "arith->0 ..." when names is not NULL); truncated to cap. */
void ccoe_placement_format(const int32_t *owner, int E, const char *const *names, char *buf,
                           size_t cap);

/* The policy's name ("contiguous", ...). */
const char *ccoe_placement_name(ccoe_placement_kind k);

#endif
