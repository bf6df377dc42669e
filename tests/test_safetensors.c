/* test_safetensors.c - safetensors round trip, the on-disk layout, corruption and truncation
 * detection, hand-made invalid files, compatibility with files written by Python, and the
 * atomic writer's behaviour on failure. */
#define _GNU_SOURCE /* memmem */
#include "testutil.h"

#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <zlib.h>

#include "safetensors.h"


static char g_dir[PATH_MAX - 128]; /* a fresh temporary directory per test */

static int setup_dir(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/ccoe-test-st-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

/* Removes dir and everything below it. */
static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char p[PATH_MAX + 256];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            struct stat sb;
            if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
                remove_tree(p);
            else
                remove(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

static int teardown_dir(void **state)
{
    (void)state;
    remove_tree(g_dir);
    return 0;
}

static void path_in_dir(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", g_dir, name);
}

static int count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static unsigned char *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static void spit(const char *path, const void *data, size_t n)
{
    unlink(path); /* a fresh file: rewriting in place makes ext4 flush it (auto_da_alloc) */
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n)
        assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* Builds a file from a JSON header (padded with spaces to `pad_to`) and raw data bytes. */
static void write_raw(const char *path, const char *json, size_t pad_to, const void *data,
                      size_t data_len)
{
    size_t jl = strlen(json);
    size_t hl = pad_to ? (jl + pad_to - 1) / pad_to * pad_to : jl;
    unsigned char *buf = calloc(8 + hl + data_len + 1, 1);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, json, jl);
    memset(buf + 8 + jl, ' ', hl - jl);
    if (data_len)
        memcpy(buf + 8 + hl, data, data_len);
    spit(path, buf, 8 + hl + data_len);
    free(buf);
}

/* open_expect's flags: hand-made files carry no checksum and are opened as foreign files */
static unsigned g_open_flags;

static ccoe_status open_expect(const char *path, ccoe_status want, const char *must_contain)
{
    ccoe_st_file *f = NULL;
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_status st = ccoe_st_open_flags(path, g_open_flags, &f, &err);
    if (st != want)
        fprintf(stderr, "open %s: status %d, want %d: %s\n", path, st, want, err.msg);
    assert_int_equal(st, want);
    if (st != CCOE_OK) {
        assert_null(f);
        assert_int_equal(err.status, want);
        TU_ASSERT_MSG_HAS(err, path);
        if (must_contain)
            TU_ASSERT_MSG_HAS(err, must_contain);
    }
    ccoe_st_close(f);
    return st;
}

/* A set of tensors of 0..4 dimensions, including a 1-element and an empty one. */
enum { NT = 6 };
static float g_a[24], g_b[7], g_c[1], g_d[2 * 3 * 2 * 2], g_e[1];
static ccoe_st_tensor g_t[NT];

static void make_tensors(void)
{
    tu_fill_uniform(g_a, 24, 1, 3.0f);
    tu_fill_uniform(g_b, 7, 2, 1.0f);
    g_c[0] = -0.0f;
    tu_fill_uniform(g_d, 24, 3, 100.0f);
    g_d[5] = 1e-40f; /* subnormal */
    g_e[0] = 3.25f;
    ccoe_st_tensor t[NT] = {
        {.name = "wte", .ndim = 2, .shape = {4, 6}, .data = g_a},
        {.name = "blocks.0.ln.b", .ndim = 1, .shape = {7}, .data = g_b},
        {.name = "one", .ndim = 1, .shape = {1}, .data = g_c},
        {.name = "w4", .ndim = 4, .shape = {2, 3, 2, 2}, .data = g_d},
        {.name = "scalar", .ndim = 0, .shape = {0}, .data = g_e},
        {.name = "empty", .ndim = 2, .shape = {3, 0}, .data = NULL},
    };
    memcpy(g_t, t, sizeof t);
}

static const char *const g_meta[] = {"format", "pt", "ccoe.config", "[model]\nn_layer = 2\n",
                                     "ccoe.step", "42"};

static void write_good(const char *path)
{
    make_tensors();
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_status st = ccoe_st_write(path, g_t, NT, g_meta, 3, &err);
    if (st != CCOE_OK)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, CCOE_OK);
}

static void test_round_trip(void **state)
{
    (void)state;
    char path[PATH_MAX];
    path_in_dir(path, sizeof path, "a.safetensors");
    write_good(path);
    ccoe_st_file *f = NULL;
    ccoe_error err;
    assert_int_equal(ccoe_st_open(path, &f, &err), CCOE_OK);
    assert_int_equal(ccoe_st_count(f), NT);
    for (size_t i = 0; i < NT; i++) {
        assert_string_equal(ccoe_st_name(f, i), g_t[i].name); /* order kept */
        int ndim = -1;
        int64_t shape[CCOE_ST_MAX_DIMS] = {-1, -1, -1, -1};
        const float *data = ccoe_st_find(f, g_t[i].name, &ndim, shape);
        assert_non_null(data);
        assert_int_equal(ndim, g_t[i].ndim);
        size_t numel = 1;
        for (int d = 0; d < ndim; d++) {
            assert_int_equal(shape[d], g_t[i].shape[d]);
            numel *= (size_t)shape[d];
        }
        if (numel)
            assert_memory_equal(data, g_t[i].data, numel * sizeof(float)); /* bitwise */
        float dst[32];
        memset(dst, 0xAB, sizeof dst);
        assert_int_equal(ccoe_st_read_into(f, g_t[i].name, dst, g_t[i].ndim, g_t[i].shape, &err),
                         CCOE_OK);
        if (numel)
            assert_memory_equal(dst, g_t[i].data, numel * sizeof(float));
    }
    assert_null(ccoe_st_name(f, NT));
    assert_null(ccoe_st_find(f, "missing", NULL, NULL));
    assert_string_equal(ccoe_st_meta(f, "format"), "pt");
    assert_string_equal(ccoe_st_meta(f, "ccoe.config"), "[model]\nn_layer = 2\n");
    assert_string_equal(ccoe_st_meta(f, "ccoe.step"), "42");
    assert_non_null(ccoe_st_meta(f, "ccoe.file_crc32"));
    assert_null(ccoe_st_meta(f, "ccoe.crc32"));
    assert_int_equal(ccoe_st_checked(f), CCOE_ST_CHECK_FILE);
    assert_null(ccoe_st_meta(f, "nope"));
    ccoe_st_close(f);
    ccoe_st_close(NULL);

    /* no tensors, no metadata */
    path_in_dir(path, sizeof path, "empty.safetensors");
    assert_int_equal(ccoe_st_write(path, NULL, 0, NULL, 0, &err), CCOE_OK);
    assert_int_equal(ccoe_st_open(path, &f, &err), CCOE_OK);
    assert_int_equal(ccoe_st_count(f), 0);
    ccoe_st_close(f);
}

static void test_layout(void **state)
{
    (void)state;
    char path[PATH_MAX];
    path_in_dir(path, sizeof path, "layout.safetensors");
    write_good(path);
    size_t size;
    unsigned char *buf = slurp(path, &size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    assert_true(8 + hlen <= size);
    assert_int_equal((8 + hlen) % 8, 0); /* data starts 8-aligned */
    size_t data_len = (24 + 7 + 1 + 24 + 1 + 0) * 4;
    assert_int_equal(size, 8 + hlen + data_len);
    assert_int_equal(buf[8], '{');
    char *json = calloc(hlen + 1, 1);
    memcpy(json, buf + 8, hlen);
    cJSON *root = cJSON_Parse(json); /* trailing padding spaces are fine for a JSON parser */
    assert_non_null(root);
    assert_true(cJSON_IsObject(root));
    cJSON *md = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    assert_true(cJSON_IsObject(md));
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(md, "format")->valuestring, "pt");
    cJSON *crc = cJSON_GetObjectItemCaseSensitive(md, "ccoe.file_crc32");
    assert_true(cJSON_IsString(crc));
    assert_int_equal(strlen(crc->valuestring), 8);
    uint64_t off = 0;
    for (size_t i = 0; i < NT; i++) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(root, g_t[i].name);
        assert_true(cJSON_IsObject(t));
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(t, "dtype")->valuestring, "F32");
        cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
        assert_true(cJSON_IsArray(shape));
        assert_int_equal(cJSON_GetArraySize(shape), g_t[i].ndim);
        uint64_t numel = 1;
        for (int d = 0; d < g_t[i].ndim; d++) {
            assert_true(cJSON_GetArrayItem(shape, d)->valuedouble == (double)g_t[i].shape[d]);
            numel *= (uint64_t)g_t[i].shape[d];
        }
        cJSON *offs = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        assert_int_equal(cJSON_GetArraySize(offs), 2);
        assert_true(cJSON_GetArrayItem(offs, 0)->valuedouble == (double)off);
        assert_true(cJSON_GetArrayItem(offs, 1)->valuedouble == (double)(off + numel * 4));
        /* the data bytes are the floats, little-endian */
        if (numel)
            assert_memory_equal(buf + 8 + hlen + off, g_t[i].data, numel * 4);
        off += numel * 4;
    }
    /* the stored checksum is zlib's CRC-32 of the whole file with its own 8 digits as '0' */
    char want[16];
    snprintf(want, sizeof want, "%s", crc->valuestring);
    char *digits = memmem(buf, size, "\"ccoe.file_crc32\":\"", 19);
    assert_non_null(digits);
    memcpy(digits + 19, "00000000", 8);
    char got[16];
    snprintf(got, sizeof got, "%08lx", crc32(0L, buf, (unsigned)size));
    assert_string_equal(got, want);
    cJSON_Delete(root);
    free(json);
    free(buf);
}

static void test_truncation(void **state)
{
    (void)state;
    char path[PATH_MAX], cut[PATH_MAX];
    path_in_dir(path, sizeof path, "full.safetensors");
    path_in_dir(cut, sizeof cut, "cut.safetensors");
    write_good(path);
    size_t size;
    unsigned char *buf = slurp(path, &size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    /* every prefix shorter than the file fails cleanly */
    for (size_t n = 0; n < size; n++) {
        spit(cut, buf, n);
        ccoe_st_file *f = NULL;
        ccoe_error err;
        ccoe_error_clear(&err);
        ccoe_status st = ccoe_st_open(cut, &f, &err);
        assert_int_equal(st, CCOE_ERR_FORMAT);
        assert_null(f);
        TU_ASSERT_MSG_HAS(err, cut);
        TU_ASSERT_MSG_HAS(err, "corrupt or truncated");
    }
    spit(cut, buf, 5);
    open_expect(cut, CCOE_ERR_FORMAT, "shorter than the 8-byte header length");
    spit(cut, buf, 8 + hlen / 2);
    open_expect(cut, CCOE_ERR_FORMAT, "header length");
    spit(cut, buf, size - 1);
    open_expect(cut, CCOE_ERR_FORMAT, "run past the end");
    /* an extra byte at the end */
    unsigned char *longer = malloc(size + 1);
    memcpy(longer, buf, size);
    longer[size] = 0;
    spit(cut, longer, size + 1);
    open_expect(cut, CCOE_ERR_FORMAT, "trailing bytes");
    free(longer);
    free(buf);
}

static void test_corruption(void **state)
{
    (void)state;
    char path[PATH_MAX], bad[PATH_MAX];
    path_in_dir(path, sizeof path, "good.safetensors");
    path_in_dir(bad, sizeof bad, "bad.safetensors");
    write_good(path);
    size_t size;
    unsigned char *buf = slurp(path, &size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];

    /* a flipped bit anywhere in the data section is caught by the checksum */
    for (size_t pos = 8 + hlen; pos < size; pos += 7) {
        buf[pos] ^= 0x10;
        spit(bad, buf, size);
        open_expect(bad, CCOE_ERR_FORMAT, "checksum mismatch");
        buf[pos] ^= 0x10;
    }
    spit(bad, buf, size);
    open_expect(bad, CCOE_OK, NULL);

    /* every one-bit flip of the length field or the header is caught (the checksum covers the
     * whole file, so a damaged step, learning rate or shape cannot load) */
    for (size_t pos = 0; pos < 8 + hlen; pos++)
        for (int bit = 0; bit < 8; bit++) {
            buf[pos] ^= (unsigned char)(1u << bit);
            spit(bad, buf, size);
            ccoe_st_file *f = NULL;
            ccoe_error err;
            ccoe_status st = ccoe_st_open(bad, &f, &err);
            if (st == CCOE_OK)
                fprintf(stderr, "header byte %zu bit %d flipped: still opens\n", pos, bit);
            assert_int_equal(st, CCOE_ERR_FORMAT);
            assert_null(f);
            buf[pos] ^= (unsigned char)(1u << bit);
        }
    /* renaming the checksum key does not turn the check off */
    char *key = memmem(buf, 8 + hlen, "ccoe.file_crc32", 15);
    assert_non_null(key);
    key[0] = 'x';
    spit(bad, buf, size);
    open_expect(bad, CCOE_ERR_FORMAT, "no whole-file checksum");
    key[0] = 'c';

    /* replacing any byte of the length or header never crashes and is always an error */
    int errors = 0, tries = 0;
    for (size_t pos = 0; pos < 8 + hlen; pos++) {
        for (int v = 0; v < 3; v++) {
            unsigned char old = buf[pos];
            static const unsigned char repl[3] = {0xff, '"', '9'};
            if (old == repl[v])
                continue;
            buf[pos] = repl[v];
            tries++;
            spit(bad, buf, size);
            ccoe_st_file *f = NULL;
            ccoe_error err;
            ccoe_error_clear(&err);
            ccoe_status st = ccoe_st_open(bad, &f, &err);
            if (st != CCOE_OK) {
                errors++;
                assert_true(st == CCOE_ERR_FORMAT);
                TU_ASSERT_MSG_HAS(err, bad);
            }
            ccoe_st_close(f);
            buf[pos] = old;
        }
    }
    assert_int_equal(errors, tries);

    /* header length field: huge, larger than the file */
    unsigned char save[8];
    memcpy(save, buf, 8);
    memset(buf, 0xff, 8);
    spit(bad, buf, size);
    open_expect(bad, CCOE_ERR_FORMAT, "100 MB");
    memcpy(buf, save, 8);
    buf[0] = (unsigned char)(buf[0] + 8);
    spit(bad, buf, size);
    open_expect(bad, CCOE_ERR_FORMAT, NULL);
    memcpy(buf, save, 8);
    free(buf);
}

static void test_handmade_invalid(void **state)
{
    (void)state;
    g_open_flags = CCOE_ST_ALLOW_UNCHECKED;
    char p[PATH_MAX];
    path_in_dir(p, sizeof p, "h.safetensors");
    float data[8] = {1, 2, 3, 4, 5, 6, 7, 8};

    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
              8, data, 32);
    open_expect(p, CCOE_ERR_FORMAT, "overlap");

    write_raw(p, "{\"a\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]}}", 8, data, 8);
    open_expect(p, CCOE_ERR_FORMAT, "only F32 is supported");
    write_raw(p, "{\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]}}", 8, data, 8);
    open_expect(p, CCOE_ERR_FORMAT, "BF16");

    write_raw(p, "{\"a\":{\"shape\":[4],\"data_offsets\":[0,16]}}", 8, data, 16);
    open_expect(p, CCOE_ERR_FORMAT, "dtype");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}", 8, data, 16);
    open_expect(p, CCOE_ERR_FORMAT, "shape");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4]}}", 8, data, 16);
    open_expect(p, CCOE_ERR_FORMAT, "data_offsets");

    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", 8, data,
              16);
    open_expect(p, CCOE_ERR_FORMAT, "non-negative integer");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,16]}}", 8, data,
              16);
    open_expect(p, CCOE_ERR_FORMAT, "non-negative integer");
    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
              "\"data_offsets\":[0,16]}}",
              8, data, 16);
    open_expect(p, CCOE_ERR_FORMAT, "overflows");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 8,
              data, 4);
    open_expect(p, CCOE_ERR_FORMAT, "dimensions");

    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,12]}}", 8, data, 12);
    open_expect(p, CCOE_ERR_FORMAT, "needs 16");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}}", 8, data, 16);
    open_expect(p, CCOE_ERR_FORMAT, "end before");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, data, 8);
    open_expect(p, CCOE_ERR_FORMAT, "past the end");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 8, data, 24);
    open_expect(p, CCOE_ERR_FORMAT, "belong to no tensor");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, data, 20);
    open_expect(p, CCOE_ERR_FORMAT, "trailing bytes");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0]}}", 8, data, 16);
    open_expect(p, CCOE_ERR_FORMAT, "data_offsets");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,16]}}",
              8, data, 16);
    open_expect(p, CCOE_ERR_FORMAT, "twice");

    write_raw(p, "[1,2,3]", 8, NULL, 0);
    open_expect(p, CCOE_ERR_FORMAT, "not a JSON object");
    write_raw(p, "{\"a\": ", 8, NULL, 0);
    open_expect(p, CCOE_ERR_FORMAT, "not valid JSON");
    write_raw(p, "{} {}", 8, NULL, 0);
    open_expect(p, CCOE_ERR_FORMAT, "after its JSON");
    write_raw(p, "{\"a\":3}", 8, NULL, 0);
    open_expect(p, CCOE_ERR_FORMAT, "not an object");
    write_raw(p, "{\"__metadata__\":{\"k\":1}}", 8, NULL, 0);
    open_expect(p, CCOE_ERR_FORMAT, "not a string");
    write_raw(p, "{\"__metadata__\":{\"ccoe.crc32\":\"12x\"}}", 8, NULL, 0);
    open_expect(p, CCOE_ERR_FORMAT, "not a CRC-32");
    write_raw(p, "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 8, NULL, 0);
    open_expect(p, CCOE_ERR_FORMAT, "appears twice");
    write_raw(p, "{\"__metadata__\":{\"ccoe.file_crc32\":\"0000000g\"}}", 8, NULL, 0);
    open_expect(p, CCOE_ERR_FORMAT, "8 hex digits");
    write_raw(p, "{\"__metadata__\":{\"ccoe.file_crc32\" : \"00000000\"}}", 8, NULL, 0);
    open_expect(p, CCOE_ERR_FORMAT, "as ccoe writes it");
    write_raw(p, "{\"__metadata__\":{\"ccoe.file_crc32\":\"00000000\"}}", 8, NULL, 0);
    open_expect(p, CCOE_ERR_FORMAT, "checksum mismatch");

    /* valid corner cases: no padding (data not 4-aligned), scalar, zero-size tensors */
    write_raw(p, "{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                 "\"z\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
                 "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]} }",
              1, data, 12);
    ccoe_st_file *f = NULL;
    ccoe_error err;
    assert_int_equal(ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED, &f, &err), CCOE_OK);
    assert_int_equal(ccoe_st_checked(f), CCOE_ST_CHECK_NONE);
    int ndim = -1;
    int64_t shape[4];
    const float *s = ccoe_st_find(f, "s", &ndim, shape);
    assert_non_null(s);
    assert_int_equal(ndim, 0);
    assert_true(s[0] == 1.0f);
    const float *z = ccoe_st_find(f, "z", &ndim, shape);
    assert_non_null(z); /* present, just empty */
    assert_int_equal(ndim, 2);
    assert_int_equal(shape[1], 5);
    float v[2];
    int64_t vs[1] = {2};
    assert_int_equal(ccoe_st_read_into(f, "v", v, 1, vs, &err), CCOE_OK);
    assert_true(v[0] == 2.0f && v[1] == 3.0f);
    int64_t zs[2] = {0, 5};
    assert_int_equal(ccoe_st_read_into(f, "z", NULL, 2, zs, &err), CCOE_OK);
    ccoe_st_close(f);

    /* missing file, directory */
    path_in_dir(p, sizeof p, "does-not-exist.safetensors");
    open_expect(p, CCOE_ERR_IO, "No such file");
    open_expect(g_dir, CCOE_ERR_IO, "directory");
    g_open_flags = 0;
}

/* 200k tensors: the duplicate check and lookups stay fast (sorted names, not all pairs). */
static void test_many_tensors(void **state)
{
    (void)state;
    char p[PATH_MAX];
    path_in_dir(p, sizeof p, "many.safetensors");
    const int n = 200000;
    size_t cap = (size_t)n * 64 + 64, used = 0;
    char *json = malloc(cap);
    assert_non_null(json);
    used += (size_t)snprintf(json + used, cap - used, "{");
    for (int i = 0; i < n; i++)
        used += (size_t)snprintf(json + used, cap - used,
                                 "%s\"t%06d\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}",
                                 i ? "," : "", i);
    snprintf(json + used, cap - used, "}");
    write_raw(p, json, 8, NULL, 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ccoe_st_file *f = NULL;
    ccoe_error err;
    assert_int_equal(ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED, &f, &err), CCOE_OK);
    assert_int_equal(ccoe_st_count(f), (size_t)n);
    for (int i = 0; i < n; i += 997) {
        char name[16];
        snprintf(name, sizeof name, "t%06d", i);
        assert_non_null(ccoe_st_find(f, name, NULL, NULL));
    }
    assert_null(ccoe_st_find(f, "t2000000", NULL, NULL));
    ccoe_st_close(f);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* all pairs would be 2e10 comparisons (minutes); sorting is well under a second */
    assert_true((double)(t1.tv_sec - t0.tv_sec) < 20.0);
    /* the same header with one name repeated at the end */
    json[used] = '\0'; /* drop the closing brace */
    char *dup = malloc(cap + 128);
    assert_non_null(dup);
    snprintf(dup, cap + 128, "%s,\"t000007\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}",
             json);
    write_raw(p, dup, 8, NULL, 0);
    g_open_flags = CCOE_ST_ALLOW_UNCHECKED;
    open_expect(p, CCOE_ERR_FORMAT, "'t000007' appears twice");
    g_open_flags = 0;
    free(dup);
    free(json);
}

static void test_read_into_mismatch(void **state)
{
    (void)state;
    char path[PATH_MAX];
    path_in_dir(path, sizeof path, "m.safetensors");
    write_good(path);
    ccoe_st_file *f = NULL;
    ccoe_error err;
    assert_int_equal(ccoe_st_open(path, &f, &err), CCOE_OK);
    float dst[64];
    int64_t want[2] = {4, 8};
    assert_int_equal(ccoe_st_read_into(f, "wte", dst, 2, want, &err), CCOE_ERR_FORMAT);
    TU_ASSERT_MSG_HAS(err, "'wte'");
    TU_ASSERT_MSG_HAS(err, "(4, 6)");
    TU_ASSERT_MSG_HAS(err, "(4, 8)");
    TU_ASSERT_MSG_HAS(err, path);
    int64_t want3[3] = {4, 6, 1};
    assert_int_equal(ccoe_st_read_into(f, "wte", dst, 3, want3, &err), CCOE_ERR_FORMAT);
    TU_ASSERT_MSG_HAS(err, "(4, 6, 1)");
    assert_int_equal(ccoe_st_read_into(f, "nope", dst, 2, want, &err), CCOE_ERR_FORMAT);
    TU_ASSERT_MSG_HAS(err, "'nope'");
    ccoe_st_close(f);
}

/* A file as Python's safetensors writes it: metadata {"format":"pt"}, no ccoe.crc32, keys sorted,
 * header padded with spaces to a multiple of 8. */
static void test_python_compat(void **state)
{
    (void)state;
    char p[PATH_MAX];
    path_in_dir(p, sizeof p, "py.safetensors");
    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"bias\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                       "\"weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[12,36]}}";
    /* little-endian bytes of 0.5, -1, 2 then 1..6 */
    const unsigned char data[36] = {
        0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x80, 0xbf, 0x00, 0x00, 0x00, 0x40,
        0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x40, 0x40,
        0x00, 0x00, 0x80, 0x40, 0x00, 0x00, 0xa0, 0x40, 0x00, 0x00, 0xc0, 0x40,
    };
    write_raw(p, json, 8, data, sizeof data);
    ccoe_st_file *f = NULL;
    ccoe_error err;
    ccoe_error_clear(&err);
    /* without a checksum it opens only as a foreign file */
    assert_int_equal(ccoe_st_open(p, &f, &err), CCOE_ERR_FORMAT);
    TU_ASSERT_MSG_HAS(err, "no whole-file checksum");
    TU_ASSERT_MSG_HAS(err, "ccoe reseal");
    ccoe_status st = ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED, &f, &err);
    if (st != CCOE_OK)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, CCOE_OK);
    assert_int_equal(ccoe_st_count(f), 2);
    assert_string_equal(ccoe_st_meta(f, "format"), "pt");
    assert_null(ccoe_st_meta(f, "ccoe.crc32"));
    float w[6], b[3];
    int64_t ws[2] = {2, 3}, bs[1] = {3};
    assert_int_equal(ccoe_st_read_into(f, "weight", w, 2, ws, &err), CCOE_OK);
    assert_int_equal(ccoe_st_read_into(f, "bias", b, 1, bs, &err), CCOE_OK);
    for (int i = 0; i < 6; i++)
        assert_true(w[i] == (float)(i + 1));
    assert_true(b[0] == 0.5f && b[1] == -1.0f && b[2] == 2.0f);
    ccoe_st_close(f);

    /* without any metadata, unpadded, tensors listed out of offset order */
    write_raw(p, "{\"weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[12,36]},"
                 "\"bias\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
              0, data, sizeof data);
    assert_int_equal(ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED, &f, &err), CCOE_OK);
    assert_int_equal(ccoe_st_read_into(f, "weight", w, 2, ws, &err), CCOE_OK);
    assert_true(w[5] == 6.0f);
    ccoe_st_close(f);
}

static void test_write_errors(void **state)
{
    (void)state;
    char p[PATH_MAX];
    ccoe_error err;
    make_tensors();
    path_in_dir(p, sizeof p, "w.safetensors");
    ccoe_st_tensor dup[2] = {g_t[0], g_t[0]};
    assert_int_equal(ccoe_st_write(p, dup, 2, NULL, 0, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "twice");
    ccoe_st_tensor neg = g_t[0];
    neg.shape[1] = -1;
    assert_int_equal(ccoe_st_write(p, &neg, 1, NULL, 0, &err), CCOE_ERR_ARG);
    ccoe_st_tensor five = g_t[0];
    five.ndim = 5;
    assert_int_equal(ccoe_st_write(p, &five, 1, NULL, 0, &err), CCOE_ERR_ARG);
    const char *crc_meta[] = {"ccoe.crc32", "1"};
    assert_int_equal(ccoe_st_write(p, g_t, 1, crc_meta, 1, &err), CCOE_ERR_ARG);
    assert_int_equal(count_dir_entries(g_dir), 0); /* nothing written */
}

static void test_atomic_write(void **state)
{
    (void)state;
    char p[PATH_MAX];
    ccoe_error err;

    /* a directory that does not exist: an I/O error naming the path, nothing created */
    make_tensors();
    path_in_dir(p, sizeof p, "no/such/dir/x.safetensors");
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_st_write(p, g_t, NT, NULL, 0, &err), CCOE_ERR_IO);
    TU_ASSERT_MSG_HAS(err, p);
    assert_int_equal(count_dir_entries(g_dir), 0);

    /* replacing an existing file: new contents, no temporary files left */
    path_in_dir(p, sizeof p, "ckpt.safetensors");
    spit(p, "old contents", 12);
    write_good(p);
    assert_int_equal(count_dir_entries(g_dir), 1);
    open_expect(p, CCOE_OK, NULL);

    /* ccoe_write_file_atomic with several parts */
    char t[PATH_MAX];
    path_in_dir(t, sizeof t, "out.txt");
    const void *parts[3] = {"hello ", "", "world\n"};
    size_t sizes[3] = {6, 0, 6};
    assert_int_equal(ccoe_write_file_atomic(t, parts, sizes, 3, &err), CCOE_OK);
    size_t n;
    unsigned char *got = slurp(t, &n);
    assert_int_equal(n, 12);
    assert_memory_equal(got, "hello world\n", 12);
    free(got);
    assert_int_equal(ccoe_write_file_atomic(t, NULL, NULL, 0, &err), CCOE_OK);
    got = slurp(t, &n);
    assert_int_equal(n, 0);
    free(got);
    assert_int_equal(count_dir_entries(g_dir), 2);

    /* a failed write (the target is a directory, so the rename fails) leaves the original */
    char sub[PATH_MAX];
    path_in_dir(sub, sizeof sub, "adir");
    assert_int_equal(mkdir(sub, 0755), 0);
    char inner[PATH_MAX + 16];
    snprintf(inner, sizeof inner, "%s/keep", sub);
    spit(inner, "keep", 4);
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_st_write(sub, g_t, NT, NULL, 0, &err), CCOE_ERR_IO);
    TU_ASSERT_MSG_HAS(err, sub);
    struct stat sb;
    assert_int_equal(stat(sub, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    got = slurp(inner, &n);
    assert_int_equal(n, 4);
    free(got);
    assert_int_equal(count_dir_entries(g_dir), 3); /* ckpt, out.txt, adir: no temp file */
    assert_int_equal(count_dir_entries(sub), 1);

    /* a write that fails midway (the file size limit) leaves the existing file byte-identical
     * and no temporary file */
    size_t before_n;
    unsigned char *before = slurp(p, &before_n);
    struct rlimit old_lim, small;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old_lim), 0);
    small = old_lim;
    small.rlim_cur = 100;
    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    ccoe_error_clear(&err);
    ccoe_status st = ccoe_st_write(p, g_t, NT, NULL, 0, &err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old_lim), 0);
    signal(SIGXFSZ, old_sig);
    assert_int_equal(st, CCOE_ERR_IO);
    TU_ASSERT_MSG_HAS(err, p);
    size_t after_n;
    unsigned char *after = slurp(p, &after_n);
    assert_int_equal(after_n, before_n);
    assert_memory_equal(after, before, before_n);
    free(before);
    free(after);
    assert_int_equal(count_dir_entries(g_dir), 3);
    open_expect(p, CCOE_OK, NULL);

    /* a symlink planted under the temporary names an older version used does not redirect the
     * write */
    char victim[PATH_MAX], planted[PATH_MAX + 64];
    path_in_dir(victim, sizeof victim, "victim");
    spit(victim, "precious", 8);
    snprintf(planted, sizeof planted, "%s.tmp.%ld", p, (long)getpid());
    assert_int_equal(symlink(victim, planted), 0);
    write_good(p);
    got = slurp(victim, &n);
    assert_int_equal(n, 8);
    assert_memory_equal(got, "precious", 8);
    free(got);
    open_expect(p, CCOE_OK, NULL);
    assert_int_equal(unlink(planted), 0);
    assert_int_equal(unlink(victim), 0);
}

/* Stale temporary files of a killed writer are removed; nothing else is. */
static void test_stale_temps(void **state)
{
    (void)state;
    char p[PATH_MAX];
    path_in_dir(p, sizeof p, "checkpoint.safetensors");
    write_good(p);
    /* pids above the kernel's limit (2^22) belong to no process */
    static const char *const stale[] = {".tmp.999999999.0123456789abcdef", ".tmp.999999998"};
    static const char *const keep[] = {
        ".tmp.999999997.0123456789abcdeX", /* not a name the writer makes */
        ".tmpx.999999996",
        ".tmp.999999995.fresh",
    };
    char name[PATH_MAX + 64];
    struct timespec old_times[2] = {{.tv_sec = time(NULL) - 3600}, {.tv_sec = time(NULL) - 3600}};
    for (size_t i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "%s%s", p, stale[i]);
        spit(name, "partial", 7);
        assert_int_equal(utimensat(AT_FDCWD, name, old_times, 0), 0);
    }
    for (size_t i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s%s", p, keep[i]);
        spit(name, "other", 5);
        assert_int_equal(utimensat(AT_FDCWD, name, old_times, 0), 0);
    }
    /* a recent one (its writer may be on another machine), ours, a live process's, a symlink */
    snprintf(name, sizeof name, "%s.tmp.999999994.0123456789abcdef", p);
    spit(name, "recent", 6);
    snprintf(name, sizeof name, "%s.tmp.%ld.0123456789abcdef", p, (long)getpid());
    spit(name, "mine", 4);
    assert_int_equal(utimensat(AT_FDCWD, name, old_times, 0), 0);
    snprintf(name, sizeof name, "%s.tmp.1.0123456789abcdef", p);
    spit(name, "init's", 6);
    assert_int_equal(utimensat(AT_FDCWD, name, old_times, 0), 0);
    char target[PATH_MAX];
    path_in_dir(target, sizeof target, "target");
    spit(target, "t", 1);
    snprintf(name, sizeof name, "%s.tmp.999999993.0123456789abcdef", p);
    assert_int_equal(symlink(target, name), 0);
    int before = count_dir_entries(g_dir);
    char log[4096] = "";
    FILE *mem = fmemopen(log, sizeof log - 1, "w");
    assert_non_null(mem);
    assert_int_equal(ccoe_remove_stale_temps(p, 600, mem), 2);
    fclose(mem);
    assert_non_null(strstr(log, "999999999.0123456789abcdef"));
    assert_non_null(strstr(log, "killed run"));
    assert_int_equal(count_dir_entries(g_dir), before - 2);
    for (size_t i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "%s%s", p, stale[i]);
        assert_int_equal(access(name, F_OK), -1);
    }
    assert_int_equal(access(target, F_OK), 0);
    /* with no minimum age the recent one goes too; a second pass finds nothing */
    assert_int_equal(ccoe_remove_stale_temps(p, 0, NULL), 1);
    assert_int_equal(ccoe_remove_stale_temps(p, 0, NULL), 0);
    open_expect(p, CCOE_OK, NULL);
}

/* ---- F16 / BF16 writing: rounding against a plain reference ---- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The reference: the finite positive values of a 16-bit format (bits -> float), sorted with
 * their bits; round(v) is the nearest of them, a tie going to the even bit pattern, and past
 * the largest by half an ulp of it or more (F16) Inf. */
typedef struct half_table {
    float v[65536];
    uint16_t bits[65536];
    int n;
} half_table;

static void half_table_fill(half_table *t, int bf16)
{
    t->n = 0;
    for (uint32_t h = 0; h < 0x8000; h++) {
        float v = bf16 ? ccoe_bf16_to_f32((uint16_t)h) : ccoe_f16_to_f32((uint16_t)h);
        if (isfinite(v))
            t->v[t->n++] = v;
    }
    qsort(t->v, (size_t)t->n, sizeof t->v[0], cmp_float);
    for (int i = 0; i < t->n; i++) /* positive values' bits grow with the value */
        t->bits[i] = (uint16_t)i;
}

static uint16_t ref_round(const half_table *t, float v)
{
    const uint16_t sign = signbit(v) ? 0x8000 : 0;
    const double a = fabs((double)v);
    int lo = 0, hi = t->n - 1;
    if (a >= t->v[hi]) {
        /* beyond the largest: Inf from half an ulp above it (the next step's midpoint) */
        const double ulp = (double)t->v[hi] - (double)t->v[hi - 1];
        return a >= (double)t->v[hi] + ulp / 2 ? (uint16_t)(sign | (t->bits[hi] + 1))
                                                : (uint16_t)(sign | t->bits[hi]);
    }
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if ((double)t->v[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    const double dl = a - t->v[lo], dh = t->v[hi] - a;
    int pick = dl < dh ? lo : dh < dl ? hi : (t->bits[lo] & 1) ? hi : lo;
    return (uint16_t)(sign | t->bits[pick]);
}

static void test_half_rounding(void **state)
{
    (void)state;
    static half_table t;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        half_table_fill(&t, bf16);
        uint16_t (*to)(float) = bf16 ? ccoe_f32_to_bf16 : ccoe_f32_to_f16;
        float (*from)(uint16_t) = bf16 ? ccoe_bf16_to_f32 : ccoe_f16_to_f32;
        /* every value of the format comes back to its own bits; NaN stays NaN */
        for (uint32_t h = 0; h < 0x10000; h++) {
            float v = from((uint16_t)h);
            if (isnan(v))
                assert_true(isnan(from(to(v))));
            else
                assert_int_equal(to(v), h);
        }
        /* the midpoints between neighbours (ties: to even), and random floats from the
         * subnormals to past the largest value, against the reference */
        for (int i = 0; i + 1 < t.n; i++) {
            float mid = (float)(((double)t.v[i] + (double)t.v[i + 1]) / 2);
            assert_int_equal(to(mid), ref_round(&t, mid));
            assert_int_equal(to(-mid), ref_round(&t, -mid));
        }
        uint64_t r = 12345;
        for (int i = 0; i < 200000; i++) {
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            uint32_t bits = (uint32_t)(r >> 32);
            if (!bf16) /* exponents around half's range: 2^-30 .. 2^20 */
                bits = (bits & 0x807fffffu) | ((uint32_t)(97 + (r >> 20) % 51) << 23);
            float v;
            memcpy(&v, &bits, sizeof v);
            if (!isfinite(v))
                continue;
            uint16_t want = ref_round(&t, v), got = to(v);
            if (got != want)
                fprintf(stderr, "%s(%.9g): got 0x%04x, want 0x%04x\n", bf16 ? "bf16" : "f16",
                        (double)v, got, want);
            assert_int_equal(got, want);
        }
    }
    assert_int_equal(ccoe_f32_to_f16(65519.99f), 0x7bff);
    assert_int_equal(ccoe_f32_to_f16(65520.0f), 0x7c00);

    /* the writer: BF16 and F16 files read back as the rounded values; F16 refuses a value
     * beyond its range and leaves no file */
    float data[6] = {0.1f, -3.14159265f, 1e-6f, 65504.0f, 1.0f / 3.0f, 0.0f};
    ccoe_st_tensor tt = {.name = "w", .ndim = 2, .shape = {2, 3}, .data = data};
    for (int dt = CCOE_ST_OUT_F16; dt <= CCOE_ST_OUT_BF16; dt++) {
        char path[PATH_MAX];
        path_in_dir(path, sizeof path, dt == CCOE_ST_OUT_F16 ? "h.safetensors" : "b.safetensors");
        ccoe_error err = {0};
        assert_int_equal(ccoe_st_write_plain_as(path, &tt, 1, NULL, 0, dt, &err), CCOE_OK);
        ccoe_st_file *f = NULL;
        assert_int_equal(
            ccoe_st_open_flags(path, CCOE_ST_ALLOW_UNCHECKED | CCOE_ST_ALLOW_HALF, &f, &err),
            CCOE_OK);
        assert_string_equal(ccoe_st_dtype(f, "w"), dt == CCOE_ST_OUT_F16 ? "F16" : "BF16");
        const float *back = ccoe_st_find(f, "w", NULL, NULL);
        for (int i = 0; i < 6; i++) {
            float want = dt == CCOE_ST_OUT_F16 ? ccoe_f16_to_f32(ccoe_f32_to_f16(data[i]))
                                               : ccoe_bf16_to_f32(ccoe_f32_to_bf16(data[i]));
            assert_memory_equal(&back[i], &want, sizeof want);
        }
        ccoe_st_close(f);
    }
    data[5] = 70000.0f;
    char path[PATH_MAX];
    path_in_dir(path, sizeof path, "over.safetensors");
    ccoe_error err = {0};
    assert_int_equal(ccoe_st_write_plain_as(path, &tt, 1, NULL, 0, CCOE_ST_OUT_F16, &err),
                     CCOE_ERR_NUMERIC);
    TU_ASSERT_MSG_HAS(err, "'w' holds 70000 at element 5");
    TU_ASSERT_MSG_HAS(err, "range of F16");
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(ccoe_st_write_plain_as(path, &tt, 1, NULL, 0, CCOE_ST_OUT_BF16, &err),
                     CCOE_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_layout, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_truncation, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_corruption, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_handmade_invalid, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_many_tensors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_read_into_mismatch, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_python_compat, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_write_errors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_atomic_write, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_stale_temps, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_half_rounding, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
