/* sqlexec.c - sandboxed execution of generated SQL on SQLite, and execution match.
 *
 * The sandbox is layered: the connection is read-only (SQLITE_OPEN_READONLY for files,
 * PRAGMA query_only for in-memory databases built from a script), an authorizer allows only
 * reading (SELECT, column reads, functions, recursive CTEs), a progress handler stops a query
 * after max_steps VM instructions or max_seconds of wall time, and the canonical result is capped
 * at max_bytes. See sqlexec.h for the canonical form.
 */
#define _GNU_SOURCE /* strcasestr */
#include "sqlexec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "fs.h"

#define PROGRESS_EVERY 1000 /* VM instructions between progress-handler calls */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int on_progress(void *ctx)
{
    ccoe_sqldb *db = ctx;
    db->steps += PROGRESS_EVERY;
    return db->steps > db->max_steps || now_seconds() > db->deadline;
}

static int authorize(void *ctx, int action, const char *a, const char *b, const char *c,
                     const char *d)
{
    (void)ctx;
    (void)a;
    (void)b;
    (void)c;
    (void)d;
    switch (action) {
    case SQLITE_SELECT:
    case SQLITE_READ:
    case SQLITE_FUNCTION:
    case SQLITE_RECURSIVE:
        return SQLITE_OK;
    default:
        return SQLITE_DENY;
    }
}

ccoe_status ccoe_sqldb_open(ccoe_sqldb *db, const char *path, const char *script,
                            ccoe_error *err)
{
    memset(db, 0, sizeof *db);
    db->max_steps = 20000000;
    db->max_seconds = 2.0;
    db->max_bytes = 1 << 20;
    if (!path && !script)
        return ccoe_error_set(err, CCOE_ERR_ARG, "no SQLite database: give a file or a script");
    const char *what = path ? path : "(in-memory database)";
    if (path) { /* a FIFO or device is refused at once, not waited on by SQLite's open */
        int fd = ccoe_fs_open_input(path, "SQLite database", err);
        if (fd < 0)
            return err ? err->status : CCOE_ERR_IO;
        close(fd);
    }
    int rc = path ? sqlite3_open_v2(path, &db->db, SQLITE_OPEN_READONLY, NULL)
                  : sqlite3_open_v2(":memory:", &db->db,
                                    SQLITE_OPEN_READWRITE | SQLITE_OPEN_MEMORY, NULL);
    if (rc != SQLITE_OK) {
        ccoe_error_set(err, CCOE_ERR_IO, "cannot open SQLite database '%s': %s", what,
                       db->db ? sqlite3_errmsg(db->db) : sqlite3_errstr(rc));
        ccoe_sqldb_close(db);
        return CCOE_ERR_IO;
    }
    char *msg = NULL;
    if (!path && sqlite3_exec(db->db, script, NULL, NULL, &msg) != SQLITE_OK) {
        ccoe_error_set(err, CCOE_ERR_FORMAT, "the SQL script that builds the database failed: %s",
                       msg ? msg : sqlite3_errmsg(db->db));
        sqlite3_free(msg);
        ccoe_sqldb_close(db);
        return CCOE_ERR_FORMAT;
    }
    /* the first read also checks that a file is a database at all */
    if (sqlite3_exec(db->db, "PRAGMA query_only = 1; SELECT count(*) FROM sqlite_schema;", NULL,
                     NULL, &msg) != SQLITE_OK) {
        ccoe_error_set(err, CCOE_ERR_FORMAT, "'%s' is not a usable SQLite database: %s", what,
                       msg ? msg : sqlite3_errmsg(db->db));
        sqlite3_free(msg);
        ccoe_sqldb_close(db);
        return CCOE_ERR_FORMAT;
    }
    sqlite3_limit(db->db, SQLITE_LIMIT_SQL_LENGTH, 100000);
    sqlite3_limit(db->db, SQLITE_LIMIT_LENGTH, 1 << 20);
    sqlite3_limit(db->db, SQLITE_LIMIT_ATTACHED, 0);
    sqlite3_set_authorizer(db->db, authorize, NULL);
    sqlite3_progress_handler(db->db, PROGRESS_EVERY, on_progress, db);
    return CCOE_OK;
}

void ccoe_sqldb_close(ccoe_sqldb *db)
{
    if (db->db)
        sqlite3_close_v2(db->db);
    db->db = NULL;
}

/* ---- canonical results ---- */

typedef struct sbuf {
    char *p;
    size_t n, cap, max;
    int over; /* 1: the result exceeded max */
} sbuf;

static int sb_add(sbuf *s, const char *x, size_t n)
{
    if (s->n + n + 1 > s->max) {
        s->over = 1;
        return 0;
    }
    if (s->n + n + 1 > s->cap) {
        size_t c = s->cap ? s->cap : 256;
        while (c < s->n + n + 1)
            c *= 2;
        char *q = realloc(s->p, c);
        if (!q)
            return 0;
        s->p = q;
        s->cap = c;
    }
    memcpy(s->p + s->n, x, n);
    s->n += n;
    s->p[s->n] = '\0';
    return 1;
}

static int sb_value(sbuf *s, sqlite3_stmt *st, int col)
{
    char num[64];
    switch (sqlite3_column_type(st, col)) {
    case SQLITE_NULL: return sb_add(s, "NULL", 4);
    case SQLITE_INTEGER:
        snprintf(num, sizeof num, "%.12g", (double)sqlite3_column_int64(st, col));
        return sb_add(s, num, strlen(num));
    case SQLITE_FLOAT:
        snprintf(num, sizeof num, "%.12g", sqlite3_column_double(st, col));
        if (strcmp(num, "-0") == 0)
            strcpy(num, "0");
        return sb_add(s, num, strlen(num));
    case SQLITE_BLOB: {
        const unsigned char *b = sqlite3_column_blob(st, col);
        int n = sqlite3_column_bytes(st, col);
        if (!sb_add(s, "x'", 2))
            return 0;
        for (int i = 0; i < n; i++) {
            snprintf(num, sizeof num, "%02x", b[i]);
            if (!sb_add(s, num, 2))
                return 0;
        }
        return sb_add(s, "'", 1);
    }
    default: {
        const char *t = (const char *)sqlite3_column_text(st, col);
        int n = sqlite3_column_bytes(st, col);
        if (!sb_add(s, "'", 1))
            return 0;
        for (int i = 0; i < n; i++) {
            const char *e = t[i] == '\\' ? "\\\\" : t[i] == '|' ? "\\|" : t[i] == '\n' ? "\\n" : NULL;
            if (!(e ? sb_add(s, e, 2) : sb_add(s, t + i, 1)))
                return 0;
        }
        return sb_add(s, "'", 1);
    }
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts the '\n'-separated rows of s in place. */
static int sort_rows(char *s, size_t n)
{
    if (n == 0)
        return 1;
    size_t rows = 1;
    for (size_t i = 0; i < n; i++)
        rows += s[i] == '\n';
    char **r = malloc(rows * sizeof *r);
    char *copy = malloc(n + 1);
    if (!r || !copy) {
        free(r);
        free(copy);
        return 0;
    }
    memcpy(copy, s, n + 1);
    size_t k = 0;
    r[k++] = copy;
    for (size_t i = 0; i < n; i++)
        if (copy[i] == '\n') {
            copy[i] = '\0';
            r[k++] = copy + i + 1;
        }
    qsort(r, rows, sizeof *r, cmp_str);
    size_t pos = 0;
    for (size_t i = 0; i < rows; i++) {
        size_t l = strlen(r[i]);
        memcpy(s + pos, r[i], l);
        pos += l;
        if (i + 1 < rows)
            s[pos++] = '\n';
    }
    free(r);
    free(copy);
    return 1;
}

static int only_space_or_semicolons(const char *s)
{
    for (; *s; s++)
        if (*s != ';' && *s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return 0;
    return 1;
}

ccoe_status ccoe_sqldb_query(ccoe_sqldb *db, const char *sql, int ordered, char **out,
                             ccoe_error *err)
{
    *out = NULL;
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    db->steps = 0;
    db->deadline = now_seconds() + db->max_seconds;
    if (sqlite3_prepare_v2(db->db, sql, -1, &st, &tail) != SQLITE_OK)
        return ccoe_error_set(err, CCOE_ERR_ARG, "SQL does not compile: %s",
                              sqlite3_errmsg(db->db));
    if (!st)
        return ccoe_error_set(err, CCOE_ERR_ARG, "no SQL statement in '%s'", sql);
    ccoe_status s = CCOE_OK;
    if (tail && !only_space_or_semicolons(tail))
        s = ccoe_error_set(err, CCOE_ERR_ARG, "more than one SQL statement: only one is run");
    else if (!sqlite3_stmt_readonly(st))
        s = ccoe_error_set(err, CCOE_ERR_ARG, "the SQL statement would write: only reads run");
    sbuf b = {.max = db->max_bytes};
    int ncol = sqlite3_column_count(st), rows = 0, rc = SQLITE_DONE;
    while (s == CCOE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        int ok = !rows++ || sb_add(&b, "\n", 1);
        for (int c = 0; ok && c < ncol; c++)
            ok = (!c || sb_add(&b, "|", 1)) && sb_value(&b, st, c);
        if (!ok)
            s = b.over ? ccoe_error_set(err, CCOE_ERR_ARG,
                                        "the result is larger than %zu bytes", db->max_bytes)
                       : ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for a SQL result");
    }
    if (s == CCOE_OK && rc != SQLITE_DONE)
        s = rc == SQLITE_INTERRUPT
                ? ccoe_error_set(err, CCOE_ERR_ARG,
                                 "the query ran out of its budget (%ld VM steps or %g s)",
                                 db->max_steps, db->max_seconds)
                : ccoe_error_set(err, CCOE_ERR_ARG, "the query failed: %s",
                                 sqlite3_errmsg(db->db));
    sqlite3_finalize(st);
    if (s == CCOE_OK && !b.p && !sb_add(&b, "", 0))
        s = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for a SQL result");
    if (s == CCOE_OK && !ordered && !sort_rows(b.p, b.n))
        s = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory sorting a SQL result");
    if (s != CCOE_OK) {
        free(b.p);
        return s;
    }
    *out = b.p;
    return CCOE_OK;
}

ccoe_sql_match ccoe_sqldb_match(ccoe_sqldb *db, const char *gold, const char *pred)
{
    ccoe_error err;
    int ordered = strcasestr(gold, "order by") != NULL;
    char *g = NULL, *p = NULL;
    if (ccoe_sqldb_query(db, gold, ordered, &g, &err) != CCOE_OK)
        return CCOE_SQL_GOLD_ERROR;
    ccoe_sql_match r = ccoe_sqldb_query(db, pred, ordered, &p, &err) != CCOE_OK ? CCOE_SQL_PRED_ERROR
                       : strcmp(g, p) == 0                                  ? CCOE_SQL_MATCH
                                                                            : CCOE_SQL_DIFFERENT;
    free(g);
    free(p);
    return r;
}
