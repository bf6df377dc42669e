/* test_config.c - the configuration table: defaults, INI files, --set overrides, range checks of
 * every key, error messages, cross-field validation and the INI round trip / hash. */
#include "testutil.h"

#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "gate.h"
#include "session.h"

/* Directory of the checked-in configs: $CCOE_SOURCE_DIR/configs, else next to this file. */
static void configs_dir(char *buf, size_t cap)
{
    const char *src = getenv("CCOE_SOURCE_DIR");
    if (src && *src) {
        snprintf(buf, cap, "%s/configs", src);
        return;
    }
    char here[PATH_MAX - 64];
    snprintf(here, sizeof here, "%s", __FILE__);
    char *slash = strrchr(here, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(here, sizeof here, ".");
    snprintf(buf, cap, "%s/../configs", here);
}


static void expect_set_fails(const char *assignment, const char *must_contain)
{
    ccoe_config c, before;
    ccoe_config_defaults(&c);
    before = c;
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_status st = ccoe_config_set(&c, assignment, &err);
    if (st == CCOE_OK)
        fprintf(stderr, "--set %s was accepted\n", assignment);
    assert_int_equal(st, CCOE_ERR_CONFIG);
    assert_int_equal(err.status, CCOE_ERR_CONFIG);
    TU_ASSERT_MSG_HAS(err, must_contain);
    assert_memory_equal(&c, &before, sizeof c); /* nothing applied */
}

static void expect_ini_fails(const char *text, const char *must_contain)
{
    ccoe_config c, before;
    ccoe_config_defaults(&c);
    before = c;
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_status st = ccoe_config_load_string(&c, text, "test text", &err);
    if (st == CCOE_OK)
        fprintf(stderr, "INI text was accepted:\n%s\n", text);
    assert_int_equal(st, CCOE_ERR_CONFIG);
    TU_ASSERT_MSG_HAS(err, must_contain);
    assert_memory_equal(&c, &before, sizeof c); /* a failed load changes nothing */
}

static void test_defaults_valid(void **state)
{
    (void)state;
    ccoe_config c;
    ccoe_config_defaults(&c);
    assert_int_equal(c.model.n_layer, 4);
    assert_int_equal(c.model.n_embd, 256);
    assert_int_equal(c.model.n_head, 4);
    assert_int_equal(c.model.seq_len, 128);
    assert_int_equal(c.model.norm, CCOE_NORM_LAYERNORM);
    assert_int_equal(c.model.tied_head, 1);
    assert_int_equal(c.train.batch_size, 8);
    assert_true(c.train.lr == 1e-3);
    assert_true(c.train.eps == 1e-8);
    assert_true(c.train.seed == 1337);
    assert_string_equal(c.train.out_dir, "runs/default");
    assert_string_equal(c.data.manifest, "builtin");
    assert_string_equal(c.data.tokenizer, "byte");
    assert_string_equal(c.run.gemm, "auto");
    ccoe_error err;
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    assert_int_equal(c.model.ffn_hidden, 4 * 256);
    assert_int_equal(c.model.vocab_size, 0); /* left for the caller to resolve */

    /* every default in the table parses back to what defaults() stored */
    size_t n;
    const ccoe_config_key *keys = ccoe_config_keys(&n);
    assert_true(n >= 30);
    for (size_t i = 0; i < n; i++) {
        char assignment[400];
        snprintf(assignment, sizeof assignment, "%s.%s=%s", keys[i].section, keys[i].key,
                 keys[i].def);
        ccoe_config d;
        ccoe_config_defaults(&d);
        ccoe_config before = d;
        assert_int_equal(ccoe_config_set(&d, assignment, &err), CCOE_OK);
        assert_memory_equal(&d, &before, sizeof d);
    }
}

static void test_config_files_load(void **state)
{
    (void)state;
    char dir[PATH_MAX];
    configs_dir(dir, sizeof dir);
    DIR *d = opendir(dir);
    if (!d)
        fprintf(stderr, "cannot open %s\n", dir);
    assert_non_null(d);
    int count = 0, saw_default = 0, saw_tiny = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".ini") != 0)
            continue;
        if (strncmp(e->d_name, "study-", 6) == 0)
            continue; /* study files, not run configs: tests/cli/study.sh */
        char path[PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ccoe_config c;
        ccoe_config_defaults(&c);
        ccoe_error err;
        ccoe_error_clear(&err);
        ccoe_status st = ccoe_config_load_file(&c, path, &err);
        if (st == CCOE_OK)
            st = ccoe_session_validate(&c, &err);
        if (st != CCOE_OK)
            fprintf(stderr, "%s: %s\n", path, err.msg);
        assert_int_equal(st, CCOE_OK);
        if (strcmp(e->d_name, "default.ini") == 0) {
            saw_default = 1;
            assert_int_equal(c.model.n_layer, 4);
            assert_int_equal(c.model.n_embd, 256);
            assert_int_equal(c.model.n_head, 4);
            assert_int_equal(c.model.seq_len, 128);
            assert_int_equal(c.train.batch_size, 8);
            assert_int_equal(c.model.ffn, CCOE_FFN_GELU);
            assert_int_equal(c.model.block, CCOE_BLOCK_PRE_LN);
            assert_int_equal(c.model.tied_head, 1);
            assert_string_equal(c.data.manifest, "builtin");
        }
        if (strcmp(e->d_name, "tiny-test.ini") == 0) {
            saw_tiny = 1;
            assert_int_equal(c.model.n_layer, 2);
            assert_int_equal(c.model.n_embd, 32);
            assert_int_equal(c.model.n_head, 2);
            assert_int_equal(c.model.seq_len, 32);
            assert_int_equal(c.train.batch_size, 4);
            assert_int_equal(c.train.steps, 30);
        }
        count++;
    }
    closedir(d);
    assert_true(count >= 2);
    assert_true(saw_default);
    assert_true(saw_tiny);
}

static void check_round_trip(const ccoe_config *c)
{
    char *ini = ccoe_config_to_ini(c);
    assert_non_null(ini);
    ccoe_config back;
    ccoe_config_defaults(&back);
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_status st = ccoe_config_load_string(&back, ini, "round trip", &err);
    if (st != CCOE_OK)
        fprintf(stderr, "%s\n%s\n", err.msg, ini);
    assert_int_equal(st, CCOE_OK);
    assert_memory_equal(&back, c, sizeof back);
    assert_true(ccoe_config_hash(&back) == ccoe_config_hash(c));
    /* the text of the reloaded config is identical, and every key appears in it */
    char *ini2 = ccoe_config_to_ini(&back);
    assert_non_null(ini2);
    assert_string_equal(ini, ini2);
    size_t n;
    const ccoe_config_key *keys = ccoe_config_keys(&n);
    ccoe_config def;
    ccoe_config_defaults(&def);
    for (size_t i = 0; i < n; i++) {
        char needle[128];
        snprintf(needle, sizeof needle, "\n%s = ", keys[i].key);
        const unsigned char *f = (const unsigned char *)c + keys[i].offset;
        const unsigned char *d = (const unsigned char *)&def + keys[i].offset;
        if (keys[i].omit_default && memcmp(f, d, keys[i].size) == 0) {
            /* left out at its default, which must be the zero value (the load below) */
            assert_null(strstr(ini, needle));
            for (size_t j = 0; j < keys[i].size; j++)
                assert_int_equal(d[j], 0);
            continue;
        }
        assert_non_null(strstr(ini, needle));
    }
    /* loading over a zeroed struct gives the same (every key is written, or zero) */
    ccoe_config z;
    memset(&z, 0, sizeof z);
    assert_int_equal(ccoe_config_load_string(&z, ini, "round trip", &err), CCOE_OK);
    assert_memory_equal(&z, c, sizeof z);
    free(ini);
    free(ini2);
}

static void test_round_trip_and_hash(void **state)
{
    (void)state;
    ccoe_config c;
    ccoe_config_defaults(&c);
    ccoe_error err;
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    check_round_trip(&c);
    uint64_t h0 = ccoe_config_hash(&c);

    const char *sets[] = {
        "train.lr=0.00030000000000000003", "train.beta2 = 0.999", "model.init_std=1e-300",
        "train.seed=18446744073709551615", "model.norm=rmsnorm", "model.ffn=swiglu",
        "model.block=post_ln", "model.tied_head=no", "model.bias=0",
        "train.out_dir=runs/some dir/x=y:z#w", "data.val_fraction=0.30000000000000004",
        "train.min_lr_frac=0", "train.grad_clip=0", "run.gemm=blis", "model.vocab_size=320",
    };
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        ccoe_error_clear(&err);
        ccoe_status st = ccoe_config_set(&c, sets[i], &err);
        if (st != CCOE_OK)
            fprintf(stderr, "%s: %s\n", sets[i], err.msg);
        assert_int_equal(st, CCOE_OK);
    }
    c.train.weight_decay = 0.1 + 0.2; /* needs all 17 digits */
    c.train.eps = nextafter(1e-8, 1.0);
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    check_round_trip(&c);
    assert_true(ccoe_config_hash(&c) != h0);

    /* the hash sees every single change */
    ccoe_config d = c;
    d.train.eps = nextafter(d.train.eps, 1.0);
    assert_true(ccoe_config_hash(&d) != ccoe_config_hash(&c));
    d = c;
    d.train.seed ^= 1;
    assert_true(ccoe_config_hash(&d) != ccoe_config_hash(&c));

    /* a string at its maximum length round-trips */
    size_t n;
    const ccoe_config_key *keys = ccoe_config_keys(&n);
    for (size_t i = 0; i < n; i++) {
        if (keys[i].type != CCOE_CFG_STRING || keys[i].names)
            continue;
        char assignment[1024];
        int w = snprintf(assignment, sizeof assignment, "%s.%s=", keys[i].section, keys[i].key);
        memset(assignment + w, 'a', keys[i].max_len);
        assignment[(size_t)w + keys[i].max_len] = '\0';
        ccoe_config s;
        ccoe_config_defaults(&s);
        ccoe_error_clear(&err);
        ccoe_status st = ccoe_config_set(&s, assignment, &err);
        if (st != CCOE_OK)
            fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(st, CCOE_OK);
        check_round_trip(&s);
    }
}

static void test_set_overrides(void **state)
{
    (void)state;
    ccoe_config c;
    ccoe_config_defaults(&c);
    ccoe_error err;
    assert_int_equal(ccoe_config_set(&c, "model.n_layer=12", &err), CCOE_OK);
    assert_int_equal(c.model.n_layer, 12);
    assert_int_equal(ccoe_config_set(&c, "  model.n_embd =  512 ", &err), CCOE_OK);
    assert_int_equal(c.model.n_embd, 512);
    assert_int_equal(ccoe_config_set(&c, "model.norm=rmsnorm", &err), CCOE_OK);
    assert_int_equal(c.model.norm, CCOE_NORM_RMSNORM);
    assert_int_equal(ccoe_config_set(&c, "model.ffn=swiglu", &err), CCOE_OK);
    assert_int_equal(c.model.ffn, CCOE_FFN_SWIGLU);
    assert_int_equal(ccoe_config_set(&c, "model.block=post_ln", &err), CCOE_OK);
    assert_int_equal(c.model.block, CCOE_BLOCK_POST_LN);
    const char *truthy[] = {"true", "1", "yes", "TRUE", "Yes"};
    const char *falsy[] = {"false", "0", "no", "False", "NO"};
    for (int i = 0; i < 5; i++) {
        char a[64];
        snprintf(a, sizeof a, "model.bias=%s", falsy[i]);
        assert_int_equal(ccoe_config_set(&c, a, &err), CCOE_OK);
        assert_int_equal(c.model.bias, 0);
        snprintf(a, sizeof a, "model.bias=%s", truthy[i]);
        assert_int_equal(ccoe_config_set(&c, a, &err), CCOE_OK);
        assert_int_equal(c.model.bias, 1);
    }
    assert_int_equal(ccoe_config_set(&c, "train.out_dir=/tmp/a b=c", &err), CCOE_OK);
    assert_string_equal(c.train.out_dir, "/tmp/a b=c");
    assert_int_equal(ccoe_config_set(&c, "train.out_dir=x", &err), CCOE_OK);
    assert_string_equal(c.train.out_dir, "x");
    /* the rest of the old longer string is cleared (structs stay comparable) */
    for (size_t i = 2; i < sizeof c.train.out_dir; i++)
        assert_int_equal(c.train.out_dir[i], 0);
    assert_int_equal(ccoe_config_set(&c, "data.manifest=data/manifest.txt", &err), CCOE_OK);
    assert_string_equal(c.data.manifest, "data/manifest.txt");
    assert_int_equal(ccoe_config_set(&c, "run.gemm=xsmm", &err), CCOE_OK);
    assert_string_equal(c.run.gemm, "xsmm");
    assert_int_equal(ccoe_config_set(&c, "train.lr=3e-4", &err), CCOE_OK);
    assert_true(c.train.lr == 3e-4);
    assert_int_equal(ccoe_config_set(&c, "train.steps=1000000000", &err), CCOE_OK);
    assert_true(c.train.steps == 1000000000L);
    assert_int_equal(ccoe_config_set(&c, "train.seed=0", &err), CCOE_OK);
    assert_true(c.train.seed == 0);

    /* an INI file then --set: the override wins */
    ccoe_config_defaults(&c);
    assert_int_equal(ccoe_config_load_string(&c, "[model]\nn_layer = 3\n", "t", &err), CCOE_OK);
    assert_int_equal(c.model.n_layer, 3);
    assert_int_equal(ccoe_config_set(&c, "model.n_layer=5", &err), CCOE_OK);
    assert_int_equal(c.model.n_layer, 5);
}

static void test_ini_dialect(void **state)
{
    (void)state;
    ccoe_config c;
    ccoe_config_defaults(&c);
    ccoe_error err;
    ccoe_error_clear(&err);
    const char *text = "\xef\xbb\xbf; comment\n"
                       "# another comment\n"
                       "\n"
                       "[model]\r\n"
                       "  n_layer = 6   ; inline comment\n"
                       "\tn_embd=128\n"
                       "norm = rmsnorm\n"
                       "[train]\n"
                       "lr = 0.5\n"
                       "out_dir = runs/a;b\n"; /* ';' not after a blank is not a comment ... */
    /* ... but the config rejects ';' in strings, because a blank before it would start one */
    ccoe_status st = ccoe_config_load_string(&c, text, "dialect", &err);
    assert_int_equal(st, CCOE_ERR_CONFIG);
    TU_ASSERT_MSG_HAS(err, "train.out_dir");
    TU_ASSERT_MSG_HAS(err, "';'");
    TU_ASSERT_MSG_HAS(err, "dialect line 10");

    const char *ok = "\xef\xbb\xbf; comment\n"
                     "# another comment\n"
                     "\n"
                     "[model]\r\n"
                     "  n_layer = 6   ; inline comment\n"
                     "\tn_embd=128\n"
                     "norm = rmsnorm\n"
                     "[train]\n"
                     "lr = 0.5";
    ccoe_error_clear(&err);
    st = ccoe_config_load_string(&c, ok, "dialect", &err);
    if (st != CCOE_OK)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, CCOE_OK);
    assert_int_equal(c.model.n_layer, 6);
    assert_int_equal(c.model.n_embd, 128);
    assert_int_equal(c.model.norm, CCOE_NORM_RMSNORM);
    assert_true(c.train.lr == 0.5);

    /* empty text changes nothing */
    ccoe_config d = c;
    assert_int_equal(ccoe_config_load_string(&d, "", "empty", &err), CCOE_OK);
    assert_memory_equal(&d, &c, sizeof d);
}

/* Every table entry: a value just below the minimum and just above the maximum is rejected
 * with a message naming the key, both through --set and through INI text. */
static void test_every_key_out_of_range(void **state)
{
    (void)state;
    size_t n;
    const ccoe_config_key *keys = ccoe_config_keys(&n);
    for (size_t i = 0; i < n; i++) {
        const ccoe_config_key *k = &keys[i];
        char name[128];
        snprintf(name, sizeof name, "%s.%s", k->section, k->key);
        char bad[2][400];
        int nbad = 2;
        switch (k->type) {
        case CCOE_CFG_INT:
        case CCOE_CFG_LONG:
            snprintf(bad[0], sizeof bad[0], "%.0f", k->min - 1);
            snprintf(bad[1], sizeof bad[1], "%.0f", k->max + 1);
            break;
        case CCOE_CFG_DOUBLE: {
            double lo = k->min_open ? k->min : k->min - 1e-6 * (1 + fabs(k->min));
            double hi = k->max_open ? k->max : k->max + 1e-6 * (1 + fabs(k->max));
            snprintf(bad[0], sizeof bad[0], "%.17g", lo);
            snprintf(bad[1], sizeof bad[1], "%.17g", hi);
            break;
        }
        case CCOE_CFG_U64:
            snprintf(bad[0], sizeof bad[0], "-1");
            snprintf(bad[1], sizeof bad[1], "18446744073709551616");
            break;
        case CCOE_CFG_BOOL:
            snprintf(bad[0], sizeof bad[0], "maybe");
            snprintf(bad[1], sizeof bad[1], "2");
            break;
        case CCOE_CFG_ENUM:
            snprintf(bad[0], sizeof bad[0], "%s_x", k->names[0]);
            snprintf(bad[1], sizeof bad[1], "1");
            break;
        case CCOE_CFG_STRING:
            memset(bad[0], 'a', k->max_len + 1);
            bad[0][k->max_len + 1] = '\0';
            if (k->names)
                snprintf(bad[1], sizeof bad[1], "%s_x", k->names[0]);
            else
                nbad = 1;
            break;
        }
        for (int j = 0; j < nbad; j++) {
            char assignment[1024], text[1100];
            snprintf(assignment, sizeof assignment, "%s=%s", name, bad[j]);
            expect_set_fails(assignment, name);
            snprintf(text, sizeof text, "[%s]\n%s = %s\n", k->section, k->key, bad[j]);
            if (strlen(text) < 190) /* longer lines fail for their length, tested elsewhere */
                expect_ini_fails(text, name);
        }
        /* the bounds themselves are accepted where they are closed */
        if (k->type == CCOE_CFG_INT || k->type == CCOE_CFG_LONG ||
            k->type == CCOE_CFG_DOUBLE) {
            ccoe_config c;
            ccoe_error err;
            char a[200];
            ccoe_config_defaults(&c);
            if (!k->min_open) {
                snprintf(a, sizeof a, "%s=%.17g", name, k->min);
                if (k->type != CCOE_CFG_DOUBLE)
                    snprintf(a, sizeof a, "%s=%.0f", name, k->min);
                assert_int_equal(ccoe_config_set(&c, a, &err), CCOE_OK);
            }
            if (!k->max_open) {
                snprintf(a, sizeof a, "%s=%.17g", name, k->max);
                if (k->type != CCOE_CFG_DOUBLE)
                    snprintf(a, sizeof a, "%s=%.0f", name, k->max);
                assert_int_equal(ccoe_config_set(&c, a, &err), CCOE_OK);
            }
        }
    }
    /* the range is in the message */
    expect_set_fails("model.n_layer=0", "model.n_layer = 0 is out of range: allowed 1..256");
    expect_set_fails("train.lr=0", "allowed (0, 10]");
    expect_set_fails("model.norm=batchnorm", "model.norm = 'batchnorm': allowed layernorm, rmsnorm");
    expect_set_fails("model.bias=maybe", "allowed true, false, 1, 0, yes, no");
    expect_set_fails("run.gemm=cuda", "allowed auto, ref, blis, xsmm");
}

static void test_unknown_keys(void **state)
{
    (void)state;
    expect_ini_fails("[model]\nn_layer = 2\nn_layers = 4\n", "unknown key 'model.n_layers'");
    expect_ini_fails("[model]\nn_layer = 2\nn_layers = 4\n", "did you mean 'model.n_layer'");
    expect_ini_fails("[model]\nn_layer = 2\nn_layers = 4\n", "test text line 3");
    expect_ini_fails("[model]\nn_layer = 2\nn_layers = 4\n", "ccoe help-config");
    expect_ini_fails("[modle]\nn_layer = 4\n", "modle");
    expect_ini_fails("[modle]\nn_layer = 4\n", "did you mean 'model.n_layer'");
    expect_ini_fails("[model]\nlr = 0.1\n", "did you mean 'train.lr'");
    expect_ini_fails("n_layer = 4\n", "n_layer");
    expect_ini_fails("[model]\nwidth = 4\n", "model.width");
    expect_ini_fails("[Model]\nN_Layer = 4\n", "did you mean 'model.n_layer'");
    expect_set_fails("model.n_layers=4", "unknown key 'model.n_layers'");
    expect_set_fails("model.n_layers=4", "did you mean 'model.n_layer'");
    expect_set_fails("foo.bar=1", "foo.bar");
    expect_set_fails("n_layer=4", "model.n_layer");
    expect_set_fails("model.n_layer", "no '='");
    expect_set_fails("", "no '='");
}

static void test_bad_numbers(void **state)
{
    (void)state;
    expect_set_fails("train.lr=abc", "train.lr = 'abc' is not a number");
    expect_set_fails("model.n_layer=12x", "'12x'");
    expect_set_fails("model.n_layer=12x", "model.n_layer");
    expect_set_fails("model.n_layer=1.5", "model.n_layer");
    expect_set_fails("model.n_layer=", "model.n_layer is empty");
    expect_set_fails("model.n_layer=0x10", "model.n_layer");
    expect_set_fails("model.n_layer=99999999999999999999999", "out of range");
    expect_set_fails("model.n_layer=-99999999999999999999999", "out of range");
    expect_set_fails("model.n_layer=4294967300", "out of range"); /* wraps in an int */
    expect_set_fails("train.steps=1e3", "train.steps");
    expect_set_fails("train.lr=", "train.lr is empty");
    expect_set_fails("train.lr=0.1.2", "trailing");
    expect_set_fails("train.lr=nan", "not a finite number");
    expect_set_fails("train.lr=inf", "not a finite number");
    expect_set_fails("train.lr=-INFINITY", "not a finite number");
    expect_set_fails("train.lr=1e999", "not a finite number");
    expect_set_fails("train.seed=-5", "train.seed");
    expect_set_fails("train.seed=+5", "train.seed");
    expect_set_fails("train.seed=abc", "is not a number");
    expect_set_fails("train.seed=99999999999999999999", "out of range");
    expect_set_fails("model.norm=LayerNorm", "allowed layernorm, rmsnorm");
    expect_ini_fails("[train]\nlr = 1e-3x\n", "train.lr");
}

static void test_syntax_and_strings(void **state)
{
    (void)state;
    expect_ini_fails("[model\nn_layer = 4\n", "line 1");
    expect_ini_fails("[model]\nn_layer 4\n", "syntax error (test text line 2)");
    /* the earlier of a syntax error and a bad value is reported */
    expect_ini_fails("[model]\nbogus line\nn_layer = 0\n", "line 2");
    expect_ini_fails("[model]\nn_layer = 2\nn_layer = 3\n", "set twice");
    char long_line[400];
    snprintf(long_line, sizeof long_line, "[train]\nout_dir = %0250d\n", 0);
    expect_ini_fails(long_line, "too long");
    expect_set_fails("train.out_dir=a;b", "';'");
    expect_set_fails("train.out_dir=a\tb", "control character");
    char long_tok[256] = "data.tokenizer=";
    memset(long_tok + strlen(long_tok), 'a', 200); /* a directory path longer than 180 */
    expect_set_fails(long_tok, "too long");
}

static void test_missing_file(void **state)
{
    (void)state;
    ccoe_config c;
    ccoe_config_defaults(&c);
    ccoe_error err;
    ccoe_error_clear(&err);
    const char *path = "/nonexistent-dir/ccoe/none.ini";
    assert_int_equal(ccoe_config_load_file(&c, path, &err), CCOE_ERR_IO);
    TU_ASSERT_MSG_HAS(err, path);

    /* errors from a file name the file and line */
    char tmp[] = "/tmp/ccoe-test-config-XXXXXX";
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fputs("[model]\n\nn_layers = 3\n", f);
    fclose(f);
    assert_int_equal(ccoe_config_load_file(&c, tmp, &err), CCOE_ERR_CONFIG);
    TU_ASSERT_MSG_HAS(err, tmp);
    TU_ASSERT_MSG_HAS(err, "line 3");
    TU_ASSERT_MSG_HAS(err, "model.n_layers");
    remove(tmp);
}

static void expect_invalid(ccoe_config *c, const char *k1, const char *k2)
{
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_session_validate(c, &err), CCOE_ERR_CONFIG);
    TU_ASSERT_MSG_HAS(err, k1);
    if (k2)
        TU_ASSERT_MSG_HAS(err, k2);
}

static void test_cross_field(void **state)
{
    (void)state;
    ccoe_config c;
    ccoe_error err;

    ccoe_config_defaults(&c);
    c.model.n_embd = 100;
    c.model.n_head = 3;
    expect_invalid(&c, "model.n_embd = 100", "model.n_head = 3");

    ccoe_config_defaults(&c);
    assert_int_equal(ccoe_config_set(&c, "model.n_head=5", &err), CCOE_OK); /* 256 % 5 */
    expect_invalid(&c, "model.n_embd", "model.n_head");

    ccoe_config_defaults(&c);
    c.train.out_dir[0] = '\0';
    expect_invalid(&c, "train.out_dir", NULL);

    ccoe_config_defaults(&c);
    c.train.batch_size = 65536;
    c.model.seq_len = 65536;
    expect_invalid(&c, "train.batch_size", "model.seq_len");

    /* values set in code are range-checked too */
    ccoe_config_defaults(&c);
    c.model.n_layer = 0;
    expect_invalid(&c, "model.n_layer", "1..256");
    ccoe_config_defaults(&c);
    c.train.lr = NAN;
    expect_invalid(&c, "train.lr", NULL);
    ccoe_config_defaults(&c);
    c.model.norm = (ccoe_norm_kind)7;
    expect_invalid(&c, "model.norm", NULL);

    /* ffn_hidden resolution */
    ccoe_config_defaults(&c);
    assert_int_equal(ccoe_config_set(&c, "model.ffn=swiglu", &err), CCOE_OK);
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    assert_int_equal(c.model.ffn_hidden, 704); /* round(8*256/3) = 683 -> 704 */
    ccoe_config_defaults(&c);
    assert_int_equal(ccoe_config_set(&c, "model.ffn=swiglu", &err), CCOE_OK);
    assert_int_equal(ccoe_config_set(&c, "model.n_embd=32", &err), CCOE_OK);
    assert_int_equal(ccoe_config_set(&c, "model.n_head=2", &err), CCOE_OK);
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    assert_int_equal(c.model.ffn_hidden, 128); /* round(85.3) = 85 -> 128 */
    ccoe_config_defaults(&c);
    assert_int_equal(ccoe_config_set(&c, "model.ffn_hidden=100", &err), CCOE_OK);
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    assert_int_equal(c.model.ffn_hidden, 100); /* explicit values are kept */

    /* allowed: warmup beyond steps, eval_every beyond steps, zero steps */
    ccoe_config_defaults(&c);
    c.train.steps = 10;
    c.train.warmup = 100;
    c.train.eval_every = 1000;
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    c.train.steps = 0;
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
}

/* [mpi]: placement names, the map's syntax and length (its ranks are checked at run start,
 * tests/test_placement.c, tests/cli/mpi_placement.sh) */
static void test_mpi_placement_keys(void **state)
{
    (void)state;
    expect_set_fails("mpi.placement=blocks", "allowed contiguous, round_robin, balanced, list");
    expect_ini_fails("[mpi]\nplacement = roundrobin\n", "mpi.placement");
    ccoe_config c;
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_config_defaults(&c);
    assert_int_equal(c.mpi.placement, CCOE_PLACE_CONTIGUOUS);
    assert_string_equal(c.mpi.map, "");
    /* MoE: one entry per expert index (moe.n_experts) */
    assert_int_equal(ccoe_config_set(&c, "moe.gate=topk", &err), CCOE_OK);
    assert_int_equal(ccoe_config_set(&c, "moe.n_experts=4", &err), CCOE_OK);
    assert_int_equal(ccoe_config_set(&c, "mpi.placement=list", &err), CCOE_OK);
    expect_invalid(&c, "mpi.placement = list needs mpi.map", "4 experts");
    assert_int_equal(ccoe_config_set(&c, "mpi.map=1,0,1", &err), CCOE_OK);
    expect_invalid(&c, "mpi.map = '1,0,1' has 3 entries but the model has 4 experts", NULL);
    assert_int_equal(ccoe_config_set(&c, "mpi.map=1,0,a,0", &err), CCOE_OK);
    expect_invalid(&c, "mpi.map = '1,0,a,0': entry 2 ('a') is not a rank number", NULL);
    assert_int_equal(ccoe_config_set(&c, "mpi.map=1,0,7,0", &err), CCOE_OK);
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK); /* rank 7: known at run start */
    /* CCoE: one entry per expert of ccoe.experts */
    ccoe_config_defaults(&c);
    c.ccoe.form = CCOE_FORM_TAIL;
    snprintf(c.ccoe.experts, sizeof c.ccoe.experts, "a:1 b:1");
    c.mpi.placement = CCOE_PLACE_LIST;
    snprintf(c.mpi.map, sizeof c.mpi.map, "1,0,1");
    expect_invalid(&c, "has 3 entries but the model has 2 experts", NULL);
    snprintf(c.mpi.map, sizeof c.mpi.map, "1,0");
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    /* round trip through the resolved INI */
    char *ini = ccoe_config_to_ini(&c);
    assert_non_null(ini);
    assert_non_null(strstr(ini, "[mpi]"));
    assert_non_null(strstr(ini, "placement = list"));
    ccoe_config back;
    ccoe_config_defaults(&back);
    assert_int_equal(ccoe_config_load_string(&back, ini, "resolved", &err), CCOE_OK);
    assert_int_equal(back.mpi.placement, CCOE_PLACE_LIST);
    assert_string_equal(back.mpi.map, "1,0");
    free(ini);
    /* other policies ignore a map (but not a malformed one) */
    c.mpi.placement = CCOE_PLACE_ROUND_ROBIN;
    snprintf(c.mpi.map, sizeof c.mpi.map, "1,0,1,1");
    assert_int_equal(ccoe_session_validate(&c, &err), CCOE_OK);
    snprintf(c.mpi.map, sizeof c.mpi.map, "1,,0");
    expect_invalid(&c, "mpi.map", "entry 1");
}

static void test_help_lists_every_key(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    ccoe_config_print_help(f);
    fclose(f);
    size_t n;
    const ccoe_config_key *keys = ccoe_config_keys(&n);
    for (size_t i = 0; i < n; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s.%s ", keys[i].section, keys[i].key);
        assert_non_null(strstr(buf, name));
    }
    assert_non_null(strstr(buf, "layernorm, rmsnorm"));
    assert_non_null(strstr(buf, "1..256"));
    free(buf);
}

/* moe.gate takes "none" and exactly the registry's gates (variants/gate_registry.c): a new gate
 * is a config value without an edit of config.c; help-config lists it. */
static void test_gate_names_from_registry(void **state)
{
    (void)state;
    size_t n;
    const ccoe_config_key *keys = ccoe_config_keys(&n);
    const ccoe_config_key *gate = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(keys[i].section, "moe") == 0 && strcmp(keys[i].key, "gate") == 0)
            gate = &keys[i];
    assert_non_null(gate);
    assert_non_null(gate->names);
    assert_string_equal(gate->names[0], "none");
    int count = 0;
    while (gate->names[1 + count])
        count++;
    assert_int_equal(count, ccoe_gate_count());
    for (int g = 0; g < ccoe_gate_count(); g++) {
        const char *name = ccoe_gate_at(g)->name;
        assert_string_equal(gate->names[1 + g], name);
        ccoe_config c;
        ccoe_config_defaults(&c);
        char set[64];
        snprintf(set, sizeof set, "moe.gate=%s", name);
        ccoe_error err;
        assert_int_equal(ccoe_config_set(&c, set, &err), CCOE_OK);
        assert_string_equal(c.moe.gate, name);
    }
    ccoe_config c;
    ccoe_config_defaults(&c);
    ccoe_error err;
    assert_int_equal(ccoe_config_set(&c, "moe.gate=nosuchgate", &err), CCOE_ERR_CONFIG);
    for (int g = 0; g < ccoe_gate_count(); g++)
        TU_ASSERT_MSG_HAS(err, ccoe_gate_at(g)->name);
}

/* A key marked omit_default (moe.train_router_only) is left out of the resolved text while it
 * holds its default, so configs from before the key keep their text and hash; set, it is
 * written and read back. */
static void test_omit_default_key(void **state)
{
    (void)state;
    ccoe_config c, back;
    ccoe_config_defaults(&c);
    char *ini = ccoe_config_to_ini(&c);
    assert_non_null(ini);
    assert_null(strstr(ini, "train_router_only"));
    const uint64_t h0 = ccoe_config_hash(&c);
    free(ini);
    ccoe_error err = {0};
    assert_int_equal(ccoe_config_set(&c, "moe.train_router_only=true", &err), CCOE_OK);
    assert_true(ccoe_config_hash(&c) != h0);
    ini = ccoe_config_to_ini(&c);
    assert_non_null(strstr(ini, "train_router_only = true"));
    ccoe_config_defaults(&back);
    assert_int_equal(ccoe_config_load_string(&back, ini, "test", &err), CCOE_OK);
    assert_int_equal(back.moe.train_router_only, 1);
    assert_true(ccoe_config_hash(&back) == ccoe_config_hash(&c));
    free(ini);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gate_names_from_registry),
        cmocka_unit_test(test_defaults_valid),
        cmocka_unit_test(test_config_files_load),
        cmocka_unit_test(test_round_trip_and_hash),
        cmocka_unit_test(test_set_overrides),
        cmocka_unit_test(test_ini_dialect),
        cmocka_unit_test(test_every_key_out_of_range),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_bad_numbers),
        cmocka_unit_test(test_syntax_and_strings),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_cross_field),
        cmocka_unit_test(test_mpi_placement_keys),
        cmocka_unit_test(test_help_lists_every_key),
        cmocka_unit_test(test_omit_default_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
