/* cmd_route.c - `ccoe train-router`: trains the domain router of a CCoE model's classifier
 * routing (src/route.h) on the base model's hidden states, base and experts frozen, and writes
 * the checkpoint with the router. Rank 0 only. */
#include <stdio.h>
#include <string.h>

#include "checkpoint.h"
#include "checkpoint_tokenizer.h"
#include "cli.h"
#include "route.h"
#include "session.h"

static const ccoe_cli_opt k_train_router_opts[] = {
    {"-o", CCOE_OPT_PATH, "OUT", .help = "write the checkpoint with its router here (default: "
                                         "rewrite CHECKPOINT in place)"},
    {"--steps", CCOE_OPT_INT, "N", 1, 1 << 24, .def = "300", .takes = "a whole number >= 1",
     .help = "Adam steps, each over 4 training batches (train.batch_size x seq_len positions)"},
    {"--hidden", CCOE_OPT_INT, "H", 0, CCOE_ROUTER_MAX, .def = "64",
     .takes = "a whole number 0..4096", .help = "hidden units (tanh); 0 = a linear router"},
    {"--lr", CCOE_OPT_DOUBLE, "X", 1e-6, 10, .def = "0.003", .takes = "a number in (0, 10]",
     .help = "Adam learning rate"},
    {"--seed", CCOE_OPT_UINT, "S", 0, 18446744073709551615.0, .def = "1",
     .takes = "a whole number >= 0", .help = "router initialisation"},
    {"--set", CCOE_OPT_STRING, "section.key=value", .flags = CCOE_OPT_REPEAT,
     .help = "override data.* or run.* (the model comes from the checkpoint)"},
};

static int run_train_router(const ccoe_cli_args *a)
{
    const char *in = a->pos[0], *out = ccoe_cli_str(a, "-o") ? ccoe_cli_str(a, "-o") : in;
    int n_sets = 0;
    const char *const *sets = ccoe_cli_all(a, "--set", &n_sets);
    for (int i = 0; i < n_sets; i++)
        if (strncmp(sets[i], "data.", 5) != 0 && strncmp(sets[i], "run.", 4) != 0)
            return ccoe_cli_usage_error(a, "train-router can only override data.* and run.* "
                                           "(the model comes from the checkpoint), not",
                                        sets[i]);
    ccoe_error err = {0};
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    ccoe_session s;
    int have_session = 0;
    ccoe_status st = ccoe_checkpoint_open(in, &cfg, &f, &err);
    for (int i = 0; st == CCOE_OK && i < n_sets; i++)
        st = ccoe_config_set(&cfg, sets[i], &err);
    if (st == CCOE_OK)
        st = ccoe_ckpt_tok_check(f, in, cfg.data.tokenizer, &err);
    if (st == CCOE_OK && (st = ccoe_session_open(&s, &cfg, 1, &err)) == CCOE_OK)
        have_session = 1;
    if (st == CCOE_OK)
        st = ccoe_checkpoint_load(f, in, &s.model, NULL, NULL, &err);
    ccoe_domain_router r = {0};
    double acc = 0.0;
    if (st == CCOE_OK) {
        const ccoe_router_train_opts o = {.steps = (int)ccoe_cli_int(a, "--steps"),
                                          .hidden = (int)ccoe_cli_int(a, "--hidden"),
                                          .lr = ccoe_cli_double(a, "--lr"),
                                          .seed = ccoe_cli_uint(a, "--seed"),
                                          .log = stdout};
        st = ccoe_router_train(&s.model, &s.data, &s.batch, &o, &r, &acc, &err);
    }
    ccoe_st_close(f); /* the output may replace the input */
    if (st == CCOE_OK)
        st = ccoe_router_save(in, out, &r, &s.model, &err);
    if (st == CCOE_OK)
        printf("domain router (layer %d, %s%d hidden, %d domains): validation domain accuracy "
               "%.4f; written to %s\n",
               r.layer, r.H ? "" : "linear, ", r.H, r.D, acc, out);
    ccoe_router_free(&r);
    if (have_session)
        ccoe_session_close(&s);
    return st == CCOE_OK ? 0 : ccoe_cli_fail(a, &err);
}

const ccoe_cli_cmd ccoe_cmd_train_router = {
    .name = "train-router",
    .args = "CHECKPOINT",
    .summary = "train the domain router of --routing classifier (base and experts frozen)",
    .details = "The router reads the base model's hidden state at the deepest block every path "
               "shares,\nmean-pooled over the tokens so far, and predicts the domain; `eval "
               "--routing classifier`\nand `generate --routing classifier` send each token "
               "down the predicted domain's path.\n",
    .opts = k_train_router_opts,
    .n_opts = sizeof k_train_router_opts / sizeof k_train_router_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "train-router needs a CHECKPOINT file",
    .collective = 0,
    .run = run_train_router,
};
