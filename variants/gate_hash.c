/* gate_hash.c - hash routing (Roller et al. 2021, "Hash Layers For Large Sparse Models"): each
 * token goes to exactly one expert chosen by a fixed hash of its token id. Nothing is learned
 * and nothing depends on the context or the domain: the control that sits between the domain
 * rule (fixed and semantic) and the learned routers (adaptive).
 *
 * The hash: with v the token id, E the experts, b = floor(v / E) the id's block of E
 * consecutive ids and s(b) = splitmix64(b) mod E a per-block shift,
 *
 *     expert(v) = (v mod E + s(b)) mod E.
 *
 * Within a block the map is a cyclic shift, a bijection onto the E experts, so any vocabulary
 * [0, V) is split over the experts with counts that differ by at most one (only the last,
 * partial block is uneven): balanced by construction over the vocabulary. The shift varies
 * from block to block, so experts do not collect ids of one residue class (byte values or
 * frequency ranks that share their low bits). Weight 1, no router parameters, no auxiliary
 * losses, no backward; under expert parallelism every rank computes the same map. The
 * balance is over the vocabulary, not over the tokens of a batch (Zipf's law makes frequent
 * ids dominate), so capacity can still drop tokens when capacity_factor > 0. papers/moe.md,
 * "Hash routing".
 */
#include <assert.h>

#include "gate.h"

/* splitmix64's finaliser (Steele et al. 2014): a fixed bijective mix of the 64-bit block. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int ccoe_gate_hash_expert(int32_t v, int E)
{
    const uint64_t u = (uint64_t)(uint32_t)v, e = (uint64_t)E;
    return (int)((u % e + mix64(u / e) % e) % e);
}

static void hash_forward(int32_t *ids, float *weights, int32_t *kth, const ccoe_gate_args *a)
{
    assert(a->K == 1 && (a->tokens || a->N == 0));
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        assert(a->tokens[n] >= 0);
        ids[n] = ccoe_gate_hash_expert(a->tokens[n], a->E);
        weights[n] = 1.0f;
        if (kth)
            kth[n] = -1;
    }
}

const ccoe_gate_ops ccoe_gate_hash_ops = {
    .name = "hash",
    .help = "fixed hash of the token id -> one expert, weight 1, no router (Roller et al. 2021)",
    .flags = CCOE_GATE_TOKEN | CCOE_GATE_ONE_EXPERT,
    .forward = hash_forward,
    .backward = NULL,
    .load_forward = NULL,
    .load_backward = NULL,
    .ref_weights = NULL,
    .ref_backward = NULL,
    .ref_load = NULL,
    .ref_load_backward = NULL,
};
