/* hf_gpt2.c - the GPT-2 layout of Hugging Face transformers (GPT2LMHeadModel) <-> ccoe.
 *
 * transformers' modeling_gpt2.py: wte (V, C), wpe (n_positions, C), blocks h.<l> with ln_1,
 * attn.c_attn (the fused q|k|v projection), attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, then
 * ln_f; pre-LN blocks, LayerNorm eps layer_norm_epsilon, activation gelu_new (the tanh
 * approximation), attention scaled by 1/sqrt(head_dim). Its linear layers are Conv1D
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

ccoe_status hf_gpt2_config(const cJSON *c, const char *path, ccoe_model_config *mc,
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
    if (fabs(eps - 1e-5) > 1e-12)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: layer_norm_epsilon = %g is not supported: ccoe's LayerNorm "
                              "uses 1e-5 (GPT-2's value)",
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
    mc->norm = CCOE_NORM_LAYERNORM;
    mc->ffn = CCOE_FFN_GELU;
    mc->block = CCOE_BLOCK_PRE_LN;
    mc->bias = 1;
    return CCOE_OK;
}

/* The name prefix the file uses: "transformer." (save_pretrained of GPT2LMHeadModel) or ""
 * (GPT2Model, and the original gpt2 checkpoint). */
static const char *name_prefix(const hf_weights *w)
{
    hf_tensor t;
    if (hf_find(w, "transformer.wte.weight", &t))
        return "transformer.";
    if (hf_find(w, "wte.weight", &t))
        return "";
    return NULL;
}

/* 1 if name (without prefix) is a GPT-2 parameter or buffer of a model with L blocks. */
static int known_name(const char *name, long L)
{
    for (size_t i = 0; i < N_OF(k_top_params); i++)
        if (strcmp(name, k_top_params[i]) == 0)
            return 1;
    int l = -1, n = 0;
    if (sscanf(name, "h.%d.%n", &l, &n) != 1 || n == 0 || l < 0 || l >= L)
        return 0;
    char back[32];
    snprintf(back, sizeof back, "h.%d.", l);
    if (strncmp(name, back, strlen(back)) != 0) /* "h.01." is not block 1's */
        return 0;
    for (size_t i = 0; i < N_OF(k_block_params); i++)
        if (strcmp(name + n, k_block_params[i]) == 0)
            return 1;
    for (size_t i = 0; i < N_OF(k_block_buffers); i++)
        if (strcmp(name + n, k_block_buffers[i]) == 0)
            return 1;
    return 0;
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
    const size_t plen = strlen(prefix);
    for (int f = 0; f < w->n_files; f++)
        for (size_t i = 0; i < ccoe_st_count(w->files[f]); i++) {
            const char *name = ccoe_st_name(w->files[f], i);
            if (strcmp(name, "lm_head.weight") == 0)
                continue;
            if (strncmp(name, prefix, plen) == 0 && known_name(name + plen, L))
                continue;
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s: tensor '%.100s' is not part of a GPT2LMHeadModel with "
                                  "n_layer = %ld (tensor names %s): another architecture or a "
                                  "config.json that does not belong to these weights; use the "
                                  "model's own config.json",
                                  w->names[f], name, L,
                                  plen ? "start with \"transformer.\"" : "have no prefix");
        }
    char emb[64];
    snprintf(emb, sizeof emb, "%swte.weight", prefix);
    return hf_tied_head(w, c, cfg_path, emb, 1, tied, log, err);
}

/* dst (R, K) = src^T for src (K, R): Conv1D (in, out) -> Linear (out, in), and back. */
static void transpose(float *dst, const float *src, int64_t K, int64_t R)
{
    enum { TB = 32 };
    for (int64_t k0 = 0; k0 < K; k0 += TB)
        for (int64_t r0 = 0; r0 < R; r0 += TB)
            for (int64_t k = k0; k < K && k < k0 + TB; k++)
                for (int64_t r = r0; r < R && r < r0 + TB; r++)
                    dst[r * K + k] = src[k * R + r];
}

ccoe_status hf_gpt2_fill(const hf_weights *w, ccoe_model *m, ccoe_error *err)
{
    const ccoe_model_config *mc = &m->cfg;
    const int64_t C = mc->n_embd, F = mc->ffn_hidden, V = mc->vocab_size, P = mc->seq_len;
    const char *pre = name_prefix(w);
    char name[160];
    hf_tensor t;
#define GET(nd, d0, d1, fmt, ...)                                                           \
    do {                                                                                    \
        snprintf(name, sizeof name, "%s" fmt, pre, __VA_ARGS__);                            \
        CCOE_TRY(hf_get(w, name, nd, d0, d1, &t, err));                                     \
    } while (0)
#define COPY(dst, nd, d0, d1, fmt, ...)                                                     \
    do {                                                                                    \
        GET(nd, d0, d1, fmt, __VA_ARGS__);                                                  \
        memcpy(dst, t.data, (size_t)(d0) * (size_t)((nd) > 1 ? (d1) : 1) * sizeof(float));  \
    } while (0)
    COPY(m->wte, 2, V, C, "%s", "wte.weight");
    COPY(m->wpe, 2, P, C, "%s", "wpe.weight");
    for (int l = 0; l < mc->n_layer; l++) {
        const ccoe_block_view *b = &m->w_blocks[l];
        COPY(b->ln1_w, 1, C, 0, "h.%d.ln_1.weight", l);
        COPY(b->ln1_b, 1, C, 0, "h.%d.ln_1.bias", l);
        GET(2, C, 3 * C, "h.%d.attn.c_attn.weight", l);
        transpose(b->qkv_w, t.data, C, 3 * C);
        COPY(b->qkv_b, 1, 3 * C, 0, "h.%d.attn.c_attn.bias", l);
        GET(2, C, C, "h.%d.attn.c_proj.weight", l);
        transpose(b->proj_w, t.data, C, C);
        COPY(b->proj_b, 1, C, 0, "h.%d.attn.c_proj.bias", l);
        COPY(b->ln2_w, 1, C, 0, "h.%d.ln_2.weight", l);
        COPY(b->ln2_b, 1, C, 0, "h.%d.ln_2.bias", l);
        GET(2, C, F, "h.%d.mlp.c_fc.weight", l);
        transpose(b->fc_w, t.data, C, F);
        COPY(b->fc_b, 1, F, 0, "h.%d.mlp.c_fc.bias", l);
        GET(2, F, C, "h.%d.mlp.c_proj.weight", l);
        transpose(b->fcproj_w, t.data, F, C);
        COPY(b->fcproj_b, 1, C, 0, "h.%d.mlp.c_proj.bias", l);
    }
    const ccoe_head_view *h = &m->w_heads[0];
    COPY(h->lnf_w, 1, C, 0, "%s", "ln_f.weight");
    COPY(h->lnf_b, 1, C, 0, "%s", "ln_f.bias");
    if (!mc->tied_head) {
        pre = ""; /* lm_head sits outside the transformer. prefix */
        COPY(h->lm_head, 2, V, C, "%s", "lm_head.weight");
    }
#undef COPY
#undef GET
    return CCOE_OK;
}

ccoe_status hf_gpt2_export(const ccoe_model *m, int p, int32_t eos, hf_out_tensor **out,
                           size_t *n_out, float **buf_out, char **config, FILE *log,
                           ccoe_error *err)
{
    const ccoe_model_config *mc = &m->cfg;
    const char *why = mc->norm != CCOE_NORM_LAYERNORM  ? "model.norm = rmsnorm"
                      : mc->ffn != CCOE_FFN_GELU       ? "model.ffn = swiglu"
                      : mc->block != CCOE_BLOCK_PRE_LN ? "model.block = post_ln"
                      : mc->pos != CCOE_POS_LEARNED    ? "model.pos = rope"
                      : ccoe_model_kv_heads(mc) != mc->n_head ? "model.n_kv_head < n_head"
                      : mc->qkv_bias && !mc->bias      ? "model.qkv_bias without model.bias"
                      : fabs(mc->norm_eps - 1e-5) > 1e-12 ? "model.norm_eps other than 1e-5"
                      : m->n_moe > 0                   ? "MoE blocks"
                                                       : NULL;
    if (why)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "the model (%s) cannot be expressed as a GPT2LMHeadModel, which "
                              "has pre-LN blocks with LayerNorm (eps 1e-5), learned positions, "
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
    const size_t nt = 4 + 12 * (size_t)L + 1;
    float *buf = calloc(per * (size_t)L + zeros, sizeof *buf);
    hf_out_tensor *t = calloc(nt, sizeof *t);
    if (!buf || !t) {
        free(buf);
        free(t);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "exporting: out of memory");
    }
    const float *zero = buf + per * (size_t)L;
    size_t n = 0;
#define PUT(data_, nd, d0, d1, ...)                                                  \
    do {                                                                             \
        snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__);                          \
        t[n].ndim = nd;                                                              \
        t[n].shape[0] = d0;                                                          \
        t[n].shape[1] = d1;                                                          \
        t[n].data = (data_) ? (data_) : zero;                                        \
        n++;                                                                         \
    } while (0)
    PUT(m->wte, 2, V, C, "transformer.wte.weight");
    PUT(m->wpe, 2, T, C, "transformer.wpe.weight");
    for (int l = 0; l < L; l++) {
        const int inst = l < pa->n_base ? l : pa->first_inst + (l - pa->n_base);
        const ccoe_block_view *b = &m->w_blocks[inst];
        /* Eqs. 6-7: the expert's FFN replaces the base FFN in blocks ffn_from .. L-1 */
        const ccoe_block_view *ffn = b;
        if (pa->ffn_expert >= 0 && l >= pa->ffn_from)
            ffn = &m->w_xffn[m->xffn_first[pa->ffn_expert] + l - pa->ffn_from];
        float *qkv = buf + per * (size_t)l, *proj = qkv + 3 * C * C, *fc = proj + C * C,
              *fcp = fc + F * C;
        transpose(qkv, b->qkv_w, 3 * C, C);
        transpose(proj, b->proj_w, C, C);
        transpose(fc, ffn->fc_w, F, C);
        transpose(fcp, ffn->fcproj_w, C, F);
        PUT(b->ln1_w, 1, C, 0, "transformer.h.%d.ln_1.weight", l);
        PUT(b->ln1_b, 1, C, 0, "transformer.h.%d.ln_1.bias", l);
        PUT(qkv, 2, C, 3 * C, "transformer.h.%d.attn.c_attn.weight", l);
        PUT(b->qkv_b, 1, 3 * C, 0, "transformer.h.%d.attn.c_attn.bias", l);
        PUT(proj, 2, C, C, "transformer.h.%d.attn.c_proj.weight", l);
        PUT(b->proj_b, 1, C, 0, "transformer.h.%d.attn.c_proj.bias", l);
        PUT(b->ln2_w, 1, C, 0, "transformer.h.%d.ln_2.weight", l);
        PUT(b->ln2_b, 1, C, 0, "transformer.h.%d.ln_2.bias", l);
        PUT(fc, 2, C, F, "transformer.h.%d.mlp.c_fc.weight", l);
        PUT(ffn->fc_b, 1, F, 0, "transformer.h.%d.mlp.c_fc.bias", l);
        PUT(fcp, 2, F, C, "transformer.h.%d.mlp.c_proj.weight", l);
        PUT(ffn->fcproj_b, 1, C, 0, "transformer.h.%d.mlp.c_proj.bias", l);
    }
    PUT(hv->lnf_w, 1, C, 0, "transformer.ln_f.weight");
    PUT(hv->lnf_b, 1, C, 0, "transformer.ln_f.bias");
    if (!tied)
        PUT(hv->lm_head, 2, V, C, "lm_head.weight");
#undef PUT

    cJSON *j = cJSON_CreateObject();
    cJSON *arch = j ? cJSON_AddArrayToObject(j, "architectures") : NULL;
    int ok = arch && cJSON_AddItemToArray(arch, cJSON_CreateString("GPT2LMHeadModel"));
    ok = ok && cJSON_AddStringToObject(j, "model_type", "gpt2");
    ok = ok && cJSON_AddStringToObject(j, "activation_function", "gelu_new");
    const struct { const char *k; double v; } nums[] = {
        {"n_layer", L},         {"n_embd", (double)C},     {"n_head", mc->n_head},
        {"n_inner", (double)F}, {"n_positions", (double)T}, {"n_ctx", (double)T},
        {"vocab_size", (double)V}, {"layer_norm_epsilon", 1e-5},
        {"initializer_range", mc->init_std}, {"attn_pdrop", 0.1}, {"embd_pdrop", 0.1},
        {"resid_pdrop", 0.1}};
    for (size_t i = 0; ok && i < N_OF(nums); i++)
        ok = cJSON_AddNumberToObject(j, nums[i].k, nums[i].v) != NULL;
    ok = ok && cJSON_AddBoolToObject(j, "tie_word_embeddings", tied);
    ok = ok && cJSON_AddBoolToObject(j, "scale_attn_weights", 1);
    ok = ok && cJSON_AddBoolToObject(j, "scale_attn_by_inverse_layer_idx", 0);
    ok = ok && cJSON_AddBoolToObject(j, "reorder_and_upcast_attn", 0);
    ok = ok && cJSON_AddBoolToObject(j, "use_cache", 1);
    ok = ok && cJSON_AddStringToObject(j, "torch_dtype", "float32");
    if (ok && eos >= 0 && eos < V) {
        ok = cJSON_AddNumberToObject(j, "bos_token_id", eos) != NULL;
        ok = ok && cJSON_AddNumberToObject(j, "eos_token_id", eos) != NULL;
    }
    char *text = ok ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!text) {
        free(buf);
        free(t);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "exporting: out of memory building config.json");
    }
    *out = t;
    *n_out = n;
    *buf_out = buf;
    *config = text;
    return CCOE_OK;
}
