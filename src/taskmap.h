/* taskmap.h - the rule-based task-expert matrix of CCoE (paper Section 4.2).
 *
 * m domains x n experts. Expert j has l_j blocks; under form = tail (Eq. 4) it branches off the
 * base at CoE layer L - l_j, under form = prefix (Eq. 5) at layer prefix_layers; under form = ffn
 * (Eqs. 6-7) it is the FFNs of base blocks L - l_j .. L - 1 (CoE layer L - l_j) and the path
 * keeps every shared attention block. pos_j is its
 * index among the experts attached at the same CoE layer, in push order, so appending a new
 * expert never changes an existing (l_j, pos_j). Each domain routes to exactly one path: one
 * expert, or the base model. Built from the [ccoe] config strings and the data's domain names;
 * the config strings are what checkpoints store.
 */
#ifndef CCOE_TASKMAP_H
#define CCOE_TASKMAP_H

#include <stdio.h>

#include "config.h"
#include "data.h"
#include "form.h"
#include "status.h"

#define CCOE_MAX_EXPERTS 64

typedef struct ccoe_expert_spec {
    char name[CCOE_NAME_LEN];
    int layers; /* l_j */
    int branch; /* CoE layer: base blocks run before this expert */
    int pos;    /* position among the experts at the same CoE layer */
} ccoe_expert_spec;

typedef struct ccoe_taskmap {
    ccoe_form form;
    const ccoe_form_ops *ops;                     /* the form's table; NULL: form = none */
    int n_layer;                                  /* L of the base */
    int own_head;
    int n_experts;
    ccoe_expert_spec experts[CCOE_MAX_EXPERTS];
    int n_domains;
    char domains[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
    int route[CCOE_MAX_DOMAINS];                  /* expert index, or -1 for the base path */
} ccoe_taskmap;

/* Builds and validates the matrix from cfg->ccoe for the given domains (names of the data set,
 * in domain-id order). Errors name the offending expert/domain and the fix: unknown domain or
 * expert in routes, a domain routed twice, duplicate expert names, l_j < 1 or > the cap,
 * prefix_layers out of range, experts without a form. form = none gives zero experts and every
 * domain on the base path. */
ccoe_status ccoe_taskmap_build(ccoe_taskmap *g, const ccoe_config *cfg,
                              const char (*domain_names)[CCOE_NAME_LEN], int n_domains,
                              ccoe_error *err);

/* The cross-field rules of the [ccoe] section of cfg that need no data: ccoe_taskmap_build over
 * the domains ccoe.routes names (ccoe_taskmap_route_domains), the matrix discarded. Whether
 * those domains exist in the data is checked when the session builds the matrix from it. Run
 * by ccoe_session_validate. */
ccoe_status ccoe_taskmap_config_check(const ccoe_config *cfg, ccoe_error *err);

/* Index of an expert by name, or -1. */
int ccoe_taskmap_find_expert(const ccoe_taskmap *g, const char *name);

/* The domains named in cfg->ccoe.routes (for a stored model whose data is not loaded): fills
 * names and returns how many. */
int ccoe_taskmap_route_domains(const ccoe_config *cfg, char (*names)[CCOE_NAME_LEN]);

/* The path domain d takes, e.g. "base[0:4]", "base[0:3] -> arith (1)" (Eqs. 4-5) or
 * "base[0:4] + arith FFN[2:4]" (Eqs. 6-7). */
void ccoe_taskmap_path_name(const ccoe_taskmap *g, int d, char *buf, size_t cap);

/* Prints the m x n matrix with (l_j, pos_j) in set entries and each domain's path. */
void ccoe_taskmap_print(FILE *f, const ccoe_taskmap *g);

/* Appends "NAME:LAYERS" to cfg->ccoe.experts (push order) and routes each of the n domains to
 * it (replacing their previous route). Errors if the strings would overflow. */
/* An expert name: 1-32 letters, digits, '_', '-', '.', not only dots (it names tensors and
 * files). */
ccoe_status ccoe_taskmap_check_name(const char *name, ccoe_error *err);

ccoe_status ccoe_taskmap_config_add(ccoe_config *cfg, const char *name, int layers,
                                   const char *const *domains, int n, ccoe_error *err);

/* Removes expert NAME and every route to it from cfg->ccoe (those domains fall back to the
 * base). */
ccoe_status ccoe_taskmap_config_remove(ccoe_config *cfg, const char *name, ccoe_error *err);

#endif
