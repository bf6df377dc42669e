/* moe_build.h - building a Mixture-of-Experts checkpoint from experts that already exist:
 * sparse upcycling of a dense model (Komatsuzaki et al. 2022) and the Branch-Train-MiX merge of
 * a CCoE model's experts (Sukhbaatar et al. 2024). papers/upcycle-merge.md has the rules.
 *
 * Both read one checkpoint and write another (rank 0 alone, no data needed): the output is an
 * ordinary MoE checkpoint (step 0, no optimizer state) that `ccoe train --init-from` continues
 * and `ccoe eval` evaluates; it carries the input's tokenizer and domain names.
 *
 * The tensors are filled from the MoE model's own parameter list (ccoe_moe_tensor_at of its
 * layers): an expert's FFN tensor from the FFN it is built from, every tensor that is not part
 * of an expert of the layer (the router, and whatever else a gate keeps there) from the fresh
 * MoE initialisation (or zero), every other tensor by name. Nothing is written on an error.
 */
#ifndef CCOE_MOE_BUILD_H
#define CCOE_MOE_BUILD_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* How the tensors of an MoE layer outside its experts (router weights, ...) start. */
typedef enum ccoe_router_init {
    CCOE_ROUTER_RANDOM = 0, /* the fresh MoE initialisation: router N(0, init_std) */
    CCOE_ROUTER_ZERO = 1    /* all zero: uniform scores, ties broken by expert index */
} ccoe_router_init;

typedef struct ccoe_build_opts {
    const char *gate;         /* moe.gate of the output (a gate of variants/gates.def) */
    int n_experts;            /* upcycle: E (merge: fixed by the model, ignored) */
    int top_k;                /* K */
    int every;                /* upcycle: moe.every (merge: 1) */
    int with_base;            /* merge: the base FFN as one more expert (the last) */
    ccoe_router_init router;
    uint64_t seed;            /* the router's initialisation; 0 = the model's train.seed */
    const char *const *sets;  /* further moe.* assignments ("moe.capacity_factor=2") */
    int n_sets;
} ccoe_build_opts;

/* What was built, for the command's report. */
typedef struct ccoe_build_report {
    int n_experts, top_k, n_moe_layers;
    int copied;     /* tensors copied unchanged (by name or from an FFN) */
    int averaged;   /* merge: tensors averaged over the paths (differing values) */
    int fresh;      /* tensors left at the MoE initialisation (routers) */
    int sums_to_one; /* the gate's combine weights sum to one: step-0 loss = the input's */
    char sets[512]; /* the --set assignments that describe the output's [moe] for --init-from */
    char note[512]; /* a caveat worth printing ("" = none) */
} ccoe_build_report;

/* Sparse upcycling: the dense model at in_path (moe.gate = none; a `ccoe train` or `ccoe
 * import` result, CCoE experts allowed: they are copied as they are) becomes an MoE whose
 * every `every`-th base block holds E copies of that block's FFN behind a new router. */
ccoe_status ccoe_moe_upcycle(const char *in_path, const char *out_path, const ccoe_build_opts *o,
                             ccoe_build_report *rep, ccoe_error *err);

/* Branch-Train-MiX: the CCoE model at in_path (form tail, prefix or ffn, at least one expert,
 * moe.gate = none) becomes a plain MoE model (ccoe.form = none) with an MoE layer in every base
 * block whose expert k is the FFN path k would run in that block (its own FFN where it has
 * one, the base FFN elsewhere); with with_base, expert E-1 is the base FFN. Tensors outside the
 * FFNs are the mean over the paths (equal values are copied exactly). */
ccoe_status ccoe_moe_merge(const char *in_path, const char *out_path, const ccoe_build_opts *o,
                           ccoe_build_report *rep, ccoe_error *err);

#endif
