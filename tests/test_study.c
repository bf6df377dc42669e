/* test_study.c - ccoe_study_check: the shipped study files pass, bad ones fail with the line
 * and key named, and nothing is trained or written. (Whole studies run in tests/cli/study.sh.) */
#include "testutil.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "study.h"

/* $CCOE_SOURCE_DIR, else the directory above this file. */
static void source_dir(char *buf, size_t cap)
{
    const char *src = getenv("CCOE_SOURCE_DIR");
    if (src && *src) {
        snprintf(buf, cap, "%s", src);
        return;
    }
    snprintf(buf, cap, "%s", __FILE__);
    char *slash = strrchr(buf, '/');
    if (slash)
        snprintf(slash, cap - (size_t)(slash - buf), "/..");
    else
        snprintf(buf, cap, "..");
}

static void test_shipped_studies_pass(void **state)
{
    (void)state;
    static const char *const files[] = {"study-default.ini", "study-gating.ini",
                                        "study-sweep.ini", "study-tasks.ini"};
    char src[PATH_MAX - 64];
    source_dir(src, sizeof src);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/configs/%s", src, files[i]);
        ccoe_error err;
        ccoe_error_clear(&err);
        ccoe_status st = ccoe_study_check(path, NULL, &err);
        if (st != CCOE_OK)
            fprintf(stderr, "%s: %s\n", path, err.msg);
        assert_int_equal(st, CCOE_OK);
    }
}

/* Writes text to a study file in a fresh directory; returns its path. */
static const char *write_study(const char *text)
{
    static char dir[64], path[96];
    snprintf(dir, sizeof dir, "/tmp/ccoe-test-study.XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/s.ini", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void remove_study(const char *path)
{
    char dir[96];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    unlink(path);
    assert_int_equal(rmdir(dir), 0); /* the check wrote nothing next to the file */
}

static void expect_error(const char *text, const char *const *sets, int n_sets, const char *want)
{
    const char *path = write_study(text);
    ccoe_study_opts o = {.sets = sets, .n_sets = n_sets};
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_study_check(path, &o, &err), CCOE_ERR_CONFIG);
    if (!strstr(err.msg, want))
        fprintf(stderr, "message '%s' lacks '%s'\n", err.msg, want);
    assert_non_null(strstr(err.msg, want));
    remove_study(path);
}

static void test_bad_studies_fail(void **state)
{
    (void)state;
    const char *ok = "[study]\nbudget = tokens:1000\nvariants = a\nout_dir = /nonexistent/x\n"
                     "[variant.a]\nmodel.n_layer = 2\n";
    const char *path = write_study(ok);
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_status st = ccoe_study_check(path, NULL, &err);
    if (st != CCOE_OK)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, CCOE_OK);
    remove_study(path);

    expect_error("[study]\nbudget = tokens:-3\nvariants = a\n[variant.a]\n", NULL, 0, "line 2");
    expect_error("[study]\nbudget = tokens:1000\nvariants = a b\n[variant.a]\n", NULL, 0,
                 "variant 'b'");
    expect_error("[study]\nbudget = tokens:1000\nvariants = a\n[variant.a]\nmodel.n_layers = 2\n",
                 NULL, 0, "n_layers");
    expect_error("[study]\nbudget = tokens:1000\nvariants = a\n[variant.a]\nmodel.n_head = 3\n",
                 NULL, 0, "variant a");
    expect_error("[study]\nbudget = tokens:1000\nvariants = a\nbase = missing.ini\n"
                 "[variant.a]\n",
                 NULL, 0, "missing.ini");
    static const char *const sets[] = {"study.budget=flops:x"};
    expect_error(ok, sets, 1, "flops:x");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_studies_pass),
        cmocka_unit_test(test_bad_studies_fail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
