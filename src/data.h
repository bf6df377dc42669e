/* data.h - domain-labelled training data, packed into sequences.
 *
 * A manifest maps domain names to text or JSONL files (format in data.c and README); the word
 * "builtin" selects the embedded default data set, which ccoe generates itself (deterministic,
 * several clearly different domains, some with exact-answer tasks). Each domain's text is
 * tokenized, split deterministically into train and validation parts, and packed into sequences
 * of T+1 tokens that never cross domains; every sequence carries its domain id, which the
 * rule-based gating of the CCoE variants routes on.
 */
#ifndef CCOE_DATA_H
#define CCOE_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"
#include "tokenizer.h"

#define CCOE_MAX_DOMAINS 32
#define CCOE_NAME_LEN 64

#define CCOE_KIND_LEN 24 /* task kind labels: at most 23 characters */

/* How a task's decoded answer is scored. */
typedef enum ccoe_task_match {
    CCOE_MATCH_EXACT = 0, /* the decoded text equals answer */
    CCOE_MATCH_SQL = 1    /* answer is gold SQL: the decoded SQL, run on the domain's database,
                             gives the same result (sqlexec.h) */
} ccoe_task_match;

/* One task example: the model is given prompt and must produce answer. */
typedef struct ccoe_task_example {
    char *prompt; /* NUL-terminated text */
    char *answer; /* NUL-terminated text, compared after greedy decoding as `match` says */
    char kind[CCOE_KIND_LEN]; /* label for per-kind accuracy, e.g. "word_small"; "" = none */
    int match;    /* ccoe_task_match */
} ccoe_task_example;

typedef struct ccoe_domain {
    char name[CCOE_NAME_LEN];
    size_t n_train, n_val;       /* sequences in each split */
    size_t train_start, val_start; /* first sequence index in train_seq / val_seq */
    size_t n_tasks;              /* held-out task examples (0: no task for this domain) */
    ccoe_task_example *tasks;
    char answer_stop;            /* character that ends an answer (e.g. '\n') */
    /* the database of CCOE_MATCH_SQL tasks: a SQLite file (opened read-only) or an SQL script
     * that builds an in-memory database; both NULL when the domain has no SQL task */
    char *sql_db;                /* path */
    char *sql_script;            /* SQL text */
} ccoe_domain;

typedef struct ccoe_dataset {
    int T;                          /* tokens per sequence input (sequences hold T+1) */
    int n_domains;
    ccoe_domain domains[CCOE_MAX_DOMAINS];
    int32_t *train_seq;             /* (n_train, T+1), grouped by domain */
    int32_t *train_domain;          /* (n_train) */
    size_t n_train;
    int32_t *val_seq;               /* (n_val, T+1), grouped by domain */
    int32_t *val_domain;            /* (n_val) */
    size_t n_val;
    size_t train_tokens;            /* tokens of train text before packing */
    /* iteration state of the training stream (see ccoe_data_seek) */
    uint64_t seed;
    uint64_t pos;                   /* sequences consumed so far */
    uint64_t epoch;                 /* epoch whose permutation is in perm */
    uint32_t *perm;                 /* (n_train); the first n_stream entries are the epoch's order */
    size_t n_stream;                /* train sequences in the stream (all, or a domain subset) */
    uint32_t stream_domains;        /* bit d set: domain d is in the training stream */
} ccoe_dataset;

/* Loads a manifest ("builtin" = the embedded default data) for sequence length T.
 * val_fraction of each domain's tokens (at the end of its text) is held out; task examples of
 * the held-out part (at most max_tasks per domain) are kept for exact-match evaluation. */
ccoe_status ccoe_data_load(ccoe_dataset *ds, const char *manifest, const ccoe_tokenizer *tok,
                           int T, double val_fraction, int max_tasks, uint64_t seed,
                           ccoe_error *err);
void ccoe_data_free(ccoe_dataset *ds);

/* Index of a domain by name, or -1. */
int ccoe_data_domain_index(const ccoe_dataset *ds, const char *name);

/* Positions the training stream at sequence counter pos (for resume); recomputes the epoch's
 * shuffle in place. No allocation. */
void ccoe_data_seek(ccoe_dataset *ds, uint64_t pos);

/* Restricts the training stream to the domains whose bit is set in mask (all bits: every
 * domain), e.g. to train one CCoE expert on its own domains. Repositions the stream at 0.
 * Errors if the selected domains hold no training sequence. */
ccoe_status ccoe_data_restrict(ccoe_dataset *ds, uint32_t mask, ccoe_error *err);

/* Next B training sequences of the mixed-domain stream (shuffled per epoch by seed): tokens
 * (B,T), targets (B,T) (the next tokens), domains (B). Advances ds->pos by B. No allocation. */
void ccoe_data_next_batch(ccoe_dataset *ds, int32_t *tokens, int32_t *targets, int32_t *domains,
                          int B);

/* Validation batch of domain d starting at its sequence `first`: fills up to B sequences and
 * returns how many; the remaining rows get targets -1 (ignored) and domain d. */
int ccoe_data_val_batch(const ccoe_dataset *ds, int d, size_t first, int32_t *tokens,
                        int32_t *targets, int32_t *domains, int B);

/* Writes the embedded default data set to dir (one text file per domain, task JSONL files and
 * a manifest that ccoe_data_load reads back to the same data). */
ccoe_status ccoe_data_write_builtin(const char *dir, ccoe_error *err);

#endif
