/* hf_internal.h - what hf.c (directories, files, tokenizers) shares with the per-architecture
 * layouts (hf_gpt2.c, hf_llama.c): lookups, checked copies, export lists and config.json. */
#ifndef CCOE_HF_INTERNAL_H
#define CCOE_HF_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "model.h"
#include "safetensors.h"
#include "status.h"

#define HF_MAX_SHARDS 256
#define HF_PATH 4096

/* The weights of a Hugging Face directory: one file, or the shards of an index. */
typedef struct hf_weights {
    char dir[HF_PATH];
    int n_files;
    ccoe_st_file *files[HF_MAX_SHARDS];
    char names[HF_MAX_SHARDS][HF_PATH]; /* each file's path, for messages */
} hf_weights;

/* A tensor of the directory: data (float32), its file, shape. */
typedef struct hf_tensor {
    const float *data;
    const char *file;
    const char *dtype;
    int ndim;
    int64_t shape[CCOE_ST_MAX_DIMS];
} hf_tensor;

/* Finds name in any of the files; 0 if absent. */
int hf_find(const hf_weights *w, const char *name, hf_tensor *t);

/* Finds name and checks its shape (ndim dims, d0 [, d1]) and that every value is finite;
 * errors name the file, the tensor, the expected shape and the fix. */
ccoe_status hf_get(const hf_weights *w, const char *name, int ndim, int64_t d0, int64_t d1,
                   hf_tensor *t, ccoe_error *err);

/* config.json helpers: an integer / number / boolean / string member (absent: def, or an
 * error when required). */
ccoe_status hf_cfg_int(const cJSON *c, const char *path, const char *key, int required, long def,
                       long lo, long hi, long *out, ccoe_error *err);
ccoe_status hf_cfg_num(const cJSON *c, const char *path, const char *key, double def,
                       double *out, ccoe_error *err);
ccoe_status hf_cfg_bool(const cJSON *c, const char *path, const char *key, int def, int *out,
                        ccoe_error *err);
const char *hf_cfg_str(const cJSON *c, const char *key);

/* Whether the LM head is tied: config.json's tie_word_embeddings (absent: def_tie, the
 * architecture's default); untied needs a stored lm_head.weight; tied with a stored head that
 * differs from the embedding emb_name is noted on log (like transformers, the head is tied). */
ccoe_status hf_tied_head(const hf_weights *w, const cJSON *c, const char *cfg_path,
                         const char *emb_name, int def_tie, int *tied, FILE *log,
                         ccoe_error *err);

/* Reads the tensor named by fmt, ... (checked as hf_get: ndim dims, d0 [, d1], finite) into
 * dst: as stored, or with transpose a (d0, d1) tensor written as (d1, d0) (GPT-2's Conv1D
 * (in, out) into ccoe's (out, in)). */
ccoe_status hf_copy(const hf_weights *w, float *dst, int transpose, int ndim, int64_t d0,
                    int64_t d1, ccoe_error *err, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

/* dst (R, K) = src^T for src (K, R). */
void hf_transpose(float *dst, const float *src, int64_t K, int64_t R);

/* The prefix the layout's tensor names carry: prefix if prefix + emb is stored, "" if emb is
 * stored bare, NULL if neither (not this layout's weights). */
const char *hf_name_prefix(const hf_weights *w, const char *prefix, const char *emb);

/* 1 if name is in list (n entries). */
int hf_in_list(const char *name, const char *const *list, size_t n);

/* For a block tensor name "<word>.<l>.<rest>" with 0 <= l < L (no leading zeros): the offset of
 * <rest>; else 0. */
int hf_block_rest(const char *name, const char *word, long L);

/* Checks every tensor of w is lm_head.weight or prefix + a name known(name, L, flag) accepts;
 * a stray tensor is refused naming it, arch and the layer count (config key layer_key). */
ccoe_status hf_check_names(const hf_weights *w, const char *prefix,
                           int (*known)(const char *name, long L, int flag), long L, int flag,
                           const char *arch, const char *layer_key, ccoe_error *err);

/* A tensor to export: name, shape, data (owned by the caller). */
typedef struct hf_out_tensor {
    char name[128];
    int ndim;
    int64_t shape[2];
    const float *data;
} hf_out_tensor;

/* The tensors of an export in order; zero (may be NULL) stands for absent data. */
typedef struct hf_out_list {
    hf_out_tensor *t;
    size_t n, cap;
    const float *zero;
} hf_out_list;

/* Allocates room for cap tensors. */
ccoe_status hf_out_init(hf_out_list *o, size_t cap, ccoe_error *err);
/* Appends the tensor named by fmt, ... of shape (d0 [, d1]) (data NULL: o->zero). */
void hf_put(hf_out_list *o, const float *data, int ndim, int64_t d0, int64_t d1,
            const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* The weights block l of path pa runs: *b its block instance (a base block below n_base, else
 * the expert's own), *ffn the FFN weights (Eqs. 6-7: the expert's FFN from ffn_from on). */
void hf_path_block(const ccoe_model *m, const ccoe_path *pa, int l, const ccoe_block_view **b,
                   const ccoe_block_view **ffn);

/* config.json of an export: hf_json_begin makes the object with architectures = [arch] and
 * model_type; hf_json_nums adds numbers; hf_json_end adds tie_word_embeddings, use_cache,
 * torch_dtype ("float32", "bfloat16", "float16": the weights' dtype) and, for 0 <= eos < V, bos/eos_token_id, and prints it into *config
 * (malloc'd; ok = 0: an earlier addition failed). j is deleted either way. */
typedef struct hf_num {
    const char *key;
    double v;
} hf_num;
cJSON *hf_json_begin(const char *arch, const char *model_type);
int hf_json_nums(cJSON *j, const hf_num *nums, size_t n);
ccoe_status hf_json_end(cJSON *j, int ok, int tied, int32_t eos, int64_t V,
                        const char *torch_dtype, char **config, ccoe_error *err);

/* ---- GPT-2 (hf_gpt2.c) ---- */

/* The context import gives a RoPE model by default: max_position_embeddings, at most this
 * (each training sequence's activations grow with it; --seq-len sets another). */
#define HF_ROPE_SEQ_CAP 2048

/* Reads GPT-2's config.json into mc (norm, ffn, block, bias, eps, shape; seq_len and
 * max_positions = n_positions, the rows of the learned position table, which a seq_len (want_T
 * > 0) other than it is refused for), refusing options ccoe does not implement. */
ccoe_status hf_gpt2_config(const cJSON *c, const char *path, int want_T, ccoe_model_config *mc,
                           ccoe_error *err);

/* Checks every tensor of w belongs to a GPT-2 of this config (known parameters, and the
 * attention-mask buffers it ignores), copies the parameters into m (Conv1D weights
 * transposed into ccoe's (out, in) layout) and decides the head: *tied = 1 if the head is
 * the token embedding. Call before building m with mc->tied_head = *tied: hf_gpt2_head
 * decides that first. */
ccoe_status hf_gpt2_head(const hf_weights *w, const cJSON *c, const char *cfg_path,
                         int *tied, FILE *log, ccoe_error *err);
ccoe_status hf_gpt2_fill(const hf_weights *w, ccoe_model *m, ccoe_error *err);

/* The tensors (float32; the writer converts them) and config.json (torch_dtype as given) of
 * path p of m as a GPT2LMHeadModel: *out (malloc'd, *n of
 * them) point into *buf (malloc'd); *config is the JSON text (malloc'd). */
ccoe_status hf_gpt2_export(const ccoe_model *m, int p, int32_t eos, const char *torch_dtype,
                           hf_out_tensor **out, size_t *n, float **buf, char **config,
                           FILE *log, ccoe_error *err);

/* ---- LLaMA, Qwen2, Mistral (hf_llama.c) ---- */

/* 0 llama, 1 qwen2, 2 mistral for a model_type; -1 otherwise. */
int hf_llama_kind(const char *model_type);
const char *hf_llama_arch(int kind); /* "LlamaForCausalLM", ... */

/* Reads config.json into mc (RMSNorm, SwiGLU, RoPE, GQA, q/k/v biases for Qwen2; seq_len =
 * want_T if > 0, else min(max_position_embeddings, HF_ROPE_SEQ_CAP); max_positions =
 * max_position_embeddings), refusing what ccoe does not implement (rope_scaling, a sliding
 * window shorter than the context, head_dim != hidden_size / heads, hidden_act other than
 * silu, o_proj/MLP biases) and a want_T longer than max_position_embeddings. */
ccoe_status hf_llama_config(const cJSON *c, const char *path, int kind, int want_T,
                            ccoe_model_config *mc, FILE *log, ccoe_error *err);

/* As hf_gpt2_head / hf_gpt2_fill for this layout (copies without transposes). */
ccoe_status hf_llama_head(const hf_weights *w, const cJSON *c, const char *cfg_path, int kind,
                          int *tied, FILE *log, ccoe_error *err);
ccoe_status hf_llama_fill(const hf_weights *w, ccoe_model *m, ccoe_error *err);

/* 1 if the model uses RoPE (model.pos = rope): the LLaMA layout exports it. */
int hf_llama_model_is_rope(const ccoe_model_config *mc);

/* Path p as a LlamaForCausalLM (Qwen2ForCausalLM when q/k/v have biases); *out point into m's
 * tensors (*buf is NULL). */
ccoe_status hf_llama_export(const ccoe_model *m, int p, int32_t eos, const char *torch_dtype,
                            hf_out_tensor **out, size_t *n, float **buf, char **config,
                            FILE *log, ccoe_error *err);

#endif
