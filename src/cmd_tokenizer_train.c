/* cmd_tokenizer_train.c - `ccoe tokenizer train`: argument parsing and the summary line around
 * the trainer of tokenizer_train.c. */
#include "cmd_tokenizer_train.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "status.h"
#include "tokenizer_train.h"

const char ccoe_cmd_tokenizer_train_usage[] =
    "  tokenizer train FILE... --vocab N -o DIR [--min-frequency N] [--special TOK]...\n"
    "        [--no-special]: learns a byte-level BPE (GPT-2's pre-tokenizer) from the text\n"
    "        files and writes vocab.json, merges.txt and tokenizer.json to DIR. N counts all\n"
    "        ids: 256 bytes, the special tokens (default <|endoftext|>; each --special adds\n"
    "        one, --no-special gives none) and the merges. Pairs seen fewer than\n"
    "        --min-frequency times (default 2) are not merged. Ties go to the pair of smallest\n"
    "        bytes; the result depends on the files and their order alone.\n";

static int usage(const char *what, const char *arg)
{
    fprintf(stderr, "ccoe: usage error: %s%s%s\n\nusage:\n%s", what, *arg ? ": " : "", arg,
            ccoe_cmd_tokenizer_train_usage);
    return 2;
}

static int parse_u64(const char *s, unsigned long long lo, unsigned long long hi,
                     unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    if (!s || !*s || *s == '-')
        return 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

int ccoe_cmd_tokenizer_train(int argc, char **argv)
{
    const char **files = calloc((size_t)argc + 1, sizeof *files);
    const char **specials = calloc((size_t)argc + 1, sizeof *specials);
    if (!files || !specials) {
        free(files);
        free(specials);
        fprintf(stderr, "ccoe: out of memory\n");
        return 1;
    }
    int n_files = 0, n_specials = 0, no_special = 0, rc = 0;
    unsigned long long vocab = 0, minf = 2;
    const char *out = NULL;
    for (int i = 0; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        const int has = i + 1 < argc;
        if (strcmp(a, "--vocab") == 0) {
            if (!has || !parse_u64(argv[++i], 1, 1u << 24, &vocab))
                rc = usage("--vocab takes a whole number of ids (e.g. --vocab 4096)",
                           has ? argv[i] : "");
        } else if (strcmp(a, "--min-frequency") == 0) {
            if (!has || !parse_u64(argv[++i], 1, UINT64_MAX, &minf))
                rc = usage("--min-frequency takes a whole number of at least 1",
                           has ? argv[i] : "");
        } else if (strcmp(a, "--special") == 0) {
            if (!has)
                rc = usage("--special takes a token text (e.g. --special '<|endoftext|>')", "");
            else
                specials[n_specials++] = argv[++i];
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            printf("usage:\n%s", ccoe_cmd_tokenizer_train_usage);
            free(files);
            free(specials);
            return 0;
        } else if (strcmp(a, "--no-special") == 0) {
            no_special = 1;
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            if (!has)
                rc = usage("-o takes the output directory", "");
            else
                out = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            rc = usage("unknown option of tokenizer train", a);
        } else {
            files[n_files++] = a;
        }
    }
    if (rc == 0 && !n_files)
        rc = usage("tokenizer train needs at least one text FILE", "");
    if (rc == 0 && !vocab)
        rc = usage("tokenizer train needs --vocab N (the vocabulary size, e.g. 4096)", "");
    if (rc == 0 && !out)
        rc = usage("tokenizer train needs -o DIR (where vocab.json etc. go)", "");
    if (rc == 0 && no_special && n_specials)
        rc = usage("--no-special and --special exclude each other", "");
    if (rc) {
        free(files);
        free(specials);
        return rc;
    }
    static const char *const def_special[] = {"<|endoftext|>"};
    ccoe_bpe_train_opts o = {
        .vocab_size = (int)vocab,
        .min_frequency = minf,
        .specials = n_specials ? specials : no_special ? NULL : def_special,
        .n_specials = n_specials ? n_specials : no_special ? 0 : 1,
    };
    ccoe_error err = {0};
    ccoe_bpe_trainer *tr = NULL;
    ccoe_bpe_train_stats st = {0};
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ccoe_status s = ccoe_bpe_trainer_init(&tr, &o, &err);
    for (int i = 0; s == CCOE_OK && i < n_files; i++)
        s = ccoe_bpe_trainer_feed_file(tr, files[i], &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (s == CCOE_OK)
        s = ccoe_bpe_trainer_run(tr, &st, &err);
    if (s == CCOE_OK)
        s = ccoe_bpe_trainer_write(tr, out, &err);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    ccoe_bpe_trainer_free(tr);
    free(files);
    free(specials);
    if (s != CCOE_OK) {
        fprintf(stderr, "ccoe: %s: %s\n", ccoe_status_name(err.status), err.msg);
        return ccoe_error_exit_code(&err);
    }
    const double tc = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    const double tm = (double)(t2.tv_sec - t1.tv_sec) + 1e-9 * (double)(t2.tv_nsec - t1.tv_nsec);
    printf("tokenizer train: %.2f MB, %llu pre-tokens (%llu distinct), %llu special tokens cut "
           "out\n",
           (double)st.bytes / 1e6, (unsigned long long)st.pretokens,
           (unsigned long long)st.unique_words, (unsigned long long)st.specials_cut);
    printf("tokenizer train: %d ids (256 bytes + %d special + %d merged; %d merges) in %.2f s "
           "(counting %.2f s, %.1f MB/s; merging %.2f s) -> %s\n",
           st.vocab_size, o.n_specials, st.vocab_size - 256 - o.n_specials, st.n_merges,
           tc + tm, tc, tc > 0 ? (double)st.bytes / 1e6 / tc : 0.0, tm, out);
    if (st.vocab_size < o.vocab_size)
        printf("tokenizer train: note: %d ids, not the %d asked for: no pair left is seen "
               "--min-frequency (%llu) times; give more text or a lower --min-frequency\n",
               st.vocab_size, o.vocab_size, minf);
    return 0;
}
