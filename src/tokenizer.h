/* tokenizer.h - text <-> token ids, behind an ops table.
 *
 * Two tokenizers: "byte" (ids 0..255 are bytes, then the specials below) and a byte-level BPE
 * read from a directory (GPT-2's vocab.json + merges.txt, or a Hugging Face tokenizer.json;
 * tokenizer_bpe.c). Each fills the same ops table; the ids the data module inserts (BOS, EOS,
 * PAD) are the tokenizer's own, in ccoe_tokenizer.
 */
#ifndef CCOE_TOKENIZER_H
#define CCOE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

enum {
    CCOE_TOK_BOS = 256, /* start of a document */
    CCOE_TOK_EOS = 257, /* end of a document */
    CCOE_TOK_PAD = 258,
    CCOE_TOK_SEP = 259,
    CCOE_BYTE_VOCAB = 260
};

typedef struct ccoe_tokenizer_ops {
    const char *name;
    /* Number of ids this tokenizer produces (ids are 0..vocab_size-1). */
    int (*vocab_size)(const void *self);
    /* Encodes len bytes of text into out (at most cap ids); returns the number of ids the full
     * encoding needs (may exceed cap, then only cap were written). */
    size_t (*encode)(const void *self, const char *text, size_t len, int32_t *out, size_t cap);
    /* Decodes n ids into out (at most cap-1 bytes, NUL-terminated); specials decode to nothing.
     * Returns the number of bytes written. */
    size_t (*decode)(const void *self, const int32_t *ids, size_t n, char *out, size_t cap);
    /* Optional (NULL: every id below vocab_size is known): whether id names a token. */
    int (*id_known)(const void *self, int32_t id);
    /* Optional (NULL: no state): frees self. */
    void (*destroy)(void *self);
} ccoe_tokenizer_ops;

typedef struct ccoe_tokenizer {
    const ccoe_tokenizer_ops *ops;
    void *self;
    /* the ids the data module and generation insert: the byte tokenizer's CCOE_TOK_BOS/EOS/PAD;
     * a BPE's end-of-text token (GPT-2's <|endoftext|>) for all three, -1 if it has none */
    int32_t bos, eos, pad;
} ccoe_tokenizer;

extern const ccoe_tokenizer_ops ccoe_byte_tokenizer_ops;
extern const ccoe_tokenizer_ops ccoe_bpe_tokenizer_ops;

/* Opens a tokenizer: "byte", or a directory holding vocab.json + merges.txt or tokenizer.json
 * (a byte-level BPE). The error names the allowed values, or the bad file and the fix. */
ccoe_status ccoe_tokenizer_init(ccoe_tokenizer *tok, const char *name, ccoe_error *err);
void ccoe_tokenizer_free(ccoe_tokenizer *tok);

/* Decodes n ids like ops->decode (at most cap-1 bytes to out, NUL-terminated; *len = bytes
 * written) but first checks every id: an unknown id is an error naming it and its position. */
ccoe_status ccoe_tokenizer_decode(const ccoe_tokenizer *tok, const int32_t *ids, size_t n,
                                  char *out, size_t cap, size_t *len, ccoe_error *err);

/* Reads a BPE tokenizer from dir (vocab.json + merges.txt, else tokenizer.json); *self is
 * freed with ccoe_bpe_tokenizer_ops.destroy. Used by ccoe_tokenizer_init. */
ccoe_status ccoe_bpe_open(void **self, const char *dir, ccoe_error *err);
/* The end-of-text id of an opened BPE (-1 if none). */
int32_t ccoe_bpe_eot(const void *self);

/* GPT-2's bytes-to-unicode alphabet: cp_of[b] is the code point that stands for byte b in
 * vocab.json and merges.txt. */
void ccoe_bpe_byte_alphabet(int cp_of[256]);

/* The encoder's pre-tokenizer alone (PCRE2, UTF + UCP): pattern NULL is GPT-2's. split calls fn
 * on each pre-token of text[0..n) in order (regex matches; each run of bytes that are not UTF-8
 * as one pre-token); special tokens are not cut out (the caller does that). Not thread-safe:
 * one per thread. */
typedef struct ccoe_pretok ccoe_pretok;
ccoe_status ccoe_pretok_init(ccoe_pretok **p, const char *pattern, ccoe_error *err);
void ccoe_pretok_split(ccoe_pretok *p, const char *text, size_t n,
                       void (*fn)(void *ctx, const char *w, size_t n), void *ctx);
void ccoe_pretok_free(ccoe_pretok *p);

#endif
