/* bytemap.c - the byte-string hash map of bytemap.h (linear probing over entry numbers). */
#include "bytemap.h"

#include <stdlib.h>
#include <string.h>

/* FNV-1a with a final shift, so the low bits used for the slot depend on every byte. */
static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h ^ (h >> 29);
}

void ccoe_bytemap_free(ccoe_bytemap *m)
{
    free(m->slot);
    free(m->off);
    free(m->len);
    free(m->val);
    free(m->pool);
    memset(m, 0, sizeof *m);
}

void ccoe_bytemap_clear(ccoe_bytemap *m)
{
    if (m->slot)
        memset(m->slot, 0, m->cap * sizeof *m->slot);
    m->n = 0;
    m->pool_n = 0;
}

long ccoe_bytemap_find(const ccoe_bytemap *m, const char *k, size_t n)
{
    if (!m->cap)
        return -1;
    for (size_t i = hash_bytes(k, n) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        uint32_t e = m->slot[i];
        if (!e)
            return -1;
        e--;
        if (m->len[e] == n && memcmp(m->pool + m->off[e], k, n) == 0)
            return (long)e;
    }
}

/* Doubles the slot table (at least 1024 slots) and re-inserts every entry. */
static int grow_slots(ccoe_bytemap *m)
{
    size_t cap = m->cap ? 2 * m->cap : 1024;
    uint32_t *slot = calloc(cap, sizeof *slot);
    if (!slot)
        return 0;
    for (size_t e = 0; e < m->n; e++) {
        size_t i = hash_bytes(m->pool + m->off[e], m->len[e]) & (cap - 1);
        while (slot[i])
            i = (i + 1) & (cap - 1);
        slot[i] = (uint32_t)e + 1;
    }
    free(m->slot);
    m->slot = slot;
    m->cap = cap;
    return 1;
}

long ccoe_bytemap_add(ccoe_bytemap *m, const char *k, size_t n, uint64_t v)
{
    if (n > UINT32_MAX || m->n >= UINT32_MAX - 1)
        return -1;
    if (2 * (m->n + 1) > m->cap && !grow_slots(m))
        return -1;
    if (m->n == m->ecap) {
        size_t c = m->ecap ? 2 * m->ecap : 1024;
        uint64_t *o = realloc(m->off, c * sizeof *o);
        if (o)
            m->off = o;
        uint32_t *l = realloc(m->len, c * sizeof *l);
        if (l)
            m->len = l;
        uint64_t *va = realloc(m->val, c * sizeof *va);
        if (va)
            m->val = va;
        if (!o || !l || !va)
            return -1;
        m->ecap = c;
    }
    /* one spare byte, so the pool exists even when every key so far is empty */
    if (m->pool_n + n + 1 > m->pool_cap) {
        size_t c = m->pool_cap ? m->pool_cap : 1 << 16;
        while (c < m->pool_n + n + 1)
            c *= 2;
        char *p = realloc(m->pool, c);
        if (!p)
            return -1;
        m->pool = p;
        m->pool_cap = c;
    }
    memcpy(m->pool + m->pool_n, k, n);
    size_t e = m->n++;
    m->off[e] = m->pool_n;
    m->len[e] = (uint32_t)n;
    m->val[e] = v;
    m->pool_n += n;
    size_t i = hash_bytes(k, n) & (m->cap - 1);
    while (m->slot[i])
        i = (i + 1) & (m->cap - 1);
    m->slot[i] = (uint32_t)e + 1;
    return (long)e;
}
