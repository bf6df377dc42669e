/* hf_gpt2.c - the GPT-2 layout of Hugging Face transformers (GPT2LMHeadModel) <-> ccoe.
 *
 * transformers' modeling_gpt2.py: wte (V, C), wpe (n_positions, C), blocks h.<l> with ln_1,
 * attn.c_attn (the fused q|k|v projection), attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, then
 * ln_f; pre-LN blocks, LayerNorm eps layer_norm_epsilon (model.norm_eps), activation
 * gelu_new (the tanh approximation), attention scaled by 1/sqrt(head_dim). Its linear layers are Conv1D
 * (pytorch_utils.py): weight (in, out), y = x W + b, the transpose of nn.Linear's (out, in),
 * which is ccoe's layout, so every matrix is transposed on the way in and out. The q, k, v
 * thirds of c_attn and the heads inside each third (head h at columns h*hd .. h*hd+hd-1) are in
 * the order ccoe's attention reads its qkv rows. lm_head.weight is tied to wte unless
 * tie_word_embeddings is false; a tied checkpoint usually omits it. Older files name the
 * tensors without the "transformer." prefix and carry the causal-mask buffers attn.bias and
 * attn.masked_bias, which are not parameters and are skipped.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_internal.h"

static const char *const k_block_params[] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};
static const char *const k_block_buffers[] = {"attn.bias", "attn.masked_bias"};
static const char *const k_top_params[] = {"wte.weight", "wpe.weight", "ln_f.weight",
                                           "ln_f.bias"};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

ccoe_status hf_gpt2_config(const cJSON *c, const char *path, int want_T, ccoe_model_config *mc,
                           ccoe_error *err)
{
    long L, C, H, P, V, F;
    CCOE_TRY(hf_cfg_int(c, path, "n_layer", 1, 0, 1, 256, &L, err));
    CCOE_TRY(hf_cfg_int(c, path, "n_embd", 1, 0, 8, 16384, &C, err));
    CCOE_TRY(hf_cfg_int(c, path, "n_head", 1, 0, 1, 4096, &H, err));
    CCOE_TRY(hf_cfg_int(c, path, "vocab_size", 1, 0, 1, 16777216, &V, err));
    long n_ctx;
    CCOE_TRY(hf_cfg_int(c, path, "n_ctx", 0, 0, 0, 65536, &n_ctx, err));
    CCOE_TRY(hf_cfg_int(c, path, "n_positions", n_ctx == 0, n_ctx, 1, 65536, &P, err));
    CCOE_TRY(hf_cfg_int(c, path, "n_inner", 0, 4 * C, 1, 262144, &F, err));
    if (want_T > 0 && want_T != P)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "--seq-len %d: a GPT-2 has a learned position table of n_positions "
                              "= %ld rows (%s), which model.seq_len must equal to keep them all; "
                              "leave --seq-len out (a smaller train.batch_size saves memory)",
                              want_T, P, path);
    if (C % H != 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: n_head = %ld does not divide n_embd = %ld: the config is not "
                              "a valid GPT-2 config; fix n_head",
                              path, H, C);
    const char *act = hf_cfg_str(c, "activation_function");
    if (act && strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: activation_function \"%.40s\" is not supported: ccoe's GELU "
                              "is the tanh approximation (gelu_new, gelu_pytorch_tanh); the "
                              "exact erf GELU and others are not implemented",
                              path, act);
    double eps;
    CCOE_TRY(hf_cfg_num(c, path, "layer_norm_epsilon", 1e-5, &eps, err));
    if (!(eps > 0 && eps <= 1e-2))
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: layer_norm_epsilon = %g is not supported: ccoe's "
                              "model.norm_eps takes values in (0, 0.01] (GPT-2's is 1e-5); fix "
                              "config.json",
                              path, eps);
    int scale = 1, inv_layer = 0, cross = 0;
    CCOE_TRY(hf_cfg_bool(c, path, "scale_attn_weights", 1, &scale, err));
    CCOE_TRY(hf_cfg_bool(c, path, "scale_attn_by_inverse_layer_idx", 0, &inv_layer, err));
    CCOE_TRY(hf_cfg_bool(c, path, "add_cross_attention", 0, &cross, err));
    if (!scale || inv_layer || cross)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: %s is not supported: ccoe's attention is causal self-attention "
                              "scaled by 1/sqrt(head_dim) only",
                              path, !scale     ? "scale_attn_weights = false"
                                    : inv_layer ? "scale_attn_by_inverse_layer_idx = true"
                                                : "add_cross_attention = true");
    mc->n_layer = (int)L;
    mc->n_embd = (int)C;
    mc->n_head = (int)H;
    mc->ffn_hidden = (int)F;
    mc->vocab_size = (int)V;
    mc->seq_len = (int)P;
    mc->max_positions = (int)P;
    mc->norm = CCOE_NORM_LAYERNORM;
    mc->ffn = CCOE_FFN_GELU;
    mc->block = CCOE_BLOCK_PRE_LN;
    mc->bias = 1;
    mc->norm_eps = eps;
    return CCOE_OK;
}

/* The name prefix the file uses: "transformer." (save_pretrained of GPT2LMHeadModel) or ""
 * (GPT2Model, and the original gpt2 checkpoint). */
static const char *name_prefix(const hf_weights *w)
{
    return hf_name_prefix(w, "transformer.", "wte.weight");
}

/* 1 if name (without prefix) is a GPT-2 parameter or buffer of a model with L blocks. */
static int known_name(const char *name, long L, int flag)
{
    (void)flag;
    if (hf_in_list(name, k_top_params, N_OF(k_top_params)))
        return 1;
    const int n = hf_block_rest(name, "h", L);
    return n > 0 && (hf_in_list(name + n, k_block_params, N_OF(k_block_params)) ||
                     hf_in_list(name + n, k_block_buffers, N_OF(k_block_buffers)));
}

ccoe_status hf_gpt2_head(const hf_weights *w, const cJSON *c, const char *cfg_path, int *tied,
                         FILE *log, ccoe_error *err)
{
    const char *prefix = name_prefix(w);
    if (!prefix)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: no tensor 'transformer.wte.weight' (or 'wte.weight') in %s: "
                              "these are not GPT-2 weights; use the directory's own weights",
                              w->dir, w->n_files == 1 ? w->names[0] : "the shards");
    long L;
    CCOE_TRY(hf_cfg_int(c, cfg_path, "n_layer", 1, 0, 1, 256, &L, err));
    CCOE_TRY(hf_check_names(w, prefix, known_name, L, 0, "GPT2LMHeadModel", "n_layer", err));
    char emb[64];
    snprintf(emb, sizeof emb, "%swte.weight", prefix);
    return hf_tied_head(w, c, cfg_path, emb, 1, tied, log, err);
}

ccoe_status hf_gpt2_fill(const hf_weights *w, ccoe_model *m, ccoe_error *err)
{
    const ccoe_model_config *mc = &m->cfg;
    const int64_t C = mc->n_embd, F = mc->ffn_hidden, V = mc->vocab_size, P = mc->seq_len;
    const char *pre = name_prefix(w);
    CCOE_TRY(hf_copy(w, m->wte, 0, 2, V, C, err, "%swte.weight", pre));
    CCOE_TRY(hf_copy(w, m->wpe, 0, 2, P, C, err, "%swpe.weight", pre));
    for (int l = 0; l < mc->n_layer; l++) {
        const ccoe_block_view *b = &m->w_blocks[l];
        const struct {
            float *dst;
            int tr, nd;
            int64_t d0, d1;
            const char *name;
        } k[] = {
            {b->ln1_w, 0, 1, C, 0, "ln_1.weight"},
            {b->ln1_b, 0, 1, C, 0, "ln_1.bias"},
            {b->qkv_w, 1, 2, C, 3 * C, "attn.c_attn.weight"},
            {b->qkv_b, 0, 1, 3 * C, 0, "attn.c_attn.bias"},
            {b->proj_w, 1, 2, C, C, "attn.c_proj.weight"},
            {b->proj_b, 0, 1, C, 0, "attn.c_proj.bias"},
            {b->ln2_w, 0, 1, C, 0, "ln_2.weight"},
            {b->ln2_b, 0, 1, C, 0, "ln_2.bias"},
            {b->fc_w, 1, 2, C, F, "mlp.c_fc.weight"},
            {b->fc_b, 0, 1, F, 0, "mlp.c_fc.bias"},
            {b->fcproj_w, 1, 2, F, C, "mlp.c_proj.weight"},
            {b->fcproj_b, 0, 1, C, 0, "mlp.c_proj.bias"},
        };
        for (size_t i = 0; i < N_OF(k); i++)
            CCOE_TRY(hf_copy(w, k[i].dst, k[i].tr, k[i].nd, k[i].d0, k[i].d1, err, "%sh.%d.%s",
                             pre, l, k[i].name));
    }
    const ccoe_head_view *h = &m->w_heads[0];
    CCOE_TRY(hf_copy(w, h->lnf_w, 0, 1, C, 0, err, "%sln_f.weight", pre));
    CCOE_TRY(hf_copy(w, h->lnf_b, 0, 1, C, 0, err, "%sln_f.bias", pre));
    if (!mc->tied_head) /* lm_head sits outside the transformer. prefix */
        CCOE_TRY(hf_copy(w, h->lm_head, 0, 2, V, C, err, "lm_head.weight"));
    return CCOE_OK;
}

ccoe_status hf_gpt2_export(const ccoe_model *m, int p, int32_t eos, const char *torch_dtype,
                           hf_out_tensor **out, size_t *n_out, float **buf_out, char **config,
                           FILE *log, ccoe_error *err)
{
    const ccoe_model_config *mc = &m->cfg;
    const char *why = mc->norm != CCOE_NORM_LAYERNORM  ? "model.norm = rmsnorm"
                      : mc->ffn != CCOE_FFN_GELU       ? "model.ffn = swiglu"
                      : mc->block != CCOE_BLOCK_PRE_LN ? "model.block = post_ln"
                      : mc->pos != CCOE_POS_LEARNED    ? "model.pos = rope"
                      : ccoe_model_kv_heads(mc) != mc->n_head ? "model.n_kv_head < n_head"
                      : mc->qkv_bias && !mc->bias      ? "model.qkv_bias without model.bias"
                      : m->n_moe > 0                   ? "MoE blocks"
                                                       : NULL;
    if (why)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "the model (%s) cannot be expressed as a GPT2LMHeadModel, which "
                              "has pre-LN blocks with LayerNorm, learned positions, "
                              "full multi-head attention, GELU FFNs and no MoE layers; a model "
                              "with model.norm = rmsnorm, ffn = swiglu, pos = rope and bias = "
                              "false exports as LlamaForCausalLM (Qwen2ForCausalLM with "
                              "qkv_bias)",
                              why);
    const ccoe_path *pa = &m->paths[p];
    const int L = pa->n_base + pa->n_own;
    const int64_t C = mc->n_embd, F = mc->ffn_hidden, V = mc->vocab_size, T = mc->seq_len;
    const ccoe_head_view *hv = &m->w_heads[pa->head];
    const int tied = hv->lm_head == m->wte;
    if (!mc->bias && log)
        fprintf(log, "note: model.bias = false: GPT-2 has biases, they are written as zeros "
                     "(the same function; importing it back gives bias = true)\n");
    /* transposed matrices per block, then one zero vector for absent biases */
    const size_t per = (size_t)(3 * C * C + C * C + 2 * F * C);
    const size_t zeros = (size_t)(3 * C > F ? 3 * C : F);
    hf_out_list o;
    CCOE_TRY(hf_out_init(&o, 4 + 12 * (size_t)L + 1, err));
    float *buf = calloc(per * (size_t)L + zeros, sizeof *buf);
    if (!buf) {
        free(o.t);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "exporting: out of memory");
    }
    o.zero = buf + per * (size_t)L;
    hf_put(&o, m->wte, 2, V, C, "transformer.wte.weight");
    hf_put(&o, m->wpe, 2, T, C, "transformer.wpe.weight");
    for (int l = 0; l < L; l++) {
        const ccoe_block_view *b, *ffn;
        hf_path_block(m, pa, l, &b, &ffn);
        float *qkv = buf + per * (size_t)l, *proj = qkv + 3 * C * C, *fc = proj + C * C,
              *fcp = fc + F * C;
        hf_transpose(qkv, b->qkv_w, 3 * C, C);
        hf_transpose(proj, b->proj_w, C, C);
        hf_transpose(fc, ffn->fc_w, F, C);
        hf_transpose(fcp, ffn->fcproj_w, C, F);
        const struct {
            const float *data;
            int nd;
            int64_t d0, d1;
            const char *name;
        } k[] = {
            {b->ln1_w, 1, C, 0, "ln_1.weight"},
            {b->ln1_b, 1, C, 0, "ln_1.bias"},
            {qkv, 2, C, 3 * C, "attn.c_attn.weight"},
            {b->qkv_b, 1, 3 * C, 0, "attn.c_attn.bias"},
            {proj, 2, C, C, "attn.c_proj.weight"},
            {b->proj_b, 1, C, 0, "attn.c_proj.bias"},
            {b->ln2_w, 1, C, 0, "ln_2.weight"},
            {b->ln2_b, 1, C, 0, "ln_2.bias"},
            {fc, 2, C, F, "mlp.c_fc.weight"},
            {ffn->fc_b, 1, F, 0, "mlp.c_fc.bias"},
            {fcp, 2, F, C, "mlp.c_proj.weight"},
            {ffn->fcproj_b, 1, C, 0, "mlp.c_proj.bias"},
        };
        for (size_t i = 0; i < N_OF(k); i++)
            hf_put(&o, k[i].data, k[i].nd, k[i].d0, k[i].d1, "transformer.h.%d.%s", l,
                   k[i].name);
    }
    hf_put(&o, hv->lnf_w, 1, C, 0, "transformer.ln_f.weight");
    hf_put(&o, hv->lnf_b, 1, C, 0, "transformer.ln_f.bias");
    if (!tied)
        hf_put(&o, hv->lm_head, 2, V, C, "lm_head.weight");

    cJSON *j = hf_json_begin("GPT2LMHeadModel", "gpt2");
    int ok = j && cJSON_AddStringToObject(j, "activation_function", "gelu_new");
    const hf_num nums[] = {
        {"n_layer", L},         {"n_embd", (double)C},     {"n_head", mc->n_head},
        {"n_inner", (double)F}, {"n_positions", (double)T}, {"n_ctx", (double)T},
        {"vocab_size", (double)V}, {"layer_norm_epsilon", mc->norm_eps},
        {"initializer_range", mc->init_std}, {"attn_pdrop", 0.1}, {"embd_pdrop", 0.1},
        {"resid_pdrop", 0.1}};
    ok = ok && hf_json_nums(j, nums, N_OF(nums));
    ok = ok && cJSON_AddBoolToObject(j, "scale_attn_weights", 1);
    ok = ok && cJSON_AddBoolToObject(j, "scale_attn_by_inverse_layer_idx", 0);
    ok = ok && cJSON_AddBoolToObject(j, "reorder_and_upcast_attn", 0);
    ccoe_status s = hf_json_end(j, ok, tied, eos, V, torch_dtype, config, err);
    if (s != CCOE_OK) {
        free(buf);
        free(o.t);
        return s;
    }
    *out = o.t;
    *n_out = o.n;
    *buf_out = buf;
    return CCOE_OK;
}
