/* safetensors.h - reading and writing safetensors files (F32 tensors + string metadata; F16 and
 * BF16 read as float32, other dtypes as opaque buffers, on request: foreign files to import).
 *
 * Format: 8-byte little-endian header length n, n bytes of JSON header
 *   {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "string", ...}}
 * then the data. ccoe adds metadata key "ccoe.file_crc32" (CRC-32 of the whole file, header
 * included) so any damaged byte is detected. Writing is atomic: an exclusively created temp file
 * in the same directory, fsync, rename; an existing file is never left half-written. Reading
 * validates everything (header length, JSON, dtypes, offsets in range and not overlapping,
 * unique names, file size, checksum) and returns CCOE_ERR_FORMAT with a message naming the file
 * and the problem.
 */
#ifndef CCOE_SAFETENSORS_H
#define CCOE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "status.h"

#define CCOE_ST_MAX_DIMS 4

typedef struct ccoe_st_tensor {
    const char *name;
    int ndim;
    int64_t shape[CCOE_ST_MAX_DIMS];
    const float *data; /* prod(shape) floats */
} ccoe_st_tensor;

/* Writes n tensors and nmeta metadata pairs (meta[2i] key, meta[2i+1] value) atomically. */
ccoe_status ccoe_st_write(const char *path, const ccoe_st_tensor *tensors, size_t n,
                          const char *const *meta, size_t nmeta, ccoe_error *err);

/* The same without ccoe's checksum (metadata only what the caller gives): the plain format
 * other programs write, for exports (Hugging Face's loaders check "format" = "pt"). */
ccoe_status ccoe_st_write_plain(const char *path, const ccoe_st_tensor *tensors, size_t n,
                                const char *const *meta, size_t nmeta, ccoe_error *err);

/* The dtypes the plain writer can store: F32 as given, or each value rounded to nearest (ties
 * to even) into IEEE half or bfloat16 (exports a smaller model; ccoe reads them back widened). */
typedef enum { CCOE_ST_OUT_F32 = 0, CCOE_ST_OUT_F16 = 1, CCOE_ST_OUT_BF16 = 2 } ccoe_st_out_dtype;

/* ccoe_st_write_plain in dtype dt; a finite value the dtype cannot hold (F16 beyond 65504) is
 * refused (CCOE_ERR_NUMERIC naming the tensor) rather than written as Inf. */
ccoe_status ccoe_st_write_plain_as(const char *path, const ccoe_st_tensor *tensors, size_t n,
                                   const char *const *meta, size_t nmeta, ccoe_st_out_dtype dt,
                                   ccoe_error *err);

typedef struct ccoe_st_file ccoe_st_file;

/* Opens and fully validates a file (held in memory until close); a file without the whole-file
 * checksum is an error. */
ccoe_status ccoe_st_open(const char *path, ccoe_st_file **out, ccoe_error *err);

/* The same; with CCOE_ST_ALLOW_UNCHECKED a file without the whole-file checksum (written by
 * another program or an older ccoe) is read, its data checked if it has the older data-only
 * checksum. Only for importing a file the user vouches for. */
#define CCOE_ST_ALLOW_UNCHECKED 1u
/* With CCOE_ST_ALLOW_HALF, F16 and BF16 tensors are read too, converted to float32 at open
 * (exact); lookups return the converted floats and ccoe_st_dtype names the stored dtype. */
#define CCOE_ST_ALLOW_HALF 2u
/* With CCOE_ST_ALLOW_OTHER, tensors of the other safetensors dtypes (F64, integers, BOOL, F8)
 * are accepted and layout-checked but hold no float data: ccoe_st_find returns NULL for them
 * and ccoe_st_dtype names the dtype (a foreign file's non-parameter buffers). */
#define CCOE_ST_ALLOW_OTHER 4u
ccoe_status ccoe_st_open_flags(const char *path, unsigned flags, ccoe_st_file **out,
                               ccoe_error *err);
void ccoe_st_close(ccoe_st_file *f);

/* What the checksum of an open file covered. */
enum { CCOE_ST_CHECK_NONE = 0, CCOE_ST_CHECK_DATA = 1, CCOE_ST_CHECK_FILE = 2 };
int ccoe_st_checked(const ccoe_st_file *f);

size_t ccoe_st_count(const ccoe_st_file *f);
const char *ccoe_st_name(const ccoe_st_file *f, size_t i);

/* Finds a tensor: returns its data (or NULL if absent) and fills ndim/shape if non-NULL. */
const float *ccoe_st_find(const ccoe_st_file *f, const char *name, int *ndim, int64_t *shape);

/* The stored dtype of a tensor ("F32", "F16", "BF16", ...), or NULL if absent. */
const char *ccoe_st_dtype(const ccoe_st_file *f, const char *name);

/* IEEE half and bfloat16 (their bits) to float: exact, Inf and NaN kept. */
float ccoe_f16_to_f32(uint16_t h);
float ccoe_bf16_to_f32(uint16_t h);
/* float to IEEE half / bfloat16, rounded to nearest with ties to even; NaN stays NaN, F16
 * overflows to Inf (the writer refuses it). */
uint16_t ccoe_f32_to_f16(float v);
uint16_t ccoe_f32_to_bf16(float v);

/* Copies tensor `name` into dst after checking it exists and has exactly this shape; the error
 * names the tensor, the expected and the found shape. */
ccoe_status ccoe_st_read_into(const ccoe_st_file *f, const char *name, float *dst, int ndim,
                              const int64_t *shape, ccoe_error *err);

/* Metadata value for key, or NULL; the i-th key (file order), or NULL past the end. */
const char *ccoe_st_meta(const ccoe_st_file *f, const char *key);
size_t ccoe_st_meta_count(const ccoe_st_file *f);
const char *ccoe_st_meta_key(const ccoe_st_file *f, size_t i);

/* 1 for the metadata keys that hold a file's checksum (they differ whenever anything does). */
int ccoe_st_is_checksum_key(const char *key);

/* Atomic whole-file write helper (temp + fsync + rename), shared by other writers. The
 * temporary file is PATH CCOE_TMP_INFIX PID.RANDOM, created exclusively. */
#define CCOE_TMP_INFIX ".tmp."
ccoe_status ccoe_write_file_atomic(const char *path, const void *const *parts,
                                   const size_t *sizes, size_t nparts, ccoe_error *err);

/* Removes the temporary files of path that killed writers left: only regular files (not
 * symlinks) of this user named like the writer's, at least min_age seconds old, whose pid is not
 * a live process here. Says what it removed on log (if non-NULL); returns how many. */
int ccoe_remove_stale_temps(const char *path, double min_age, FILE *log);

#endif
