/* main.c - the ccoe command line. The only place that turns a status into an exit code. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "checkpoint.h"
#include "checkpoint_tokenizer.h"
#include "cmd_tokenizer_train.h"
#include "comm.h"
#include "comm_mpi.h"
#include "config.h"
#include "data.h"
#include "eval.h"
#include "expert.h"
#include "fs.h"
#include "gate.h"
#include "gating.h"
#include "session.h"
#include "status.h"
#include "study.h"
#include "tokenizer.h"
#include "train.h"

static const char *k_usage =
    "usage: ccoe COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  train CONFIG [--set section.key=value]... [--resume CKPT | --init-from CKPT] [--force]\n"
    "        [--stop-at STEP] [--time-limit SECONDS] [--progress|--no-progress] [--quiet]\n"
    "        train the model described by CONFIG (an INI file in configs/); --stop-at and\n"
    "        --time-limit checkpoint and exit early (resume later with --resume); --init-from\n"
    "        starts from another run's weights (e.g. a base model for CCoE expert training);\n"
    "        --train-experts all|NAME,... trains those experts in isolation, in parallel;\n"
    "        --allreduce overlap|blocking (MPI: gradient sum during or after backward)\n"
    "        --ccoe-placement experts|replicated (MPI: CCoE experts on their owner ranks, rows\n"
    "          sent there after the base prefix, or per block for form ffn; default\n"
    "          replicated); which rank owns which expert (MoE or CCoE):\n"
    "          --set mpi.placement=contiguous|round_robin|balanced|list and mpi.map=R0,R1,...\n"
    "          (on --resume the checkpoint's unless set again)\n"
    "  train-expert MODEL --expert NAME [--domain D]... [--layers N] [--form tail|prefix|ffn]\n"
    "        [--set section.key=value]... [-o OUT_DIR] [--push OUT_MODEL] [--force] [--quiet]\n"
    "        train one CCoE expert with everything else frozen, on its domains' data only: a\n"
    "        new expert (needs --domain; starts as a copy of the base it replaces) or an\n"
    "        existing one (continual training); --push writes MODEL + the trained expert\n"
    "  eval CHECKPOINT [--set data.manifest=...] [--batches N] [--no-tasks]\n"
    "        per-domain validation loss, perplexity and task accuracy (and bits per byte\n"
    "        with a BPE tokenizer); --text FILE [--domain D]: loss (nats/token), bits per\n"
    "        byte and perplexity of one text file under the model's own tokenizer\n"
    "  generate CHECKPOINT [--domain D] [--max-new N] [--stop C|none] [--temperature T]\n"
    "        [--top-k K] [--top-p P] [--seed S] [--prompts FILE|-] PROMPT...\n"
    "        continuation of each PROMPT (routed as domain D: the first domain by default),\n"
    "        one line each, until C (default: the domain's answer end, a newline); greedy\n"
    "        unless --temperature T > 0 samples (with --top-k/--top-p; the same --seed, the\n"
    "        same text); --prompts adds one prompt per line of FILE (- = standard input)\n"
    "  info CHECKPOINT\n"
    "        stored config, training state and tensors of a checkpoint\n"
    "  bench [--shape small|tiny-wide|gpt2-124m|all] [--steps N] [--threads N] [--gemm B] [--ffn gelu|swiglu]\n"
    "        [--moe none|GATE] [--ccoe none|tail|prefix|ffn] [--profile]\n"
    "        training throughput and model-FLOP utilisation on reference shapes; --profile\n"
    "        adds each shape's GEMM calls by size (time per step, GFLOP/s, share of the step)\n"
    "  push MODEL EXPERT_FILE [--domain D]... [-o OUT]\n"
    "        add a CCoE expert (last position of its CoE layer) or replace an expert's weights\n"
    "  pop MODEL --expert NAME -o FILE | pop MODEL --expert NAME --remove [-o OUT]\n"
    "        deep-copy an expert out of a model, or remove it (its domains use the base)\n"
    "  compare A B [--params | --only-base]\n"
    "        compare two files bit for bit: every tensor (optimizer state included), the\n"
    "        tensor sets and the metadata (exit 0 if identical, 1 if not); --params compares\n"
    "        only the parameter tensors both hold; --only-base also skips experts.*\n"
    "  reseal CHECKPOINT [-o OUT]\n"
    "        check a checkpoint that has no whole-file checksum (an older ccoe wrote it) as a\n"
    "        load would and rewrite it with one (in place unless -o)\n"
    "  study STUDY_FILE [--set section.key=value]... [--force] [--verbose]\n"
    "        train every variant of a study (configs/study-*.ini: [study] base, budget =\n"
    "        tokens:N | flops:N, out_dir, variants; [variant.NAME] section.key = value\n"
    "        overrides) on the same data and budget; writes OUT_DIR/study.md, study.csv and\n"
    "        plot data (scripts/plot_study.sh OUT_DIR draws the PNGs); --set study.KEY=V\n"
    "        overrides a [study] key, other --set keys apply to every variant; finished runs\n"
    "        of the same config are reused (--force retrains)\n"
    "  data write-builtin DIR\n"
    "        write the embedded default data set as files plus a manifest\n"
    "  tokenizer encode TOKENIZER [FILE|-] | tokenizer decode TOKENIZER [FILE|-]\n"
    "        encode: the token ids of each line of FILE (standard input if absent or -),\n"
    "        space separated, one output line per input line; decode: the inverse (a line of\n"
    "        ids back to its text); TOKENIZER is byte or a directory with vocab.json +\n"
    "        merges.txt or tokenizer.json (scripts/fetch_gpt2_tokenizer.sh fetches GPT-2's)\n"
    "  tokenizer train FILE... --vocab N -o DIR [--min-frequency N] [--special TOK]...\n"
    "        [--no-special]: learn a byte-level BPE from text files (tokenizer train --help)\n"
    "  help-config\n"
    "        every config key with its allowed values and default\n"
    "\n"
    "under MPI (mpirun -np P ccoe train ...) every rank trains: data parallel, or with\n"
    "--train-experts all|NAME,... several CCoE experts at once, placed over the ranks;\n"
    "mpirun -np P ccoe study trains each variant on all P ranks the same way; the other\n"
    "commands run on rank 0 only\n";

/* The communicator of this process (main sets it: serial, or MPI under mpirun). */
static ccoe_comm *g_comm;

/* Under MPI, errors name the rank; a failure every rank agreed on (comm->failed_rank >= 0) is
 * printed by rank 0 and the failing rank only. */
static int fail(const ccoe_error *err)
{
    if (g_comm && g_comm->size > 1) {
        const int r = g_comm->rank, f = g_comm->failed_rank;
        if (r == 0 || f < 0 || f == r)
            fprintf(stderr, "ccoe: [rank %d] %s: %s\n", r, ccoe_status_name(err->status),
                    err->msg);
    } else {
        fprintf(stderr, "ccoe: %s: %s\n", ccoe_status_name(err->status), err->msg);
    }
    return ccoe_error_exit_code(err);
}

/* Usage errors come from the command line, the same on every rank: rank 0 prints. */
/* The usage text, and the gates the registry holds (variants/gate_registry.c). */
static void print_usage(FILE *out)
{
    char gates[256];
    ccoe_gate_list_names(gates, sizeof gates);
    fprintf(out, "%sGATE (moe.gate, --moe): %s\n", k_usage, gates);
}

static int usage_error(const char *what, const char *arg)
{
    if (g_comm && g_comm->size > 1) {
        g_comm->failed_rank = 0; /* every rank fails the same way: no abort needed */
        if (g_comm->rank != 0)
            return 2;
    }
    fprintf(stderr, "ccoe: usage error: %s%s%s\n\n", what, *arg ? ": " : "", arg);
    print_usage(stderr);
    return 2;
}

static int parse_int_arg(const char *s, int lo, int hi, int *out)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return 0;
    *out = (int)v;
    return 1;
}

/* A finite number in [lo, hi]. */
static int parse_float_arg(const char *s, double lo, double hi, float *out)
{
    char *end = NULL;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi))
        return 0;
    *out = (float)v;
    return 1;
}

/* ccoe train CONFIG [flags]: returns the exit code. */
static int cmd_train(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-')
        return usage_error("train needs a CONFIG file", "");
    ccoe_error err = {0};
    ccoe_config cfg;
    ccoe_config_defaults(&cfg);
    /* config errors may differ between ranks (a file missing on one node): agreed on below */
    ccoe_status cst = ccoe_config_load_file(&cfg, argv[0], &err);
    ccoe_train_opts o = {.resume = NULL, .force = 0, .progress = -1, .quiet = 0,
                         .comm = g_comm};
    /* test hook (tests/cli/mpi_*.sh): make one rank fail; see ccoe_train_opts */
    if (getenv("CCOE_TEST_FAIL_MODE")) {
        o.test_fail_mode = getenv("CCOE_TEST_FAIL_MODE");
        o.test_fail_rank = getenv("CCOE_TEST_FAIL_RANK") ? atoi(getenv("CCOE_TEST_FAIL_RANK")) : 0;
        o.test_fail_step = getenv("CCOE_TEST_FAIL_STEP") ? atol(getenv("CCOE_TEST_FAIL_STEP")) : 1;
    }
    /* the --set mpi.* assignments (a resumed run applies them over the checkpoint's) */
    const char *mpi_sets[64];
    int n_mpi_sets = 0;
    for (int i = 1; i < argc; i++) {
        const char *assign = NULL;
        if (strcmp(argv[i], "--set") == 0 && i + 1 < argc)
            assign = argv[++i];
        else if (strncmp(argv[i], "--set=", 6) == 0)
            assign = argv[i] + 6;
        if (assign) {
            if (cst == CCOE_OK)
                cst = ccoe_config_set(&cfg, assign, &err);
            if (strncmp(assign, "mpi.", 4) == 0) {
                if (n_mpi_sets == 64)
                    return usage_error("too many --set mpi.* assignments at", assign);
                mpi_sets[n_mpi_sets++] = assign;
            }
        } else if (strcmp(argv[i], "--train-experts") == 0 && i + 1 < argc) {
            o.train_experts = argv[++i];
        } else if (strcmp(argv[i], "--allreduce") == 0 && i + 1 < argc) {
            ++i;
            if (strcmp(argv[i], "overlap") != 0 && strcmp(argv[i], "blocking") != 0)
                return usage_error("--allreduce takes overlap or blocking, not", argv[i]);
            o.allreduce_overlap = strcmp(argv[i], "overlap") == 0;
        } else if (strcmp(argv[i], "--ccoe-placement") == 0 && i + 1 < argc) {
            ++i;
            if (strcmp(argv[i], "experts") != 0 && strcmp(argv[i], "replicated") != 0)
                return usage_error("--ccoe-placement takes experts or replicated, not", argv[i]);
            o.ccoe_placement = strcmp(argv[i], "experts") == 0;
        } else if (strcmp(argv[i], "--resume") == 0 && i + 1 < argc) {
            o.resume = argv[++i];
        } else if (strcmp(argv[i], "--init-from") == 0 && i + 1 < argc) {
            o.init_from = argv[++i];
        } else if (strcmp(argv[i], "--force") == 0) {
            o.force = 1;
        } else if (strcmp(argv[i], "--stop-at") == 0 && i + 1 < argc) {
            int v;
            if (!parse_int_arg(argv[++i], 1, 1 << 30, &v))
                return usage_error("--stop-at takes a step number >= 1, not", argv[i]);
            o.stop_at = v;
        } else if (strcmp(argv[i], "--time-limit") == 0 && i + 1 < argc) {
            int v;
            if (!parse_int_arg(argv[++i], 1, 1 << 30, &v))
                return usage_error("--time-limit takes whole seconds >= 1, not", argv[i]);
            o.time_limit = v;
        } else if (strcmp(argv[i], "--progress") == 0) {
            o.progress = 1;
        } else if (strcmp(argv[i], "--no-progress") == 0) {
            o.progress = 0;
        } else if (strcmp(argv[i], "--quiet") == 0) {
            o.quiet = 1;
        } else {
            return usage_error("unknown or incomplete train argument", argv[i]);
        }
    }
    if (o.resume && o.init_from)
        return usage_error("--resume and --init-from exclude each other", "");
    o.mpi_sets = mpi_sets;
    o.n_mpi_sets = n_mpi_sets;
    if (cst == CCOE_OK)
        cst = ccoe_config_validate(&cfg, &err);
    if (ccoe_comm_agree(g_comm, cst, &err) != CCOE_OK) /* collective */
        return fail(&err);
    if (ccoe_train_run(&cfg, &o, &err) != CCOE_OK)
        return fail(&err);
    return 0;
}

/* ccoe train-expert MODEL --expert NAME ... */
static int cmd_train_expert(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-')
        return usage_error("train-expert needs a MODEL checkpoint", "");
    const char *domains[CCOE_MAX_DOMAINS];
    const char **sets = calloc((size_t)argc, sizeof *sets);
    if (!sets)
        return 1;
    ccoe_expert_train_opts o = {.model = argv[0], .domains = domains, .sets = sets,
                                .progress = -1, .comm = g_comm};
    int rc = -1;
    for (int i = 1; i < argc && rc < 0; i++) {
        const int more = i + 1 < argc;
        if (strcmp(argv[i], "--expert") == 0 && more) {
            o.name = argv[++i];
        } else if (strcmp(argv[i], "--domain") == 0 && more) {
            if (o.n_domains == CCOE_MAX_DOMAINS)
                rc = usage_error("too many --domain arguments", "");
            else
                domains[o.n_domains++] = argv[++i];
        } else if (strcmp(argv[i], "--layers") == 0 && more) {
            if (!parse_int_arg(argv[++i], 1, 256, &o.layers))
                rc = usage_error("--layers takes a layer count 1..256, not", argv[i]);
        } else if (strcmp(argv[i], "--form") == 0 && more) {
            o.form = argv[++i];
        } else if (strcmp(argv[i], "--set") == 0 && more) {
            sets[o.n_sets++] = argv[++i];
        } else if (strcmp(argv[i], "-o") == 0 && more) {
            o.out_dir = argv[++i];
        } else if (strcmp(argv[i], "--push") == 0 && more) {
            o.push_to = argv[++i];
        } else if (strcmp(argv[i], "--force") == 0) {
            o.force = 1;
        } else if (strcmp(argv[i], "--quiet") == 0) {
            o.quiet = 1;
        } else if (strcmp(argv[i], "--no-progress") == 0) {
            o.progress = 0;
        } else {
            rc = usage_error("unknown or incomplete train-expert argument", argv[i]);
        }
    }
    if (rc < 0 && !o.name)
        rc = usage_error("train-expert needs --expert NAME", "");
    if (rc < 0) {
        ccoe_error err = {0};
        rc = ccoe_expert_train(&o, &err) == CCOE_OK ? 0 : fail(&err);
    }
    free(sets);
    return rc;
}

/* ccoe eval CHECKPOINT [--set data.*|run.*|train.eval_batches=...] [--batches N] [--no-tasks];
 * under mpirun every rank evaluates its share (ccoe_eval_domains) and rank 0 prints. */
static int cmd_eval(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-')
        return usage_error("eval needs a CHECKPOINT file", "");
    int batches = -1, tasks = 1, rc = 0, n_sets = 0;
    const char *sets[64], *text = NULL, *text_domain = NULL; /* --text FILE [--domain D] */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            const char *a = argv[++i];
            if (strncmp(a, "data.", 5) != 0 && strncmp(a, "run.", 4) != 0 &&
                strncmp(a, "train.eval_batches", 18) != 0)
                return usage_error("eval can only override data.*, run.* and "
                                   "train.eval_batches (the model comes from the checkpoint), "
                                   "not",
                                   a);
            if (n_sets == (int)(sizeof sets / sizeof sets[0]))
                return usage_error("eval takes at most 64 --set overrides, not more at", a);
            sets[n_sets++] = a;
        } else if (strcmp(argv[i], "--batches") == 0 && i + 1 < argc) {
            if (!parse_int_arg(argv[++i], 0, 1 << 30, &batches))
                return usage_error("--batches takes a whole number >= 0 (0 = all), not",
                                   argv[i]);
        } else if (strcmp(argv[i], "--no-tasks") == 0) {
            tasks = 0;
        } else if (strcmp(argv[i], "--text") == 0 && i + 1 < argc) {
            text = argv[++i];
        } else if (strcmp(argv[i], "--domain") == 0 && i + 1 < argc) {
            text_domain = argv[++i];
        } else {
            return usage_error("unknown or incomplete eval argument", argv[i]);
        }
    }
    if (text_domain && !text)
        return usage_error("eval --domain D goes with --text FILE", text_domain);
    /* set-up on every rank, then one agreement: a failure is printed once, nobody waits */
    ccoe_error err = {0};
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    ccoe_session s;
    int have_session = 0;
    ccoe_status st = ccoe_checkpoint_open(argv[0], &cfg, &f, &err);
    for (int i = 0; st == CCOE_OK && i < n_sets; i++)
        st = ccoe_config_set(&cfg, sets[i], &err);
    if (st == CCOE_OK && batches >= 0)
        cfg.train.eval_batches = batches;
    if (st == CCOE_OK) /* --set data.tokenizer must name the model's own tokenizer */
        st = ccoe_ckpt_tok_check(f, argv[0], cfg.data.tokenizer, &err);
    if (st == CCOE_OK && (st = ccoe_session_open(&s, &cfg, 1, &err)) == CCOE_OK)
        have_session = 1;
    if (st == CCOE_OK)
        st = ccoe_checkpoint_load(f, argv[0], &s.model, NULL, NULL, &err);
    st = ccoe_comm_agree(g_comm, st, &err); /* collective */
    if (st == CCOE_OK && text) { /* one text file's loss and bits per byte (ccoe_eval_text) */
        ccoe_text_eval te;
        st = ccoe_eval_text_file(&s.model, &s.tok, &s.batch, &s.data, text, text_domain, &te,
                                 &err);
        rc = st != CCOE_OK ? fail(&err) : 0;
        if (st == CCOE_OK && g_comm->rank == 0)
            ccoe_eval_text_print(stdout, text, text_domain, s.cfg.data.tokenizer, &te);
        ccoe_session_close(&s);
        ccoe_st_close(f);
        return rc;
    }
    ccoe_domain_eval ev[CCOE_MAX_DOMAINS];
    if (st == CCOE_OK)
        st = ccoe_eval_domains(&s.model, &s.data, &s.tok, &s.batch, s.cfg.train.eval_batches,
                               tasks, g_comm, ev, &err);
    if (st != CCOE_OK) {
        rc = fail(&err);
    } else if (g_comm->rank == 0) {
        printf("checkpoint %s (step %s), data %s\n", argv[0],
               ccoe_st_meta(f, "step") ? ccoe_st_meta(f, "step") : "?", s.cfg.data.manifest);
        if (g_comm->size > 1)
            printf("evaluated on %d ranks (batches and task chunks split between them)\n",
                   g_comm->size);
        ccoe_eval_print(stdout, &s.data, ev);
        if (s.gating.n_experts > 0) {
            /* the inference cost of each domain's path */
            printf("\n%-12s %-32s %14s %16s\n", "domain", "path", "active_params",
                   "fwd_MFLOP/token");
            for (int d = 0; d < s.gating.n_domains; d++) {
                int e = s.gating.route[d];
                char path[96];
                ccoe_gating_path_name(&s.gating, d, path, sizeof path);
                printf("%-12s %-32s %14zu %16.2f\n", s.gating.domains[d], path,
                       ccoe_model_path_params(&s.model, e + 1),
                       ccoe_model_path_forward_flops(&s.model, e + 1, s.cfg.model.seq_len) / 1e6);
            }
        }
    }
    if (have_session)
        ccoe_session_close(&s);
    ccoe_st_close(f);
    return rc;
}

/* Appends the lines of path ("-": standard input) to *prompts (n of them so far; grown), each
 * a prompt (a final line without a newline counts, "\r\n" ends a line too). *text owns them. */
static ccoe_status read_prompt_lines(const char *path, const char ***prompts, int *n, char **text,
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

/* ccoe generate CHECKPOINT [--domain D] [--max-new N] [--stop C|none] [--temperature T]
 * [--top-k K] [--top-p P] [--seed S] [--prompts FILE|-] PROMPT... */
static int cmd_generate(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-')
        return usage_error("generate needs a CHECKPOINT file", "");
    const char *domain = NULL, *stop_arg = NULL;
    int max_new = 64;
    ccoe_sampling samp = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 1};
    const char *prompt_file = NULL;
    const char **prompts = calloc((size_t)argc, sizeof *prompts);
    int n = 0;
    if (!prompts)
        return 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--domain") == 0 && i + 1 < argc) {
            domain = argv[++i];
        } else if (strcmp(argv[i], "--max-new") == 0 && i + 1 < argc) {
            if (!parse_int_arg(argv[++i], 1, 1 << 20, &max_new)) {
                free(prompts);
                return usage_error("--max-new takes a whole number >= 1, not", argv[i]);
            }
        } else if (strcmp(argv[i], "--stop") == 0 && i + 1 < argc) {
            stop_arg = argv[++i];
            if (strcmp(stop_arg, "none") != 0 && strlen(stop_arg) != 1) {
                free(prompts);
                return usage_error("--stop takes one character or 'none', not", stop_arg);
            }
        } else if (strcmp(argv[i], "--temperature") == 0 && i + 1 < argc) {
            if (!parse_float_arg(argv[++i], 0.0, 100.0, &samp.temperature)) {
                free(prompts);
                return usage_error("--temperature takes a number 0..100 (0: greedy), not",
                                   argv[i]);
            }
        } else if (strcmp(argv[i], "--top-k") == 0 && i + 1 < argc) {
            if (!parse_int_arg(argv[++i], 0, 1 << 30, &samp.top_k)) {
                free(prompts);
                return usage_error("--top-k takes a whole number >= 0 (0: off), not", argv[i]);
            }
        } else if (strcmp(argv[i], "--top-p") == 0 && i + 1 < argc) {
            if (!parse_float_arg(argv[++i], 1e-6, 1.0, &samp.top_p)) {
                free(prompts);
                return usage_error("--top-p takes a number in (0, 1] (1: off), not", argv[i]);
            }
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            char *end = NULL;
            const char *v = argv[++i];
            errno = 0;
            samp.seed = strtoull(v, &end, 10);
            if (!*v || *end || *v == '-' || errno) {
                free(prompts);
                return usage_error("--seed takes a whole number >= 0, not", v);
            }
        } else if (strcmp(argv[i], "--prompts") == 0 && i + 1 < argc) {
            prompt_file = argv[++i];
        } else if (strncmp(argv[i], "--", 2) == 0) {
            free(prompts);
            return usage_error("unknown or incomplete generate argument", argv[i]);
        } else {
            prompts[n++] = argv[i];
        }
    }
    ccoe_error err = {0};
    char *prompt_text = NULL; /* --prompts: the file's lines, after the command line's */
    if (prompt_file) {
        if (read_prompt_lines(prompt_file, &prompts, &n, &prompt_text, &err) != CCOE_OK) {
            free(prompts);
            return fail(&err);
        }
    }
    if (n == 0) {
        free(prompts);
        free(prompt_text);
        return usage_error("generate needs at least one PROMPT (or --prompts FILE with lines)",
                           "");
    }
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    ccoe_session s;
    int rc = 0, d = 0;
    if (ccoe_checkpoint_open(argv[0], &cfg, &f, &err) != CCOE_OK) {
        free(prompts);
        return fail(&err);
    }
    if (ccoe_session_open(&s, &cfg, 1, &err) != CCOE_OK) {
        ccoe_st_close(f);
        free(prompts);
        return fail(&err);
    }
    if (domain) {
        d = ccoe_data_domain_index(&s.data, domain);
        if (d < 0) {
            char names[CCOE_MAX_DOMAINS * (CCOE_NAME_LEN + 1)] = "";
            for (int k = 0; k < s.data.n_domains; k++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                         k ? ", " : "", s.data.domains[k].name);
            ccoe_error_set(&err, CCOE_ERR_ARG, "--domain %s: the model's data (%s) has the "
                           "domains %s", domain, s.cfg.data.manifest, names);
            rc = fail(&err);
        }
    }
    const char stop = !stop_arg ? s.data.domains[d >= 0 ? d : 0].answer_stop
                      : strcmp(stop_arg, "none") == 0 ? '\0' : stop_arg[0];
    if (rc == 0 && ccoe_checkpoint_load(f, argv[0], &s.model, NULL, NULL, &err) != CCOE_OK)
        rc = fail(&err);
    enum { OUT_CAP = 4096 };
    const int chunk = s.batch.maxB < CCOE_GEN_MAX ? s.batch.maxB : CCOE_GEN_MAX;
    char *buf = rc == 0 ? malloc((size_t)chunk * OUT_CAP) : NULL;
    char *outs[CCOE_GEN_MAX];
    if (rc == 0 && !buf) {
        ccoe_error_set(&err, CCOE_ERR_NOMEM, "out of memory for the generated text");
        rc = fail(&err);
    }
    for (int first = 0; rc == 0 && first < n; first += chunk) {
        const int k = n - first < chunk ? n - first : chunk;
        for (int i = 0; i < k; i++)
            outs[i] = buf + (size_t)i * OUT_CAP;
        const ccoe_gen_opts go = {.max_new = max_new, .stop = stop, .sample = samp,
                                  .first_id = (uint64_t)first};
        if (ccoe_generate(&s.model, &s.tok, &s.batch, prompts + first, d, k, &go, outs, OUT_CAP,
                          &err) != CCOE_OK) {
            rc = fail(&err);
            break;
        }
        for (int i = 0; i < k; i++)
            printf("%s%s\n", prompts[first + i], outs[i]);
    }
    free(buf);
    free(prompts);
    free(prompt_text);
    ccoe_session_close(&s);
    ccoe_st_close(f);
    return rc;
}

static int cmd_info(int argc, char **argv)
{
    if (argc != 1)
        return usage_error("info takes exactly one CHECKPOINT", "");
    ccoe_error err = {0};
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    if (ccoe_checkpoint_open(argv[0], &cfg, &f, &err) != CCOE_OK)
        return fail(&err);
    const char *keys[] = {"ccoe.version", "config_hash", "step", "data_pos", "optim.state"};
    printf("checkpoint %s\n", argv[0]);
    printf("  %-13s whole file, CRC-32 %s, verified\n", "checksum",
           ccoe_st_meta(f, "ccoe.file_crc32"));
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        printf("  %-13s %s\n", keys[i], ccoe_st_meta(f, keys[i]) ? ccoe_st_meta(f, keys[i]) : "-");
    char tok[CCOE_STR * 2];
    ccoe_ckpt_tok_describe(f, tok, sizeof tok);
    printf("  %-13s %s\n", "tokenizer", tok);
    size_t total = 0;
    printf("tensors:\n");
    for (size_t i = 0; i < ccoe_st_count(f); i++) {
        int ndim = 0;
        int64_t shape[CCOE_ST_MAX_DIMS] = {0};
        const char *name = ccoe_st_name(f, i);
        ccoe_st_find(f, name, &ndim, shape);
        size_t numel = 1;
        printf("  %-40s [", name);
        for (int d = 0; d < ndim; d++) {
            printf("%s%lld", d ? ", " : "", (long long)shape[d]);
            numel *= (size_t)shape[d];
        }
        printf("]\n");
        if (strncmp(name, "optim.", 6) != 0)
            total += numel;
    }
    printf("parameters: %zu\n", total);
    if (cfg.ccoe.form != CCOE_FORM_NONE) {
        char names[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
        int nd = ccoe_checkpoint_domains(f, &cfg, names);
        ccoe_gating g;
        if (ccoe_gating_build(&g, &cfg, (const char(*)[CCOE_NAME_LEN])names, nd, &err) == CCOE_OK)
            ccoe_gating_print(stdout, &g);
        else
            printf("task-expert matrix: %s\n", err.msg);
    }
    printf("config:\n");
    char *ini = ccoe_config_to_ini(&cfg);
    printf("%s", ini ? ini : "");
    free(ini);
    ccoe_st_close(f);
    return 0;
}

static int cmd_bench(int argc, char **argv)
{
    ccoe_bench_opts o = {.shape = "all", .steps = 10, .threads = 2, .gemm = "auto",
                         .ffn = "gelu", .moe = "none", .ccoe = "none"};
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc) {
            o.shape = argv[++i];
        } else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
            if (!parse_int_arg(argv[++i], 1, 100000, &o.steps))
                return usage_error("--steps takes a whole number 1..100000, not", argv[i]);
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            if (!parse_int_arg(argv[++i], 1, 1024, &o.threads))
                return usage_error("--threads takes a whole number 1..1024, not", argv[i]);
        } else if (strcmp(argv[i], "--gemm") == 0 && i + 1 < argc) {
            o.gemm = argv[++i];
        } else if (strcmp(argv[i], "--moe") == 0 && i + 1 < argc) {
            o.moe = argv[++i];
            if (strcmp(o.moe, "none") != 0 && !ccoe_gate_find(o.moe))
                return usage_error("--moe takes none or a gate (listed below), not", o.moe);
        } else if (strcmp(argv[i], "--ccoe") == 0 && i + 1 < argc) {
            o.ccoe = argv[++i];
        } else if (strcmp(argv[i], "--ffn") == 0 && i + 1 < argc) {
            o.ffn = argv[++i];
            if (strcmp(o.ffn, "gelu") != 0 && strcmp(o.ffn, "swiglu") != 0)
                return usage_error("--ffn takes gelu or swiglu, not", o.ffn);
        } else if (strcmp(argv[i], "--profile") == 0) {
            o.profile = 1;
        } else {
            return usage_error("unknown or incomplete bench argument", argv[i]);
        }
    }
    ccoe_error err = {0};
    if (ccoe_bench_run(&o, stdout, &err) != CCOE_OK)
        return fail(&err);
    return 0;
}

static int cmd_push(int argc, char **argv)
{
    if (argc < 2 || argv[0][0] == '-' || argv[1][0] == '-')
        return usage_error("push needs MODEL and EXPERT_FILE", "");
    const char *domains[CCOE_MAX_DOMAINS];
    int n = 0;
    const char *out = argv[0];
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--domain") == 0 && i + 1 < argc) {
            if (n == CCOE_MAX_DOMAINS)
                return usage_error("too many --domain arguments", "");
            domains[n++] = argv[++i];
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else {
            return usage_error("unknown or incomplete push argument", argv[i]);
        }
    }
    ccoe_error err = {0};
    if (ccoe_expert_push(argv[0], argv[1], domains, n, out, &err) != CCOE_OK)
        return fail(&err);
    printf("pushed %s into %s -> %s\n", argv[1], argv[0], out);
    return 0;
}

static int cmd_pop(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-')
        return usage_error("pop needs MODEL", "");
    const char *name = NULL, *out = NULL;
    int remove = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--expert") == 0 && i + 1 < argc)
            name = argv[++i];
        else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--remove") == 0)
            remove = 1;
        else
            return usage_error("unknown or incomplete pop argument", argv[i]);
    }
    if (!name)
        return usage_error("pop needs --expert NAME", "");
    if (!remove && !out)
        return usage_error("pop needs -o FILE for the expert (or --remove)", "");
    ccoe_error err = {0};
    ccoe_status s = remove ? ccoe_expert_remove(argv[0], name, out ? out : argv[0], &err)
                           : ccoe_expert_pop(argv[0], name, out, &err);
    if (s != CCOE_OK)
        return fail(&err);
    printf("%s expert %s of %s -> %s\n", remove ? "removed" : "copied", name, argv[0],
           out ? out : argv[0]);
    return 0;
}

static int cmd_compare(int argc, char **argv)
{
    int mode = CCOE_CMP_ALL;
    if (argc == 3 && strcmp(argv[2], "--only-base") == 0)
        mode = CCOE_CMP_BASE;
    else if (argc == 3 && strcmp(argv[2], "--params") == 0)
        mode = CCOE_CMP_PARAMS;
    else if (argc != 2)
        return usage_error("compare takes A B [--params | --only-base]", "");
    ccoe_error err = {0};
    ccoe_st_file *a = NULL, *b = NULL;
    if (ccoe_st_open(argv[0], &a, &err) != CCOE_OK)
        return fail(&err);
    if (ccoe_st_open(argv[1], &b, &err) != CCOE_OK) {
        ccoe_st_close(a);
        return fail(&err);
    }
    int same = ccoe_checkpoint_compare(a, b, mode, stdout, NULL);
    ccoe_st_close(a);
    ccoe_st_close(b);
    return same ? 0 : 1;
}

/* ccoe reseal IN [-o OUT] */
static int cmd_reseal(int argc, char **argv)
{
    const char *out = argc >= 1 ? argv[0] : NULL;
    if (argc == 3 && strcmp(argv[1], "-o") == 0)
        out = argv[2];
    else if (argc != 1)
        return usage_error("reseal takes CHECKPOINT [-o OUT]", "");
    ccoe_error err = {0};
    char note[200] = "";
    if (ccoe_checkpoint_reseal(argv[0], out, note, sizeof note, &err) != CCOE_OK)
        return fail(&err);
    printf("resealed %s -> %s with a whole-file checksum; %s\n", argv[0], out, note);
    return 0;
}

/* ccoe study STUDY_FILE [--set k=v]... [--force] [--verbose] */
static int cmd_study(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-')
        return usage_error("study needs a STUDY_FILE (e.g. configs/study-default.ini)", "");
    const char **sets = calloc((size_t)argc, sizeof *sets);
    if (!sets)
        return 1;
    ccoe_study_opts o = {.sets = sets, .progress = -1, .comm = g_comm};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            sets[o.n_sets++] = argv[++i];
        } else if (strncmp(argv[i], "--set=", 6) == 0) {
            sets[o.n_sets++] = argv[i] + 6;
        } else if (strcmp(argv[i], "--force") == 0) {
            o.force = 1;
        } else if (strcmp(argv[i], "--verbose") == 0) {
            o.verbose = 1;
        } else {
            free(sets);
            return usage_error("unknown or incomplete study argument", argv[i]);
        }
    }
    ccoe_error err = {0};
    ccoe_status st = ccoe_study_run(argv[0], &o, stdout, &err);
    free(sets);
    return st == CCOE_OK ? 0 : fail(&err);
}

static int cmd_data(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[0], "write-builtin") == 0) {
        ccoe_error err = {0};
        if (ccoe_data_write_builtin(argv[1], &err) != CCOE_OK)
            return fail(&err);
        printf("wrote the builtin data set and %s/manifest.ini\n", argv[1]);
        return 0;
    }
    return usage_error("data takes: write-builtin DIR", "");
}

/* Writes v in decimal to f (ids are printed by the million: no printf per id). */
static void put_id(FILE *f, int32_t v)
{
    char b[16];
    int n = 0;
    uint32_t u = v < 0 ? (uint32_t)0 - (uint32_t)v : (uint32_t)v;
    do
        b[n++] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (v < 0)
        b[n++] = '-';
    while (n)
        putc_unlocked(b[--n], f);
}

/* ccoe tokenizer encode|decode TOKENIZER [FILE|-]: one output line per input line. */
static int cmd_tokenizer(int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "train") == 0)
        return ccoe_cmd_tokenizer_train(argc - 1, argv + 1);
    if (argc < 2 || argc > 3 || (strcmp(argv[0], "encode") != 0 && strcmp(argv[0], "decode") != 0))
        return usage_error("tokenizer takes: encode TOKENIZER [FILE|-] or decode TOKENIZER "
                           "[FILE|-]", "");
    const int enc = strcmp(argv[0], "encode") == 0;
    const char *path = argc == 3 ? argv[2] : "-";
    const char *name = strcmp(path, "-") == 0 ? "standard input" : path;
    ccoe_error err = {0};
    ccoe_tokenizer tok;
    if (ccoe_tokenizer_init(&tok, argv[1], &err) != CCOE_OK)
        return fail(&err);
    FILE *in = stdin;
    if (strcmp(path, "-") != 0 && !(in = ccoe_fs_fopen_input(path, "input file", &err))) {
        ccoe_tokenizer_free(&tok);
        return fail(&err);
    }
    static char obuf[1 << 16];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    char *line = NULL, *text = NULL;
    size_t line_cap = 0, text_cap = 0, ids_cap = 0, lineno = 0;
    int32_t *ids = NULL;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &line_cap, in)) >= 0) {
        lineno++;
        size_t len = (size_t)n;
        if (len && line[len - 1] == '\n')
            len--;
        if (enc) {
            size_t k = tok.ops->encode(tok.self, line, len, ids, ids_cap);
            if (k > ids_cap) {
                int32_t *p = realloc(ids, k * sizeof *p);
                if (!p) {
                    ccoe_error_set(&err, CCOE_ERR_NOMEM, "out of memory encoding line %zu",
                                   lineno);
                    rc = fail(&err);
                    goto done;
                }
                ids = p;
                ids_cap = k;
                tok.ops->encode(tok.self, line, len, ids, ids_cap);
            }
            for (size_t i = 0; i < k; i++) {
                if (i)
                    putc_unlocked(' ', stdout);
                put_id(stdout, ids[i]);
            }
            putc_unlocked('\n', stdout);
            continue;
        }
        line[len] = '\0';
        size_t k = 0;
        for (char *p = line, *end;; p = end) {
            while (*p == ' ' || *p == '\t' || *p == '\r')
                p++;
            if (!*p)
                break;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < INT32_MIN || v > INT32_MAX ||
                (*end && *end != ' ' && *end != '\t' && *end != '\r')) {
                ccoe_error_set(&err, CCOE_ERR_FORMAT,
                               "%s line %zu: '%.20s' is not a token id: decode takes lines of "
                               "space-separated ids (what encode prints)",
                               name, lineno, p);
                rc = fail(&err);
                goto done;
            }
            if (k == ids_cap) {
                size_t c = ids_cap ? 2 * ids_cap : 1024;
                int32_t *q = realloc(ids, c * sizeof *q);
                if (!q) {
                    ccoe_error_set(&err, CCOE_ERR_NOMEM, "out of memory decoding line %zu",
                                   lineno);
                    rc = fail(&err);
                    goto done;
                }
                ids = q;
                ids_cap = c;
            }
            ids[k++] = (int32_t)v;
        }
        size_t cap = text_cap ? text_cap : 4096, got = 0;
        for (;;) {
            if (cap > text_cap) {
                char *q = realloc(text, cap);
                if (!q) {
                    ccoe_error_set(&err, CCOE_ERR_NOMEM, "out of memory decoding line %zu",
                                   lineno);
                    rc = fail(&err);
                    goto done;
                }
                text = q;
                text_cap = cap;
            }
            if (ccoe_tokenizer_decode(&tok, ids, k, text, text_cap, &got, &err) != CCOE_OK) {
                ccoe_error_wrap(&err, "%s line %zu", name, lineno);
                rc = fail(&err);
                goto done;
            }
            if (got + 1 < text_cap)
                break;
            cap = 2 * text_cap;
        }
        fwrite(text, 1, got, stdout);
        putc_unlocked('\n', stdout);
    }
    if (ferror(in)) {
        ccoe_error_set(&err, CCOE_ERR_IO, "cannot read %s: %s", name, strerror(errno));
        rc = fail(&err);
    }
done:
    if (fflush(stdout) != 0 && rc == 0) {
        ccoe_error_set(&err, CCOE_ERR_IO, "cannot write the output: %s", strerror(errno));
        rc = fail(&err);
    }
    free(line);
    free(text);
    free(ids);
    if (in != stdin)
        fclose(in);
    ccoe_tokenizer_free(&tok);
    return rc;
}

static int run_command(int argc, char **argv);

/* Under an MPI launcher (mpirun -np P ccoe train ...) every rank runs `train`; the other
 * commands run on rank 0 alone. An error on one rank that the others have not agreed on (they
 * may be waiting in a collective) ends the whole job through the communicator's abort. */
int main(int argc, char **argv)
{
    static ccoe_comm comm; /* g_comm points here */
    ccoe_comm_serial(&comm);
    int mpi = 0;
    if (ccoe_comm_mpi_launched()) {
        ccoe_error err = {0};
        if (ccoe_comm_mpi_init(&comm, &argc, &argv, &err) != CCOE_OK) {
            fprintf(stderr, "ccoe: %s: %s\n", ccoe_status_name(err.status), err.msg);
            return 1;
        }
        mpi = 1;
    }
    g_comm = &comm;
    /* train, train-expert, study and eval run on every rank (collective); the rest on rank 0 */
    const int train = argc >= 2 && (strcmp(argv[1], "train") == 0 ||
                                    strcmp(argv[1], "train-expert") == 0 ||
                                    strcmp(argv[1], "study") == 0 ||
                                    strcmp(argv[1], "eval") == 0);
    int rc = 0;
    if (train || comm.rank == 0)
        rc = run_command(argc, argv);
    if (rc != 0 && comm.size > 1 && train && comm.failed_rank < 0) {
        fflush(stdout);
        fflush(stderr);
        comm.ops->abort(&comm, rc); /* does not return */
    }
    if (mpi)
        ccoe_comm_mpi_finalize(&comm);
    return rc;
}

static int run_command(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0) {
        printf("ccoe %s\n", CCOE_VERSION);
        return 0;
    }
    if (strcmp(cmd, "train") == 0)
        return cmd_train(argc - 2, argv + 2);
    if (strcmp(cmd, "eval") == 0)
        return cmd_eval(argc - 2, argv + 2);
    if (strcmp(cmd, "train-expert") == 0)
        return cmd_train_expert(argc - 2, argv + 2);
    if (strcmp(cmd, "generate") == 0)
        return cmd_generate(argc - 2, argv + 2);
    if (strcmp(cmd, "info") == 0)
        return cmd_info(argc - 2, argv + 2);
    if (strcmp(cmd, "bench") == 0)
        return cmd_bench(argc - 2, argv + 2);
    if (strcmp(cmd, "compare") == 0)
        return cmd_compare(argc - 2, argv + 2);
    if (strcmp(cmd, "reseal") == 0)
        return cmd_reseal(argc - 2, argv + 2);
    if (strcmp(cmd, "push") == 0)
        return cmd_push(argc - 2, argv + 2);
    if (strcmp(cmd, "pop") == 0)
        return cmd_pop(argc - 2, argv + 2);
    if (strcmp(cmd, "data") == 0)
        return cmd_data(argc - 2, argv + 2);
    if (strcmp(cmd, "study") == 0)
        return cmd_study(argc - 2, argv + 2);
    if (strcmp(cmd, "tokenizer") == 0)
        return cmd_tokenizer(argc - 2, argv + 2);
    if (strcmp(cmd, "help-config") == 0 || strcmp(cmd, "--help-config") == 0) {
        ccoe_config_print_help(stdout);
        return 0;
    }
    return usage_error("unknown command", cmd);
}
