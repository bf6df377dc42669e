/* tokenizer_train.h - learning a byte-level BPE vocabulary from text (GPT-2's file format).
 *
 * The trainer cuts the special tokens out of the text, splits the rest with the encoder's
 * pre-tokenizer (GPT-2's pattern, tokenizer_bpe.c), counts the unique pre-tokens, then merges
 * pairs of adjacent tokens, most frequent first, until the vocabulary has vocab_size ids or no
 * pair is seen min_frequency times. Ids: 0..255 are the bytes (id = byte value), then the
 * specials in the order given, then the merged tokens in the order they were learned (a merge
 * whose result is already a token reuses its id). The output directory gets vocab.json and
 * merges.txt (GPT-2) and tokenizer.json (Hugging Face), all read by ccoe_tokenizer_init.
 *
 * Ties: of pairs with the same count, the one whose left token's bytes are smallest wins, then
 * the one whose right token's bytes are smallest (bytes compared as unsigned, a prefix before
 * its extensions: Python's bytes order). Training is single-threaded, so the result depends on
 * the input alone (files in the order given), not on the thread count.
 */
#ifndef CCOE_TOKENIZER_TRAIN_H
#define CCOE_TOKENIZER_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

enum {
    CCOE_BPE_TRAIN_MAX_TOKEN = 256 /* longest merged token in bytes (the loader's limit is 512) */
};

typedef struct ccoe_bpe_train_opts {
    int vocab_size;              /* total ids: 256 bytes + specials + merged tokens */
    uint64_t min_frequency;      /* a pair seen fewer times is not merged (at least 1) */
    const char *const *specials; /* (n_specials) added tokens, ids 256.. in this order */
    int n_specials;
} ccoe_bpe_train_opts;

typedef struct ccoe_bpe_train_stats {
    uint64_t bytes;        /* text fed */
    uint64_t pretokens;    /* pre-tokens counted */
    uint64_t unique_words; /* distinct pre-tokens */
    uint64_t specials_cut; /* occurrences of special tokens cut out of the text */
    int n_merges;          /* merges learned */
    int vocab_size;        /* ids in the result (below opts.vocab_size if pairs ran out) */
} ccoe_bpe_train_stats;

typedef struct ccoe_bpe_trainer ccoe_bpe_trainer;

/* Checks the options (vocab_size at least 256 + n_specials, specials non-empty and distinct,
 * min_frequency >= 1); the error names the bad value and the fix. */
ccoe_status ccoe_bpe_trainer_init(ccoe_bpe_trainer **tr, const ccoe_bpe_train_opts *opts,
                                  ccoe_error *err);
/* Counts the pre-tokens of text[0..n) (one document; pre-tokens do not cross calls). */
ccoe_status ccoe_bpe_trainer_feed(ccoe_bpe_trainer *tr, const char *text, size_t n,
                                  ccoe_error *err);
/* Feeds a whole file. */
ccoe_status ccoe_bpe_trainer_feed_file(ccoe_bpe_trainer *tr, const char *path, ccoe_error *err);
/* Learns the merges (once, after the last feed); stats may be NULL. */
ccoe_status ccoe_bpe_trainer_run(ccoe_bpe_trainer *tr, ccoe_bpe_train_stats *stats,
                                 ccoe_error *err);
/* Writes vocab.json, merges.txt and tokenizer.json into dir (created if missing); each file
 * appears whole or not at all (written aside, then renamed). */
ccoe_status ccoe_bpe_trainer_write(const ccoe_bpe_trainer *tr, const char *dir, ccoe_error *err);
void ccoe_bpe_trainer_free(ccoe_bpe_trainer *tr);

#endif
