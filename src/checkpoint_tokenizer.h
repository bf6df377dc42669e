/* checkpoint_tokenizer.h - the tokenizer a checkpoint was trained with travels in it.
 *
 * A checkpoint's metadata records the tokenizer data.tokenizer named when it was written:
 *   ccoe.tokenizer.kind  = byte | bpe
 *   ccoe.tokenizer.path  = data.tokenizer as it was ("byte" or the directory)
 *   ccoe.tokenizer.hash  = FNV-1a 64 (16 hex digits) of the files (bpe; "-" for byte)
 *   ccoe.tokenizer.files = the file names, space separated, in canonical (sorted) order
 *   ccoe.tokenizer.file.NAME = each file's text (so the checkpoint is self-contained)
 * The files are those the loader reads (tokenizer_bpe.c): tokenizer.json if the directory has
 * one, else merges.txt and vocab.json. The hash runs over them in that order: for each, its
 * name, a NUL byte, its length as 8 little-endian bytes, then its bytes.
 *
 * Opening a checkpoint (ccoe_checkpoint_open) resolves the record: when the recorded directory
 * is gone or holds other files, the embedded files are unpacked into the cache
 * (CACHE/tokenizers/HASH, CACHE = $CCOE_CACHE_DIR, else $XDG_CACHE_HOME/ccoe, else
 * ~/.cache/ccoe) and the config's data.tokenizer names that copy. A checkpoint without the
 * record (an older ccoe) is left as it is: its data.tokenizer, byte-level for those runs.
 */
#ifndef CCOE_CHECKPOINT_TOKENIZER_H
#define CCOE_CHECKPOINT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "safetensors.h"
#include "status.h"

enum { CCOE_TOK_MAX_FILES = 3 };

/* The record of one tokenizer: what is written into a checkpoint. */
typedef struct ccoe_tok_record {
    char kind[8];  /* "byte" or "bpe" */
    char path[CCOE_STR];
    uint64_t hash; /* 0 for byte */
    char hash_hex[20];
    int n_files;
    char names[CCOE_TOK_MAX_FILES][32];      /* canonical order */
    char *text[CCOE_TOK_MAX_FILES];          /* (len[i] + 1) each, NUL-terminated */
    size_t len[CCOE_TOK_MAX_FILES];
    char files[128];                         /* the names, space separated */
    char keys[CCOE_TOK_MAX_FILES][64];       /* "ccoe.tokenizer.file.NAME" */
} ccoe_tok_record;

/* Reads the record of tokenizer (data.tokenizer: "byte" or a directory); the files must be
 * UTF-8 text without NUL bytes (JSON and merges files are). Free with ccoe_tok_record_free. */
ccoe_status ccoe_tok_record_read(ccoe_tok_record *r, const char *tokenizer, ccoe_error *err);
void ccoe_tok_record_free(ccoe_tok_record *r);

/* Writes the record's metadata pairs (key, value) to meta (room for cap pairs); returns how
 * many (at most 4 + CCOE_TOK_MAX_FILES). The strings point into r. */
size_t ccoe_tok_record_meta(const ccoe_tok_record *r, const char **meta, size_t cap);

/* The directory a checkpoint's data.tokenizer names, into out: a relative path as given
 * (relative to the working directory) if it is a directory there, else relative to the
 * directory of the checkpoint ckpt_path (where `ccoe import` puts it: BASE.tokenizer next to
 * BASE.safetensors, recorded as "BASE.tokenizer") if it is one there; "byte", absolute paths
 * and paths found nowhere unchanged. */
void ccoe_tok_locate(const char *tokenizer, const char *ckpt_path, char *out, size_t cap);

/* After a checkpoint's config is read: a relative cfg->data.tokenizer found only next to the
 * checkpoint (ccoe_tok_locate) becomes that directory's absolute path; then, if it records a
 * BPE whose directory cfg->data.tokenizer is missing or differs (by hash), unpacks the embedded files into the cache and points
 * cfg->data.tokenizer there (saying so on log if non-NULL). No record: nothing changes. */
ccoe_status ccoe_ckpt_tok_resolve(const ccoe_st_file *f, const char *path, ccoe_config *cfg,
                                  FILE *log, ccoe_error *err);

/* Whether tokenizer (the data.tokenizer of the run about to use checkpoint path) is the one the
 * checkpoint was trained with: same kind and, for a BPE, the same files (hash); the recorded
 * path itself is accepted when it is gone (ccoe_ckpt_tok_resolve unpacked a copy). A mismatch
 * is CCOE_ERR_CONFIG naming both (paths, kinds, hashes) and the fix. No record: accepted. */
ccoe_status ccoe_ckpt_tok_check(const ccoe_st_file *f, const char *path, const char *tokenizer,
                                ccoe_error *err);

/* One line describing the record of f ("bpe tokenizer.json from runs/tok, hash ..."). */
void ccoe_ckpt_tok_describe(const ccoe_st_file *f, char *buf, size_t cap);

/* The cache directory ($CCOE_CACHE_DIR, $XDG_CACHE_HOME/ccoe or $HOME/.cache/ccoe). */
ccoe_status ccoe_cache_dir(char *out, size_t cap, ccoe_error *err);

#endif
