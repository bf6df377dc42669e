/* cmd_eval.c - `ccoe eval` (per-domain loss, perplexity and task accuracy of a checkpoint;
 * collective under MPI) and `ccoe generate` (continuations of prompts; rank 0). The work is
 * eval.c's; this file reads the options and sets up the session. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "checkpoint_tokenizer.h"
#include "cli.h"
#include "eval.h"
#include "taskmap.h"
#include "session.h"

#define MAX_EVAL_SETS 64

static const ccoe_cli_opt k_eval_opts[] = {
    {"--set", CCOE_OPT_STRING, "section.key=value",
     .help = "override data.*, run.* or train.eval_batches (the model comes from the "
             "checkpoint)",
     .flags = CCOE_OPT_REPEAT},
    {"--batches", CCOE_OPT_INT, "N", 0, 1 << 30, .takes = "a whole number >= 0 (0 = all)",
     .help = "validation batches per domain (default: the checkpoint's train.eval_batches)"},
    {"--no-tasks", CCOE_OPT_FLAG, .help = "skip the task examples (loss and perplexity only)"},
    {"--text", CCOE_OPT_PATH, "FILE",
     .help = "instead: loss (nats/token), bits per byte and perplexity of one text file under "
             "the model's own tokenizer"},
    {"--domain", CCOE_OPT_STRING, "D", .help = "with --text: route the text as domain D "
                                                "(default: the base path)"},
};

/* Prints the inference cost of each domain's path (CCoE models). */
static void print_paths(const ccoe_session *s)
{
    printf("\n%-12s %-32s %14s %16s\n", "domain", "path", "active_params", "fwd_MFLOP/token");
    for (int d = 0; d < s->taskmap.n_domains; d++) {
        int e = s->taskmap.route[d];
        char path[96];
        ccoe_taskmap_path_name(&s->taskmap, d, path, sizeof path);
        printf("%-12s %-32s %14zu %16.2f\n", s->taskmap.domains[d], path,
               ccoe_model_path_params(&s->model, e + 1),
               ccoe_model_path_forward_flops(&s->model, e + 1, s->cfg.model.seq_len) / 1e6);
    }
}

/* ccoe eval CHECKPOINT [options]: under mpirun every rank evaluates its share
 * (ccoe_eval_domains) and rank 0 prints. */
static int run_eval(const ccoe_cli_args *a)
{
    int n_sets = 0, rc = 0;
    const char *const *sets = ccoe_cli_all(a, "--set", &n_sets);
    for (int i = 0; i < n_sets; i++) {
        const char *s = sets[i];
        if (strncmp(s, "data.", 5) != 0 && strncmp(s, "run.", 4) != 0 &&
            strncmp(s, "train.eval_batches", 18) != 0 &&
            strncmp(s, "moe.eval_capacity_factor", 24) != 0)
            return ccoe_cli_usage_error(a, "eval can only override data.*, run.*, "
                                           "train.eval_batches and moe.eval_capacity_factor "
                                           "(the model comes from the checkpoint), not",
                                        s);
        if (i == MAX_EVAL_SETS)
            return ccoe_cli_usage_error(a, "eval takes at most 64 --set overrides, not more at",
                                        s);
    }
    const char *path = a->pos[0], *text = ccoe_cli_str(a, "--text"),
               *text_domain = ccoe_cli_str(a, "--domain");
    if (text_domain && !text)
        return ccoe_cli_usage_error(a, "eval --domain D goes with --text FILE", text_domain);
    /* set-up on every rank, then one agreement: a failure is printed once, nobody waits */
    ccoe_error err = {0};
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    ccoe_session s;
    int have_session = 0;
    ccoe_status st =
        ccoe_checkpoint_open_log(path, &cfg, &f, a->comm->rank == 0 ? stderr : NULL, &err);
    for (int i = 0; st == CCOE_OK && i < n_sets; i++)
        st = ccoe_config_set(&cfg, sets[i], &err);
    if (st == CCOE_OK && ccoe_cli_flag(a, "--batches"))
        cfg.train.eval_batches = (int)ccoe_cli_int(a, "--batches");
    if (st == CCOE_OK) /* --set data.tokenizer must name the model's own tokenizer */
        st = ccoe_ckpt_tok_check(f, path, cfg.data.tokenizer, &err);
    if (st == CCOE_OK && (st = ccoe_session_open(&s, &cfg, 1, &err)) == CCOE_OK)
        have_session = 1;
    if (st == CCOE_OK)
        st = ccoe_checkpoint_load(f, path, &s.model, NULL, NULL, &err);
    st = ccoe_comm_agree(a->comm, st, &err); /* collective */
    if (st == CCOE_OK && text) { /* one text file's loss and bits per byte (ccoe_eval_text) */
        ccoe_text_eval te;
        st = ccoe_eval_text_file(&s.model, &s.tok, &s.batch, &s.data, text, text_domain,
                                 a->comm, &te, &err); /* collective: the windows are split */
        rc = st != CCOE_OK ? ccoe_cli_fail(a, &err) : 0;
        if (st == CCOE_OK && a->comm->rank == 0) {
            ccoe_eval_text_print(stdout, text, text_domain, s.cfg.data.tokenizer, &te);
            if (a->comm->size > 1)
                printf("evaluated on %d ranks (windows split between them)\n", a->comm->size);
        }
        ccoe_session_close(&s);
        ccoe_st_close(f);
        return rc;
    }
    ccoe_domain_eval ev[CCOE_MAX_DOMAINS];
    if (st == CCOE_OK)
        st = ccoe_eval_domains(&s.model, &s.data, &s.tok, &s.batch, s.cfg.train.eval_batches,
                               !ccoe_cli_flag(a, "--no-tasks"), a->comm, ev, &err);
    if (st != CCOE_OK) {
        rc = ccoe_cli_fail(a, &err);
    } else if (a->comm->rank == 0) {
        printf("checkpoint %s (step %s), data %s\n", path,
               ccoe_st_meta(f, "step") ? ccoe_st_meta(f, "step") : "?", s.cfg.data.manifest);
        if (a->comm->size > 1)
            printf("evaluated on %d ranks (batches and task chunks split between them)\n",
                   a->comm->size);
        ccoe_eval_print(stdout, &s.data, ev);
        if (s.taskmap.n_experts > 0)
            print_paths(&s);
    }
    if (have_session)
        ccoe_session_close(&s);
    ccoe_st_close(f);
    return rc;
}

const ccoe_cli_cmd ccoe_cmd_eval = {
    .name = "eval",
    .args = "CHECKPOINT",
    .summary = "per-domain validation loss, perplexity and task accuracy (bits per byte with a "
               "BPE tokenizer)",
    .details = "Under MPI the validation batches and task chunks are split over the ranks.\n",
    .opts = k_eval_opts,
    .n_opts = sizeof k_eval_opts / sizeof k_eval_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "eval needs a CHECKPOINT file",
    .collective = 1,
    .run = run_eval,
};

/* --stop: one character or "none". */
static int stop_ok(const char *v)
{
    return strcmp(v, "none") == 0 || strlen(v) == 1;
}

static const ccoe_cli_opt k_generate_opts[] = {
    {"--domain", CCOE_OPT_STRING, "D",
     .help = "route the prompts as this domain (default: the first)"},
    {"--max-new", CCOE_OPT_INT, "N", 1, 1 << 20, .def = "64", .takes = "a whole number >= 1",
     .help = "tokens generated at most per prompt"},
    {"--stop", CCOE_OPT_STRING, "C|none", .check = stop_ok,
     .takes = "one character or 'none'",
     .help = "end each continuation before C (default: the domain's answer end, a newline)"},
    {"--temperature", CCOE_OPT_DOUBLE, "T", 0, 100, .def = "0",
     .takes = "a number 0..100 (0: greedy)", .help = "> 0 samples at this temperature"},
    {"--top-k", CCOE_OPT_INT, "K", 0, 1 << 30, .def = "0", .takes = "a whole number >= 0 (0: off)",
     .help = "sample among the K most likely tokens"},
    {"--top-p", CCOE_OPT_DOUBLE, "P", 1e-6, 1, .def = "1", .takes = "a number in (0, 1] (1: off)",
     .help = "sample among the most likely tokens whose probability reaches P"},
    {"--seed", CCOE_OPT_UINT, "S", 0, 18446744073709551615.0, .def = "1",
     .takes = "a whole number >= 0", .help = "the same seed, the same text"},
    {"--prompts", CCOE_OPT_PATH, "FILE|-",
     .help = "one more prompt per line of FILE (- = standard input)"},
};

/* The index of the domain named by --domain in s's data (0 without it), or -1 with err set. */
static int find_domain(const ccoe_session *s, const char *domain, ccoe_error *err)
{
    if (!domain)
        return 0;
    const int d = ccoe_data_domain_index(&s->data, domain);
    if (d >= 0)
        return d;
    char names[CCOE_MAX_DOMAINS * (CCOE_NAME_LEN + 1)] = "";
    for (int k = 0; k < s->data.n_domains; k++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", k ? ", " : "",
                 s->data.domains[k].name);
    ccoe_error_set(err, CCOE_ERR_ARG, "--domain %s: the model's data (%s) has the domains %s",
                   domain, s->cfg.data.manifest, names);
    return -1;
}

/* ccoe generate CHECKPOINT [options] PROMPT... */
static int run_generate(const ccoe_cli_args *a)
{
    const char *path = a->pos[0], *stop_arg = ccoe_cli_str(a, "--stop");
    const ccoe_sampling samp = {.temperature = (float)ccoe_cli_double(a, "--temperature"),
                                .top_k = (int)ccoe_cli_int(a, "--top-k"),
                                .top_p = (float)ccoe_cli_double(a, "--top-p"),
                                .seed = ccoe_cli_uint(a, "--seed")};
    /* the command line's prompts, then --prompts' lines (text owns those) */
    int n = a->n_pos - 1;
    const char **prompts = malloc((size_t)(n + 1) * sizeof *prompts);
    char *text = NULL;
    if (!prompts)
        return 1;
    memcpy(prompts, a->pos + 1, (size_t)n * sizeof *prompts);
    ccoe_error err = {0};
    const char *file = ccoe_cli_str(a, "--prompts");
    if (file && ccoe_eval_read_prompts(file, &prompts, &n, &text, &err) != CCOE_OK) {
        free(prompts);
        return ccoe_cli_fail(a, &err);
    }
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    ccoe_session s;
    int rc = 0, have_session = 0;
    if (n == 0)
        rc = ccoe_cli_usage_error(
            a, "generate needs at least one PROMPT (or --prompts FILE with lines)", "");
    else if (ccoe_checkpoint_open(path, &cfg, &f, &err) != CCOE_OK)
        rc = ccoe_cli_fail(a, &err);
    else if (ccoe_session_open(&s, &cfg, 1, &err) != CCOE_OK)
        rc = ccoe_cli_fail(a, &err);
    else
        have_session = 1;
    const int d = have_session ? find_domain(&s, ccoe_cli_str(a, "--domain"), &err) : 0;
    if (have_session && d < 0)
        rc = ccoe_cli_fail(a, &err);
    if (rc == 0 && ccoe_checkpoint_load(f, path, &s.model, NULL, NULL, &err) != CCOE_OK)
        rc = ccoe_cli_fail(a, &err);
    if (rc == 0) {
        const ccoe_gen_opts go = {
            .max_new = (int)ccoe_cli_int(a, "--max-new"),
            .stop = !stop_arg                     ? s.data.domains[d].answer_stop
                    : strcmp(stop_arg, "none") == 0 ? '\0'
                                                    : stop_arg[0],
            .sample = samp};
        if (ccoe_generate_print(&s.model, &s.tok, &s.batch, prompts, n, d, &go, stdout, &err) !=
            CCOE_OK)
            rc = ccoe_cli_fail(a, &err);
    }
    if (have_session)
        ccoe_session_close(&s);
    ccoe_st_close(f);
    free(prompts);
    free(text);
    return rc;
}

const ccoe_cli_cmd ccoe_cmd_generate = {
    .name = "generate",
    .args = "CHECKPOINT PROMPT...",
    .summary = "the continuation of each PROMPT, one line each (greedy unless --temperature)",
    .details = "Prompts are routed as domain D (the first domain by default) and continue until "
               "C (default:\nthe domain's answer end, a newline); --temperature T > 0 samples "
               "(with --top-k/--top-p;\nthe same --seed, the same text).\n",
    .opts = k_generate_opts,
    .n_opts = sizeof k_generate_opts / sizeof k_generate_opts[0],
    .min_pos = 1,
    .max_pos = -1,
    .pos_error = "generate needs a CHECKPOINT file",
    .free_pos = 1,
    .collective = 0,
    .run = run_generate,
};
