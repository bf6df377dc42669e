/* moe_cases.h - the MoE layer test cases shared by tests/test_moe.c, tests/test_moe_ep.c and
 * tests/util/ep_cases.c (hence tests/mpi/test_moe_mpi.c): one case struct, the one function
 * that turns a case into a layer config, and the cases generated from the gate registry
 * (variants/gates.def) so that a new gate is tested in every mode without an edit of a test.
 *
 * What applies to a gate is read from its flags (variants/gate.h): top_k from
 * CCOE_GATE_ALL_EXPERTS / CCOE_GATE_ONE_EXPERT, balancing losses only with CCOE_GATE_ROUTER,
 * noise options and the load loss only with CCOE_GATE_NOISE, renormalize = 0 only with
 * CCOE_GATE_RENORM_OPT, a domain table with CCOE_GATE_DOMAIN. No CMocka here: ep_cases.c runs
 * on threads. A test that cannot check a gate in some mode skips it by flag with
 * tu_gate_skip, which says so on stderr.
 */
#ifndef CCOE_MOE_CASES_H
#define CCOE_MOE_CASES_H

#include "gate.h"
#include "moe.h"

/* One configuration of the MoE layer under test. */
typedef struct tu_moe_case {
    const char *gate;
    int N, C; /* rows and channels; 0 where the test sizes its own batches */
    int E, K, F;
    int swiglu, bias, renorm;
    double cf; /* capacity factor, 0 = dropless */
    double w_imp, w_load, w_switch, w_z, noise_eps;
    int train;        /* 1: training pass (noisy gates draw noise); 0: evaluation pass with the
                         capacity cf; -1: evaluation pass, dropless (eval_capacity_factor 0) */
    int expect_drops; /* the case must drop slots (capacity actually bites) */
    int n_shared;     /* shared experts (0: none) */
    double w_seq;     /* sequence-wise balance loss (gates with CCOE_GATE_SCORE_BIAS) */
} tu_moe_case;

/* cfg = the layer config of c (ccoe_moe_defaults, then the case's fields; cf is the capacity
 * of training and of evaluation passes alike). A gate with
 * CCOE_GATE_DOMAIN gets the table of 4 domains d -> (2d + 1) mod E (1, 3, 0, 2 for E = 5). */
void tu_moe_case_config(const tu_moe_case *c, ccoe_moe_config *cfg);

/* The top_k a gate takes with E experts by its flags: E (all experts), 1 (one expert), else
 * min(K, E). */
int tu_gate_top_k(const ccoe_gate_ops *g, int E, int K);

/* Writes into out (up to cap) the cases of every registered gate, N rows of C channels and
 * experts of hidden size F (N, C may be 0): for each gate, with E = 5 and K = 2 where the gate
 * chooses K: a training case with a capacity (none for CCOE_GATE_DROPLESS) and every balancing
 * loss the gate has; a dropless
 * SwiGLU case without biases; renormalize = 0 if the gate honours it; an evaluation pass (no
 * noise) for noisy gates; an evaluation pass with the training capacity and dropless evaluation
 * (train = -1) for gates with a capacity; the training case with 2 shared experts. Every case passes ccoe_moe_validate (a gate whose rules its flags do
 * not describe is reported on stderr). Returns the number of cases, -1 on such a report or when
 * cap is too small. */
int tu_moe_registry_cases(tu_moe_case *out, int cap, int N, int C, int F);
#define TU_MOE_MAX_REGISTRY_CASES 64

/* Prints "skip gate NAME in MODE: WHY" on stderr (a gate a test cannot check in that mode). */
void tu_gate_skip(const ccoe_gate_ops *g, const char *mode, const char *why);

#endif
