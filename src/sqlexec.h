/* sqlexec.h - runs SQL the model generated against a read-only SQLite database and compares its
 * result with the gold query's (execution match, the SQL task's score).
 *
 * A database comes from a file (opened read-only) or from a set-up SQL script run into a private
 * in-memory database. Everything runs sandboxed, the set-up script included:
 * - SQLite's defensive settings: SQLITE_DBCONFIG_DEFENSIVE on, the schema untrusted (functions
 *   in views, triggers and indexes must be innocuous), fts3_tokenizer() pointers and extension
 *   loading off;
 * - an authorizer allows an explicit list of pure scalar, aggregate, window and date/time
 *   functions (count, sum, substr, like, date, row_number, ...) and denies every other function
 *   (fts3_tokenizer, load_extension, sqlite_version, ...) and ATTACH; queries may only read
 *   (writes, PRAGMA and schema changes are denied; one statement per call);
 * - limits: strings, blobs and rows of at most max_length bytes, LIKE/GLOB patterns of at most
 *   1000 bytes, short SQL, bounded expression depth, compound SELECTs, program size and function
 *   arguments; like, glob, instr, replace and two-argument trim, whose cost grows with the
 *   product of their arguments' lengths, refuse calls over a per-call cost cap;
 * - budgets: VM steps and wall time per query and for the set-up script as a whole (checked by
 *   the progress handler and before each of the functions above, so one statement cannot run
 *   much past its deadline), and SQLite heap memory per query and for the set-up script;
 * - a cap on the size of the canonical result.
 * The heap budget uses sqlite3_hard_heap_limit64, which is process-wide: it is set just while a
 * sandboxed statement runs (to the memory in use plus max_heap, never above a lower limit set
 * by someone else) and restored afterwards. Another thread using SQLite at that moment would
 * share the limit; ccoe has no other SQLite user and scores on one thread.
 * This module does not generate questions (data_builtin.c, scripts/build_corpora.sh) and does
 * not decode (eval.c). <sqlite3.h> is included only by sqlexec.c.
 */
#ifndef CCOE_SQLEXEC_H
#define CCOE_SQLEXEC_H

#include <stddef.h>

#include "status.h"

struct sqlite3;
struct ccoe_sqlguard;

/* The budgets and limits of a sandbox; ccoe_sqldb_limits_default gives the defaults. */
typedef struct ccoe_sqldb_limits {
    long max_steps;            /* VM instructions per query (checked every 1000); 20M */
    double max_seconds;        /* wall time per query; 2 s */
    size_t max_bytes;          /* canonical result size; 1 MiB */
    long script_max_steps;     /* VM instructions of the whole set-up script; 500M */
    double script_max_seconds; /* wall time of the whole set-up script; 30 s */
    long long max_heap;        /* SQLite heap a query, or the whole set-up script, may add; 256 MiB */
    int max_length;            /* bytes of one string, blob or row (SQLITE_LIMIT_LENGTH); 100000 */
} ccoe_sqldb_limits;

typedef struct ccoe_sqldb {
    struct sqlite3 *db;
    long max_steps;     /* VM instructions per query (checked every 1000) */
    double max_seconds; /* wall time per query */
    size_t max_bytes;   /* canonical result size */
    long long max_heap; /* SQLite heap bytes one query may add */
    /* private: state of the running statement (progress handler, authorizer, guards) */
    long steps, step_limit;
    double deadline;
    int phase;       /* set-up script, internal set-up, or query */
    int stopped;     /* why the running statement was stopped: steps or time */
    char denied[64]; /* the function the authorizer denied, for the message */
    struct ccoe_sqlguard *guard;
} ccoe_sqldb;

ccoe_sqldb_limits ccoe_sqldb_limits_default(void);

/* Opens a database: the SQLite file `path` read-only, or (path NULL) a fresh in-memory database
 * built by running `script` (any SQL: CREATE/INSERT...; no ATTACH, only allow-listed functions,
 * within the script budgets). Afterwards the connection only reads. Free with ccoe_sqldb_close
 * (also after a failure). ccoe_sqldb_open uses the default limits; ccoe_sqldb_open_limits
 * takes them from `lim` (NULL: the defaults) and rejects non-positive values. */
ccoe_status ccoe_sqldb_open(ccoe_sqldb *db, const char *path, const char *script,
                            ccoe_error *err);
ccoe_status ccoe_sqldb_open_limits(ccoe_sqldb *db, const char *path, const char *script,
                                   const ccoe_sqldb_limits *lim, ccoe_error *err);
void ccoe_sqldb_close(ccoe_sqldb *db);

/* Runs exactly one read-only statement (a trailing ';' and whitespace are allowed) and returns
 * its result in canonical form as a malloc'd string (*out, caller frees): rows separated by
 * '\n', values by '|', numbers printed with %.12g (so 3 and 3.0 agree), NULL as "NULL", text
 * escaped; rows sorted unless `ordered`. Errors (CCOE_ERR_ARG) for SQL that does not compile,
 * is not a single read-only statement, calls a function not on the allow-list, exceeds the
 * step/time/memory budget or a length limit, or has a too large result; the message says
 * which. */
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
