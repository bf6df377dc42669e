/* study_impl.h - internals of `ccoe study` shared by its files: the study and variant structs
 * and the functions one file calls in another. Not a public interface: only src/study*.c
 * include it. Each function is documented at its definition.
 */
#ifndef CCOE_STUDY_IMPL_H
#define CCOE_STUDY_IMPL_H

#include <stddef.h>
#include <stdio.h>

#include "comm.h"
#include "config.h"
#include "model.h"
#include "moe.h"
#include "status.h"
#include "study.h"

#define STUDY_MAX_VARIANTS 48
#define STUDY_MAX_SETS 64
#define STUDY_NAME 48
#define STUDY_SET_LEN (2 * CCOE_STR + 96)

typedef enum { BUDGET_TOKENS = 0, BUDGET_FLOPS = 1 } budget_kind;

typedef struct study_set {
    char text[STUDY_SET_LEN]; /* "section.key=value" */
    int line;                 /* in the study file; 0 = command line */
} study_set;

/* A growable array of doubles (curves). */
typedef struct dvec {
    double *v;
    size_t n, cap;
} dvec;

typedef struct study_variant {
    char name[STUDY_NAME];
    char label[128];          /* label = ... or a description derived from the config */
    int declared;             /* has a [variant.NAME] section */
    int line;                 /* of its section */
    int optional;             /* a config the build rejects skips the variant instead of failing */
    int experts_per_domain;   /* > 0: one CCoE expert of this many layers per data domain */
    char init_from[STUDY_NAME]; /* start from the weights of this earlier variant ("" = init) */
    study_set sets[STUDY_MAX_SETS];
    int n_sets;

    /* results */
    int skipped;
    int reused;               /* a finished run of this exact config was found and kept */
    char note[400];
    ccoe_config cfg;          /* as trained (resolved) */
    long steps, tokens;
    double flops_per_token;   /* training FLOPs per token, mean over the data's domain mix */
    double train_flops;       /* steps * tokens/step * flops_per_token */
    size_t total_params;
    double active_params;     /* per token, mean over the domain mix */
    double tok_s, train_s, wall_s, comm_share;
    double loss[CCOE_MAX_DOMAINS], ppl[CCOE_MAX_DOMAINS], acc[CCOE_MAX_DOMAINS]; /* NAN = none */
    double bpb[CCOE_MAX_DOMAINS]; /* bits per byte (runs with a BPE tokenizer), NAN = none */
    double mean_loss, mean_ppl;
    dvec c_step, c_loss;      /* training loss per step */
    dvec v_step, v_loss;      /* mean validation loss at each evaluation */
    /* MoE (n_moe > 0): load on the validation split, averaged over MoE layers */
    int n_moe, E, K;
    char gate[32];
    double *load;             /* (n_domains, E) share of each domain's expert slots, in [0,1] */
    double load_cv, max_share, drop_rate, mi_bits;
    double share[CCOE_MOE_MAX_EXPERTS]; /* (E) overall share of the slots */
    double gain;              /* sweep: -d(mean val loss) / |d(params)|, NAN = not computed */
    int sweep_layers;         /* sweep point l_i, 0 = not a sweep variant */
} study_variant;

typedef struct study {
    char path[CCOE_STR], dir[CCOE_STR];
    char name[64];
    char base[CCOE_STR];
    int base_line;
    char init_from[CCOE_STR];      /* study.init_from as written ("" = none) */
    char init_path[2 * CCOE_STR];  /* it, relative to the study file's directory */
    int init_from_line;
    char budget[128];
    int budget_line;
    budget_kind bkind;
    double bvalue;
    char out_dir[CCOE_STR];
    char variants[2048];
    int variants_line;
    int variants_cli;         /* study.variants came from --set: a subset may run */
    char sweep[STUDY_NAME];
    char sweep_layers[64];
    int sweep_line;
    char gain_ref[STUDY_NAME];
    char description[512];
    study_set base_sets[STUDY_MAX_SETS * 2];
    int n_base_sets;
    study_variant *decl;      /* (STUDY_MAX_VARIANTS) sections as declared */
    int n_decl;
    study_variant *run;       /* (STUDY_MAX_VARIANTS) variants in run order */
    int n_run;
    /* data */
    int n_domains;
    char domains[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
    double dom_share[CCOE_MAX_DOMAINS];  /* of the training sequences */
    int dom_task[CCOE_MAX_DOMAINS];      /* domain has an exact-answer task */
    /* parsing */
    int line;
    int failed;
    ccoe_error *err;
} study;

/* ---- study_spec.c ---- */
study_variant *ccoe_study_find_variant(study_variant *v, int n, const char *name);
int ccoe_study_on_key(void *user, const char *section, const char *key, const char *value);
ccoe_status ccoe_study_parse_budget(study *S, ccoe_error *err);
ccoe_status ccoe_study_parse_file(study *S, const char *path, ccoe_error *err);
ccoe_status ccoe_study_build_run_list(study *S, int n_layer, ccoe_error *err);
ccoe_status ccoe_study_apply_set(const study *S, const study_set *s, const char *where,
                                 ccoe_config *cfg, ccoe_error *err);
ccoe_status ccoe_study_variant_config(study *S, const study_variant *v, const ccoe_config *base,
                                      ccoe_config *cfg, ccoe_error *err);

/* ---- study_run.c ---- */
double ccoe_study_active_params(const ccoe_model *m, int path);
ccoe_status ccoe_study_prepare_variant(study *S, study_variant *v, const ccoe_config *base,
                                       ccoe_error *err);
ccoe_comm *ccoe_study_comm(const ccoe_study_opts *o);
ccoe_status ccoe_study_run_variant(study *S, study_variant *v, int idx, const ccoe_study_opts *o,
                                   ccoe_error *err);

/* ---- study_report.c ---- */
int ccoe_study_has_bpb(const study *S);
void ccoe_study_human(char *buf, size_t cap, double x);
void ccoe_study_write_markdown(const study *S, FILE *f, const char *machine);
void ccoe_study_write_csv(const study *S, FILE *f);
ccoe_status ccoe_study_open_out(const char *dir, const char *name, FILE **f, ccoe_error *err);
ccoe_status ccoe_study_write_plot_data(const study *S, ccoe_error *err);
void ccoe_study_compute_gains(study *S);
void ccoe_study_machine_line(char *buf, size_t cap, int threads, int ranks);

#endif
