/* data_builtin.h - internal interface between data.c and the generator of the embedded default
 * data set (data_builtin.c). Not part of the public API: callers use ccoe_data_load("builtin")
 * and ccoe_data_write_builtin.
 */
#ifndef CCOE_DATA_BUILTIN_H
#define CCOE_DATA_BUILTIN_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "status.h"

#define CCOE_BUILTIN_DOMAINS 5

/* One exact-answer example inside a domain's text: text[offset .. offset+prompt_len) is the
 * prompt, the answer follows directly, then the domain's answer_stop character. */
typedef struct ccoe_builtin_task {
    size_t doc;          /* index of the document that holds it */
    size_t offset;       /* byte offset of the prompt in the domain's text */
    uint32_t prompt_len;
    uint32_t answer_len;
    const char *kind;    /* static label: "equation", "word", "word_small", "sql", ... */
    int match;           /* ccoe_task_match */
} ccoe_builtin_task;

typedef struct ccoe_builtin_domain {
    char name[CCOE_NAME_LEN];
    char *text;          /* (len) documents separated by one empty line: exactly the .txt file */
    size_t len;
    size_t n_docs;
    ccoe_builtin_task *tasks; /* (n_tasks) in text order; NULL when the domain has no task */
    size_t n_tasks;
    char answer_stop;
    char *sql_script;    /* SQL that builds the database of the domain's SQL tasks, or NULL */
} ccoe_builtin_domain;

typedef struct ccoe_builtin_set {
    int n_domains;
    ccoe_builtin_domain domains[CCOE_BUILTIN_DOMAINS];
} ccoe_builtin_set;

/* Generates the embedded data set (deterministic: fixed internal seed, independent of the run's
 * seed). The set owns its buffers; free with ccoe_builtin_free (also after a failure). */
ccoe_status ccoe_builtin_generate(ccoe_builtin_set *set, ccoe_error *err);
void ccoe_builtin_free(ccoe_builtin_set *set);

#endif
