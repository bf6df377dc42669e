/* cmd_tokenizer_train.c - `ccoe tokenizer train`: the options and the summary line around the
 * trainer of tokenizer_train.c. Rank 0 only. */
#include <stdio.h>
#include <time.h>

#include "cli.h"
#include "status.h"
#include "tokenizer_train.h"

static const ccoe_cli_opt k_train_opts[] = {
    {"--vocab", CCOE_OPT_UINT, "N", 1, 1u << 24, .flags = CCOE_OPT_REQUIRED,
     .help = "ids in all: 256 bytes, the special tokens and the merges"},
    {"-o", CCOE_OPT_PATH, "DIR", .flags = CCOE_OPT_REQUIRED,
     .help = "where vocab.json, merges.txt and tokenizer.json go"},
    {"--min-frequency", CCOE_OPT_UINT, "N", 1, 1.8e19, .def = "2",
     .help = "pairs seen fewer times are not merged"},
    {"--special", CCOE_OPT_STRING, "TOK", .flags = CCOE_OPT_REPEAT,
     .help = "a special token (default: <|endoftext|>); each adds one"},
    {"--no-special", CCOE_OPT_FLAG, .help = "no special tokens"},
};

static int run_train(const ccoe_cli_args *a)
{
    int n_specials = 0;
    const char *const *specials = ccoe_cli_all(a, "--special", &n_specials);
    const int no_special = ccoe_cli_flag(a, "--no-special") > 0;
    if (no_special && n_specials)
        return ccoe_cli_usage_error(a, "--no-special and --special exclude each other", "");
    const char *const *files = (const char *const *)a->pos, *out = ccoe_cli_str(a, "-o");
    const int n_files = a->n_pos;
    const unsigned long long minf = ccoe_cli_uint(a, "--min-frequency");
    const unsigned long long vocab = ccoe_cli_uint(a, "--vocab");
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
    if (s != CCOE_OK)
        return ccoe_cli_fail(a, &err);
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

const ccoe_cli_cmd ccoe_cmd_tokenizer_train = {
    .name = "tokenizer train",
    .args = "FILE...",
    .summary = "learn a byte-level BPE (GPT-2's pre-tokenizer) from text files",
    .details = "Writes vocab.json, merges.txt and tokenizer.json to DIR. Ties go to the pair of "
               "smallest bytes;\nthe result depends on the files and their order alone.\n",
    .opts = k_train_opts,
    .n_opts = sizeof k_train_opts / sizeof k_train_opts[0],
    .min_pos = 1,
    .max_pos = -1,
    .pos_error = "tokenizer train needs at least one text FILE",
    .run = run_train,
};
