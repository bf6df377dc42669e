/* sqlexec.h - runs SQL the model generated against a read-only SQLite database and compares its
 * result with the gold query's (execution match, the SQL task's score).
 *
 * A database comes from a file (opened read-only) or from an SQL script run into a private
 * in-memory database. After opening, every statement is sandboxed: only one statement per call,
 * only reads (an authorizer denies writes, ATTACH, PRAGMA and schema changes), a budget of
 * virtual-machine steps and of wall time per query (so generated garbage cannot hang
 * evaluation), and a cap on the size of the result. This module does not generate questions
 * (data_builtin.c, scripts/build_corpora.sh) and does not decode (eval.c).
 * <sqlite3.h> is included only by sqlexec.c.
 */
#ifndef CCOE_SQLEXEC_H
#define CCOE_SQLEXEC_H

#include <stddef.h>

#include "status.h"

struct sqlite3;

typedef struct ccoe_sqldb {
    struct sqlite3 *db;
    long max_steps;      /* VM instructions per query (checked every 1000); default 20M */
    double max_seconds;  /* wall time per query; default 2 s */
    size_t max_bytes;    /* canonical result size; default 1 MiB */
    /* state of the running query (used by the progress handler) */
    long steps;
    double deadline;
} ccoe_sqldb;

/* Opens a database: the SQLite file `path` read-only, or (path NULL) a fresh in-memory database
 * built by running `script` (any SQL: CREATE/INSERT...). Afterwards the connection only reads.
 * Free with ccoe_sqldb_close (also after a failure). */
ccoe_status ccoe_sqldb_open(ccoe_sqldb *db, const char *path, const char *script,
                            ccoe_error *err);
void ccoe_sqldb_close(ccoe_sqldb *db);

/* Runs exactly one read-only statement (a trailing ';' and whitespace are allowed) and returns
 * its result in canonical form as a malloc'd string (*out, caller frees): rows separated by
 * '\n', values by '|', numbers printed with %.12g (so 3 and 3.0 agree), NULL as "NULL", text
 * escaped; rows sorted unless `ordered`. Errors (CCOE_ERR_ARG) for SQL that does not compile,
 * is not a single read-only statement, exceeds the step/time budget or a too large result; the
 * message says which. */
ccoe_status ccoe_sqldb_query(ccoe_sqldb *db, const char *sql, int ordered, char **out,
                             ccoe_error *err);

/* Result of comparing a predicted query with the gold one. */
typedef enum ccoe_sql_match {
    CCOE_SQL_MATCH = 0,  /* both ran and their results agree */
    CCOE_SQL_DIFFERENT,  /* both ran, results differ */
    CCOE_SQL_PRED_ERROR, /* the predicted SQL failed (syntax, not read-only, budget, ...) */
    CCOE_SQL_GOLD_ERROR  /* the gold SQL itself failed: a data bug */
} ccoe_sql_match;

/* Execution match: runs gold and pred; rows are compared in order if gold has an ORDER BY,
 * else as multisets. */
ccoe_sql_match ccoe_sqldb_match(ccoe_sqldb *db, const char *gold, const char *pred);

#endif
