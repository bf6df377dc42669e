/* test_ccoe_place.c - CCoE expert placement (ccoe_model_set_placement, Eqs. 4-7 over ranks) on
 * 1-4 fake ranks (threads joined by tests/util/fakecomm.c): the rows of each expert's group
 * travel to the expert's owner and d(branch input) comes back; loss sums, gradients (experts
 * complete on their owners, zero elsewhere) and parameters after AdamW steps with owner-only
 * expert updates match the one-process model, for forms tail and prefix, pre/post-LN,
 * shared/own heads, form ffn (per-block FFN exchange), an expert without rows, a rank without
 * rows (B < P) and non-contiguous placements (round_robin, a list map; the owner map itself:
 * tests/test_placement.c).
 * tests/mpi/test_ccoe_place_mpi.c runs the same cases over real MPI. */
#include <stdio.h>

#include "testutil.h"
#include "fakecomm.h"
#include "place_cases.h"

#include "form.h"
#include "gemm.h"
#include "model.h"

static ccoe_gemm G;

typedef struct run {
    int fails[TU_FAKE_MAX_RANKS];
} run;

static void rank_main(ccoe_comm *comm, void *arg)
{
    run *R = arg;
    R->fails[comm->rank] = tu_place_model_cases(comm, &G);
}

static void test_placement_equivalence(void **state)
{
    (void)state;
    for (int P = 1; P <= 4; P++) {
        run R = {{0}};
        int misuse = tu_fake_run(P, rank_main, &R);
        assert_int_equal(misuse, 0);
        for (int r = 0; r < P; r++)
            if (R.fails[r])
                fail_msg("P = %d rank %d: %d failed checks", P, r, R.fails[r]);
    }
}

static void test_comm_failure(void **state)
{
    (void)state;
    for (int f = 0; f < ccoe_form_count(); f++)
        if (tu_place_comm_failure(&G, ccoe_form_at(f)->id) != 0)
            fail_msg("form %s: failed checks after a failed exchange", ccoe_form_at(f)->name);
}

int main(void)
{
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(&G, CCOE_GEMM_AUTO, 1, &err) != CCOE_OK) {
        fprintf(stderr, "gemm init: %s\n", err.msg);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_placement_equivalence),
        cmocka_unit_test(test_comm_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
