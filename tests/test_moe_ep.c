/* test_moe_ep.c - expert parallelism of the MoE layer (src/moe_ep.c, src/moe_ep_train.c) on 1-4 fake ranks:
 * threads of this process joined by the in-process communicator of tests/util/fakecomm.c, so
 * the dispatch logic is checked without mpirun (tests/mpi/test_moe_mpi.c runs the same checks
 * over real MPI).
 *
 * - Placement: contiguous blocks by default, explicit maps, bad maps rejected, expert spans.
 * - Dispatch -> identity experts -> combine returns the weighted input, the kept set equals the
 *   serial plan's on the concatenated batch (global capacity), and each owner receives its
 *   experts' rows in the global token order; with a rank that has no tokens, a rank that owns
 *   no expert and an expert nobody picks.
 * - Layer equivalence for every gate: P ranks on slices of a batch give the serial layer's
 *   output, aux loss (the same on every rank), input gradients, router gradients (summed over
 *   ranks), expert gradients (on their owners; untouched elsewhere) and global statistics;
 *   P = 1 through the distributed path equals the serial layer bit for bit.
 * - Model equivalence: a tiny transformer with MoE blocks under ccoe_model_set_comm on 1, 2 and
 *   4 ranks matches the serial model's loss, aux loss and every gradient after the
 *   replicated-gradient sum; the gradient norm, parameter ownership and expert sync of moe_ep_train.h.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "ep_cases.h"
#include "fakecomm.h"
#include "moe_cases.h"

#include "gemm.h"
#include "moe.h"

#define MAXP 4

static ccoe_gemm G; /* AUTO backend, one thread per fake rank */

static int setup_group(void **state)
{
    (void)state;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(&G, CCOE_GEMM_AUTO, 1, &err) != CCOE_OK) {
        fprintf(stderr, "gemm init: %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* A layer case (tests/util/moe_cases.h); N and C stay 0: the checks size their own. */
typedef tu_moe_case lcase;

static void case_config(const lcase *c, ccoe_moe_config *cfg) { tu_moe_case_config(c, cfg); }

/* ---- placement ---- */

static void test_placement(void **state)
{
    (void)state;
    ccoe_moe_config cfg;
    lcase c = {"topk", 0, 0, 8, 2, 4, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    case_config(&c, &cfg);
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_moe m;
    assert_int_equal(ccoe_moe_init(&m, &cfg, 6, 10, &G, &err), CCOE_OK);
    assert_int_equal(ccoe_moe_expert_owner(&m, 7), 0); /* serial: rank 0 owns all */
    size_t max_rows_serial = (size_t)m.max_rows;
    assert_int_equal(ccoe_moe_set_placement(&m, 3, 1, NULL, 0, &err), CCOE_OK);
    const int want[8] = {0, 0, 1, 1, 1, 2, 2, 2}; /* [0,2) [2,5) [5,8) */
    for (int e = 0; e < 8; e++)
        assert_int_equal(ccoe_moe_expert_owner(&m, e), want[e]);
    assert_int_equal(m.ep_local, 3);
    assert_int_equal(m.max_home, 10 * 2);
    assert_int_equal(m.max_recv, 3 * 10 * 2); /* dropless: every token of 3 ranks, K slots */
    assert_true((size_t)m.max_rows >= max_rows_serial);
    /* more ranks than experts: some ranks own none */
    c.E = 2;
    case_config(&c, &cfg);
    assert_int_equal(ccoe_moe_init(&m, &cfg, 6, 10, &G, &err), CCOE_OK);
    assert_int_equal(ccoe_moe_set_placement(&m, 4, 0, NULL, 0, &err), CCOE_OK);
    assert_int_equal(m.ep_local, 0);
    assert_int_equal(m.max_recv, 0);
    int owned[4] = {0};
    for (int e = 0; e < 2; e++)
        owned[ccoe_moe_expert_owner(&m, e)]++;
    assert_int_equal(owned[0] + owned[1] + owned[2] + owned[3], 2);
    /* an explicit map, and a bad one */
    c.E = 4;
    c.cf = 1.0;
    case_config(&c, &cfg);
    assert_int_equal(ccoe_moe_init(&m, &cfg, 6, 10, &G, &err), CCOE_OK);
    const int32_t map[4] = {1, 0, 1, 0};
    assert_int_equal(ccoe_moe_set_placement(&m, 2, 1, map, 0, &err), CCOE_OK);
    assert_int_equal(ccoe_moe_expert_owner(&m, 2), 1);
    assert_int_equal(m.ep_local, 2);
    /* capacity bounds the receive side: 2 experts x cap(20 tokens) = 2 x 10 */
    assert_int_equal(m.max_recv, 2 * ccoe_moe_capacity(&m, 20));
    const int32_t badmap[4] = {0, 2, 1, 0};
    assert_int_equal(ccoe_moe_set_placement(&m, 2, 0, badmap, 0, &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "expert 1 is assigned to rank 2"));
    assert_int_equal(ccoe_moe_set_placement(&m, 2, 2, NULL, 0, &err), CCOE_ERR_ARG);
    /* ranks with more rows than this one: the receive side grows with the largest */
    assert_int_equal(ccoe_moe_set_placement(&m, 2, 1, map, 30, &err), CCOE_OK);
    assert_int_equal(m.ep_max_peer, 30);
    assert_int_equal(m.max_recv, 2 * ccoe_moe_capacity(&m, 60));
    assert_int_equal(m.max_home, 10 * 2); /* this rank's own slots do not */
    assert_int_equal(ccoe_moe_set_placement(&m, 2, 1, map, 9, &err), CCOE_ERR_ARG);
    /* spans: each expert's tensors, contiguous */
    for (int i = 0; i < m.n_tensors; i++) {
        ccoe_moe_tensor t;
        ccoe_moe_tensor_at(&m, i, &t);
        if (t.expert < 0)
            continue;
        size_t b, x;
        ccoe_moe_expert_span(&m, t.expert, &b, &x);
        assert_true(t.offset >= b && t.offset + t.numel <= x);
        assert_int_equal(x - b, m.expert_stride);
    }
}

/* ---- the per-rank suites of tests/util/ep_cases.c on 1..4 fake ranks ---- */

typedef int (*suite_fn)(ccoe_comm *comm, const ccoe_gemm *g);

typedef struct suite_ctx {
    suite_fn fn;
    int fails[TU_FAKE_MAX_RANKS];
} suite_ctx;

static void suite_rank(ccoe_comm *comm, void *arg)
{
    suite_ctx *x = arg;
    x->fails[comm->rank] = x->fn(comm, &G);
}

static void run_suite(suite_fn fn)
{
    for (int P = 1; P <= MAXP; P++) {
        suite_ctx x;
        memset(&x, 0, sizeof x);
        x.fn = fn;
        assert_int_equal(tu_fake_run(P, suite_rank, &x), 0);
        for (int r = 0; r < P; r++) {
            if (x.fails[r])
                fprintf(stderr, "%d ranks: rank %d failed %d checks\n", P, r, x.fails[r]);
            assert_int_equal(x.fails[r], 0);
        }
    }
}

static void test_round_trip(void **state)
{
    (void)state;
    run_suite(tu_ep_round_trips);
}

static void test_layer_equivalence(void **state)
{
    (void)state;
    run_suite(tu_ep_layer_cases);
}

static void test_model_equivalence(void **state)
{
    (void)state;
    run_suite(tu_ep_model_cases);
}

static void test_decode(void **state)
{
    (void)state;
    run_suite(tu_ep_decode_cases);
}

static void test_eval_split(void **state)
{
    (void)state;
    run_suite(tu_ep_eval_cases);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_placement),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_layer_equivalence),
        cmocka_unit_test(test_model_equivalence),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_eval_split),
    };
    return cmocka_run_group_tests(tests, setup_group, NULL);
}
