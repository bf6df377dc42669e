/* gate.h - the routing variants of the MoE layer: one ops table per gate, and the registry.
 *
 * A gate turns router logits into, per token, K expert ids and K weights. Each variant lives in
 * one file of variants/ and exports one const ccoe_gate_ops; gate_registry.c maps names to
 * tables.
 *
 * Adding a gate `x` takes exactly two steps:
 *   1. a new file variants/gate_x.c defining `const ccoe_gate_ops ccoe_gate_x_ops` with
 *      .name = "x" and the flags below that describe it (CMake picks up the file by its glob);
 *   2. one line `CCOE_GATE(x)` in variants/gates.def.
 * Nothing else names gates: config validation, `ccoe help-config`, the usage text, `bench` and
 * the gate tests (tests/test_moe.c, tests/test_moe_ep.c, tests/util/moe_cases.c) read the
 * registry and decide what applies to a gate from its flags and hooks. The MoE layer (src/moe.c) owns everything around the gate: the router GEMMs
 * (logits = h W_g^T, noise logits = h W_noise^T), the noise draws, capacity, the experts and
 * the auxiliary losses. Math and derivations: papers/moe.md.
 *
 * Conventions (as in kernels.h): outputs first; forward OVERWRITES; backward ACCUMULATES (+=).
 * Rows are tokens: N rows of E logits. Selections are listed in descending order of the
 * selection score (ties to the lower expert index), so ids[n*K + 0] is a token's first choice.
 * Each table also carries the double-precision reference of its weights and backward, for one
 * token with the selection held fixed (what finite-difference tests need).
 */
#ifndef CCOE_GATE_H
#define CCOE_GATE_H

#include <stddef.h>
#include <stdint.h>

/* Largest E a gate handles (per-token scratch lives on the stack). */
#define CCOE_GATE_MAX_EXPERTS 512

/* ccoe_gate_ops.flags */
#define CCOE_GATE_ROUTER 1u       /* has a learned router: parameter router.weight (E, C) */
#define CCOE_GATE_NOISE 2u        /* also router.noise_weight (E, C) and noise (noisy top-k) */
#define CCOE_GATE_ALL_EXPERTS 4u  /* weights every expert: K must equal E */
#define CCOE_GATE_ONE_EXPERT 8u   /* exactly one expert per token: K must be 1 */
#define CCOE_GATE_DOMAIN 16u      /* routes by the token's domain through a table, no router */
#define CCOE_GATE_RENORM_OPT 32u  /* honours renormalize = 0 (keep full-softmax probabilities) */
/* With K = 1 the kept expert's weight is always 1 (always for noisy gates; for gates with
 * CCOE_GATE_RENORM_OPT when renormalize = 1), so the router learns only from the balancing
 * losses; `ccoe train` warns about it. */
#define CCOE_GATE_K1_CONSTANT 64u
/* Routes by the token id of each row (ccoe_gate_args.tokens), no router: the MoE layer needs
 * the token ids of its rows (ccoe_moe_pass.tokens), as CCOE_GATE_DOMAIN needs the domains. */
#define CCOE_GATE_TOKEN 128u
/* Capacity does not apply: the assignment is a rule (domain -> expert), so a capacity would
 * only skip the FFN of whatever the rule sends to a full expert (for a one-domain batch, most
 * of it). The layer requires capacity_factor = eval_capacity_factor = 0; the [moe] section's
 * capacity keys are ignored for such a gate (ccoe_moe_config_from_section). */
#define CCOE_GATE_DROPLESS 256u
/* Selection adds a per-expert bias to the scores (DeepSeek-V3's auxiliary-loss-free
 * balancing): the layer carries the state tensor router.score_bias (E), passed to forward as
 * ccoe_gate_args.score_bias. The bias decides which experts are chosen, never their weights,
 * so it has no gradient; the trainer moves it after each step by ccoe_moe_bias_update
 * (src/moe.h) from the step's expert loads. */
#define CCOE_GATE_SCORE_BIAS 512u
/* Expert choice (Zhou et al. 2022, gate_expert_choice.c): each expert picks its top-cap rows of
 * the batch, so a token is processed by 0..E experts. The layer runs with K = E slots per token
 * (weights = the token-expert scores) and the gate's `choose` hook decides
 * which slots are kept, in place of the capacity rule; cap = ceil(capacity_factor * N / E).
 * Incompatible with CCOE_GATE_DOMAIN, _TOKEN, _DROPLESS, _ONE_EXPERT and _NOISE. */
#define CCOE_GATE_EXPERT_CHOICE 1024u

/* The value of moe.gate that means "no MoE layer": the dense model. Not a gate of the
 * registry; ccoe_gate_is_none is the one place that tests for it. */
#define CCOE_GATE_NONE "none"

/* Everything a gate reads, for rows [0, N). Pointers a gate does not use may be NULL. */
typedef struct ccoe_gate_args {
    int N, E, K;
    int renormalize;             /* topk: 1 = kept weights sum to 1, 0 = full-softmax values */
    float noise_eps;             /* noisy: sigma = softplus(noise_logit) + noise_eps */
    const float *logits;         /* (N, E) clean router logits h W_g^T */
    const float *noise_logits;   /* (N, E) h W_noise^T (noisy) */
    const float *noise;          /* (N, E) standard normals (noisy; zeros when evaluating) */
    const int32_t *domains;      /* (ceil(N / T)) domain of each sequence (domain gate) */
    int T;                       /* rows per entry of domains: row n has domain domains[n / T] */
    const int32_t *domain_expert; /* (n_domains) expert index of each domain (domain gate) */
    int n_domains;
    const int32_t *tokens;       /* (N) token id of each row (gates with CCOE_GATE_TOKEN) */
    const float *score_bias;     /* (E) selection bias (CCOE_GATE_SCORE_BIAS); NULL = zeros */
} ccoe_gate_args;

/* The same inputs for ONE token in double (references). */
typedef struct ccoe_gate_ref_args {
    int E, K;
    int renormalize;
    double noise_eps;
    const double *logits;        /* (E) */
    const double *noise_logits;  /* (E) noisy */
    const double *noise;         /* (E) noisy */
} ccoe_gate_ref_args;

/* One candidate of a batch-level selection (choose): its score and global row. */
typedef struct ccoe_gate_pick {
    float s;
    int64_t n;
} ccoe_gate_pick;

typedef struct ccoe_gate_ops {
    const char *name; /* "softmax", ... */
    const char *help; /* one line for messages and --help */
    unsigned flags;   /* CCOE_GATE_* */

    /* ids (N,K): chosen experts, descending selection score; weights (N,K) their gate values;
     * kth (N): index of the (K+1)-th largest selection score, -1 when K == E (written only by
     * gates with CCOE_GATE_NOISE; may be NULL for the others). OVERWRITES. Threads over rows. */
    void (*forward)(int32_t *ids, float *weights, int32_t *kth, const ccoe_gate_args *a);

    /* dlogits (N,E) += d/dlogits and dnoise_logits (N,E) += d/dnoise_logits (noisy only) of
     * sum(dweights * weights), the selection held fixed. NULL for gates without parameters. */
    void (*backward)(float *dlogits, float *dnoise_logits, const float *dweights,
                     const int32_t *ids, const float *weights, const ccoe_gate_args *a);

    /* Optional (noisy gates): Shazeer's smooth load estimator. P (N,E) = P(x_n, i), the
     * probability that expert i stays in the top K under a fresh draw of its own noise, the
     * other noisy logits held. OVERWRITES. */
    void (*load_forward)(float *P, const int32_t *ids, const int32_t *kth,
                         const ccoe_gate_args *a);
    /* dlogits, dnoise_logits (N,E) += d/d(.) of sum_{n,i} dload[i] * P(x_n, i); dload (E). */
    void (*load_backward)(float *dlogits, float *dnoise_logits, const double *dload,
                          const int32_t *ids, const int32_t *kth, const ccoe_gate_args *a);

    /* References, one token, selection fixed: w (K) = the gate values of ids (K). OVERWRITES.
     * NULL for gates without parameters (their weights are 1). */
    void (*ref_weights)(double *w, const int32_t *ids, const ccoe_gate_ref_args *a);
    /* dlogits (E) += ..., dnoise_logits (E) += ... (noisy) from dw (K). */
    void (*ref_backward)(double *dlogits, double *dnoise_logits, const double *dw,
                         const int32_t *ids, const ccoe_gate_ref_args *a);
    /* P (E) for one token (noisy); kth as in forward. OVERWRITES. */
    void (*ref_load)(double *P, const int32_t *ids, int32_t kth, const ccoe_gate_ref_args *a);
    /* dlogits (E), dnoise_logits (E) += d/d(.) of sum_i dP[i] * P_i. */
    void (*ref_load_backward)(double *dlogits, double *dnoise_logits, const double *dP,
                              const int32_t *ids, int32_t kth, const ccoe_gate_ref_args *a);

    /* Batch-level selection (CCOE_GATE_EXPERT_CHOICE only, else NULL): keep (N, E) = 0 for a
     * kept slot, -1 for a dropped one, from scores (N, E) of EVERY row of the batch routed
     * together (all ranks' rows under expert parallelism, in global row order): with ids
     * (N, E) the forward's slots (ids, weights); with ids NULL slot j is expert j (keep and
     * scores in expert order). k_causal = 0: each expert keeps its cap best rows (higher score
     * first, ties to the lower row; cap = 0 or >= N keeps all); k_causal >= 1: each row keeps
     * its k_causal best experts instead, a choice that reads no other row (decoding). work:
     * E cap picks. OVERWRITES. */
    void (*choose)(int32_t *keep, const int32_t *ids, const float *scores, int64_t N, int E,
                   int64_t cap, int k_causal, ccoe_gate_pick *work);
} ccoe_gate_ops;

/* The variants (one file each), declared from the list in gates.def. */
#define CCOE_GATE(x) extern const ccoe_gate_ops ccoe_gate_##x##_ops;
#include "gates.def"
#undef CCOE_GATE

/* Registry: the table named `name`, or NULL (also for "none" and NULL). */
const ccoe_gate_ops *ccoe_gate_find(const char *name);
/* 1 if name is CCOE_GATE_NONE ("none": no MoE layer), else 0. */
int ccoe_gate_is_none(const char *name);
/* Number of registered gates and the i-th table (for listing allowed names). */
int ccoe_gate_count(void);
const ccoe_gate_ops *ccoe_gate_at(int i);
/* Writes "softmax, topk, ..." into buf (always NUL-terminated); with_none = 1 puts "none"
 * first. */
void ccoe_gate_list_names(char *buf, size_t cap, int with_none);

/* ---- helpers shared by the variants (gate_common.c) ---- */

/* ids (K): the K largest of score (E), descending, ties to the lower index; *kth = index of
 * the (K+1)-th largest or -1 when K == E. Always writes valid distinct indices (NaN scores sort
 * last). */
void ccoe_gate_select(int32_t *ids, int32_t *kth, const float *score, int E, int K);
/* p (E) = softmax(x) (float, max-subtracted); returns log-sum-exp of x. */
float ccoe_gate_softmax(float *p, const float *x, int E);
/* softplus(x) = log(1 + e^x), and its derivative the logistic function, overflow-safe. */
float ccoe_gate_softplus(float x);
float ccoe_gate_sigmoid(float x);
double ccoe_gate_softplus_d(double x);
double ccoe_gate_sigmoid_d(double x);
/* The expert of token id v (>= 0) among E under the hash gate (gate_hash.c documents the
 * hash); public for the tests. */
int ccoe_gate_hash_expert(int32_t v, int E);

#endif
