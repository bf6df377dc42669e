/* hf_llama.c - the LLaMA, Qwen2 and Mistral layouts of Hugging Face transformers
 * (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM) <-> ccoe.
 *
 * transformers' modeling_llama.py / modeling_qwen2.py / modeling_mistral.py share one layout:
 * model.embed_tokens (V, C); blocks model.layers.<l> with input_layernorm (RMSNorm),
 * self_attn.{q,k,v,o}_proj (nn.Linear, weight (out, in): ccoe's layout, so nothing is
 * transposed), post_attention_layernorm (RMSNorm), mlp.{gate,up,down}_proj with
 * down(silu(gate x) * up x); then model.norm and lm_head (tied to embed_tokens when
 * tie_word_embeddings is true, and then usually omitted). q_proj has H * head_dim rows, k_proj
 * and v_proj num_key_value_heads * head_dim (grouped-query attention). Qwen2 adds biases to
 * q/k/v (never to o_proj or the MLP); LLaMA has none unless attention_bias / mlp_bias, which
 * ccoe does not map. Mistral is the LLaMA layout with a sliding attention window: accepted only
 * where the window covers the whole context (sliding_window null or >= seq_len), where it is
 * the same function. RoPE is the rotate-half form of those files (rotate_half: the first and
 * second halves of each head are the pairs), which is ccoe's, so q/k rows are copied as they
 * are.
 *
 * ccoe's names: blocks.<l>.ln1.weight, attn.qkv.weight ((H + 2 Hkv) hd, C: the rows of q_proj,
 * then k_proj, then v_proj), attn.qkv.bias (the same concatenation), attn.proj.weight,
 * ln2.weight, mlp.fc.weight (2F, C: gate_proj's rows then up_proj's, as ccoe's SwiGLU reads
 * silu(first half) * second half), mlp.proj.weight, lnf.weight, lm_head.weight.
 *
 * config.json -> ccoe: model.pos = rope, rope_theta, n_kv_head (num_key_value_heads),
 * qkv_bias (Qwen2), norm_eps (rms_norm_eps), norm = rmsnorm, ffn = swiglu, bias = false.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_internal.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static const char *const k_kind_type[] = {"llama", "qwen2", "mistral"};
static const char *const k_kind_arch[] = {"LlamaForCausalLM", "Qwen2ForCausalLM",
                                          "MistralForCausalLM"};

int hf_llama_kind(const char *model_type)
{
    for (int i = 0; i < (int)N_OF(k_kind_type); i++)
        if (model_type && strcmp(model_type, k_kind_type[i]) == 0)
            return i;
    return -1;
}

const char *hf_llama_arch(int kind) { return k_kind_arch[kind]; }

int hf_llama_model_is_rope(const ccoe_model_config *mc) { return mc->pos == CCOE_POS_ROPE; }

ccoe_status hf_llama_config(const cJSON *c, const char *path, int kind, int want_T,
                            ccoe_model_config *mc, FILE *log, ccoe_error *err)
{
    long L, C, H, Hkv, V, F, P;
    CCOE_TRY(hf_cfg_int(c, path, "num_hidden_layers", 1, 0, 1, 256, &L, err));
    CCOE_TRY(hf_cfg_int(c, path, "hidden_size", 1, 0, 8, 16384, &C, err));
    CCOE_TRY(hf_cfg_int(c, path, "num_attention_heads", 1, 0, 1, 4096, &H, err));
    CCOE_TRY(hf_cfg_int(c, path, "num_key_value_heads", 0, H, 1, 4096, &Hkv, err));
    CCOE_TRY(hf_cfg_int(c, path, "vocab_size", 1, 0, 1, 16777216, &V, err));
    CCOE_TRY(hf_cfg_int(c, path, "intermediate_size", 1, 0, 1, 262144, &F, err));
    CCOE_TRY(hf_cfg_int(c, path, "max_position_embeddings", 0, 2048, 1, 1L << 30, &P, err));
    if (C % H != 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: num_attention_heads = %ld does not divide hidden_size = %ld; "
                              "fix num_attention_heads",
                              path, H, C);
    if (H % Hkv != 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: num_key_value_heads = %ld does not divide "
                              "num_attention_heads = %ld; fix num_key_value_heads",
                              path, Hkv, H);
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(c, "head_dim");
    if (hd && !cJSON_IsNull(hd) && (!cJSON_IsNumber(hd) || hd->valuedouble != (double)(C / H)))
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: head_dim = %.10g is not supported: ccoe's heads have "
                              "hidden_size / num_attention_heads = %ld channels; only configs "
                              "with head_dim absent, null or %ld import",
                              path, cJSON_IsNumber(hd) ? hd->valuedouble : NAN, C / H, C / H);
    const char *act = hf_cfg_str(c, "hidden_act");
    if (act && strcmp(act, "silu") != 0 && strcmp(act, "swish") != 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: hidden_act \"%.40s\" is not supported: ccoe's gated FFN is "
                              "SwiGLU (hidden_act silu)",
                              path, act);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(c, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        const char *t = hf_cfg_str(rs, "rope_type");
        if (!t)
            t = hf_cfg_str(rs, "type");
        if (!t || strcmp(t, "default") != 0)
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s: rope_scaling (type \"%.40s\") is not supported: ccoe "
                                  "implements plain RoPE only (rope_scaling null or type "
                                  "default); linear, dynamic, yarn, llama3 and longrope "
                                  "scaling are not implemented",
                                  path, t ? t : "none given");
    }
    int ab = 0, mb = 0;
    CCOE_TRY(hf_cfg_bool(c, path, "attention_bias", 0, &ab, err));
    CCOE_TRY(hf_cfg_bool(c, path, "mlp_bias", 0, &mb, err));
    if (kind != 1 && (ab || mb))
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: %s = true is not supported: ccoe maps biases on q/k/v only "
                              "(Qwen2's form), not on o_proj or the MLP",
                              path, ab ? "attention_bias" : "mlp_bias");
    /* the context ccoe trains at: RoPE has no position table, so any length up to the one
     * the model was pretrained for is the same function; the default keeps the activations
     * of a training sequence affordable (hf.c reports them) */
    if (want_T > P)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "--seq-len %d is longer than max_position_embeddings = %ld (%s), "
                              "the context the model was pretrained for (rope_scaling, which "
                              "would extend it, is not implemented): choose at most %ld",
                              want_T, P, path, P);
    const long T = want_T > 0 ? want_T : P < HF_ROPE_SEQ_CAP ? P : HF_ROPE_SEQ_CAP;
    (void)log;
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(c, "sliding_window");
    int use_sw = kind == 2;
    if (kind == 1)
        CCOE_TRY(hf_cfg_bool(c, path, "use_sliding_window", 0, &use_sw, err));
    if (use_sw && sw && !cJSON_IsNull(sw)) {
        if (!cJSON_IsNumber(sw))
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s: sliding_window is not a number or null", path);
        /* against the pretrained context, not only ccoe's: the export claims that context
         * with full attention */
        if (sw->valuedouble < (double)P)
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s: sliding_window = %.0f is smaller than the context "
                                  "(max_position_embeddings %ld; ccoe's seq_len %ld): "
                                  "sliding-window attention is not supported, ccoe's attention "
                                  "is full causal; only a window null or >= the context imports "
                                  "(set sliding_window to null to accept full attention "
                                  "knowingly)",
                                  path, sw->valuedouble, P, T);
    }
    double eps, theta;
    CCOE_TRY(hf_cfg_num(c, path, "rms_norm_eps", 1e-6, &eps, err));
    CCOE_TRY(hf_cfg_num(c, path, "rope_theta", 10000.0, &theta, err));
    const int eps_ok = eps > 0 && eps <= 1e-2;
    if (!eps_ok || !(theta > 1 && isfinite(theta)))
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: %s = %g is not supported (ccoe takes rms_norm_eps in (0, "
                              "0.01] and a finite rope_theta > 1); fix config.json",
                              path, eps_ok ? "rope_theta" : "rms_norm_eps", eps_ok ? theta : eps);
    mc->n_layer = (int)L;
    mc->n_embd = (int)C;
    mc->n_head = (int)H;
    mc->ffn_hidden = (int)F;
    mc->vocab_size = (int)V;
    mc->seq_len = (int)T;
    mc->max_positions = (int)P;
    mc->norm = CCOE_NORM_RMSNORM;
    mc->ffn = CCOE_FFN_SWIGLU;
    mc->block = CCOE_BLOCK_PRE_LN;
    mc->bias = 0;
    mc->pos = CCOE_POS_ROPE;
    mc->rope_theta = theta;
    mc->n_kv_head = (int)Hkv;
    mc->qkv_bias = kind == 1;
    mc->norm_eps = eps;
    return CCOE_OK;
}

static const char *const k_block_params[] = {
    "input_layernorm.weight",        "post_attention_layernorm.weight",
    "self_attn.q_proj.weight",       "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",       "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",          "mlp.up_proj.weight",
    "mlp.down_proj.weight"};
static const char *const k_qkv_bias[] = {"self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                         "self_attn.v_proj.bias"};
/* not parameters: the RoPE frequencies older checkpoints store */
static const char *const k_block_buffers[] = {"self_attn.rotary_emb.inv_freq"};
static const char *const k_top_params[] = {"embed_tokens.weight", "norm.weight"};

/* "model." (save_pretrained of *ForCausalLM) or "" (the bare *Model). */
static const char *name_prefix(const hf_weights *w)
{
    return hf_name_prefix(w, "model.", "embed_tokens.weight");
}

/* 1 if name (without prefix) is a parameter or buffer of this layout with L blocks (qwen:
 * with the q/k/v biases). */
static int known_name(const char *name, long L, int qwen)
{
    if (hf_in_list(name, k_top_params, N_OF(k_top_params)))
        return 1;
    const int n = hf_block_rest(name, "layers", L);
    return n > 0 && (hf_in_list(name + n, k_block_params, N_OF(k_block_params)) ||
                     hf_in_list(name + n, k_block_buffers, N_OF(k_block_buffers)) ||
                     (qwen && hf_in_list(name + n, k_qkv_bias, N_OF(k_qkv_bias))));
}

ccoe_status hf_llama_head(const hf_weights *w, const cJSON *c, const char *cfg_path, int kind,
                          int *tied, FILE *log, ccoe_error *err)
{
    const char *arch = k_kind_arch[kind];
    const char *prefix = name_prefix(w);
    if (!prefix)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: no tensor 'model.embed_tokens.weight' (or "
                              "'embed_tokens.weight') in %s: these are not %s weights; use the "
                              "directory's own weights",
                              w->dir, w->n_files == 1 ? w->names[0] : "the shards", arch);
    long L;
    CCOE_TRY(hf_cfg_int(c, cfg_path, "num_hidden_layers", 1, 0, 1, 256, &L, err));
    CCOE_TRY(hf_check_names(w, prefix, known_name, L, kind == 1, arch, "num_hidden_layers", err));
    char emb[64];
    snprintf(emb, sizeof emb, "%sembed_tokens.weight", prefix);
    /* transformers' LlamaConfig, Qwen2Config and MistralConfig default to an untied head */
    return hf_tied_head(w, c, cfg_path, emb, 0, tied, log, err);
}

/* One HF tensor of a block: a row range of a ccoe tensor (import and export). */
typedef struct llama_part {
    float *at;        /* its first float inside the ccoe tensor */
    int nd;
    int64_t d0, d1;
    const char *name; /* after "layers.<l>." */
} llama_part;

/* The HF tensors of a block in save_pretrained's order: attention and norms in b, the MLP in
 * ffn (the block's own, or an Eqs. 6-7 expert's). Returns how many (at most 12). */
static size_t llama_parts(const ccoe_model_config *mc, const ccoe_block_view *b,
                          const ccoe_block_view *ffn, llama_part *k)
{
    const int64_t C = mc->n_embd, F = mc->ffn_hidden, H = mc->n_head;
    const int64_t hd = C / H, Hkv = ccoe_model_kv_heads(mc);
    const int64_t Q = H * hd, K = Hkv * hd;
    size_t n = 0;
    k[n++] = (llama_part){b->ln1_w, 1, C, 0, "input_layernorm.weight"};
    k[n++] = (llama_part){b->qkv_w, 2, Q, C, "self_attn.q_proj.weight"};
    k[n++] = (llama_part){b->qkv_w + Q * C, 2, K, C, "self_attn.k_proj.weight"};
    k[n++] = (llama_part){b->qkv_w + (Q + K) * C, 2, K, C, "self_attn.v_proj.weight"};
    if (b->qkv_b) { /* Qwen2 */
        k[n++] = (llama_part){b->qkv_b, 1, Q, 0, "self_attn.q_proj.bias"};
        k[n++] = (llama_part){b->qkv_b + Q, 1, K, 0, "self_attn.k_proj.bias"};
        k[n++] = (llama_part){b->qkv_b + Q + K, 1, K, 0, "self_attn.v_proj.bias"};
    }
    k[n++] = (llama_part){b->proj_w, 2, C, Q, "self_attn.o_proj.weight"};
    k[n++] = (llama_part){b->ln2_w, 1, C, 0, "post_attention_layernorm.weight"};
    k[n++] = (llama_part){ffn->fc_w, 2, F, C, "mlp.gate_proj.weight"};
    k[n++] = (llama_part){ffn->fc_w + F * C, 2, F, C, "mlp.up_proj.weight"};
    k[n++] = (llama_part){ffn->fcproj_w, 2, C, F, "mlp.down_proj.weight"};
    return n;
}

ccoe_status hf_llama_fill(const hf_weights *w, ccoe_model *m, ccoe_error *err)
{
    const ccoe_model_config *mc = &m->cfg;
    const int64_t C = mc->n_embd, V = mc->vocab_size;
    const char *pre = name_prefix(w);
    CCOE_TRY(hf_copy(w, m->wte, 0, 2, V, C, err, "%sembed_tokens.weight", pre));
    for (int l = 0; l < mc->n_layer; l++) {
        llama_part k[12];
        const size_t nk = llama_parts(mc, &m->w_blocks[l], &m->w_blocks[l], k);
        for (size_t i = 0; i < nk; i++)
            CCOE_TRY(hf_copy(w, k[i].at, 0, k[i].nd, k[i].d0, k[i].d1, err, "%slayers.%d.%s",
                             pre, l, k[i].name));
    }
    const ccoe_head_view *h = &m->w_heads[0];
    CCOE_TRY(hf_copy(w, h->lnf_w, 0, 1, C, 0, err, "%snorm.weight", pre));
    if (!mc->tied_head)
        CCOE_TRY(hf_copy(w, h->lm_head, 0, 2, V, C, err, "lm_head.weight"));
    return CCOE_OK;
}

ccoe_status hf_llama_export(const ccoe_model *m, int p, int32_t eos, const char *torch_dtype,
                            hf_out_tensor **out, size_t *n_out, float **buf_out, char **config,
                            FILE *log, ccoe_error *err)
{
    const ccoe_model_config *mc = &m->cfg;
    const ccoe_block_view *b0 = &m->w_blocks[0];
    const char *why = mc->norm != CCOE_NORM_RMSNORM  ? "model.norm = layernorm"
                      : mc->ffn != CCOE_FFN_SWIGLU   ? "model.ffn = gelu"
                      : mc->block != CCOE_BLOCK_PRE_LN ? "model.block = post_ln"
                      : mc->pos != CCOE_POS_ROPE     ? "model.pos = learned"
                      : b0->proj_b || b0->fc_b       ? "model.bias = true"
                      : m->n_moe > 0                 ? "MoE blocks"
                                                     : NULL;
    if (why)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "the model (%s) cannot be expressed as a LlamaForCausalLM or "
                              "Qwen2ForCausalLM, which have pre-norm RMSNorm blocks with RoPE, "
                              "SwiGLU FFNs, no biases but on q/k/v and no MoE layers",
                              why);
    const int qwen = b0->qkv_b != NULL;
    const ccoe_path *pa = &m->paths[p];
    const int L = pa->n_base + pa->n_own;
    const int64_t C = mc->n_embd, F = mc->ffn_hidden, V = mc->vocab_size, H = mc->n_head;
    const int64_t hd = C / H, Hkv = ccoe_model_kv_heads(mc);
    const ccoe_head_view *hv = &m->w_heads[pa->head];
    const int tied = hv->lm_head == m->wte;
    /* the context the model was pretrained for, not the one ccoe trains at */
    const double max_pos = mc->max_positions > 0 ? mc->max_positions : mc->seq_len;
    hf_out_list o;
    CCOE_TRY(hf_out_init(&o, 3 + (9 + 3 * (size_t)qwen) * (size_t)L, err));
    /* every tensor is a row range of a ccoe tensor: no copies */
    hf_put(&o, m->wte, 2, V, C, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) {
        const ccoe_block_view *b, *ffn;
        hf_path_block(m, pa, l, &b, &ffn);
        llama_part k[12];
        const size_t nk = llama_parts(mc, b, ffn, k);
        for (size_t i = 0; i < nk; i++)
            hf_put(&o, k[i].at, k[i].nd, k[i].d0, k[i].d1, "model.layers.%d.%s", l,
                   k[i].name);
    }
    hf_put(&o, hv->lnf_w, 1, C, 0, "model.norm.weight");
    if (!tied)
        hf_put(&o, hv->lm_head, 2, V, C, "lm_head.weight");
    (void)log;
    cJSON *j = hf_json_begin(qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM",
                             qwen ? "qwen2" : "llama");
    int ok = j && cJSON_AddStringToObject(j, "hidden_act", "silu");
    const hf_num nums[] = {
        {"num_hidden_layers", L},
        {"hidden_size", (double)C},
        {"num_attention_heads", (double)H},
        {"num_key_value_heads", (double)Hkv},
        {"head_dim", (double)hd},
        {"intermediate_size", (double)F},
        {"max_position_embeddings", max_pos},
        {"vocab_size", (double)V},
        {"rms_norm_eps", mc->norm_eps},
        {"rope_theta", mc->rope_theta},
        {"initializer_range", mc->init_std},
        {"attention_dropout", 0.0}};
    ok = ok && hf_json_nums(j, nums, N_OF(nums));
    ok = ok && cJSON_AddNullToObject(j, "rope_scaling");
    if (qwen) {
        ok = ok && cJSON_AddBoolToObject(j, "use_sliding_window", 0);
        ok = ok && cJSON_AddNumberToObject(j, "sliding_window", max_pos);
        ok = ok && cJSON_AddNumberToObject(j, "max_window_layers", L);
    } else {
        ok = ok && cJSON_AddBoolToObject(j, "attention_bias", 0);
        ok = ok && cJSON_AddBoolToObject(j, "mlp_bias", 0);
    }
    ccoe_status s = hf_json_end(j, ok, tied, eos, V, torch_dtype, config, err);
    if (s != CCOE_OK) {
        free(o.t);
        return s;
    }
    *out = o.t;
    *n_out = o.n;
    *buf_out = NULL;
    return CCOE_OK;
}
