/* cmd_tokenizer.c - `ccoe tokenizer encode` and `ccoe tokenizer decode`: a tokenizer
 * (tokenizer.h: byte, or a BPE directory) over the lines of a file or standard input, one
 * output line per input line. Rank 0 only. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "fs.h"
#include "tokenizer.h"

/* Writes v in decimal to f (ids are printed by the million: no printf per id). */
static void put_id(FILE *f, int32_t v)
{
    char b[16];
    int n = 0;
    uint32_t u = v < 0 ? (uint32_t)0 - (uint32_t)v : (uint32_t)v;
    do
        b[n++] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (v < 0)
        b[n++] = '-';
    while (n)
        putc_unlocked(b[--n], f);
}

/* ccoe tokenizer encode|decode TOKENIZER [FILE|-]: one output line per input line. */
static int run_tokenizer(const ccoe_cli_args *a)
{
    const int enc = a->cmd == &ccoe_cmd_tokenizer_encode;
    const char *path = a->n_pos == 2 ? a->pos[1] : "-";
    const char *name = strcmp(path, "-") == 0 ? "standard input" : path;
    ccoe_error err = {0};
    ccoe_tokenizer tok;
    if (ccoe_tokenizer_init(&tok, a->pos[0], &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    FILE *in = stdin;
    if (strcmp(path, "-") != 0 && !(in = ccoe_fs_fopen_input(path, "input file", &err))) {
        ccoe_tokenizer_free(&tok);
        return ccoe_cli_fail(a, &err);
    }
    static char obuf[1 << 16];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    char *line = NULL, *text = NULL;
    size_t line_cap = 0, text_cap = 0, ids_cap = 0, lineno = 0;
    int32_t *ids = NULL;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &line_cap, in)) >= 0) {
        lineno++;
        size_t len = (size_t)n;
        if (len && line[len - 1] == '\n')
            len--;
        if (enc) {
            size_t k = tok.ops->encode(tok.self, line, len, ids, ids_cap);
            if (k > ids_cap) {
                int32_t *p = realloc(ids, k * sizeof *p);
                if (!p) {
                    ccoe_error_set(&err, CCOE_ERR_NOMEM, "out of memory encoding line %zu",
                                   lineno);
                    rc = ccoe_cli_fail(a, &err);
                    goto done;
                }
                ids = p;
                ids_cap = k;
                tok.ops->encode(tok.self, line, len, ids, ids_cap);
            }
            for (size_t i = 0; i < k; i++) {
                if (i)
                    putc_unlocked(' ', stdout);
                put_id(stdout, ids[i]);
            }
            putc_unlocked('\n', stdout);
            continue;
        }
        line[len] = '\0';
        size_t k = 0;
        for (char *p = line, *end;; p = end) {
            while (*p == ' ' || *p == '\t' || *p == '\r')
                p++;
            if (!*p)
                break;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < INT32_MIN || v > INT32_MAX ||
                (*end && *end != ' ' && *end != '\t' && *end != '\r')) {
                ccoe_error_set(&err, CCOE_ERR_FORMAT,
                               "%s line %zu: '%.20s' is not a token id: decode takes lines of "
                               "space-separated ids (what encode prints)",
                               name, lineno, p);
                rc = ccoe_cli_fail(a, &err);
                goto done;
            }
            if (k == ids_cap) {
                size_t c = ids_cap ? 2 * ids_cap : 1024;
                int32_t *q = realloc(ids, c * sizeof *q);
                if (!q) {
                    ccoe_error_set(&err, CCOE_ERR_NOMEM, "out of memory decoding line %zu",
                                   lineno);
                    rc = ccoe_cli_fail(a, &err);
                    goto done;
                }
                ids = q;
                ids_cap = c;
            }
            ids[k++] = (int32_t)v;
        }
        size_t cap = text_cap ? text_cap : 4096, got = 0;
        for (;;) {
            if (cap > text_cap) {
                char *q = realloc(text, cap);
                if (!q) {
                    ccoe_error_set(&err, CCOE_ERR_NOMEM, "out of memory decoding line %zu",
                                   lineno);
                    rc = ccoe_cli_fail(a, &err);
                    goto done;
                }
                text = q;
                text_cap = cap;
            }
            if (ccoe_tokenizer_decode(&tok, ids, k, text, text_cap, &got, &err) != CCOE_OK) {
                ccoe_error_wrap(&err, "%s line %zu", name, lineno);
                rc = ccoe_cli_fail(a, &err);
                goto done;
            }
            if (got + 1 < text_cap)
                break;
            cap = 2 * text_cap;
        }
        fwrite(text, 1, got, stdout);
        putc_unlocked('\n', stdout);
    }
    if (ferror(in)) {
        ccoe_error_set(&err, CCOE_ERR_IO, "cannot read %s: %s", name, strerror(errno));
        rc = ccoe_cli_fail(a, &err);
    }
done:
    if (fflush(stdout) != 0 && rc == 0) {
        ccoe_error_set(&err, CCOE_ERR_IO, "cannot write the output: %s", strerror(errno));
        rc = ccoe_cli_fail(a, &err);
    }
    free(line);
    free(text);
    free(ids);
    if (in != stdin)
        fclose(in);
    ccoe_tokenizer_free(&tok);
    return rc;
}

#define TOKENIZER_DETAILS                                                                    \
    "TOKENIZER is byte or a directory with vocab.json + merges.txt or tokenizer.json\n"        \
    "(scripts/fetch_gpt2_tokenizer.sh fetches GPT-2's); FILE absent or - reads standard "     \
    "input.\n"

const ccoe_cli_cmd ccoe_cmd_tokenizer_encode = {
    .name = "tokenizer encode",
    .args = "TOKENIZER [FILE|-]",
    .summary = "the token ids of each line of FILE, space separated, one output line per line",
    .details = TOKENIZER_DETAILS,
    .min_pos = 1,
    .max_pos = 2,
    .run = run_tokenizer,
};

const ccoe_cli_cmd ccoe_cmd_tokenizer_decode = {
    .name = "tokenizer decode",
    .args = "TOKENIZER [FILE|-]",
    .summary = "the inverse of encode: each line of ids back to its text",
    .details = TOKENIZER_DETAILS,
    .min_pos = 1,
    .max_pos = 2,
    .run = run_tokenizer,
};
