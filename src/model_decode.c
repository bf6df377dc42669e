/* model_decode.c - incremental decoding (ccoe_model_decode_prefill / _step in model.h): the
 * keys and values of every block instance in a cache, a prefill over whole prompts, then one
 * token per sequence per step through the same blocks and paths.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model_impl.h"

/* Keys and values of instance k at cache row c, position t: (2 Hkv hd) = [k | v] (k rotated
 * when model.pos = rope). */
static float *kv_at(const ccoe_model *m, int k, int c, int t)
{
    const size_t C2 = 2 * (size_t)m->Hkv * m->hd;
    return m->kv_cache + (((size_t)k * m->dec_maxB + c) * m->maxT + t) * C2;
}

void model_prefill_keep_kv(const ccoe_model *m, int k, int s0, int nb, int T, const float *qkv)
{
    const size_t C2 = 2 * (size_t)m->Hkv * m->hd, W = (size_t)m->W, C = m->cfg.n_embd;
    for (int r = 0; r < nb; r++)
        for (int t = 0; t < T; t++)
            memcpy(kv_at(m, k, s0 + r, t), qkv + ((size_t)r * T + t) * W + C,
                   C2 * sizeof(float));
}

/* Decode step: the new token of sorted rows [s0, s0 + nb) (T = 1) joins instance k's cache,
 * then attends to its sequence's cached positions. */
void model_attn_decode(const ccoe_model *m, int k, int s0, ccoe_block_acts *a, int nb)
{
    const int C = m->cfg.n_embd;
    const size_t KV = 2 * (size_t)m->Hkv * m->hd;
    for (int r = 0; r < nb; r++)
        memcpy(kv_at(m, k, m->dec_step_row[s0 + r], m->dec_step_pos[s0 + r]),
               a->qkv + (size_t)r * m->W + C, KV * sizeof(float));
    ccoe_gqa_decode(a->atty, a->qkv, kv_at(m, k, 0, 0), (size_t)m->maxT * KV,
                    m->dec_step_row + s0, m->dec_step_pos + s0, m->attn_scratch, nb,
                    m->cfg.n_head, m->Hkv, m->hd, m->nthreads);
}

void model_decode_free(ccoe_model *m)
{
    free(m->kv_cache);
    free(m->dec_row);
    free(m->dec_domain);
    free(m->dec_step_row);
    free(m->dec_step_pos);
    free(m->dec_step_dom);
    m->kv_cache = NULL;
    m->dec_row = m->dec_step_row = m->dec_step_pos = NULL;
    m->dec_domain = m->dec_step_dom = NULL;
    m->dec_maxB = 0;
}

ccoe_status ccoe_model_decode_prefill(ccoe_model *m, const int32_t *tokens,
                                      const int32_t *domains, int B, int T, ccoe_error *err)
{
    if (m->place && m->place_active)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "decoding needs the gathered model: clear place_active first");
    if (B < 1 || B > m->maxB || T < 1 || T > m->maxT)
        return ccoe_error_set(err, CCOE_ERR_ARG, "decode batch (%d, %d) outside (%d, %d)", B, T,
                              m->maxB, m->maxT);
    const size_t C2 = 2 * (size_t)m->Hkv * m->hd;
    if (m->dec_maxB != m->maxB) {
        model_decode_free(m);
        const size_t nb = (size_t)m->maxB;
        m->kv_cache = ccoe_aligned_calloc((size_t)m->n_inst * nb * m->maxT * C2 * sizeof(float));
        m->dec_row = ccoe_aligned_calloc(nb * sizeof(int));
        m->dec_domain = ccoe_aligned_calloc(nb * sizeof(int32_t));
        m->dec_step_row = ccoe_aligned_calloc(nb * sizeof(int));
        m->dec_step_pos = ccoe_aligned_calloc(nb * sizeof(int));
        m->dec_step_dom = ccoe_aligned_calloc(nb * sizeof(int32_t));
        if (!m->kv_cache || !m->dec_row || !m->dec_domain || !m->dec_step_row ||
            !m->dec_step_pos || !m->dec_step_dom) {
            model_decode_free(m);
            return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the decoding cache");
        }
        m->dec_maxB = m->maxB;
    }
    /* every instance keeps the keys and values of the rows it runs on as it runs
     * (model_prefill_keep_kv: forward-only blocks share their activations, so they are gone
     * afterwards); the rows an instance does not run on are never read: a sequence keeps its
     * path */
    m->prefilling = 1;
    m->moe_causal = 1; /* generation routes causally from the prompt on (papers/moe.md) */
    ccoe_model_forward(m, tokens, NULL, domains, B, T, NULL);
    m->prefilling = 0;
    m->moe_causal = 0;
    for (int b = 0; b < B; b++) {
        m->dec_row[b] = m->row_of[b];
        m->dec_domain[b] = domains ? domains[b] : 0;
    }
    m->dec_B = B;
    m->dec_has_domains = domains != NULL;
    return CCOE_OK;
}

void ccoe_model_decode_step(ccoe_model *m, const int32_t *tok, const int *seq, const int *pos,
                            int n)
{
    assert(m->kv_cache && n >= 1 && n <= m->dec_B && !(m->place && m->place_active));
    const int C = m->cfg.n_embd;
    for (int j = 0; j < n; j++)
        m->dec_step_dom[j] = m->dec_domain[seq[j]];
    m->last_B = n;
    m->last_T = 1;
    model_sort_rows(m, m->dec_has_domains ? m->dec_step_dom : NULL, n);
    for (int r = 0; r < n; r++) {
        const int j = m->seq_at[r];
        assert(seq[j] >= 0 && seq[j] < m->dec_B && pos[j] >= 0 && pos[j] < m->maxT);
        m->tok_sorted[r] = tok[j];
        m->dec_step_row[r] = m->dec_row[seq[j]];
        m->dec_step_pos[r] = pos[j];
        if (m->n_moe > 0)
            m->moe_domains[r] = m->dec_step_dom[j];
        /* ccoe_embed_forward's sum at this row's own position (one call per row would open
         * a parallel region per token, which slows task evaluation markedly) */
        const float *te = m->wte + (size_t)tok[j] * C;
        float *e = m->emb + (size_t)r * C;
        if (m->wpe) {
            const float *pe = m->wpe + (size_t)pos[j] * C;
            for (int c = 0; c < C; c++)
                e[c] = te[c] + pe[c];
        } else {
            memcpy(e, te, (size_t)C * sizeof(float));
        }
    }
    m->aux_loss = 0.0;
    m->decoding = m->moe_causal = 1;
    model_base_forward(m, n, 1);
    model_groups_forward(m, 1);
    m->decoding = m->moe_causal = 0;
}
