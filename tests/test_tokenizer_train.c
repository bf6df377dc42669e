/* test_tokenizer_train.c - the BPE trainer's edge cases: options refused with a message naming
 * the fix (a vocabulary below 256 + specials, empty or repeated specials, min frequency 0),
 * empty and one-character input (no merges, a loadable tokenizer of bytes and specials), runs
 * of one letter (a merge of a token with itself), special tokens cut out of the text, the
 * minimum frequency, ties, determinism, and that the files load with the encoder (tokenizer.json
 * and vocab.json + merges.txt alike) and round-trip. The comparison with an independent trainer
 * on real corpora is tests/cli/tokenizer_train.sh.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#include "tokenizer.h"
#include "tokenizer_train.h"

static char *slurp(const char *dir, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 1 << 20);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static const char *const k_eot[] = {"<|endoftext|>"};

/* Trains on text (NULL: nothing fed) into a new directory; returns it, stats in *st. */
static char *train(const char *text, int vocab, uint64_t minf, const char *const *specials,
                   int n_specials, ccoe_bpe_train_stats *st)
{
    ccoe_bpe_train_opts o = {.vocab_size = vocab, .min_frequency = minf, .specials = specials,
                             .n_specials = n_specials};
    ccoe_error err = {0};
    ccoe_bpe_trainer *tr = NULL;
    assert_int_equal(ccoe_bpe_trainer_init(&tr, &o, &err), CCOE_OK);
    if (text)
        assert_int_equal(ccoe_bpe_trainer_feed(tr, text, strlen(text), &err), CCOE_OK);
    assert_int_equal(ccoe_bpe_trainer_run(tr, st, &err), CCOE_OK);
    char *dir = tu_mkdtemp("bpe_train");
    assert_int_equal(ccoe_bpe_trainer_write(tr, dir, &err), CCOE_OK);
    ccoe_bpe_trainer_free(tr);
    return dir;
}

/* Encodes text with the tokenizer in dir; checks the round trip; returns the id count. */
static size_t encode_check(const char *dir, const char *text, int32_t *ids, size_t cap)
{
    ccoe_tokenizer tok;
    ccoe_error err = {0};
    if (ccoe_tokenizer_init(&tok, dir, &err) != CCOE_OK)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(err.status, CCOE_OK);
    size_t n = tok.ops->encode(tok.self, text, strlen(text), ids, cap);
    assert_true(n <= cap);
    char out[4096];
    size_t len = 0;
    assert_int_equal(ccoe_tokenizer_decode(&tok, ids, n, out, sizeof out, &len, &err), CCOE_OK);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(out, text, len);
    ccoe_tokenizer_free(&tok);
    return n;
}

static void test_bad_options(void **state)
{
    (void)state;
    ccoe_error err = {0};
    ccoe_bpe_trainer *tr = NULL;
    ccoe_bpe_train_opts o = {.vocab_size = 256, .min_frequency = 2, .specials = k_eot,
                             .n_specials = 1};
    assert_int_equal(ccoe_bpe_trainer_init(&tr, &o, &err), CCOE_ERR_ARG);
    assert_null(tr);
    TU_ASSERT_MSG_HAS(err, "256 bytes + 1 special token");
    TU_ASSERT_MSG_HAS(err, "--vocab 257 or more");
    o.vocab_size = 100;
    o.n_specials = 0;
    assert_int_equal(ccoe_bpe_trainer_init(&tr, &o, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "--vocab 256 or more");
    o.vocab_size = 300;
    o.min_frequency = 0;
    assert_int_equal(ccoe_bpe_trainer_init(&tr, &o, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "--min-frequency 1");
    o.min_frequency = 1;
    const char *const twice[] = {"<s>", "<s>"};
    o.specials = twice;
    o.n_specials = 2;
    assert_int_equal(ccoe_bpe_trainer_init(&tr, &o, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "'<s>' is given twice");
    const char *const empty[] = {""};
    o.specials = empty;
    o.n_specials = 1;
    assert_int_equal(ccoe_bpe_trainer_init(&tr, &o, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "is empty");
    /* the smallest vocabulary is accepted: bytes and specials, no merges */
    ccoe_bpe_train_stats st;
    char *dir = train("abababab", 257, 1, k_eot, 1, &st);
    assert_int_equal(st.vocab_size, 257);
    assert_int_equal(st.n_merges, 0);
    tu_rm_tree(dir);
    free(dir);
}

static void test_empty_and_one_char(void **state)
{
    (void)state;
    const char *inputs[] = {NULL, "", "a"};
    for (int k = 0; k < 3; k++) {
        ccoe_bpe_train_stats st;
        char *dir = train(inputs[k], 1000, 1, k_eot, 1, &st);
        assert_int_equal(st.n_merges, 0);
        assert_int_equal(st.vocab_size, 257);
        assert_int_equal(st.unique_words, k == 2 ? 1 : 0);
        ccoe_tokenizer tok;
        ccoe_error err = {0};
        assert_int_equal(ccoe_tokenizer_init(&tok, dir, &err), CCOE_OK);
        assert_int_equal(tok.ops->vocab_size(tok.self), 257);
        assert_int_equal(tok.eos, 256); /* <|endoftext|> follows the bytes */
        ccoe_tokenizer_free(&tok);
        int32_t ids[64];
        assert_int_equal(encode_check(dir, "hi <|endoftext|>", ids, 64), 4);
        assert_int_equal(ids[0], 'h');
        assert_int_equal(ids[1], 'i');
        assert_int_equal(ids[2], ' ');
        assert_int_equal(ids[3], 256);
        char *m = slurp(dir, "merges.txt");
        assert_string_equal(m, "#version: 0.2\n");
        free(m);
        tu_rm_tree(dir);
        free(dir);
    }
}

static void test_runs_and_min_frequency(void **state)
{
    (void)state;
    ccoe_bpe_train_stats st;
    /* "aaaa" three times: (a, a) merges into "aa" (left to right: aa aa), then (aa, aa) */
    char *dir = train("aaaa aaaa aaaa", 1000, 3, NULL, 0, &st);
    char *m = slurp(dir, "merges.txt");
    /* " aaaa" is a pre-token with a space (Ġ): pairs (Ġ,a) 2, (a,a) 3*3 then ... */
    assert_string_equal(m, "#version: 0.2\na a\naa aa\n");
    assert_int_equal(st.vocab_size, 258);
    int32_t ids[64];
    assert_int_equal(encode_check(dir, "aaaa", ids, 64), 1);
    assert_int_equal(ids[0], 257);
    assert_int_equal(encode_check(dir, "aaaaa", ids, 64), 2); /* aaaa a */
    free(m);
    tu_rm_tree(dir);
    free(dir);
    /* min frequency 1 also merges the pairs seen twice: (Ġ, aaaa) */
    dir = train("aaaa aaaa aaaa", 1000, 1, NULL, 0, &st);
    m = slurp(dir, "merges.txt");
    assert_string_equal(m, "#version: 0.2\na a\naa aa\nĠ aaaa\n");
    free(m);
    tu_rm_tree(dir);
    free(dir);
}

static void test_ties_and_specials(void **state)
{
    (void)state;
    ccoe_bpe_train_stats st;
    /* every pair once: the smallest bytes win ("a b" before "c d", then "b..."); the special
     * token splits "cd<|endoftext|>ef" so no pair crosses it */
    char *dir = train("zy cd<|endoftext|>ef ab", 263, 1, k_eot, 1, &st);
    assert_int_equal(st.specials_cut, 1);
    char *m = slurp(dir, "merges.txt");
    /* pre-tokens: "zy", " cd", "ef", " ab"; pairs Ġc, cd, Ġa, ab, ef, zy all once: bytes order
     * of the left side (space 0x20 first; " " before its extension " a"), then of the right */
    assert_string_equal(m, "#version: 0.2\nĠ a\nĠ c\nĠa b\nĠc d\ne f\nz y\n");
    free(m);
    int32_t ids[64];
    assert_int_equal(encode_check(dir, "cd<|endoftext|>ef", ids, 64), 4);
    assert_int_equal(ids[2], 256);
    tu_rm_tree(dir);
    free(dir);
}

static void test_deterministic_and_both_formats(void **state)
{
    (void)state;
    char text[8192] = "";
    for (int i = 0; i < 60; i++)
        snprintf(text + strlen(text), sizeof text - strlen(text),
                 "the %d quick brown fox, it's 'quoted' \xce\xb1\xce\xb2 \xf0\x9f\x98\x80 %s\n",
                 i * 37 % 11, i % 3 ? "jumps" : "runs\t\tover");
    ccoe_bpe_train_stats st;
    char *d1 = train(text, 300, 2, k_eot, 1, &st), *d2 = train(text, 300, 2, k_eot, 1, &st);
    assert_int_equal(st.vocab_size, 300);
    const char *files[] = {"vocab.json", "merges.txt", "tokenizer.json"};
    for (int f = 0; f < 3; f++) {
        char *a = slurp(d1, files[f]), *b = slurp(d2, files[f]);
        assert_string_equal(a, b);
        free(a);
        free(b);
    }
    int32_t ids_hf[4096], ids_g2[4096];
    size_t n_hf = encode_check(d1, text, ids_hf, 4096);
    char p[1100];
    snprintf(p, sizeof p, "%s/tokenizer.json", d2);
    assert_int_equal(unlink(p), 0); /* d2 now loads from vocab.json + merges.txt */
    size_t n_g2 = encode_check(d2, text, ids_g2, 4096);
    assert_int_equal(n_hf, n_g2);
    assert_memory_equal(ids_hf, ids_g2, n_hf * sizeof *ids_hf);
    assert_true(n_hf < strlen(text) / 3); /* the merges compress the text they came from */
    tu_rm_tree(d1);
    tu_rm_tree(d2);
    free(d1);
    free(d2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_empty_and_one_char),
        cmocka_unit_test(test_runs_and_min_frequency),
        cmocka_unit_test(test_ties_and_specials),
        cmocka_unit_test(test_deterministic_and_both_formats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
