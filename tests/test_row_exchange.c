/* test_row_exchange.c - the row exchange of CCoE expert placement (src/row_exchange.h) alone,
 * on 1-4 fake ranks (tests/util/fakecomm.c): every rank's rows of remote-computed paths reach
 * their rank in the documented order (by path in the caller's order, then source rank, then
 * the source's row order) and form one group per path; the plan's total is the same on every
 * rank; the reverse exchange adds what the owners computed into the rows they came from and
 * leaves the other rows alone; a change of payload (reunit) keeps the rows; bytes count only
 * what leaves the rank; a failed count zeroes the counts. */
#include <stdio.h>
#include <stdlib.h>

#include "testutil.h"
#include "fakecomm.h"

#include "comm.h"
#include "row_exchange.h"

#define NP 4          /* paths: 0 stays local, 1.. go to rank (p + shift) mod P */
#define MAXB 8        /* local rows of any rank */
#define U 3           /* floats per row */

static const int k_order[NP] = {0, 3, 1, 2};

/* rank q's rows of path p: 0..2 (some ranks have none of a path) */
static int count_of(int q, int p) { return (q + 2 * p) % 3; }

static int rows_of(int q)
{
    int n = 0;
    for (int p = 0; p < NP; p++)
        n += count_of(q, p);
    return n;
}

/* a rank's rows are sorted by path in k_order, as the model sorts its batch */
static int path_of(int q, int r)
{
    for (int oi = 0; oi < NP; oi++) {
        r -= count_of(q, k_order[oi]);
        if (r < 0)
            return k_order[oi];
    }
    return -1;
}

/* the computing rank of path p on P ranks, -1 = local; every rank agrees */
static int dest_of(int p, int P) { return p == 0 ? -1 : (p + 1) % P; }

static float value(int rank, int r, int j) { return (float)(rank * 1000 + r * 10 + j); }

typedef struct result {
    int fails[TU_FAKE_MAX_RANKS];
    long total[TU_FAKE_MAX_RANKS];
} result;

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "[rank %d of %d] %s:%d: check failed: %s\n", me, P, __FILE__,     \
                    __LINE__, #cond);                                                        \
            fails++;                                                                         \
        }                                                                                    \
    } while (0)

static void rank_main(ccoe_comm *comm, void *arg)
{
    result *res = arg;
    const int P = comm->size, me = comm->rank, B = rows_of(me);
    int fails = 0;
    int maxrecv = 0;
    for (int q = 0; q < P; q++)
        maxrecv += rows_of(q);
    ccoe_row_exchange x;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_row_exchange_init(&x, P, me, NP, MAXB, maxrecv, U, &err) != CCOE_OK) {
        res->fails[me] = 1;
        return;
    }
    int row_path[MAXB], dest[NP];
    for (int r = 0; r < B; r++)
        row_path[r] = path_of(me, r);
    for (int p = 0; p < NP; p++)
        dest[p] = dest_of(p, P);
    CHECK(ccoe_row_exchange_count(&x, comm, row_path, B, &err) == CCOE_OK);
    for (int q = 0; q < P; q++)
        for (int p = 0; p < NP; p++) {
            int n = 0;
            for (int r = 0; r < rows_of(q); r++)
                n += path_of(q, r) == p;
            CHECK(x.counts[q * NP + p] == n);
        }
    int gpath[NP], gr0[NP], gr1[NP];
    const long total = ccoe_row_exchange_plan(&x, dest, k_order, row_path, B, U, gpath, gr0, gr1);
    res->total[me] = total;
    /* buffer rows: B local, then what arrives */
    float *buf = calloc((size_t)(MAXB + maxrecv) * U, sizeof(float));
    for (int r = 0; r < B; r++)
        for (int j = 0; j < U; j++)
            buf[r * U + j] = value(me, r, j);
    ccoe_row_exchange_gather(&x, CCOE_ROWS_SENT, buf, U);
    x.bytes = 0;
    CHECK(ccoe_row_exchange_run(&x, comm, 0, &err) == CCOE_OK);
    uint64_t remote = 0;
    for (int r = 0; r < B; r++)
        remote += dest[row_path[r]] >= 0 && dest[row_path[r]] != me;
    CHECK(x.bytes == remote * U * sizeof(float));
    ccoe_row_exchange_scatter(&x, CCOE_ROWS_RECEIVED, 0, buf, U);
    /* the expected arrival order: paths in k_order with this rank as destination, then source
     * ranks, then the source's rows */
    int row = B, ng = 0;
    for (int oi = 0; oi < NP; oi++) {
        const int p = k_order[oi];
        if (dest[p] != me)
            continue;
        const int g0 = row;
        for (int q = 0; q < P; q++)
            for (int r = 0; r < rows_of(q); r++)
                if (path_of(q, r) == p) {
                    for (int j = 0; j < U; j++)
                        CHECK(buf[row * U + j] == value(q, r, j));
                    row++;
                }
        if (row > g0) {
            CHECK(ng < x.n_rgroups && gpath[ng] == p && gr0[ng] == g0 && gr1[ng] == row);
            ng++;
        }
    }
    CHECK(x.R == row - B && x.n_rgroups == ng && x.B == B);
    /* the owners compute 2 x + 1 on what they received; the results are added at the origin
     * (0.5 everywhere first), two floats per row after a change of payload */
    for (int i = B; i < row; i++)
        for (int j = 0; j < U; j++)
            buf[i * U + j] = 2.0f * buf[i * U + j] + 1.0f;
    float *two = calloc((size_t)(MAXB + maxrecv) * 2, sizeof(float));
    for (int i = 0; i < MAXB + maxrecv; i++)
        for (int j = 0; j < 2; j++)
            two[i * 2 + j] = i < B ? 0.5f : buf[i * U + j];
    ccoe_row_exchange_reunit(&x, U, 2);
    ccoe_row_exchange_gather(&x, CCOE_ROWS_RECEIVED, two, 2);
    CHECK(ccoe_row_exchange_run(&x, comm, 1, &err) == CCOE_OK);
    ccoe_row_exchange_scatter(&x, CCOE_ROWS_SENT, 1, two, 2);
    for (int r = 0; r < B; r++)
        for (int j = 0; j < 2; j++) {
            const float want = dest[row_path[r]] >= 0 ? 0.5f + 2.0f * value(me, r, j) + 1.0f
                                                      : 0.5f;
            CHECK(two[r * 2 + j] == want);
        }
    free(two);
    free(buf);
    ccoe_row_exchange_free(&x);
    res->fails[me] = fails;
}

static void test_exchange_on_fake_ranks(void **state)
{
    (void)state;
    for (int P = 1; P <= 4; P++) {
        result res = {{0}, {0}};
        assert_int_equal(tu_fake_run(P, rank_main, &res), 0);
        long want = 0;
        for (int q = 0; q < P; q++)
            for (int r = 0; r < rows_of(q); r++)
                want += dest_of(path_of(q, r), P) >= 0;
        for (int q = 0; q < P; q++) {
            if (res.fails[q])
                fail_msg("P = %d rank %d: %d failed checks", P, q, res.fails[q]);
            assert_int_equal(res.total[q], want);
        }
    }
}

static ccoe_status failing_allgather(ccoe_comm *c, const void *send, void *recv, size_t n,
                                     ccoe_error *err)
{
    (void)c, (void)send, (void)recv, (void)n;
    return ccoe_error_set(err, CCOE_ERR_COMM, "injected allgather failure");
}

/* A failed count: the error comes back and every count is zero, so a plan receives nothing. */
static void test_failed_count(void **state)
{
    (void)state;
    ccoe_comm serial;
    ccoe_comm_serial(&serial);
    ccoe_comm_ops ops = *serial.ops;
    ops.allgather = failing_allgather;
    serial.ops = &ops;
    ccoe_row_exchange x;
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_row_exchange_init(&x, 1, 0, NP, MAXB, MAXB, U, &err), CCOE_OK);
    int row_path[MAXB] = {1, 1, 2, 0, 3};
    for (int i = 0; i < NP; i++)
        x.counts[i] = 7;
    assert_int_equal(ccoe_row_exchange_count(&x, &serial, row_path, 5, &err), CCOE_ERR_COMM);
    TU_ASSERT_MSG_HAS(err, "injected allgather");
    for (int i = 0; i < NP; i++)
        assert_int_equal(x.counts[i], 0);
    const int dest[NP] = {-1, 0, 0, 0};
    int gp[NP], g0[NP], g1[NP];
    /* the rows of remote-computed paths are still sent (to this rank) but none arrive */
    assert_int_equal(ccoe_row_exchange_plan(&x, dest, k_order, row_path, 5, U, gp, g0, g1), 0);
    assert_int_equal(x.R, 0);
    assert_int_equal(x.n_rgroups, 0);
    assert_int_equal(x.nsend, 4);
    ccoe_row_exchange_free(&x);
}

/* Bad sizes are refused (an internal error naming them), nothing allocated. */
static void test_bad_init(void **state)
{
    (void)state;
    ccoe_row_exchange x;
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_row_exchange_init(&x, 2, 2, NP, 1, 1, U, &err), CCOE_ERR_INTERNAL);
    TU_ASSERT_MSG_HAS(err, "rank 2");
    assert_null(x.send);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exchange_on_fake_ranks),
        cmocka_unit_test(test_failed_count),
        cmocka_unit_test(test_bad_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
