/* safetensors.c - F32 safetensors files: an atomic writer and a fully validating reader.
 *
 * Layout (https://github.com/huggingface/safetensors): 8-byte little-endian header length n,
 * n bytes of JSON (padded with spaces so the data starts at a multiple of 8, as the reference
 * implementation does), then the tensors' little-endian bytes, back to back. The JSON maps each
 * tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
 * section) and "__metadata__" to string pairs. ccoe adds "ccoe.file_crc32": the zlib CRC-32, in
 * 8 lowercase hex digits, of the whole file as written with those 8 digits set to '0' - so the
 * length field, the header (every tensor's shape and offsets, every metadata value) and the data
 * are all covered. ccoe_st_open refuses a file without it; ccoe_st_open_flags with
 * CCOE_ST_ALLOW_UNCHECKED reads foreign files (Python's safetensors writes none) and those of
 * older ccoe versions, which carried "ccoe.crc32" over the data section only (still checked).
 *
 * What this is not: a general safetensors library. F32 is written (plain exports also F16 and
 * BF16, rounded to nearest even); F32 is read, and with
 * CCOE_ST_ALLOW_HALF also F16 and BF16 (converted to float32 once, at open, exactly: every half
 * value is a float). At most CCOE_ST_MAX_DIMS dimensions; the whole file is held in memory while
 * open.
 */
#define _GNU_SOURCE /* memmem */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <zlib.h>

#include "fs.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors data is little-endian; this build assumes a little-endian host");
_Static_assert(sizeof(float) == 4, "F32 is a 4-byte IEEE float");

#define ST_MAX_HEADER ((uint64_t)100000000) /* the reference implementation's limit */
#define ST_CRC_KEY "ccoe.crc32"           /* older files: CRC-32 of the data section, decimal */
#define ST_FILE_CRC_KEY "ccoe.file_crc32" /* CRC-32 of the whole file, 8 hex digits */
#define ST_FILE_CRC_FIELD "\"" ST_FILE_CRC_KEY "\":\"" /* how the writer spells it */
#define ST_CRC_HEX 8
#define ST_FIX "the file is corrupt or truncated: use an earlier checkpoint (or rewrite the file)"

typedef struct st_entry {
    char *name;
    int ndim;
    int64_t shape[CCOE_ST_MAX_DIMS];
    uint64_t begin, end; /* byte offsets in the data section */
    int dtype;           /* ST_F32, ST_F16, ST_BF16 */
    size_t conv;         /* half dtypes: float offset of the converted values in conv_buf */
} st_entry;

/* F32, the half dtypes (CCOE_ST_ALLOW_HALF), then the others (CCOE_ST_ALLOW_OTHER: indexed
 * and checked for layout, never converted) */
enum { ST_F32 = 0, ST_F16 = 1, ST_BF16 = 2, ST_N_FLOAT = 3, ST_N_DTYPES = 15 };
static const char *const st_dtype_names[ST_N_DTYPES] = {
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
    "F8_E4M3", "F8_E5M2"};
static const int st_dtype_bytes[ST_N_DTYPES] = {4, 2, 2, 8, 8, 4, 2, 1, 8, 4, 2, 1, 1, 1, 1};

struct ccoe_st_file {
    char *path;
    unsigned char *buf;         /* the whole file */
    size_t size;
    const unsigned char *data;  /* data section (inside buf, or data_copy if misaligned) */
    size_t data_len;
    unsigned char *data_copy;
    st_entry *t;
    size_t n;
    char **meta; /* key, value, key, value, ... */
    size_t nmeta;
    const st_entry **by_name; /* the tensors sorted by name: lookup and the duplicate check */
    int checked;     /* CCOE_ST_CHECK_FILE, _DATA or _NONE */
    float *conv_buf; /* the F16/BF16 tensors converted to float32 (CCOE_ST_ALLOW_HALF) */
};

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 */

/* Continues CRC-32 `crc` over p[0..n). */
static uint32_t crc32_more(uint32_t crc_in, const unsigned char *p, size_t n)
{
    uLong crc = crc_in;
    while (n > 0) {
        uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = crc32(crc, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return (uint32_t)crc;
}

static uint32_t crc32_of(const unsigned char *p, size_t n)
{
    return crc32_more((uint32_t)crc32(0L, Z_NULL, 0), p, n);
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* "(2, 3)"; "()" for a scalar */
static void fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < ndim && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (used < cap)
        snprintf(buf + used, cap - used, ")");
}

__attribute__((format(printf, 3, 4))) static ccoe_status corrupt(ccoe_error *err, const char *path,
                                                                 const char *fmt, ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ccoe_error_set(err, CCOE_ERR_FORMAT, "safetensors file '%s': %s; " ST_FIX, path, msg);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* ---------------------------------------------------------------------------------------------
 * Atomic write
 */

static ccoe_status write_all(int fd, const void *data, size_t n, const char *path, ccoe_error *err)
{
    const unsigned char *p = data;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            return ccoe_error_set(err, CCOE_ERR_IO, "cannot write '%s': %s%s", path, strerror(e),
                                  e == ENOSPC ? "; free disk space or choose another directory"
                                              : "");
        }
        p += w;
        n -= (size_t)w;
    }
    return CCOE_OK;
}

/* The directory part of path ("." for a bare name); returns the file name part. */
static const char *split_dir(const char *path, char *dir, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, cap, ".");
    else if (slash == path)
        snprintf(dir, cap, "/");
    else
        snprintf(dir, cap, "%.*s", (int)(slash - path), path);
    return slash ? slash + 1 : path;
}

/* fsync the directory holding path so the rename itself is durable. */
static ccoe_status sync_dir_of(const char *path, ccoe_error *err)
{
    char dir[PATH_MAX];
    split_dir(path, dir, sizeof dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return CCOE_OK; /* the file is in place; some systems do not let us open the directory */
    int r = fsync(fd);
    int e = errno;
    close(fd);
    if (r != 0 && e == EIO)
        return ccoe_error_set(err, CCOE_ERR_IO,
                              "wrote '%s' but syncing its directory failed (%s): the disk may be "
                              "failing",
                              path, strerror(e));
    return CCOE_OK; /* EINVAL etc.: the file system does not sync directories */
}

/* 64 unpredictable bits for a temporary name (getrandom; the clock and pid if it fails). */
static uint64_t random_word(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) == (ssize_t)sizeof v)
        return v;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 16);
}

/* The temporary file is "PATH.tmp.PID.RANDOM", created with O_EXCL | O_NOFOLLOW: a file or
 * symlink planted under a predictable name cannot redirect the write, and processes (ranks)
 * never collide. Two threads of one process must not write the same path at the same time. */
ccoe_status ccoe_write_file_atomic(const char *path, const void *const *parts,
                                   const size_t *sizes, size_t nparts, ccoe_error *err)
{
    char tmp[PATH_MAX];
    int fd = -1;
    for (int attempt = 0; attempt < 16 && fd < 0; attempt++) {
        int w = snprintf(tmp, sizeof tmp, "%s" CCOE_TMP_INFIX "%ld.%016" PRIx64, path,
                         (long)getpid(), random_word());
        if (w < 0 || (size_t)w >= sizeof tmp)
            return ccoe_error_set(err, CCOE_ERR_IO, "cannot write '%s': the path is too long",
                                  path);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0) {
        int e = errno;
        return ccoe_error_set(err, CCOE_ERR_IO,
                              "cannot write '%s' (creating temporary file '%s': %s); check that "
                              "the directory exists and is writable",
                              path, tmp, strerror(e));
    }
    ccoe_status st = CCOE_OK;
    for (size_t i = 0; i < nparts && st == CCOE_OK; i++)
        if (sizes[i] > 0)
            st = write_all(fd, parts[i], sizes[i], path, err);
    if (st == CCOE_OK && fsync(fd) != 0) {
        int e = errno;
        st = ccoe_error_set(err, CCOE_ERR_IO, "cannot write '%s' (fsync: %s)%s", path,
                            strerror(e),
                            e == ENOSPC ? "; free disk space or choose another directory" : "");
    }
    if (close(fd) != 0 && st == CCOE_OK) {
        int e = errno;
        st = ccoe_error_set(err, CCOE_ERR_IO, "cannot write '%s' (close: %s)", path, strerror(e));
    }
    if (st == CCOE_OK && rename(tmp, path) != 0) {
        int e = errno;
        st = ccoe_error_set(err, CCOE_ERR_IO,
                            "cannot write '%s' (renaming '%s' into place: %s)%s", path, tmp,
                            strerror(e),
                            e == EISDIR ? "; the path is a directory: choose a file name" : "");
    }
    if (st != CCOE_OK) {
        unlink(tmp);
        return st;
    }
    return sync_dir_of(path, err);
}

/* "PID.HEX16" (this version) or "PID" (older ones): the pid, or -1 if the tail is neither. */
static long tmp_owner_pid(const char *tail)
{
    char *end = NULL;
    if (*tail < '1' || *tail > '9')
        return -1;
    errno = 0;
    long pid = strtol(tail, &end, 10);
    if (errno || pid <= 0 || pid > INT_MAX) /* not a pid_t: not a name the writer makes */
        return -1;
    if (*end == '\0')
        return pid;
    if (*end != '.' || strlen(end + 1) != 16)
        return -1;
    for (const char *h = end + 1; *h; h++)
        if (!((*h >= '0' && *h <= '9') || (*h >= 'a' && *h <= 'f')))
            return -1;
    return pid;
}

int ccoe_remove_stale_temps(const char *path, double min_age, FILE *log)
{
    char dir[PATH_MAX];
    const char *base = split_dir(path, dir, sizeof dir);
    char prefix[NAME_MAX + 16];
    int plen = snprintf(prefix, sizeof prefix, "%s" CCOE_TMP_INFIX, base);
    if (plen < 0 || (size_t)plen >= sizeof prefix || !*base)
        return 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0)
            close(dfd);
        return 0;
    }
    int removed = 0;
    time_t now = time(NULL);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, prefix, (size_t)plen) != 0)
            continue;
        long pid = tmp_owner_pid(de->d_name + plen);
        struct stat sb;
        if (pid <= 0 || pid == (long)getpid() ||
            fstatat(dfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode) ||
            sb.st_uid != geteuid() || difftime(now, sb.st_mtime) < min_age)
            continue;
        /* a live process of that pid on this machine may still be writing it */
        if (kill((pid_t)pid, 0) == 0 || errno == EPERM)
            continue;
        if (unlinkat(dfd, de->d_name, 0) == 0) {
            removed++;
            if (log)
                fprintf(log,
                        "removed %s/%s (%.1f MiB), a temporary file a killed run left behind\n",
                        dir, de->d_name, (double)sb.st_size / (1024.0 * 1024.0));
        }
    }
    closedir(d);
    return removed;
}

/* ---------------------------------------------------------------------------------------------
 * Writing safetensors
 */

static ccoe_status check_tensor_arg(const ccoe_st_tensor *t, size_t i, uint64_t *bytes,
                                    const char *path, ccoe_error *err)
{
    if (!t->name || !*t->name)
        return ccoe_error_set(err, CCOE_ERR_ARG, "writing '%s': tensor %zu has no name", path, i);
    if (strcmp(t->name, "__metadata__") == 0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "writing '%s': a tensor cannot be named \"__metadata__\"", path);
    if (t->ndim < 0 || t->ndim > CCOE_ST_MAX_DIMS)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "writing '%s': tensor '%s' has %d dimensions; 0..%d are supported",
                              path, t->name, t->ndim, CCOE_ST_MAX_DIMS);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0 || (uint64_t)t->shape[d] > ((uint64_t)1 << 53))
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "writing '%s': tensor '%s' has dimension %d = %" PRId64, path,
                                  t->name, d, t->shape[d]);
        if (t->shape[d] && numel > ((uint64_t)1 << 53) / (uint64_t)t->shape[d])
            return ccoe_error_set(err, CCOE_ERR_ARG, "writing '%s': tensor '%s' is too large",
                                  path, t->name);
        numel *= (uint64_t)t->shape[d];
    }
    if (numel > 0 && !t->data)
        return ccoe_error_set(err, CCOE_ERR_ARG, "writing '%s': tensor '%s' has no data", path,
                              t->name);
    *bytes = numel * 4; /* F32; st_write scales it for 16-bit dtypes */
    return CCOE_OK;
}

/* Adds the number v (an integer below 2^53, exact in a double) to a JSON array. */
static int add_int(cJSON *arr, uint64_t v)
{
    cJSON *num = cJSON_CreateNumber((double)v);
    if (num && cJSON_AddItemToArray(arr, num))
        return 1;
    cJSON_Delete(num);
    return 0;
}

static ccoe_status st_write(const char *path, const ccoe_st_tensor *tensors, size_t n,
                            const char *const *meta, size_t nmeta, int with_crc,
                            ccoe_st_out_dtype dt, ccoe_error *err)
{
    static const char *const dt_name[] = {"F32", "F16", "BF16"};
    const unsigned elsize = dt == CCOE_ST_OUT_F32 ? 4 : 2;
    uint64_t *bytes = calloc(n ? n : 1, sizeof *bytes);
    if (!bytes)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "writing '%s': out of memory", path);
    ccoe_status st = CCOE_OK;
    for (size_t i = 0; i < n && st == CCOE_OK; i++) {
        st = check_tensor_arg(&tensors[i], i, &bytes[i], path, err);
        bytes[i] = bytes[i] / 4 * elsize;
        for (size_t j = 0; j < i && st == CCOE_OK; j++)
            if (strcmp(tensors[i].name, tensors[j].name) == 0)
                st = ccoe_error_set(err, CCOE_ERR_ARG, "writing '%s': tensor name '%s' is used twice",
                                    path, tensors[i].name);
    }
    for (size_t i = 0; i < nmeta && st == CCOE_OK; i++) {
        if (!meta[2 * i] || !meta[2 * i + 1])
            st = ccoe_error_set(err, CCOE_ERR_ARG, "writing '%s': metadata pair %zu has a NULL",
                                path, i);
        else if (strcmp(meta[2 * i], ST_CRC_KEY) == 0 || strstr(meta[2 * i], ST_FILE_CRC_KEY))
            st = ccoe_error_set(err, CCOE_ERR_ARG,
                                "writing '%s': metadata key \"%s\" is reserved (it holds or names "
                                "the checksum)",
                                path, meta[2 * i]);
        for (size_t j = 0; j < i && st == CCOE_OK; j++)
            if (strcmp(meta[2 * i], meta[2 * j]) == 0)
                st = ccoe_error_set(err, CCOE_ERR_ARG, "writing '%s': metadata key '%s' is used twice",
                                    path, meta[2 * i]);
    }
    if (st != CCOE_OK) {
        free(bytes);
        return st;
    }

    /* the header: "__metadata__" first (the checksum's placeholder in it), then the tensors in
     * the caller's order */
    cJSON *root = cJSON_CreateObject();
    cJSON *md = root && (with_crc || nmeta) ? cJSON_AddObjectToObject(root, "__metadata__") : NULL;
    int ok = root && (md || (!with_crc && !nmeta));
    for (size_t i = 0; i < nmeta && ok; i++)
        ok = cJSON_AddStringToObject(md, meta[2 * i], meta[2 * i + 1]) != NULL;
    ok = ok && (!with_crc || cJSON_AddStringToObject(md, ST_FILE_CRC_KEY, "00000000") != NULL);
    uint64_t offset = 0;
    for (size_t i = 0; i < n && ok; i++) {
        cJSON *t = cJSON_AddObjectToObject(root, tensors[i].name);
        cJSON *shape = t && cJSON_AddStringToObject(t, "dtype", dt_name[dt])
                           ? cJSON_AddArrayToObject(t, "shape")
                           : NULL;
        cJSON *offs = shape ? cJSON_AddArrayToObject(t, "data_offsets") : NULL;
        ok = offs != NULL;
        for (int d = 0; d < tensors[i].ndim && ok; d++)
            ok = add_int(shape, (uint64_t)tensors[i].shape[d]);
        ok = ok && add_int(offs, offset) && add_int(offs, offset + bytes[i]);
        offset += bytes[i];
    }
    char *json = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!json) {
        free(bytes);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "writing '%s': out of memory building the header",
                              path);
    }

    size_t json_len = strlen(json);
    size_t hlen = (json_len + 7) / 8 * 8;
    unsigned char len8[8];
    put_le64(len8, hlen);
    static const char spaces[8] = "        ";
    /* the whole-file CRC with the placeholder in place, then written into it */
    char *field = strstr(json, ST_FILE_CRC_FIELD);
    if (with_crc && (!field || strstr(field + 1, ST_FILE_CRC_FIELD))) {
        free(json);
        free(bytes);
        return ccoe_error_set(err, CCOE_ERR_INTERNAL,
                              "writing '%s': the header does not hold the checksum field exactly "
                              "once",
                              path);
    }
    if (with_crc) {
        uint32_t crc = crc32_of(len8, 8);
        crc = crc32_more(crc, (const unsigned char *)json, json_len);
        crc = crc32_more(crc, (const unsigned char *)spaces, hlen - json_len);
        for (size_t i = 0; i < n; i++)
            crc = crc32_more(crc, (const unsigned char *)tensors[i].data, (size_t)bytes[i]);
        char hex[ST_CRC_HEX + 1];
        snprintf(hex, sizeof hex, "%08" PRIx32, crc);
        memcpy(field + strlen(ST_FILE_CRC_FIELD), hex, ST_CRC_HEX);
    }
    size_t nparts = n + 3;
    const void **parts = malloc(nparts * sizeof *parts);
    size_t *sizes = malloc(nparts * sizeof *sizes);
    if (!parts || !sizes) {
        free(parts);
        free(sizes);
        free(json);
        free(bytes);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "writing '%s': out of memory", path);
    }
    parts[0] = len8;
    sizes[0] = 8;
    parts[1] = json;
    sizes[1] = json_len;
    parts[2] = spaces;
    sizes[2] = hlen - json_len;
    /* 16-bit dtypes: each tensor rounded to nearest (ties to even) into its own buffer; a value
     * the dtype cannot hold (F16 beyond 65504) is refused rather than written as Inf */
    uint16_t **half = dt == CCOE_ST_OUT_F32 ? NULL : calloc(n ? n : 1, sizeof *half);
    if (dt != CCOE_ST_OUT_F32 && !half)
        st = ccoe_error_set(err, CCOE_ERR_NOMEM, "writing '%s': out of memory", path);
    for (size_t i = 0; i < n && st == CCOE_OK; i++) {
        parts[3 + i] = tensors[i].data;
        sizes[3 + i] = (size_t)bytes[i];
        if (!half)
            continue;
        const size_t numel = (size_t)bytes[i] / 2;
        if (!(half[i] = malloc(numel ? numel * 2 : 2))) {
            st = ccoe_error_set(err, CCOE_ERR_NOMEM, "writing '%s': out of memory", path);
            break;
        }
        for (size_t k = 0; k < numel && st == CCOE_OK; k++) {
            const float v = tensors[i].data[k];
            half[i][k] = dt == CCOE_ST_OUT_F16 ? ccoe_f32_to_f16(v) : ccoe_f32_to_bf16(v);
            const float back = dt == CCOE_ST_OUT_F16 ? ccoe_f16_to_f32(half[i][k])
                                                     : ccoe_bf16_to_f32(half[i][k]);
            if (isfinite(v) && !isfinite(back))
                st = ccoe_error_set(err, CCOE_ERR_NUMERIC,
                                    "writing '%s': tensor '%s' holds %g at element %zu, beyond "
                                    "the range of %s: write F32 (or BF16, float32's range)",
                                    path, tensors[i].name, (double)v, k, dt_name[dt]);
        }
        parts[3 + i] = half[i];
    }
    if (st == CCOE_OK)
        st = ccoe_write_file_atomic(path, parts, sizes, nparts, err);
    for (size_t i = 0; half && i < n; i++)
        free(half[i]);
    free(half);
    free(parts);
    free(sizes);
    free(json);
    free(bytes);
    return st;
}

ccoe_status ccoe_st_write(const char *path, const ccoe_st_tensor *tensors, size_t n,
                          const char *const *meta, size_t nmeta, ccoe_error *err)
{
    return st_write(path, tensors, n, meta, nmeta, 1, CCOE_ST_OUT_F32, err);
}

ccoe_status ccoe_st_write_plain(const char *path, const ccoe_st_tensor *tensors, size_t n,
                                const char *const *meta, size_t nmeta, ccoe_error *err)
{
    return st_write(path, tensors, n, meta, nmeta, 0, CCOE_ST_OUT_F32, err);
}

ccoe_status ccoe_st_write_plain_as(const char *path, const ccoe_st_tensor *tensors, size_t n,
                                   const char *const *meta, size_t nmeta, ccoe_st_out_dtype dt,
                                   ccoe_error *err)
{
    return st_write(path, tensors, n, meta, nmeta, 0, dt, err);
}

/* ---------------------------------------------------------------------------------------------
 * Reading
 */

void ccoe_st_close(ccoe_st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++)
        free(f->t[i].name);
    for (size_t i = 0; i < 2 * f->nmeta; i++)
        free(f->meta[i]);
    free(f->t);
    free(f->by_name);
    free(f->meta);
    free(f->data_copy);
    free(f->conv_buf);
    free(f->buf);
    free(f->path);
    free(f);
}

static ccoe_status read_whole(const char *path, unsigned char **out, size_t *out_size,
                              ccoe_error *err)
{
    int fd = ccoe_fs_open_input(path, NULL, err); /* a regular file, or an error at once */
    if (fd < 0)
        return err ? err->status : CCOE_ERR_IO;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot read '%s': %s", path, strerror(e));
    }
    size_t size = (size_t)sb.st_size;
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot read '%s': out of memory (%zu bytes)",
                              path, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            free(buf);
            return ccoe_error_set(err, CCOE_ERR_IO, "cannot read '%s': %s", path, strerror(e));
        }
        if (r == 0)
            break; /* shrank while reading: validation reports the short file */
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *out_size = got;
    return CCOE_OK;
}

/* Reads a JSON number that must be an integer in [0, 2^53]. */
static int json_uint(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return 0;
    double v = item->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || v != (double)(uint64_t)v)
        return 0;
    *out = (uint64_t)v;
    return 1;
}

static ccoe_status parse_tensor(const cJSON *item, st_entry *e, uint64_t data_len,
                                unsigned flags, const char *path, ccoe_error *err)
{
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return corrupt(err, path, "the header entry for tensor '%s' is not an object", name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!dtype || !shape || !offs)
        return corrupt(err, path, "tensor '%s' lacks \"%s\"", name,
                       !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
    if (!cJSON_IsString(dtype))
        return corrupt(err, path, "tensor '%s': \"dtype\" is not a string", name);
    e->dtype = -1;
    for (int k = 0; k < ST_N_DTYPES; k++)
        if (strcmp(dtype->valuestring, st_dtype_names[k]) == 0)
            e->dtype = k;
    if (e->dtype > ST_F32 && e->dtype < ST_N_FLOAT && !(flags & CCOE_ST_ALLOW_HALF))
        e->dtype = -1;
    if (e->dtype >= ST_N_FLOAT && !(flags & CCOE_ST_ALLOW_OTHER))
        e->dtype = -1;
    if (e->dtype < 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "safetensors file '%s': tensor '%s' has dtype %.20s; only %s "
                              "supported: convert the tensors to float32 before loading",
                              path, name, dtype->valuestring,
                              flags & CCOE_ST_ALLOW_HALF ? "F32, F16 and BF16 are" : "F32 is");
    const uint64_t esize = (uint64_t)st_dtype_bytes[e->dtype];
    if (!cJSON_IsArray(shape))
        return corrupt(err, path, "tensor '%s': \"shape\" is not an array", name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > CCOE_ST_MAX_DIMS)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "safetensors file '%s': tensor '%s' has %d dimensions; at most %d "
                              "are supported",
                              path, name, ndim, CCOE_ST_MAX_DIMS);
    e->ndim = ndim;
    uint64_t numel = 1;
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape)
    {
        uint64_t v;
        if (!json_uint(dim, &v))
            return corrupt(err, path,
                           "tensor '%s': shape entry %d is not a non-negative integer", name, d);
        if (v && numel > (UINT64_MAX / 4) / v)
            return corrupt(err, path, "tensor '%s': the shape's element count overflows", name);
        numel *= v;
        e->shape[d++] = (int64_t)v;
    }
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !json_uint(cJSON_GetArrayItem(offs, 0), &e->begin) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &e->end))
        return corrupt(err, path,
                       "tensor '%s': \"data_offsets\" is not a pair of non-negative integers",
                       name);
    if (e->end < e->begin)
        return corrupt(err, path, "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                  "] end before they begin", name, e->begin, e->end);
    if (e->end - e->begin != numel * esize) {
        char sh[128];
        fmt_shape(sh, sizeof sh, e->ndim, e->shape);
        return corrupt(err, path,
                       "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] span %" PRIu64
                       " bytes but shape %s needs %" PRIu64,
                       name, e->begin, e->end, e->end - e->begin, sh, numel * esize);
    }
    if (e->end > data_len)
        return corrupt(err, path,
                       "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                       "] run past the end of the %" PRIu64 "-byte data section",
                       name, e->begin, e->end, data_len);
    return CCOE_OK;
}

static int cmp_entry(const void *a, const void *b)
{
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* Tensors must tile the data section exactly: no overlap, no gap, nothing after the last. */
static ccoe_status check_layout(const ccoe_st_file *f, ccoe_error *err)
{
    const st_entry **order = malloc((f->n ? f->n : 1) * sizeof *order);
    if (!order)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "reading '%s': out of memory", f->path);
    for (size_t i = 0; i < f->n; i++)
        order[i] = &f->t[i];
    qsort(order, f->n, sizeof *order, cmp_entry);
    ccoe_status st = CCOE_OK;
    uint64_t pos = 0;
    const st_entry *prev = NULL;
    for (size_t i = 0; i < f->n && st == CCOE_OK; i++) {
        const st_entry *e = order[i];
        if (e->begin < pos)
            st = corrupt(err, f->path,
                         "tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64 ", %" PRIu64
                         ") overlap",
                         prev->name, prev->begin, prev->end, e->name, e->begin, e->end);
        else if (e->begin > pos)
            st = corrupt(err, f->path,
                         "bytes [%" PRIu64 ", %" PRIu64 ") of the data section belong to no "
                         "tensor (a gap before '%s')",
                         pos, e->begin, e->name);
        pos = e->end;
        prev = e;
    }
    free(order);
    if (st == CCOE_OK && pos != f->data_len)
        st = corrupt(err, f->path,
                     "%" PRIu64 " trailing bytes after the last tensor (data section %zu bytes, "
                     "tensors end at %" PRIu64 ")",
                     (uint64_t)f->data_len - pos, f->data_len, pos);
    return st;
}

static ccoe_status parse_header(ccoe_st_file *f, const char *json, size_t hlen, unsigned flags,
                                ccoe_error *err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, hlen, &end, 0);
    if (!root)
        return corrupt(err, f->path, "the header is not valid JSON (near byte %zu of %zu)",
                       end && end >= json ? (size_t)(end - json) : (size_t)0, hlen);
    ccoe_status st = CCOE_OK;
    for (const char *p = end; p < json + hlen && st == CCOE_OK; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            st = corrupt(err, f->path, "the header has data after its JSON object (byte %zu)",
                         (size_t)(p - json));
    if (st == CCOE_OK && !cJSON_IsObject(root))
        st = corrupt(err, f->path, "the header is not a JSON object");
    int count = st == CCOE_OK ? cJSON_GetArraySize(root) : 0;
    if (st == CCOE_OK) {
        f->t = calloc((size_t)count + 1, sizeof *f->t);
        if (!f->t)
            st = ccoe_error_set(err, CCOE_ERR_NOMEM, "reading '%s': out of memory", f->path);
    }
    const cJSON *item;
    if (st == CCOE_OK) {
        cJSON_ArrayForEach(item, root)
        {
            if (strcmp(item->string, "__metadata__") == 0) {
                if (f->meta) {
                    st = corrupt(err, f->path, "the header has two \"__metadata__\" entries");
                    break;
                }
                if (!cJSON_IsObject(item)) {
                    st = corrupt(err, f->path, "\"__metadata__\" is not an object");
                    break;
                }
                int nm = cJSON_GetArraySize(item);
                f->meta = calloc(2 * (size_t)nm + 1, sizeof *f->meta);
                if (!f->meta) {
                    st = ccoe_error_set(err, CCOE_ERR_NOMEM, "reading '%s': out of memory",
                                        f->path);
                    break;
                }
                const cJSON *kv;
                cJSON_ArrayForEach(kv, item)
                {
                    if (!cJSON_IsString(kv)) {
                        st = corrupt(err, f->path, "metadata value of \"%.100s\" is not a string",
                                     kv->string);
                        break;
                    }
                    for (size_t j = 0; j < f->nmeta && st == CCOE_OK; j++)
                        if (strcmp(f->meta[2 * j], kv->string) == 0)
                            st = corrupt(err, f->path, "metadata key \"%.100s\" appears twice",
                                         kv->string);
                    if (st != CCOE_OK)
                        break;
                    f->meta[2 * f->nmeta] = dup_str(kv->string);
                    f->meta[2 * f->nmeta + 1] = dup_str(kv->valuestring);
                    f->nmeta++;
                    if (!f->meta[2 * f->nmeta - 2] || !f->meta[2 * f->nmeta - 1]) {
                        st = ccoe_error_set(err, CCOE_ERR_NOMEM, "reading '%s': out of memory",
                                            f->path);
                        break;
                    }
                }
                if (st != CCOE_OK)
                    break;
                continue;
            }
            st_entry *e = &f->t[f->n];
            st = parse_tensor(item, e, f->data_len, flags, f->path, err);
            if (st != CCOE_OK)
                break;
            e->name = dup_str(item->string);
            if (!e->name) {
                st = ccoe_error_set(err, CCOE_ERR_NOMEM, "reading '%s': out of memory", f->path);
                break;
            }
            f->n++;
        }
    }
    cJSON_Delete(root);
    return st;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const st_entry *const *)a)->name, (*(const st_entry *const *)b)->name);
}

/* Sorts the tensors by name into f->by_name; two tensors of one name make the file corrupt. */
static ccoe_status index_names(ccoe_st_file *f, ccoe_error *err)
{
    f->by_name = malloc((f->n ? f->n : 1) * sizeof *f->by_name);
    if (!f->by_name)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "reading '%s': out of memory", f->path);
    for (size_t i = 0; i < f->n; i++)
        f->by_name[i] = &f->t[i];
    qsort(f->by_name, f->n, sizeof *f->by_name, cmp_name);
    for (size_t i = 1; i < f->n; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
            return corrupt(err, f->path, "tensor '%.100s' appears twice in the header",
                           f->by_name[i]->name);
    return CCOE_OK;
}

/* Checks "ccoe.file_crc32": the CRC-32 of the whole file with the value's 8 digits read as
 * '0'. The raw header must spell the field exactly as the writer does, once, so the digits
 * checked are the ones the parsed metadata holds. */
static ccoe_status check_file_crc(ccoe_st_file *f, const char *want_hex, size_t hlen,
                                  ccoe_error *err)
{
    size_t flen = strlen(ST_FILE_CRC_FIELD);
    const unsigned char *h = f->buf + 8, *field = NULL;
    for (const unsigned char *p = h; p < h + hlen;) {
        const unsigned char *q = memmem(p, (size_t)(h + hlen - p), ST_FILE_CRC_FIELD, flen);
        if (!q)
            break;
        if (field)
            return corrupt(err, f->path, "the header spells \"" ST_FILE_CRC_KEY "\" twice");
        field = q;
        p = q + 1;
    }
    int hex_ok = strlen(want_hex) == ST_CRC_HEX;
    for (int i = 0; hex_ok && i < ST_CRC_HEX; i++)
        hex_ok = (want_hex[i] >= '0' && want_hex[i] <= '9') || (want_hex[i] >= 'a' && want_hex[i] <= 'f');
    if (!hex_ok)
        return corrupt(err, f->path, "metadata \"" ST_FILE_CRC_KEY "\" = '%.40s' is not 8 hex digits",
                       want_hex);
    const unsigned char *digits = field ? field + flen : NULL;
    if (!digits || digits + ST_CRC_HEX >= h + hlen || digits[ST_CRC_HEX] != '"' ||
        memcmp(digits, want_hex, ST_CRC_HEX) != 0)
        return corrupt(err, f->path,
                       "the header does not spell its checksum field as ccoe writes it");
    static const unsigned char zeros[ST_CRC_HEX] = "00000000";
    size_t at = (size_t)(digits - f->buf);
    uint32_t got = crc32_of(f->buf, at);
    got = crc32_more(got, zeros, ST_CRC_HEX);
    got = crc32_more(got, f->buf + at + ST_CRC_HEX, f->size - at - ST_CRC_HEX);
    char got_hex[ST_CRC_HEX + 1];
    snprintf(got_hex, sizeof got_hex, "%08" PRIx32, got);
    if (memcmp(got_hex, want_hex, ST_CRC_HEX) != 0)
        return corrupt(err, f->path,
                       "checksum mismatch: the file's CRC-32 is %s but its header records %s", got_hex,
                       want_hex);
    return CCOE_OK;
}

/* The older checksum, "ccoe.crc32": the CRC-32 of the data section in decimal. */
static ccoe_status check_data_crc(ccoe_st_file *f, const char *crc_text, ccoe_error *err)
{
    char *endp = NULL;
    errno = 0;
    unsigned long long want = strtoull(crc_text, &endp, 10);
    if (!*crc_text || *endp || errno || want > UINT32_MAX || crc_text[0] == '-')
        return corrupt(err, f->path, "metadata \"" ST_CRC_KEY "\" = '%.40s' is not a CRC-32",
                       crc_text);
    uint32_t got = crc32_of(f->data, f->data_len);
    if (got != (uint32_t)want)
        return corrupt(err, f->path,
                       "checksum mismatch: the data section's CRC-32 is %" PRIu32
                       " but the header records %llu",
                       got, want);
    return CCOE_OK;
}

float ccoe_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h >> 15) << 31, ex = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (ex == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* Inf, NaN (payload kept) */
    } else if (ex != 0) {
        bits = sign | ((ex + 112) << 23) | (man << 13); /* rebias 15 -> 127 */
    } else if (man == 0) {
        bits = sign; /* signed zero */
    } else {
        /* subnormal half: man * 2^-24, normal as a float */
        int e = -1;
        uint32_t m = man;
        do {
            e++;
            m <<= 1;
        } while (!(m & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3ff) << 13);
    }
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

float ccoe_bf16_to_f32(uint16_t h)
{
    const uint32_t bits = (uint32_t)h << 16; /* bfloat16 is the top half of a float */
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

uint16_t ccoe_f32_to_bf16(float v)
{
    uint32_t x;
    memcpy(&x, &v, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a (quiet) NaN */
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1); /* round to nearest, ties to even */
    return (uint16_t)(x >> 16);
}

uint16_t ccoe_f32_to_f16(float v)
{
    uint32_t x;
    memcpy(&x, &v, sizeof x);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00 | ((a >> 13) & 0x3ff));
    if (a >= 0x477ff000u) /* 65520 and up round to Inf (the largest half is 65504) */
        return (uint16_t)(sign | 0x7c00);
    if (a < 0x38800000u) { /* below 2^-14: a subnormal half, a * 2^24 units (exact product) */
        float f;
        memcpy(&f, &a, sizeof f);
        return (uint16_t)(sign | (uint16_t)lrintf(f * 16777216.0f));
    }
    uint32_t h = ((a >> 23) - 112) << 10 | ((a >> 13) & 0x3ff); /* rebias 127 -> 15 */
    const uint32_t rem = a & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++; /* a carry out of the mantissa steps the exponent, as it should */
    return (uint16_t)(sign | h);
}

/* Converts every F16/BF16 tensor to float32 into one buffer, so lookups return floats. */
static ccoe_status convert_half(ccoe_st_file *f, ccoe_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < f->n; i++)
        if (f->t[i].dtype == ST_F16 || f->t[i].dtype == ST_BF16) {
            f->t[i].conv = total;
            total += (size_t)((f->t[i].end - f->t[i].begin) / 2);
        }
    if (total == 0)
        return CCOE_OK;
    f->conv_buf = malloc(total * sizeof *f->conv_buf);
    if (!f->conv_buf)
        return ccoe_error_set(err, CCOE_ERR_NOMEM,
                              "reading '%s': out of memory converting %zu half-precision values",
                              f->path, total);
    for (size_t i = 0; i < f->n; i++) {
        const st_entry *e = &f->t[i];
        if (e->dtype != ST_F16 && e->dtype != ST_BF16)
            continue;
        const unsigned char *p = f->data + e->begin;
        float *dst = f->conv_buf + e->conv;
        const size_t cnt = (size_t)((e->end - e->begin) / 2);
        for (size_t k = 0; k < cnt; k++) {
            const uint16_t h = (uint16_t)(p[2 * k] | (p[2 * k + 1] << 8));
            dst[k] = e->dtype == ST_F16 ? ccoe_f16_to_f32(h) : ccoe_bf16_to_f32(h);
        }
    }
    return CCOE_OK;
}

ccoe_status ccoe_st_open(const char *path, ccoe_st_file **out, ccoe_error *err)
{
    return ccoe_st_open_flags(path, 0, out, err);
}

ccoe_status ccoe_st_open_flags(const char *path, unsigned flags, ccoe_st_file **out,
                               ccoe_error *err)
{
    *out = NULL;
    ccoe_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = dup_str(path))) {
        free(f);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "reading '%s': out of memory", path);
    }
    ccoe_status st = read_whole(path, &f->buf, &f->size, err);
    if (st == CCOE_OK && f->size < 8)
        st = corrupt(err, path, "it is %zu bytes long, shorter than the 8-byte header length",
                     f->size);
    uint64_t hlen = 0;
    if (st == CCOE_OK) {
        hlen = get_le64(f->buf);
        if (hlen > ST_MAX_HEADER)
            st = corrupt(err, path, "the header length %" PRIu64 " exceeds the 100 MB (10^8 bytes) limit",
                         hlen);
        else if (hlen > f->size - 8)
            st = corrupt(err, path,
                         "the header length %" PRIu64 " exceeds the %zu bytes after the length "
                         "field",
                         hlen, f->size - 8);
        else if (hlen < 2)
            st = corrupt(err, path, "the header length %" PRIu64 " is too short for JSON", hlen);
    }
    if (st == CCOE_OK) {
        f->data_len = f->size - 8 - (size_t)hlen;
        f->data = f->buf + 8 + hlen;
        st = parse_header(f, (const char *)f->buf + 8, (size_t)hlen, flags, err);
    }
    if (st == CCOE_OK)
        st = check_layout(f, err);
    if (st == CCOE_OK)
        st = index_names(f, err);
    const char *file_crc = st == CCOE_OK ? ccoe_st_meta(f, ST_FILE_CRC_KEY) : NULL;
    const char *data_crc = st == CCOE_OK ? ccoe_st_meta(f, ST_CRC_KEY) : NULL;
    if (file_crc) {
        st = check_file_crc(f, file_crc, (size_t)hlen, err);
        f->checked = CCOE_ST_CHECK_FILE;
    } else if (st == CCOE_OK && !(flags & CCOE_ST_ALLOW_UNCHECKED)) {
        st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                            "safetensors file '%s' has no whole-file checksum (metadata \"" ST_FILE_CRC_KEY
                            "\"), so its header cannot be verified: ccoe did not write it, an "
                            "older ccoe did, or the header is damaged. If you trust the file, "
                            "`ccoe reseal %s` checks what it can and adds the checksum",
                            path, path);
    } else if (data_crc) {
        st = check_data_crc(f, data_crc, err);
        f->checked = CCOE_ST_CHECK_DATA;
    }
    if (st == CCOE_OK && ((uintptr_t)f->data % sizeof(float)) != 0) {
        /* a valid file whose data does not start at a multiple of 4: copy it aligned */
        f->data_copy = malloc(f->data_len ? f->data_len : 1);
        if (!f->data_copy)
            st = ccoe_error_set(err, CCOE_ERR_NOMEM, "reading '%s': out of memory", path);
        else {
            memcpy(f->data_copy, f->data, f->data_len);
            f->data = f->data_copy;
        }
    }
    if (st == CCOE_OK)
        st = convert_half(f, err);
    if (st != CCOE_OK) {
        ccoe_st_close(f);
        return st;
    }
    *out = f;
    return CCOE_OK;
}

size_t ccoe_st_count(const ccoe_st_file *f) { return f->n; }

const char *ccoe_st_name(const ccoe_st_file *f, size_t i) { return i < f->n ? f->t[i].name : NULL; }

int ccoe_st_checked(const ccoe_st_file *f) { return f->checked; }

static const st_entry *find_entry(const ccoe_st_file *f, const char *name)
{
    const st_entry key = {.name = (char *)name}, *kp = &key;
    const st_entry **hit = bsearch(&kp, f->by_name, f->n, sizeof *f->by_name, cmp_name);
    return hit ? *hit : NULL;
}

const float *ccoe_st_find(const ccoe_st_file *f, const char *name, int *ndim, int64_t *shape)
{
    const st_entry *e = find_entry(f, name);
    if (!e)
        return NULL;
    if (ndim)
        *ndim = e->ndim;
    if (shape)
        for (int d = 0; d < e->ndim; d++)
            shape[d] = e->shape[d];
    if (e->dtype >= ST_N_FLOAT)
        return NULL;
    if (e->dtype != ST_F32)
        return f->conv_buf ? f->conv_buf + e->conv : NULL;
    return (const float *)(const void *)(f->data + e->begin);
}

const char *ccoe_st_dtype(const ccoe_st_file *f, const char *name)
{
    const st_entry *e = find_entry(f, name);
    return e ? st_dtype_names[e->dtype] : NULL;
}

ccoe_status ccoe_st_read_into(const ccoe_st_file *f, const char *name, float *dst, int ndim,
                              const int64_t *shape, ccoe_error *err)
{
    const st_entry *e = find_entry(f, name);
    if (!e)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "safetensors file '%s' has no tensor '%s' (it holds %zu tensors): "
                              "it was written for a different model or variant",
                              f->path, name, f->n);
    int same = e->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = e->shape[d] == shape[d];
    if (!same) {
        char want[160], found[160];
        fmt_shape(want, sizeof want, ndim, shape);
        fmt_shape(found, sizeof found, e->ndim, e->shape);
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "safetensors file '%s': tensor '%s' has shape %s but %s was "
                              "expected: the file was written for a different model configuration",
                              f->path, name, found, want);
    }
    if (e->dtype >= ST_N_FLOAT)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "safetensors file '%s': tensor '%s' has dtype %s, not a float: "
                              "it was written for a different model or variant",
                              f->path, name, st_dtype_names[e->dtype]);
    if (e->dtype != ST_F32) {
        if (e->end > e->begin)
            memcpy(dst, f->conv_buf + e->conv, (size_t)(e->end - e->begin) / 2 * sizeof(float));
    } else if (e->end > e->begin) {
        memcpy(dst, f->data + e->begin, (size_t)(e->end - e->begin));
    }
    return CCOE_OK;
}

size_t ccoe_st_meta_count(const ccoe_st_file *f) { return f->nmeta; }

const char *ccoe_st_meta_key(const ccoe_st_file *f, size_t i)
{
    return i < f->nmeta ? f->meta[2 * i] : NULL;
}

int ccoe_st_is_checksum_key(const char *key)
{
    return strcmp(key, ST_CRC_KEY) == 0 || strcmp(key, ST_FILE_CRC_KEY) == 0;
}

const char *ccoe_st_meta(const ccoe_st_file *f, const char *key)
{
    for (size_t i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[2 * i], key) == 0)
            return f->meta[2 * i + 1];
    return NULL;
}
