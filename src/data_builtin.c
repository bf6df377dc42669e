/* data_builtin.c - generator of the embedded default data set ("builtin").
 *
 * Five clearly different domains, each about CCOE_BUILTIN_BYTES of text, generated from
 * templates with a fixed internal seed (independent of the run's seed), so every machine and
 * every run sees the same text:
 *   arith   - arithmetic exercises "37+45=82", "6*7=42", "91-17=74" and word problems
 *             ("Tom has 3 apples and gets 4 more. How many apples does Tom have now? 7");
 *             task: prompt "37+45=", answer "82", ended by '\n'.
 *   strings - string manipulation "reverse: abcde -> edcba", "sort: dbca -> abcd",
 *             "upper: abc -> ABC"; task: prompt "reverse: abcde -> ", answer "edcba".
 *   code    - small Python and C functions with random identifiers, loops, ifs and returns.
 *   prose   - short English narrative paragraphs (names, places, objects, feelings).
 *   sql     - "-- comment" + query pairs over a small shop schema, and questions over the shop
 *             database (shop_fill: four tables, a few dozen rows each): "-- Q: How many
 *             customers live in Paris?\n" + the gold query on the next line; task: that
 *             prompt, scored by running the decoded SQL on the database (execution match).
 * Task kinds (labels for per-kind accuracy): arith "equation" (operands up to 999),
 * "word" (operands up to 60), "word_small" (one-digit operands: the easy tier that a small
 * model learns first); strings "reverse"/"sort"/"upper"; sql "sql_count"/"sql_list"/
 * "sql_agg"/"sql_join".
 * Each domain's text is a sequence of documents separated by one empty line; no document
 * contains an empty line, so the text is exactly what data.c's text-file reader splits back
 * into the same documents. Every task line is unique within its domain (a prompt never repeats),
 * so a task from the validation part has not been seen in training. Task examples are recorded
 * only in the second half of each domain's text: the validation part is at the end and at most
 * half of a domain (config: val_fraction <= 0.5), and data.c keeps only tasks whose document lies
 * wholly in the validation part.
 * This file only generates text; tokenizing, splitting and packing are data.c's.
 */
#include "data_builtin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

#define CCOE_BUILTIN_SEED 0x63636f6564617461ULL /* "ccoedata" */
#define CCOE_BUILTIN_BYTES 200000

/* ---- generator state: the domain being written, its rng, and a prompt de-duplication set ---- */

typedef struct gen {
    ccoe_rng rng;
    ccoe_builtin_domain *dom;
    size_t cap;          /* bytes allocated for dom->text */
    size_t task_cap;
    int oom;
    uint64_t *seen;      /* open-addressing set of prompt hashes (0 = empty) */
    size_t seen_cap, seen_n;
    int record_tasks;    /* 1 in the second half of the documents */
    const struct shop_db *db; /* the sql domain's database (its questions use its values) */
} gen;

static uint64_t rnd(gen *g, uint64_t n) { return ccoe_rng_below(&g->rng, n); }
static int chance(gen *g, int percent) { return (int)rnd(g, 100) < percent; }
static int range(gen *g, int lo, int hi) { return lo + (int)rnd(g, (uint64_t)(hi - lo + 1)); }
#define PICK(g, arr) ((arr)[rnd((g), sizeof(arr) / sizeof((arr)[0]))])

static void reserve(gen *g, size_t extra)
{
    ccoe_builtin_domain *d = g->dom;
    if (g->oom || d->len + extra + 1 <= g->cap)
        return;
    size_t cap = g->cap ? g->cap : 4096;
    while (cap < d->len + extra + 1)
        cap *= 2;
    char *p = realloc(d->text, cap);
    if (!p) {
        g->oom = 1;
        return;
    }
    d->text = p;
    g->cap = cap;
}

static void emitf(gen *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emitf(gen *g, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        g->oom = 1;
        return;
    }
    reserve(g, (size_t)n);
    if (g->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(g->dom->text + g->dom->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    g->dom->len += (size_t)n;
}

static void emit(gen *g, const char *s) { emitf(g, "%s", s); }

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h ? h : 1;
}

/* Inserts the prompt's hash; returns 0 if it was already there (the caller draws again). */
static int seen_insert(gen *g, const char *prompt, size_t n)
{
    if (g->oom)
        return 1;
    if (2 * (g->seen_n + 1) > g->seen_cap) {
        size_t cap = g->seen_cap ? 2 * g->seen_cap : 1 << 14;
        uint64_t *t = calloc(cap, sizeof *t);
        if (!t) {
            g->oom = 1;
            return 1;
        }
        for (size_t i = 0; i < g->seen_cap; i++) {
            if (g->seen[i]) {
                size_t j = g->seen[i] & (cap - 1);
                while (t[j])
                    j = (j + 1) & (cap - 1);
                t[j] = g->seen[i];
            }
        }
        free(g->seen);
        g->seen = t;
        g->seen_cap = cap;
    }
    uint64_t h = fnv1a(prompt, n);
    size_t j = h & (g->seen_cap - 1);
    while (g->seen[j]) {
        if (g->seen[j] == h)
            return 0;
        j = (j + 1) & (g->seen_cap - 1);
    }
    g->seen[j] = h;
    g->seen_n++;
    return 1;
}

/* Writes "<prompt><answer>\n" as one line and records it as a task of kind `kind` scored by
 * `match` (ccoe_task_match) (second half only). */
static void emit_task_line(gen *g, const char *prompt, const char *answer, const char *kind,
                           int match)
{
    ccoe_builtin_domain *d = g->dom;
    size_t offset = d->len;
    emitf(g, "%s%s\n", prompt, answer);
    if (g->oom || !g->record_tasks)
        return;
    if (d->n_tasks == g->task_cap) {
        size_t cap = g->task_cap ? 2 * g->task_cap : 1024;
        ccoe_builtin_task *t = realloc(d->tasks, cap * sizeof *t);
        if (!t) {
            g->oom = 1;
            return;
        }
        d->tasks = t;
        g->task_cap = cap;
    }
    d->tasks[d->n_tasks++] = (ccoe_builtin_task){.doc = d->n_docs,
                                                 .offset = offset,
                                                 .prompt_len = (uint32_t)strlen(prompt),
                                                 .answer_len = (uint32_t)strlen(answer),
                                                 .kind = kind,
                                                 .match = match};
}

/* ---- shared word pools ---- */

typedef struct person {
    const char *name;
    int female;
} person;

static const person people[] = {
    {"Anna", 1},  {"Maria", 1}, {"Elena", 1}, {"Sofia", 1},  {"Clara", 1}, {"Nora", 1},
    {"Lucy", 1},  {"Ines", 1},  {"Greta", 1}, {"Alice", 1},  {"Tom", 0},   {"Peter", 0},
    {"Jonas", 0}, {"Marco", 0}, {"Daniel", 0}, {"Felix", 0}, {"Hugo", 0},  {"Samuel", 0},
    {"Oscar", 0}, {"Leo", 0},
};

static const person *pick_person(gen *g, const person *other)
{
    const person *p;
    do {
        p = &PICK(g, people);
    } while (p == other);
    return p;
}

/* ---- arith ---- */

static int arith_number(gen *g)
{
    int r = (int)rnd(g, 100);
    if (r < 25)
        return range(g, 0, 9);
    if (r < 80)
        return range(g, 10, 99);
    return range(g, 100, 999);
}

static const char *const items[] = {"apples",   "pencils", "marbles", "books", "coins",
                                    "stickers", "cookies", "stamps",  "shells", "cards"};

static void arith_line(gen *g)
{
    char prompt[256], answer[32];
    const char *kind;
    for (;;) {
        int a, b, c, tier = (int)rnd(g, 100);
        if (tier < 35) { /* the easy tier: one-digit word problems */
            const person *p = pick_person(g, NULL);
            const char *it = PICK(g, items);
            kind = "word_small";
            if (chance(g, 55)) {
                a = range(g, 1, 9), b = range(g, 1, 9), c = a + b;
                snprintf(prompt, sizeof prompt,
                         "%s has %d %s and buys %d more. How many %s? ", p->name, a, it, b, it);
            } else {
                a = range(g, 2, 9), b = range(g, 1, a), c = a - b;
                snprintf(prompt, sizeof prompt,
                         "%s has %d %s and loses %d. How many %s are left? ", p->name, a, it, b,
                         it);
            }
        } else if (tier < 75) {
            kind = "equation";
            int op = (int)rnd(g, 100);
            if (op < 45) {
                a = arith_number(g);
                b = arith_number(g);
                c = a + b;
                snprintf(prompt, sizeof prompt, "%d+%d=", a, b);
            } else if (op < 75) {
                a = arith_number(g);
                b = arith_number(g);
                if (a < b) {
                    int t = a;
                    a = b;
                    b = t;
                }
                c = a - b;
                snprintf(prompt, sizeof prompt, "%d-%d=", a, b);
            } else {
                a = range(g, 2, 19);
                b = range(g, 2, 99);
                c = a * b;
                snprintf(prompt, sizeof prompt, "%d*%d=", a, b);
            }
        } else {
            const person *p = pick_person(g, NULL);
            const char *it = PICK(g, items);
            const char *pr = p->female ? "she" : "he";
            kind = "word";
            switch (rnd(g, 6)) {
            case 0:
                a = range(g, 1, 50), b = range(g, 1, 50), c = a + b;
                snprintf(prompt, sizeof prompt,
                         "%s has %d %s and gets %d more. How many %s does %s have now? ",
                         p->name, a, it, b, it, p->name);
                break;
            case 1:
                a = range(g, 1, 50), b = range(g, 1, 50), c = a + b;
                snprintf(prompt, sizeof prompt,
                         "%s found %d %s in the morning and %d more in the evening. "
                         "How many %s did %s find? ",
                         p->name, a, it, b, it, pr);
                break;
            case 2:
                a = range(g, 2, 60), b = range(g, 1, a), c = a - b;
                snprintf(prompt, sizeof prompt,
                         "%s has %d %s and gives away %d. How many %s are left? ", p->name, a,
                         it, b, it);
                break;
            case 3:
                a = range(g, 2, 60), b = range(g, 1, a), c = a - b;
                snprintf(prompt, sizeof prompt,
                         "There were %d %s on the table. %s took %d. How many %s are still "
                         "on the table? ",
                         a, it, p->name, b, it);
                break;
            case 4:
                a = range(g, 2, 9), b = range(g, 2, 12), c = a * b;
                snprintf(prompt, sizeof prompt,
                         "%s buys %d bags with %d %s in each bag. How many %s is that? ",
                         p->name, a, b, it, it);
                break;
            default:
                a = range(g, 2, 9), b = range(g, 2, 12), c = a * b;
                snprintf(prompt, sizeof prompt,
                         "%s puts %s in %d rows of %d. How many %s are there? ", p->name, it,
                         a, b, it);
                break;
            }
        }
        snprintf(answer, sizeof answer, "%d", c);
        if (seen_insert(g, prompt, strlen(prompt)))
            break;
    }
    emit_task_line(g, prompt, answer, kind, CCOE_MATCH_EXACT);
}

static void gen_arith_doc(gen *g)
{
    int n = range(g, 8, 16);
    for (int i = 0; i < n; i++)
        arith_line(g);
}

/* ---- strings ---- */

static void strings_line(gen *g)
{
    char word[16], out[16], prompt[64];
    for (;;) {
        int op = (int)rnd(g, 100);
        int len = op < 50 ? range(g, 3, 8) : op < 75 ? range(g, 3, 7) : range(g, 3, 8);
        for (int i = 0; i < len; i++)
            word[i] = (char)('a' + rnd(g, 26));
        word[len] = '\0';
        const char *name;
        if (op < 50) {
            name = "reverse";
            for (int i = 0; i < len; i++)
                out[i] = word[len - 1 - i];
        } else if (op < 75) {
            name = "sort";
            memcpy(out, word, (size_t)len);
            for (int i = 1; i < len; i++) /* insertion sort */
                for (int j = i; j > 0 && out[j - 1] > out[j]; j--) {
                    char t = out[j];
                    out[j] = out[j - 1];
                    out[j - 1] = t;
                }
        } else {
            name = "upper";
            for (int i = 0; i < len; i++)
                out[i] = (char)(word[i] - 'a' + 'A');
        }
        out[len] = '\0';
        snprintf(prompt, sizeof prompt, "%s: %s -> ", name, word);
        if (seen_insert(g, prompt, strlen(prompt))) {
            emit_task_line(g, prompt, out, name, CCOE_MATCH_EXACT);
            return;
        }
    }
}

static void gen_strings_doc(gen *g)
{
    int n = range(g, 8, 16);
    for (int i = 0; i < n; i++)
        strings_line(g);
}

/* ---- code ---- */

static const char *const verbs[] = {"compute", "count", "find",  "update", "merge",
                                    "parse",   "scale", "filter", "sum",   "check",
                                    "load",    "clamp", "shift", "build",  "collect",
                                    "reset",   "apply", "select", "split", "normalize"};
static const char *const nouns[] = {"items",  "values", "scores", "totals", "buffer",
                                    "nodes",  "weights", "prices", "lines", "names",
                                    "records", "counts", "points", "rows",  "keys",
                                    "queue",  "table",  "grid",   "steps", "samples"};
static const char *const scalars[] = {"limit", "step", "offset", "factor", "size",
                                      "start", "threshold", "width", "base", "target"};
static const char *const accs[] = {"total", "acc", "result", "best", "count", "sum", "out"};
static const char *const cmps[] = {"<", ">", "<=", ">=", "==", "!="};

typedef struct code_fn {
    int c;               /* 1: C, 0: Python */
    const char *arr;     /* the array/list parameter */
    const char *p;       /* the scalar parameter */
    const char *acc;     /* the accumulator local */
} code_fn;

static void indent(gen *g, int depth)
{
    for (int i = 0; i < depth; i++)
        emit(g, "    ");
}

static void code_expr(gen *g, const code_fn *f, const char *elem)
{
    switch (rnd(g, 5)) {
    case 0: emitf(g, "%s", elem); break;
    case 1: emitf(g, "%s * %d", elem, range(g, 2, 9)); break;
    case 2: emitf(g, "%s - %s", elem, f->p); break;
    case 3: emitf(g, "%s + %d", elem, range(g, 1, 99)); break;
    default: emitf(g, "%s %% %d", elem, range(g, 2, 16)); break;
    }
}

static void code_cond(gen *g, const code_fn *f, const char *elem)
{
    switch (rnd(g, 3)) {
    case 0: emitf(g, "%s %s %s", elem, PICK(g, cmps), f->p); break;
    case 1: emitf(g, "%s %% %d == 0", elem, range(g, 2, 7)); break;
    default: {
        const char *cmp = PICK(g, cmps);
        emitf(g, "%s %s %d", elem, cmp, range(g, 0, 100));
        break;
    }
    }
}

/* One statement inside the loop over the elements (elem names the current element). */
static void code_inner(gen *g, const code_fn *f, const char *elem, int depth, int allow_if)
{
    int k = (int)rnd(g, allow_if ? 5 : 3);
    if (k >= 3) { /* if / else */
        indent(g, depth);
        emit(g, "if ");
        if (f->c)
            emit(g, "(");
        code_cond(g, f, elem);
        emit(g, f->c ? ") {\n" : ":\n");
        code_inner(g, f, elem, depth + 1, 0);
        if (chance(g, 40)) {
            indent(g, depth);
            emit(g, f->c ? "} else {\n" : "else:\n");
            code_inner(g, f, elem, depth + 1, 0);
        }
        if (f->c) {
            indent(g, depth);
            emit(g, "}\n");
        }
        return;
    }
    indent(g, depth);
    if (k == 0) {
        emitf(g, "%s += ", f->acc);
        code_expr(g, f, elem);
    } else if (k == 1) {
        emitf(g, "%s = %s * %d + ", f->acc, f->acc, range(g, 2, 31));
        code_expr(g, f, elem);
    } else {
        if (f->c)
            emitf(g, "if (%s > %s) %s = %s", elem, f->acc, f->acc, elem);
        else
            emitf(g, "%s = max(%s, %s)", f->acc, f->acc, elem);
    }
    emit(g, f->c ? ";\n" : "\n");
}

static void gen_python_fn(gen *g)
{
    /* one random draw per statement: the order of evaluation of arguments and initializers is
     * unspecified in C, and the text must not depend on the compiler */
    code_fn f = {.c = 0};
    f.arr = PICK(g, nouns);
    f.p = PICK(g, scalars);
    f.acc = PICK(g, accs);
    const char *verb = PICK(g, verbs);
    emitf(g, "def %s_%s(%s, %s):\n", verb, f.arr, f.arr, f.p);
    if (chance(g, 50))
        emitf(g, "    \"\"\"%c%ss the %s using %s.\"\"\"\n", verb[0] - 'a' + 'A', verb + 1, f.arr,
              f.p);
    emitf(g, "    %s = %d\n", f.acc, (int)rnd(g, 3));
    int loops = range(g, 1, 2);
    for (int l = 0; l < loops; l++) {
        if (chance(g, 60)) {
            const char *elem = l ? "y" : "x";
            emitf(g, "    for %s in %s:\n", elem, f.arr);
            int n = range(g, 1, 2);
            for (int i = 0; i < n; i++)
                code_inner(g, &f, elem, 2, 1);
        } else {
            const char *ix = l ? "j" : "i";
            char elem[64];
            snprintf(elem, sizeof elem, "%s[%s]", f.arr, ix);
            emitf(g, "    for %s in range(%s, len(%s)):\n", ix, chance(g, 50) ? "0" : "1",
                  f.arr);
            int n = range(g, 1, 2);
            for (int i = 0; i < n; i++)
                code_inner(g, &f, elem, 2, 1);
        }
    }
    if (chance(g, 30))
        emitf(g, "    if %s %s %s:\n        return %s\n", f.acc, PICK(g, cmps), f.p, f.p);
    emitf(g, "    return %s\n", f.acc);
}

static void gen_c_fn(gen *g)
{
    code_fn f = {.c = 1};
    f.arr = PICK(g, nouns);
    f.p = PICK(g, scalars);
    f.acc = PICK(g, accs);
    const char *verb = PICK(g, verbs);
    const char *type = chance(g, 70) ? "int" : "long";
    if (chance(g, 50))
        emitf(g, "/* %c%ss the %s using %s. */\n", verb[0] - 'a' + 'A', verb + 1, f.arr, f.p);
    emitf(g, "%s%s %s_%s(const %s *%s, int n, %s %s)\n{\n", chance(g, 50) ? "static " : "",
          type, verb, f.arr, type, f.arr, type, f.p);
    emitf(g, "    %s %s = %d;\n", type, f.acc, (int)rnd(g, 3));
    int loops = range(g, 1, 2);
    for (int l = 0; l < loops; l++) {
        const char *ix = l ? "j" : "i";
        char elem[64];
        snprintf(elem, sizeof elem, "%s[%s]", f.arr, ix);
        int is_while = chance(g, 25);
        if (!is_while)
            emitf(g, "    for (int %s = %s; %s < n; %s++) {\n", ix, chance(g, 50) ? "0" : "1", ix,
                  ix);
        else
            emitf(g, "    int %s = 0;\n    while (%s < n) {\n", ix, ix);
        int n = range(g, 1, 2);
        for (int i = 0; i < n; i++)
            code_inner(g, &f, elem, 2, 1);
        if (is_while)
            emitf(g, "        %s++;\n", ix);
        emit(g, "    }\n");
    }
    if (chance(g, 30))
        emitf(g, "    if (%s %s %s)\n        return %s;\n", f.acc, PICK(g, cmps), f.p, f.p);
    emitf(g, "    return %s;\n}\n", f.acc);
}

static void gen_code_doc(gen *g)
{
    if (chance(g, 50))
        gen_python_fn(g);
    else
        gen_c_fn(g);
}

/* ---- prose ---- */

static const char *const places[] = {"the market",       "the harbour",     "the old library",
                                     "the train station", "the bakery",     "the river",
                                     "the school",       "the hospital",    "the village square",
                                     "the forest",       "the museum",      "the post office"};
static const char *const times[] = {"In the morning", "Early on Sunday",
                                    "Late in the evening", "At noon",
                                    "After lunch", "Before sunrise",
                                    "On a rainy afternoon", "One cold winter day"};
static const char *const weathers[] = {"It was raining",       "The sun was bright",
                                       "A cold wind blew",     "Fog covered the streets",
                                       "Snow had fallen overnight"};
static const char *const objects[] = {"a red umbrella",    "an old map",      "a basket of apples",
                                      "a letter",          "a small wooden box", "a loaf of bread",
                                      "a blue notebook",   "a bunch of flowers", "a broken clock",
                                      "a pair of boots"};
static const char *const moves[] = {"walked", "ran", "drove", "hurried", "wandered", "cycled"};
static const char *const feelings[] = {"happy",   "tired", "worried", "surprised",
                                       "calm",    "curious", "nervous", "proud"};
static const char *const relations[] = {"brother", "sister", "friend", "neighbour",
                                        "cousin",  "teacher", "aunt",  "uncle"};
static const char *const topics[] = {"the weather", "an old song", "the harvest", "the new bridge",
                                     "a book they had both read", "the price of bread",
                                     "their childhood"};
static const char *const months[] = {"January", "March", "May", "July", "September", "November"};

static void gen_prose_doc(gen *g)
{
    const person *a = pick_person(g, NULL);
    const person *b = pick_person(g, a);
    const char *he = a->female ? "she" : "he", *He = a->female ? "She" : "He";
    const char *his = a->female ? "her" : "his", *His = a->female ? "Her" : "His";
    const char *him = a->female ? "her" : "him";
    const char *place = PICK(g, places);
    const char *object = PICK(g, objects);
    const char *rel = PICK(g, relations);
    const char *when = PICK(g, times);
    emitf(g, "%s, %s %s to %s.", when, a->name, PICK(g, moves), place);
    /* a random subset of the sentences below, told in this order */
    enum { WEATHER, LOOKING, MEET, ASKS, TALK, BUY, NOBODY, HOME, PROMISE, LETTER, RETURN, NS };
    int use[NS] = {0};
    int n = range(g, 3, 6);
    for (int i = 0; i < n; i++)
        use[rnd(g, NS)] = 1;
    if (use[ASKS] || use[TALK])
        use[MEET] = 1; /* b and "they" need an introduction */
    for (int k = 0; k < NS; k++) {
        if (!use[k])
            continue;
        switch (k) {
        case WEATHER: emitf(g, " %s, so %s carried %s.", PICK(g, weathers), he, object); break;
        case LOOKING:
            emitf(g, " %s was looking for %s %s, who worked at %s.", He, his, rel,
                  PICK(g, places));
            break;
        case MEET:
            emitf(g, " At %s, %s met %s, an old friend from school.", place, a->name, b->name);
            break;
        case ASKS:
            emitf(g, " %s was %s and asked %s about %s.", b->name, PICK(g, feelings), him,
                  object);
            break;
        case TALK: {
            int minutes = 5 * range(g, 1, 12);
            emitf(g, " They talked for %d minutes about %s.", minutes, PICK(g, topics));
            break;
        }
        case BUY: {
            const char *what = PICK(g, objects);
            emitf(g, " %s bought %s and paid %d coins for it.", a->name, what, range(g, 2, 40));
            break;
        }
        case NOBODY: emitf(g, " Nobody at %s knew where %s had come from.", place, object); break;
        case HOME: emitf(g, " When %s came home, %s felt %s.", he, he, PICK(g, feelings)); break;
        case PROMISE:
            emitf(g, " %s %s had promised to visit before the end of %s.", His, rel,
                  PICK(g, months));
            break;
        case LETTER:
            emitf(g, " The next day, %s wrote a letter to %s %s.", a->name, his, rel);
            break;
        default:
            emitf(g, " %s decided to return to %s the following week.", a->name, place);
            break;
        }
    }
    emit(g, "\n");
}

/* ---- sql ---- */

typedef struct sql_col {
    const char *name;
    const char *words; /* English description */
    int kind;          /* 0 int, 1 text, 2 real, 3 date */
    int measure;       /* 1: a quantity worth averaging or summing */
} sql_col;

typedef struct sql_table {
    const char *name;
    const char *words;
    sql_col cols[6];
    int n_cols;
} sql_table;

static const sql_table tables[] = {
    {"customers", "customers",
     {{"id", "id", 0, 0}, {"name", "name", 1, 0}, {"city", "city", 1, 0}, {"age", "age", 0, 1},
      {"joined", "join date", 3, 0}},
     5},
    {"products", "products",
     {{"id", "id", 0, 0}, {"name", "name", 1, 0}, {"category", "category", 1, 0},
      {"price", "price", 2, 1}, {"stock", "stock", 0, 1}},
     5},
    {"orders", "orders",
     {{"id", "id", 0, 0}, {"customer_id", "customer", 0, 0}, {"product_id", "product", 0, 0},
      {"quantity", "quantity", 0, 1}, {"total", "total", 2, 1}, {"ordered_at", "order date", 3, 0}},
     6},
    {"employees", "employees",
     {{"id", "id", 0, 0}, {"name", "name", 1, 0}, {"department", "department", 1, 0},
      {"salary", "salary", 2, 1}, {"manager_id", "manager", 0, 0}},
     5},
};

static const char *const cities[] = {"Lisbon", "Paris", "Oslo", "Berlin", "Madrid", "Rome",
                                     "Vienna", "Dublin"};
static const char *const categories[] = {"toys", "books", "garden", "kitchen", "music", "sports"};
static const char *const departments[] = {"sales", "support", "finance", "research", "legal"};

static void sql_value(gen *g, const sql_col *c, char *out, size_t cap)
{
    switch (c->kind) {
    case 0:
        snprintf(out, cap, "%d", strcmp(c->name, "age") == 0 ? range(g, 18, 80) : range(g, 1, 500));
        break;
    case 2: {
        int whole = range(g, 1, 999);
        snprintf(out, cap, "%d.%02d", whole, range(g, 0, 99));
        break;
    }
    case 3: {
        int y = range(g, 2015, 2024);
        int m = range(g, 1, 12);
        snprintf(out, cap, "'%d-%02d-%02d'", y, m, range(g, 1, 28));
        break;
    }
    default:
        if (strcmp(c->name, "city") == 0)
            snprintf(out, cap, "'%s'", PICK(g, cities));
        else if (strcmp(c->name, "category") == 0)
            snprintf(out, cap, "'%s'", PICK(g, categories));
        else if (strcmp(c->name, "department") == 0)
            snprintf(out, cap, "'%s'", PICK(g, departments));
        else
            snprintf(out, cap, "'%s'", PICK(g, people).name);
        break;
    }
}

static const char *cmp_words(const char *op)
{
    if (strcmp(op, "<") == 0) return "below";
    if (strcmp(op, ">") == 0) return "above";
    if (strcmp(op, "<=") == 0) return "at most";
    if (strcmp(op, ">=") == 0) return "at least";
    return "equal to";
}

static void sql_create(gen *g, const sql_table *t)
{
    static const char *const types[] = {"INTEGER", "TEXT", "REAL", "DATE"};
    emitf(g, "-- schema of the %s table\nCREATE TABLE %s (", t->words, t->name);
    for (int i = 0; i < t->n_cols; i++)
        emitf(g, "%s%s %s%s", i ? ", " : "", t->cols[i].name, types[t->cols[i].kind],
              i == 0 ? " PRIMARY KEY" : "");
    emit(g, ");\n");
}

static void sql_query(gen *g)
{
    const sql_table *t = &PICK(g, tables);
    const sql_col *c1 = &t->cols[range(g, 1, t->n_cols - 1)];
    const sql_col *c2 = &t->cols[range(g, 1, t->n_cols - 1)];
    char v[64];
    sql_value(g, c2, v, sizeof v);
    const char *op = c2->kind == 1 ? "=" : PICK(g, cmps);
    if (strcmp(op, "!=") == 0 || strcmp(op, "==") == 0)
        op = "=";
    switch (rnd(g, 8)) {
    case 0:
    case 1: {
        int lim = chance(g, 40) ? range(g, 1, 20) : 0;
        int desc = chance(g, 50);
        emitf(g, "-- %s of %s whose %s is %s %s", c1->words, t->words, c2->words, cmp_words(op), v);
        if (lim)
            emitf(g, ", %s %d by %s", desc ? "top" : "first", lim, c1->words);
        emitf(g, "\nSELECT %s FROM %s WHERE %s %s %s", c1->name, t->name, c2->name, op, v);
        if (lim)
            emitf(g, " ORDER BY %s %s LIMIT %d", c1->name, desc ? "DESC" : "ASC", lim);
        emit(g, ";\n");
        break;
    }
    case 2: {
        static const char *const aggs[] = {"AVG", "SUM", "MAX", "MIN"};
        static const char *const agg_words[] = {"average", "total", "largest", "smallest"};
        int k = (int)rnd(g, 4);
        const sql_col *num = &t->cols[1];
        while (!num->measure) /* every table has a measure column */
            num = &t->cols[range(g, 1, t->n_cols - 1)];
        emitf(g, "-- %s %s of %s whose %s is %s %s\nSELECT %s(%s) FROM %s WHERE %s %s %s;\n",
              agg_words[k], num->words, t->words, c2->words, cmp_words(op), v, aggs[k], num->name,
              t->name, c2->name, op, v);
        break;
    }
    case 3:
        emitf(g, "-- number of %s per %s\nSELECT %s, COUNT(*) FROM %s GROUP BY %s ORDER BY "
                 "COUNT(*) DESC;\n",
              t->words, c1->words, c1->name, t->name, c1->name);
        break;
    case 4: { /* customers joined with their orders */
        static const char *const ccols[] = {"name", "city", "age"};
        const sql_col *oc = &tables[2].cols[range(g, 3, 5)];
        const char *cc = PICK(g, ccols);
        int alias = chance(g, 50);
        const char *c = alias ? "c" : "customers", *o = alias ? "o" : "orders";
        char v2[64];
        sql_value(g, oc, v2, sizeof v2);
        const char *op2 = PICK(g, cmps);
        if (strcmp(op2, "!=") == 0 || strcmp(op2, "==") == 0)
            op2 = "=";
        emitf(g, "-- %s of customers with an order whose %s is %s %s\nSELECT DISTINCT %s.%s FROM "
                 "customers%s%s JOIN orders%s%s ON %s.customer_id = %s.id WHERE %s.%s %s %s;\n",
              cc, oc->words, cmp_words(op2), v2, c, cc, alias ? " " : "", alias ? c : "",
              alias ? " " : "", alias ? o : "", o, c, o, oc->name, op2, v2);
        break;
    }
    case 5: { /* orders joined with their products */
        static const char *const aggs[] = {"SUM", "AVG", "MAX"};
        static const char *const agg_words[] = {"total", "average", "largest"};
        int k = (int)rnd(g, 3);
        const sql_col *oc = &tables[2].cols[range(g, 3, 4)];
        const char *cat = PICK(g, categories);
        int year = range(g, 2015, 2024), by_year = chance(g, 50);
        emitf(g, "-- %s %s of %s orders", agg_words[k], oc->words, cat);
        if (by_year)
            emitf(g, " since %d", year);
        emitf(g, "\nSELECT %s(o.%s) FROM orders o JOIN products p ON p.id = o.product_id WHERE "
                 "p.category = '%s'",
              aggs[k], oc->name, cat);
        if (by_year)
            emitf(g, " AND o.ordered_at >= '%d-01-01'", year);
        emit(g, ";\n");
        break;
    }
    case 6: {
        char v2[64];
        sql_value(g, c1, v2, sizeof v2);
        emitf(g, "-- set %s to %s where %s is %s %s\nUPDATE %s SET %s = %s WHERE %s %s %s;\n",
              c1->words, v2, c2->words, cmp_words(op), v, t->name, c1->name, v2, c2->name, op, v);
        break;
    }
    default:
        emitf(g, "-- remove %s whose %s is %s %s\nDELETE FROM %s WHERE %s %s %s;\n", t->words,
              c2->words, cmp_words(op), v, t->name, c2->name, op, v);
        break;
    }
}

/* ---- sql: the shop database and natural-language questions over it ----
 *
 * The database has the four tables above with a few dozen rows each (fixed seed); its SQL script
 * (CREATE TABLE + INSERT) is the domain's sql_script, so SQL tasks are scored by running the
 * generated query on it (execution match). Questions are "-- Q: <question>\n" followed by the
 * gold query on one line; thresholds and names are drawn from the rows, so list questions have
 * non-empty answers. Every question is unique within the domain: the held-out ones are never
 * seen in training. */

#define SHOP_CUSTOMERS 60
#define SHOP_PRODUCTS 40
#define SHOP_ORDERS 200
#define SHOP_EMPLOYEES 30

typedef struct shop_db {
    struct { const char *name, *city; int age; char joined[16]; } cust[SHOP_CUSTOMERS];
    struct { char name[32]; const char *category; double price; int stock; } prod[SHOP_PRODUCTS];
    struct { int customer, product, quantity; double total; char at[16]; } ord[SHOP_ORDERS];
    struct { const char *name, *department; int salary, manager; } emp[SHOP_EMPLOYEES];
} shop_db;

static const char *const colours[] = {"red", "blue", "green", "small", "large", "old", "wooden",
                                      "silver"};
static const char *const things[] = {"kite", "lamp", "chair", "ball", "clock", "guitar", "pan",
                                     "tent", "puzzle", "racket"};

static void shop_date(ccoe_rng *r, char out[16])
{
    int y = 2015 + (int)ccoe_rng_below(r, 10);
    int m = 1 + (int)ccoe_rng_below(r, 12);
    int d = 1 + (int)ccoe_rng_below(r, 28);
    snprintf(out, 16, "%04u-%02u-%02u", (unsigned)y % 10000u, (unsigned)m % 100u, (unsigned)d % 100u);
}

static void shop_fill(shop_db *db, uint64_t seed)
{
    ccoe_rng r;
    ccoe_rng_seed(&r, seed);
    for (int i = 0; i < SHOP_CUSTOMERS; i++) {
        db->cust[i].name = people[ccoe_rng_below(&r, sizeof people / sizeof *people)].name;
        db->cust[i].city = cities[ccoe_rng_below(&r, sizeof cities / sizeof *cities)];
        db->cust[i].age = 18 + (int)ccoe_rng_below(&r, 63);
        shop_date(&r, db->cust[i].joined);
    }
    for (int i = 0; i < SHOP_PRODUCTS; i++) {
        const char *c = colours[ccoe_rng_below(&r, sizeof colours / sizeof *colours)];
        const char *t = things[ccoe_rng_below(&r, sizeof things / sizeof *things)];
        snprintf(db->prod[i].name, sizeof db->prod[i].name, "%s %s", c, t);
        db->prod[i].category = categories[ccoe_rng_below(&r, sizeof categories / sizeof *categories)];
        db->prod[i].price = (double)(100 + ccoe_rng_below(&r, 9900)) / 100.0;
        db->prod[i].stock = (int)ccoe_rng_below(&r, 201);
    }
    for (int i = 0; i < SHOP_ORDERS; i++) {
        db->ord[i].customer = 1 + (int)ccoe_rng_below(&r, SHOP_CUSTOMERS);
        db->ord[i].product = 1 + (int)ccoe_rng_below(&r, SHOP_PRODUCTS);
        db->ord[i].quantity = 1 + (int)ccoe_rng_below(&r, 10);
        db->ord[i].total = db->ord[i].quantity * db->prod[db->ord[i].product - 1].price;
        shop_date(&r, db->ord[i].at);
    }
    for (int i = 0; i < SHOP_EMPLOYEES; i++) {
        db->emp[i].name = people[ccoe_rng_below(&r, sizeof people / sizeof *people)].name;
        db->emp[i].department = departments[ccoe_rng_below(&r, sizeof departments /
                                                                 sizeof *departments)];
        db->emp[i].salary = 100 * (20 + (int)ccoe_rng_below(&r, 71));
        db->emp[i].manager = i == 0 ? 0 : 1 + (int)ccoe_rng_below(&r, (uint64_t)i);
    }
}

/* Writes the database as an SQL script (CREATE TABLE + INSERT) into g's text buffer. */
static void shop_script(gen *g, const shop_db *db)
{
    for (int t = 0; t < 4; t++) {
        static const char *const types[] = {"INTEGER", "TEXT", "REAL", "DATE"};
        emitf(g, "CREATE TABLE %s (", tables[t].name);
        for (int i = 0; i < tables[t].n_cols; i++)
            emitf(g, "%s%s %s%s", i ? ", " : "", tables[t].cols[i].name,
                  types[tables[t].cols[i].kind], i == 0 ? " PRIMARY KEY" : "");
        emit(g, ");\n");
    }
    for (int i = 0; i < SHOP_CUSTOMERS; i++)
        emitf(g, "INSERT INTO customers VALUES (%d, '%s', '%s', %d, '%s');\n", i + 1,
              db->cust[i].name, db->cust[i].city, db->cust[i].age, db->cust[i].joined);
    for (int i = 0; i < SHOP_PRODUCTS; i++)
        emitf(g, "INSERT INTO products VALUES (%d, '%s', '%s', %.2f, %d);\n", i + 1,
              db->prod[i].name, db->prod[i].category, db->prod[i].price, db->prod[i].stock);
    for (int i = 0; i < SHOP_ORDERS; i++)
        emitf(g, "INSERT INTO orders VALUES (%d, %d, %d, %d, %.2f, '%s');\n", i + 1,
              db->ord[i].customer, db->ord[i].product, db->ord[i].quantity, db->ord[i].total,
              db->ord[i].at);
    for (int i = 0; i < SHOP_EMPLOYEES; i++) {
        char mgr[16];
        if (db->emp[i].manager)
            snprintf(mgr, sizeof mgr, "%d", db->emp[i].manager);
        else
            snprintf(mgr, sizeof mgr, "NULL");
        emitf(g, "INSERT INTO employees VALUES (%d, '%s', '%s', %d.00, %s);\n", i + 1,
              db->emp[i].name, db->emp[i].department, db->emp[i].salary, mgr);
    }
}

/* Draws one question and its gold query; kind is its task kind. */
static void sql_draw_question(gen *g, char *q, size_t qn, char *sql, size_t sn, const char **kind)
{
    const shop_db *db = g->db;
    int ci = (int)rnd(g, SHOP_CUSTOMERS), pi = (int)rnd(g, SHOP_PRODUCTS);
    int ei = (int)rnd(g, SHOP_EMPLOYEES), oi = (int)rnd(g, SHOP_ORDERS);
    const char *city = db->cust[ci].city, *cat = db->prod[pi].category;
    const char *dep = db->emp[ei].department;
    int age = db->cust[ci].age, price = (int)db->prod[pi].price, stock = db->prod[pi].stock;
    int salary = db->emp[ei].salary, total = (int)db->ord[oi].total;
    /* thresholds below (above) the drawn row's value keep list answers non-empty */
    int lower = (int)rnd(g, 60), upper = (int)rnd(g, 60);
    switch (rnd(g, 25)) {
    case 0:
        *kind = "sql_count";
        snprintf(q, qn, "How many customers live in %s?", city);
        snprintf(sql, sn, "SELECT COUNT(*) FROM customers WHERE city = '%s';", city);
        break;
    case 1:
        *kind = "sql_list";
        snprintf(q, qn, "Which customers are older than %d?", age - 1 - lower % 20);
        snprintf(sql, sn, "SELECT name FROM customers WHERE age > %d;", age - 1 - lower % 20);
        break;
    case 2:
        *kind = "sql_count";
        snprintf(q, qn, "How many customers are younger than %d?", age + upper % 20);
        snprintf(sql, sn, "SELECT COUNT(*) FROM customers WHERE age < %d;", age + upper % 20);
        break;
    case 3:
        *kind = "sql_list";
        snprintf(q, qn, "Which customers from %s are at least %d years old?", city, age);
        snprintf(sql, sn, "SELECT name FROM customers WHERE city = '%s' AND age >= %d;",
                 db->cust[ci].city, age);
        break;
    case 4:
        *kind = "sql_agg";
        snprintf(q, qn, "What is the average age of customers in %s?", city);
        snprintf(sql, sn, "SELECT AVG(age) FROM customers WHERE city = '%s';", city);
        break;
    case 5:
        *kind = "sql_list";
        snprintf(q, qn, "Which products cost more than %d?", price - 1 - lower % 10);
        snprintf(sql, sn, "SELECT name FROM products WHERE price > %d;", price - 1 - lower % 10);
        break;
    case 6:
        *kind = "sql_count";
        snprintf(q, qn, "How many products cost less than %d?", price + 1 + upper % 10);
        snprintf(sql, sn, "SELECT COUNT(*) FROM products WHERE price < %d;", price + 1 + upper % 10);
        break;
    case 7:
        *kind = "sql_count";
        snprintf(q, qn, "How many %s products are there?", cat);
        snprintf(sql, sn, "SELECT COUNT(*) FROM products WHERE category = '%s';", cat);
        break;
    case 8: {
        static const char *const agg[] = {"MAX", "MIN"}, *const words[] = {"highest", "lowest"};
        int k = (int)rnd(g, 2);
        *kind = "sql_agg";
        snprintf(q, qn, "What is the %s price of %s products?", words[k], cat);
        snprintf(sql, sn, "SELECT %s(price) FROM products WHERE category = '%s';", agg[k], cat);
        break;
    }
    case 9:
        *kind = "sql_list";
        snprintf(q, qn, "Which products have fewer than %d items in stock?", stock + 1 + upper);
        snprintf(sql, sn, "SELECT name FROM products WHERE stock < %d;", stock + 1 + upper);
        break;
    case 10:
        *kind = "sql_count";
        snprintf(q, qn, "How many products have more than %d items in stock?", stock - lower);
        snprintf(sql, sn, "SELECT COUNT(*) FROM products WHERE stock > %d;", stock - lower);
        break;
    case 11:
        *kind = "sql_agg";
        snprintf(q, qn, "What is the total stock of %s products?", cat);
        snprintf(sql, sn, "SELECT SUM(stock) FROM products WHERE category = '%s';", cat);
        break;
    case 12:
        *kind = "sql_join";
        snprintf(q, qn, "How many orders did customers named %s place?", db->cust[ci].name);
        snprintf(sql, sn,
                 "SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE "
                 "c.name = '%s';",
                 db->cust[ci].name);
        break;
    case 13:
        *kind = "sql_join";
        snprintf(q, qn, "What is the sum of the totals of orders from %s?", city);
        snprintf(sql, sn,
                 "SELECT SUM(o.total) FROM orders o JOIN customers c ON c.id = o.customer_id "
                 "WHERE c.city = '%s';",
                 city);
        break;
    case 14:
        *kind = "sql_count";
        snprintf(q, qn, "How many orders have a total above %d?", total - lower);
        snprintf(sql, sn, "SELECT COUNT(*) FROM orders WHERE total > %d;", total - lower);
        break;
    case 15:
        *kind = "sql_join";
        snprintf(q, qn, "How many %s products were ordered in total?", cat);
        snprintf(sql, sn,
                 "SELECT SUM(o.quantity) FROM orders o JOIN products p ON p.id = o.product_id "
                 "WHERE p.category = '%s';",
                 cat);
        break;
    case 16:
        *kind = "sql_list";
        snprintf(q, qn, "Which employees work in %s?", dep);
        snprintf(sql, sn, "SELECT name FROM employees WHERE department = '%s';", dep);
        break;
    case 17:
        *kind = "sql_agg";
        snprintf(q, qn, "What is the average salary in %s?", dep);
        snprintf(sql, sn, "SELECT AVG(salary) FROM employees WHERE department = '%s';", dep);
        break;
    case 18:
        *kind = "sql_list";
        snprintf(q, qn, "Which employees earn more than %d?", salary - 100);
        snprintf(sql, sn, "SELECT name FROM employees WHERE salary > %d;", salary - 100);
        break;
    case 19:
        *kind = "sql_count";
        snprintf(q, qn, "How many employees earn less than %d?", salary + 100);
        snprintf(sql, sn, "SELECT COUNT(*) FROM employees WHERE salary < %d;", salary + 100);
        break;
    case 20: {
        int lo = price - lower % 10, hi = price + 1 + upper % 10;
        *kind = "sql_list";
        snprintf(q, qn, "Which products cost between %d and %d?", lo, hi);
        snprintf(sql, sn, "SELECT name FROM products WHERE price BETWEEN %d AND %d;", lo, hi);
        break;
    }
    case 21:
        *kind = "sql_count";
        snprintf(q, qn, "How many orders did the customer with id %d place?", ci + 1);
        snprintf(sql, sn, "SELECT COUNT(*) FROM orders WHERE customer_id = %d;", ci + 1);
        break;
    case 22:
        *kind = "sql_list";
        snprintf(q, qn, "What is the total of order %d?", oi + 1);
        snprintf(sql, sn, "SELECT total FROM orders WHERE id = %d;", oi + 1);
        break;
    case 23:
        *kind = "sql_join";
        snprintf(q, qn, "Who is the manager of employee %d?", ei + 1);
        snprintf(sql, sn,
                 "SELECT m.name FROM employees e JOIN employees m ON m.id = e.manager_id WHERE "
                 "e.id = %d;",
                 ei + 1);
        break;
    default:
        *kind = "sql_count";
        snprintf(q, qn, "How many orders have a quantity of at least %d?", 1 + lower % 10);
        snprintf(sql, sn, "SELECT COUNT(*) FROM orders WHERE quantity >= %d;", 1 + lower % 10);
        break;
    }
}

/* One unique question line; returns 0 (nothing written) if 64 draws found only seen ones. */
static int sql_question(gen *g)
{
    char q[160], prompt[192], sql[256];
    const char *kind = NULL;
    for (int tries = 0; tries < 64; tries++) {
        sql_draw_question(g, q, sizeof q, sql, sizeof sql, &kind);
        snprintf(prompt, sizeof prompt, "-- Q: %s\n", q);
        if (seen_insert(g, prompt, strlen(prompt))) {
            emit_task_line(g, prompt, sql, kind, CCOE_MATCH_SQL);
            return 1;
        }
    }
    return 0;
}

static void gen_sql_doc(gen *g)
{
    if (chance(g, 15))
        sql_create(g, &PICK(g, tables));
    int n = range(g, 2, 5);
    for (int i = 0; i < n; i++)
        if (!chance(g, 60) || !sql_question(g))
            sql_query(g);
}

/* ---- driver ---- */

typedef struct builtin_spec {
    const char *name;
    void (*doc)(gen *g);
    int has_tasks;
} builtin_spec;

static const builtin_spec specs[CCOE_BUILTIN_DOMAINS] = {
    {"arith", gen_arith_doc, 1}, {"strings", gen_strings_doc, 1}, {"code", gen_code_doc, 0},
    {"prose", gen_prose_doc, 0}, {"sql", gen_sql_doc, 1},
};

#define SHOP_SEED_TAG 0x73686f70ULL /* "shop" */

ccoe_status ccoe_builtin_generate(ccoe_builtin_set *set, ccoe_error *err)
{
    memset(set, 0, sizeof *set);
    for (int d = 0; d < CCOE_BUILTIN_DOMAINS; d++) {
        ccoe_builtin_domain *dom = &set->domains[d];
        set->n_domains = d + 1;
        snprintf(dom->name, sizeof dom->name, "%s", specs[d].name);
        dom->answer_stop = '\n';
        gen g = {.dom = dom};
        ccoe_rng_seed(&g.rng, ccoe_hash4(CCOE_BUILTIN_SEED, (uint64_t)d, 0, 0));
        shop_db *db = NULL;
        if (specs[d].doc == gen_sql_doc) {
            db = malloc(sizeof *db);
            if (!db)
                return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory generating builtin "
                                                           "domain '%s'", dom->name);
            shop_fill(db, ccoe_hash4(CCOE_BUILTIN_SEED, SHOP_SEED_TAG, 0, 0));
            ccoe_builtin_domain script = {0};
            gen gs = {.dom = &script};
            shop_script(&gs, db);
            dom->sql_script = script.text;
            g.oom = gs.oom;
            g.db = db;
        }
        while (dom->len < CCOE_BUILTIN_BYTES && !g.oom) {
            if (dom->n_docs)
                emit(&g, "\n"); /* the empty line between documents */
            g.record_tasks = specs[d].has_tasks && dom->len >= CCOE_BUILTIN_BYTES / 2;
            specs[d].doc(&g);
            dom->n_docs++;
        }
        free(g.seen);
        free(db);
        if (g.oom)
            return ccoe_error_set(err, CCOE_ERR_NOMEM,
                                  "out of memory generating builtin domain '%s'", dom->name);
    }
    return CCOE_OK;
}

void ccoe_builtin_free(ccoe_builtin_set *set)
{
    for (int d = 0; d < CCOE_BUILTIN_DOMAINS; d++) {
        free(set->domains[d].text);
        free(set->domains[d].tasks);
        free(set->domains[d].sql_script);
    }
    memset(set, 0, sizeof *set);
}
