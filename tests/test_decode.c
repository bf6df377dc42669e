/* test_decode.c - incremental decoding (cached keys and values) against full forwards:
 * ccoe_attention_decode equals the last rows of the full attention; for a dense pre-LN and a
 * post-LN/RMSNorm/SwiGLU model, CCoE Eq. 4 (own heads), Eq. 5 and Eqs. 6-7, and MoE blocks
 * (top-k, softmax, domain gate), and LLaMA/Qwen2-style blocks (RoPE, GQA, q/k/v bias) under
 * each of them, every decode step's logits equal the full forward's at the
 * same position, with sequences of different prompt lengths that leave the steps at different
 * times; greedy generation equals greedy decoding by full recomputation; the sampler (temperature,
 * top-k, top-p) picks tokens with exactly the probabilities it promises, and a sampled text
 * depends on the seed, never on batching or on how ccoe_generate_print chunks the prompts;
 * prompt files are read line by line. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "config.h"
#include "eval.h"
#include "form.h"
#include "gating.h"
#include "gemm.h"
#include "kernels.h"
#include "model.h"
#include "rng.h"
#include "session.h"
#include "tokenizer.h"

enum { B = 5, T = 12 };

static const char k_domains[3][CCOE_NAME_LEN] = {"arith", "code", "prose"};

static ccoe_gemm g_gemm;

static int setup(void **state)
{
    (void)state;
    ccoe_error err = {0};
    return ccoe_gemm_init(&g_gemm, CCOE_GEMM_AUTO, 2, &err) == CCOE_OK ? 0 : -1;
}

static void test_attention_decode_kernel(void **state)
{
    (void)state;
    const int Bk = 3, Tk = 37, C = 24, H = 3, nt = 2;
    float *qkv = tu_fnew((size_t)Bk * Tk * 3 * C), *out = tu_fnew((size_t)Bk * Tk * C);
    float *lse = tu_fnew((size_t)Bk * H * Tk);
    float *scratch = tu_fnew(ccoe_attention_scratch_floats(Bk, Tk, C, H, nt));
    float *kv = tu_fnew((size_t)Bk * Tk * 2 * C), *dec = tu_fnew((size_t)Bk * C);
    float *q = tu_fnew((size_t)Bk * 3 * C), *ws = tu_fnew((size_t)nt * Tk);
    double *want = tu_dnew((size_t)Bk * C);
    tu_fill_uniform(qkv, (size_t)Bk * Tk * 3 * C, 7, 1.5f);
    ccoe_attention_forward(&g_gemm, out, lse, qkv, scratch, Bk, Tk, C, H);
    for (int b = 0; b < Bk; b++)
        for (int t = 0; t < Tk; t++)
            memcpy(kv + ((size_t)b * Tk + t) * 2 * C, qkv + ((size_t)b * Tk + t) * 3 * C + C,
                   2 * (size_t)C * sizeof(float));
    /* sequence b's query at position pos[i], in a different row order than the cache */
    const int rows[3] = {2, 0, 1}, pos[3] = {0, 36, 17};
    for (int i = 0; i < Bk; i++) {
        const size_t src = ((size_t)rows[i] * Tk + pos[i]);
        memcpy(q + (size_t)i * 3 * C, qkv + src * 3 * C, 3 * (size_t)C * sizeof(float));
        tu_to_double(want + (size_t)i * C, out + src * C, (size_t)C);
    }
    ccoe_attention_decode(dec, q, kv, (size_t)Tk * 2 * C, rows, pos, ws, Bk, C, H, nt);
    TU_ASSERT_CLOSE("attention decode", dec, want, (size_t)Bk * C, 1e-5, 1e-4);
    free(qkv), free(out), free(lse), free(scratch), free(kv), free(dec), free(q), free(ws);
    free(want);
}

typedef struct model_case {
    const char *name;
    const char *sets[20]; /* config overrides, NULL-terminated */
} model_case;

/* LLaMA/Qwen2-style blocks (10 settings) */
#define ROPE_SETS                                                                            \
    "model.pos=rope", "model.n_head=4", "model.n_kv_head=2", "model.qkv_bias=true",          \
        "model.bias=false", "model.ffn=swiglu", "model.norm=rmsnorm", "model.tied_head=false", \
        "model.rope_theta=50", "model.norm_eps=1e-6"

static const model_case k_cases[] = {
    {"dense pre-LN", {NULL}},
    {"dense post-LN rmsnorm swiglu untied",
     {"model.block=post_ln", "model.norm=rmsnorm", "model.ffn=swiglu", "model.tied_head=false",
      NULL}},
    {"Eq. 4 tail, own heads",
     {"ccoe.form=tail", "ccoe.experts=a:1,b:2", "ccoe.routes=arith:a,code:b", "ccoe.own_head=true",
      NULL}},
    {"Eq. 5 prefix",
     {"ccoe.form=prefix", "ccoe.experts=a:1,b:2", "ccoe.routes=arith:a,prose:b",
      "ccoe.prefix_layers=1", NULL}},
    {"Eqs. 6-7 ffn post-LN",
     {"model.block=post_ln", "ccoe.form=ffn", "ccoe.experts=a:1,b:2",
      "ccoe.routes=arith:a,code:b", NULL}},
    {"MoE top-2 of 4", {"moe.gate=topk", "moe.n_experts=4", "moe.top_k=2", NULL}},
    {"MoE softmax, every 2nd block",
     {"moe.gate=softmax", "moe.n_experts=3", "moe.top_k=3", "moe.every=2", NULL}},
    {"MoE domain gate",
     {"moe.gate=domain", "moe.n_experts=3", "moe.top_k=1", "moe.w_switch=0", "moe.w_z=0", NULL}},
    /* LLaMA/Qwen2-style blocks: RoPE (rotation at each step's own position), GQA H 4 Hkv 2 (a
     * cache of 2 Hkv hd per position), q/k/v-only bias, SwiGLU, RMSNorm, untied head */
    {"rope gqa dense", {ROPE_SETS, NULL}},
    {"rope gqa post-LN", {ROPE_SETS, "model.block=post_ln", NULL}},
    {"rope gqa Eq. 4 tail, own heads",
     {ROPE_SETS, "ccoe.form=tail", "ccoe.experts=a:1,b:2", "ccoe.routes=arith:a,code:b",
      "ccoe.own_head=true", NULL}},
    {"rope gqa Eq. 5 prefix",
     {ROPE_SETS, "ccoe.form=prefix", "ccoe.experts=a:1,b:2", "ccoe.routes=arith:a,prose:b",
      "ccoe.prefix_layers=1", NULL}},
    {"rope gqa Eqs. 6-7 ffn post-LN",
     {ROPE_SETS, "model.block=post_ln", "ccoe.form=ffn", "ccoe.experts=a:1,b:2",
      "ccoe.routes=arith:a,code:b", NULL}},
    {"rope gqa MoE top-2 of 4",
     {ROPE_SETS, "moe.gate=topk", "moe.n_experts=4", "moe.top_k=2", NULL}},
};

/* A 4-block model of the case for batches up to (maxB, Tm), random weights of std `std`. */
static void open_case(ccoe_model *m, ccoe_gating *gt, const model_case *mc, int V, int maxB,
                      int Tm, double std, uint64_t seed)
{
    ccoe_config c;
    ccoe_error err = {0};
    ccoe_config_defaults(&c);
    c.model.n_layer = 4;
    c.model.n_embd = 16;
    c.model.n_head = 2;
    c.model.ffn_hidden = 24;
    c.model.vocab_size = V;
    c.model.seq_len = Tm;
    c.model.init_std = std;
    c.moe.expert_hidden = 12;
    c.moe.capacity_factor = 0; /* dropless: capacity would be decided per call */
    for (int i = 0; mc->sets[i]; i++)
        if (ccoe_config_set(&c, mc->sets[i], &err) != CCOE_OK)
            fail_msg("%s: %s", mc->name, err.msg);
    if (ccoe_session_validate(&c, &err) != CCOE_OK)
        fail_msg("%s: %s", mc->name, err.msg);
    if (ccoe_gating_build(gt, &c, k_domains, 3, &err) != CCOE_OK)
        fail_msg("%s: gating: %s", mc->name, err.msg);
    if (ccoe_model_init_moe(m, &c.model, gt, &c.moe, maxB, Tm, &g_gemm, 2, &err) != CCOE_OK)
        fail_msg("%s: %s", mc->name, err.msg);
    ccoe_model_init_weights(m, seed, CCOE_INIT_RANDOM);
}

/* Prompts of lengths plen[b] (padded to the longest), then steps that feed each sequence its
 * next token of `tok` until it reaches its own end: every step's logits must equal the full
 * forward's logits of that (sequence, position). */
static void decode_case(const model_case *mc)
{
    const int V = 40;
    ccoe_model m, ref;
    ccoe_gating gt, gt2;
    ccoe_error err = {0};
    open_case(&m, &gt, mc, V, B, T, 0.3, 31);
    open_case(&ref, &gt2, mc, V, B, T, 0.3, 31);
    int32_t tok[B * T], dom[B], pre[B * T];
    ccoe_rng r;
    ccoe_rng_seed(&r, 5);
    for (int i = 0; i < B * T; i++)
        tok[i] = (int32_t)ccoe_rng_below(&r, (uint64_t)V);
    for (int b = 0; b < B; b++)
        dom[b] = (int32_t)((b * 2 + 1) % 3);
    const int plen[B] = {3, 1, 5, 2, 4}, end[B] = {12, 6, 9, 12, 5};
    const int Tc = 5;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tc; t++)
            pre[b * Tc + t] = t < plen[b] ? tok[b * T + t] : 1; /* padding: any token */
    ccoe_model_forward(&ref, tok, NULL, dom, B, T, NULL);
    double *want = tu_dnew((size_t)V);
    assert_int_equal(ccoe_model_decode_prefill(&m, pre, dom, B, Tc, &err), CCOE_OK);
    for (int b = 0; b < B; b++) {
        tu_to_double(want, ccoe_model_logits(&ref, b, plen[b] - 1), (size_t)V);
        if (tu_close_ratio(mc->name, ccoe_model_logits(&m, b, plen[b] - 1), want, (size_t)V,
                           1e-4, 1e-4) > 1.0)
            fail_msg("%s: prefill logits of sequence %d", mc->name, b);
    }
    int len[B], steps = 0;
    memcpy(len, plen, sizeof len);
    for (;;) {
        int32_t st[B];
        int seq[B], pos[B], n = 0;
        for (int b = B - 1; b >= 0; b--) /* reverse order: step rows != prefill rows */
            if (len[b] < end[b]) {
                seq[n] = b;
                pos[n] = len[b];
                st[n++] = tok[b * T + len[b]];
                len[b]++;
            }
        if (n == 0)
            break;
        ccoe_model_decode_step(&m, st, seq, pos, n);
        steps++;
        for (int j = 0; j < n; j++) {
            tu_to_double(want, ccoe_model_logits(&ref, seq[j], pos[j]), (size_t)V);
            if (tu_close_ratio(mc->name, ccoe_model_logits(&m, j, 0), want, (size_t)V, 1e-4,
                               1e-4) > 1.0)
                fail_msg("%s: step %d, sequence %d, position %d", mc->name, steps, seq[j],
                         pos[j]);
        }
    }
    assert_int_equal(steps, 10);
    free(want);
    ccoe_model_free(&m);
    ccoe_model_free(&ref);
}

static void test_decode_equals_forward(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof k_cases / sizeof k_cases[0]; i++)
        decode_case(&k_cases[i]);
}

/* Every registered CCoE form (variants/forms.def), pre- and post-LN, own heads and shared: the
 * same decode-versus-forward check, so a new form is covered without edits here. */
static void test_decode_forms(void **state)
{
    (void)state;
    for (int f = 0; f < ccoe_form_count(); f++)
        for (int v = 0; v < 4; v++) {
            const ccoe_form_ops *fo = ccoe_form_at(f);
            char form[64], name[96];
            snprintf(form, sizeof form, "ccoe.form=%s", fo->name);
            snprintf(name, sizeof name, "form %s, %s, %s head", fo->name,
                     v & 1 ? "post-LN" : "pre-LN", v & 2 ? "own" : "shared");
            model_case mc = {name,
                             {form, "ccoe.experts=a:1,b:2", "ccoe.routes=arith:a,code:b",
                              v & 1 ? "model.block=post_ln" : "model.block=pre_ln",
                              v & 2 ? "ccoe.own_head=true" : "ccoe.own_head=false",
                              (fo->flags & CCOE_FF_PREFIX_LAYERS) ? "ccoe.prefix_layers=2" : NULL,
                              NULL}};
            decode_case(&mc);
        }
}

/* ccoe_generate (greedy) against greedy decoding by a full forward per new token. */
static void test_generate_equals_recompute(void **state)
{
    (void)state;
    ccoe_tokenizer tok;
    ccoe_error err = {0};
    assert_int_equal(ccoe_tokenizer_init(&tok, "byte", &err), CCOE_OK);
    const int V = tok.ops->vocab_size(tok.self), Tg = 24, max_new = 9;
    const model_case *cases[] = {&k_cases[0], &k_cases[2], &k_cases[4]};
    const char *prompts[4] = {"12+7=", "ab", "reverse: xyz -> ", "q"};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        ccoe_gating gt;
        ccoe_model m;
        open_case(&m, &gt, cases[ci], V, 4, Tg, 0.5, 77);
        ccoe_batch b;
        assert_int_equal(ccoe_batch_init(&b, 4, Tg, &err), CCOE_OK);
        char buf[4][64], *outs[4] = {buf[0], buf[1], buf[2], buf[3]};
        const ccoe_gen_opts go = {.max_new = max_new, .stop = '\x01'};
        assert_int_equal(ccoe_generate(&m, &tok, &b, prompts, 0, 4, &go, outs, sizeof buf[0], &err),
                         CCOE_OK);
        for (int i = 0; i < 4; i++) {
            int32_t seq[32];
            int32_t dom = 0;
            int len = 1;
            seq[0] = CCOE_TOK_BOS;
            len += (int)tok.ops->encode(tok.self, prompts[i], strlen(prompts[i]), seq + 1, 31);
            char want[64] = "";
            size_t wl = 0;
            for (int s = 0; s < max_new && len < Tg; s++) {
                ccoe_model_forward(&m, seq, NULL, &dom, 1, len, NULL);
                int next = ccoe_argmax(ccoe_model_logits(&m, 0, len - 1), V);
                char piece[16];
                size_t k = tok.ops->decode(tok.self, &next, 1, piece, sizeof piece);
                if (next == CCOE_TOK_EOS || (k == 1 && piece[0] == '\x01'))
                    break;
                memcpy(want + wl, piece, k);
                wl += k;
                want[wl] = '\0';
                seq[len++] = next;
            }
            if (strcmp(want, outs[i]) != 0)
                fail_msg("%s, prompt %d: generated '%s', recomputation '%s'", cases[ci]->name, i,
                         outs[i], want);
        }
        ccoe_batch_free(&b);
        ccoe_model_free(&m);
    }
    ccoe_tokenizer_free(&tok);
}

/* The sampler against probabilities computed here in double: for NG evenly spaced draws u,
 * every token's share of the picks equals its renormalised candidate probability to within
 * 1/NG, and tokens outside the candidate set are never picked. */
static void expect_distribution(const float *lg, int V, ccoe_sampling s, const char *what)
{
    enum { NG = 200000 };
    double q[16] = {0};
    int order[16];
    double mx = lg[ccoe_argmax(lg, V)], total = 0.0;
    for (int i = 0; i < V; i++) {
        order[i] = i;
        q[i] = exp(((double)lg[i] - mx) / (double)s.temperature);
    }
    for (int i = 0; i < V; i++) /* insertion sort: most likely first */
        for (int j = i; j > 0 && q[order[j]] > q[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    int n = s.top_k > 0 && s.top_k < V ? s.top_k : V;
    for (int i = 0; i < n; i++)
        total += q[order[i]];
    if (s.top_p > 0.0f && s.top_p < 1.0f) {
        double cum = 0.0;
        int keep = 0;
        while (keep < n && cum < (double)s.top_p * total)
            cum += q[order[keep++]];
        n = keep;
        total = cum;
    }
    double want[16] = {0};
    for (int i = 0; i < n; i++)
        want[order[i]] = q[order[i]] / total;
    long got[16] = {0};
    ccoe_token_prob scratch[16];
    for (int j = 0; j < NG; j++)
        got[ccoe_sample_token(lg, V, &s, (j + 0.5) / NG, scratch)]++;
    for (int i = 0; i < V; i++) {
        double share = (double)got[i] / NG;
        if (fabs(share - want[i]) > 2.0 / NG || (want[i] == 0.0 && got[i] != 0))
            fail_msg("%s: token %d picked %.6f of the time, expected %.6f", what, i, share,
                     want[i]);
    }
}

static void test_sample_token(void **state)
{
    (void)state;
    const float lg[7] = {2.0f, 1.0f, 0.5f, -1.0f, 2.5f, 0.0f, 1.0f};
    const int V = 7;
    ccoe_token_prob scratch[7];
    /* greedy: no sampler, temperature 0, or top-k 1 -- whatever u is */
    const ccoe_sampling t0 = {0}, k1 = {.temperature = 1.5f, .top_k = 1};
    for (double u = 0.0; u < 1.0; u += 0.125) {
        assert_int_equal(ccoe_sample_token(lg, V, NULL, u, scratch), 4);
        assert_int_equal(ccoe_sample_token(lg, V, &t0, u, scratch), 4);
        assert_int_equal(ccoe_sample_token(lg, V, &k1, u, scratch), 4);
    }
    expect_distribution(lg, V, (ccoe_sampling){.temperature = 1.0f}, "T=1");
    expect_distribution(lg, V, (ccoe_sampling){.temperature = 0.5f}, "T=0.5");
    expect_distribution(lg, V, (ccoe_sampling){.temperature = 3.0f}, "T=3");
    expect_distribution(lg, V, (ccoe_sampling){.temperature = 1.0f, .top_k = 3}, "top-k 3");
    expect_distribution(lg, V, (ccoe_sampling){.temperature = 1.0f, .top_p = 0.7f}, "top-p 0.7");
    expect_distribution(lg, V, (ccoe_sampling){.temperature = 0.8f, .top_k = 5, .top_p = 0.9f},
                        "T=0.8 top-k 5 top-p 0.9");
    /* a tie at the top-k cut (tokens 1 and 6, third place): the lower id stays */
    const ccoe_sampling k3 = {.temperature = 1.0f, .top_k = 3};
    int picked1 = 0, picked6 = 0;
    for (int j = 0; j < 1000; j++) {
        int t = ccoe_sample_token(lg, V, &k3, (j + 0.5) / 1000, scratch);
        picked1 |= t == 1;
        picked6 |= t == 6;
    }
    assert_true(picked1);
    assert_false(picked6);
}

/* Sampled generation: the same seed gives the same text whether a prompt is decoded alone or
 * with others; another seed changes it; top-k 1 at any temperature is greedy. */
static void test_generate_sampled(void **state)
{
    (void)state;
    ccoe_tokenizer tok;
    ccoe_error err = {0};
    assert_int_equal(ccoe_tokenizer_init(&tok, "byte", &err), CCOE_OK);
    const int V = tok.ops->vocab_size(tok.self), Tg = 24;
    const char *prompts[4] = {"12+7=", "ab", "reverse: xyz -> ", "q"};
    ccoe_gating gt;
    ccoe_model m;
    open_case(&m, &gt, &k_cases[0], V, 4, Tg, 0.5, 77);
    ccoe_batch b;
    assert_int_equal(ccoe_batch_init(&b, 4, Tg, &err), CCOE_OK);
    char all[4][64], one[64], other[4][64], greedy[4][64], topk1[4][64];
    char *outs[4] = {all[0], all[1], all[2], all[3]};
    ccoe_gen_opts go = {.max_new = 9, .stop = '\x01',
                        .sample = {.temperature = 1.0f, .top_k = 40, .top_p = 0.95f, .seed = 5}};
    assert_int_equal(ccoe_generate(&m, &tok, &b, prompts, 0, 4, &go, outs, 64, &err), CCOE_OK);
    for (int i = 0; i < 4; i++) {
        char *o1[1] = {one};
        ccoe_gen_opts alone = go;
        alone.first_id = (uint64_t)i;
        assert_int_equal(ccoe_generate(&m, &tok, &b, prompts + i, 0, 1, &alone, o1, 64, &err),
                         CCOE_OK);
        assert_string_equal(one, all[i]);
    }
    ccoe_gen_opts seed6 = go;
    seed6.sample.seed = 6;
    char *oo[4] = {other[0], other[1], other[2], other[3]};
    assert_int_equal(ccoe_generate(&m, &tok, &b, prompts, 0, 4, &seed6, oo, 64, &err), CCOE_OK);
    int differ = 0;
    for (int i = 0; i < 4; i++)
        differ += strcmp(other[i], all[i]) != 0;
    assert_true(differ > 0);
    ccoe_gen_opts g0 = {.max_new = 9, .stop = '\x01'}, k1 = go;
    k1.sample.top_k = 1;
    char *og[4] = {greedy[0], greedy[1], greedy[2], greedy[3]};
    char *ok[4] = {topk1[0], topk1[1], topk1[2], topk1[3]};
    assert_int_equal(ccoe_generate(&m, &tok, &b, prompts, 0, 4, &g0, og, 64, &err), CCOE_OK);
    assert_int_equal(ccoe_generate(&m, &tok, &b, prompts, 0, 4, &k1, ok, 64, &err), CCOE_OK);
    for (int i = 0; i < 4; i++)
        assert_string_equal(topk1[i], greedy[i]);
    ccoe_batch_free(&b);
    ccoe_model_free(&m);
    ccoe_tokenizer_free(&tok);
}

/* ccoe_generate_print: any number of prompts, chunked by the batch, prints each prompt and the
 * continuation ccoe_generate gives it decoded alone as prompt i (sampled: the draws follow the
 * prompt, not the chunk), however many fit in a chunk. */
static void test_generate_print_chunks(void **state)
{
    (void)state;
    ccoe_tokenizer tok;
    ccoe_error err = {0};
    assert_int_equal(ccoe_tokenizer_init(&tok, "byte", &err), CCOE_OK);
    const int V = tok.ops->vocab_size(tok.self), Tg = 24;
    const char *prompts[5] = {"12+7=", "ab", "reverse: xyz -> ", "q", "3*3="};
    ccoe_gating gt;
    ccoe_model m;
    open_case(&m, &gt, &k_cases[0], V, 4, Tg, 0.5, 78);
    const ccoe_gen_opts go = {.max_new = 7, .stop = '\x01',
                              .sample = {.temperature = 1.0f, .top_k = 20, .seed = 3}};
    ccoe_batch b4, b2;
    assert_int_equal(ccoe_batch_init(&b4, 4, Tg, &err), CCOE_OK);
    assert_int_equal(ccoe_batch_init(&b2, 2, Tg, &err), CCOE_OK);
    char want[1024] = "";
    for (int i = 0; i < 5; i++) {
        char one[64], *o1[1] = {one};
        ccoe_gen_opts alone = go;
        alone.first_id = (uint64_t)i;
        assert_int_equal(ccoe_generate(&m, &tok, &b4, prompts + i, 0, 1, &alone, o1, 64, &err),
                         CCOE_OK);
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%s\n", prompts[i], one);
    }
    ccoe_batch *batches[2] = {&b4, &b2}; /* chunks of 4 + 1, and of 2 + 2 + 1 */
    for (int k = 0; k < 2; k++) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        assert_non_null(f);
        assert_int_equal(ccoe_generate_print(&m, &tok, batches[k], prompts, 5, 0, &go, f, &err),
                         CCOE_OK);
        fclose(f);
        assert_string_equal(text, want);
        free(text);
    }
    ccoe_batch_free(&b4);
    ccoe_batch_free(&b2);
    ccoe_model_free(&m);
    ccoe_tokenizer_free(&tok);
}

/* ccoe_eval_read_prompts appends a file's lines: "\r\n" ends a line, an empty line is a prompt,
 * a last line without a newline counts; a missing file names --prompts and the file. */
static void test_read_prompts(void **state)
{
    (void)state;
    char path[] = "/tmp/ccoe-prompts-XXXXXX";
    const int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("a\r\nb\n\nc", f);
    fclose(f);
    const char **prompts = malloc(sizeof *prompts);
    prompts[0] = "x";
    int n = 1;
    char *text = NULL;
    ccoe_error err = {0};
    assert_int_equal(ccoe_eval_read_prompts(path, &prompts, &n, &text, &err), CCOE_OK);
    const char *want[5] = {"x", "a", "b", "", "c"};
    assert_int_equal(n, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(prompts[i], want[i]);
    free(text);
    text = NULL;
    remove(path);
    assert_int_not_equal(ccoe_eval_read_prompts(path, &prompts, &n, &text, &err), CCOE_OK);
    assert_non_null(strstr(err.msg, "--prompts"));
    assert_non_null(strstr(err.msg, path));
    assert_int_equal(n, 5);
    free(prompts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_decode_kernel),
        cmocka_unit_test(test_decode_equals_forward),
        cmocka_unit_test(test_decode_forms),
        cmocka_unit_test(test_generate_equals_recompute),
        cmocka_unit_test(test_sample_token),
        cmocka_unit_test(test_generate_sampled),
        cmocka_unit_test(test_generate_print_chunks),
        cmocka_unit_test(test_read_prompts),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
