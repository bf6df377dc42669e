/* test_mpi_train.c - data-parallel training over the MPI communicator (run by CTest under
 * mpirun -np 2 and -np 4) against the single-process run of the same config, done inside the
 * test on a serial communicator by rank 0:
 *   - dense, CCoE Eqs. 6-7 (ffn) and CCoE tail (full and isolated expert training) tiny
 *     models: loss curve and every parameter within 1e-5 relative; the frozen base stays
 *     bit-identical;
 *   - an uneven split of the global batch (B = 3: with 4 ranks rank 0 gets no rows);
 *   - a noisy top-k MoE model with expert parallelism (experts spread over the ranks);
 *   - CCoE expert placement (--ccoe-placement experts), tail, prefix and ffn (per-block
 *     exchange): the same curve and checkpoint, bytes exchanged reported;
 *   - a checkpoint written by P ranks (--stop-at) resumed on 1 rank;
 *   - a failure injected on the last rank ends every rank with an error naming it;
 *   - several CCoE experts trained at once (--train-experts all) equal each expert trained
 *     alone, bit for bit, and the base stays bit-identical.
 * Plain C (no CMocka: every rank must reach the same collectives); the exit status is the
 * verdict (non-zero on any rank fails the test). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "comm_mpi.h"
#include "config.h"
#include "safetensors.h"
#include "train.h"

static ccoe_comm g_comm;
static int g_failures;
static char g_dir[256];

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "FAIL [rank %d] %s:%d: %s: ", g_comm.rank, __FILE__,      \
                    __LINE__, #cond);                                                 \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
            g_failures++;                                                             \
        }                                                                             \
    } while (0)

static void set(ccoe_config *c, const char *kv)
{
    ccoe_error err = {0};
    if (ccoe_config_set(c, kv, &err) != CCOE_OK) {
        fprintf(stderr, "bad test setting %s: %s\n", kv, err.msg);
        exit(1);
    }
}

/* The tiny model of the tests (configs/tiny-test.ini's shape, fewer steps, no evaluation).
 * AdamW's eps is 1e-6 instead of 1e-8: the first AdamW steps are sign-like, so a gradient
 * element near zero, whose rounding depends on the summation order, would move its parameter
 * by a full lr step either way; with eps = 1e-8 the 1- and 4-rank parameters agree to about
 * 1e-5 relative (measured 1.0-1.1e-5 on the dense model), with 1e-6 to 1.5e-6 at most, which
 * leaves the 1e-5 bound room to catch real errors (summing only half of the gradient bucket
 * moves the loss by 1e-3 after one step, and the replica check fails). */
static void tiny(ccoe_config *c, const char *out)
{
    ccoe_config_defaults(c);
    const char *kv[] = {"model.n_layer=2", "model.n_embd=32", "model.n_head=2",
                        "model.seq_len=32", "train.batch_size=4", "train.steps=6",
                        "train.lr=0.003", "train.warmup=2", "train.eval_every=0",
                        "train.eval_batches=1", "train.log_every=100", "data.task_examples=0",
                        "run.threads=1", "train.eps=1e-6"};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        set(c, kv[i]);
    char o[400];
    snprintf(o, sizeof o, "train.out_dir=%s/%s", g_dir, out);
    set(c, o);
}

/* Trains cfg on `comm` (NULL: serial on this rank alone); returns the status. */
static ccoe_status run(const ccoe_config *cfg, ccoe_comm *comm, ccoe_train_opts o,
                       ccoe_error *err)
{
    o.comm = comm;
    o.quiet = 1;
    o.progress = 0;
    o.force = 1;
    memset(err, 0, sizeof *err);
    return ccoe_train_run(cfg, &o, err);
}

static void must_run(const ccoe_config *cfg, ccoe_comm *comm, ccoe_train_opts o, const char *what)
{
    ccoe_error err;
    ccoe_status st = run(cfg, comm, o, &err);
    CHECK(st == CCOE_OK, "%s: %s", what, err.msg);
}

static void path_of(char *p, size_t cap, const char *run_dir, const char *file)
{
    snprintf(p, cap, "%s/%s/%s", g_dir, run_dir, file);
}

/* The per-step losses of a metrics file. */
static int read_losses(const char *run_dir, double *loss, int cap)
{
    char p[512], line[8192];
    path_of(p, sizeof p, run_dir, "metrics.jsonl");
    FILE *f = fopen(p, "r");
    if (!f)
        return -1;
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        const char *s = strstr(line, "\"loss\":");
        if (!s || strstr(line, "\"eval\"") || n >= cap)
            continue;
        loss[n++] = atof(s + 7);
    }
    fclose(f);
    return n;
}

static void compare_losses(const char *a, const char *b, double rtol, const char *what)
{
    double la[256], lb[256];
    int na = read_losses(a, la, 256), nb = read_losses(b, lb, 256);
    CHECK(na > 0 && na == nb, "%s: %d vs %d loss lines", what, na, nb);
    for (int i = 0; i < na && i < nb; i++)
        CHECK(fabs(la[i] - lb[i]) <= rtol * fabs(la[i]), "%s: step %d loss %.9g vs %.9g", what,
              i + 1, la[i], lb[i]);
}

/* Every tensor of a (optimizer moments skipped; prefix: only those names) against b:
 * ||a - b|| <= rtol ||a|| (rtol 0: bit for bit). */
static void compare_ckpt(const char *a, const char *b, const char *prefix, int skip_experts,
                         double rtol, const char *what)
{
    char pa[512], pb[512];
    path_of(pa, sizeof pa, a, "checkpoint.safetensors");
    path_of(pb, sizeof pb, b, "checkpoint.safetensors");
    ccoe_st_file *fa = NULL, *fb = NULL;
    ccoe_error err = {0};
    CHECK(ccoe_st_open(pa, &fa, &err) == CCOE_OK, "%s: %s", what, err.msg);
    CHECK(ccoe_st_open(pb, &fb, &err) == CCOE_OK, "%s: %s", what, err.msg);
    if (!fa || !fb) {
        ccoe_st_close(fa);
        ccoe_st_close(fb);
        return;
    }
    int compared = 0;
    double worst = 0;
    char worst_name[128] = "-";
    for (size_t i = 0; i < ccoe_st_count(fa); i++) {
        const char *name = ccoe_st_name(fa, i);
        if (strncmp(name, "optim.", 6) == 0 || (prefix && strncmp(name, prefix, strlen(prefix))) ||
            (skip_experts && strncmp(name, "experts.", 8) == 0))
            continue;
        int nda = 0, ndb = 0;
        int64_t sa[CCOE_ST_MAX_DIMS] = {0}, sb[CCOE_ST_MAX_DIMS] = {0};
        const float *da = ccoe_st_find(fa, name, &nda, sa);
        const float *db = ccoe_st_find(fb, name, &ndb, sb);
        CHECK(db && nda == ndb && memcmp(sa, sb, sizeof sa) == 0, "%s: tensor %s missing or "
              "shaped differently", what, name);
        if (!db)
            continue;
        size_t n = 1;
        for (int d = 0; d < nda; d++)
            n *= (size_t)sa[d];
        /* the key bias (the middle third of attn.qkv.bias) has an analytic gradient of zero
         * (softmax is invariant to it): what it holds is rounding noise that AdamW's
         * normalisation turns into lr-sized steps, so it cannot agree between summation
         * orders; the query and value biases must */
        const int key_bias = rtol > 0 && strstr(name, "attn.qkv.bias") != NULL;
        double num = 0, den = 0;
        size_t differ = 0;
        for (size_t j = 0; j < n; j++) {
            if (key_bias && j >= n / 3 && j < 2 * n / 3)
                continue;
            double d = (double)da[j] - (double)db[j];
            num += d * d;
            den += (double)da[j] * da[j];
            differ += memcmp(&da[j], &db[j], sizeof(float)) != 0;
        }
        if (rtol == 0)
            CHECK(differ == 0, "%s: %s differs in %zu of %zu values (must be bit-identical)",
                  what, name, differ, n);
        else
            CHECK(sqrt(num) <= rtol * sqrt(den), "%s: %s relative difference %.3g > %.1g", what,
                  name, sqrt(num / (den > 0 ? den : 1)), rtol);
        double rel = sqrt(num / (den > 0 ? den : 1));
        if (rel > worst) {
            worst = rel;
            snprintf(worst_name, sizeof worst_name, "%s", name);
        }
        compared++;
    }
    CHECK(compared > 0, "%s: no tensors compared", what);
    if (rtol > 0)
        printf("     %s: largest relative parameter difference %.2g (%s)\n", what, worst,
               worst_name);
    ccoe_st_close(fa);
    ccoe_st_close(fb);
}

static void barrier(void)
{
    ccoe_error err = {0};
    if (g_comm.ops->barrier(&g_comm, &err) != CCOE_OK) {
        fprintf(stderr, "%s\n", err.msg);
        g_comm.ops->abort(&g_comm, 1);
    }
}

static void with_dir(ccoe_config *c, const char *run_dir)
{
    char o[400];
    snprintf(o, sizeof o, "train.out_dir=%s/%s", g_dir, run_dir);
    set(c, o);
}

/* The single-process reference on rank 0, then the same config on all ranks; compared. */
static void equivalence(const char *name, const ccoe_config *cfg_ref, const ccoe_config *cfg_par,
                        ccoe_train_opts o)
{
    char ref[64], par[64];
    snprintf(ref, sizeof ref, "%s-ref", name);
    snprintf(par, sizeof par, "%s-p%d", name, g_comm.size);
    ccoe_config a = *cfg_ref, b = *cfg_par;
    with_dir(&a, ref);
    with_dir(&b, par);
    if (g_comm.rank == 0)
        must_run(&a, NULL, o, ref);
    barrier();
    must_run(&b, &g_comm, o, par);
    if (g_comm.rank == 0) {
        compare_losses(ref, par, 1e-5, name);
        compare_ckpt(ref, par, NULL, 0, 1e-5, name);
    }
}

static void test_dense(void)
{
    ccoe_config a, b;
    tiny(&a, "dense");
    b = a;
    ccoe_train_opts o = {0};
    equivalence("dense", &a, &b, o);
    o.allreduce_overlap = 1; /* non-blocking buckets started from backward */
    equivalence("overlap", &a, &b, o);
}

static void test_uneven(void)
{
    /* B = 3: P = 2 splits 1 + 2, P = 4 gives rank 0 nothing */
    ccoe_config a, b;
    tiny(&a, "uneven");
    set(&a, "train.batch_size=3");
    set(&a, "train.grad_accum=2");
    b = a;
    ccoe_train_opts o = {0};
    equivalence("uneven", &a, &b, o);
}

static void test_moe_ep(void)
{
    /* noisy top-k MoE in every block, experts spread over the ranks (expert parallelism inside
     * data parallelism): the same as one process, and the checkpoint gathers every expert */
    ccoe_config a, b;
    tiny(&a, "moe");
    set(&a, "moe.gate=noisy_topk");
    set(&a, "moe.n_experts=4");
    set(&a, "moe.top_k=2");
    set(&a, "moe.capacity_factor=0");
    set(&a, "train.batch_size=5"); /* uneven: 2 + 3 or 1 + 1 + 1 + 2 rows */
    b = a;
    ccoe_train_opts o = {0};
    o.allreduce_overlap = 1;
    equivalence("moe", &a, &b, o);
}

static void test_moe_ep_zero_rows(void)
{
    /* train.batch_size = 3 < P = 4: one rank has no rows yet takes part in every MoE
     * exchange (forward and backward); the same as one process */
    ccoe_config a, b;
    tiny(&a, "moe");
    set(&a, "moe.gate=noisy_topk");
    set(&a, "moe.n_experts=4");
    set(&a, "moe.top_k=2");
    set(&a, "moe.capacity_factor=0");
    set(&a, "train.batch_size=3");
    b = a;
    ccoe_train_opts o = {0};
    equivalence("moe_zero_rows", &a, &b, o);
}

static void test_ccoe_ffn(void)
{
    /* Eqs. 6-7 (FFN-level experts in post-LN blocks, rule gated), data parallel over uneven
     * row slices, with overlapped buckets (the experts' FFN gradients finish after the shared
     * blocks above them) */
    ccoe_config a, b;
    tiny(&a, "ffn");
    set(&a, "model.n_layer=3");
    set(&a, "model.block=post_ln");
    set(&a, "ccoe.form=ffn");
    set(&a, "ccoe.experts=arith:2 code:1");
    set(&a, "ccoe.routes=arith:arith code:code");
    set(&a, "train.batch_size=5");
    b = a;
    ccoe_train_opts o = {0};
    o.allreduce_overlap = 1;
    equivalence("ffn", &a, &b, o);
}

static void ccoe_tail(ccoe_config *c, const char *dir)
{
    tiny(c, dir);
    set(c, "model.n_layer=3");
    set(c, "ccoe.form=tail");
    set(c, "ccoe.experts=arith:1 code:1");
    set(c, "ccoe.routes=arith:arith code:code");
}

static void test_ccoe(void)
{
    ccoe_config a, b;
    ccoe_tail(&a, "ccoe-ref");
    ccoe_tail(&b, "ccoe");
    set(&a, "train.batch_size=5");
    set(&b, "train.batch_size=5");
    ccoe_train_opts o = {0};
    equivalence("ccoe", &a, &b, o);
    /* isolated training of one expert on its domain, data parallel, from that model */
    char init[512];
    path_of(init, sizeof init, "ccoe-ref", "checkpoint.safetensors");
    o.init_from = init;
    ccoe_tail(&a, "iso");
    ccoe_tail(&b, "iso");
    set(&a, "ccoe.train_expert=arith");
    set(&b, "ccoe.train_expert=arith");
    equivalence("iso", &a, &b, o);
    if (g_comm.rank == 0)
        compare_ckpt("ccoe-ref", g_comm.size == 2 ? "iso-p2" : "iso-p4", NULL, 1, 0.0,
                     "frozen base under isolated data-parallel training");
}

/* The first step's counter `key` ("bytes_exchanged", ...) of a run's metrics (rank 0 writes
 * them), -1 if absent. */
static long long first_step_counter(const char *run_dir, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    char p[512], line[8192];
    path_of(p, sizeof p, run_dir, "metrics.jsonl");
    FILE *f = fopen(p, "r");
    long long v = -1;
    while (f && fgets(line, sizeof line, f)) {
        const char *k = strstr(line, pat);
        if (k && strstr(line, "\"loss\"")) {
            v = atoll(k + strlen(pat));
            break;
        }
    }
    if (f)
        fclose(f);
    return v;
}

static void test_ccoe_placement(void)
{
    /* --ccoe-placement experts: each CCoE expert on its owner rank, rows sent there after the
     * base prefix; the same loss curve and checkpoint (experts gathered from their owners) as
     * one process. Tail with B = 3 (on 4 ranks rank 0 has no rows; ranks 0 and 2 own no
     * expert), prefix with own heads and the final evaluation (experts synced first). */
    ccoe_config a, b;
    ccoe_tail(&a, "place-tail");
    set(&a, "train.batch_size=3");
    b = a;
    ccoe_train_opts o = {0};
    ccoe_train_opts op = {0};
    op.ccoe_placement = 1;
    char ref[64], par[64];
    snprintf(ref, sizeof ref, "place-tail-ref");
    snprintf(par, sizeof par, "place-tail-p%d", g_comm.size);
    with_dir(&a, ref);
    with_dir(&b, par);
    if (g_comm.rank == 0)
        must_run(&a, NULL, o, ref);
    barrier();
    must_run(&b, &g_comm, op, par);
    if (g_comm.rank == 0) {
        compare_losses(ref, par, 1e-5, "placement tail");
        compare_ckpt(ref, par, NULL, 0, 1e-5, "placement tail");
        long long bx = first_step_counter(par, "bytes_exchanged");
        CHECK(bx > 0, "placement tail: bytes_exchanged %lld on rank 0", bx);
        /* the experts' gradients are no longer summed: less than the replicated run of the
         * same model (test_ccoe) */
        char rep[64];
        snprintf(rep, sizeof rep, "ccoe-p%d", g_comm.size);
        long long ar = first_step_counter(par, "bytes_allreduce");
        long long ar_rep = first_step_counter(rep, "bytes_allreduce");
        CHECK(ar > 0 && ar < ar_rep, "placement tail: bytes_allreduce %lld, replicated %lld",
              ar, ar_rep);
    }
    tiny(&a, "place-prefix");
    set(&a, "model.n_layer=3");
    set(&a, "ccoe.form=prefix");
    set(&a, "ccoe.prefix_layers=1");
    set(&a, "ccoe.own_head=true");
    set(&a, "ccoe.experts=arith:1 code:1");
    set(&a, "ccoe.routes=arith:arith code:code");
    set(&a, "train.batch_size=5");
    set(&a, "train.grad_accum=2");
    b = a;
    snprintf(ref, sizeof ref, "place-prefix-ref");
    snprintf(par, sizeof par, "place-prefix-p%d", g_comm.size);
    with_dir(&a, ref);
    with_dir(&b, par);
    if (g_comm.rank == 0)
        must_run(&a, NULL, o, ref);
    barrier();
    must_run(&b, &g_comm, op, par);
    if (g_comm.rank == 0) {
        compare_losses(ref, par, 1e-5, "placement prefix");
        compare_ckpt(ref, par, NULL, 0, 1e-5, "placement prefix");
    }
    /* Eqs. 6-7: the expert rows' FFN inputs go to the owner in every covered block; B = 3
     * (on 4 ranks rank 0 has no rows and still joins every block's exchange), overlapped
     * buckets */
    tiny(&a, "place-ffn");
    set(&a, "model.n_layer=3");
    set(&a, "model.block=post_ln");
    set(&a, "ccoe.form=ffn");
    set(&a, "ccoe.experts=arith:2 code:1");
    set(&a, "ccoe.routes=arith:arith code:code");
    set(&a, "train.batch_size=3");
    b = a;
    op.allreduce_overlap = 1;
    equivalence("place-ffn", &a, &b, op);
    if (g_comm.rank == 0) {
        snprintf(par, sizeof par, "place-ffn-p%d", g_comm.size);
        char rep[64];
        snprintf(rep, sizeof rep, "ffn-p%d", g_comm.size);
        long long bx = first_step_counter(par, "bytes_exchanged");
        long long ar = first_step_counter(par, "bytes_allreduce");
        long long ar_rep = first_step_counter(rep, "bytes_allreduce");
        CHECK(bx > 0, "placement ffn: bytes_exchanged %lld on rank 0", bx);
        CHECK(ar > 0 && ar < ar_rep, "placement ffn: bytes_allreduce %lld, replicated %lld", ar,
              ar_rep);
    }
}

static void test_resume(void)
{
    /* 6 steps on P ranks stopped after 3, resumed on 1 rank = the 6-step reference */
    ccoe_config c;
    tiny(&c, "resume");
    ccoe_train_opts o = {0};
    o.stop_at = 3;
    must_run(&c, &g_comm, o, "stop at 3 on P ranks");
    if (g_comm.rank == 0) {
        char ck[512];
        path_of(ck, sizeof ck, "resume", "checkpoint.safetensors");
        ccoe_train_opts r = {0};
        r.resume = ck;
        must_run(&c, NULL, r, "resume on 1 rank");
        compare_losses("dense-ref", "resume", 1e-5, "resume");
        compare_ckpt("dense-ref", "resume", NULL, 0, 1e-5, "resume");
    }
    barrier();
}

static void test_failure(void)
{
    ccoe_config c;
    tiny(&c, "fail");
    ccoe_train_opts o = {0};
    o.test_fail_mode = "error";
    o.test_fail_rank = g_comm.size - 1;
    o.test_fail_step = 3;
    ccoe_error err;
    ccoe_status st = run(&c, &g_comm, o, &err);
    char want[32];
    snprintf(want, sizeof want, "rank %d failed", g_comm.size - 1);
    CHECK(st != CCOE_OK, "an injected failure on rank %d must fail every rank", g_comm.size - 1);
    CHECK(g_comm.failed_rank == g_comm.size - 1, "failed_rank %d", g_comm.failed_rank);
    if (g_comm.rank != g_comm.size - 1)
        CHECK(strstr(err.msg, want) != NULL, "message '%s' lacks '%s'", err.msg, want);
    else
        CHECK(strstr(err.msg, "injected") != NULL, "message '%s'", err.msg);
    /* a non-finite loss on one rank: every rank stops with the rank named */
    o.test_fail_mode = "nan";
    o.test_fail_rank = 0;
    st = run(&c, &g_comm, o, &err);
    CHECK(st == CCOE_ERR_NUMERIC && strstr(err.msg, "on rank 0"), "nan: %s", err.msg);
    g_comm.failed_rank = -1;
}

static void test_experts_parallel(void)
{
    ccoe_config c, solo;
    char init[512];
    path_of(init, sizeof init, "ccoe-ref", "checkpoint.safetensors");
    ccoe_train_opts o = {0};
    o.init_from = init;
    const char *names[] = {"arith", "code"};
    if (g_comm.rank == 0)
        for (int i = 0; i < 2; i++) {
            char dir[64], kv[64];
            snprintf(dir, sizeof dir, "solo-%s", names[i]);
            ccoe_tail(&solo, dir);
            snprintf(kv, sizeof kv, "ccoe.train_expert=%s", names[i]);
            set(&solo, kv);
            must_run(&solo, NULL, o, dir);
        }
    barrier();
    /* 2 experts: on 2 ranks one each (bit for bit the solo runs); on 4 ranks each trains data
     * parallel on a group of 2 (the solo runs up to summation order) */
    const double tol = g_comm.size > 2 ? 1e-5 : 0.0;
    ccoe_tail(&c, "experts-all");
    o.train_experts = "all";
    must_run(&c, &g_comm, o, "--train-experts all");
    if (g_comm.rank == 0) {
        compare_ckpt("solo-arith", "experts-all", "experts.arith.", 0, tol, "expert arith");
        compare_ckpt("solo-code", "experts-all", "experts.code.", 0, tol, "expert code");
        compare_ckpt("ccoe-ref", "experts-all", NULL, 1, 0.0, "base under --train-experts");
        /* each expert's metrics name the ranks that trained it */
        for (int i = 0; i < 2; i++) {
            char f[64], p[512], line[256] = "", want[32];
            snprintf(f, sizeof f, "metrics.%s.jsonl", names[i]);
            path_of(p, sizeof p, "experts-all", f);
            FILE *fp = fopen(p, "r");
            if (fp && !fgets(line, sizeof line, fp))
                line[0] = '\0';
            if (fp)
                fclose(fp);
            snprintf(want, sizeof want, "\"ranks\":%d", g_comm.size > 2 ? g_comm.size / 2 : 1);
            CHECK(strstr(line, want) != NULL, "%s: start event '%s' lacks %s", p, line, want);
        }
    }
    /* the experts on the ranks mpi.map names (one rank each, however many ranks): the solo
     * runs bit for bit */
    ccoe_tail(&c, "experts-map");
    set(&c, "mpi.placement=list");
    set(&c, "mpi.map=1,0");
    must_run(&c, &g_comm, o, "--train-experts all with a list map");
    if (g_comm.rank == 0) {
        compare_ckpt("solo-arith", "experts-map", "experts.arith.", 0, 0.0, "list map, arith");
        compare_ckpt("solo-code", "experts-map", "experts.code.", 0, 0.0, "list map, code");
        compare_ckpt("ccoe-ref", "experts-map", NULL, 1, 0.0, "base, list map");
    }
}

int main(int argc, char **argv)
{
    ccoe_error err = {0};
    if (ccoe_comm_mpi_init(&g_comm, &argc, &argv, &err) != CCOE_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    if (g_comm.size < 2)
        fprintf(stderr, "note: run under mpirun -np 2 or 4 to test more than one rank\n");
    if (g_comm.rank == 0) {
        snprintf(g_dir, sizeof g_dir, "%s/ccoe-mpi.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(g_dir)) {
            perror("mkdtemp");
            g_comm.ops->abort(&g_comm, 1);
        }
    }
    if (g_comm.ops->bcast(&g_comm, g_dir, sizeof g_dir, 0, &err) != CCOE_OK) {
        fprintf(stderr, "%s\n", err.msg);
        g_comm.ops->abort(&g_comm, 1);
    }
    struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {{"dense", test_dense},       {"uneven", test_uneven},
                 {"moe_ep", test_moe_ep},     {"moe_ep_zero_rows", test_moe_ep_zero_rows},
                 {"ccoe", test_ccoe},
                 {"ccoe_ffn", test_ccoe_ffn},
                 {"ccoe_placement", test_ccoe_placement},
                 {"resume", test_resume},
                 {"failure", test_failure},   {"experts_parallel", test_experts_parallel}};
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        int before = g_failures;
        tests[i].fn();
        barrier();
        if (g_comm.rank == 0)
            printf("%s %s (np %d)\n", g_failures == before ? "ok  " : "FAIL", tests[i].name,
                   g_comm.size);
    }
    int64_t total = g_failures;
    if (g_comm.ops->allreduce_i64(&g_comm, &total, 1, &err) != CCOE_OK) {
        fprintf(stderr, "%s\n", err.msg);
        g_comm.ops->abort(&g_comm, 1);
    }
    if (g_comm.rank == 0) {
        if (total == 0) {
            char cmd[300];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
            if (system(cmd) != 0)
                fprintf(stderr, "note: could not remove %s\n", g_dir);
        }
        printf("%s: %lld failure(s)%s%s\n", total ? "FAILED" : "PASSED", (long long)total,
               total ? "; files kept in " : "", total ? g_dir : "");
    }
    ccoe_comm_mpi_finalize(&g_comm);
    return total ? 1 : 0;
}
