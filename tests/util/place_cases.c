/* place_cases.c - CCoE expert placement equivalence (see place_cases.h). Every rank also runs
 * the one-process reference model on the whole batch, so no data crosses ranks outside the
 * model's own exchange and the checked sums. */
#include "place_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "form.h"
#include "gating.h"
#include "model.h"
#include "optim.h"
#include "placement.h"
#include "rng.h"
#include "session.h"

static const char k_domains[4][CCOE_NAME_LEN] = {"arith", "code", "prose", "sql"};

typedef struct pcase {
    ccoe_form form;
    int post_ln, own_head, prefix, B;
    const char *experts, *routes;
    ccoe_placement_kind policy; /* mpi.placement (0: contiguous) */
    int list[4];                /* policy list: mpi.map, each rank taken mod P */
    int rope; /* LLaMA/Qwen2-style blocks: RoPE, GQA (H 4, Hkv 2), q/k/v bias, SwiGLU, RMSNorm */
} pcase;

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "[rank %d] %s:%d: check failed: %s (%s)\n", comm->rank, __FILE__,  \
                    __LINE__, #cond, what);                                                  \
            fails++;                                                                         \
        }                                                                                    \
    } while (0)

static ccoe_status open_model(ccoe_model *m, ccoe_gating *gt, ccoe_config *c, const pcase *pc,
                              const ccoe_gemm *g, int maxB, int P, ccoe_error *err)
{
    ccoe_config_defaults(c);
    c->model.n_layer = 3;
    c->model.n_embd = 16;
    c->model.n_head = 2;
    c->model.ffn_hidden = 24;
    c->model.vocab_size = 40;
    c->model.seq_len = 5;
    c->model.block = pc->post_ln ? CCOE_BLOCK_POST_LN : CCOE_BLOCK_PRE_LN;
    c->model.init_std = 0.3;
    if (pc->rope) {
        c->model.pos = CCOE_POS_ROPE;
        c->model.rope_theta = 50.0;
        c->model.n_head = 4;
        c->model.n_kv_head = 2;
        c->model.qkv_bias = 1;
        c->model.bias = 0;
        c->model.ffn = CCOE_FFN_SWIGLU;
        c->model.norm = CCOE_NORM_RMSNORM;
        c->model.tied_head = 0;
    }
    c->train.batch_size = pc->B;
    /* AdamW moves an element with gradient g by lr g / (|g| + eps): near |g| = eps a rounding
     * change of the gradient is amplified up to lr / (4 eps). The data-parallel gradient sum
     * rounds differently for each P (here one step-0 gradient of 1.2e-6 differs by 1.9e-9 at
     * P = 2, with or without placement), which eps = 1e-6 turned into a parameter difference
     * of 1.5e-6 after 4 steps; eps = 1e-3 bounds the amplification by 2.5 so the parameters
     * compare to 1e-5 like the gradients. */
    c->train.eps = 1e-3;
    c->ccoe.form = pc->form;
    snprintf(c->ccoe.experts, sizeof c->ccoe.experts, "%s", pc->experts);
    snprintf(c->ccoe.routes, sizeof c->ccoe.routes, "%s", pc->routes);
    c->ccoe.prefix_layers = pc->prefix;
    c->ccoe.own_head = pc->own_head;
    c->ccoe.max_expert_layers = 2;
    c->mpi.placement = pc->policy;
    size_t used = 0;
    for (int e = 0; pc->policy == CCOE_PLACE_LIST && pc->experts[0] && e < 4; e++)
        if (used < sizeof c->mpi.map && ccoe_placement_expert_count(c) > e)
            used += (size_t)snprintf(c->mpi.map + used, sizeof c->mpi.map - used, "%s%d",
                                     e ? "," : "", pc->list[e] % P);
    CCOE_TRY(ccoe_session_validate(c, err));
    CCOE_TRY(ccoe_gating_build(gt, c, k_domains, 4, err));
    CCOE_TRY(ccoe_model_init(m, &c->model, gt, maxB, c->model.seq_len, g, 1, err));
    ccoe_model_init_weights(m, 5, CCOE_INIT_RANDOM);
    ccoe_rng r;
    ccoe_rng_seed(&r, 17);
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].ndim == 1)
            for (size_t j = 0; j < m->params[i].numel; j++)
                m->param_block[m->params[i].offset + j] += 0.2f * (ccoe_rng_uniform(&r) - 0.5f);
    return CCOE_OK;
}

static int owner_of(const ccoe_model *m, size_t off)
{
    for (int e = 0; e < m->gating.n_experts; e++)
        if (off >= m->expert_begin[e] && off < m->expert_end[e])
            return m->place_owner[e];
    return -1;
}

typedef struct filt {
    const ccoe_model *m;
    int rank;
} filt;

static int local_filter(const ccoe_param *p, void *ctx)
{
    const filt *f = ctx;
    int q = owner_of(f->m, p->offset);
    return q < 0 || q == f->rank;
}

/* worst |a - b| / (|b| + floor) over a tensor's elements, per tensor */
static int close_tensors(const ccoe_comm *comm, const char *what, const ccoe_model *m,
                         const float *a, const float *b, double rel, double floor_abs)
{
    int fails = 0;
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        double scale = 0.0, worst = 0.0;
        for (size_t j = 0; j < p->numel; j++) {
            scale = fmax(scale, fabs(b[p->offset + j]));
            worst = fmax(worst, fabs((double)a[p->offset + j] - b[p->offset + j]));
        }
        if (worst > rel * scale + floor_abs) {
            fprintf(stderr, "[rank %d] %s: %s differs by %.3g (max |ref| %.3g)\n", comm->rank,
                    what, p->name, worst, scale);
            fails++;
        }
    }
    return fails;
}

static int place_case(ccoe_comm *comm, const ccoe_gemm *g, const pcase *pc)
{
    const int P = comm->size, r = comm->rank, MB = pc->B, STEPS = 4;
    char what[160];
    snprintf(what, sizeof what,
             "form %d post_ln %d own_head %d rope %d experts '%s' B=%d P=%d %s", (int)pc->form,
             pc->post_ln, pc->own_head, pc->rope, pc->experts, MB, P,
             ccoe_placement_name(pc->policy));
    int fails = 0;
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_config cs, cp;
    ccoe_gating gs, gp;
    ccoe_model S, m;
    int b0, b1;
    ccoe_comm_split(MB, P, r, &b0, &b1);
    const int B = b1 - b0;
    ccoe_adamw os, op;
    int32_t owner[CCOE_MAX_EXPERTS];
    if (open_model(&S, &gs, &cs, pc, g, MB, P, &err) != CCOE_OK ||
        open_model(&m, &gp, &cp, pc, g, B > 0 ? B : 1, P, &err) != CCOE_OK ||
        ccoe_placement_map(&cp.mpi, gp.n_experts, P, NULL, owner, &err) != CCOE_OK ||
        ccoe_model_set_placement(&m, comm, MB, pc->policy ? owner : NULL, &err) != CCOE_OK ||
        ccoe_adamw_init(&os, S.num_params, &err) != CCOE_OK ||
        ccoe_adamw_init(&op, m.num_params, &err) != CCOE_OK) {
        fprintf(stderr, "[rank %d] set-up: %s (%s)\n", r, err.msg, what);
        comm->ops->abort(comm, 1);
    }
    m.place_active = 1;
    for (int e = 0; e < gp.n_experts; e++) /* the model follows the map */
        CHECK(m.place_owner[e] == owner[e]);
    const int T = cs.model.seq_len, V = cs.model.vocab_size;
    int32_t tok[64 * 8], tgt[64 * 8], dom[64];
    ccoe_rng rng;
    ccoe_rng_seed(&rng, 11);
    uint64_t bytes = 0;
    int expert_rows_remote = 0;
    for (int s = 0; s < STEPS; s++) {
        for (int i = 0; i < MB * T; i++) {
            tok[i] = (int32_t)ccoe_rng_below(&rng, (uint64_t)V);
            tgt[i] = (i % 7 == 3) ? -1 : (int32_t)ccoe_rng_below(&rng, (uint64_t)V);
        }
        for (int b = 0; b < MB; b++)
            dom[b] = (int32_t)((b * 3 + 1 + s) % 4);
        /* reference */
        ccoe_model_zero_grad(&S);
        long cnt_ref = 0;
        const double loss_ref = ccoe_model_forward(&S, tok, tgt, dom, MB, T, &cnt_ref);
        ccoe_model_backward(&S, 1.0f / (float)cnt_ref, 1.0f);
        /* placed */
        ccoe_model_zero_grad(&m);
        long cnt = 0;
        double sums[2];
        sums[0] = ccoe_model_forward(&m, tok + (size_t)b0 * T, tgt + (size_t)b0 * T, dom + b0, B,
                                     T, &cnt);
        sums[1] = (double)cnt;
        if (comm->ops->allreduce_f64(comm, sums, 2, &err) != CCOE_OK)
            comm->ops->abort(comm, 1);
        CHECK((long)sums[1] == cnt_ref);
        CHECK(fabs(sums[0] - loss_ref) <= 1e-5 * fabs(loss_ref));
        ccoe_model_backward(&m, 1.0f / (float)sums[1], 1.0f);
        bytes += m.rx.bytes;
        for (int i = 0; i < m.rx.nsend; i++)
            expert_rows_remote |= m.place_owner[m.row_path[m.rx.send_row[i]] - 1] != r;
        /* expert gradients: complete on the owner, zero elsewhere */
        for (int e = 0; e < m.gating.n_experts; e++)
            if (m.place_owner[e] != r)
                for (size_t j = m.expert_begin[e]; j < m.expert_end[e]; j++)
                    if (m.grad_block[j] != 0.0f) {
                        CHECK(!"a non-owner holds an expert gradient");
                        break;
                    }
        /* the trainer's sum: everything (experts are zero off their owners) */
        if (comm->ops->allreduce_f32(comm, m.grad_block, m.num_params, &err) != CCOE_OK)
            comm->ops->abort(comm, 1);
        char w2[200];
        snprintf(w2, sizeof w2, "%s step %d grads", what, s);
        fails += close_tensors(comm, w2, &m, m.grad_block, S.grad_block, 1e-5, 1e-7);
        /* AdamW: the reference everywhere; placed: replicated tensors and owned experts */
        ccoe_adamw_step(&os, &S, &cs.train, 1e-2, NULL, NULL);
        filt f = {&m, r};
        ccoe_adamw_step(&op, &m, &cp.train, 1e-2, local_filter, &f);
    }
    /* experts from their owners, then every parameter equals the reference */
    for (int e = 0; e < m.gating.n_experts; e++) {
        size_t off = m.expert_begin[e], len = (m.expert_end[e] - off) * sizeof(float);
        if (comm->ops->bcast(comm, m.param_block + off, len, m.place_owner[e], &err) != CCOE_OK)
            comm->ops->abort(comm, 1);
    }
    char w3[200];
    snprintf(w3, sizeof w3, "%s params after %d steps", what, STEPS);
    fails += close_tensors(comm, w3, &m, m.param_block, S.param_block, 1e-5, 1e-7);
    /* bytes: sent to other ranks exactly when some row left this rank */
    if (P == 1)
        CHECK(bytes == 0);
    else if (expert_rows_remote)
        CHECK(bytes > 0);
    ccoe_adamw_free(&os);
    ccoe_adamw_free(&op);
    ccoe_model_free(&S);
    ccoe_model_free(&m);
    return fails;
}

/* Placed FFN experts with their own heads are refused with a message naming the key (a
 * local check before any exchange). */
static int refusals(ccoe_comm *comm, const ccoe_gemm *g)
{
    const char *what = "ffn + own_head";
    int fails = 0;
    const pcase pc = {CCOE_FORM_FFN, 1, 1, 0, 4, "a:1", "arith:a", CCOE_PLACE_CONTIGUOUS, {0}, 0};
    ccoe_config c;
    ccoe_gating gt;
    ccoe_model m;
    ccoe_error err;
    ccoe_error_clear(&err);
    CHECK(open_model(&m, &gt, &c, &pc, g, 4, comm->size, &err) == CCOE_OK);
    CHECK(ccoe_model_set_placement(&m, comm, 4, NULL, &err) == CCOE_ERR_CONFIG);
    CHECK(strstr(err.msg, "ccoe.own_head") != NULL);
    CHECK(!m.place);
    ccoe_model_free(&m);
    return fails;
}

/* One process whose alltoallv fails (and whose abort only counts): the placed forward keeps
 * the first failure for ccoe_model_comm_status, communicates no more in forward or backward,
 * and never ends the process. */
static int g_fail_calls, g_fail_aborts;

static ccoe_status failing_alltoallv(ccoe_comm *c, const float *s, const size_t *sc,
                                     const size_t *sd, float *r, const size_t *rc,
                                     const size_t *rd, ccoe_error *err)
{
    (void)c, (void)s, (void)sc, (void)sd, (void)r, (void)rc, (void)rd;
    g_fail_calls++;
    return ccoe_error_set(err, CCOE_ERR_COMM, "injected alltoallv failure");
}

static void counting_abort(ccoe_comm *c, int code)
{
    (void)c, (void)code;
    g_fail_aborts++;
}

int tu_place_comm_failure(const ccoe_gemm *g, int form)
{
    ccoe_comm serial, *comm = &serial;
    ccoe_comm_serial(&serial);
    ccoe_comm_ops ops = *serial.ops;
    ops.alltoallv_f32 = failing_alltoallv;
    ops.abort = counting_abort;
    serial.ops = &ops;
    const char *what = "comm failure";
    int fails = 0;
    const pcase pc = {(ccoe_form)form, 1, 0, 0, 4, "a:2", "arith:a code:a", CCOE_PLACE_CONTIGUOUS,
                      {0}, 0};
    ccoe_config c;
    ccoe_gating gt;
    ccoe_model m;
    ccoe_error err;
    ccoe_error_clear(&err);
    CHECK(open_model(&m, &gt, &c, &pc, g, 4, 1, &err) == CCOE_OK);
    CHECK(ccoe_model_set_placement(&m, comm, 4, NULL, &err) == CCOE_OK);
    m.place_active = 1;
    CHECK(ccoe_model_comm_status(&m, &err) == CCOE_OK);
    int32_t tok[4 * 8] = {0}, tgt[4 * 8] = {0}, dom[4] = {0, 1, 0, 1};
    g_fail_calls = g_fail_aborts = 0;
    long n = 0;
    ccoe_model_forward(&m, tok, tgt, dom, 4, c.model.seq_len, &n);
    CHECK(ccoe_model_comm_status(&m, &err) == CCOE_ERR_COMM);
    CHECK(strstr(err.msg, "CCoE expert placement") && strstr(err.msg, "injected alltoallv"));
    ccoe_model_backward(&m, 1.0f, 1.0f);
    CHECK(g_fail_calls == 1); /* nothing after the failed exchange */
    CHECK(g_fail_aborts == 0);
    CHECK(ccoe_model_comm_status(&m, &err) == CCOE_ERR_COMM);
    ccoe_model_free(&m);
    return fails;
}

int tu_place_model_cases(ccoe_comm *comm, const ccoe_gemm *g)
{
    static const pcase cases[] = {
        {CCOE_FORM_TAIL, 0, 0, 0, 6, "a:1 b:2", "arith:a code:b sql:a", CCOE_PLACE_CONTIGUOUS,
         {0}, 0},
        {CCOE_FORM_TAIL, 1, 1, 0, 7, "a:1 b:2", "arith:a code:b sql:a", CCOE_PLACE_CONTIGUOUS,
         {0}, 0},
        /* expert c gets no rows (its owner receives nothing on P = 3, 4) */
        {CCOE_FORM_PREFIX, 0, 1, 1, 6, "a:2 b:1 c:1", "arith:a code:b", CCOE_PLACE_CONTIGUOUS,
         {0}, 0},
        {CCOE_FORM_PREFIX, 1, 0, 2, 5, "a:1 b:1 c:1", "arith:a code:b sql:a",
         CCOE_PLACE_CONTIGUOUS, {0}, 0},
        /* B < P on 4 ranks: a rank without rows still exchanges */
        {CCOE_FORM_TAIL, 0, 1, 0, 3, "a:2 b:1", "arith:a code:b prose:a", CCOE_PLACE_CONTIGUOUS,
         {0}, 0},
        /* non-contiguous placements (mpi.placement): round robin, and a list map (on 4 ranks
         * rank 1 owns nothing; on 2 ranks rank 0 owns a and c, rank 1 owns b) */
        {CCOE_FORM_TAIL, 0, 0, 0, 6, "a:1 b:2 c:1", "arith:a code:b sql:c",
         CCOE_PLACE_ROUND_ROBIN, {0}, 0},
        {CCOE_FORM_PREFIX, 0, 1, 1, 6, "a:2 b:1 c:1", "arith:a code:b prose:c", CCOE_PLACE_LIST,
         {2, 3, 0}, 0},
        /* Eqs. 6-7: per-layer FFN exchange; expert c without rows; B < P; a list map */
        {CCOE_FORM_FFN, 0, 0, 0, 6, "a:1 b:2", "arith:a code:b sql:a", CCOE_PLACE_CONTIGUOUS,
         {0}, 0},
        {CCOE_FORM_FFN, 1, 0, 0, 7, "a:2 b:1 c:1", "arith:a code:b", CCOE_PLACE_LIST, {1, 0, 1}, 0},
        {CCOE_FORM_FFN, 1, 0, 0, 3, "a:2 b:1", "arith:a code:b prose:a", CCOE_PLACE_CONTIGUOUS,
         {0}, 0},
    };
    int fails = refusals(comm, g);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        fails += place_case(comm, g, &cases[i]);
    /* every registered form (variants/forms.def), pre- and post-LN, shared head, on GPT-2-style
     * and on LLaMA/Qwen2-style blocks: a new form is checked without edits here */
    for (int f = 0; f < ccoe_form_count(); f++)
        for (int v = 0; v < 4; v++) {
            const ccoe_form_ops *fo = ccoe_form_at(f);
            const pcase pc = {fo->id, v & 1, 0, (fo->flags & CCOE_FF_PREFIX_LAYERS) ? 1 : 0, 6,
                              "a:1 b:2 c:1", "arith:a code:b sql:c", CCOE_PLACE_CONTIGUOUS,
                              {0}, v >> 1};
            fails += place_case(comm, g, &pc);
        }
    return fails;
}
