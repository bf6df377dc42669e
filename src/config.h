/* config.h - the resolved configuration of a run.
 *
 * One table in config.c drives INI parsing, `--set section.key=value` overrides, --help, the
 * resolved printout and the hash stored in checkpoints. Unknown keys and out-of-range values are
 * errors whose message names the key and the allowed range; nothing is clamped silently.
 * Per-key ranges and the cross-field rules of [model], [train] and [data] are checked by
 * ccoe_config_validate; those of [moe], [mpi] and [ccoe] by their modules, all run by
 * ccoe_session_validate (session.h) before anything is allocated.
 * The struct is plain data (fixed-size strings) so it can be copied and hashed.
 */
#ifndef CCOE_CONFIG_H
#define CCOE_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "status.h"

#define CCOE_STR 256

typedef enum ccoe_norm_kind { CCOE_NORM_LAYERNORM = 0, CCOE_NORM_RMSNORM = 1 } ccoe_norm_kind;
typedef enum ccoe_ffn_kind { CCOE_FFN_GELU = 0, CCOE_FFN_SWIGLU = 1 } ccoe_ffn_kind;
typedef enum ccoe_block_kind { CCOE_BLOCK_PRE_LN = 0, CCOE_BLOCK_POST_LN = 1 } ccoe_block_kind;
typedef enum ccoe_pos_kind { CCOE_POS_LEARNED = 0, CCOE_POS_ROPE = 1 } ccoe_pos_kind;

typedef struct ccoe_model_config {
    int n_layer;      /* L   [model] layers          1..256    default 4   */
    int n_embd;       /* C   [model] channels        8..16384  default 256 */
    int n_head;       /* H   [model] heads, divides C                default 4   */
    int ffn_hidden;   /* F   [model] 0 = 4*C (gelu) or 8*C/3 rounded to 64 (swiglu) */
    int vocab_size;   /* V   [model] 0 = the tokenizer's size padded to a multiple of 64 */
    int seq_len;      /* T   [model] max sequence length 1..65536 default 128 */
    ccoe_norm_kind norm;   /* [model] norm = layernorm | rmsnorm */
    ccoe_ffn_kind ffn;     /* [model] ffn = gelu | swiglu */
    ccoe_block_kind block; /* [model] block = pre_ln | post_ln */
    int tied_head;    /* [model] tied_head = true | false (LM head shares wte) */
    int bias;         /* [model] bias = true | false (linear layers have biases) */
    ccoe_pos_kind pos;     /* [model] pos = learned (wpe table) | rope (rotary, no wpe) */
    double rope_theta;     /* [model] rope_theta > 0, default 10000 (RoPE base) */
    int n_kv_head;    /* Hkv [model] key/value heads, 0 = n_head; divides n_head (GQA) */
    int qkv_bias;     /* [model] qkv_bias = true | false: biases on q/k/v only (Qwen2) */
    double norm_eps;  /* [model] norm_eps in (0, 1e-2], default 1e-5 (LayerNorm / RMSNorm) */
    double init_std;  /* [model] init_std > 0, default 0.02 */
    int max_positions; /* [model] the context the model was pretrained for (HF
                        * max_position_embeddings), 0 = seq_len; import sets it, export writes
                        * it; nothing else reads it */
} ccoe_model_config;

/* Key/value heads of a model config: model.n_kv_head, 0 meaning n_head. */
static inline int ccoe_model_kv_heads(const ccoe_model_config *m)
{
    return m->n_kv_head > 0 ? m->n_kv_head : m->n_head;
}

typedef struct ccoe_train_config {
    int batch_size;      /* B  [train] sequences per micro-batch 1..65536, default 8 */
    int grad_accum;      /* [train] micro-batches per step 1..4096, default 1 */
    long steps;          /* [train] optimizer steps 0..1e9, default 500 */
    double lr;           /* [train] peak learning rate (0, 10], default 1e-3 */
    double min_lr_frac;  /* [train] cosine floor as a fraction of lr [0, 1], default 0.1 */
    long warmup;         /* [train] linear warm-up steps >= 0, default 50 */
    double weight_decay; /* [train] AdamW decoupled decay on matrices [0, 10], default 0.1 */
    double beta1;        /* [train] [0, 1), default 0.9 */
    double beta2;        /* [train] [0, 1), default 0.95 */
    double eps;          /* [train] (0, 1), default 1e-8 */
    double grad_clip;    /* [train] global norm clip, 0 = off, default 1.0 */
    uint64_t seed;       /* [train] seed of init, data order, noise; default 1337 */
    long eval_every;     /* [train] steps between evaluations, 0 = only at the end; default 100 */
    int eval_batches;    /* [train] validation batches per domain per eval, 0 = all; default 8 */
    long ckpt_every;     /* [train] steps between checkpoints, 0 = only at the end; default 0 */
    long log_every;      /* [train] steps between log lines >= 1; default 10 */
    char out_dir[CCOE_STR]; /* [train] where checkpoints and metrics go; default "runs/default" */
} ccoe_train_config;

typedef struct ccoe_data_config {
    char manifest[CCOE_STR];  /* [data] "builtin" or a manifest file path */
    char tokenizer[CCOE_STR]; /* [data] "byte" or a BPE tokenizer directory */
    double val_fraction;      /* [data] per-domain validation share (0, 0.5], default 0.1 */
    int task_examples;        /* [data] task examples per domain at eval, 0 = none; default 200 */
} ccoe_data_config;

typedef struct ccoe_run_config {
    int threads;              /* [run] threads per process 1..1024, 0 = auto; default 2 */
    char gemm[16];            /* [run] auto | ref | blis | xsmm, default auto */
    char precision[8];        /* [run] fp32 | bf16 (linear layers' GEMMs), default fp32 */
} ccoe_run_config;

/* CCoE formulations (paper Section 4; papers/ccoe.md). */
typedef enum ccoe_form {
    CCOE_FORM_NONE = 0, /* the base model alone */
#define CCOE_FORM(name, ID) CCOE_FORM_##ID,
#include "forms.def"
#undef CCOE_FORM
} ccoe_form;

typedef enum ccoe_expert_init {
    CCOE_INIT_COPY = 0,  /* a new expert starts as a copy of the base blocks at its position */
    CCOE_INIT_RANDOM = 1 /* a new expert starts from the random init */
} ccoe_expert_init;

typedef struct ccoe_ccoe_config {
    ccoe_form form;            /* [ccoe] form = none | tail | prefix | ffn */
    char experts[CCOE_STR];    /* [ccoe] "NAME:LAYERS NAME:LAYERS ..." in push order */
    char routes[CCOE_STR];     /* [ccoe] "DOMAIN:EXPERT ..."; unlisted domains use the base */
    int prefix_layers;         /* [ccoe] l_b of Eq. 5 (form = prefix) */
    int max_expert_layers;     /* [ccoe] cap on l_i; 0 = floor(L/2) */
    int own_head;              /* [ccoe] experts own their final norm and LM head */
    ccoe_expert_init init;     /* [ccoe] init = copy | random */
    char train_expert[64];     /* [ccoe] "" = train everything; NAME = train only that expert,
                                * everything else frozen, on its domains' data */
    int routing;               /* [ccoe] inference routing (src/route.h): 0 rule (default),
                                * 1 posterior, 2 classifier; left out of the INI at its default */
} ccoe_ccoe_config;

/* Mixture-of-Experts FFNs in the base blocks (papers/moe.md, src/moe.h). gate = none is the
 * dense model; otherwise base block l (0-based) has an MoE layer instead of its FFN when
 * (l + 1) % every == 0 (every = 1: all blocks; every = 2: blocks 1, 3, ...). CCoE expert blocks
 * stay dense. Experts have the model's FFN kind (model.ffn) and biases (model.bias). */
typedef struct ccoe_moe_section {
    char gate[32];          /* [moe] none or a gate of variants/gates.def; default none */
    int n_experts;          /* E [moe] 1..1024, default 8 */
    int top_k;              /* K [moe] 1..1024, default 2 (softmax: = E, domain: 1) */
    int every;              /* [moe] every n-th base block is MoE, 1..256, default 1 */
    int expert_hidden;      /* [moe] F of each expert; 0 = model.ffn_hidden */
    int renormalize;        /* [moe] topk: kept weights sum to 1; default true */
    double capacity_factor; /* [moe] 0 = dropless, else >= 1; default 1.25 (training) */
    double eval_capacity_factor; /* [moe] the same for evaluation and decoding; default 0 */
    double noise_eps;       /* [moe] noisy_topk: sigma floor, default 0 */
    double w_importance;    /* [moe] Shazeer importance loss weight, default 0 */
    double w_load;          /* [moe] Shazeer load loss weight (noisy_topk, K < E), default 0 */
    double w_switch;        /* [moe] Switch/GShard balance loss weight, default 0.01 */
    double w_z;             /* [moe] router z-loss weight, default 0.001 */
    int train_router_only;  /* [moe] train only the MoE layers' router tensors (router.*),
                             * everything else frozen; default false */
    /* DeepSeek-style routing (papers/moe.md) */
    double bias_rate;       /* [moe] lossfree: selection-bias step per update, default 0.001 */
    double w_seq;           /* [moe] lossfree: sequence-wise balance loss weight, default 0 */
    int n_shared;           /* [moe] always-on shared experts beside the routed ones, default 0 */
    int granularity;        /* [moe] fine-grained experts: m*E experts of F/m, top-k m*K;
                               default 1 (ccoe_moe_config_from_section applies it) */
} ccoe_moe_section;

/* Expert placement over MPI ranks (src/placement.h): which rank owns each expert, for the
 * expert-parallel MoE layers and CCoE expert placement (--ccoe-placement experts). */
typedef enum ccoe_placement_kind {
    CCOE_PLACE_CONTIGUOUS = 0,  /* rank q owns experts [floor(q E / P), floor((q + 1) E / P)) */
    CCOE_PLACE_ROUND_ROBIN = 1, /* expert e on rank e mod P */
    CCOE_PLACE_BALANCED = 2,    /* CCoE: largest-first by training tokens; MoE: contiguous */
    CCOE_PLACE_LIST = 3         /* mpi.map */
} ccoe_placement_kind;

typedef struct ccoe_mpi_config {
    ccoe_placement_kind placement; /* [mpi] placement, default contiguous */
    char map[CCOE_STR];            /* [mpi] map = "r0,r1,..." one rank per expert (list) */
    double timeout;                /* [mpi] collective watchdog, seconds [0, 1e6], 0 = off;
                                    * default 300 (src/watchdog.h, mpi/comm_mpi.c) */
} ccoe_mpi_config;

typedef struct ccoe_config {
    ccoe_model_config model;
    ccoe_train_config train;
    ccoe_data_config data;
    ccoe_run_config run;
    ccoe_ccoe_config ccoe;
    ccoe_moe_section moe;
    ccoe_mpi_config mpi;
} ccoe_config;

/* 1 if base block l (0-based) has an MoE FFN under this section (gate != none). */
int ccoe_config_moe_block(const ccoe_moe_section *moe, int l);

/* Fills every field with its default. */
void ccoe_config_defaults(ccoe_config *c);

/* Applies an INI file on top of c. Unknown sections/keys and bad values are errors naming the
 * file, line, key and allowed values. */
ccoe_status ccoe_config_load_file(ccoe_config *c, const char *path, ccoe_error *err);

/* Applies INI text (as stored in a checkpoint) on top of c; `origin` names it in messages. */
ccoe_status ccoe_config_load_string(ccoe_config *c, const char *text, const char *origin,
                                    ccoe_error *err);

/* Applies one override "section.key=value" (blanks around key and value are dropped).
 * The three loaders are all-or-nothing: on error c is unchanged. */
ccoe_status ccoe_config_set(ccoe_config *c, const char *assignment, ccoe_error *err);

/* Re-checks every key's range, then the cross-field rules of [model], [train] and [data]
 * (C % H == 0, B*T fits an int, non-empty paths) and resolves derived defaults (ffn_hidden 0 ->
 * 4*C or 8*C/3 rounded up to 64). The rules of [moe], [mpi] and [ccoe] are not checked here:
 * a config is valid once ccoe_session_validate (session.h) accepts it.
 * vocab_size 0 is accepted and left 0: the caller resolves it from the tokenizer. The head size
 * C/H has no parity rule (positions are learned, there is no rotary embedding). */
ccoe_status ccoe_config_validate(ccoe_config *c, ccoe_error *err);

/* The resolved config as INI text that ccoe_config_load_string reads back to an equal struct.
 * Returns a malloc'd string (caller frees), NULL on allocation failure. */
char *ccoe_config_to_ini(const ccoe_config *c);

/* 64-bit FNV-1a of ccoe_config_to_ini's text. */
uint64_t ccoe_config_hash(const ccoe_config *c);

/* Prints every key with its type, allowed values and default. */
void ccoe_config_print_help(FILE *f);

/* Read-only view of the key table (for tests and tools such as `ccoe help-config`). */
typedef enum ccoe_config_type {
    CCOE_CFG_INT,    /* int, range [min, max] */
    CCOE_CFG_LONG,   /* long, range [min, max] */
    CCOE_CFG_DOUBLE, /* double, range min..max, each end open if min_open / max_open */
    CCOE_CFG_BOOL,   /* int 0/1; true/false/1/0/yes/no */
    CCOE_CFG_STRING, /* char[size], at most max_len characters; names = allowed values or NULL */
    CCOE_CFG_ENUM,   /* C enum stored as int; names[value] */
    CCOE_CFG_U64     /* uint64_t, any value */
} ccoe_config_type;

typedef struct ccoe_config_key {
    const char *section;      /* "model" */
    const char *key;          /* "n_layer" */
    ccoe_config_type type;
    size_t offset;            /* of the field in ccoe_config */
    size_t size;              /* of the field in bytes */
    double min, max;          /* INT, LONG, DOUBLE */
    int min_open, max_open;   /* DOUBLE: the bound itself is not allowed */
    size_t max_len;           /* STRING: longest value in characters */
    const char *const *names; /* ENUM names / STRING allowed values, NULL-terminated, or NULL */
    const char *def;          /* default as INI text */
    const char *help;
    /* Optional: one line of help for each allowed name (help-config lists them), or NULL. */
    const char *(*name_help)(const char *name);
    /* 1: the resolved INI text (and so the hash stored in checkpoints) leaves the key out while
     * it holds its default, so that configs written before the key existed keep their hash. */
    int omit_default;
} ccoe_config_key;

/* The table, in printing order; *n receives the number of keys. */
const ccoe_config_key *ccoe_config_keys(size_t *n);

#endif
