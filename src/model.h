/* model.h - the decoder-only transformer: parameter layout, forward and backward.
 *
 * All parameters live in one aligned block, gradients in a second block with the same layout,
 * activations in a third, each sized from the config and a maximum (B, T) before the first step.
 * Each transformer block's parameters are contiguous (so an expert that owns blocks is one
 * copy, one send, one safetensors slice). Order: wte (V,C), wpe (T,C), blocks 0..L-1, final
 * norm (pre-LN only), lm_head (V,C) unless tied. Tensor names are documented in papers/ and the
 * README ("wte", "blocks.3.attn.qkv.weight", ...).
 *
 * Blocks are pre-LN (x + Attn(LN(x)), then x + FFN(LN(x))) or post-LN (CCoE Eqs. 6-7:
 * h = LN(x + Attn(x)), y = LN(h + FFN(h))). Forward/backward never allocate.
 */
#ifndef CCOE_MODEL_H
#define CCOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "config.h"
#include "gemm.h"
#include "status.h"

#define CCOE_MAX_PARAMS 4096
#define CCOE_PARAM_NAME 64

/* One named tensor inside the parameter block. */
typedef struct ccoe_param {
    char name[CCOE_PARAM_NAME];
    int ndim;
    int64_t shape[4];
    size_t offset; /* in floats from the start of the block */
    size_t numel;
    int decay;     /* AdamW weight decay applies (matrices only) */
    int block;     /* transformer block index, or -1 for embeddings / head */
} ccoe_param;

/* Pointers of one transformer block into a parameter-shaped block (params or grads). NULL
 * where the config has no such tensor (biases off, RMSNorm has no bias). */
typedef struct ccoe_block_view {
    float *ln1_w, *ln1_b;     /* (C) */
    float *qkv_w, *qkv_b;     /* (3C, C), (3C) */
    float *proj_w, *proj_b;   /* (C, C), (C) */
    float *ln2_w, *ln2_b;     /* (C) */
    float *fc_w, *fc_b;       /* (F or 2F for swiglu, C), (F or 2F) */
    float *fcproj_w, *fcproj_b; /* (C, F), (C) */
} ccoe_block_view;

typedef struct ccoe_model_view {
    float *wte;     /* (V, C) */
    float *wpe;     /* (T, C) */
    float *lnf_w, *lnf_b; /* (C), pre-LN only */
    float *lm_head; /* (V, C); == wte when tied */
    ccoe_block_view *blocks; /* (L) */
} ccoe_model_view;

/* Saved activations of one block for a (B, T) forward. */
typedef struct ccoe_block_acts {
    float *ln1, *ln1_mean, *ln1_rstd; /* (N,C), (N), (N); post-LN: LN(x + attn) */
    float *qkv;                       /* (N, 3C) */
    float *atty;                      /* (N, C) attention output before projection */
    float *lse;                       /* (B, H, T) */
    float *res1;                      /* (N, C) x + attn */
    float *ln2, *ln2_mean, *ln2_rstd; /* (N,C), (N), (N); post-LN: the block output */
    float *fch;                       /* (N, F) or (N, 2F) */
    float *fch_act;                   /* (N, F) */
    float *res2;                      /* (N, C) */
} ccoe_block_acts;

typedef struct ccoe_model {
    ccoe_model_config cfg;
    int F2;                 /* rows of fc_w: F (gelu) or 2F (swiglu) */
    int maxB, maxT;         /* activation capacity */
    const ccoe_gemm *gemm;  /* borrowed */
    int nthreads;

    ccoe_param params[CCOE_MAX_PARAMS];
    int n_params;           /* tensors */
    size_t num_params;      /* floats */

    ccoe_arena param_mem, grad_mem, act_mem;
    float *param_block;     /* (num_params) */
    float *grad_block;      /* (num_params) */
    ccoe_model_view w, g;   /* views into param_block and grad_block */
    ccoe_block_view *w_blocks, *g_blocks;

    /* activations (capacity maxB*maxT rows) */
    float *emb;             /* (N, C) */
    ccoe_block_acts *acts;  /* (L) */
    float *lnf, *lnf_mean, *lnf_rstd; /* (N,C), (N), (N) */
    float *logits;          /* (N, V); probs after the loss, dlogits in backward */
    float *losses;          /* (N) */
    /* backward scratch */
    float *dx, *dtmp, *dln, *datty, *dqkv, *dfch, *dfch_act;
    float *attn_scratch;
    size_t act_floats;
} ccoe_model;

/* Builds the layout and allocates params, grads and activations for batches up to (maxB,maxT).
 * cfg must be validated and its vocab_size resolved. */
ccoe_status ccoe_model_init(ccoe_model *m, const ccoe_model_config *cfg, int maxB, int maxT,
                            const ccoe_gemm *g, int nthreads, ccoe_error *err);
void ccoe_model_free(ccoe_model *m);

/* GPT-2 initialisation from seed: N(0, init_std), residual projections scaled by 1/sqrt(2L),
 * norm weights 1, biases 0. */
void ccoe_model_init_weights(ccoe_model *m, uint64_t seed);

/* Forward on tokens (B,T) (B <= maxB, T <= maxT). domains (B) is each sequence's domain id
 * (what rule-based gating routes on; may be NULL for models that do not route on it). With
 * targets (B,T) (entries < 0 ignored), computes the loss: returns the SUM of per-token losses
 * and sets *count to the number counted. Without targets (NULL) only the logits (B,T,V) are
 * computed; returns 0. */
double ccoe_model_forward(ccoe_model *m, const int32_t *tokens, const int32_t *targets,
                          const int32_t *domains, int B, int T, long *count);

/* Backward of the last forward (which must have had targets, and reuses its routing):
 * ACCUMULATES into the gradient block d(loss_sum * scale)/d(params). */
void ccoe_model_backward(ccoe_model *m, const int32_t *tokens, const int32_t *targets, int B,
                         int T, float scale);

/* Zeroes the gradient block. */
void ccoe_model_zero_grad(ccoe_model *m);

/* Logits row of (b, t) of the last forward: (V). */
const float *ccoe_model_logits(const ccoe_model *m, int b, int t, int T);

/* Looks a parameter tensor up by name; NULL if absent. */
const ccoe_param *ccoe_model_find_param(const ccoe_model *m, const char *name);

/* Model FLOPs per trained token (forward + backward = 3x forward; matmuls incl. the LM head
 * plus causal-attention score/value products, PaLM convention 6N + 12 L C T). */
double ccoe_model_train_flops_per_token(const ccoe_model_config *cfg, int T);

#endif
