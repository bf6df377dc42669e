/* fuzz_sql.c - libFuzzer harness for the SQL sandbox (src/sqlexec.h).
 *
 * The input is a query, run under small budgets against an in-memory database built once from a
 * fixed script, ordered and unordered, and scored against a fixed gold query. An input that
 * holds a line "-- script" is split there: the text before it is run as a set-up script into a
 * fresh sandbox (the script's own budgets and denials), the text after it is the query. Any
 * crash, or a call that runs far past its time budget, is a bug.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fuzz_common.h"
#include "sqlexec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char script[] =
    "CREATE TABLE city (id INTEGER PRIMARY KEY, name TEXT, country TEXT, pop INTEGER);\n"
    "INSERT INTO city VALUES (1, 'Paris', 'FR', 2100000), (2, 'Oslo', 'NO', 700000),\n"
    "  (3, 'Lyon', 'FR', 520000), (4, 'Bergen', 'NO', 285000), (5, 'Nice', 'FR', NULL);\n"
    "CREATE TABLE person (id INTEGER PRIMARY KEY, name TEXT, city_id INTEGER, age REAL,\n"
    "  FOREIGN KEY (city_id) REFERENCES city(id));\n"
    "INSERT INTO person VALUES (1, 'Anna', 1, 31.5), (2, 'Tom', 2, 44), (3, 'Leo', 1, 19),\n"
    "  (4, 'Mia', 3, NULL), (5, 'Ola', 4, 67), (6, 'Eve', NULL, 25);\n"
    "CREATE INDEX person_city ON person(city_id);\n"
    "CREATE VIEW big AS SELECT name FROM city WHERE pop > 600000;\n";

static const char gold[] = "SELECT name FROM person WHERE age > 30 ORDER BY name";

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static ccoe_sqldb_limits small_limits(void)
{
    ccoe_sqldb_limits l = ccoe_sqldb_limits_default();
    l.max_steps = 200000;
    l.max_seconds = 0.25;
    l.max_bytes = 65536;
    l.script_max_steps = 2000000;
    l.script_max_seconds = 0.5;
    l.max_heap = 16 << 20;
    l.max_length = 10000;
    return l;
}

/* Aborts when a call took far longer than its budget (allowing for sanitizer slowness). */
static void check_time(double t0, double budget, const char *what)
{
    double dt = seconds() - t0;
    if (dt > 4 * budget + 1.0) {
        fprintf(stderr, "%s took %.2f s, budget %.2f s\n", what, dt, budget);
        abort();
    }
}

static void run_query(ccoe_sqldb *db, const char *sql, double budget)
{
    ccoe_error err;
    for (int ordered = 0; ordered < 2; ordered++) {
        char *out = NULL;
        double t0 = seconds();
        ccoe_status st = ccoe_sqldb_query(db, sql, ordered, &out, &err);
        check_time(t0, budget, "query");
        if ((st == CCOE_OK) != (out != NULL) || (st != CCOE_OK && !err.msg[0]))
            abort(); /* a result exactly on success; a failure says why */
        free(out);
    }
    double t0 = seconds();
    (void)ccoe_sqldb_match(db, gold, sql);
    check_time(t0, 2 * budget, "match");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192)
        return 0;
    static ccoe_sqldb fixed;
    static int ready;
    const ccoe_sqldb_limits lim = small_limits();
    ccoe_error err;
    if (!ready) {
        if (ccoe_sqldb_open_limits(&fixed, NULL, script, &lim, &err) != CCOE_OK) {
            fprintf(stderr, "fuzz_sql: the fixed script fails: %s\n", err.msg);
            abort();
        }
        ready = 1;
    }
    char *text = fuzz_strndup(data, size);
    char *split = strstr(text, "-- script\n");
    if (!split) {
        run_query(&fixed, text, lim.max_seconds);
    } else {
        *split = '\0';
        const char *query = split + strlen("-- script\n");
        ccoe_sqldb db;
        double t0 = seconds();
        ccoe_status st = ccoe_sqldb_open_limits(&db, NULL, text, &lim, &err);
        check_time(t0, lim.script_max_seconds, "set-up script");
        if (st == CCOE_OK)
            run_query(&db, query, lim.max_seconds);
        else if (!err.msg[0])
            abort();
        ccoe_sqldb_close(&db);
    }
    free(text);
    return 0;
}
