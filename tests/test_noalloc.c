/* test_noalloc.c - the training step allocates nothing.
 *
 * This executable replaces the process's allocation functions with counting ones (below), so
 * every malloc, calloc, realloc, aligned_alloc, memalign and posix_memalign in the process is
 * seen. For each model kind (dense pre-/post-LN, GELU and SwiGLU, MoE with every gate and a
 * capacity, CCoE Eqs. 4, 5 and 6-7, full and isolated expert training) two warm-up steps run,
 * then three counted steps of what the trainer does per step: next batch, zero gradients,
 * forward, backward, gradient norm, clipped AdamW. ccoe's code may not allocate once in them.
 * Allocations inside shared libraries are reported, not failed: libgomp allocates a team for
 * every one-thread parallel region, which BLIS's OpenMP build opens for each single-threaded
 * GEMM (the MoE experts' serial GEMMs run inside ccoe's parallel region). (Not built with the
 * sanitizers, which bring their own allocator.)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "config.h"
#include "form.h"
#include "gemm.h"
#include "model.h"
#include "optim.h"
#include "session.h"

/* ---- counting allocator ----
 * The executable defines the allocation functions, so every caller in the process reaches
 * them; they hand over to glibc's own allocator through its exported __libc_* entry points.
 * While g_counting is set they count the calls made from this executable's code (ccoe's
 * static core library and everything linked into it statically) apart from the calls made
 * inside shared libraries (libgomp, BLIS, libc), told apart by the caller's address. */

static volatile int g_counting;
static long g_allocs;     /* calls from ccoe's code */
static long g_lib_allocs; /* calls from inside shared libraries */
static char g_first[96];  /* which function ccoe's code called first while counting */
extern char __executable_start[], etext[]; /* this executable's code (GNU ld symbols) */

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);
extern void __libc_free(void *p);

static void counted(const char *fn, size_t n, const void *caller)
{
    if (!g_counting)
        return;
    if ((const char *)caller < __executable_start || (const char *)caller >= etext) {
#pragma omp atomic
        g_lib_allocs++;
        return;
    }
#pragma omp atomic
    g_allocs++;
    if (!g_first[0])
        snprintf(g_first, sizeof g_first, "%s(%zu)", fn, n);
}

#define CALLER __builtin_return_address(0)

__attribute__((noinline)) void *malloc(size_t n)
{
    counted("malloc", n, CALLER);
    return __libc_malloc(n);
}

__attribute__((noinline)) void *calloc(size_t n, size_t size)
{
    counted("calloc", n * size, CALLER);
    return __libc_calloc(n, size);
}

__attribute__((noinline)) void *realloc(void *p, size_t n)
{
    counted("realloc", n, CALLER);
    return __libc_realloc(p, n);
}

void free(void *p)
{
    __libc_free(p);
}

__attribute__((noinline)) void *aligned_alloc(size_t align, size_t n)
{
    counted("aligned_alloc", n, CALLER);
    return __libc_memalign(align, n);
}

void *memalign(size_t align, size_t n); /* glibc declares it in <malloc.h> only */
__attribute__((noinline)) void *memalign(size_t align, size_t n)
{
    counted("memalign", n, CALLER);
    return __libc_memalign(align, n);
}

__attribute__((noinline)) int posix_memalign(void **p, size_t align, size_t n)
{
    counted("posix_memalign", n, CALLER);
    *p = __libc_memalign(align, n);
    return *p ? 0 : ENOMEM;
}

/* ---- the steps ---- */

static int only_expert0(const ccoe_param *p, void *ctx)
{
    (void)ctx;
    return p->expert == 0;
}

/* Opens a session for the tiny config plus `sets`, runs 2 + 3 steps, returns the allocations
 * counted in the last 3 (and the first one's name in *first). */
static long steps_allocations(const char *const *sets, int n_sets, int isolated, char *first,
                              size_t first_cap, long *lib)
{
    static const char *const base[] = {"model.n_layer=4", "model.n_embd=32", "model.n_head=2",
                                       "model.seq_len=32", "train.batch_size=4",
                                       "run.threads=2", "data.task_examples=0"};
    ccoe_error err = {0};
    ccoe_config cfg;
    ccoe_config_defaults(&cfg);
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++)
        assert_int_equal(ccoe_config_set(&cfg, base[i], &err), CCOE_OK);
    for (int i = 0; i < n_sets; i++)
        if (ccoe_config_set(&cfg, sets[i], &err) != CCOE_OK)
            fail_msg("%s: %s", sets[i], err.msg);
    assert_int_equal(ccoe_session_validate(&cfg, &err), CCOE_OK);
    ccoe_session s;
    if (ccoe_session_open(&s, &cfg, 1, &err) != CCOE_OK)
        fail_msg("session: %s", err.msg);
    ccoe_adamw opt;
    assert_int_equal(ccoe_adamw_init(&opt, s.model.num_params, &err), CCOE_OK);
    ccoe_model *m = &s.model;
    ccoe_model_init_weights(m, 1, CCOE_INIT_COPY);
    size_t g0 = 0, g1 = m->num_params;
    if (isolated) {
        m->train_path = 1;
        g0 = m->expert_begin[0];
        g1 = m->expert_end[0];
    }
    const int B = cfg.train.batch_size, T = cfg.model.seq_len;
    m->train = 1;
    g_allocs = g_lib_allocs = 0;
    g_first[0] = '\0';
    for (int it = 0; it < 5; it++) {
        g_counting = it >= 2;
        m->step = (uint64_t)it;
        ccoe_data_next_batch(&s.data, s.batch.tokens, s.batch.targets, s.batch.domains, B);
        ccoe_model_zero_grad(m);
        long count = 0;
        ccoe_model_forward(m, s.batch.tokens, s.batch.targets, s.batch.domains, B, T, &count);
        ccoe_model_backward(m, 1.0f / (float)count, 1.0f);
        double gn = ccoe_grad_norm(m->grad_block, g0, g1);
        ccoe_adamw_step_scaled(&opt, m, &cfg.train, 1e-3, gn > 1.0 ? (float)(1.0 / gn) : 1.0f,
                               isolated ? only_expert0 : NULL, NULL);
    }
    g_counting = 0;
    long n = g_allocs;
    *lib = g_lib_allocs;
    snprintf(first, first_cap, "%s", g_first);
    ccoe_adamw_free(&opt);
    ccoe_session_close(&s);
    return n;
}

typedef struct alloc_case {
    const char *name;
    const char *sets[12];
    int isolated; /* train CCoE expert 0 only (base frozen) */
} alloc_case;

static const alloc_case k_cases[] = {
    {"dense pre-LN GELU", {NULL}, 0},
    {"post-LN RMSNorm SwiGLU untied",
     {"model.block=post_ln", "model.norm=rmsnorm", "model.ffn=swiglu", "model.tied_head=false"},
     0},
    {"MoE top-2 of 4, capacity 1.25",
     {"moe.gate=topk", "moe.n_experts=4", "moe.top_k=2", "moe.capacity_factor=1.25"}, 0},
    {"MoE softmax (Eq. 2)", {"moe.gate=softmax", "moe.n_experts=4", "moe.top_k=4"}, 0},
    {"MoE noisy top-2 (Eq. 3)",
     {"moe.gate=noisy_topk", "moe.n_experts=4", "moe.top_k=2", "moe.w_importance=0.01",
      "moe.w_load=0.01"},
     0},
    {"CCoE Eq. 4 tail", {"ccoe.form=tail", "ccoe.experts=a:2,b:1", "ccoe.routes=arith:a,code:b"}, 0},
    {"CCoE Eq. 5 prefix",
     {"ccoe.form=prefix", "ccoe.prefix_layers=1", "ccoe.experts=a:2", "ccoe.routes=arith:a"}, 0},
    {"CCoE Eqs. 6-7 FFN experts",
     {"model.block=post_ln", "ccoe.form=ffn", "ccoe.experts=a:2", "ccoe.routes=arith:a"}, 0},
    {"CCoE Eq. 4, isolated expert training",
     {"ccoe.form=tail", "ccoe.experts=a:2", "ccoe.routes=arith:a"}, 1},
    {"RoPE GQA (H 4, Hkv 2) qkv_bias SwiGLU RMSNorm untied",
     {"model.pos=rope", "model.n_head=4", "model.n_kv_head=2", "model.qkv_bias=true",
      "model.bias=false", "model.ffn=swiglu", "model.norm=rmsnorm", "model.tied_head=false"},
     0},
    {"RoPE GQA, CCoE Eqs. 6-7, isolated expert training",
     {"model.pos=rope", "model.n_head=4", "model.n_kv_head=2", "model.qkv_bias=true",
      "ccoe.form=ffn", "ccoe.experts=a:2", "ccoe.routes=arith:a"},
     1},
};

static void test_step_allocates_nothing(void **state)
{
    (void)state;
    int fails = 0;
    for (size_t i = 0; i < sizeof k_cases / sizeof k_cases[0]; i++) {
        const alloc_case *c = &k_cases[i];
        int n_sets = 0;
        while (n_sets < 12 && c->sets[n_sets])
            n_sets++;
        char first[96];
        long lib = 0;
        long n = steps_allocations(c->sets, n_sets, c->isolated, first, sizeof first, &lib);
        if (lib)
            fprintf(stderr, "(%s: %ld allocations per step inside shared libraries)\n", c->name,
                    lib / 3);
        if (n != 0) {
            fprintf(stderr, "%s: %ld allocations in 3 training steps (first: %s)\n", c->name, n,
                    first);
            fails++;
        }
    }
    assert_int_equal(fails, 0);
}

/* Every registered CCoE form (variants/forms.def), full and isolated expert training: a new
 * form is checked without edits here. */
static void test_forms_allocate_nothing(void **state)
{
    (void)state;
    int fails = 0;
    for (int f = 0; f < ccoe_form_count(); f++)
        for (int isolated = 0; isolated < 2; isolated++) {
            const ccoe_form_ops *fo = ccoe_form_at(f);
            char form[64];
            snprintf(form, sizeof form, "ccoe.form=%s", fo->name);
            const char *sets[4] = {form, "ccoe.experts=a:2,b:1", "ccoe.routes=arith:a,code:b",
                                   "ccoe.prefix_layers=2"};
            const int n_sets = (fo->flags & CCOE_FF_PREFIX_LAYERS) ? 4 : 3;
            char first[96];
            long lib = 0;
            long n = steps_allocations(sets, n_sets, isolated, first, sizeof first, &lib);
            if (n != 0) {
                fprintf(stderr, "form %s%s: %ld allocations in 3 training steps (first: %s)\n",
                        fo->name, isolated ? ", isolated" : "", n, first);
                fails++;
            }
        }
    assert_int_equal(fails, 0);
}

/* run.precision = bf16: the packing scratch is allocated when the session opens, never in a
 * step (dense, MoE with the expert-parallel schedule's serial GEMMs, a CCoE form). */
static void test_bf16_allocates_nothing(void **state)
{
    (void)state;
    if (!ccoe_gemm_bf16_available())
        skip();
    static const alloc_case cases[] = {
        {"bf16 dense", {"run.precision=bf16"}, 0},
        {"bf16 MoE noisy top-2",
         {"run.precision=bf16", "moe.gate=noisy_topk", "moe.n_experts=4", "moe.top_k=2"}, 0},
        {"bf16 CCoE Eq. 4 isolated",
         {"run.precision=bf16", "ccoe.form=tail", "ccoe.experts=a:2", "ccoe.routes=arith:a"}, 1},
    };
    int fails = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const alloc_case *c = &cases[i];
        int n_sets = 0;
        while (n_sets < 12 && c->sets[n_sets])
            n_sets++;
        char first[96];
        long lib = 0;
        long n = steps_allocations(c->sets, n_sets, c->isolated, first, sizeof first, &lib);
        if (n != 0) {
            fprintf(stderr, "%s: %ld allocations in 3 training steps (first: %s)\n", c->name, n,
                    first);
            fails++;
        }
    }
    assert_int_equal(fails, 0);
}

/* The counters see ccoe's calls as ccoe's (or the test above could never fail). */
static void test_wrappers_count(void **state)
{
    (void)state;
    ccoe_error err = {0};
    ccoe_adamw opt;
    g_allocs = g_lib_allocs = 0;
    g_counting = 1;
    ccoe_status st = ccoe_adamw_init(&opt, 1000, &err);
    g_counting = 0;
    assert_int_equal(st, CCOE_OK);
    assert_true(g_allocs > 0);
    assert_int_equal(g_lib_allocs, 0);
    ccoe_adamw_free(&opt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wrappers_count),
        cmocka_unit_test(test_step_allocates_nothing),
        cmocka_unit_test(test_forms_allocate_nothing),
        cmocka_unit_test(test_bf16_allocates_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
