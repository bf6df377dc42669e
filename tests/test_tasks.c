/* test_tasks.c - task scoring beyond exact match: the SQLite sandbox (read-only, one statement,
 * step budget, result cap, canonical results), execution match of generated vs gold SQL,
 * per-kind task accounting, and the kind table / JSON of evaluation output.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#include "data.h"
#include "eval.h"
#include "sqlexec.h"

static const char script[] =
    "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, city TEXT, age INTEGER, score REAL);\n"
    "INSERT INTO t VALUES (1, 'Anna', 'Paris', 30, 1.5);\n"
    "INSERT INTO t VALUES (2, 'Tom', 'Oslo', 41, 2.0);\n"
    "INSERT INTO t VALUES (3, 'Leo', 'Paris', 25, NULL);\n"
    "INSERT INTO t VALUES (4, 'a|b', 'Rome', 41, 3.25);\n";

static void open_db(ccoe_sqldb *db)
{
    ccoe_error err;
    ccoe_status s = ccoe_sqldb_open(db, NULL, script, &err);
    if (s != CCOE_OK)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(s, CCOE_OK);
}

/* Runs sql; returns the canonical result (caller frees) or NULL with the message in err. */
static char *query(ccoe_sqldb *db, const char *sql, int ordered, ccoe_error *err)
{
    char *out = NULL;
    ccoe_status s = ccoe_sqldb_query(db, sql, ordered, &out, err);
    assert_true(s == CCOE_OK ? out != NULL : out == NULL);
    return out;
}

static void test_sql_canonical_results(void **state)
{
    (void)state;
    ccoe_sqldb db;
    ccoe_error err;
    open_db(&db);
    char *r = query(&db, "SELECT COUNT(*) FROM t WHERE city = 'Paris';", 0, &err);
    assert_string_equal(r, "2");
    free(r);
    /* unordered: rows sorted; NULL, reals and escaped text */
    r = query(&db, "SELECT name, score FROM t ORDER BY id DESC", 0, &err);
    assert_string_equal(r, "'Anna'|1.5\n'Leo'|NULL\n'Tom'|2\n'a\\|b'|3.25");
    free(r);
    r = query(&db, "SELECT name FROM t ORDER BY id DESC", 1, &err);
    assert_string_equal(r, "'a\\|b'\n'Leo'\n'Tom'\n'Anna'");
    free(r);
    /* integers and integral reals agree: 2 == 2.0 */
    char *a = query(&db, "SELECT SUM(age) FROM t", 0, &err);
    char *b = query(&db, "SELECT TOTAL(age) FROM t;  ;\n", 0, &err);
    assert_string_equal(a, "137");
    assert_string_equal(a, b);
    free(a);
    free(b);
    /* empty result */
    r = query(&db, "SELECT name FROM t WHERE age > 100", 0, &err);
    assert_string_equal(r, "");
    free(r);
    ccoe_sqldb_close(&db);
}

static void test_sql_sandbox(void **state)
{
    (void)state;
    ccoe_sqldb db;
    ccoe_error err;
    open_db(&db);
    static const char *const bad[] = {
        "INSERT INTO t VALUES (9, 'x', 'y', 1, 1.0)",
        "DELETE FROM t",
        "UPDATE t SET age = 0",
        "DROP TABLE t",
        "CREATE TABLE u (x)",
        "ATTACH DATABASE '/tmp/ccoe_test_tasks_attach.db' AS x",
        "PRAGMA writable_schema = 1",
        "SELECT 1; DELETE FROM t",
        "SELECT 1; SELECT 2",
        "SELEC name FROM t",
        "SELECT nope FROM t",
        "",
        "-- only a comment",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *r = query(&db, bad[i], 0, &err);
        if (r)
            fprintf(stderr, "accepted: %s -> %s\n", bad[i], r);
        assert_null(r);
        assert_int_equal(err.status, CCOE_ERR_ARG);
    }
    assert_int_equal(access("/tmp/ccoe_test_tasks_attach.db", F_OK), -1);
    /* nothing changed */
    char *r = query(&db, "SELECT COUNT(*) FROM t", 0, &err);
    assert_string_equal(r, "4");
    free(r);
    /* an endless recursive query stops at the step budget, quickly */
    db.max_steps = 200000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    r = query(&db,
              "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
              "SELECT COUNT(*) FROM c",
              0, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_null(r);
    assert_non_null(strstr(err.msg, "budget"));
    assert_true((double)(t1.tv_sec - t0.tv_sec) < 2.5);
    /* a huge result stops at the byte cap */
    db.max_steps = 20000000;
    db.max_bytes = 4096;
    r = query(&db, "SELECT a.name, b.name, c.name, d.name FROM t a, t b, t c, t d, t e", 0, &err);
    assert_null(r);
    assert_non_null(strstr(err.msg, "larger than"));
    /* the connection still works afterwards */
    r = query(&db, "SELECT MAX(age) FROM t", 0, &err);
    assert_string_equal(r, "41");
    free(r);
    ccoe_sqldb_close(&db);
}

static void test_sql_open_errors_and_files(void **state)
{
    (void)state;
    ccoe_sqldb db;
    ccoe_error err;
    assert_int_equal(ccoe_sqldb_open(&db, NULL, "CREATE TABLE (oops", &err), CCOE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "script"));
    ccoe_sqldb_close(&db);
    assert_int_equal(ccoe_sqldb_open(&db, "/nonexistent/x.sqlite", NULL, &err), CCOE_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/x.sqlite"));
    ccoe_sqldb_close(&db);
    char path[] = "/tmp/ccoe_test_tasks_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "not a database at all, just some text.....", 42), 42);
    close(fd);
    assert_int_equal(ccoe_sqldb_open(&db, path, NULL, &err), CCOE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "not a usable SQLite database"));
    ccoe_sqldb_close(&db);
    unlink(path);
}

static void test_sql_execution_match(void **state)
{
    (void)state;
    ccoe_sqldb db;
    open_db(&db);
    const char *gold = "SELECT name FROM t WHERE age > 35;";
    assert_int_equal(ccoe_sqldb_match(&db, gold, gold), CCOE_SQL_MATCH);
    /* different text, same result set (in another order): a match */
    assert_int_equal(ccoe_sqldb_match(&db, gold, "select name from t where age >= 41 order by name"),
                     CCOE_SQL_MATCH);
    assert_int_equal(ccoe_sqldb_match(&db, gold, "SELECT name FROM t WHERE age > 25"),
                     CCOE_SQL_DIFFERENT);
    assert_int_equal(ccoe_sqldb_match(&db, gold, "SELECT name, age FROM t WHERE age > 35"),
                     CCOE_SQL_DIFFERENT);
    assert_int_equal(ccoe_sqldb_match(&db, gold, "SELECT name FROM t WHERE"),
                     CCOE_SQL_PRED_ERROR);
    assert_int_equal(ccoe_sqldb_match(&db, gold, "DELETE FROM t"), CCOE_SQL_PRED_ERROR);
    assert_int_equal(ccoe_sqldb_match(&db, "SELECT nope FROM t", gold), CCOE_SQL_GOLD_ERROR);
    /* an ORDER BY in the gold query makes the order count */
    const char *ordered = "SELECT name FROM t ORDER BY age, name";
    assert_int_equal(ccoe_sqldb_match(&db, ordered, "SELECT name FROM t ORDER BY age, name;"),
                     CCOE_SQL_MATCH);
    assert_int_equal(ccoe_sqldb_match(&db, ordered, "SELECT name FROM t ORDER BY age DESC, name"),
                     CCOE_SQL_DIFFERENT);
    ccoe_sqldb_close(&db);
}

static ccoe_task_example task(const char *prompt, const char *answer, const char *kind, int match)
{
    ccoe_task_example t = {.prompt = (char *)prompt, .answer = (char *)answer, .match = match};
    size_t n = strlen(kind);
    assert_true(n < sizeof t.kind);
    memcpy(t.kind, kind, n + 1);
    return t;
}

static void test_eval_score_and_kinds(void **state)
{
    (void)state;
    ccoe_sqldb db;
    open_db(&db);
    ccoe_task_example e = task("2+3=", "5", "equation", CCOE_MATCH_EXACT);
    ccoe_task_example w = task("Tom has 1 ...", "2", "", CCOE_MATCH_EXACT);
    ccoe_task_example q = task("-- Q: older than 35?\n", "SELECT name FROM t WHERE age > 35;",
                               "sql_list", CCOE_MATCH_SQL);
    int err;
    assert_int_equal(ccoe_eval_score(&e, "5", NULL, &err), 1);
    assert_int_equal(err, 0);
    assert_int_equal(ccoe_eval_score(&e, "5 ", NULL, &err), 0);
    assert_int_equal(ccoe_eval_score(&q, "SELECT name FROM t WHERE age >= 41", &db, &err), 1);
    assert_int_equal(err, 0);
    assert_int_equal(ccoe_eval_score(&q, "SELECT name FROM t WHERE age > 35;", NULL, &err), 0);
    assert_int_equal(ccoe_eval_score(&q, "SELECT name FROM", &db, &err), 0);
    assert_int_equal(err, 1);
    assert_int_equal(ccoe_eval_score(&q, "SELECT name FROM t", &db, &err), 0);
    assert_int_equal(err, 0);

    ccoe_domain_eval ev;
    memset(&ev, 0, sizeof ev);
    ccoe_eval_count(&ev, &e, 1, 0);
    ccoe_eval_count(&ev, &e, 0, 0);
    ccoe_eval_count(&ev, &w, 1, 0);
    ccoe_eval_count(&ev, &q, 0, 1);
    assert_int_equal(ev.task_total, 4);
    assert_int_equal(ev.task_correct, 2);
    assert_int_equal(ev.n_kinds, 3);
    assert_string_equal(ev.kinds[0].name, "equation");
    assert_int_equal(ev.kinds[0].total, 2);
    assert_int_equal(ev.kinds[0].correct, 1);
    assert_string_equal(ev.kinds[1].name, "exact"); /* no kind label */
    assert_string_equal(ev.kinds[2].name, "sql_list");
    assert_int_equal(ev.kinds[2].errors, 1);
    /* more kinds than slots: the last slot collects the rest as "other" */
    char names[CCOE_MAX_TASK_KINDS + 3][16];
    for (int k = 0; k < CCOE_MAX_TASK_KINDS + 3; k++) {
        snprintf(names[k], sizeof names[k], "k%d", k);
        ccoe_task_example t = task("p", "a", names[k], CCOE_MATCH_EXACT);
        ccoe_eval_count(&ev, &t, 1, 0);
    }
    assert_int_equal(ev.n_kinds, CCOE_MAX_TASK_KINDS);
    assert_string_equal(ev.kinds[CCOE_MAX_TASK_KINDS - 1].name, "other");
    long sum = 0;
    for (int k = 0; k < ev.n_kinds; k++)
        sum += ev.kinds[k].total;
    assert_int_equal(sum, ev.task_total);
    ccoe_sqldb_close(&db);
}

/* The evaluation table lists accuracy per domain and kind; the JSON carries the kinds. */
static void test_eval_print_kinds(void **state)
{
    (void)state;
    ccoe_dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.n_domains = 2;
    snprintf(ds.domains[0].name, CCOE_NAME_LEN, "arith");
    snprintf(ds.domains[1].name, CCOE_NAME_LEN, "prose");
    ccoe_domain_eval ev[2];
    memset(ev, 0, sizeof ev);
    ev[0].loss = ev[1].loss = 1.0;
    ev[0].tokens = ev[1].tokens = 10;
    ccoe_task_example a = task("1+1=", "2", "word_small", CCOE_MATCH_EXACT);
    ccoe_task_example b = task("10+10=", "20", "equation", CCOE_MATCH_EXACT);
    ccoe_eval_count(&ev[0], &a, 1, 0);
    ccoe_eval_count(&ev[0], &a, 1, 0);
    ccoe_eval_count(&ev[0], &a, 0, 0);
    ccoe_eval_count(&ev[0], &b, 0, 0);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    ccoe_eval_print(f, &ds, ev);
    fputc('\n', f);
    ccoe_eval_json(f, &ds, ev);
    fclose(f);
    assert_non_null(strstr(buf, "task accuracy by kind"));
    assert_non_null(strstr(buf, "word_small"));
    assert_non_null(strstr(buf, "66.7% (2/3)"));
    assert_non_null(strstr(buf, "0.0% (0/1)"));
    assert_non_null(strstr(buf, "\"kinds\":{\"word_small\":{\"acc\":0.666667,\"n\":3},"
                                "\"equation\":{\"acc\":0.000000,\"n\":1}}"));
    assert_null(strstr(buf, "prose        exact"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sql_canonical_results),
        cmocka_unit_test(test_sql_sandbox),
        cmocka_unit_test(test_sql_open_errors_and_files),
        cmocka_unit_test(test_sql_execution_match),
        cmocka_unit_test(test_eval_score_and_kinds),
        cmocka_unit_test(test_eval_print_kinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
