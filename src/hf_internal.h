/* hf_internal.h - what hf.c (directories, files, tokenizers) shares with the per-architecture
 * layouts (hf_gpt2.c). */
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

/* A tensor to export: name, shape, data (owned by the caller). */
typedef struct hf_out_tensor {
    char name[128];
    int ndim;
    int64_t shape[2];
    const float *data;
} hf_out_tensor;

/* ---- GPT-2 (hf_gpt2.c) ---- */

/* Reads GPT-2's config.json into mc (norm, ffn, block, bias, shape), refusing options ccoe
 * does not implement. */
ccoe_status hf_gpt2_config(const cJSON *c, const char *path, ccoe_model_config *mc,
                           ccoe_error *err);

/* Checks every tensor of w belongs to a GPT-2 of this config (known parameters, and the
 * attention-mask buffers it ignores), copies the parameters into m (Conv1D weights
 * transposed into ccoe's (out, in) layout) and decides the head: *tied = 1 if the head is
 * the token embedding. Call before building m with mc->tied_head = *tied: hf_gpt2_head
 * decides that first. */
ccoe_status hf_gpt2_head(const hf_weights *w, const cJSON *c, const char *cfg_path,
                         int *tied, FILE *log, ccoe_error *err);
ccoe_status hf_gpt2_fill(const hf_weights *w, ccoe_model *m, ccoe_error *err);

/* The tensors and config.json of path p of m as a GPT2LMHeadModel: *out (malloc'd, *n of
 * them) point into *buf (malloc'd); *config is the JSON text (malloc'd). */
ccoe_status hf_gpt2_export(const ccoe_model *m, int p, int32_t eos, hf_out_tensor **out, size_t *n,
                           float **buf, char **config, FILE *log, ccoe_error *err);

/* ---- LLaMA, Qwen2, Mistral (hf_llama.c) ---- */

/* 0 llama, 1 qwen2, 2 mistral for a model_type; -1 otherwise. */
int hf_llama_kind(const char *model_type);
const char *hf_llama_arch(int kind); /* "LlamaForCausalLM", ... */

/* Reads config.json into mc (RMSNorm, SwiGLU, RoPE, GQA, q/k/v biases for Qwen2),
 * refusing what ccoe does not implement (rope_scaling, a sliding window shorter than the
 * context, head_dim != hidden_size / heads, hidden_act other than silu, o_proj/MLP biases). */
ccoe_status hf_llama_config(const cJSON *c, const char *path, int kind,
                            ccoe_model_config *mc, FILE *log, ccoe_error *err);

/* As hf_gpt2_head / hf_gpt2_fill for this layout (copies without transposes). */
ccoe_status hf_llama_head(const hf_weights *w, const cJSON *c, const char *cfg_path, int kind,
                          int *tied, FILE *log, ccoe_error *err);
ccoe_status hf_llama_fill(const hf_weights *w, ccoe_model *m, ccoe_error *err);

/* 1 if the model uses RoPE (model.pos = rope): the LLaMA layout exports it. */
int hf_llama_model_is_rope(const ccoe_model_config *mc);

/* Path p as a LlamaForCausalLM (Qwen2ForCausalLM when q/k/v have biases); *out point into m's
 * tensors (*buf is NULL). */
ccoe_status hf_llama_export(const ccoe_model *m, int p, int32_t eos, hf_out_tensor **out,
                            size_t *n, float **buf, char **config, FILE *log, ccoe_error *err);

#endif
