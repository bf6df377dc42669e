/* sqlexec.c - sandboxed execution of generated SQL on SQLite, and execution match.
 *
 * The sandbox is layered (sqlexec.h lists the guarantees): SQLite's defensive settings and
 * limits are set as soon as the connection opens; an authorizer allows an explicit list of
 * functions and, for queries, only reading (the connection is also read-only:
 * SQLITE_OPEN_READONLY for files, PRAGMA query_only for in-memory databases built from a
 * script); a progress handler stops a statement after its VM-step or wall-time budget; a
 * process-wide heap limit is set around each statement; and the canonical result is capped at
 * max_bytes. The progress handler runs only when the VM jumps, so one long straight run of
 * expensive function calls could outlast the deadline: the functions whose cost grows with the
 * product of their arguments' lengths are replaced by guards that check the deadline and a cost
 * cap, then call the built-in on a private helper connection. This file does not decide what
 * a task's answer is (data.c) or how it is counted (eval.c).
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

/* Query limits beyond the configurable ones. A generated query is a few hundred bytes and gold
 * queries rarely more than a few thousand, so these only cut off garbage; the SQL length also
 * bounds how many expensive operations one query can chain without a VM jump. */
#define QUERY_SQL_LENGTH 10000
#define QUERY_EXPR_DEPTH 500
#define QUERY_COMPOUND_SELECT 100
#define QUERY_VDBE_OP 50000
#define QUERY_FUNCTION_ARG 64
#define QUERY_VARIABLE_NUMBER 100
#define LIKE_PATTERN_LENGTH 1000 /* bytes of a LIKE/GLOB pattern, queries and script */

enum { PHASE_SCRIPT, PHASE_INTERNAL, PHASE_QUERY };
enum { STOP_NONE, STOP_STEPS, STOP_TIME };

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
    if (db->steps > db->step_limit)
        db->stopped = STOP_STEPS;
    else if (now_seconds() > db->deadline)
        db->stopped = STOP_TIME;
    return db->stopped != STOP_NONE;
}

/* Starts the budget of one statement (a query) or of the whole set-up script. */
static void budget_start(ccoe_sqldb *db, long steps, double seconds)
{
    db->steps = 0;
    db->step_limit = steps;
    db->deadline = now_seconds() + seconds;
    db->stopped = STOP_NONE;
    db->denied[0] = '\0';
}

/* ---- functions: the allow-list and the guarded ones ---- */

/* Pure functions that SELECT-style scoring needs (SQLite 3.40 names; a few later ones such as
 * concat are listed so that a newer SQLite keeps them). Everything else is denied: functions
 * that take or return pointers (fts3_tokenizer), load code (load_extension), read the
 * connection's state (changes, last_insert_rowid, sqlite_*), or exist only in some builds. */
static const char *const allowed_functions[] = {
    /* scalar */
    "abs", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "ifnull", "iif",
    "instr", "length", "like", "likelihood", "likely", "lower", "ltrim", "match", "max", "min",
    "nullif", "octet_length", "printf", "quote", "replace", "round", "rtrim", "sign", "substr",
    "substring", "trim", "typeof", "unicode", "unlikely", "upper",
    /* math */
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh",
    "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power",
    "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
    /* date and time */
    "current_date", "current_time", "current_timestamp", "date", "datetime", "julianday",
    "strftime", "time", "unixepoch",
    /* aggregate */
    "avg", "count", "group_concat", "string_agg", "sum", "total",
    /* window */
    "cume_dist", "dense_rank", "first_value", "lag", "last_value", "lead", "nth_value", "ntile",
    "percent_rank", "rank", "row_number",
};

static int function_allowed(const char *name)
{
    for (size_t i = 0; i < sizeof allowed_functions / sizeof *allowed_functions; i++)
        if (strcasecmp(name, allowed_functions[i]) == 0)
            return 1;
    return 0;
}

/* Functions whose worst-case cost is about the product of their first two arguments' lengths
 * (LIKE/GLOB backtracking over '%', trim's character set, instr/replace's substring search).
 * max_pairs caps that product per call: like, glob and trim spend a few nanoseconds per pair
 * in the worst case, instr and replace compare with memcmp and are far cheaper per pair. */
typedef struct guarded_fn {
    const char *name;
    int nargs;
    double max_pairs;
} guarded_fn;

static const guarded_fn guarded[] = {
    {"like", 2, 1e7},  {"like", 3, 1e7},  {"glob", 2, 1e7},     {"trim", 2, 1e7},
    {"ltrim", 2, 1e7}, {"rtrim", 2, 1e7}, {"instr", 2, 1e10}, {"replace", 3, 1e10},
};
#define N_GUARDED (sizeof guarded / sizeof *guarded)

struct ccoe_sqlguard {
    sqlite3 *helper; /* a private empty connection that runs the built-ins */
    sqlite3_stmt *st[N_GUARDED]; /* "SELECT name(?1, ...)", prepared on first use */
    struct guard_arg {
        ccoe_sqldb *db;
        int fn;
    } arg[N_GUARDED];
};

/* A guarded function: refuses the call after the deadline or over the cost cap, else runs the
 * built-in with the same arguments on the helper connection and returns its result or error. */
static void guarded_call(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    const struct guard_arg *a = sqlite3_user_data(ctx);
    ccoe_sqldb *db = a->db;
    const guarded_fn *f = &guarded[a->fn];
    struct ccoe_sqlguard *g = db->guard;
    if (now_seconds() > db->deadline) {
        db->stopped = STOP_TIME;
        sqlite3_result_error(ctx, "out of wall time", -1);
        return;
    }
    double pairs = (double)sqlite3_value_bytes(argv[0]) * (double)sqlite3_value_bytes(argv[1]);
    if (pairs > f->max_pairs) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "%s() over %d x %d bytes exceeds the sandbox's cost limit of %.0e byte pairs "
                 "per call: use shorter arguments",
                 f->name, sqlite3_value_bytes(argv[0]), sqlite3_value_bytes(argv[1]),
                 f->max_pairs);
        sqlite3_result_error(ctx, msg, -1);
        return;
    }
    sqlite3_stmt *st = g->st[a->fn];
    if (!st) {
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT %s(?1, ?2%s)", f->name, f->nargs == 3 ? ", ?3" : "");
        if (sqlite3_prepare_v2(g->helper, sql, -1, &g->st[a->fn], NULL) != SQLITE_OK) {
            sqlite3_result_error(ctx, sqlite3_errmsg(g->helper), -1);
            return;
        }
        st = g->st[a->fn];
    }
    for (int i = 0; i < argc; i++)
        sqlite3_bind_value(st, i + 1, argv[i]);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        sqlite3_result_value(ctx, sqlite3_column_value(st, 0));
    else if (rc == SQLITE_TOOBIG)
        sqlite3_result_error_toobig(ctx);
    else if (rc == SQLITE_NOMEM)
        sqlite3_result_error_nomem(ctx);
    else
        sqlite3_result_error(ctx, sqlite3_errmsg(g->helper), -1);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* ---- the authorizer ---- */

static const char *const script_pragmas[] = {
    "application_id", "auto_vacuum", "cache_size",  "defer_foreign_keys", "encoding",
    "foreign_keys",   "journal_mode", "page_size",  "recursive_triggers", "synchronous",
    "temp_store",     "user_version",
};

/* Functions: the allow-list in every phase. The set-up script may also write and create, but not
 * ATTACH (that opens files) or run PRAGMAs other than the harmless ones above; queries only
 * read. (For SQLITE_FUNCTION the name is the fourth argument; for SQLITE_PRAGMA the third.) */
static int authorize(void *ctx, int action, const char *a, const char *b, const char *c,
                     const char *d)
{
    ccoe_sqldb *db = ctx;
    (void)c;
    (void)d;
    if (db->phase == PHASE_INTERNAL)
        return SQLITE_OK;
    if (action == SQLITE_FUNCTION) {
        if (b && function_allowed(b))
            return SQLITE_OK;
        snprintf(db->denied, sizeof db->denied, "%s", b ? b : "?");
        return SQLITE_DENY;
    }
    if (db->phase == PHASE_SCRIPT) {
        if (action == SQLITE_ATTACH || action == SQLITE_DETACH)
            return SQLITE_DENY;
        if (action == SQLITE_PRAGMA) {
            for (size_t i = 0; a && i < sizeof script_pragmas / sizeof *script_pragmas; i++)
                if (strcasecmp(a, script_pragmas[i]) == 0)
                    return SQLITE_OK;
            return SQLITE_DENY;
        }
        return SQLITE_OK;
    }
    switch (action) {
    case SQLITE_SELECT:
    case SQLITE_READ:
    case SQLITE_RECURSIVE:
        return SQLITE_OK;
    default:
        return SQLITE_DENY;
    }
}

/* ---- the process-wide heap limit around one statement ---- */

typedef struct heap_saved {
    sqlite3_int64 hard, soft;
} heap_saved;

/* Lets SQLite allocate at most `budget` more bytes until heap_leave; keeps a lower limit that
 * someone else set. Setting the hard limit may also lower the soft one, so both are saved. */
static heap_saved heap_enter(long long budget)
{
    heap_saved s = {sqlite3_hard_heap_limit64(-1), sqlite3_soft_heap_limit64(-1)};
    sqlite3_int64 lim = sqlite3_memory_used() + budget;
    if (s.hard <= 0 || lim < s.hard)
        sqlite3_hard_heap_limit64(lim);
    return s;
}

static void heap_leave(heap_saved s)
{
    sqlite3_hard_heap_limit64(s.hard);
    sqlite3_soft_heap_limit64(s.soft);
}

/* ---- opening ---- */

ccoe_sqldb_limits ccoe_sqldb_limits_default(void)
{
    return (ccoe_sqldb_limits){.max_steps = 20000000,
                               .max_seconds = 2.0,
                               .max_bytes = 1 << 20,
                               .script_max_steps = 500000000,
                               .script_max_seconds = 30.0,
                               .max_heap = 256LL << 20,
                               .max_length = 100000};
}

static ccoe_status check_limits(const ccoe_sqldb_limits *l, ccoe_error *err)
{
    if (l->max_steps <= 0 || l->script_max_steps <= 0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "SQL sandbox: max_steps %ld and script_max_steps %ld must be > 0",
                              l->max_steps, l->script_max_steps);
    if (!(l->max_seconds > 0) || !(l->script_max_seconds > 0))
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "SQL sandbox: max_seconds %g and script_max_seconds %g must be > 0",
                              l->max_seconds, l->script_max_seconds);
    if (l->max_bytes == 0 || l->max_heap <= 0 || l->max_length <= 0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "SQL sandbox: max_bytes %zu, max_heap %lld and max_length %d must "
                              "be > 0",
                              l->max_bytes, l->max_heap, l->max_length);
    return CCOE_OK;
}

/* Turns on the defensive settings of connection c and checks that they took. */
static ccoe_status harden(sqlite3 *c, ccoe_error *err)
{
    static const struct {
        int op, value;
        const char *name;
    } cfg[] = {
        {SQLITE_DBCONFIG_DEFENSIVE, 1, "SQLITE_DBCONFIG_DEFENSIVE"},
        {SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, "SQLITE_DBCONFIG_TRUSTED_SCHEMA"},
        {SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, 0, "SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER"},
        {SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, "SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION"},
    };
    for (size_t i = 0; i < sizeof cfg / sizeof *cfg; i++) {
        int now = -1;
        if (sqlite3_db_config(c, cfg[i].op, cfg[i].value, &now) != SQLITE_OK || now != cfg[i].value)
            return ccoe_error_set(err, CCOE_ERR_INTERNAL,
                                  "SQLite %s does not accept %s = %d, which the SQL sandbox needs: "
                                  "use SQLite 3.31 or newer",
                                  sqlite3_libversion(), cfg[i].name, cfg[i].value);
    }
    sqlite3_limit(c, SQLITE_LIMIT_ATTACHED, 0);
    sqlite3_limit(c, SQLITE_LIMIT_LIKE_PATTERN_LENGTH, LIKE_PATTERN_LENGTH);
    sqlite3_limit(c, SQLITE_LIMIT_WORKER_THREADS, 0);
    return CCOE_OK;
}

/* Opens the helper connection and installs the guarded functions on db->db. */
static ccoe_status install_guards(ccoe_sqldb *db, int max_length, ccoe_error *err)
{
    struct ccoe_sqlguard *g = calloc(1, sizeof *g);
    if (!g)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for the SQL sandbox");
    db->guard = g;
    if (sqlite3_open_v2(":memory:", &g->helper, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MEMORY,
                        NULL) != SQLITE_OK)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot open the SQL sandbox's helper: %s",
                              g->helper ? sqlite3_errmsg(g->helper) : "out of memory");
    ccoe_status s = harden(g->helper, err);
    if (s != CCOE_OK)
        return s;
    sqlite3_limit(g->helper, SQLITE_LIMIT_LENGTH, max_length);
    for (size_t i = 0; i < N_GUARDED; i++) {
        g->arg[i] = (struct guard_arg){.db = db, .fn = (int)i};
        if (sqlite3_create_function(db->db, guarded[i].name, guarded[i].nargs,
                                    SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS,
                                    &g->arg[i], guarded_call, NULL, NULL) != SQLITE_OK)
            return ccoe_error_set(err, CCOE_ERR_INTERNAL,
                                  "cannot install the SQL sandbox's guard for %s(): %s",
                                  guarded[i].name, sqlite3_errmsg(db->db));
    }
    return CCOE_OK;
}

/* The message for a set-up script that failed (err already names the database). */
static ccoe_status script_failed(ccoe_sqldb *db, const ccoe_sqldb_limits *l, int rc,
                                 const char *msg, ccoe_error *err)
{
    static const char what[] = "the set-up SQL script (sqlite_script) that builds the database";
    if (db->stopped == STOP_STEPS)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s ran out of its budget of %ld VM steps: shorten the script or "
                              "stop its recursion",
                              what, l->script_max_steps);
    if (db->stopped == STOP_TIME)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s ran out of its budget of %g s wall time: shorten the script or "
                              "stop its recursion",
                              what, l->script_max_seconds);
    if (rc == SQLITE_NOMEM)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s ran out of its memory budget of %lld MiB of SQLite heap: make "
                              "the database smaller",
                              what, l->max_heap >> 20);
    if (rc == SQLITE_TOOBIG)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s made a string, blob or row longer than the sandbox's limit of "
                              "%d bytes",
                              what, l->max_length);
    if (db->denied[0])
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s calls the SQL function '%s', which the sandbox does not allow "
                              "(only pure scalar, aggregate, window and date functions)",
                              what, db->denied);
    return ccoe_error_set(err, CCOE_ERR_FORMAT, "%s failed: %s", what, msg);
}

ccoe_status ccoe_sqldb_open(ccoe_sqldb *db, const char *path, const char *script,
                            ccoe_error *err)
{
    return ccoe_sqldb_open_limits(db, path, script, NULL, err);
}

ccoe_status ccoe_sqldb_open_limits(ccoe_sqldb *db, const char *path, const char *script,
                                   const ccoe_sqldb_limits *lim, ccoe_error *err)
{
    memset(db, 0, sizeof *db);
    const ccoe_sqldb_limits l = lim ? *lim : ccoe_sqldb_limits_default();
    ccoe_status s = check_limits(&l, err);
    if (s != CCOE_OK)
        return s;
    db->max_steps = l.max_steps;
    db->max_seconds = l.max_seconds;
    db->max_bytes = l.max_bytes;
    db->max_heap = l.max_heap;
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
    s = harden(db->db, err);
    if (s == CCOE_OK)
        s = install_guards(db, l.max_length, err);
    if (s != CCOE_OK) {
        ccoe_sqldb_close(db);
        return s;
    }
    sqlite3_limit(db->db, SQLITE_LIMIT_LENGTH, l.max_length);
    sqlite3_set_authorizer(db->db, authorize, db);
    sqlite3_progress_handler(db->db, PROGRESS_EVERY, on_progress, db);
    char *msg = NULL;
    if (!path) {
        db->phase = PHASE_SCRIPT;
        budget_start(db, l.script_max_steps, l.script_max_seconds);
        heap_saved h = heap_enter(l.max_heap);
        rc = sqlite3_exec(db->db, script, NULL, NULL, &msg);
        heap_leave(h);
        if (rc != SQLITE_OK) {
            script_failed(db, &l, rc, msg ? msg : sqlite3_errmsg(db->db), err);
            sqlite3_free(msg);
            ccoe_sqldb_close(db);
            return CCOE_ERR_FORMAT;
        }
    }
    /* the first read also checks that a file is a database at all */
    db->phase = PHASE_INTERNAL;
    budget_start(db, l.max_steps, l.max_seconds);
    heap_saved h = heap_enter(l.max_heap);
    rc = sqlite3_exec(db->db, "PRAGMA query_only = 1; SELECT count(*) FROM sqlite_schema;", NULL,
                      NULL, &msg);
    heap_leave(h);
    if (rc != SQLITE_OK) {
        ccoe_error_set(err, CCOE_ERR_FORMAT, "'%s' is not a usable SQLite database: %s", what,
                       msg ? msg : sqlite3_errmsg(db->db));
        sqlite3_free(msg);
        ccoe_sqldb_close(db);
        return CCOE_ERR_FORMAT;
    }
    db->phase = PHASE_QUERY;
    sqlite3_limit(db->db, SQLITE_LIMIT_SQL_LENGTH, QUERY_SQL_LENGTH);
    sqlite3_limit(db->db, SQLITE_LIMIT_EXPR_DEPTH, QUERY_EXPR_DEPTH);
    sqlite3_limit(db->db, SQLITE_LIMIT_COMPOUND_SELECT, QUERY_COMPOUND_SELECT);
    sqlite3_limit(db->db, SQLITE_LIMIT_VDBE_OP, QUERY_VDBE_OP);
    sqlite3_limit(db->db, SQLITE_LIMIT_FUNCTION_ARG, QUERY_FUNCTION_ARG);
    sqlite3_limit(db->db, SQLITE_LIMIT_VARIABLE_NUMBER, QUERY_VARIABLE_NUMBER);
    return CCOE_OK;
}

void ccoe_sqldb_close(ccoe_sqldb *db)
{
    if (db->db)
        sqlite3_close_v2(db->db);
    db->db = NULL;
    if (db->guard) {
        for (size_t i = 0; i < N_GUARDED; i++)
            sqlite3_finalize(db->guard->st[i]);
        if (db->guard->helper)
            sqlite3_close_v2(db->guard->helper);
        free(db->guard);
    }
    db->guard = NULL;
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

/* The error of a query that SQLite stopped with rc (after prepare or step). */
static ccoe_status query_failed(ccoe_sqldb *db, int rc, int compiling, ccoe_error *err)
{
    if (db->stopped == STOP_STEPS)
        return ccoe_error_set(err, CCOE_ERR_ARG, "the query ran out of its budget of %ld VM steps",
                              db->max_steps);
    if (db->stopped == STOP_TIME)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "the query ran out of its budget of %g s wall time", db->max_seconds);
    if (db->denied[0])
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "the SQL function '%s' is not allowed in the sandbox (only pure "
                              "scalar, aggregate, window and date functions such as count, sum, "
                              "substr, round, date): rewrite the query without it",
                              db->denied);
    if (rc == SQLITE_NOMEM)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "the query ran out of its memory budget of %lld MiB of SQLite heap",
                              db->max_heap >> 20);
    if (rc == SQLITE_TOOBIG)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "the query made a string, blob, row or statement longer than the "
                              "sandbox's limit (%d bytes for values, %d for the SQL): %s",
                              sqlite3_limit(db->db, SQLITE_LIMIT_LENGTH, -1),
                              sqlite3_limit(db->db, SQLITE_LIMIT_SQL_LENGTH, -1),
                              sqlite3_errmsg(db->db));
    return ccoe_error_set(err, CCOE_ERR_ARG, compiling ? "SQL does not compile: %s"
                                                       : "the query failed: %s",
                          sqlite3_errmsg(db->db));
}

ccoe_status ccoe_sqldb_query(ccoe_sqldb *db, const char *sql, int ordered, char **out,
                             ccoe_error *err)
{
    *out = NULL;
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    budget_start(db, db->max_steps, db->max_seconds);
    heap_saved h = heap_enter(db->max_heap);
    int rc = sqlite3_prepare_v2(db->db, sql, -1, &st, &tail);
    if (rc != SQLITE_OK) {
        heap_leave(h);
        return query_failed(db, rc, 1, err);
    }
    if (!st) {
        heap_leave(h);
        return ccoe_error_set(err, CCOE_ERR_ARG, "no SQL statement in '%s'", sql);
    }
    ccoe_status s = CCOE_OK;
    if (tail && !only_space_or_semicolons(tail))
        s = ccoe_error_set(err, CCOE_ERR_ARG, "more than one SQL statement: only one is run");
    else if (!sqlite3_stmt_readonly(st))
        s = ccoe_error_set(err, CCOE_ERR_ARG, "the SQL statement would write: only reads run");
    sbuf b = {.max = db->max_bytes};
    int ncol = sqlite3_column_count(st), rows = 0;
    rc = SQLITE_DONE;
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
        s = query_failed(db, rc, 0, err);
    sqlite3_finalize(st);
    heap_leave(h);
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
