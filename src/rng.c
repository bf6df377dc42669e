/* rng.c - xoshiro256** and a splitmix-based counter hash. */
#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void ccoe_rng_seed(ccoe_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

uint64_t ccoe_rng_u64(ccoe_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float ccoe_rng_uniform(ccoe_rng *r) { return (float)(ccoe_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

uint64_t ccoe_rng_below(ccoe_rng *r, uint64_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
        x = ccoe_rng_u64(r);
    } while (x >= limit);
    return x % n;
}

static float normal_from_bits(uint64_t a, uint64_t b)
{
    /* u1 in (0, 1], u2 in [0, 1): Box-Muller */
    double u1 = ((double)(a >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(b >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

float ccoe_rng_normal(ccoe_rng *r)
{
    uint64_t a = ccoe_rng_u64(r);
    uint64_t b = ccoe_rng_u64(r);
    return normal_from_bits(a, b);
}

uint64_t ccoe_hash4(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t x = seed;
    uint64_t h = splitmix64(&x);
    x = h ^ a;
    h = splitmix64(&x);
    x = h ^ b;
    h = splitmix64(&x);
    x = h ^ c;
    return splitmix64(&x);
}

float ccoe_hash_normal(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t h1 = ccoe_hash4(seed, a, b, c);
    uint64_t h2 = ccoe_hash4(seed ^ 0x5851f42d4c957f2dULL, a, b, c);
    return normal_from_bits(h1, h2);
}

void ccoe_rng_shuffle(ccoe_rng *r, uint32_t *idx, uint64_t n)
{
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = ccoe_rng_below(r, i);
        uint32_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}
