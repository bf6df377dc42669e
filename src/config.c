/* config.c - the configuration key table and everything that walks it.
 *
 * One static table (key_table) lists every key with its section, type, field offset, allowed
 * range or names, default and help. Defaults, INI parsing (libinih), `--set` overrides, the help
 * text, the resolved INI printout and its hash all walk that table, so adding a key is one line.
 * This file is the schema: keys, parsing, printing, hashing, per-key ranges and the few
 * cross-field rules of [model], [train] and [data] (ccoe_config_validate). The cross-field rules
 * of [moe], [mpi] and [ccoe] belong to their modules (moe.c, placement.c, taskmap.c) and are run
 * by ccoe_session_validate (session.c); this file includes none of their headers. It never
 * allocates model memory and never exits.
 *
 * INI dialect (libinih, as built by Debian, read through iniread.h): `[section]`, `key = value`,
 * comments start a line with ';' or '#', or follow whitespace with ';'. Lines are at most 199
 * characters (libinih's compiled-in INI_MAX_LINE); longer lines are an error, never silently
 * split. Leading whitespace is ignored (no multi-line values). A key set twice in one file is
 * an error.
 * Strings are limited so that every resolved line fits and round-trips: no ';', no control
 * characters, no leading/trailing blanks.
 */
#include "config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "form.h"
#include "fs.h"
#include "gate.h"
#include "iniread.h"

#define HELP_HINT "see `ccoe help-config`"

static const char *const norm_names[] = {"layernorm", "rmsnorm", NULL};
static const char *const pos_names[] = {"learned", "rope", NULL};
static const char *const ffn_names[] = {"gelu", "swiglu", NULL};
static const char *const block_names[] = {"pre_ln", "post_ln", NULL};
static const char *const gemm_names[] = {"auto", "ref", "blis", "xsmm", NULL};
/* An INT key with names accepts its one name as a value too, stored as 0 (below its minimum):
 * run.threads = auto. */
static const char *const threads_names[] = {"auto", NULL};
static const char *const precision_names[] = {"fp32", "bf16", NULL};
static const char *const init_names[] = {"copy", "random", NULL};
/* ccoe.routing: in ccoe_routing_mode order (src/route.h) */
static const char *const routing_names[] = {"rule", "posterior", "classifier", NULL};
static const char *const placement_names[] = {"contiguous", "round_robin", "balanced", "list",
                                              NULL};
/* moe.gate: "none" and every gate of the registry (variants/gates.def), filled in once
 * by gate_names_fill before the table is first read, so a new gate needs no line here. */
#define MOE_GATE_NAMES_CAP 32
static const char *moe_gate_names[MOE_GATE_NAMES_CAP + 2] = {CCOE_GATE_NONE, NULL};
/* ccoe.form: "none" (id 0) and every form of the registry (variants/forms.def) at its stored
 * id, filled in by the same function. */
#define FORM_NAMES_CAP 16
static const char *form_names[FORM_NAMES_CAP + 2] = {"none", NULL};
static char form_help[1024] = "CCoE formulation"; /* and each form's own help */

/* The help line of a moe.gate value: the gate's own (its ops table), or that of "none". */
static const char *gate_help(const char *name)
{
    const ccoe_gate_ops *g = ccoe_gate_find(name);
    return g ? g->help : "no MoE layer: every base block keeps its dense FFN";
}

static void gate_names_fill(void)
{
    static int filled;
    if (filled)
        return;
    int n = ccoe_gate_count();
    assert(n <= MOE_GATE_NAMES_CAP && "raise MOE_GATE_NAMES_CAP");
    for (int i = 0; i < n && i < MOE_GATE_NAMES_CAP; i++)
        moe_gate_names[1 + i] = ccoe_gate_at(i)->name;
    const int nf = ccoe_form_count();
    assert(nf <= FORM_NAMES_CAP && "raise FORM_NAMES_CAP");
    for (int i = 0; i < nf && i < FORM_NAMES_CAP; i++) {
        const ccoe_form_ops *f = ccoe_form_at(i);
        assert((int)f->id == i + 1 && "forms.def lists the forms in the order of their ids");
        form_names[(int)f->id] = f->name;
        const size_t len = strlen(form_help);
        snprintf(form_help + len, sizeof form_help - len, "%s %s (%s)", i ? "," : ": none,",
                 f->name, f->help);
    }
    filled = 1;
}

_Static_assert(sizeof(ccoe_norm_kind) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(ccoe_ffn_kind) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(ccoe_block_kind) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(ccoe_pos_kind) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(ccoe_form) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(ccoe_expert_init) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(ccoe_placement_kind) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(long) == 8, "long fields hold values up to 1e9 and are printed as %ld");

#define FIELD(f) .offset = offsetof(ccoe_config, f), .size = sizeof(((ccoe_config *)0)->f)
#define INT(sec, k, f, lo, hi, d, h)                                                       \
    {.section = sec, .key = k, .type = CCOE_CFG_INT, FIELD(f), .min = lo, .max = hi, .def = d, \
     .help = h}
#define LONG(sec, k, f, lo, hi, d, h)                                                       \
    {.section = sec, .key = k, .type = CCOE_CFG_LONG, FIELD(f), .min = lo, .max = hi, .def = d, \
     .help = h}
#define DBL(sec, k, f, lo, lo_open, hi, hi_open, d, h)                                         \
    {.section = sec, .key = k, .type = CCOE_CFG_DOUBLE, FIELD(f), .min = lo, .max = hi,      \
     .min_open = lo_open, .max_open = hi_open, .def = d, .help = h}
#define BOOL(sec, k, f, d, h) \
    {.section = sec, .key = k, .type = CCOE_CFG_BOOL, FIELD(f), .def = d, .help = h}
#define ENUM(sec, k, f, n, d, h) \
    {.section = sec, .key = k, .type = CCOE_CFG_ENUM, FIELD(f), .names = n, .def = d, .help = h}
#define STR(sec, k, f, len, n, d, h)                                                         \
    {.section = sec, .key = k, .type = CCOE_CFG_STRING, FIELD(f), .max_len = len, .names = n, \
     .def = d, .help = h}
#define U64(sec, k, f, d, h) \
    {.section = sec, .key = k, .type = CCOE_CFG_U64, FIELD(f), .def = d, .help = h}

/* Longest path-like string: "manifest = " + 180 characters stays under the 199-character line. */
#define PATH_MAX_LEN 180

static const ccoe_config_key key_table[] = {
    INT("model", "n_layer", model.n_layer, 1, 256, "4", "L: transformer blocks"),
    INT("model", "n_embd", model.n_embd, 8, 16384, "256", "C: channels (embedding width)"),
    INT("model", "n_head", model.n_head, 1, 4096, "4", "H: attention heads; must divide n_embd"),
    INT("model", "ffn_hidden", model.ffn_hidden, 0, 262144, "0",
        "F: FFN hidden width; 0 = 4*C (gelu) or 8*C/3 rounded up to a multiple of 64 (swiglu)"),
    INT("model", "vocab_size", model.vocab_size, 0, 16777216, "0",
        "V: vocabulary; 0 = the tokenizer's size padded to a multiple of 64"),
    INT("model", "seq_len", model.seq_len, 1, 65536, "128", "T: maximum sequence length"),
    ENUM("model", "norm", model.norm, norm_names, "layernorm", "normalization layer"),
    ENUM("model", "ffn", model.ffn, ffn_names, "gelu", "feed-forward kind"),
    ENUM("model", "block", model.block, block_names, "pre_ln",
         "norm placement: before (pre_ln) or after (post_ln) each residual branch"),
    BOOL("model", "tied_head", model.tied_head, "true", "the LM head shares the token embedding"),
    BOOL("model", "bias", model.bias, "true", "linear layers have biases"),
    ENUM("model", "pos", model.pos, pos_names, "learned",
         "positions: learned table wpe added to the embedding, or rope (rotary on q and k in "
         "Hugging Face's rotate-half convention; no wpe)"),
    DBL("model", "rope_theta", model.rope_theta, 0, 1, 1e12, 0, "10000",
        "RoPE base theta (frequencies theta^(-2i/head_size)); used when pos = rope"),
    INT("model", "n_kv_head", model.n_kv_head, 0, 4096, "0",
        "Hkv: key/value heads (grouped-query attention); 0 = n_head; must divide n_head"),
    BOOL("model", "qkv_bias", model.qkv_bias, "false",
         "biases on the q/k/v projection only (Qwen2), whatever model.bias says"),
    DBL("model", "norm_eps", model.norm_eps, 0, 1, 1e-2, 0, "1e-05",
        "epsilon of LayerNorm / RMSNorm (HF layer_norm_epsilon / rms_norm_eps)"),
    DBL("model", "init_std", model.init_std, 0, 1, 1, 0, "0.02",
        "standard deviation of the normal weight init"),
    {.section = "model", .key = "max_positions", .type = CCOE_CFG_INT, FIELD(model.max_positions),
     .min = 0, .max = 1 << 30, .def = "0", .omit_default = 1,
     .help = "the context the model was pretrained for (HF max_position_embeddings; 0 = "
             "seq_len): `ccoe import` sets it, `ccoe export` writes it back"},

    INT("train", "batch_size", train.batch_size, 1, 65536, "8", "B: sequences per micro-batch"),
    INT("train", "grad_accum", train.grad_accum, 1, 4096, "1", "micro-batches per optimizer step"),
    LONG("train", "steps", train.steps, 0, 1e9, "500", "optimizer steps"),
    DBL("train", "lr", train.lr, 0, 1, 10, 0, "0.001", "peak learning rate"),
    DBL("train", "min_lr_frac", train.min_lr_frac, 0, 0, 1, 0, "0.1",
        "cosine decay floor as a fraction of lr"),
    LONG("train", "warmup", train.warmup, 0, 1e9, "50",
         "linear warm-up steps (may exceed steps)"),
    DBL("train", "weight_decay", train.weight_decay, 0, 0, 10, 0, "0.1",
        "AdamW decoupled weight decay on matrices"),
    DBL("train", "beta1", train.beta1, 0, 0, 1, 1, "0.9", "AdamW first-moment decay"),
    DBL("train", "beta2", train.beta2, 0, 0, 1, 1, "0.95", "AdamW second-moment decay"),
    DBL("train", "eps", train.eps, 0, 1, 1, 1, "1e-08", "AdamW epsilon"),
    DBL("train", "grad_clip", train.grad_clip, 0, 0, 1e6, 0, "1",
        "clip the global gradient norm to this; 0 = off"),
    U64("train", "seed", train.seed, "1337", "seed of init, data order and noise"),
    LONG("train", "eval_every", train.eval_every, 0, 1e9, "100",
         "steps between evaluations; 0 = only at the end"),
    INT("train", "eval_batches", train.eval_batches, 0, 1000000, "8",
        "validation batches per domain per evaluation; 0 = all"),
    LONG("train", "ckpt_every", train.ckpt_every, 0, 1e9, "0",
         "steps between checkpoints; 0 = only at the end"),
    LONG("train", "log_every", train.log_every, 1, 1e9, "10", "steps between log lines"),
    STR("train", "out_dir", train.out_dir, PATH_MAX_LEN, NULL, "runs/default",
        "directory for checkpoints and metrics"),

    STR("data", "manifest", data.manifest, PATH_MAX_LEN, NULL, "builtin",
        "\"builtin\" (the embedded data set) or a manifest file path"),
    STR("data", "tokenizer", data.tokenizer, PATH_MAX_LEN, NULL, "byte",
        "\"byte\", or a directory with a byte-level BPE: vocab.json + merges.txt (GPT-2) or "
        "tokenizer.json"),
    DBL("data", "val_fraction", data.val_fraction, 0, 1, 0.5, 0, "0.1",
        "share of each domain held out for validation"),
    INT("data", "task_examples", data.task_examples, 0, 1000000, "200",
        "exact-answer task examples per domain at evaluation; 0 = none"),

    {.section = "run", .key = "threads", .type = CCOE_CFG_INT, FIELD(run.threads), .min = 1,
     .max = 1024, .names = threads_names, .def = "auto",
     .help = "threads per process; auto: re-chosen while training from measured step times "
             "(all CPUs of the process, one fewer, or 1); results do not depend on the count "
             "(papers/threads.md)"},
    STR("run", "gemm", run.gemm, 15, gemm_names, "auto", "matrix-multiply backend"),
    STR("run", "precision", run.precision, 7, precision_names, "fp32",
        "precision of the linear layers' GEMMs: fp32, or bf16 (CPUs with AVX512-BF16 only; "
        "bf16 operands, fp32 sums; weights, optimizer, norms, softmax, losses and routers stay "
        "fp32; papers/bf16.md)"),

    ENUM("ccoe", "form", ccoe.form, form_names, "none", form_help),
    STR("ccoe", "experts", ccoe.experts, PATH_MAX_LEN, NULL, "",
        "experts in push order as NAME:LAYERS separated by spaces, e.g. \"arith:2 code:1\""),
    STR("ccoe", "routes", ccoe.routes, PATH_MAX_LEN, NULL, "",
        "rule-based gating as DOMAIN:EXPERT separated by spaces; unlisted domains use the base"),
    INT("ccoe", "prefix_layers", ccoe.prefix_layers, 0, 256, "0",
        "l_b: shared base blocks before the experts (form = prefix)"),
    INT("ccoe", "max_expert_layers", ccoe.max_expert_layers, 0, 256, "0",
        "largest allowed l_i; 0 = floor(n_layer / 2) (form = ffn: n_layer)"),
    BOOL("ccoe", "own_head", ccoe.own_head, "false",
         "each expert owns its final norm and LM head (otherwise shared with the base)"),
    ENUM("ccoe", "init", ccoe.init, init_names, "copy",
         "a new expert starts as a copy of the base blocks it replaces, or random"),
    STR("ccoe", "train_expert", ccoe.train_expert, 63, NULL, "",
        "train only this expert (base frozen) on its domains' data; empty = train everything"),
    {.section = "ccoe", .key = "routing", .type = CCOE_CFG_ENUM, FIELD(ccoe.routing),
     .names = routing_names, .def = "rule", .omit_default = 1,
     .help = "inference routing of eval and generate: the domain label (rule), the posterior "
             "over paths (posterior) or the domain router of `ccoe train-router` (classifier); "
             "papers/routing.md"},

    {.section = "moe", .key = "gate", .type = CCOE_CFG_STRING, FIELD(moe.gate), .max_len = 31,
     .names = moe_gate_names, .def = CCOE_GATE_NONE, .name_help = gate_help,
     .help = "MoE FFNs in the base blocks: none (dense) or a gate of the registry "
             "(variants/gates.def):"},
    INT("moe", "n_experts", moe.n_experts, 1, CCOE_GATE_MAX_EXPERTS, "8",
        "E: experts per MoE layer"),
    INT("moe", "top_k", moe.top_k, 1, CCOE_GATE_MAX_EXPERTS, "2",
        "K: experts per token (= n_experts for a gate that weights every expert, 1 for a "
        "one-expert gate; leave unset for expert_choice)"),
    INT("moe", "every", moe.every, 1, 256, "1",
        "base block l is MoE when (l + 1) % every == 0; 1 = every block"),
    INT("moe", "expert_hidden", moe.expert_hidden, 0, 262144, "0",
        "F of each expert; 0 = model.ffn_hidden"),
    BOOL("moe", "renormalize", moe.renormalize, "true",
         "topk: the kept gate weights sum to 1 (false: raw softmax probabilities)"),
    DBL("moe", "capacity_factor", moe.capacity_factor, 0, 0, 1e6, 0, "1.25",
        "training: rows per expert = ceil(cf * N * K / E); 0 = dropless, else >= 1 (gate "
        "domain is always dropless; expert_choice: each expert's top ceil(cf * N / E) "
        "tokens, cf = average experts per token)"),
    DBL("moe", "eval_capacity_factor", moe.eval_capacity_factor, 0, 0, 1e6, 0, "0",
        "the same for evaluation, in-training evaluations and generation: 0 = dropless "
        "(capacity is a training device), else >= 1 (expert_choice: 0 = capacity_factor)"),
    DBL("moe", "noise_eps", moe.noise_eps, 0, 0, 1e6, 0, "0",
        "noisy_topk: sigma = softplus(h W_noise) + noise_eps"),
    DBL("moe", "w_importance", moe.w_importance, 0, 0, 1e6, 0, "0",
        "weight of Shazeer's importance loss CV(Importance)^2"),
    DBL("moe", "w_load", moe.w_load, 0, 0, 1e6, 0, "0",
        "weight of Shazeer's load loss CV(Load)^2 (noisy_topk with top_k < n_experts)"),
    DBL("moe", "w_switch", moe.w_switch, 0, 0, 1e6, 0, "0.01",
        "weight of the Switch/GShard balance loss E sum_i f_i P_i (must be 0 for a gate "
        "without a router: domain, hash)"),
    DBL("moe", "w_z", moe.w_z, 0, 0, 1e6, 0, "0.001",
        "weight of the router z-loss mean logsumexp^2 (must be 0 for a gate without a "
        "router: domain, hash)"),
    {.section = "moe", .key = "train_router_only", .type = CCOE_CFG_BOOL,
     FIELD(moe.train_router_only), .def = "false", .omit_default = 1,
     .help = "train only the routers (the MoE layers' router.* tensors), every other tensor "
             "frozen: a merged or upcycled model's router phase"},
    DBL("moe", "bias_rate", moe.bias_rate, 0, 0, 1e6, 0, "0.001",
        "lossfree: after each step the selection bias b_e += bias_rate * sign(mean load - "
        "load_e); 0 = frozen bias (other gates ignore it)"),
    DBL("moe", "w_seq", moe.w_seq, 0, 0, 1e6, 0, "0",
        "lossfree: weight of DeepSeek-V3's sequence-wise balance loss mean over sequences of "
        "sum_i f_i P_i (0 = none; must be 0 for the other gates)"),
    INT("moe", "n_shared", moe.n_shared, 0, CCOE_GATE_MAX_EXPERTS, "0",
        "shared experts (DeepSeekMoE): FFNs of the routed experts' size that every token "
        "passes through with weight 1, beside its top_k routed ones; 0..n_experts"),
    INT("moe", "granularity", moe.granularity, 1, 64, "1",
        "fine-grained experts (DeepSeekMoE): each expert split into m: the layer has "
        "m * n_experts experts of expert hidden / m, each token takes m * top_k of them"),

    ENUM("mpi", "placement", mpi.placement, placement_names, "contiguous",
         "experts over MPI ranks: contiguous blocks, round_robin (e on rank e mod P), balanced "
         "(CCoE: largest-first by training tokens; MoE: contiguous) or list (mpi.map)"),
    STR("mpi", "map", mpi.map, PATH_MAX_LEN, NULL, "",
        "placement = list: one rank per expert, e.g. \"0,1,1,0\" (MoE: per expert index of every "
        "MoE layer; CCoE: in ccoe.experts order); each rank below the job's rank count"),
    DBL("mpi", "timeout", mpi.timeout, 0, 0, 1e6, 0, "300",
        "collective watchdog: a rank that waits longer than this many seconds in one MPI "
        "operation names the ranks it waits for and ends the job with exit code 3; 0 = off"),
};

#define NKEYS (sizeof key_table / sizeof key_table[0])

const ccoe_config_key *ccoe_config_keys(size_t *n)
{
    gate_names_fill();
    if (n)
        *n = NKEYS;
    return key_table;
}

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 */

static void *field(ccoe_config *c, const ccoe_config_key *k) { return (char *)c + k->offset; }
static const void *cfield(const ccoe_config *c, const ccoe_config_key *k)
{
    return (const char *)c + k->offset;
}

/* " (where)" or "" */
static void where_suffix(char *buf, size_t cap, const char *where)
{
    if (where && *where)
        snprintf(buf, cap, " (%s)", where);
    else
        buf[0] = '\0';
}

/* Shortest "%.Ng" text that reads back to exactly v (as exact as %.17g, easier to read);
 * whole numbers below 1e17 are written without an exponent (10, not 1e+01). */
static void fmt_double(char *buf, size_t cap, double v)
{
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    if (isfinite(v) && fabs(v) >= 1) {
        int digits = (int)floor(log10(fabs(v))) + 1;
        if (digits > prec && digits <= 17)
            prec = digits;
    }
    snprintf(buf, cap, "%.*g", prec, v);
}

/* "1..256" or "(0, 10]" */
static void fmt_range(char *buf, size_t cap, const ccoe_config_key *k)
{
    if (k->type == CCOE_CFG_DOUBLE) {
        char lo[32], hi[32];
        fmt_double(lo, sizeof lo, k->min);
        fmt_double(hi, sizeof hi, k->max);
        snprintf(buf, cap, "%c%s, %s%c", k->min_open ? '(' : '[', lo, hi, k->max_open ? ')' : ']');
    } else {
        snprintf(buf, cap, "%.0f..%.0f%s%s", k->min, k->max, k->names ? " or " : "",
                 k->names ? k->names[0] : "");
    }
}

/* "a, b, c" */
static void fmt_names(char *buf, size_t cap, const char *const *names)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; names[i] && used < cap; i++) {
        int w = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", names[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

static size_t count_names(const char *const *names)
{
    size_t n = 0;
    while (names[n])
        n++;
    return n;
}

static size_t levenshtein(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63)
        la = 63;
    if (lb > 63)
        lb = 63;
    size_t prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof prev[0]);
    }
    return prev[lb];
}

static int str_ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b))
            return 0;
    return *a == *b;
}

static const ccoe_config_key *find_key(const char *section, const char *key)
{
    gate_names_fill();
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(key_table[i].section, section) == 0 && strcmp(key_table[i].key, key) == 0)
            return &key_table[i];
    return NULL;
}

static int section_exists(const char *section)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(key_table[i].section, section) == 0)
            return 1;
    return 0;
}

/* Best guess for a mistyped "section.key": the same key in another section, else the closest
 * full name by edit distance if it is close enough. Returns NULL if nothing is close. */
static const ccoe_config_key *suggest(const char *section, const char *key)
{
    for (size_t i = 0; i < NKEYS; i++) /* right key, wrong section */
        if (strcmp(key_table[i].key, key) == 0)
            return &key_table[i];
    for (size_t i = 0; i < NKEYS; i++) /* wrong case */
        if (str_ieq(key_table[i].key, key) &&
            (str_ieq(key_table[i].section, section) || !*section))
            return &key_table[i];
    char full[160];
    snprintf(full, sizeof full, "%s.%s", section, key);
    const ccoe_config_key *best = NULL;
    size_t best_d = SIZE_MAX;
    for (size_t i = 0; i < NKEYS; i++) {
        char cand[160];
        snprintf(cand, sizeof cand, "%s.%s", key_table[i].section, key_table[i].key);
        size_t d = levenshtein(full, cand);
        if (d < best_d) {
            best_d = d;
            best = &key_table[i];
        }
    }
    size_t len = strlen(full);
    if (best && best_d <= 3 && best_d * 3 <= len)
        return best;
    return NULL;
}

static ccoe_status unknown_key_error(const char *section, const char *key, const char *where,
                                     ccoe_error *err)
{
    char ws[400], hint[200] = "";
    where_suffix(ws, sizeof ws, where);
    const ccoe_config_key *s = suggest(section, key);
    if (s)
        snprintf(hint, sizeof hint, " did you mean '%s.%s'?", s->section, s->key);
    if (!*section)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "key '%.64s'%s is outside any section: put it under its "
                              "[section];%s " HELP_HINT,
                              key, ws, hint);
    if (!section_exists(section))
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "unknown section [%.64s] in key '%.64s.%.64s'%s: sections are "
                              "[model], [train], [data], [run], [ccoe], [moe], [mpi];%s " HELP_HINT,
                              section, section, key, ws, hint);
    return ccoe_error_set(err, CCOE_ERR_CONFIG, "unknown key '%.64s.%.64s'%s;%s " HELP_HINT,
                          section, key, ws, hint);
}

/* ---------------------------------------------------------------------------------------------
 * Checking and storing one value
 */

static ccoe_status check_integer(const ccoe_config_key *k, long long v, const char *where,
                                 ccoe_error *err)
{
    if ((double)v < k->min || (double)v > k->max) {
        char ws[400], range[80];
        where_suffix(ws, sizeof ws, where);
        fmt_range(range, sizeof range, k);
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s = %lld is out of range: allowed %s%s",
                              k->section, k->key, v, range, ws);
    }
    return CCOE_OK;
}

static ccoe_status check_double(const ccoe_config_key *k, double v, const char *where,
                                ccoe_error *err)
{
    char ws[400], vt[40];
    where_suffix(ws, sizeof ws, where);
    fmt_double(vt, sizeof vt, v);
    if (!isfinite(v))
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "%s.%s = %s is not a finite number (NaN and Inf are not allowed)%s",
                              k->section, k->key, vt, ws);
    int below = k->min_open ? !(v > k->min) : !(v >= k->min);
    int above = k->max_open ? !(v < k->max) : !(v <= k->max);
    if (below || above) {
        char range[80];
        fmt_range(range, sizeof range, k);
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s = %s is out of range: allowed %s%s",
                              k->section, k->key, vt, range, ws);
    }
    return CCOE_OK;
}

/* String rules shared by parsing and validation (s is NUL-terminated). */
static ccoe_status check_string(const ccoe_config_key *k, const char *s, const char *where,
                                ccoe_error *err)
{
    char ws[400];
    where_suffix(ws, sizeof ws, where);
    size_t len = strlen(s);
    if (len > k->max_len)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "%s.%s = '%.40s...' is too long (%zu characters): at most %zu "
                              "allowed; use a shorter (e.g. relative) value%s",
                              k->section, k->key, s, len, k->max_len, ws);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s.%s contains a control character (byte 0x%02x at %zu): "
                                  "only printable text is allowed%s",
                                  k->section, k->key, ch, i, ws);
        if (ch == ';')
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s.%s = '%.80s' contains ';', which starts a comment in INI "
                                  "files: choose a value without it%s",
                                  k->section, k->key, s, ws);
    }
    if (len && (isspace((unsigned char)s[0]) || isspace((unsigned char)s[len - 1])))
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "%s.%s = '%.80s' starts or ends with whitespace, which INI files "
                              "drop: remove it%s",
                              k->section, k->key, s, ws);
    if (k->names) {
        for (size_t i = 0; k->names[i]; i++)
            if (strcmp(s, k->names[i]) == 0)
                return CCOE_OK;
        char allowed[200];
        fmt_names(allowed, sizeof allowed, k->names);
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s = '%.80s': allowed %s%s", k->section,
                              k->key, s, allowed, ws);
    }
    return CCOE_OK;
}

/* Parses text (already stripped of surrounding blanks) into k's field of c. Nothing is stored
 * unless the value is valid. `where` names the origin for messages ("file x.ini line 3"). */
static ccoe_status parse_value(const ccoe_config_key *k, ccoe_config *c, const char *v,
                               const char *where, ccoe_error *err)
{
    char ws[400];
    where_suffix(ws, sizeof ws, where);
    const char *sec = k->section, *key = k->key;
    switch (k->type) {
    case CCOE_CFG_INT:
    case CCOE_CFG_LONG:
    case CCOE_CFG_U64: {
        const char *what = k->type == CCOE_CFG_U64 ? "a non-negative integer" : "an integer";
        if (k->type == CCOE_CFG_INT && k->names && strcmp(v, k->names[0]) == 0) {
            *(int *)field(c, k) = 0;
            return CCOE_OK;
        }
        if (!*v)
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s is empty: expected %s%s", sec, key,
                                  what, ws);
        if (k->type == CCOE_CFG_U64 && (*v == '-' || *v == '+'))
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s = '%.80s' is not %s%s", sec, key,
                                  v, what, ws);
        char *end = NULL;
        errno = 0;
        long long sv = 0;
        unsigned long long uv = 0;
        if (k->type == CCOE_CFG_U64)
            uv = strtoull(v, &end, 10);
        else
            sv = strtoll(v, &end, 10);
        int range_err = errno == ERANGE;
        if (end == v || isspace((unsigned char)*v))
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s = '%.80s' is not a number%s%s%s",
                                  sec, key, v, k->names ? " or " : "", k->names ? k->names[0] : "",
                                  ws);
        if (*end)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s.%s = '%.80s' is not %s (trailing '%.40s')%s", sec, key, v,
                                  what, end, ws);
        if (k->type == CCOE_CFG_U64) {
            if (range_err)
                return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                      "%s.%s = %.80s is out of range: allowed 0..%" PRIu64 "%s",
                                      sec, key, v, UINT64_MAX, ws);
            *(uint64_t *)field(c, k) = (uint64_t)uv;
            return CCOE_OK;
        }
        if (range_err) {
            char range[80];
            fmt_range(range, sizeof range, k);
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s = %.80s is out of range: allowed %s%s",
                                  sec, key, v, range, ws);
        }
        CCOE_TRY(check_integer(k, sv, where, err));
        if (k->type == CCOE_CFG_INT)
            *(int *)field(c, k) = (int)sv;
        else
            *(long *)field(c, k) = (long)sv;
        return CCOE_OK;
    }
    case CCOE_CFG_DOUBLE: {
        if (!*v)
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s is empty: expected a number%s", sec,
                                  key, ws);
        char *end = NULL;
        errno = 0;
        double d = strtod(v, &end);
        if (end == v || isspace((unsigned char)*v))
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s = '%.80s' is not a number%s", sec,
                                  key, v, ws);
        if (*end)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s.%s = '%.80s' is not a number (trailing '%.40s')%s", sec, key,
                                  v, end, ws);
        if (!isfinite(d))
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s.%s = '%.80s' is not a finite number (NaN, Inf and "
                                  "overflowing values are not allowed)%s",
                                  sec, key, v, ws);
        CCOE_TRY(check_double(k, d, where, err));
        *(double *)field(c, k) = d;
        return CCOE_OK;
    }
    case CCOE_CFG_BOOL: {
        static const char *const yes[] = {"true", "1", "yes"}, *const no[] = {"false", "0", "no"};
        for (size_t i = 0; i < 3; i++) {
            if (str_ieq(v, yes[i])) {
                *(int *)field(c, k) = 1;
                return CCOE_OK;
            }
            if (str_ieq(v, no[i])) {
                *(int *)field(c, k) = 0;
                return CCOE_OK;
            }
        }
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "%s.%s = '%.80s': allowed true, false, 1, 0, yes, no%s", sec, key, v,
                              ws);
    }
    case CCOE_CFG_ENUM: {
        for (size_t i = 0; k->names[i]; i++) {
            if (strcmp(v, k->names[i]) == 0) {
                *(int *)field(c, k) = (int)i;
                return CCOE_OK;
            }
        }
        char allowed[200];
        fmt_names(allowed, sizeof allowed, k->names);
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s = '%.80s': allowed %s%s", sec, key, v,
                              allowed, ws);
    }
    case CCOE_CFG_STRING: {
        CCOE_TRY(check_string(k, v, where, err));
        assert(strlen(v) < k->size);
        char *dst = field(c, k);
        memset(dst, 0, k->size); /* keeps the struct memcmp-comparable */
        memcpy(dst, v, strlen(v));
        return CCOE_OK;
    }
    }
    return ccoe_error_set(err, CCOE_ERR_INTERNAL, "config key %s.%s has an unknown type", sec,
                          key);
}

/* Checks the value stored in c for key k (validation of a struct edited in code). */
static ccoe_status check_stored(const ccoe_config_key *k, const ccoe_config *c, ccoe_error *err)
{
    switch (k->type) {
    case CCOE_CFG_INT:
        if (k->names && *(const int *)cfield(c, k) == 0) /* the named value (auto) */
            return CCOE_OK;
        return check_integer(k, *(const int *)cfield(c, k), NULL, err);
    case CCOE_CFG_LONG: return check_integer(k, *(const long *)cfield(c, k), NULL, err);
    case CCOE_CFG_DOUBLE: return check_double(k, *(const double *)cfield(c, k), NULL, err);
    case CCOE_CFG_U64: return CCOE_OK;
    case CCOE_CFG_BOOL: {
        int b = *(const int *)cfield(c, k);
        if (b != 0 && b != 1)
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s = %d: allowed true (1) or false (0)",
                                  k->section, k->key, b);
        return CCOE_OK;
    }
    case CCOE_CFG_ENUM: {
        int e = *(const int *)cfield(c, k);
        if (e < 0 || (size_t)e >= count_names(k->names)) {
            char allowed[200];
            fmt_names(allowed, sizeof allowed, k->names);
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s = %d is not a valid value: allowed %s",
                                  k->section, k->key, e, allowed);
        }
        return CCOE_OK;
    }
    case CCOE_CFG_STRING: {
        const char *s = cfield(c, k);
        if (!memchr(s, '\0', k->size))
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s.%s is not NUL-terminated", k->section,
                                  k->key);
        return check_string(k, s, NULL, err);
    }
    }
    return ccoe_error_set(err, CCOE_ERR_INTERNAL, "config key %s.%s has an unknown type",
                          k->section, k->key);
}

/* Formats k's value in c as INI text. */
static void format_value(const ccoe_config_key *k, const ccoe_config *c, char *buf, size_t cap)
{
    switch (k->type) {
    case CCOE_CFG_INT:
        if (k->names && *(const int *)cfield(c, k) == 0)
            snprintf(buf, cap, "%s", k->names[0]);
        else
            snprintf(buf, cap, "%d", *(const int *)cfield(c, k));
        return;
    case CCOE_CFG_LONG: snprintf(buf, cap, "%ld", *(const long *)cfield(c, k)); return;
    case CCOE_CFG_U64: snprintf(buf, cap, "%" PRIu64, *(const uint64_t *)cfield(c, k)); return;
    case CCOE_CFG_DOUBLE: fmt_double(buf, cap, *(const double *)cfield(c, k)); return;
    case CCOE_CFG_BOOL: snprintf(buf, cap, "%s", *(const int *)cfield(c, k) ? "true" : "false"); return;
    case CCOE_CFG_ENUM: {
        int e = *(const int *)cfield(c, k);
        size_t n = count_names(k->names);
        if (e >= 0 && (size_t)e < n)
            snprintf(buf, cap, "%s", k->names[e]);
        else
            snprintf(buf, cap, "%d", e); /* invalid; reading it back reports the error */
        return;
    }
    case CCOE_CFG_STRING: {
        const char *s = cfield(c, k);
        snprintf(buf, cap, "%.*s", (int)strnlen(s, k->size), s);
        return;
    }
    }
    buf[0] = '\0';
}

/* ---------------------------------------------------------------------------------------------
 * Public: defaults, parsing, overrides
 */

void ccoe_config_defaults(ccoe_config *c)
{
    gate_names_fill();
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NKEYS; i++) {
        ccoe_status st = parse_value(&key_table[i], c, key_table[i].def, "default", NULL);
        assert(st == CCOE_OK && "every default in key_table must parse");
        (void)st;
    }
}

static ccoe_status apply_key(ccoe_config *c, const char *section, const char *key,
                             const char *value, const char *where, ccoe_error *err)
{
    const ccoe_config_key *k = find_key(section, key);
    if (!k)
        return unknown_key_error(section, key, where, err);
    return parse_value(k, c, value, where, err);
}

static ccoe_status on_ini_key(void *user, const char *section, const char *key,
                              const char *value, const char *where, int line, ccoe_error *err)
{
    (void)line;
    return apply_key(user, section, key, value, where, err);
}

ccoe_status ccoe_config_load_string(ccoe_config *c, const char *text, const char *origin,
                                    ccoe_error *err)
{
    ccoe_config *work = malloc(sizeof *work); /* parsed into a copy; committed on success */
    if (!work)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory parsing a config");
    *work = *c;
    ccoe_status st = ccoe_ini_parse(text, origin, on_ini_key, NULL, work, err);
    if (st == CCOE_OK)
        *c = *work;
    free(work);
    return st;
}

ccoe_status ccoe_config_load_file(ccoe_config *c, const char *path, ccoe_error *err)
{
    FILE *f = ccoe_fs_fopen_input(path, "config file", err);
    if (!f)
        return err ? err->status : CCOE_ERR_IO;
    char *buf = NULL;
    size_t len = 0;
    int e = ccoe_fs_read_stream(f, (size_t)16 << 20, &buf, &len);
    fclose(f);
    if (e == EFBIG)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "config file '%s' is larger than 16 MB: is it a config?", path);
    if (e == ENOMEM)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory reading config file '%s'", path);
    if (e)
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot read config file '%s': %s", path,
                              strerror(e));
    ccoe_status st;
    if (strlen(buf) != len) {
        st = ccoe_error_set(err, CCOE_ERR_CONFIG,
                            "config file '%s' contains a NUL byte: is it a text file?", path);
    } else {
        char origin[600];
        snprintf(origin, sizeof origin, "file %s", path);
        st = ccoe_config_load_string(c, buf, origin, err);
    }
    free(buf);
    return st;
}

static void strip(const char **b, const char **e)
{
    while (*b < *e && isspace((unsigned char)**b))
        (*b)++;
    while (*e > *b && isspace((unsigned char)(*e)[-1]))
        (*e)--;
}

ccoe_status ccoe_config_set(ccoe_config *c, const char *assignment, ccoe_error *err)
{
    const char *eq = strchr(assignment, '=');
    if (!eq)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "--set '%.200s' has no '=': write --set section.key=value "
                              "(e.g. --set model.n_layer=4)",
                              assignment);
    const char *nb = assignment, *ne = eq, *vb = eq + 1, *ve = eq + strlen(eq);
    strip(&nb, &ne);
    strip(&vb, &ve);
    char name[160], value[CCOE_STR * 2], where[CCOE_STR * 2 + 200];
    if ((size_t)(ne - nb) >= sizeof name)
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "--set '%.80s...': key name too long; " HELP_HINT,
                              assignment);
    if ((size_t)(ve - vb) >= sizeof value)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "--set %.*s: value is too long (%zu characters)", (int)(ne - nb), nb,
                              (size_t)(ve - vb));
    memcpy(name, nb, (size_t)(ne - nb));
    name[ne - nb] = '\0';
    memcpy(value, vb, (size_t)(ve - vb));
    value[ve - vb] = '\0';
    snprintf(where, sizeof where, "--set %s=%.*s", name, 60, value);
    char *dot = strchr(name, '.');
    if (!dot) {
        const ccoe_config_key *s = suggest("", name);
        if (s)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "--set '%s': the key needs its section; did you mean "
                                  "'%s.%s'? " HELP_HINT,
                                  name, s->section, s->key);
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "--set '%s': expected section.key=value; " HELP_HINT, name);
    }
    *dot = '\0';
    ccoe_config work = *c;
    CCOE_TRY(apply_key(&work, name, dot + 1, value, where, err));
    *c = work;
    return CCOE_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Validation
 */

static int swiglu_hidden(int C)
{
    long f = (8L * C + 1) / 3; /* 8C/3 rounded to the nearest integer */
    return (int)((f + 63) / 64 * 64);
}

ccoe_status ccoe_config_validate(ccoe_config *c, ccoe_error *err)
{
    gate_names_fill();
    for (size_t i = 0; i < NKEYS; i++)
        CCOE_TRY(check_stored(&key_table[i], c, err));

    const ccoe_model_config *m = &c->model;
    if (m->n_embd % m->n_head != 0) {
        char ok[160] = "";
        size_t used = 0;
        for (int h = 1; h <= m->n_embd && h <= 64 && used < sizeof ok; h++)
            if (m->n_embd % h == 0) {
                int w = snprintf(ok + used, sizeof ok - used, "%s%d", used ? ", " : "", h);
                if (w > 0)
                    used += (size_t)w;
            }
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "model.n_embd = %d is not divisible by model.n_head = %d: choose "
                              "n_head among the divisors of n_embd (%s%s) or change n_embd",
                              m->n_embd, m->n_head, ok, m->n_embd > 64 ? ", ..." : "");
    }
    if (m->n_kv_head != 0 && m->n_head % m->n_kv_head != 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "model.n_kv_head = %d does not divide model.n_head = %d: choose "
                              "n_kv_head among the divisors of n_head (or 0 = n_head)",
                              m->n_kv_head, m->n_head);
    if (m->pos == CCOE_POS_ROPE && (m->n_embd / m->n_head) % 2 != 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "model.pos = rope needs an even head size, but model.n_embd / "
                              "model.n_head = %d / %d = %d: change n_embd or n_head",
                              m->n_embd, m->n_head, m->n_embd / m->n_head);
    if ((long long)c->train.batch_size * m->seq_len > INT_MAX)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "train.batch_size * model.seq_len = %d * %d tokens per micro-batch "
                              "exceeds %d: lower batch_size (use train.grad_accum instead)",
                              c->train.batch_size, m->seq_len, INT_MAX);
    if (!c->train.out_dir[0])
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "train.out_dir is empty: set it to the directory for checkpoints "
                              "and metrics (e.g. runs/default)");
    if (!c->data.manifest[0])
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "data.manifest is empty: set it to \"builtin\" or a manifest path");
    if (!c->data.tokenizer[0])
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "data.tokenizer is empty: set it to \"byte\" or a BPE tokenizer "
                              "directory");

    if (c->model.ffn_hidden == 0) {
        int C = m->n_embd;
        c->model.ffn_hidden = m->ffn == CCOE_FFN_SWIGLU ? swiglu_hidden(C) : 4 * C;
    }
    return CCOE_OK;
}

int ccoe_config_moe_block(const ccoe_moe_section *moe, int l)
{
    return !ccoe_gate_is_none(moe->gate) && moe->every >= 1 && (l + 1) % moe->every == 0;
}

/* ---------------------------------------------------------------------------------------------
 * Printing and hashing: one emitter feeds either a growing string or the hash.
 */

typedef struct sink {
    char *buf; /* NULL: hash only */
    size_t len, cap;
    uint64_t hash;
    int failed;
} sink;

static void sink_put(sink *s, const char *text)
{
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i++) {
        s->hash ^= (unsigned char)text[i];
        s->hash *= 0x100000001b3ULL;
    }
    if (!s->buf || s->failed)
        return;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap;
        while (s->len + n + 1 > cap)
            cap *= 2;
        char *nb = realloc(s->buf, cap);
        if (!nb) {
            s->failed = 1;
            return;
        }
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, text, n + 1);
    s->len += n;
}

static void emit_ini(const ccoe_config *c, sink *s)
{
    char line[CCOE_STR + 128], value[CCOE_STR + 16];
    sink_put(s, "; ccoe resolved configuration\n");
    const char *section = "";
    for (size_t i = 0; i < NKEYS; i++) {
        const ccoe_config_key *k = &key_table[i];
        if (strcmp(k->section, section) != 0) {
            section = k->section;
            snprintf(line, sizeof line, "\n[%s]\n", section);
            sink_put(s, line);
        }
        format_value(k, c, value, sizeof value);
        if (k->omit_default && strcmp(value, k->def) == 0)
            continue;
        snprintf(line, sizeof line, "%s = %s\n", k->key, value);
        sink_put(s, line);
    }
}

char *ccoe_config_to_ini(const ccoe_config *c)
{
    sink s = {.buf = malloc(2048), .cap = 2048, .hash = 0xcbf29ce484222325ULL};
    if (!s.buf)
        return NULL;
    s.buf[0] = '\0';
    emit_ini(c, &s);
    if (s.failed) {
        free(s.buf);
        return NULL;
    }
    return s.buf;
}

uint64_t ccoe_config_hash(const ccoe_config *c)
{
    sink s = {.buf = NULL, .hash = 0xcbf29ce484222325ULL};
    emit_ini(c, &s);
    return s.hash;
}

void ccoe_config_print_help(FILE *f)
{
    fprintf(f, "Configuration keys. Set them in an INI file ([section] then key = value) or with\n"
               "--set section.key=value (applied after the file). Unknown keys are errors.\n");
    gate_names_fill();
    const char *section = "";
    for (size_t i = 0; i < NKEYS; i++) {
        const ccoe_config_key *k = &key_table[i];
        if (strcmp(k->section, section) != 0) {
            section = k->section;
            fprintf(f, "\n[%s]\n", section);
        }
        char allowed[256];
        switch (k->type) {
        case CCOE_CFG_INT:
        case CCOE_CFG_LONG: {
            char r[80];
            fmt_range(r, sizeof r, k);
            snprintf(allowed, sizeof allowed, "integer %s", r);
            break;
        }
        case CCOE_CFG_DOUBLE: {
            char r[80];
            fmt_range(r, sizeof r, k);
            snprintf(allowed, sizeof allowed, "number %s", r);
            break;
        }
        case CCOE_CFG_U64: snprintf(allowed, sizeof allowed, "integer 0..%" PRIu64, UINT64_MAX); break;
        case CCOE_CFG_BOOL: snprintf(allowed, sizeof allowed, "true | false"); break;
        case CCOE_CFG_ENUM: {
            char n[200];
            fmt_names(n, sizeof n, k->names);
            snprintf(allowed, sizeof allowed, "one of %s", n);
            break;
        }
        case CCOE_CFG_STRING:
            if (k->names) {
                char n[200];
                fmt_names(n, sizeof n, k->names);
                snprintf(allowed, sizeof allowed, "one of %s", n);
            } else {
                snprintf(allowed, sizeof allowed, "text, at most %zu characters", k->max_len);
            }
            break;
        }
        char name[64];
        snprintf(name, sizeof name, "%s.%s", k->section, k->key);
        fprintf(f, "  %-20s default %-14s %s\n      %s\n", name, k->def, allowed, k->help);
        for (size_t j = 0; k->name_help && k->names && k->names[j]; j++)
            fprintf(f, "        %-12s %s\n", k->names[j], k->name_help(k->names[j]));
    }
}
