/* test_tokenizer_bpe.c - the byte-level BPE tokenizer on tiny hand-made files the test writes:
 * GPT-2's bytes-to-unicode mapping, merges applied by rank (every occurrence, left to right),
 * pre-token boundaries (GPT-2's pattern, Unicode classes; tokenizer.json's Split pattern),
 * special tokens, the round trip of random bytes (invalid UTF-8 included), unknown ids, and
 * corrupt or mismatched files giving errors that name the file. No network: the comparison with
 * GPT-2's real tokenizer is tests/cli/tokenizer_gpt2.sh.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "tokenizer.h"

/* ---- helpers ---- */

/* GPT-2's code point for byte b (printable Latin-1 stands for itself, the rest 256 + n). */
static int cp_of(int b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return b;
    int n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE))
            n++;
    return 256 + n;
}

/* Appends the mapped form of the bytes s (JSON-escaped if json) to out. */
static void put_mapped(char *out, const char *s, int json)
{
    char *w = out + strlen(out);
    for (; *s; s++) {
        int cp = cp_of((unsigned char)*s);
        if (json && (cp == '"' || cp == '\\'))
            *w++ = '\\';
        if (cp < 0x80) {
            *w++ = (char)cp;
        } else {
            *w++ = (char)(0xC0 | cp >> 6);
            *w++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    *w = '\0';
}

/* The id of byte b in the test vocabularies: a permutation, so the mapping is really used. */
static int32_t byte_id(int b) { return (int32_t)((b * 7 + 3) % 256); }

/* Tokens past the bytes, in merge order (ids 256..): the merge that makes each. */
static const char *const k_merges[][2] = {
    {"b", "c"},  /* 256 "bc": rank 0 */
    {"a", "b"},  /* 257 "ab": rank 1 */
    {"a", "bc"}, /* 258 "abc" */
    {" ", "a"},  /* 259 " a" */
    {"a", "a"},  /* 260 "aa" */
    {"s", " "},  /* 261 "s ": never applies (a pre-token boundary lies between) */
    {"3", "4"},  /* 262 "34": GPT-2's \p{N}+ keeps 12345 together, the Split pattern not */
    {"\xb1", "\xce"}, /* 263: inside "αβ" (CE B1 CE B2), a letter run with UCP */
};
enum { N_MERGES = sizeof k_merges / sizeof k_merges[0], EOT_ID = 256 + N_MERGES };

static char *vocab_json(int with_eot, int skip_byte)
{
    char *v = calloc(1, 1 << 16);
    assert_non_null(v);
    strcat(v, "{");
    for (int b = 0; b < 256; b++) {
        if (b == skip_byte)
            continue;
        char s[2] = {(char)b, 0};
        strcat(v, "\"");
        if (b == 0) /* a NUL cannot be in a C string: byte 0 is U+0100 */
            strcat(v, "\xc4\x80");
        else
            put_mapped(v, s, 1);
        sprintf(v + strlen(v), "\": %d, ", byte_id(b));
    }
    for (int m = 0; m < N_MERGES; m++) {
        char s[16];
        snprintf(s, sizeof s, "%s%s", k_merges[m][0], k_merges[m][1]);
        strcat(v, "\"");
        put_mapped(v, s, 1);
        sprintf(v + strlen(v), "\": %d%s", 256 + m, m + 1 < N_MERGES || with_eot ? ", " : "");
    }
    if (with_eot)
        sprintf(v + strlen(v), "\"<|endoftext|>\": %d", EOT_ID);
    strcat(v, "}");
    return v;
}

static char *merges_txt(void)
{
    char *t = calloc(1, 4096);
    assert_non_null(t);
    strcat(t, "#version: 0.2\n");
    for (int m = 0; m < N_MERGES; m++) {
        put_mapped(t, k_merges[m][0], 0);
        strcat(t, " ");
        put_mapped(t, k_merges[m][1], 0);
        strcat(t, "\n");
    }
    return t;
}

/* A GPT-2 style directory (vocab.json + merges.txt). */
static char *gpt2_dir(void)
{
    char *dir = tu_mkdtemp("bpe");
    char *v = vocab_json(1, -1), *m = merges_txt();
    tu_write_text(dir, "vocab.json", v);
    tu_write_text(dir, "merges.txt", m);
    free(v);
    free(m);
    return dir;
}

/* A tokenizer.json: the same vocabulary (no <|endoftext|>), merges as strings and as pairs,
 * added tokens <|endoftext|> and <|im_start|> (id 300: ids in between are unused), and a
 * Split pattern that takes digits three at a time. */
static char *hf_dir(void)
{
    char *dir = tu_mkdtemp("bpe");
    char *v = vocab_json(0, -1);
    char *j = calloc(1, 1 << 17);
    assert_non_null(j);
    sprintf(j,
            "{\"version\": \"1.0\", \"added_tokens\": ["
            "{\"id\": %d, \"content\": \"<|endoftext|>\", \"special\": true},"
            "{\"id\": 300, \"content\": \"<|im_start|>\", \"special\": true}],"
            "\"normalizer\": null,"
            "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
            "{\"type\": \"Split\", \"pattern\": {\"Regex\": "
            "\"\\\\p{N}{1,3}| ?\\\\p{L}+| ?[^\\\\s\\\\p{L}\\\\p{N}]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
            " \"behavior\": \"Isolated\", \"invert\": false},"
            "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false,"
            " \"use_regex\": false}]},"
            "\"model\": {\"type\": \"BPE\", \"ignore_merges\": false, \"vocab\": %s, \"merges\": [",
            EOT_ID, v);
    for (int m = 0; m < N_MERGES; m++) {
        char a[16] = "", b[16] = "";
        put_mapped(a, k_merges[m][0], 1);
        put_mapped(b, k_merges[m][1], 1);
        if (m % 2)
            sprintf(j + strlen(j), "\"%s %s\"%s", a, b, m + 1 < N_MERGES ? ", " : "");
        else
            sprintf(j + strlen(j), "[\"%s\", \"%s\"]%s", a, b, m + 1 < N_MERGES ? ", " : "");
    }
    strcat(j, "]}}");
    tu_write_text(dir, "tokenizer.json", j);
    free(v);
    free(j);
    return dir;
}

static void open_ok(ccoe_tokenizer *tok, const char *dir)
{
    ccoe_error err = {0};
    ccoe_status st = ccoe_tokenizer_init(tok, dir, &err);
    if (st != CCOE_OK)
        fail_msg("opening %s: %s", dir, err.msg);
}

/* Encodes text (len bytes) and compares with want (n ids). */
static void expect_ids(const ccoe_tokenizer *tok, const char *text, size_t len,
                       const int32_t *want, size_t n)
{
    int32_t got[256];
    size_t k = tok->ops->encode(tok->self, text, len, got, 256);
    int same = k == n;
    for (size_t i = 0; same && i < n; i++)
        same = got[i] == want[i];
    if (!same) {
        char msg[2048] = "";
        for (size_t i = 0; i < k && i < 64; i++)
            sprintf(msg + strlen(msg), " %d", got[i]);
        fail_msg("encoding '%.*s': got%s (%zu ids; want %zu)", (int)len, text, msg, k, n);
    }
}
#define EXPECT(tok, text, ...)                                                                 \
    do {                                                                                       \
        const int32_t w_[] = {__VA_ARGS__};                                                    \
        expect_ids(tok, text, sizeof text - 1, w_, sizeof w_ / sizeof w_[0]);                 \
    } while (0)

static void expect_open_fails(const char *dir, ccoe_status status, const char *a, const char *b)
{
    ccoe_tokenizer tok;
    ccoe_error err = {0};
    ccoe_status st = ccoe_tokenizer_init(&tok, dir, &err);
    if (st != status || !strstr(err.msg, a) || (b && !strstr(err.msg, b)))
        fail_msg("opening %s: status %d, message '%s'; wanted status %d naming '%s'%s%s", dir,
                 (int)st, err.msg, (int)status, a, b ? " and " : "", b ? b : "");
}

/* ---- tests ---- */

static void test_byte_mapping(void **state)
{
    (void)state;
    char *dir = gpt2_dir();
    ccoe_tokenizer tok;
    open_ok(&tok, dir);
    assert_int_equal(tok.ops->vocab_size(tok.self), EOT_ID + 1);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int32_t id = -1;
        assert_int_equal(tok.ops->encode(tok.self, &c, 1, &id, 1), 1);
        assert_int_equal(id, byte_id(b));
        char out[8];
        size_t len = 0;
        ccoe_error err = {0};
        assert_int_equal(ccoe_tokenizer_decode(&tok, &id, 1, out, sizeof out, &len, &err),
                         CCOE_OK);
        assert_int_equal(len, 1);
        assert_int_equal((unsigned char)out[0], b);
    }
    ccoe_tokenizer_free(&tok);
    tu_rm_tree(dir);
    free(dir);
}

static void test_merges_by_rank(void **state)
{
    (void)state;
    char *dir = gpt2_dir();
    ccoe_tokenizer tok;
    open_ok(&tok, dir);
    EXPECT(&tok, "abc", 258);                  /* b+c (rank 0) before a+b (rank 1) */
    EXPECT(&tok, "ab", 257);
    EXPECT(&tok, "abd", 257, byte_id('d'));
    EXPECT(&tok, "cab", byte_id('c'), 257);
    EXPECT(&tok, " abc", byte_id(' '), 258);  /* " a" (rank 3) loses to "bc" then "abc" */
    EXPECT(&tok, "aaaaa", 260, 260, byte_id('a')); /* every occurrence, left to right */
    EXPECT(&tok, "is ok", byte_id('i'), byte_id('s'), byte_id(' '), byte_id('o'), byte_id('k'));
    EXPECT(&tok, "12345", byte_id('1'), byte_id('2'), 262, byte_id('5'));
    /* \p{L} with UCP: Greek letters are one pre-token, so the B1 CE merge applies */
    EXPECT(&tok, "\xce\xb1\xce\xb2", byte_id(0xce), 263, byte_id(0xb2));
    /* ...but a digit between them ends the letter run */
    EXPECT(&tok, "\xce\xb1" "1\xce\xb2", byte_id(0xce), byte_id(0xb1), byte_id('1'),
           byte_id(0xce), byte_id(0xb2));
    /* the cache gives the same ids the second time */
    EXPECT(&tok, "abc abc abc", 258, byte_id(' '), 258, byte_id(' '), 258);
    /* a short buffer: the full count, only cap written */
    int32_t two[2] = {-1, -1};
    assert_int_equal(tok.ops->encode(tok.self, "abd abd", 7, two, 1), 5); /* ab d, space ab d */
    assert_int_equal(two[0], 257);
    assert_int_equal(two[1], -1);
    ccoe_tokenizer_free(&tok);
    tu_rm_tree(dir);
    free(dir);
}

static void test_special_tokens(void **state)
{
    (void)state;
    char *dir = gpt2_dir();
    ccoe_tokenizer tok;
    open_ok(&tok, dir);
    assert_int_equal(tok.bos, EOT_ID);
    assert_int_equal(tok.eos, EOT_ID);
    EXPECT(&tok, "ab<|endoftext|>abc", 257, EOT_ID, 258);
    EXPECT(&tok, "<|endoftext|><|endoftext|>", EOT_ID, EOT_ID);
    /* an incomplete one is text */
    EXPECT(&tok, "<|endoftext", byte_id('<'), byte_id('|'), byte_id('e'), byte_id('n'),
           byte_id('d'), byte_id('o'), byte_id('f'), byte_id('t'), byte_id('e'), byte_id('x'),
           byte_id('t'));
    int32_t ids[] = {257, EOT_ID, 258};
    char out[64];
    size_t len = 0;
    ccoe_error err = {0};
    assert_int_equal(ccoe_tokenizer_decode(&tok, ids, 3, out, sizeof out, &len, &err), CCOE_OK);
    assert_string_equal(out, "ab<|endoftext|>abc");
    ccoe_tokenizer_free(&tok);
    tu_rm_tree(dir);
    free(dir);
}

static void test_tokenizer_json(void **state)
{
    (void)state;
    char *dir = hf_dir();
    ccoe_tokenizer tok;
    open_ok(&tok, dir);
    assert_int_equal(tok.ops->vocab_size(tok.self), 301);
    assert_int_equal(tok.eos, EOT_ID);
    EXPECT(&tok, "abc", 258);
    EXPECT(&tok, "aaaaa", 260, 260, byte_id('a'));
    /* the Split pattern: digits three at a time, so "34" never forms */
    EXPECT(&tok, "12345", byte_id('1'), byte_id('2'), byte_id('3'), byte_id('4'),
           byte_id('5'));
    EXPECT(&tok, "<|im_start|>ab<|endoftext|>", 300, 257, EOT_ID);
    ccoe_error err = {0};
    int32_t hole = 280;
    char out[16];
    size_t len = 0;
    assert_int_equal(ccoe_tokenizer_decode(&tok, &hole, 1, out, sizeof out, &len, &err),
                     CCOE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "unknown token id 280"));
    ccoe_tokenizer_free(&tok);
    tu_rm_tree(dir);
    free(dir);
}

static void test_random_bytes_round_trip(void **state)
{
    (void)state;
    char *dirs[2] = {gpt2_dir(), hf_dir()};
    static const char *const pieces[] = {"abc", "a", "b", " ", "  ", "\n", "\t", "<|endoftext|>",
                                         "<|im_start|>", "12345", "\xce\xb1\xce\xb2", "'s",
                                         "\xff", "\xc3", "\xe2\x82", "\xf0\x9f\x98\x80", "\x00"};
    enum { N = 20000 };
    char *text = malloc(N + 16), *back = malloc(4 * N + 64);
    int32_t *ids = malloc((N + 16) * sizeof *ids);
    assert_non_null(text);
    assert_non_null(back);
    assert_non_null(ids);
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (int d = 0; d < 2; d++) {
        ccoe_tokenizer tok;
        open_ok(&tok, dirs[d]);
        for (int round = 0; round < 6; round++) {
            size_t n = 0;
            while (n < N) { /* raw bytes in even rounds, pieces of tokens and UTF-8 in odd */
                s = s * 6364136223846793005ULL + 1442695040888963407ULL;
                unsigned r = (unsigned)(s >> 33);
                if (round % 2 == 0) {
                    text[n++] = (char)(r & 0xFF);
                } else {
                    const char *p = pieces[r % (sizeof pieces / sizeof pieces[0])];
                    size_t k = p[0] ? strlen(p) : 1;
                    memcpy(text + n, p, k);
                    n += k;
                }
            }
            size_t k = tok.ops->encode(tok.self, text, n, ids, N + 16);
            assert_true(k <= n);
            size_t len = 0;
            ccoe_error err = {0};
            assert_int_equal(ccoe_tokenizer_decode(&tok, ids, k, back, 4 * N + 64, &len, &err),
                             CCOE_OK);
            assert_int_equal(len, n);
            assert_memory_equal(back, text, n);
        }
        ccoe_tokenizer_free(&tok);
        tu_rm_tree(dirs[d]);
        free(dirs[d]);
    }
    free(text);
    free(back);
    free(ids);
}

static void test_unknown_ids(void **state)
{
    (void)state;
    char *dir = gpt2_dir();
    ccoe_tokenizer tok;
    open_ok(&tok, dir);
    char out[64];
    size_t len = 99;
    ccoe_error err = {0};
    int32_t bad[] = {257, EOT_ID + 1};
    assert_int_equal(ccoe_tokenizer_decode(&tok, bad, 2, out, sizeof out, &len, &err),
                     CCOE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "unknown token id 265 at position 1"));
    assert_int_equal(len, 0);
    int32_t neg = -3;
    assert_int_equal(ccoe_tokenizer_decode(&tok, &neg, 1, out, sizeof out, &len, &err),
                     CCOE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "-3"));
    /* a short output buffer: truncated, NUL-terminated, never overrun */
    int32_t ids[] = {258, 258, 258};
    char small[5];
    assert_int_equal(ccoe_tokenizer_decode(&tok, ids, 3, small, sizeof small, &len, &err),
                     CCOE_OK);
    assert_int_equal(len, 4);
    assert_string_equal(small, "abca");
    ccoe_tokenizer_free(&tok);
    tu_rm_tree(dir);
    free(dir);
}

static void test_corrupt_files(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp("bpe");
    char path[1100];
    expect_open_fails(dir, CCOE_ERR_IO, "neither tokenizer.json nor vocab.json", NULL);
    snprintf(path, sizeof path, "%s/nothing", dir);
    expect_open_fails(path, CCOE_ERR_CONFIG, "unknown tokenizer", "allowed values are byte");

    tu_write_text(dir, "vocab.json", "{\"a\": 0, \"b\": ");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "vocab.json is not valid JSON", NULL);

    char *v = vocab_json(1, -1);
    tu_write_text(dir, "vocab.json", v);
    free(v);
    expect_open_fails(dir, CCOE_ERR_IO, "merges.txt", "cannot open");

    char *m = merges_txt();
    strcat(m, "a zz\n");
    tu_write_text(dir, "merges.txt", m);
    free(m);
    expect_open_fails(dir, CCOE_ERR_FORMAT, "merges.txt line 10", "unknown token 'zz'");

    tu_write_text(dir, "merges.txt", "#version: 0.2\nc d\n");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "merges.txt line 2",
                      "makes a token the vocabulary does not have");
    tu_write_text(dir, "merges.txt", "#version: 0.2\nabc\n");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "merges.txt line 2", "is not a merge");

    v = vocab_json(1, 'q');
    tu_write_text(dir, "vocab.json", v);
    free(v);
    tu_write_text(dir, "merges.txt", "#version: 0.2\n");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "vocab.json", "no token for byte 0x71");

    tu_write_text(dir, "vocab.json", "{\"a\": 1, \"\xe4\xb8\xad\": 2}");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "vocab.json", "outside GPT-2's byte-level alphabet");
    tu_write_text(dir, "vocab.json", "{\"a\": 1, \"b\": 1}");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "vocab.json", "id 1 is given to two tokens");
    tu_write_text(dir, "vocab.json", "[1, 2]");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "vocab.json", "not a JSON object");

    tu_write_text(dir, "tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "tokenizer.json", "not BPE");
    tu_write_text(dir, "tokenizer.json",
               "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []},"
               " \"pre_tokenizer\": {\"type\": \"Metaspace\"}}");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "tokenizer.json", "Metaspace");
    tu_write_text(dir, "tokenizer.json",
               "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []},"
               " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}}}");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "tokenizer.json", "ByteLevel");
    tu_write_text(dir, "tokenizer.json", "{\"model\": ");
    expect_open_fails(dir, CCOE_ERR_FORMAT, "tokenizer.json is not valid JSON", NULL);
    tu_rm_tree(dir);
    free(dir);

    /* a bad Split regex names PCRE2's complaint */
    dir = hf_dir();
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *j = calloc(1, 1 << 17);
    assert_non_null(j);
    assert_true(fread(j, 1, (1 << 17) - 1, f) > 0);
    fclose(f);
    char *at = strstr(j, "\\\\p{N}{1,3}");
    assert_non_null(at);
    memcpy(at, "((((((((((", 10);
    tu_write_text(dir, "tokenizer.json", j);
    free(j);
    expect_open_fails(dir, CCOE_ERR_FORMAT, "tokenizer.json", "does not compile (PCRE2");
    tu_rm_tree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_mapping),
        cmocka_unit_test(test_merges_by_rank),
        cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_tokenizer_json),
        cmocka_unit_test(test_random_bytes_round_trip),
        cmocka_unit_test(test_unknown_ids),
        cmocka_unit_test(test_corrupt_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
