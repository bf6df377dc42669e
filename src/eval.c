/* eval.c - validation loss per domain and exact-match task accuracy by greedy decoding. */
#include "eval.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "comm.h"
#include "fs.h"
#include "rng.h"
#include "sqlexec.h"

#define CCOE_LN2 0.693147180559945309417232121458176568

ccoe_status ccoe_batch_init(ccoe_batch *b, int maxB, int maxT, ccoe_error *err)
{
    size_t n = (size_t)maxB * maxT;
    b->tokens = ccoe_aligned_calloc(n * sizeof(int32_t));
    b->targets = ccoe_aligned_calloc(n * sizeof(int32_t));
    b->domains = ccoe_aligned_calloc((size_t)maxB * sizeof(int32_t));
    b->maxB = maxB;
    b->maxT = maxT;
    if (!b->tokens || !b->targets || !b->domains) {
        ccoe_batch_free(b);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate batch buffers");
    }
    return CCOE_OK;
}

void ccoe_batch_free(ccoe_batch *b)
{
    free(b->tokens);
    free(b->targets);
    free(b->domains);
    b->tokens = b->targets = b->domains = NULL;
}

int ccoe_argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Most likely first; ties by id (a total order: the sample never depends on qsort). */
static int by_prob_desc(const void *a, const void *b)
{
    const ccoe_token_prob *x = a, *y = b;
    if (x->p != y->p)
        return x->p < y->p ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

static int sampling_greedy(const ccoe_sampling *s)
{
    return !s || !(s->temperature > 0.0f) || s->top_k == 1;
}

int ccoe_sample_token(const float *logits, int V, const ccoe_sampling *s, double u,
                      ccoe_token_prob *scratch)
{
    if (sampling_greedy(s))
        return ccoe_argmax(logits, V);
    const float mx = logits[ccoe_argmax(logits, V)];
    const double inv_t = 1.0 / (double)s->temperature;
    for (int i = 0; i < V; i++) {
        scratch[i].p = (float)exp(((double)logits[i] - (double)mx) * inv_t);
        scratch[i].id = i;
    }
    int n = V;
    const int nucleus = s->top_p > 0.0f && s->top_p < 1.0f;
    if ((s->top_k > 0 && s->top_k < V) || nucleus) {
        qsort(scratch, (size_t)V, sizeof *scratch, by_prob_desc);
        if (s->top_k > 0 && s->top_k < V)
            n = s->top_k;
        if (nucleus) {
            double total = 0.0, cum = 0.0;
            for (int i = 0; i < n; i++)
                total += scratch[i].p;
            int keep = 0;
            while (keep < n && cum < (double)s->top_p * total)
                cum += scratch[keep++].p;
            n = keep > 0 ? keep : 1;
        }
    }
    double total = 0.0;
    for (int i = 0; i < n; i++)
        total += scratch[i].p;
    const double target = u * total;
    double cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += scratch[i].p;
        if (target < cum)
            return scratch[i].id;
    }
    return scratch[n - 1].id; /* u * total rounded up to the last sum */
}

ccoe_status ccoe_generate(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                          const char *const *prompts, int domain, int n, const ccoe_gen_opts *o,
                          char **outs, size_t out_cap, ccoe_error *err)
{
    const int T = b->maxT;
    const int V = tok->ops->vocab_size(tok->self);
    const int max_new = o->max_new;
    const char stop = o->stop;
    const ccoe_sampling *samp = &o->sample;
    int len[CCOE_GEN_MAX], done[CCOE_GEN_MAX], seq[CCOE_GEN_MAX], pos[CCOE_GEN_MAX];
    int32_t next_tok[CCOE_GEN_MAX];
    size_t olen[CCOE_GEN_MAX];
    assert(n >= 0 && n <= CCOE_GEN_MAX && n <= b->maxB);
    if (n == 0)
        return CCOE_OK;
    int Tc = 1;
    for (int i = 0; i < n; i++) {
        int32_t *row = b->tokens + (size_t)i * T;
        row[0] = tok->bos;
        size_t need = tok->ops->encode(tok->self, prompts[i], strlen(prompts[i]), row + 1,
                                       (size_t)T - 1);
        len[i] = 1 + (int)(need < (size_t)T - 1 ? need : (size_t)T - 1);
        done[i] = len[i] >= T;
        olen[i] = 0;
        outs[i][0] = '\0';
        b->domains[i] = domain;
        if (len[i] > Tc)
            Tc = len[i];
    }
    /* the prompts at stride Tc (padded; causal attention keeps padding out of every prompt),
     * then one decode step per new token: each sequence's token at its own position */
    for (int i = 0; i < n; i++) {
        const int32_t *src = b->tokens + (size_t)i * T;
        int32_t *dst = b->targets + (size_t)i * Tc;
        for (int t = 0; t < Tc; t++)
            dst[t] = t < len[i] ? src[t] : tok->pad;
    }
    CCOE_TRY(ccoe_model_decode_prefill(m, b->targets, b->domains, n, Tc, err));
    ccoe_token_prob *scratch = NULL; /* generation, not a training step: allocated per call */
    if (!sampling_greedy(samp) && !(scratch = malloc((size_t)V * sizeof *scratch)))
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for sampling over %d tokens",
                              V);
    int na = 0; /* sequences of the last step: seq[j] computed its token at pos[j] */
    for (int i = 0; i < n; i++)
        if (!done[i]) {
            seq[na] = i;
            pos[na++] = len[i] - 1;
        }
    for (int step = 0; step < max_new && na > 0; step++) {
        if (step > 0)
            ccoe_model_decode_step(m, next_tok, seq, pos, na);
        int nn = 0;
        for (int j = 0; j < na; j++) {
            const int i = seq[j];
            /* its last token's logits (the prefill's row i at pos[j], then step row j); only
             * the tokenizer's real ids are candidates (the vocab may be padded) */
            const float *lg =
                step > 0 ? ccoe_model_logits(m, j, 0) : ccoe_model_logits(m, i, pos[j]);
            /* 53 uniform bits keyed by (seed, prompt, position of the new token) */
            const double u =
                scratch ? (double)(ccoe_hash4(samp->seed, o->first_id + (uint64_t)i,
                                              (uint64_t)len[i], 0x5a) >> 11) * 0x1p-53
                        : 0.0;
            int next = ccoe_sample_token(lg, V, samp, u, scratch);
            char piece[1024]; /* a BPE token is many bytes: the stop may be inside it */
            size_t k = tok->ops->decode(tok->self, &next, 1, piece, sizeof piece);
            const char *at = memchr(piece, stop, k);
            if (at)
                k = (size_t)(at - piece); /* its text up to the stop is kept */
            if (next != tok->eos && olen[i] + k + 1 < out_cap) {
                memcpy(outs[i] + olen[i], piece, k);
                olen[i] += k;
                outs[i][olen[i]] = '\0';
            }
            if (next == tok->eos || at) {
                done[i] = 1;
                continue;
            }
            b->tokens[(size_t)i * T + len[i]] = next;
            len[i]++;
            if (len[i] >= T) {
                done[i] = 1;
                continue;
            }
            seq[nn] = i;
            pos[nn] = len[i] - 1;
            next_tok[nn++] = next;
        }
        na = nn;
    }
    free(scratch);
    return CCOE_OK;
}

int ccoe_eval_score(const ccoe_task_example *t, const char *decoded, ccoe_sqldb *db,
                    int *sql_error)
{
    *sql_error = 0;
    if (t->match != CCOE_MATCH_SQL)
        return strcmp(decoded, t->answer) == 0;
    if (!db)
        return 0;
    ccoe_sql_match r = ccoe_sqldb_match(db, t->answer, decoded);
    *sql_error = r == CCOE_SQL_PRED_ERROR;
    return r == CCOE_SQL_MATCH;
}

/* The slot of t's kind in ev (registered on first sight, in that order). */
static int kind_slot(ccoe_domain_eval *ev, const ccoe_task_example *t)
{
    const char *name = t->kind[0] ? t->kind : t->match == CCOE_MATCH_SQL ? "sql" : "exact";
    int k = 0;
    while (k < ev->n_kinds && strcmp(ev->kinds[k].name, name) != 0)
        k++;
    if (k == ev->n_kinds) {
        if (k == CCOE_MAX_TASK_KINDS) {
            k = CCOE_MAX_TASK_KINDS - 1; /* the last slot collects the rest */
            snprintf(ev->kinds[k].name, sizeof ev->kinds[k].name, "other");
        } else {
            snprintf(ev->kinds[k].name, sizeof ev->kinds[k].name, "%s", name);
            ev->n_kinds++;
        }
    }
    return k;
}

void ccoe_eval_count(ccoe_domain_eval *ev, const ccoe_task_example *t, int correct, int sql_error)
{
    const int k = kind_slot(ev, t);
    ev->task_total++;
    ev->task_correct += correct != 0;
    ev->kinds[k].total++;
    ev->kinds[k].correct += correct != 0;
    ev->kinds[k].errors += sql_error != 0;
}

/* Decodes the task examples in chunks of min(B, CCOE_GEN_MAX) prompts; this rank takes the
 * chunks c with c % P == r (every chunk when P = 1). */
static ccoe_status eval_tasks(ccoe_model *m, const ccoe_domain *d, int domain,
                              const ccoe_tokenizer *tok, ccoe_batch *b, int r, int P,
                              ccoe_domain_eval *ev, ccoe_error *err)
{
    ccoe_status st = CCOE_OK;
    ccoe_sqldb db;
    int have_db = 0;
    if (d->sql_db || d->sql_script) {
        ccoe_error db_err;
        have_db = ccoe_sqldb_open(&db, d->sql_db, d->sql_script, &db_err) == CCOE_OK;
        if (!have_db) {
            ccoe_sqldb_close(&db);
            ev->sql_unavailable = 1;
            fprintf(stderr, "warning: domain '%s': %s; its SQL tasks count as wrong\n", d->name,
                    db_err.msg);
        }
    }
    enum { OUT_CAP = 256 };
    char outbuf[CCOE_GEN_MAX][OUT_CAP];
    char *outs[CCOE_GEN_MAX];
    const char *prompts[CCOE_GEN_MAX];
    int chunk = b->maxB < CCOE_GEN_MAX ? b->maxB : CCOE_GEN_MAX;
    for (int i = 0; i < CCOE_GEN_MAX; i++)
        outs[i] = outbuf[i];
    for (size_t first = 0, c = 0; first < d->n_tasks; first += (size_t)chunk, c++) {
        if (c % (size_t)P != (size_t)r)
            continue;
        int n = (int)(d->n_tasks - first < (size_t)chunk ? d->n_tasks - first : (size_t)chunk);
        int max_new = 1;
        for (int i = 0; i < n; i++) {
            prompts[i] = d->tasks[first + i].prompt;
            int need = (int)strlen(d->tasks[first + i].answer) + 4;
            if (need > max_new)
                max_new = need;
        }
        const ccoe_gen_opts go = {.max_new = max_new, .stop = d->answer_stop};
        st = ccoe_generate(m, tok, b, prompts, domain, n, &go, outs, OUT_CAP, err);
        if (st != CCOE_OK)
            break;
        for (int i = 0; i < n; i++) {
            int sql_error;
            const ccoe_task_example *t = &d->tasks[first + i];
            int ok = ccoe_eval_score(t, outs[i], have_db ? &db : NULL, &sql_error);
            ccoe_eval_count(ev, t, ok, sql_error);
        }
    }
    if (have_db)
        ccoe_sqldb_close(&db);
    return st;
}

/* Sums this rank's counts over the ranks of c (every rank's ev has the same kinds in the same
 * order: they were registered from the task lists before any decoding). COLLECTIVE. */
static ccoe_status reduce_counts(ccoe_comm *c, ccoe_model *m, ccoe_domain_eval *out, int nd,
                                 double *loss_sums, ccoe_error *err)
{
    enum { PER = 3 + 3 * CCOE_MAX_TASK_KINDS };
    int64_t cnt[CCOE_MAX_DOMAINS * PER];
    for (int d = 0; d < nd; d++) {
        int64_t *x = cnt + (size_t)d * PER;
        x[0] = out[d].task_total;
        x[1] = out[d].task_correct;
        x[2] = out[d].sql_unavailable;
        for (int k = 0; k < CCOE_MAX_TASK_KINDS; k++) {
            x[3 + 3 * k] = out[d].kinds[k].total;
            x[4 + 3 * k] = out[d].kinds[k].correct;
            x[5 + 3 * k] = out[d].kinds[k].errors;
        }
    }
    CCOE_TRY(c->ops->allreduce_i64(c, cnt, (size_t)nd * PER, err));
    CCOE_TRY(c->ops->allreduce_f64(c, loss_sums, (size_t)nd * 3, err));
    for (int d = 0; d < nd; d++) {
        const int64_t *x = cnt + (size_t)d * PER;
        out[d].task_total = (long)x[0];
        out[d].task_correct = (long)x[1];
        out[d].sql_unavailable = x[2] > 0;
        for (int k = 0; k < CCOE_MAX_TASK_KINDS; k++) {
            out[d].kinds[k].total = (long)x[3 + 3 * k];
            out[d].kinds[k].correct = (long)x[4 + 3 * k];
            out[d].kinds[k].errors = (long)x[5 + 3 * k];
        }
    }
    if (m->n_moe > 0 && !ccoe_model_forward_collective(m)) {
        const size_t n = (size_t)m->n_moe, E = (size_t)m->moe.E;
        CCOE_TRY(c->ops->allreduce_i64(c, m->moe_tot_tokens, n * E, err));
        CCOE_TRY(c->ops->allreduce_i64(c, m->moe_tot_rows, n, err));
        CCOE_TRY(c->ops->allreduce_i64(c, m->moe_tot_dropped, n * 3, err));
        CCOE_TRY(c->ops->allreduce_f64(c, m->moe_tot_entropy, n * 2, err));
    }
    return CCOE_OK;
}

int32_t *ccoe_eval_token_bytes(const ccoe_tokenizer *tok, int V)
{
    int32_t *n = calloc((size_t)(V > 0 ? V : 1), sizeof *n);
    char buf[4096];
    const int tv = tok->ops->vocab_size(tok->self);
    for (int32_t i = 0; n && i < V && i < tv; i++)
        n[i] = (int32_t)tok->ops->decode(tok->self, &i, 1, buf, sizeof buf);
    return n;
}

/* The text bytes of the counted targets (>= 0) of B rows of T. */
static double target_bytes(const int32_t *tok_bytes, int V, const int32_t *targets, int B, int T)
{
    double n = 0.0;
    for (size_t i = 0; i < (size_t)B * (size_t)T; i++)
        if (targets[i] >= 0 && targets[i] < V)
            n += tok_bytes[targets[i]];
    return n;
}

ccoe_status ccoe_eval_domains(ccoe_model *m, const ccoe_dataset *ds, const ccoe_tokenizer *tok,
                              ccoe_batch *b, int max_batches, int with_tasks, ccoe_comm *comm,
                              ccoe_domain_eval *out, ccoe_error *err)
{
    ccoe_status st = CCOE_OK;
    const int B = b->maxB, T = ds->T, nd = ds->n_domains;
    const int P = comm ? comm->size : 1, r = comm ? comm->rank : 0;
    /* a model whose forward exchanges rows runs every round on every rank (zero rows when its
     * round has no batch) and decodes every task chunk on every rank */
    const int lockstep = P > 1 && ccoe_model_forward_collective(m);
    const int was_train = m->train;
    /* per domain: loss sum, tokens counted, their text bytes (this rank) */
    double sums[3 * CCOE_MAX_DOMAINS];
    /* bits per byte needs each target's bytes: only for tokenizers other than the byte one
     * (there it is the loss / ln 2 and the table stays as it was) */
    int32_t *tok_bytes = NULL;
    if (tok && tok->ops != &ccoe_byte_tokenizer_ops) {
        tok_bytes = ccoe_eval_token_bytes(tok, m->cfg.vocab_size);
        if (!tok_bytes)
            return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for the token byte table");
    }
    m->train = 0;
    ccoe_model_moe_reset_totals(m);
    for (int d = 0; d < nd; d++) {
        ccoe_domain_eval *ev = &out[d];
        memset(ev, 0, sizeof *ev);
        ev->model = m;
        for (size_t i = 0; with_tasks && i < ds->domains[d].n_tasks; i++)
            kind_slot(ev, &ds->domains[d].tasks[i]); /* the same kind order on every rank */
        ev->bpb_shown = tok_bytes != NULL;
        double sum = 0.0, bytes = 0.0;
        long count = 0;
        size_t nb = (ds->domains[d].n_val + (size_t)B - 1) / (size_t)B;
        if (max_batches > 0 && nb > (size_t)max_batches)
            nb = (size_t)max_batches;
        /* batch k belongs to rank k % P; rounds of P batches */
        for (size_t k0 = 0; k0 < nb; k0 += (size_t)P) {
            const size_t k = k0 + (size_t)r;
            if (k >= nb && !lockstep)
                break;
            int got = 0;
            if (k < nb)
                got = ccoe_data_val_batch(ds, d, k * (size_t)B, b->tokens, b->targets,
                                          b->domains, B);
            long c = 0;
            m->collect_moe = 1;
            sum += ccoe_model_forward(m, b->tokens, b->targets, b->domains, got, T, &c);
            m->collect_moe = 0;
            count += c;
            if (tok_bytes)
                bytes += target_bytes(tok_bytes, m->cfg.vocab_size, b->targets, got, T);
        }
        sums[3 * d] = sum;
        sums[3 * d + 1] = (double)count;
        sums[3 * d + 2] = bytes;
        if (with_tasks && ds->domains[d].n_tasks > 0 && st == CCOE_OK)
            st = eval_tasks(m, &ds->domains[d], d, tok, b, lockstep ? 0 : r, lockstep ? 1 : P,
                            ev, err);
    }
    m->train = was_train;
    free(tok_bytes);
    if (P > 1) {
        CCOE_TRY(ccoe_comm_agree(comm, st, err));
        if (lockstep) { /* tasks and MoE totals are already every rank's */
            CCOE_TRY(comm->ops->allreduce_f64(comm, sums, (size_t)nd * 3, err));
        } else {
            CCOE_TRY(reduce_counts(comm, m, out, nd, sums, err));
        }
    }
    for (int d = 0; d < nd; d++) {
        out[d].loss = sums[3 * d + 1] > 0 ? sums[3 * d] / sums[3 * d + 1] : NAN;
        out[d].tokens = (long)sums[3 * d + 1];
        out[d].bytes = sums[3 * d + 2];
        out[d].bpb = sums[3 * d + 2] > 0 ? sums[3 * d] / CCOE_LN2 / sums[3 * d + 2] : NAN;
    }
    return st;
}

static void print_moe(FILE *f, const ccoe_model *m)
{
    const int E = m->moe.E;
    /* drop_rate: the evaluation's own drops (eval_capacity_factor, 0 = dropless);
     * train_drop: what the training capacity_factor drops of the same routing */
    fprintf(f, "\nMoE experts (gate %s, E=%d, K=%d, capacity_factor %g, eval_capacity_factor %g; "
               "validation tokens, no noise):\n",
            m->moe.cfg.gate, E, m->moe.K, m->moe.cfg.capacity_factor,
            m->moe.cfg.eval_capacity_factor);
    fprintf(f, "%-6s %9s %9s %10s %12s %14s %8s  %s\n", "layer", "tokens", "drop_rate",
            "train_drop", "gate_entropy", "router_entropy", "load_cv", "tokens_per_expert");
    for (int i = 0; i < m->n_moe; i++) {
        const int64_t *tok = m->moe_tot_tokens + (size_t)i * E;
        const double rows = (double)m->moe_tot_rows[i];
        double mean = 0.0, var = 0.0;
        for (int e = 0; e < E; e++)
            mean += (double)tok[e] / E;
        for (int e = 0; e < E; e++)
            var += ((double)tok[e] - mean) * ((double)tok[e] - mean) / E;
        const double slots = rows * m->moe.K;
        fprintf(f, "%-6d %9.0f %9.4f %10.4f %12.4f %14.4f %8.4f  ", m->moe_layer[i], rows,
                slots > 0 ? (double)m->moe_tot_dropped[3 * i] / slots : 0.0,
                slots > 0 ? (double)m->moe_tot_dropped[3 * i + 2] / slots : 0.0,
                rows > 0 ? m->moe_tot_entropy[2 * i] / rows : 0.0,
                rows > 0 ? m->moe_tot_entropy[2 * i + 1] / rows : 0.0,
                mean > 0 ? sqrt(var) / mean : 0.0);
        for (int e = 0; e < E; e++)
            fprintf(f, "%s%lld", e ? " " : "", (long long)tok[e]);
        fputc('\n', f);
    }
}

static void print_kinds_and_moe(FILE *f, const ccoe_dataset *ds, const ccoe_domain_eval *ev);

static void eval_print_bpb(FILE *f, const ccoe_dataset *ds, const ccoe_domain_eval *ev)
{
    fprintf(f, "%-12s %10s %10s %8s %9s %14s\n", "domain", "val_loss", "perplexity", "bpb",
            "tokens", "task_accuracy");
    double wsum = 0.0, wbytes = 0.0;
    long wtok = 0;
    for (int d = 0; d < ds->n_domains; d++) {
        const ccoe_domain_eval *e = &ev[d];
        char acc[48];
        if (e->task_total > 0)
            snprintf(acc, sizeof acc, "%5.1f%% (%ld/%ld)",
                     100.0 * (double)e->task_correct / (double)e->task_total, e->task_correct,
                     e->task_total);
        else
            snprintf(acc, sizeof acc, "-");
        fprintf(f, "%-12s %10.4f %10.3f %8.4f %9ld %14s\n", ds->domains[d].name, e->loss,
                exp(e->loss), e->bpb, e->tokens, acc);
        wsum += e->loss * (double)e->tokens;
        wtok += e->tokens;
        wbytes += e->bytes;
    }
    if (wtok > 0)
        fprintf(f, "%-12s %10.4f %10.3f %8.4f %9ld\n", "all", wsum / (double)wtok,
                exp(wsum / (double)wtok), wbytes > 0 ? wsum / CCOE_LN2 / wbytes : NAN, wtok);
    print_kinds_and_moe(f, ds, ev);
}

void ccoe_eval_print(FILE *f, const ccoe_dataset *ds, const ccoe_domain_eval *ev)
{
    const int bpb = ds->n_domains > 0 && ev[0].bpb_shown;
    if (bpb) { /* the figure that compares tokenizers: total nats / ln 2 / text bytes */
        eval_print_bpb(f, ds, ev);
        return;
    }
    fprintf(f, "%-12s %10s %10s %9s %14s\n", "domain", "val_loss", "perplexity", "tokens",
            "task_accuracy");
    double wsum = 0.0;
    long wtok = 0;
    for (int d = 0; d < ds->n_domains; d++) {
        const ccoe_domain_eval *e = &ev[d];
        char acc[48];
        if (e->task_total > 0)
            snprintf(acc, sizeof acc, "%5.1f%% (%ld/%ld)",
                     100.0 * (double)e->task_correct / (double)e->task_total, e->task_correct,
                     e->task_total);
        else
            snprintf(acc, sizeof acc, "-");
        fprintf(f, "%-12s %10.4f %10.3f %9ld %14s\n", ds->domains[d].name, e->loss, exp(e->loss),
                e->tokens, acc);
        wsum += e->loss * (double)e->tokens;
        wtok += e->tokens;
    }
    if (wtok > 0)
        fprintf(f, "%-12s %10.4f %10.3f %9ld\n", "all", wsum / (double)wtok,
                exp(wsum / (double)wtok), wtok);
    print_kinds_and_moe(f, ds, ev);
}

static void print_kinds_and_moe(FILE *f, const ccoe_dataset *ds, const ccoe_domain_eval *ev)
{
    int any = 0;
    for (int d = 0; d < ds->n_domains; d++)
        any |= ev[d].n_kinds > 0;
    if (any) {
        fprintf(f, "\ntask accuracy by kind:\n%-12s %-16s %16s %12s\n", "domain", "kind",
                "accuracy", "sql_errors");
        for (int d = 0; d < ds->n_domains; d++)
            for (int k = 0; k < ev[d].n_kinds; k++) {
                const ccoe_kind_eval *e = &ev[d].kinds[k];
                char acc[48], errs[24] = "-";
                snprintf(acc, sizeof acc, "%5.1f%% (%ld/%ld)",
                         100.0 * (double)e->correct / (double)e->total, e->correct, e->total);
                if (e->errors || ds->domains[d].sql_db || ds->domains[d].sql_script)
                    snprintf(errs, sizeof errs, "%ld", e->errors);
                fprintf(f, "%-12s %-16s %16s %12s\n", ds->domains[d].name, e->name, acc, errs);
            }
    }
    if (ds->n_domains > 0 && ev[0].model && ev[0].model->n_moe > 0)
        print_moe(f, ev[0].model);
}

void ccoe_eval_json(FILE *f, const ccoe_dataset *ds, const ccoe_domain_eval *ev)
{
    fputc('{', f);
    for (int d = 0; d < ds->n_domains; d++) {
        const ccoe_domain_eval *e = &ev[d];
        fprintf(f, "%s\"%s\":{\"loss\":%.6f,\"ppl\":%.6f,\"tokens\":%ld", d ? "," : "",
                ds->domains[d].name, e->loss, exp(e->loss), e->tokens);
        if (e->bpb_shown)
            fprintf(f, ",\"bpb\":%.6f", e->bpb);
        if (e->task_total > 0) {
            fprintf(f, ",\"acc\":%.6f,\"task_n\":%ld,\"kinds\":{",
                    (double)e->task_correct / (double)e->task_total, e->task_total);
            for (int k = 0; k < e->n_kinds; k++)
                fprintf(f, "%s\"%s\":{\"acc\":%.6f,\"n\":%ld}", k ? "," : "", e->kinds[k].name,
                        (double)e->kinds[k].correct / (double)e->kinds[k].total,
                        e->kinds[k].total);
            fputc('}', f);
        }
        fputc('}', f);
    }
    fputc('}', f);
}

void ccoe_eval_moe_json(FILE *f, const ccoe_dataset *ds, const ccoe_domain_eval *ev)
{
    const ccoe_model *m = ds->n_domains > 0 ? ev[0].model : NULL;
    if (!m || m->n_moe == 0)
        return;
    fputs(",\"eval_moe\":[", f);
    for (int i = 0; i < m->n_moe; i++) {
        const double slots = (double)m->moe_tot_rows[i] * m->moe.K;
        fprintf(f, "%s{\"layer\":%d,\"drop_rate\":%.6g,\"train_drop_rate\":%.6g}", i ? "," : "",
                m->moe_layer[i], slots > 0 ? (double)m->moe_tot_dropped[3 * i] / slots : 0.0,
                slots > 0 ? (double)m->moe_tot_dropped[3 * i + 2] / slots : 0.0);
    }
    fputc(']', f);
}

ccoe_status ccoe_eval_read_prompts(const char *path, const char ***prompts, int *n, char **text,
                                   ccoe_error *err)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : ccoe_fs_fopen_input(path, NULL, err);
    if (!f)
        return ccoe_error_wrap(err, "--prompts");
    size_t len = 0;
    int e = ccoe_fs_read_stream(f, (size_t)256 << 20, text, &len);
    if (f != stdin)
        fclose(f);
    if (e)
        return ccoe_error_set(err, e == ENOMEM ? CCOE_ERR_NOMEM : CCOE_ERR_IO,
                              "--prompts: cannot read '%s': %s", path,
                              e == EFBIG ? "larger than 256 MB" : strerror(e));
    char *t = *text;
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += t[i] == '\n' || i + 1 == len;
    const char **p = lines > (size_t)(1 << 24)
                         ? NULL
                         : realloc(*prompts, (size_t)(*n + (int)lines + 1) * sizeof *p);
    if (!p) {
        free(t);
        *text = NULL;
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "--prompts: too many lines in '%s'", path);
    }
    *prompts = p;
    char *line = t;
    for (size_t i = 0; i < len; i++) {
        if (t[i] != '\n' && i + 1 < len)
            continue;
        if (t[i] == '\n') {
            t[i] = '\0';
            if (i > 0 && t[i - 1] == '\r')
                t[i - 1] = '\0';
        }
        p[(*n)++] = line;
        line = t + i + 1;
    }
    return CCOE_OK;
}

ccoe_status ccoe_generate_print(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                                const char *const *prompts, int n, int domain,
                                const ccoe_gen_opts *o, FILE *out, ccoe_error *err)
{
    enum { OUT_CAP = 4096 }; /* bytes of one continuation, its NUL included */
    const int chunk = b->maxB < CCOE_GEN_MAX ? b->maxB : CCOE_GEN_MAX;
    char *buf = malloc((size_t)chunk * OUT_CAP);
    char *outs[CCOE_GEN_MAX];
    if (!buf)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for the generated text");
    ccoe_status st = CCOE_OK;
    for (int first = 0; st == CCOE_OK && first < n; first += chunk) {
        const int k = n - first < chunk ? n - first : chunk;
        for (int i = 0; i < k; i++)
            outs[i] = buf + (size_t)i * OUT_CAP;
        ccoe_gen_opts go = *o;
        go.first_id = o->first_id + (uint64_t)first; /* prompt i draws as prompt first_id + i */
        st = ccoe_generate(m, tok, b, prompts + first, domain, k, &go, outs, OUT_CAP, err);
        for (int i = 0; st == CCOE_OK && i < k; i++)
            fprintf(out, "%s%s\n", prompts[first + i], outs[i]);
    }
    free(buf);
    return st;
}

/* ---- held-out loss of one text ---- */

ccoe_status ccoe_eval_text(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                           const char *text, size_t len, int domain, ccoe_comm *comm,
                           ccoe_text_eval *out, ccoe_error *err)
{
    memset(out, 0, sizeof *out);
    out->text_bytes = len;
    const int B = b->maxB, T = b->maxT, V = m->cfg.vocab_size;
    const int P = comm ? comm->size : 1, r = comm ? comm->rank : 0;
    ccoe_status st = CCOE_OK;
    /* ids: the start-of-text id (so the first token is predicted too), then the text's */
    const size_t cap = len + 2;
    int32_t *ids = malloc(cap * sizeof *ids);
    int32_t *tok_bytes = ccoe_eval_token_bytes(tok, V);
    double *slot = NULL; /* (n_chunk, 3): each chunk's loss sum, targets counted, their bytes */
    size_t n = 0, n_win = 0, n_chunk = 0;
    if (!ids || !tok_bytes) {
        st = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory encoding the text (%zu bytes)",
                            len);
        goto reduce;
    }
    if (tok->bos >= 0)
        ids[n++] = tok->bos;
    size_t need = tok->ops->encode(tok->self, text, len, ids + n, cap - n);
    assert(need <= cap - n); /* every id stands for at least one byte */
    n += need;
    out->n_ids = n;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                "the tokenizer produced id %ld, beyond the model's vocabulary "
                                "(%d): the model was not trained with this tokenizer",
                                (long)ids[i], V);
            goto reduce;
        }
    /* windows of T targets, side by side (stride T): window w predicts ids[w*T+1 .. w*T+T]
     * from ids[w*T ..]; the first token of each window sees only its own window. Chunks of B
     * windows are one forward each; chunk k belongs to rank k % P. Each chunk's figures land
     * in its own slot (zero on the other ranks), so the sum over ranks is exact and the slots
     * are added in chunk order: the totals are one process's bit for bit. */
    n_win = ((n > 0 ? n - 1 : 0) + (size_t)T - 1) / (size_t)T;
    n_chunk = (n_win + (size_t)B - 1) / (size_t)B;
    slot = calloc(3 * (n_chunk > 0 ? n_chunk : 1), sizeof *slot);
    if (!slot) {
        st = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for %zu text windows", n_win);
        goto reduce;
    }
    /* a model whose forward exchanges rows runs every round on every rank (zero rows when its
     * round has no chunk) */
    const int lockstep = P > 1 && ccoe_model_forward_collective(m);
    const int was_train = m->train;
    m->train = 0;
    for (size_t k0 = 0; k0 < n_chunk; k0 += (size_t)P) {
        const size_t k = k0 + (size_t)r;
        if (k >= n_chunk && !lockstep)
            break;
        const size_t w0 = k * (size_t)B;
        int rows = 0;
        if (k < n_chunk)
            rows = (int)(n_win - w0 < (size_t)B ? n_win - w0 : (size_t)B);
        for (int q = 0; q < rows; q++) {
            const size_t s0 = (w0 + (size_t)q) * (size_t)T;
            for (int t = 0; t < T; t++) {
                const size_t i = s0 + (size_t)t;
                const int ok = i + 1 < n;
                b->tokens[(size_t)q * T + t] = i < n ? ids[i] : (tok->pad >= 0 ? tok->pad : 0);
                b->targets[(size_t)q * T + t] = ok ? ids[i + 1] : -1;
            }
            b->domains[q] = domain >= 0 ? domain : 0;
        }
        long c = 0;
        const double loss = ccoe_model_forward(m, b->tokens, b->targets,
                                               domain >= 0 ? b->domains : NULL, rows, T, &c);
        if (k < n_chunk) {
            slot[3 * k] = loss;
            slot[3 * k + 1] = (double)c;
            slot[3 * k + 2] = target_bytes(tok_bytes, V, b->targets, rows, T);
        }
    }
    m->train = was_train;
reduce:
    free(ids);
    free(tok_bytes);
    if (P > 1) { /* a rank that failed alone (memory) stops the others before the sum */
        st = ccoe_comm_agree(comm, st, err);
        if (st == CCOE_OK)
            st = comm->ops->allreduce_f64(comm, slot, 3 * n_chunk, err);
    }
    double sum = 0.0, bytes = 0.0;
    long count = 0;
    for (size_t k = 0; st == CCOE_OK && k < n_chunk; k++) {
        sum += slot[3 * k];
        count += (long)slot[3 * k + 1];
        bytes += slot[3 * k + 2];
    }
    free(slot);
    CCOE_TRY(st);
    out->tokens = count;
    out->nats = sum;
    out->bytes = bytes;
    out->loss = count > 0 ? sum / (double)count : NAN;
    out->ppl = exp(out->loss);
    out->bpb = bytes > 0 ? sum / CCOE_LN2 / bytes : NAN;
    if (!isfinite(sum))
        return ccoe_error_set(err, CCOE_ERR_NUMERIC,
                              "the loss of the text is not finite (%g): the model's weights are "
                              "damaged",
                              sum);
    return CCOE_OK;
}

/* The --text file's contents (non-empty) in *text (malloc'd), or an error naming the file. */
static ccoe_status read_text_file(const char *path, char **text, size_t *len, ccoe_error *err)
{
    *text = NULL;
    *len = 0;
    FILE *f = ccoe_fs_fopen_input(path, "--text file", err);
    if (!f)
        return err->status;
    int e = ccoe_fs_read_stream(f, (size_t)1 << 32, text, len);
    fclose(f);
    if (e)
        return ccoe_error_set(err, e == ENOMEM ? CCOE_ERR_NOMEM : CCOE_ERR_IO,
                              "--text: cannot read '%s': %s", path,
                              e == EFBIG ? "larger than 4 GB" : strerror(e));
    if (*len == 0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "--text %s is empty: give a file with text to score", path);
    return CCOE_OK;
}

ccoe_status ccoe_eval_text_file(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                                const ccoe_dataset *ds, const char *path, const char *domain,
                                ccoe_comm *comm, ccoe_text_eval *out, ccoe_error *err)
{
    int d = -1;
    if (domain) {
        d = ds ? ccoe_data_domain_index(ds, domain) : -1;
        if (d < 0) {
            char names[CCOE_MAX_DOMAINS * (CCOE_NAME_LEN + 2)] = "";
            for (int k = 0; ds && k < ds->n_domains; k++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                         k ? ", " : "", ds->domains[k].name);
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "--domain %s: the model's data has the domains %s: give one "
                                  "of them (or no --domain: the base path)",
                                  domain, names[0] ? names : "(none)");
        }
    }
    char *text = NULL;
    size_t len = 0;
    ccoe_status st = read_text_file(path, &text, &len, err);
    if (comm && comm->size > 1) /* a file one rank cannot read stops them all */
        st = ccoe_comm_agree(comm, st, err);
    if (st == CCOE_OK)
        st = ccoe_eval_text(m, tok, b, text, len, d, comm, out, err);
    free(text);
    return st;
}

void ccoe_eval_text_print(FILE *f, const char *path, const char *domain, const char *tokenizer,
                          const ccoe_text_eval *e)
{
    fprintf(f, "text %s: %zu bytes, %zu ids (%.3f bytes/id), tokenizer %s, path %s\n", path,
            e->text_bytes, e->n_ids, e->n_ids ? (double)e->text_bytes / (double)e->n_ids : 0.0,
            tokenizer, domain ? domain : "base");
    fprintf(f, "%-10s %12s %10s %12s %10s\n", "tokens", "nats/token", "bpb", "perplexity",
            "bytes");
    fprintf(f, "%-10ld %12.4f %10.4f %12.3f %10.0f\n", e->tokens, e->loss, e->bpb, e->ppl,
            e->bytes);
}
