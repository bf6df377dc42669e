/* eval.h - per-domain validation loss, perplexity and exact-match task accuracy. */
#ifndef CCOE_EVAL_H
#define CCOE_EVAL_H

#include <stdint.h>
#include <stdio.h>

#include "data.h"
#include "model.h"
#include "tokenizer.h"

#define CCOE_MAX_TASK_KINDS 8 /* kinds counted apart per domain; further kinds count as "other" */

/* Task accuracy of one task kind. */
typedef struct ccoe_kind_eval {
    char name[CCOE_KIND_LEN]; /* the examples' kind ("" -> "exact" or "sql" by match) */
    long total, correct;
    long errors;              /* SQL tasks: decoded SQL that did not run (syntax, budget, ...) */
} ccoe_kind_eval;

typedef struct ccoe_domain_eval {
    double loss;      /* mean next-token loss (nats) over the evaluated validation tokens */
    long tokens;      /* validation tokens counted */
    long task_total;  /* task examples evaluated (0: domain has no task) */
    long task_correct;
    int n_kinds;      /* task accuracy per kind, in order of first appearance */
    ccoe_kind_eval kinds[CCOE_MAX_TASK_KINDS];
    int sql_unavailable; /* 1: the domain's database could not be opened (SQL tasks scored 0) */
    const ccoe_model *model; /* the evaluated model (ccoe_eval_print prints its MoE totals) */
    /* bits per byte (total nats / ln 2 / text bytes of the counted targets): computed, printed
     * and logged for tokenizers other than the byte one (bpb_shown = 1) */
    int bpb_shown;
    double bytes, bpb;
} ccoe_domain_eval;

/* Caller-owned buffers for evaluation batches (sized once: maxB * maxT). */
typedef struct ccoe_batch {
    int32_t *tokens, *targets, *domains;
    int maxB, maxT;
} ccoe_batch;

ccoe_status ccoe_batch_init(ccoe_batch *b, int maxB, int maxT, ccoe_error *err);
void ccoe_batch_free(ccoe_batch *b);

/* Evaluates every domain: at most max_batches validation batches of B sequences each
 * (0 = all) and, if with_tasks, every stored task example by greedy decoding. Runs the model
 * in evaluation mode (no routing noise; m->train restored afterwards) and leaves the MoE totals
 * of the validation forwards in the model (ccoe_model_moe_reset_totals first).
 *
 * comm NULL (or one rank): this process evaluates everything. Otherwise COLLECTIVE, data
 * parallel: validation batch k and task chunk c (min(B, CCOE_GEN_MAX) prompts) go to rank
 * k % P and c % P, and every rank returns the totals over all ranks (losses, task counts, MoE
 * totals). Each batch and chunk is evaluated exactly as one process would, so the counts equal
 * a one-process evaluation's and the losses differ only by the order of the sums. A model
 * whose forward exchanges rows (ccoe_model_forward_collective) runs every round of P batches
 * on every rank (zero rows where a rank has none) and decodes every task on every rank.
 * Fails when the decoding cache cannot be allocated (ccoe_generate) or, with several ranks,
 * when any rank failed or a reduction failed. */
ccoe_status ccoe_eval_domains(ccoe_model *m, const ccoe_dataset *ds, const ccoe_tokenizer *tok,
                              ccoe_batch *b, int max_batches, int with_tasks, ccoe_comm *comm,
                              ccoe_domain_eval *out, ccoe_error *err);

/* Index of the largest of x[0..n) (the first on ties). */
int ccoe_argmax(const float *x, int n);

/* How the next token is chosen from the logits. All zero: greedy (argmax). */
typedef struct ccoe_sampling {
    float temperature; /* <= 0: greedy; else softmax(logits / temperature) */
    int top_k;         /* > 0: only the top_k most likely tokens are candidates */
    float top_p;       /* in (0, 1): only the smallest set of most likely tokens whose
                        * probability reaches top_p (nucleus); 0 or >= 1: off */
    uint64_t seed;     /* the draw for position t of prompt i is a pure function of (seed, i, t),
                        * so batching and chunking never change a sample */
} ccoe_sampling;

/* A candidate token and its unnormalised probability (sampling scratch). */
typedef struct ccoe_token_prob {
    float p;
    int id;
} ccoe_token_prob;

/* The token that `s` picks from logits[0..V) for the uniform draw u in [0, 1): argmax when
 * s is NULL or greedy; else the candidates (top_k, then top_p, applied to the softmax at the
 * temperature, most likely first, ties by id) are renormalised and u is inverted through their
 * cumulative distribution. scratch holds V entries. */
int ccoe_sample_token(const float *logits, int V, const ccoe_sampling *s, double u,
                      ccoe_token_prob *scratch);

/* What ccoe_generate produces per prompt. */
typedef struct ccoe_gen_opts {
    int max_new;          /* tokens generated at most */
    char stop;            /* the continuation ends before this character ('\0': none) or EOS */
    ccoe_sampling sample; /* all zero: greedy */
    uint64_t first_id;    /* prompt i draws its random numbers as prompt first_id + i */
} ccoe_gen_opts;

#define CCOE_GEN_MAX 64 /* prompts decoded together at most */

/* Decodes up to o->max_new tokens after each prompt (n <= min(b->maxB, CCOE_GEN_MAX)); all
 * prompts belong to `domain` (for routing). Writes the decoded continuation of prompt i
 * (stopping before o->stop or at EOS) into outs[i]. One forward over the padded prompts, then
 * one incremental step per new token (ccoe_model_decode_step: cached keys and values). Fails
 * only when the decoding cache or the sampling scratch cannot be allocated. */
ccoe_status ccoe_generate(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                          const char *const *prompts, int domain, int n, const ccoe_gen_opts *o,
                          char **outs, size_t out_cap, ccoe_error *err);

/* Appends the lines of path ("-": standard input) to *prompts (n of them so far; the array is
 * grown with realloc), each a prompt: a final line without a newline counts, and "\r\n" ends a
 * line too. *text receives the buffer that owns them (the caller frees it and *prompts). Errors
 * name --prompts and the file. */
ccoe_status ccoe_eval_read_prompts(const char *path, const char ***prompts, int *n, char **text,
                                   ccoe_error *err);

/* Generates the continuation of every prompt (any n) in chunks of min(b->maxB, CCOE_GEN_MAX)
 * through ccoe_generate, prompt i drawing its random numbers as prompt o->first_id + i (the
 * same text however it is chunked), and prints each prompt followed by its continuation, one
 * line each, to out as each chunk finishes (a continuation holds at most 4095 bytes). Fails as
 * ccoe_generate does, or when the text buffers cannot be allocated; the chunks before a
 * failure are printed. */
ccoe_status ccoe_generate_print(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                                const char *const *prompts, int n, int domain,
                                const ccoe_gen_opts *o, FILE *out, ccoe_error *err);

/* Scores one decoded answer against a task example: exact match, or for CCOE_MATCH_SQL execution
 * match on db (NULL: scored wrong). Returns 1 if correct; *sql_error is set to 1 when decoded
 * SQL did not run. */
struct ccoe_sqldb;
int ccoe_eval_score(const ccoe_task_example *t, const char *decoded, struct ccoe_sqldb *db,
                    int *sql_error);

/* Adds one scored example to ev's totals and to its kind's. */
void ccoe_eval_count(ccoe_domain_eval *ev, const ccoe_task_example *t, int correct, int sql_error);

/* Prints the per-domain table (domain, val loss, perplexity, task accuracy), then task accuracy
 * per domain and task kind (when some domain has tasks), then for a model
 * with MoE blocks one line per MoE layer: validation tokens, tokens per expert, drop rate, gate
 * and router entropy, CV of the expert load. */
void ccoe_eval_print(FILE *f, const ccoe_dataset *ds, const ccoe_domain_eval *ev);

/* Appends {"loss":..,"ppl":..,"acc":..,"kinds":{KIND:{"acc":..,"n":..}}} per domain as one JSON
 * object to f (no newline). */
void ccoe_eval_json(FILE *f, const ccoe_dataset *ds, const ccoe_domain_eval *ev);
/* The MoE drops of the evaluation as a JSON member to append to an object,
 * ,"eval_moe":[{"layer":l,"drop_rate":x,"train_drop_rate":y}, ...] (x: the evaluation's own
 * drops under moe.eval_capacity_factor, 0 when dropless; y: what moe.capacity_factor would
 * drop of the same routing); nothing for a model without MoE layers. */
void ccoe_eval_moe_json(FILE *f, const ccoe_dataset *ds, const ccoe_domain_eval *ev);

/* Each id's text bytes (the tokenizer's decode of it alone; 0 for specials and ids beyond the
 * tokenizer) for ids 0..V-1; malloc'd (NULL when out of memory). */
int32_t *ccoe_eval_token_bytes(const ccoe_tokenizer *tok, int V);

/* The held-out loss of one text under the model's tokenizer. */
typedef struct ccoe_text_eval {
    size_t text_bytes; /* the text's length */
    size_t n_ids;      /* its ids, the start-of-text id included */
    long tokens;       /* targets scored */
    double nats;       /* their summed loss */
    double bytes;      /* their text bytes (= text_bytes when the tokenizer has a BOS id) */
    double loss;       /* nats / tokens */
    double bpb;        /* bits per byte: nats / ln 2 / bytes (compares tokenizers) */
    double ppl;        /* exp(loss) */
} ccoe_text_eval;

/* Encodes text (with the tokenizer's start-of-text id first, when it has one, so every text
 * token is predicted) and scores it in windows of b->maxT targets side by side, b->maxB at a
 * time, routed as domain (< 0: the base path). Evaluation mode. COLLECTIVE over comm (NULL or
 * one rank: serial): the chunks of b->maxB windows are split over the ranks and every rank
 * gets the totals, bit-identical to one process's. */
ccoe_status ccoe_eval_text(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                           const char *text, size_t len, int domain, ccoe_comm *comm,
                           ccoe_text_eval *out, ccoe_error *err);

/* ccoe_eval_text of the file path, domain named (NULL: the base path) among ds's domains.
 * COLLECTIVE over comm; an error reading the file is every rank's (they read the same file)
 * but is not agreed on: the caller agrees before its next collective. */
ccoe_status ccoe_eval_text_file(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                                const ccoe_dataset *ds, const char *path, const char *domain,
                                ccoe_comm *comm, ccoe_text_eval *out, ccoe_error *err);

/* Prints the text's figures: tokens, nats/token, bits per byte, perplexity. */
void ccoe_eval_text_print(FILE *f, const char *path, const char *domain, const char *tokenizer,
                          const ccoe_text_eval *e);

#endif
