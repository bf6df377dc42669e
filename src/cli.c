/* cli.c - the command table, and the parser and help text generated from it (cli.h).
 *
 * Every command line goes through ccoe_cli_main: find the command (one or two words), check
 * its options against the declaration (unknown ones named with the closest declared one,
 * missing values, numbers out of range, required options, positional counts), then run the
 * handler. Nothing here knows what a command does.
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"

/* The commands in the order `ccoe help` lists them (commands.def). */
static const ccoe_cli_cmd *const k_cmds[] = {
#define CCOE_COMMAND(name) &ccoe_cmd_##name,
#include "commands.def"
#undef CCOE_COMMAND
};
enum { N_CMDS = sizeof k_cmds / sizeof k_cmds[0] };

#define WRAP_COL 100 /* help lines are wrapped before this column */

/* ---- looking up commands and options ---- */

/* Length of the first word of a command name ("tokenizer" of "tokenizer encode"). */
static size_t first_word_len(const char *name)
{
    const char *sp = strchr(name, ' ');
    return sp ? (size_t)(sp - name) : strlen(name);
}

/* 1 if the first word of cmd's name is `word` and the name has a second word. */
static int in_group(const ccoe_cli_cmd *c, const char *word)
{
    const size_t n = first_word_len(c->name);
    return c->name[n] == ' ' && strlen(word) == n && strncmp(c->name, word, n) == 0;
}

/* The command named by words[0] (and words[1] for a two-word name); *used = words taken. */
static const ccoe_cli_cmd *find_cmd(int n_words, char **words, int *used)
{
    if (n_words < 1)
        return NULL;
    const char *w = strcmp(words[0], "--help-config") == 0 ? "help-config" : words[0];
    for (int i = 0; i < N_CMDS; i++) {
        const ccoe_cli_cmd *c = k_cmds[i];
        if (strcmp(c->name, w) == 0) {
            *used = 1;
            return c;
        }
        if (n_words >= 2 && in_group(c, w) && strcmp(c->name + strlen(w) + 1, words[1]) == 0) {
            *used = 2;
            return c;
        }
    }
    return NULL;
}

static int is_group(const char *word)
{
    for (int i = 0; i < N_CMDS; i++)
        if (in_group(k_cmds[i], word))
            return 1;
    return 0;
}

const ccoe_cli_cmd *ccoe_cli_lookup(int argc, char **argv)
{
    int used = 0;
    return find_cmd(argc - 1, argv + 1, &used);
}

/* Edit distance of a and b (insertions, deletions, substitutions), for "did you mean". */
static int edit_distance(const char *a, const char *b)
{
    enum { M = 64 };
    const size_t la = strlen(a) < M ? strlen(a) : M, lb = strlen(b) < M ? strlen(b) : M;
    int row[M + 1];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            const int up = row[j];
            int v = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < v)
                v = up + 1;
            if (row[j - 1] + 1 < v)
                v = row[j - 1] + 1;
            row[j] = v;
            diag = up;
        }
    }
    return row[lb];
}

/* Close enough to suggest: at most a third of the longer name wrong, and at least one letter. */
static int close_enough(int dist, const char *word)
{
    return dist <= (int)(strlen(word) + 2) / 3;
}

/* The option of c named by s ("--name" or "--name=value": *inline_val then points past '='). */
static int find_opt(const ccoe_cli_cmd *c, const char *s, const char **inline_val)
{
    const char *eq = s[1] == '-' ? strchr(s, '=') : NULL;
    const size_t n = eq ? (size_t)(eq - s) : strlen(s);
    *inline_val = eq ? eq + 1 : NULL;
    for (int k = 0; k < c->n_opts; k++)
        if (strlen(c->opts[k].name) == n && strncmp(c->opts[k].name, s, n) == 0)
            return k;
    return -1;
}

/* ---- help text ---- */

/* Writes the len bytes of w after a space (none at the start of a line), first breaking the
 * line when w would pass WRAP_COL; continuation lines start with `indent` spaces. *col is the
 * current column, *fresh 1 at the start of a line. */
static void put_word(FILE *out, const char *w, int len, int *col, int *fresh, int indent)
{
    if (!*fresh && *col + 1 + len > WRAP_COL) {
        fprintf(out, "\n%*s", indent, "");
        *col = indent;
        *fresh = 1;
    }
    if (!*fresh) {
        fputc(' ', out);
        (*col)++;
    }
    fprintf(out, "%.*s", len, w);
    *col += len;
    *fresh = 0;
}

/* Writes s word by word through put_word. */
static void put_wrapped(FILE *out, const char *s, int *col, int *fresh, int indent)
{
    while (*s) {
        const char *sp = s;
        while (*sp && *sp != ' ')
            sp++;
        if (sp > s)
            put_word(out, s, (int)(sp - s), col, fresh, indent);
        s = *sp ? sp + 1 : sp;
    }
}

/* "[--name METAVAR]" of an option in a synopsis (without brackets when required). */
static void opt_usage(const ccoe_cli_opt *o, char *buf, size_t cap)
{
    const int req = (o->flags & CCOE_OPT_REQUIRED) != 0, rep = (o->flags & CCOE_OPT_REPEAT) != 0;
    snprintf(buf, cap, "%s%s%s%s%s%s", req ? "" : "[", o->name, o->metavar ? " " : "",
             o->metavar ? o->metavar : "", req ? "" : "]", rep ? "..." : "");
}

/* "ccoe NAME ARGS [--opt V]..." wrapped (an option's usage is never split). */
static void print_synopsis(FILE *out, const ccoe_cli_cmd *c)
{
    int col = fprintf(out, "usage: ccoe %s%s%s", c->name, *c->args ? " " : "", c->args);
    int fresh = 0;
    const int indent = 12 + (int)first_word_len(c->name);
    for (int k = 0; k < c->n_opts; k++) {
        char u[160];
        opt_usage(&c->opts[k], u, sizeof u);
        put_word(out, u, (int)strlen(u), &col, &fresh, indent);
    }
    fputc('\n', out);
}

/* What a value of o must be ("a whole number 1..100"), for errors and help. */
static void opt_takes(const ccoe_cli_opt *o, char *buf, size_t cap)
{
    if (o->takes) {
        snprintf(buf, cap, "%s", o->takes);
        return;
    }
    char list[512] = "";
    if (o->choices_fn)
        o->choices_fn(list, sizeof list);
    else if (o->choices) /* "a|b" -> "a, b" */
        for (size_t i = 0, n = 0; o->choices[i] && n + 3 < sizeof list; i++) {
            if (o->choices[i] == '|')
                list[n++] = ',', list[n++] = ' ';
            else
                list[n++] = o->choices[i];
            list[n] = '\0';
        }
    switch (o->kind) {
    case CCOE_OPT_INT:
    case CCOE_OPT_UINT:
        if (o->max >= 1e18)
            snprintf(buf, cap, "a whole number >= %.0f", o->min);
        else
            snprintf(buf, cap, "a whole number %.0f..%.0f", o->min, o->max);
        break;
    case CCOE_OPT_DOUBLE:
        snprintf(buf, cap, "a number %g..%g", o->min, o->max);
        break;
    default:
        snprintf(buf, cap, "%s%s", *list ? "one of: " : "any text", list);
    }
}

static void print_cmd_help(FILE *out, const ccoe_cli_cmd *c)
{
    print_synopsis(out, c);
    fprintf(out, "%s\n", c->summary);
    if (c->details)
        fprintf(out, "%s", c->details);
    if (c->n_opts > 0)
        fprintf(out, "\noptions:\n");
    for (int k = 0; k < c->n_opts; k++) {
        const ccoe_cli_opt *o = &c->opts[k];
        char head[96], takes[600], extra[800] = "";
        snprintf(head, sizeof head, "%s%s%s", o->name, o->metavar ? " " : "",
                 o->metavar ? o->metavar : "");
        int col = fprintf(out, "  %-24s", head), fresh = 1;
        if (col > 26) {
            fprintf(out, "\n%26s", "");
            col = 26;
        }
        put_wrapped(out, o->help, &col, &fresh, 26);
        /* the range or choices, the default, required, repeatable: what applies */
        takes[0] = '\0';
        if (o->kind != CCOE_OPT_FLAG && o->kind != CCOE_OPT_PATH &&
            (o->kind != CCOE_OPT_STRING || o->choices || o->choices_fn || o->takes))
            opt_takes(o, takes, sizeof takes);
        snprintf(extra, sizeof extra, "%s%s%s%s%s", takes,
                 o->def ? "; default " : "", o->def ? o->def : "",
                 o->flags & CCOE_OPT_REQUIRED ? "; required" : "",
                 o->flags & CCOE_OPT_REPEAT ? "; repeatable" : "");
        const char *e = extra[0] == ';' ? extra + 2 : extra;
        if (*e) {
            char paren[820];
            snprintf(paren, sizeof paren, "(%s)", e);
            put_wrapped(out, paren, &col, &fresh, 26);
        }
        fputc('\n', out);
    }
    fprintf(out, "\nunder MPI (mpirun -np P ccoe %s ...): %s\n", c->name,
            c->collective ? "every rank runs it (collective)" : "rank 0 runs it alone");
}

/* Every command of a group ("tokenizer": encode and decode). */
static void print_group_help(FILE *out, const char *word)
{
    int first = 1;
    for (int i = 0; i < N_CMDS; i++) {
        if (!in_group(k_cmds[i], word))
            continue;
        if (!first)
            fputc('\n', out);
        print_cmd_help(out, k_cmds[i]);
        first = 0;
    }
}

static void print_usage(FILE *out)
{
    fprintf(out, "usage: ccoe COMMAND [ARGS]\n"
                 "  ccoe help COMMAND (or ccoe COMMAND --help): the command's options, their "
                 "ranges and defaults\n\ncommands:\n");
    for (int i = 0; i < N_CMDS; i++) {
        const ccoe_cli_cmd *c = k_cmds[i];
        int req = 0;
        fprintf(out, "  %s%s%s", c->name, *c->args ? " " : "", c->args);
        for (int k = 0; k < c->n_opts; k++)
            if (c->opts[k].flags & CCOE_OPT_REQUIRED)
                fprintf(out, " %s %s", c->opts[k].name, c->opts[k].metavar), req++;
        fprintf(out, "%s\n        %s\n", c->n_opts > req ? " [OPTIONS]" : "", c->summary);
    }
    fprintf(out, "  help [COMMAND]\n        this text, or one command's\n\n"
                 "under MPI (mpirun -np P ccoe COMMAND ...) every rank runs");
    for (int i = 0, n = 0; i < N_CMDS; i++)
        if (k_cmds[i]->collective)
            fprintf(out, "%s%s", n++ ? ", " : " ", k_cmds[i]->name);
    fprintf(out, ":\ntrain is data parallel, or with --train-experts all|NAME,... trains "
                 "several CCoE experts at once,\nplaced over the ranks; study trains each "
                 "variant on all P ranks the same way; eval splits its\nbatches over the "
                 "ranks; the other commands run on rank 0 only\n");
    char gates[256];
    ccoe_gate_list_names(gates, sizeof gates, 0);
    fprintf(out, "GATE (moe.gate, --moe): %s\n", gates);
}

/* ---- errors ---- */

/* Usage errors come from the command line, the same on every rank: rank 0 prints. c NULL: the
 * command is unknown (the full usage follows the message). */
static int usage_error(const ccoe_cli_cmd *c, ccoe_comm *comm, const char *what, const char *arg)
{
    if (comm && comm->size > 1) {
        comm->failed_rank = 0; /* every rank fails the same way: no abort needed */
        if (comm->rank != 0)
            return CCOE_EXIT_USAGE;
    }
    fprintf(stderr, "ccoe: usage error: %s%s%s\n\n", what, *arg ? ": " : "", arg);
    if (c) {
        print_synopsis(stderr, c);
        fprintf(stderr, "(ccoe help %s: every option with its range and default)\n", c->name);
    } else {
        print_usage(stderr);
    }
    return CCOE_EXIT_USAGE;
}

int ccoe_cli_usage_error(const ccoe_cli_args *a, const char *what, const char *arg)
{
    return usage_error(a->cmd, a->comm, what, arg);
}

int ccoe_cli_fail(const ccoe_cli_args *a, const ccoe_error *err)
{
    const ccoe_comm *comm = a->comm;
    if (comm && comm->size > 1) {
        const int r = comm->rank, f = comm->failed_rank;
        if (r == 0 || f < 0 || f == r)
            fprintf(stderr, "ccoe: [rank %d] %s: %s\n", r, ccoe_status_name(err->status),
                    err->msg);
    } else {
        fprintf(stderr, "ccoe: %s: %s\n", ccoe_status_name(err->status), err->msg);
    }
    return ccoe_error_exit_code(err);
}

/* ---- parsing ---- */

/* 1 if v is one of the "a|b|c" or "a, b, c" entries of list. */
static int in_list(const char *list, const char *v)
{
    const size_t n = strlen(v);
    for (const char *p = list; *p;) {
        while (*p == '|' || *p == ',' || *p == ' ')
            p++;
        const char *e = p;
        while (*e && *e != '|' && *e != ',' && *e != ' ')
            e++;
        if (e > p && (size_t)(e - p) == n && strncmp(p, v, n) == 0)
            return 1;
        p = e;
    }
    return 0;
}

/* Parses and range-checks v as option o's value into val; 0 if v is not allowed. */
static int parse_value(const ccoe_cli_opt *o, const char *v, ccoe_cli_val *val)
{
    char *end = NULL;
    switch (o->kind) {
    case CCOE_OPT_INT: {
        errno = 0;
        const long long x = strtoll(v, &end, 10);
        if (!*v || *end || errno || (double)x < o->min || (double)x > o->max)
            return 0;
        val->i = x;
        return 1;
    }
    case CCOE_OPT_UINT: {
        errno = 0;
        const unsigned long long x = strtoull(v, &end, 10);
        if (!*v || *end || *v == '-' || errno || (double)x < o->min || (double)x > o->max)
            return 0;
        val->u = x;
        return 1;
    }
    case CCOE_OPT_DOUBLE: {
        const double x = strtod(v, &end);
        if (!*v || *end || !(x >= o->min && x <= o->max)) /* NaN fails both */
            return 0;
        val->d = x;
        return 1;
    }
    case CCOE_OPT_STRING:
        if (o->check && !o->check(v))
            return 0;
        if (o->choices && !in_list(o->choices, v))
            return 0;
        if (o->choices_fn) {
            char list[512];
            o->choices_fn(list, sizeof list);
            if (!in_list(list, v))
                return 0;
        }
        return 1;
    default:
        return 1;
    }
}

static void args_free(ccoe_cli_args *a)
{
    for (int k = 0; a->vals && k < a->cmd->n_opts; k++)
        free(a->vals[k].all);
    free(a->vals);
    free(a->pos);
}

/* A word that is meant as an option: "--x", or "-" and a letter ("-o"). "-", "-5": no. */
static int looks_like_option(const char *s)
{
    return s[0] == '-' && (s[1] == '-' || isalpha((unsigned char)s[1]));
}

/* Fills a from the words after the command's name. Returns -1 when the handler should run,
 * else the exit code (0 after --help, CCOE_EXIT_USAGE after an error). */
static int parse(const ccoe_cli_cmd *c, int argc, char **argv, ccoe_cli_args *a)
{
    a->pos = calloc((size_t)argc + 1, sizeof *a->pos);
    a->vals = calloc((size_t)c->n_opts + 1, sizeof *a->vals);
    if (!a->pos || !a->vals) {
        fprintf(stderr, "ccoe: out of memory parsing the command line\n");
        return 1;
    }
    for (int k = 0; k < c->n_opts; k++) {
        const ccoe_cli_opt *o = &c->opts[k];
        ccoe_cli_val *v = &a->vals[k];
        v->last = -1;
        if ((o->flags & CCOE_OPT_REPEAT) && !(v->all = calloc((size_t)argc + 1, sizeof *v->all))) {
            fprintf(stderr, "ccoe: out of memory parsing the command line\n");
            return 1;
        }
        /* the defaults are parsed like given values (a bad one is a bug in the table) */
        if (o->def && o->kind != CCOE_OPT_FLAG && !parse_value(o, o->def, v)) {
            fprintf(stderr, "ccoe: internal error: %s %s: default '%s' is not allowed\n",
                    c->name, o->name, o->def);
            abort();
        }
    }
    char msg[800], arg[400];
    int only_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (only_pos || !looks_like_option(s)) {
            a->pos[a->n_pos++] = argv[i];
            continue;
        }
        if (strcmp(s, "--") == 0) { /* the words after it are positional */
            only_pos = 1;
            continue;
        }
        if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            if (!a->comm || a->comm->rank == 0)
                print_cmd_help(stdout, c);
            return 0;
        }
        const char *inl = NULL;
        const int k = find_opt(c, s, &inl);
        if (k < 0 && c->free_pos && s[1] != '-') {
            a->pos[a->n_pos++] = argv[i];
            continue;
        }
        if (k < 0) {
            int best = -1, best_d = 1 << 30;
            const size_t n = inl ? (size_t)(inl - 1 - s) : strlen(s);
            char name[128];
            snprintf(name, sizeof name, "%.*s", (int)(n < 127 ? n : 127), s);
            for (int j = 0; j < c->n_opts; j++) {
                const int d = edit_distance(name, c->opts[j].name);
                if (d < best_d) {
                    best_d = d;
                    best = j;
                }
            }
            snprintf(msg, sizeof msg, "unknown option of %s", c->name);
            if (best >= 0 && close_enough(best_d, name))
                snprintf(arg, sizeof arg, "%s (did you mean %s?)", name, c->opts[best].name);
            else
                snprintf(arg, sizeof arg, "%s", name);
            return usage_error(c, a->comm, msg, arg);
        }
        const ccoe_cli_opt *o = &c->opts[k];
        ccoe_cli_val *v = &a->vals[k];
        const char *val = NULL;
        if (o->kind == CCOE_OPT_FLAG) {
            if (inl) {
                snprintf(msg, sizeof msg, "%s takes no value, not", o->name);
                return usage_error(c, a->comm, msg, inl);
            }
        } else if (inl) {
            val = inl;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            snprintf(msg, sizeof msg, "%s needs a value (%s) after it", o->name,
                     o->metavar ? o->metavar : "VALUE");
            return usage_error(c, a->comm, msg, "");
        }
        if (val && !parse_value(o, val, v)) {
            char takes[600];
            opt_takes(o, takes, sizeof takes);
            snprintf(msg, sizeof msg, "%s takes %s, not", o->name, takes);
            return usage_error(c, a->comm, msg, val);
        }
        if (v->all)
            v->all[v->count] = val;
        v->count++;
        v->last = i;
        v->str = val;
    }
    if (a->n_pos < c->min_pos) {
        if (c->pos_error)
            return usage_error(c, a->comm, c->pos_error, "");
        snprintf(msg, sizeof msg, "%s needs %s", c->name, c->args);
        return usage_error(c, a->comm, msg, "");
    }
    if (c->max_pos >= 0 && a->n_pos > c->max_pos) {
        snprintf(msg, sizeof msg, "%s takes %s%s, not also", c->name,
                 c->max_pos ? "only " : "no arguments", c->max_pos ? c->args : "");
        return usage_error(c, a->comm, msg, a->pos[c->max_pos]);
    }
    for (int k = 0; k < c->n_opts; k++) {
        const ccoe_cli_opt *o = &c->opts[k];
        if ((o->flags & CCOE_OPT_REQUIRED) && a->vals[k].count == 0) {
            snprintf(msg, sizeof msg, "%s needs %s %s", c->name, o->name,
                     o->metavar ? o->metavar : "");
            return usage_error(c, a->comm, msg, "");
        }
    }
    return -1;
}

/* ---- accessors ---- */

static int opt_index(const ccoe_cli_args *a, const char *name)
{
    for (int k = 0; k < a->cmd->n_opts; k++)
        if (strcmp(a->cmd->opts[k].name, name) == 0)
            return k;
    fprintf(stderr, "ccoe: internal error: command %s declares no option %s\n", a->cmd->name,
            name);
    abort();
}

const ccoe_cli_val *ccoe_cli_val_of(const ccoe_cli_args *a, const char *name)
{
    return &a->vals[opt_index(a, name)];
}

int ccoe_cli_flag(const ccoe_cli_args *a, const char *name)
{
    return ccoe_cli_val_of(a, name)->count;
}

const char *ccoe_cli_str(const ccoe_cli_args *a, const char *name)
{
    const int k = opt_index(a, name);
    return a->vals[k].count ? a->vals[k].str : a->cmd->opts[k].def;
}

long long ccoe_cli_int(const ccoe_cli_args *a, const char *name)
{
    return ccoe_cli_val_of(a, name)->i;
}

uint64_t ccoe_cli_uint(const ccoe_cli_args *a, const char *name)
{
    return ccoe_cli_val_of(a, name)->u;
}

double ccoe_cli_double(const ccoe_cli_args *a, const char *name)
{
    return ccoe_cli_val_of(a, name)->d;
}

const char *const *ccoe_cli_all(const ccoe_cli_args *a, const char *name, int *n)
{
    const ccoe_cli_val *v = ccoe_cli_val_of(a, name);
    *n = v->count;
    return v->all;
}

/* ---- dispatch ---- */

/* "tokenizer takes: encode TOKENIZER [FILE|-] or decode TOKENIZER [FILE|-]" */
static int group_error(const char *word, ccoe_comm *comm)
{
    char msg[600];
    int len = snprintf(msg, sizeof msg, "%s takes: ", word);
    for (int i = 0, n = 0; i < N_CMDS; i++) {
        const ccoe_cli_cmd *c = k_cmds[i];
        if (in_group(c, word) && len < (int)sizeof msg)
            len += snprintf(msg + len, sizeof msg - (size_t)len, "%s%s%s%s", n++ ? " or " : "",
                            c->name + strlen(word) + 1, *c->args ? " " : "", c->args);
    }
    if (comm && comm->size > 1 && comm->rank != 0)
        return CCOE_EXIT_USAGE;
    fprintf(stderr, "ccoe: usage error: %s\n(ccoe help %s: its commands and their options)\n",
            msg, word);
    return CCOE_EXIT_USAGE;
}

static int unknown_command(const char *word, ccoe_comm *comm)
{
    int best = -1, best_d = 1 << 30;
    for (int i = 0; i < N_CMDS; i++) {
        char w[64];
        snprintf(w, sizeof w, "%.*s", (int)first_word_len(k_cmds[i]->name), k_cmds[i]->name);
        const int d = edit_distance(word, w);
        if (d < best_d) {
            best_d = d;
            best = i;
        }
    }
    char arg[300];
    if (best >= 0 && close_enough(best_d, word))
        snprintf(arg, sizeof arg, "%s (did you mean %.*s?)", word,
                 (int)first_word_len(k_cmds[best]->name), k_cmds[best]->name);
    else
        snprintf(arg, sizeof arg, "%s", word);
    return usage_error(NULL, comm, "unknown command", arg);
}

/* ccoe help [COMMAND [SUBCOMMAND]] */
static int run_help(int n, char **words, ccoe_comm *comm)
{
    if (n == 0) {
        print_usage(stdout);
        return 0;
    }
    int used = 0;
    const ccoe_cli_cmd *c = find_cmd(n, words, &used);
    if (c && used == n) {
        print_cmd_help(stdout, c);
        return 0;
    }
    if (n == 1 && is_group(words[0])) {
        print_group_help(stdout, words[0]);
        return 0;
    }
    return unknown_command(words[n == 2 && is_group(words[0]) ? 1 : 0], comm);
}

int ccoe_cli_main(int argc, char **argv, ccoe_comm *comm)
{
    if (argc < 2) {
        print_usage(stderr);
        return CCOE_EXIT_USAGE;
    }
    const char *w = argv[1];
    if (strcmp(w, "--help") == 0 || strcmp(w, "-h") == 0)
        return run_help(0, NULL, comm);
    if (strcmp(w, "help") == 0)
        return run_help(argc - 2, argv + 2, comm);
    if (strcmp(w, "--version") == 0) {
        printf("ccoe %s\n", CCOE_VERSION);
        return 0;
    }
    int used = 0;
    const ccoe_cli_cmd *c = find_cmd(argc - 1, argv + 1, &used);
    if (!c) {
        if (is_group(w)) {
            if (argc == 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
                print_group_help(stdout, w);
                return 0;
            }
            return group_error(w, comm);
        }
        return unknown_command(w, comm);
    }
    ccoe_cli_args a = {.cmd = c, .comm = comm};
    int rc = parse(c, argc - 1 - used, argv + 1 + used, &a);
    if (rc < 0)
        rc = c->run(&a);
    args_free(&a);
    return rc;
}
