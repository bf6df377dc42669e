/* fuzz_data.c - libFuzzer harness for the data manifest and its text, JSONL and task files
 * (ccoe_data_load, src/data.h).
 *
 * The input is a small directory in one text: the manifest, then files, each introduced by a
 * line "--- NAME" (NAME: 1-32 characters of A-Z a-z 0-9 _ . -):
 *
 *     [domain a]
 *     text = a.txt
 *     tasks = t.jsonl
 *     --- a.txt
 *     some text
 *     --- t.jsonl
 *     {"prompt": "1+1=", "answer": "2"}
 *
 * The parts are written to a scratch directory as manifest.ini and NAME and loaded with the byte
 * tokenizer and short sequences (CCOE_FUZZ_VERBOSE=1 prints why a load failed); a loaded set is then read through the batch, validation, seek
 * and restrict functions.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data.h"
#include "fuzz_common.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FILES 12
#define T_SEQ 8
#define B_ROWS 3

static char written[MAX_FILES][40];
static int n_written;

static int good_name(const char *s, size_t n)
{
    if (n < 1 || n > 32 || (n <= 2 && s[0] == '.' && (n == 1 || s[1] == '.')) ||
        (n == 12 && memcmp(s, "manifest.ini", 12) == 0))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '.' || s[i] == '-'))
            return 0;
    return 1;
}

/* Writes the parts; the previous input's files are removed first. */
static void unpack(const uint8_t *data, size_t size)
{
    char path[512];
    for (int i = 0; i < n_written; i++) {
        snprintf(path, sizeof path, "%s/%s", fuzz_dir(), written[i]);
        unlink(path);
    }
    n_written = 0;
    const char *p = (const char *)data, *end = p + size;
    const char *name = "manifest.ini";
    size_t name_len = 12;
    for (;;) {
        /* the next "\n--- " ends this part */
        const char *next = memmem(p, (size_t)(end - p), "\n--- ", 5);
        const char *part_end = next ? next + 1 : end; /* the part keeps its last newline */
        if (name) {
            char fname[40];
            snprintf(fname, sizeof fname, "%.*s", (int)name_len, name);
            fuzz_write(fname, p, (size_t)(part_end - p));
            if (n_written < MAX_FILES && strcmp(fname, "manifest.ini") != 0)
                snprintf(written[n_written++], sizeof written[0], "%s", fname);
        }
        if (!next || n_written == MAX_FILES)
            break;
        const char *h = next + 5, *eol = memchr(h, '\n', (size_t)(end - h));
        if (!eol)
            eol = end;
        name = good_name(h, (size_t)(eol - h)) ? h : NULL;
        name_len = (size_t)(eol - h);
        p = eol < end ? eol + 1 : end;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    static ccoe_tokenizer tok;
    ccoe_error err;
    if (!tok.ops && ccoe_tokenizer_init(&tok, "byte", &err) != CCOE_OK)
        abort();
    unpack(data, size);
    char manifest[512];
    snprintf(manifest, sizeof manifest, "%s/manifest.ini", fuzz_dir());
    ccoe_dataset ds;
    ccoe_status st = ccoe_data_load(&ds, manifest, &tok, T_SEQ, 0.25, 4, 7, &err);
    if (st != CCOE_OK && getenv("CCOE_FUZZ_VERBOSE"))
        fprintf(stderr, "fuzz_data: %s\n", err.msg);
    if (st != CCOE_OK) {
        if (!err.msg[0])
            abort(); /* a failure says why */
        ccoe_data_free(&ds);
        return 0;
    }
    int32_t tokens[B_ROWS * T_SEQ], targets[B_ROWS * T_SEQ], domains[B_ROWS];
    if (ds.n_train > 0)
        for (int i = 0; i < 3; i++)
            ccoe_data_next_batch(&ds, tokens, targets, domains, B_ROWS);
    for (int d = 0; d < ds.n_domains; d++) {
        if (ccoe_data_domain_index(&ds, ds.domains[d].name) != d)
            abort();
        int got = ccoe_data_val_batch(&ds, d, 0, tokens, targets, domains, B_ROWS);
        if (got < 0 || got > B_ROWS)
            abort();
        for (size_t k = 0; k < ds.domains[d].n_tasks; k++) {
            const ccoe_task_example *t = &ds.domains[d].tasks[k];
            if (!t->prompt || !t->answer || strlen(t->kind) >= CCOE_KIND_LEN)
                abort();
        }
        if (ccoe_data_restrict(&ds, 1u << d, &err) == CCOE_OK)
            ccoe_data_next_batch(&ds, tokens, targets, domains, B_ROWS);
    }
    if (ds.n_train > 0) {
        ccoe_data_restrict(&ds, ~0u, &err);
        ccoe_data_seek(&ds, 12345);
        ccoe_data_next_batch(&ds, tokens, targets, domains, B_ROWS);
    }
    ccoe_data_free(&ds);
    return 0;
}
