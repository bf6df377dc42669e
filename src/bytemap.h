/* bytemap.h - an open-addressing hash map from byte strings to 64-bit values, and the hash of an
 * (id, id) pair, shared by the BPE tokenizer (vocabulary, encode cache, merge table) and the BPE
 * trainer (word counts, token map, pair index).
 *
 * Entries are numbered 0, 1, ... in insertion order and never move, so callers may keep entry
 * numbers and iterate over keys/values by entry (deterministic whatever the table size). Keys are
 * copied into one pool; the map owns all its memory. Not thread-safe.
 */
#ifndef CCOE_BYTEMAP_H
#define CCOE_BYTEMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct ccoe_bytemap {
    uint32_t *slot;  /* (cap) entry + 1; 0 = empty */
    size_t cap;      /* power of two, at least twice n (0 before the first insert) */
    uint64_t *off;   /* (n) key offset in pool */
    uint32_t *len;   /* (n) key length */
    uint64_t *val;   /* (n) value of each entry */
    size_t n, ecap;  /* entries used, entries allocated */
    char *pool;      /* keys, back to back */
    size_t pool_n, pool_cap;
} ccoe_bytemap;

/* Frees everything; the map is empty and usable again. */
void ccoe_bytemap_free(ccoe_bytemap *m);

/* Removes every entry, keeping the memory. */
void ccoe_bytemap_clear(ccoe_bytemap *m);

/* The entry of key k[0..n), or -1. */
long ccoe_bytemap_find(const ccoe_bytemap *m, const char *k, size_t n);

/* Adds key k[0..n), which must be absent, with value v; returns its entry, -1 when out of memory
 * (the map is unchanged then). */
long ccoe_bytemap_add(ccoe_bytemap *m, const char *k, size_t n, uint64_t v);

/* The key of entry e. */
static inline const char *ccoe_bytemap_key(const ccoe_bytemap *m, size_t e)
{
    return m->pool + m->off[e];
}

/* The key of an ordered pair of token ids, and its home slot in a power-of-two table (a 64-bit
 * finaliser, so neighbouring ids spread). */
static inline uint64_t ccoe_pair_key(int32_t a, int32_t b)
{
    return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

static inline size_t ccoe_pair_slot(uint64_t k, size_t cap)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k & (cap - 1);
}

#endif
