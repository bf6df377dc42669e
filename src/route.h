/* route.h - CCoE routing without a domain label at inference (papers/routing.md).
 *
 * The paper's rule (Section 4.2) sends a sequence down its domain's path: it needs the domain.
 * Three modes choose the path of every predicted token:
 *   rule       the domain label picks the path (the task-expert matrix; today's behaviour);
 *   posterior  DEMix (Gururangan et al. 2022): every path p = 0 (base), 1 + e (expert e) scores
 *              the context; the weight of p for the token at position t is its posterior
 *              w_p(t) = softmax_p(log pi_p + sum_{s < t} log p_p(y_s | x_<=s)) with a uniform
 *              prior pi; the prediction is the mixture sum_p w_p(t) p_p(. | x_<=t) (mix) or the
 *              distribution of argmax_p w_p(t) (argmax, ties to the lower path). At t = 0 (no
 *              context) the weights are the prior.
 *   classifier a small domain router on the base model's hidden state h_s after the first
 *              `layer` base blocks (the deepest block every path shares), mean-pooled over the
 *              causal prefix: f_t = mean_{s <= t} h_s; the token at t goes down the path of the
 *              router's most likely domain.
 * All three are causal: the routing of the token predicted at position t reads only x_<=t (the
 * tokens before the target). Routing runs every path on the batch (route_by_path in model.h).
 */
#ifndef CCOE_ROUTE_H
#define CCOE_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "data.h"
#include "eval.h"
#include "model.h"
#include "safetensors.h"
#include "status.h"
#include "tokenizer.h"

typedef enum ccoe_routing_mode {
    CCOE_ROUTING_RULE = 0,
    CCOE_ROUTING_POSTERIOR = 1,
    CCOE_ROUTING_CLASSIFIER = 2
} ccoe_routing_mode;

#define CCOE_ROUTING_NAMES "rule, posterior, classifier"

/* "rule" / "posterior" / "classifier" -> *mode; -1 for another name. */
int ccoe_routing_parse(const char *name, ccoe_routing_mode *mode);
const char *ccoe_routing_name(ccoe_routing_mode mode);

/* ---- the domain router (classifier mode) ----
 * z = W2 a + b2 with a = tanh(W1 u + b1) (H > 0) or a = u (H = 0, linear), u = (f - mu_t) /
 * sigma_t for a feature f at position t (per position and channel, fixed from the training
 * features before the first step; positions >= Tn use Tn - 1's). Computed in double from
 * float parameters. */
typedef struct ccoe_domain_router {
    int layer;      /* features after this many base blocks (0: the embedding) */
    int C, H, D;    /* input channels, hidden units (0 = linear), classes (the data's domains) */
    int Tn;         /* positions with their own standardisation */
    size_t n;       /* trained floats: w1, b1, w2, b2 */
    float *params;  /* (n) [w1 (H, C) | b1 (H) | w2 (D, H or C) | b2 (D)] */
    float *w1, *b1, *w2, *b2;
    float *mu, *sigma; /* (Tn, C) each: feature standardisation (not trained) */
} ccoe_domain_router;

ccoe_status ccoe_router_init(ccoe_domain_router *r, int layer, int C, int H, int D, int Tn,
                             ccoe_error *err);
void ccoe_router_free(ccoe_domain_router *r);
/* W ~ N(0, 1/sqrt(fan_in)), biases 0, mu 0, sigma 1. */
void ccoe_router_init_weights(ccoe_domain_router *r, uint64_t seed);
/* Logits (N, D) of features x (N, C), row i at position i % T. */
void ccoe_router_forward(const ccoe_domain_router *r, double *logits, const float *x, int N,
                         int T);
/* Logits z (D) of one feature x (C) at position t. */
void ccoe_router_logits_at(const ccoe_domain_router *r, double *z, const float *x, int t);
/* Mean cross-entropy of x (N, C; row i at position i % T) against labels (N; < 0 ignored);
 * with grads (n floats, the
 * params' layout) non-NULL ACCUMULATES its gradient there. *correct (may be NULL): rows whose
 * argmax is the label. Scratch: none (allocation-free up to C, H <= CCOE_ROUTER_MAX). */
double ccoe_router_loss(const ccoe_domain_router *r, const float *x, const int32_t *labels,
                        int N, int T, float *grads, long *correct);
#define CCOE_ROUTER_MAX 4096 /* largest C and H */
#define CCOE_ROUTER_MAX_D 64
#define CCOE_ROUTER_ACCUM 4 /* training batches per router step */

/* The base layer the router reads for model m: the smallest branch point of its experts
 * (tail: L - l_i, prefix: prefix_layers, ffn: the first block an expert FFN covers). */
int ccoe_route_feature_layer(const ccoe_model *m);

/* The causal prefix means of sequence b's hidden states after `layer` base blocks in the last
 * forward: out (T, C), out[t] = mean_{s <= t} h_s. */
void ccoe_route_prefix_features(const ccoe_model *m, int layer, int b, int T, float *out);

/* Options of ccoe_router_train. */
typedef struct ccoe_router_train_opts {
    int steps;     /* optimizer steps (Adam) */
    int hidden;    /* H (0 = linear) */
    double lr;
    uint64_t seed;
    FILE *log;     /* progress lines (NULL: none) */
} ccoe_router_train_opts;

/* Trains r (initialised here: layer from ccoe_route_feature_layer, D = ds's domains) on the
 * mixed training stream of ds (CCOE_ROUTER_ACCUM batches per Adam step): every position of
 * every sequence is one example, label = the
 * sequence's domain; base and experts frozen (only the base prefix is run). *val_acc: the
 * domain accuracy on up to 8 validation batches per domain afterwards. Not collective. */
ccoe_status ccoe_router_train(ccoe_model *m, ccoe_dataset *ds, ccoe_batch *b,
                              const ccoe_router_train_opts *o, ccoe_domain_router *r,
                              double *val_acc, ccoe_error *err);

/* Writes out_path: the checkpoint in_path (every tensor and metadata) plus the router
 * (tensors router.domain.{w1,b1,w2,b2,mu,sigma}; metadata ccoe.router.layer / .hidden /
 * .domains). A router already in in_path is replaced. */
ccoe_status ccoe_router_save(const char *in_path, const char *out_path,
                             const ccoe_domain_router *r, const ccoe_model *m, ccoe_error *err);
/* Reads the router of an open checkpoint into r (initialised here) for model m; *found = 0
 * (and CCOE_OK) when the file has none. Checks its layer, width and domains against m. */
ccoe_status ccoe_router_load(const ccoe_st_file *f, const char *path, const ccoe_model *m,
                             ccoe_domain_router *r, int *found, ccoe_error *err);

/* ---- routing a batch ---- */

typedef struct ccoe_routing {
    ccoe_routing_mode mode;
    int argmax;                      /* posterior: 1 = the most likely path, 0 = the mixture */
    const ccoe_domain_router *router; /* classifier */
} ccoe_routing;

/* Buffers for routing batches of up to (maxB, maxT) over m's paths. */
typedef struct ccoe_route_ws {
    int maxB, maxT, P, C, D;
    float *loglik;  /* (P, maxB, maxT) log p_p(target) */
    float *feat;    /* (maxB * maxT, C) */
    double *zlog;   /* (maxB * maxT, D) router logits */
    double *post;   /* (maxT, P) posterior weights of one sequence */
    int32_t *pred;  /* (maxB * maxT) classifier: the predicted domain */
    int32_t *dom;   /* (maxB) */
} ccoe_route_ws;

ccoe_status ccoe_route_ws_init(ccoe_route_ws *w, const ccoe_model *m, int maxB, int maxT,
                               int D, ccoe_error *err);
void ccoe_route_ws_free(ccoe_route_ws *w);

/* The posterior weights of one sequence: loglik (P rows of stride `stride`, T used) the
 * per-path log-likelihoods of the targets, counted[t] whether target t counts; w (T, P):
 * w[t] = softmax(log(1/P) + sum_{s < t, counted} loglik[:, s]). Pure. */
void ccoe_route_posterior(const float *loglik, size_t stride, const int32_t *targets, int P,
                          int T, double *w);

/* Routes one batch (tokens, targets (B, T); targets < 0 not scored) under rt (not rule):
 * runs every path, then per position t writes loss[b*T+t] (nats of the routed prediction;
 * 0 where not counted), path[b*T+t] (the path chosen: argmax weight for the mixture) and,
 * when weights is non-NULL, the routing weights (B, T, P) (classifier: one-hot). Returns the
 * summed loss; *count the scored targets. Evaluation mode; not collective. */
double ccoe_route_batch(ccoe_model *m, const ccoe_routing *rt, ccoe_route_ws *w,
                        const int32_t *tokens, const int32_t *targets, int B, int T,
                        float *loss, int32_t *path, double *weights, long *count);

/* Routed validation figures of one domain. */
typedef struct ccoe_route_eval {
    double loss, bpb;     /* mean nats per token; bits per byte (NAN for the byte tokenizer) */
    long tokens;
    double bytes;
    double route_acc;     /* fraction of tokens sent down the domain's own path */
    double domain_acc;    /* classifier: fraction whose predicted domain is the true one */
} ccoe_route_eval;

/* ccoe_eval_domains' validation loss under rt (rule mode included, through this code path: the
 * same batches), plus the routing accuracy. comm NULL or one rank: everything here; otherwise
 * COLLECTIVE: batch k of a domain on rank k % P, totals summed over ranks. Refuses models whose
 * forward is collective (expert-parallel MoE) and the MoE domain gate (it needs the label). */
ccoe_status ccoe_route_eval_domains(ccoe_model *m, const ccoe_dataset *ds,
                                    const ccoe_tokenizer *tok, ccoe_batch *b, int max_batches,
                                    const ccoe_routing *rt, ccoe_comm *comm,
                                    ccoe_route_eval *out, ccoe_error *err);

/* Prints one table per mode: domain, loss, perplexity, bpb (BPE), tokens, routing accuracy. */
void ccoe_route_eval_print(FILE *f, const ccoe_dataset *ds, const ccoe_routing *rt,
                           const ccoe_route_eval *ev);

/* ccoe_generate under rt (posterior or classifier): every prompt runs down every path (n * P
 * rows, n * P <= min(b->maxB, CCOE_GEN_MAX)); each new token is drawn from the routed
 * distribution (the posterior mixture, or the chosen path's), then the posteriors are updated
 * with its likelihood under each path. paths_out (may be NULL): the path chosen for the first
 * new token of each prompt. */
ccoe_status ccoe_generate_routed(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                                 const char *const *prompts, int n, const ccoe_routing *rt,
                                 const ccoe_gen_opts *o, char **outs, size_t out_cap,
                                 int *paths_out, ccoe_error *err);

/* Prompts in chunks through ccoe_generate_routed, printed as ccoe_generate_print does. */
ccoe_status ccoe_generate_routed_print(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                                       const char *const *prompts, int n,
                                       const ccoe_routing *rt, const ccoe_gen_opts *o,
                                       FILE *out, ccoe_error *err);

/* Why rt cannot run on m (CCOE_ERR_ARG naming the fix), or CCOE_OK. */
ccoe_status ccoe_routing_check(const ccoe_model *m, const ccoe_routing *rt, ccoe_error *err);

#endif
