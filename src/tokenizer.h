/* tokenizer.h - text <-> token ids, behind an ops table so other tokenizers can follow.
 *
 * The default is byte-level: ids 0..255 are bytes, then the specials below. A BPE tokenizer
 * would be a second ccoe_tokenizer_ops with the same contract.
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
} ccoe_tokenizer_ops;

typedef struct ccoe_tokenizer {
    const ccoe_tokenizer_ops *ops;
    void *self;
} ccoe_tokenizer;

extern const ccoe_tokenizer_ops ccoe_byte_tokenizer_ops;

/* Looks a tokenizer up by name ("byte"); error names the allowed values. */
ccoe_status ccoe_tokenizer_init(ccoe_tokenizer *tok, const char *name, ccoe_error *err);
void ccoe_tokenizer_free(ccoe_tokenizer *tok);

#endif
