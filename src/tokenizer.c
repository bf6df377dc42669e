/* tokenizer.c - the byte-level tokenizer and the tokenizer registry.
 *
 * Byte-level: every byte of the text is its own id (0..255); the specials BOS, EOS, PAD and SEP
 * (256..259) are never produced by encode (the data module inserts them) and decode to nothing.
 * No state, no allocation. This is not a BPE: a BPE would be a second ops table registered in
 * ccoe_tokenizer_init with the same contract.
 */
#include "tokenizer.h"

#include <string.h>

static int byte_vocab_size(const void *self)
{
    (void)self;
    return CCOE_BYTE_VOCAB;
}

static size_t byte_encode(const void *self, const char *text, size_t len, int32_t *out,
                          size_t cap)
{
    (void)self;
    size_t n = len < cap ? len : cap;
    for (size_t i = 0; i < n; i++)
        out[i] = (int32_t)(unsigned char)text[i];
    return len;
}

static size_t byte_decode(const void *self, const int32_t *ids, size_t n, char *out, size_t cap)
{
    (void)self;
    if (cap == 0)
        return 0;
    size_t w = 0;
    for (size_t i = 0; i < n && w + 1 < cap; i++) {
        if (ids[i] >= 0 && ids[i] < 256)
            out[w++] = (char)(unsigned char)ids[i];
    }
    out[w] = '\0';
    return w;
}

const ccoe_tokenizer_ops ccoe_byte_tokenizer_ops = {
    .name = "byte",
    .vocab_size = byte_vocab_size,
    .encode = byte_encode,
    .decode = byte_decode,
};

static const ccoe_tokenizer_ops *const tokenizer_registry[] = {&ccoe_byte_tokenizer_ops};

ccoe_status ccoe_tokenizer_init(ccoe_tokenizer *tok, const char *name, ccoe_error *err)
{
    tok->ops = NULL;
    tok->self = NULL;
    size_t n = sizeof tokenizer_registry / sizeof tokenizer_registry[0];
    for (size_t i = 0; name && i < n; i++) {
        if (strcmp(name, tokenizer_registry[i]->name) == 0) {
            tok->ops = tokenizer_registry[i];
            return CCOE_OK;
        }
    }
    char allowed[256] = "";
    for (size_t i = 0; i < n; i++) {
        if (i)
            strncat(allowed, ", ", sizeof allowed - strlen(allowed) - 1);
        strncat(allowed, tokenizer_registry[i]->name, sizeof allowed - strlen(allowed) - 1);
    }
    return ccoe_error_set(err, CCOE_ERR_CONFIG, "unknown tokenizer '%s': allowed values are %s",
                          name ? name : "(null)", allowed);
}

void ccoe_tokenizer_free(ccoe_tokenizer *tok)
{
    if (tok) {
        tok->ops = NULL;
        tok->self = NULL;
    }
}
