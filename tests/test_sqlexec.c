/* test_sqlexec.c - the SQL sandbox against attacks from a generated query or a domain's set-up
 * script: functions outside the allow-list (fts3_tokenizer, load_extension), expensive string
 * functions over long strings, a set-up script with no end or no memory bound, ATTACH and
 * PRAGMAs in the script, length limits; and that the guarded built-ins keep their results.
 * (test_tasks.c covers read-only, one statement, the step budget and canonical results.)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#include "sqlexec.h"

static const char script[] =
    "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, city TEXT);\n"
    "INSERT INTO t VALUES (1, 'Anna', 'Paris'), (2, 'Tom', 'Oslo'), (3, 'Leo', 'Paris');\n";

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void open_db(ccoe_sqldb *db)
{
    ccoe_error err;
    ccoe_status s = ccoe_sqldb_open(db, NULL, script, &err);
    if (s != CCOE_OK)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(s, CCOE_OK);
}

/* Runs sql, expects it refused with a message containing `why`; returns the seconds it took. */
static double refused(ccoe_sqldb *db, const char *sql, const char *why)
{
    ccoe_error err;
    char *out = NULL;
    double t0 = seconds();
    ccoe_status s = ccoe_sqldb_query(db, sql, 0, &out, &err);
    double dt = seconds() - t0;
    if (s == CCOE_OK)
        fprintf(stderr, "accepted: %.200s -> %.200s\n", sql, out);
    assert_int_equal(s, CCOE_ERR_ARG);
    assert_null(out);
    TU_ASSERT_MSG_HAS(err, why);
    return dt;
}

static void expect(ccoe_sqldb *db, const char *sql, const char *want)
{
    ccoe_error err;
    char *out = NULL;
    ccoe_status s = ccoe_sqldb_query(db, sql, 1, &out, &err);
    if (s != CCOE_OK)
        fprintf(stderr, "%s: %s\n", sql, err.msg);
    assert_int_equal(s, CCOE_OK);
    if (strcmp(out, want) != 0)
        fprintf(stderr, "%s: got %s, want %s\n", sql, out, want);
    assert_string_equal(out, want);
    free(out);
}

/* fts3_tokenizer() returns and takes a raw pointer: it must not be callable, nor any other
 * function outside the allow-list. */
static void test_functions_outside_the_allow_list(void **state)
{
    (void)state;
    ccoe_sqldb db;
    open_db(&db);
    static const char *const denied[][2] = {
        {"SELECT hex(fts3_tokenizer('simple'))", "fts3_tokenizer"},
        {"SELECT fts3_tokenizer('simple', x'4141414141414141')", "fts3_tokenizer"},
        {"SELECT load_extension('/tmp/x.so')", "load_extension"},
        {"SELECT sqlite_version()", "sqlite_version"},
        {"SELECT changes()", "changes"},
        {"SELECT name FROM t WHERE randomblob(4) IS NOT NULL", "randomblob"},
        {"SELECT count(*) FROM t GROUP BY FTS3_TOKENIZER('porter')", "fts3_tokenizer"},
    };
    for (size_t i = 0; i < sizeof denied / sizeof *denied; i++) {
        refused(&db, denied[i][0], denied[i][1]);
        refused(&db, denied[i][0], "not allowed");
    }
    /* allowed ones still work, and the connection is usable after the refusals */
    expect(&db, "SELECT upper(name), length(city), round(2.567, 1), abs(-3) FROM t WHERE id = 1",
           "'ANNA'|5|2.6|3");
    expect(&db, "SELECT city, count(*), group_concat(name) FROM t GROUP BY city ORDER BY city",
           "'Oslo'|1|'Tom'\n'Paris'|2|'Anna,Leo'");
    expect(&db, "SELECT name, row_number() OVER (ORDER BY name) FROM t ORDER BY name",
           "'Anna'|1\n'Leo'|2\n'Tom'|3");
    expect(&db, "SELECT date('2024-03-01', '+1 day'), strftime('%Y', '2024-03-01')",
           "'2024-03-02'|'2024'");
    ccoe_sqldb_close(&db);
}

/* The guarded built-ins (like, glob, trim, instr, replace) give the built-ins' results. */
static void test_guarded_functions_keep_their_results(void **state)
{
    (void)state;
    ccoe_sqldb db;
    open_db(&db);
    expect(&db, "SELECT name FROM t WHERE name LIKE 'a%' ORDER BY id", "'Anna'");
    expect(&db, "SELECT name FROM t WHERE name GLOB '*o*' ORDER BY id", "'Tom'\n'Leo'");
    expect(&db, "SELECT name FROM t WHERE name GLOB '*O*' ORDER BY id", "");
    expect(&db, "SELECT 'a_c' LIKE 'a!_c' ESCAPE '!', 'abc' LIKE 'a!_c' ESCAPE '!'", "1|0");
    expect(&db, "SELECT like('%n%', name) FROM t ORDER BY id", "1\n0\n0");
    expect(&db, "SELECT instr('hello', 'l'), instr(NULL, 'l'), replace('aXbX', 'X', '-')",
           "3|NULL|'a-b-'");
    expect(&db, "SELECT trim('xxhixx', 'x'), ltrim('xxhi', 'x'), rtrim('hixx', 'x'), trim('  a ')",
           "'hi'|'hi'|'hi'|'a'");
    expect(&db, "SELECT count(*) FROM t WHERE city NOT LIKE 'p%'", "1");
    ccoe_sqldb_close(&db);
}

/* One call of an expensive function over long strings is refused up front instead of running
 * past the deadline between two progress-handler calls; strings longer than the length limit
 * cannot be made at all. */
static void test_expensive_calls_are_bounded(void **state)
{
    (void)state;
    /* a wall-time budget far above what the calls take: only the cost guard may refuse them
     * (under a sanitizer on a busy machine building the strings alone can take 2 s) */
    ccoe_sqldb_limits lim = ccoe_sqldb_limits_default();
    lim.max_seconds = 60;
    ccoe_sqldb db;
    ccoe_error oerr;
    assert_int_equal(ccoe_sqldb_open_limits(&db, NULL, script, &lim, &oerr), CCOE_OK);
    static const char *const slow[] = {
        "SELECT printf('%.*c', 90000, 'a') LIKE '%' || printf('%.*c', 990, 'a') || 'b%'",
        "SELECT printf('%.*c', 90000, 'a') GLOB '*' || printf('%.*c', 990, 'a') || 'b*'",
        "SELECT trim(printf('%.*c', 90000, 'a'), printf('%.*c', 5000, 'b'))",
    };
    for (size_t i = 0; i < sizeof slow / sizeof *slow; i++)
        (void)refused(&db, slow[i], "cost limit"); /* refused up front, before running */
    /* a call under the cap runs, with the built-in's result */
    expect(&db, "SELECT printf('%.*c', 9000, 'a') LIKE '%' || printf('%.*c', 990, 'a') || 'b%', "
                "printf('%.*c', 9000, 'a') LIKE '%' || printf('%.*c', 990, 'a') || '%'",
           "0|1");
    /* a string over the length limit is refused as too big */
    refused(&db, "SELECT length(printf('%.*c', 60000, 'a') || printf('%.*c', 60000, 'a'))",
            "limit");
    expect(&db, "SELECT printf('%.*c', 200000, 'a') IS NULL", "1"); /* printf gives NULL */
    refused(&db, "SELECT length(replace(printf('%.*c', 60000, 'a'), 'a', 'bb'))", "limit");
    /* a LIKE pattern over 1000 bytes is refused */
    refused(&db, "SELECT 'x' LIKE printf('%.*c', 2000, '%')", "LIKE");
    /* many cheap calls in a row still stop at the wall-time budget */
    db.max_seconds = 0.3;
    db.max_steps = 1L << 40;
    double dt = refused(&db,
                        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                        "SELECT count(*) FROM c WHERE printf('%.*c', 3000 + x % 2, 'a') LIKE "
                        "'%' || printf('%.*c', 990, 'a') || 'b%'",
                        "wall time");
    assert_true(dt < 20.0); /* it stops (without the budget it runs for ever): no speed claim */
    ccoe_sqldb_close(&db);
}

/* The set-up script runs sandboxed too: no ATTACH, only harmless PRAGMAs, only allow-listed
 * functions, a step and time budget for the whole script, and a memory budget. */
static void test_setup_script_is_sandboxed(void **state)
{
    (void)state;
    ccoe_sqldb db;
    ccoe_error err;
    char path[] = "/tmp/ccoe_test_sqlexec_attach_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    char attach[256];
    snprintf(attach, sizeof attach, "ATTACH DATABASE '%s' AS x; CREATE TABLE x.y (z);", path);
    static const char *const bad[][2] = {
        {"PRAGMA writable_schema = 1; CREATE TABLE a (b);", "failed"},
        {"CREATE TABLE a (b); INSERT INTO a VALUES (hex(fts3_tokenizer('simple')));",
         "fts3_tokenizer"},
        {"SELECT load_extension('/tmp/x.so');", "load_extension"},
    };
    assert_int_equal(ccoe_sqldb_open(&db, NULL, attach, &err), CCOE_ERR_FORMAT);
    TU_ASSERT_MSG_HAS(err, "sqlite_script");
    ccoe_sqldb_close(&db);
    assert_int_equal(access(path, F_OK), -1);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(ccoe_sqldb_open(&db, NULL, bad[i][0], &err), CCOE_ERR_FORMAT);
        TU_ASSERT_MSG_HAS(err, bad[i][1]);
        ccoe_sqldb_close(&db);
    }
    /* harmless PRAGMAs are fine */
    assert_int_equal(ccoe_sqldb_open(&db, NULL,
                                     "PRAGMA foreign_keys = ON; CREATE TABLE a (b); "
                                     "INSERT INTO a VALUES (1);",
                                     &err),
                     CCOE_OK);
    expect(&db, "SELECT b FROM a", "1");
    ccoe_sqldb_close(&db);

    /* an endless recursive CTE in the script stops at the step budget */
    ccoe_sqldb_limits l = ccoe_sqldb_limits_default();
    l.script_max_steps = 2000000;
    const char *endless = "CREATE TABLE r AS WITH RECURSIVE c(x) AS "
                          "(SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c;";
    double t0 = seconds();
    assert_int_equal(ccoe_sqldb_open_limits(&db, NULL, endless, &l, &err), CCOE_ERR_FORMAT);
    assert_true(seconds() - t0 < 5.0);
    TU_ASSERT_MSG_HAS(err, "VM steps");
    ccoe_sqldb_close(&db);
    /* ... or at the wall-time budget */
    l = ccoe_sqldb_limits_default();
    l.script_max_seconds = 0.3;
    t0 = seconds();
    assert_int_equal(ccoe_sqldb_open_limits(&db, NULL, endless, &l, &err), CCOE_ERR_FORMAT);
    assert_true(seconds() - t0 < 5.0);
    TU_ASSERT_MSG_HAS(err, "wall time");
    ccoe_sqldb_close(&db);
    /* a script that grows a table without bound stops at the memory budget */
    l = ccoe_sqldb_limits_default();
    l.max_heap = 8LL << 20;
    const char *big = "CREATE TABLE r AS WITH RECURSIVE c(x) AS "
                      "(SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000) "
                      "SELECT x, printf('%.*c', 2000, 'a') AS s FROM c;";
    assert_int_equal(ccoe_sqldb_open_limits(&db, NULL, big, &l, &err), CCOE_ERR_FORMAT);
    TU_ASSERT_MSG_HAS(err, "memory budget");
    ccoe_sqldb_close(&db);
    /* the process-wide heap limit is lifted again: a normal database still opens and works */
    open_db(&db);
    expect(&db, "SELECT count(*) FROM t", "3");
    ccoe_sqldb_close(&db);
}

static void test_limits_are_checked(void **state)
{
    (void)state;
    ccoe_sqldb db;
    ccoe_error err;
    ccoe_sqldb_limits l = ccoe_sqldb_limits_default();
    l.max_seconds = 0;
    assert_int_equal(ccoe_sqldb_open_limits(&db, NULL, script, &l, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "max_seconds");
    ccoe_sqldb_close(&db);
    l = ccoe_sqldb_limits_default();
    l.script_max_steps = -1;
    assert_int_equal(ccoe_sqldb_open_limits(&db, NULL, script, &l, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "script_max_steps");
    ccoe_sqldb_close(&db);
    l = ccoe_sqldb_limits_default();
    l.max_heap = 0;
    assert_int_equal(ccoe_sqldb_open_limits(&db, NULL, script, &l, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "max_heap");
    ccoe_sqldb_close(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_functions_outside_the_allow_list),
        cmocka_unit_test(test_guarded_functions_keep_their_results),
        cmocka_unit_test(test_expensive_calls_are_bounded),
        cmocka_unit_test(test_setup_script_is_sandboxed),
        cmocka_unit_test(test_limits_are_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
