/* tokenizer.c - the byte-level tokenizer and the tokenizer registry.
 *
 * Byte-level: every byte of the text is its own id (0..255); the specials BOS, EOS, PAD and SEP
 * (256..259) are never produced by encode (the data module inserts them) and decode to nothing.
 * No state, no allocation. The BPE (tokenizer_bpe.c) is chosen by naming a directory.
 */
#include "tokenizer.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

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

ccoe_status ccoe_tokenizer_init(ccoe_tokenizer *tok, const char *name, ccoe_error *err)
{
    tok->ops = NULL;
    tok->self = NULL;
    tok->bos = tok->eos = tok->pad = -1;
    if (name && strcmp(name, "byte") == 0) {
        tok->ops = &ccoe_byte_tokenizer_ops;
        tok->bos = CCOE_TOK_BOS;
        tok->eos = CCOE_TOK_EOS;
        tok->pad = CCOE_TOK_PAD;
        return CCOE_OK;
    }
    struct stat sb;
    const char *why = NULL;
    if (!name || !name[0])
        why = "";
    else if (stat(name, &sb) != 0)
        why = strerror(errno);
    else if (!S_ISDIR(sb.st_mode))
        why = "not a directory";
    if (why)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "unknown tokenizer '%s'%s%s%s: allowed values are byte or a "
                              "directory holding vocab.json + merges.txt (GPT-2) or "
                              "tokenizer.json (Hugging Face; scripts/fetch_gpt2_tokenizer.sh "
                              "makes one)",
                              name ? name : "(null)", why[0] ? " (" : "", why, why[0] ? ")" : "");
    CCOE_TRY(ccoe_bpe_open(&tok->self, name, err));
    tok->ops = &ccoe_bpe_tokenizer_ops;
    tok->bos = tok->eos = tok->pad = ccoe_bpe_eot(tok->self);
    return CCOE_OK;
}

void ccoe_tokenizer_free(ccoe_tokenizer *tok)
{
    if (tok) {
        if (tok->ops && tok->ops->destroy && tok->self)
            tok->ops->destroy(tok->self);
        tok->ops = NULL;
        tok->self = NULL;
    }
}

ccoe_status ccoe_tokenizer_decode(const ccoe_tokenizer *tok, const int32_t *ids, size_t n,
                                  char *out, size_t cap, size_t *len, ccoe_error *err)
{
    const int V = tok->ops->vocab_size(tok->self);
    *len = 0;
    if (cap)
        out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= V ||
            (tok->ops->id_known && !tok->ops->id_known(tok->self, ids[i])))
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "unknown token id %ld at position %zu: the %s tokenizer has "
                                  "no such id (its ids are below %d): were these ids made by "
                                  "another tokenizer?",
                                  (long)ids[i], i, tok->ops->name, V);
    }
    *len = tok->ops->decode(tok->self, ids, n, out, cap);
    return CCOE_OK;
}
