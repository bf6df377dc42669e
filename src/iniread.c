/* iniread.c - the INI reader configs and study files share (see iniread.h for its rules). */
#include "iniread.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

/* One key seen in this text: section and key, and the line that set it. */
typedef struct seen_key {
    char *name; /* "section\0key" packed as "section]key" (']' cannot occur in a section) */
    int line;
} seen_key;

typedef struct ini_ctx {
    const char *origin;
    const char *pos; /* reader position in the text */
    int line;        /* line last handed to libinih */
    ccoe_ini_key_fn on_key;
    ccoe_ini_section_fn on_section;
    void *user;
    ccoe_error *err;
    ccoe_status status; /* of the first failure; CCOE_OK while none */
    int fail_line;
    seen_key *seen; /* open addressing, cap a power of two */
    size_t n_seen, cap_seen;
} ini_ctx;

static void where_of(const ini_ctx *c, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s line %d", c->origin, c->line);
}

static void failed(ini_ctx *c, ccoe_status st)
{
    if (c->status == CCOE_OK) {
        c->status = st;
        c->fail_line = c->line;
    }
}

static size_t hash_str(const char *s)
{
    size_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The line an earlier key of this name was set on, or 0 after recording it at `line`; -1 when
 * out of memory. */
static int remember(ini_ctx *c, const char *name, int line)
{
    if (2 * (c->n_seen + 1) > c->cap_seen) {
        size_t cap = c->cap_seen ? 2 * c->cap_seen : 64;
        seen_key *t = calloc(cap, sizeof *t);
        if (!t)
            return -1;
        for (size_t i = 0; i < c->cap_seen; i++)
            if (c->seen[i].name) {
                size_t j = hash_str(c->seen[i].name) & (cap - 1);
                while (t[j].name)
                    j = (j + 1) & (cap - 1);
                t[j] = c->seen[i];
            }
        free(c->seen);
        c->seen = t;
        c->cap_seen = cap;
    }
    size_t j = hash_str(name) & (c->cap_seen - 1);
    while (c->seen[j].name) {
        if (strcmp(c->seen[j].name, name) == 0)
            return c->seen[j].line;
        j = (j + 1) & (c->cap_seen - 1);
    }
    size_t n = strlen(name) + 1;
    c->seen[j].name = malloc(n);
    if (!c->seen[j].name)
        return -1;
    memcpy(c->seen[j].name, name, n);
    c->seen[j].line = line;
    c->n_seen++;
    return 0;
}

/* Hands libinih one line: counts it, drops leading blanks, refuses one that does not fit, and
 * reports section headers. */
static char *read_line(char *buf, int num, void *stream)
{
    ini_ctx *c = stream;
    if (c->status != CCOE_OK || !*c->pos)
        return NULL;
    const char *p = c->pos;
    const char *nl = strchr(p, '\n');
    const char *end = nl ? nl : p + strlen(p);
    c->pos = nl ? nl + 1 : end;
    c->line++;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && isspace((unsigned char)end[-1]))
        end--;
    size_t len = (size_t)(end - p);
    char where[600];
    where_of(c, where, sizeof where);
    if (num < 1 || len > (size_t)num - 1) {
        failed(c, ccoe_error_set(c->err, CCOE_ERR_CONFIG,
                                 "line too long (%zu characters; at most %d) (%s): shorten the "
                                 "value",
                                 len, num - 1, where));
        return NULL;
    }
    memcpy(buf, p, len);
    buf[len] = '\0';
    if (c->on_section && len > 1 && buf[0] == '[') {
        char *close = strchr(buf, ']');
        if (close) {
            char name[200];
            size_t n = (size_t)(close - buf - 1);
            snprintf(name, sizeof name, "%.*s", (int)n, buf + 1);
            char *a = name, *b = name + strlen(name);
            while (*a && isspace((unsigned char)*a))
                a++;
            while (b > a && isspace((unsigned char)b[-1]))
                *--b = '\0';
            ccoe_status st = c->on_section(c->user, a, where, c->line, c->err);
            if (st != CCOE_OK) {
                failed(c, st);
                return NULL;
            }
        }
    }
    return buf;
}

static int on_ini_key(void *user, const char *section, const char *key, const char *value)
{
    ini_ctx *c = user;
    if (c->status != CCOE_OK)
        return 0;
    char where[600];
    where_of(c, where, sizeof where);
    char name[512];
    snprintf(name, sizeof name, "%s]%s", section, key);
    int before = remember(c, name, c->line);
    if (before < 0) {
        failed(c, ccoe_error_set(c->err, CCOE_ERR_NOMEM, "out of memory parsing %s", c->origin));
        return 0;
    }
    if (before > 0) {
        failed(c, ccoe_error_set(c->err, CCOE_ERR_CONFIG,
                                 "%s%s%s is set twice (lines %d and %d) (%s): keep one", section,
                                 *section ? "." : "", key, before, c->line, where));
        return 0;
    }
    ccoe_status st = c->on_key(c->user, section, key, value, where, c->line, c->err);
    if (st != CCOE_OK) {
        failed(c, st);
        return 0;
    }
    return 1;
}

ccoe_status ccoe_ini_parse(const char *text, const char *origin, ccoe_ini_key_fn on_key,
                           ccoe_ini_section_fn on_section, void *user, ccoe_error *err)
{
    ini_ctx c = {.origin = origin && *origin ? origin : "config text",
                 .pos = text ? text : "",
                 .on_key = on_key,
                 .on_section = on_section,
                 .user = user,
                 .err = err};
    int r = ini_parse_stream(read_line, &c, on_ini_key, &c);
    ccoe_status st = CCOE_OK;
    if (r == -2) {
        st = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory parsing %s", c.origin);
    } else if (c.status != CCOE_OK && (r <= 0 || r >= c.fail_line)) {
        st = c.status;
    } else if (r > 0) {
        /* a line libinih could not parse, before any callback failed: quote it */
        const char *p = text;
        for (int i = 1; i < r && p; i++) {
            p = strchr(p, '\n');
            if (p)
                p++;
        }
        int len = 0;
        if (p)
            while (p[len] && p[len] != '\n' && p[len] != '\r' && len < 80)
                len++;
        st = ccoe_error_set(err, CCOE_ERR_CONFIG,
                            "syntax error (%s line %d): '%.*s' is neither '[section]' nor "
                            "'key = value'",
                            c.origin, r, len, p ? p : "");
    }
    for (size_t i = 0; i < c.cap_seen; i++)
        free(c.seen[i].name);
    free(c.seen);
    return st;
}
