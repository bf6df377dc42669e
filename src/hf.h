/* hf.h - Hugging Face model directories in and out (`ccoe import`, `ccoe export`).
 *
 * Import reads HF_DIR/config.json and HF_DIR/model.safetensors (or the shards that
 * HF_DIR/model.safetensors.index.json lists; F32, F16 and BF16 tensors, widened to float32),
 * maps the architecture onto a ccoe model config and its parameter names, and writes a ccoe
 * checkpoint (step 0, no optimizer state) that every command taking a model accepts. The
 * tokenizer files next to config.json are copied into OUT's sibling directory
 * "<OUT without .safetensors>.tokenizer", which becomes data.tokenizer. Architectures: GPT-2
 * (GPT2LMHeadModel, model_type gpt2; hf_gpt2.c) and LLaMA, Qwen2, Mistral (LlamaForCausalLM,
 * Qwen2ForCausalLM, MistralForCausalLM: RoPE, grouped-query attention, RMSNorm, SwiGLU, q/k/v
 * biases for Qwen2; hf_llama.c); their options ccoe does not implement (rope_scaling, a sliding
 * window shorter than the context, ...) are refused naming them; anything else is refused
 * naming what is supported.
 *
 * Export writes one complete model (the base, or the base with one CCoE expert in place: the
 * paper's n + 1 complete LLMs) as a Hugging Face directory: config.json, model.safetensors
 * (plain F32, or BF16 / F16 with --dtype; no ccoe checksum, metadata format = pt) and the
 * tokenizer files, loadable by transformers' GPT2LMHeadModel.from_pretrained, or LlamaForCausalLM / Qwen2ForCausalLM for a
 * RoPE + RMSNorm + SwiGLU model. Every CCoE form is expressible: a tail or prefix expert's path
 * is the model with n_base + l_i blocks, an FFN expert's path swaps the FFNs of the blocks it
 * covers, an own head is an untied lm_head.
 *
 * Nothing is left half-written: the checkpoint is written atomically, directories are built
 * under a temporary name and renamed into place.
 */
#ifndef CCOE_HF_H
#define CCOE_HF_H

#include <stdio.h>

#include "status.h"

typedef struct ccoe_hf_import_opts {
    const char *hf_dir;    /* the Hugging Face model directory */
    const char *out;       /* the ccoe checkpoint to write */
    const char *tokenizer; /* NULL: HF_DIR's own tokenizer files; else "byte" or a directory */
    const char *manifest;  /* data.manifest of the checkpoint (NULL: builtin); its domains
                            * are recorded for routing experts */
    int force;             /* replace an existing OUT (and a differing tokenizer copy) */
    int seq_len;           /* model.seq_len; 0: GPT-2's n_positions (its position table), or
                            * for RoPE models min(max_position_embeddings, 2048) */
} ccoe_hf_import_opts;

/* Imports; says what it derived on log (NULL: nothing). */
ccoe_status ccoe_hf_import(const ccoe_hf_import_opts *o, FILE *log, ccoe_error *err);

typedef struct ccoe_hf_export_opts {
    const char *model;   /* a ccoe checkpoint */
    const char *path;    /* "base" (NULL too), an expert's name, or "all" (OUT/base, OUT/NAME) */
    const char *out_dir; /* the directory to create; must not exist or be empty */
    const char *dtype;   /* the weights' dtype: "f32" (NULL too), "bf16" or "f16" (rounded to
                          * nearest even; a value beyond F16's range is refused) */
} ccoe_hf_export_opts;

ccoe_status ccoe_hf_export(const ccoe_hf_export_opts *o, FILE *log, ccoe_error *err);

#endif
