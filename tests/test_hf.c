/* test_hf.c - `ccoe import` / `ccoe export` of Hugging Face GPT-2 directories.
 *
 * The test writes its own tiny HF directories (config.json, safetensors written here by a
 * writer independent of ccoe's, F32/F16/BF16, one file or shards with an index, with and
 * without the "transformer." prefix, tied heads stored or omitted, untied heads, the
 * attention-mask buffers) and checks: every ccoe tensor is the HF tensor (Conv1D weights
 * transposed), import -> export -> import is bit-identical, the export reproduces the HF
 * tensors, a CCoE expert's path exports as a complete GPT-2, every refusal names the file and
 * the tensor and leaves no output, and the logits of the committed fixture
 * tests/fixtures/hf-gpt2-tiny/ match an independent float64 forward
 * (tests/fixtures/gen_hf_gpt2_tiny.py) to 1e-4.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "checkpoint.h"
#include "config.h"
#include "taskmap.h"
#include "hf.h"
#include "model.h"
#include "safetensors.h"
#include "tokenizer.h"

static char g_dir[64];
static char g_src[1024]; /* the source tree (CCOE_SOURCE_DIR) */

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/ccoe-test-hf-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    const char *s = getenv("CCOE_SOURCE_DIR");
    snprintf(g_src, sizeof g_src, "%s", s ? s : ".");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void copy(const char *from, const char *to)
{
    char cmd[3000];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    assert_int_equal(system(cmd), 0);
}

/* ---- an independent safetensors writer (any dtype) ---- */

enum { DT_F32, DT_F16, DT_BF16, DT_F64, DT_BOOL };
static const char *const k_dt[] = {"F32", "F16", "BF16", "F64", "BOOL"};
static const int k_dt_bytes[] = {4, 2, 2, 8, 1};

typedef struct tt {
    char name[96];
    int ndim;
    int64_t shape[4];
    float *data; /* values exactly representable in every dtype used */
    int own;     /* 1 + this tensor's dtype; 0: the file's */
} tt;

static size_t numel(const tt *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

/* f32 -> f16 bits for 0 and normal half values (all the test uses). */
static uint16_t to_f16(float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    if ((b & 0x7fffffffu) == 0)
        return (uint16_t)(b >> 16);
    if ((b & 0x7f800000u) == 0x7f800000u) /* Inf / NaN */
        return (uint16_t)(((b >> 16) & 0x8000u) | 0x7c00u | ((b & 0x7fffffu) ? 0x200u : 0u));
    int e = (int)((b >> 23) & 0xff) - 127 + 15;
    return (uint16_t)(((b >> 16) & 0x8000u) | ((uint32_t)e << 10) | ((b >> 13) & 0x3ffu));
}

static void write_st(const char *path, const tt *t, int n, int dtype)
{
    char *hdr = malloc(1 << 20);
    assert_non_null(hdr);
    size_t off = 0, len = 0;
    len += (size_t)sprintf(hdr + len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        const int dt = t[i].own ? t[i].own - 1 : dtype;
        size_t bytes = numel(&t[i]) * (size_t)k_dt_bytes[dt];
        len += (size_t)sprintf(hdr + len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name,
                               k_dt[dt]);
        for (int d = 0; d < t[i].ndim; d++)
            len += (size_t)sprintf(hdr + len, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        len += (size_t)sprintf(hdr + len, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    len += (size_t)sprintf(hdr + len, "}");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t hl = len;
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, len, f);
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < numel(&t[i]); k++) {
            float v = t[i].data[k];
            const int dt = t[i].own ? t[i].own - 1 : dtype;
            if (dt == DT_BOOL) {
                unsigned char c = v != 0;
                fwrite(&c, 1, 1, f);
            } else if (dt == DT_F32) {
                fwrite(&v, 4, 1, f);
            } else if (dt == DT_F64) {
                double d = v;
                fwrite(&d, 8, 1, f);
            } else {
                uint32_t b;
                memcpy(&b, &v, 4);
                uint16_t h = dt == DT_F16 ? to_f16(v) : (uint16_t)(b >> 16);
                fwrite(&h, 2, 1, f);
            }
        }
    assert_int_equal(fclose(f), 0);
    free(hdr);
}

/* ---- tiny GPT-2 directories ---- */

typedef struct gpt2_opts {
    int L, C, H, P, V, F;  /* F: 0 = n_inner null (4C) */
    const char *prefix;    /* "transformer." or "" */
    int dtype;
    int shards;            /* 1: model.safetensors; > 1: an index and that many shards */
    int tie;               /* tie_word_embeddings */
    int store_head;        /* lm_head.weight stored (tied: a copy of wte) */
    int buffers;           /* attn.bias / attn.masked_bias (2: the mask as BOOL) */
    const char *extra_cfg; /* appended to config.json's members, or NULL */
    uint64_t seed;
} gpt2_opts;

typedef struct gpt2_dir {
    tt t[256];
    int n;
    int F;
} gpt2_dir;

static float *rand_k64(size_t n, uint64_t seed)
{
    /* k/64, |k| < 128: exact in F32, F16 and BF16 */
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    uint64_t s = seed * 2654435761u + 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int k = (int)((s >> 33) % 255) - 127;
        x[i] = (float)k / 64.0f;
    }
    return x;
}

static tt *add(gpt2_dir *g, const char *prefix, const char *name, int ndim, int64_t d0,
               int64_t d1, uint64_t seed)
{
    tt *t = &g->t[g->n++];
    snprintf(t->name, sizeof t->name, "%s%s", prefix, name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->data = rand_k64(numel(t), seed);
    return t;
}

static const tt *find_tt(const gpt2_dir *g, const char *name)
{
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->t[i].name, name) == 0)
            return &g->t[i];
    return NULL;
}

static void free_dir(gpt2_dir *g)
{
    for (int i = 0; i < g->n; i++)
        free(g->t[i].data);
    g->n = 0;
}

/* Builds the tensors of o into g (no files). */
static void gpt2_tensors(const gpt2_opts *o, gpt2_dir *g)
{
    memset(g, 0, sizeof *g);
    const int C = o->C, F = o->F ? o->F : 4 * o->C;
    g->F = F;
    uint64_t s = o->seed;
    add(g, o->prefix, "wte.weight", 2, o->V, C, s++);
    add(g, o->prefix, "wpe.weight", 2, o->P, C, s++);
    char nm[96];
    for (int l = 0; l < o->L; l++) {
#define B(suffix, nd, d0, d1)                               \
    snprintf(nm, sizeof nm, "h.%d." suffix, l);             \
    add(g, o->prefix, nm, nd, d0, d1, s++)
        B("ln_1.weight", 1, C, 0);
        B("ln_1.bias", 1, C, 0);
        B("attn.c_attn.weight", 2, C, 3 * C);
        B("attn.c_attn.bias", 1, 3 * C, 0);
        B("attn.c_proj.weight", 2, C, C);
        B("attn.c_proj.bias", 1, C, 0);
        B("ln_2.weight", 1, C, 0);
        B("ln_2.bias", 1, C, 0);
        B("mlp.c_fc.weight", 2, C, F);
        B("mlp.c_fc.bias", 1, F, 0);
        B("mlp.c_proj.weight", 2, F, C);
        B("mlp.c_proj.bias", 1, C, 0);
        if (o->buffers) {
            tt *b = add(g, o->prefix, "", 4, 1, 1, s++);
            snprintf(b->name, sizeof b->name, "%sh.%d.attn.bias", o->prefix, l);
            b->shape[2] = b->shape[3] = o->P;
            free(b->data);
            b->data = calloc((size_t)o->P * o->P, sizeof(float));
            for (int i = 0; i < o->P; i++)
                for (int j = 0; j <= i; j++)
                    b->data[i * o->P + j] = 1;
            if (o->buffers == 2)
                b->own = 1 + DT_BOOL;
            b = add(g, o->prefix, "", 0, 1, 0, s++);
            snprintf(b->name, sizeof b->name, "%sh.%d.attn.masked_bias", o->prefix, l);
            b->data[0] = -16384.0f;
        }
#undef B
    }
    add(g, o->prefix, "ln_f.weight", 1, C, 0, s++);
    add(g, o->prefix, "ln_f.bias", 1, C, 0, s++);
    if (o->store_head) {
        tt *h = add(g, "", "lm_head.weight", 2, o->V, C, s++);
        if (o->tie)
            memcpy(h->data, g->t[0].data, numel(h) * sizeof(float));
    }
}

static void write_weights(const char *dir, const gpt2_dir *g, int dtype, int shards);

/* Writes g as the directory dir with o's config (and the fixture's tokenizer files). */
static void gpt2_write(const char *dir, const gpt2_opts *o, const gpt2_dir *g)
{
    mkdir(dir, 0777);
    char p[512], cfg[2048];
    char inner[32];
    if (o->F)
        snprintf(inner, sizeof inner, "%d", o->F);
    else
        snprintf(inner, sizeof inner, "null");
    /* extra members first: cJSON finds the first of two equal keys */
    snprintf(cfg, sizeof cfg,
             "{%s%s\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\", "
             "\"activation_function\": \"gelu_new\", \"n_layer\": %d, \"n_embd\": %d, "
             "\"n_head\": %d, \"n_positions\": %d, \"n_ctx\": %d, \"n_inner\": %s, "
             "\"vocab_size\": %d, \"layer_norm_epsilon\": 1e-05, \"tie_word_embeddings\": %s}",
             o->extra_cfg ? o->extra_cfg : "", o->extra_cfg ? ", " : "", o->L, o->C, o->H, o->P,
             o->P, inner, o->V, o->tie ? "true" : "false");
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, cfg);
    write_weights(dir, g, o->dtype, o->shards);
}

/* Writes g's tensors into dir (model.safetensors, or an index and that many shards) with the
 * fixture's tokenizer files. */
static void write_weights(const char *dir, const gpt2_dir *g, int dtype, int shards)
{
    char p[512];
    if (shards <= 1) {
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        write_st(p, g->t, g->n, dtype);
    } else {
        char *idx = malloc(1 << 16);
        size_t len = (size_t)sprintf(idx, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
        int per = (g->n + shards - 1) / shards;
        for (int k = 0; k < shards; k++) {
            int a = k * per, b = a + per < g->n ? a + per : g->n;
            snprintf(p, sizeof p, "%s/model-%05d-of-%05d.safetensors", dir, k + 1, shards);
            write_st(p, g->t + a, b - a, dtype);
            for (int i = a; i < b; i++)
                len += (size_t)sprintf(idx + len, "%s\"%s\": \"model-%05d-of-%05d.safetensors\"",
                                       i ? ", " : "", g->t[i].name, k + 1, shards);
        }
        sprintf(idx + len, "}}");
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
        write_text(p, idx);
        free(idx);
    }
    char from[1200];
    snprintf(from, sizeof from, "%s/tests/fixtures/hf-gpt2-tiny/vocab.json", g_src);
    snprintf(p, sizeof p, "%s/vocab.json", dir);
    copy(from, p);
    snprintf(from, sizeof from, "%s/tests/fixtures/hf-gpt2-tiny/merges.txt", g_src);
    snprintf(p, sizeof p, "%s/merges.txt", dir);
    copy(from, p);
}

static gpt2_opts base_opts(void)
{
    return (gpt2_opts){.L = 2, .C = 16, .H = 4, .P = 8, .V = 272, .prefix = "transformer.",
                       .dtype = DT_F32, .shards = 1, .tie = 1, .seed = 7};
}

static ccoe_status import(const char *hf, const char *out, ccoe_error *err)
{
    ccoe_hf_import_opts o = {.hf_dir = hf, .out = out};
    memset(err, 0, sizeof *err);
    return ccoe_hf_import(&o, NULL, err);
}

/* Every ccoe tensor of the checkpoint equals its HF source (matrices transposed). */
static void check_matches(const char *ck, const gpt2_opts *o, const gpt2_dir *g)
{
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    ccoe_error err = {0};
    assert_int_equal(ccoe_checkpoint_open(ck, &cfg, &f, &err), CCOE_OK);
    assert_int_equal(cfg.model.n_layer, o->L);
    assert_int_equal(cfg.model.n_embd, o->C);
    assert_int_equal(cfg.model.n_head, o->H);
    assert_int_equal(cfg.model.seq_len, o->P);
    assert_int_equal(cfg.model.vocab_size, o->V);
    assert_int_equal(cfg.model.ffn_hidden, g->F);
    assert_int_equal(cfg.model.tied_head, o->tie);
    const char *pre = o->prefix;
    char hn[128], cn[128];
    struct { const char *hf, *ccoe; int transposed; } map[] = {
        {"ln_1.weight", "ln1.weight", 0},        {"ln_1.bias", "ln1.bias", 0},
        {"attn.c_attn.weight", "attn.qkv.weight", 1}, {"attn.c_attn.bias", "attn.qkv.bias", 0},
        {"attn.c_proj.weight", "attn.proj.weight", 1}, {"attn.c_proj.bias", "attn.proj.bias", 0},
        {"ln_2.weight", "ln2.weight", 0},        {"ln_2.bias", "ln2.bias", 0},
        {"mlp.c_fc.weight", "mlp.fc.weight", 1}, {"mlp.c_fc.bias", "mlp.fc.bias", 0},
        {"mlp.c_proj.weight", "mlp.proj.weight", 1}, {"mlp.c_proj.bias", "mlp.proj.bias", 0}};
    size_t checked = 0;
    for (int l = 0; l < o->L; l++)
        for (size_t k = 0; k < sizeof map / sizeof map[0]; k++) {
            snprintf(hn, sizeof hn, "%sh.%d.%s", pre, l, map[k].hf);
            snprintf(cn, sizeof cn, "blocks.%d.%s", l, map[k].ccoe);
            const tt *h = find_tt(g, hn);
            int nd = 0;
            int64_t sh[4];
            const float *c = ccoe_st_find(f, cn, &nd, sh);
            assert_non_null(h);
            assert_non_null(c);
            if (map[k].transposed) {
                /* HF Conv1D (in, out) against ccoe (out, in) */
                assert_int_equal(sh[0], h->shape[1]);
                assert_int_equal(sh[1], h->shape[0]);
                for (int64_t i = 0; i < h->shape[0]; i++)
                    for (int64_t j = 0; j < h->shape[1]; j++)
                        assert_true(c[j * h->shape[0] + i] == h->data[i * h->shape[1] + j]);
            } else {
                assert_memory_equal(c, h->data, numel(h) * sizeof(float));
            }
            checked++;
        }
    snprintf(hn, sizeof hn, "%swte.weight", pre);
    assert_memory_equal(ccoe_st_find(f, "wte", NULL, NULL), find_tt(g, hn)->data,
                        (size_t)o->V * o->C * sizeof(float));
    snprintf(hn, sizeof hn, "%swpe.weight", pre);
    assert_memory_equal(ccoe_st_find(f, "wpe", NULL, NULL), find_tt(g, hn)->data,
                        (size_t)o->P * o->C * sizeof(float));
    snprintf(hn, sizeof hn, "%sln_f.bias", pre);
    assert_memory_equal(ccoe_st_find(f, "lnf.bias", NULL, NULL), find_tt(g, hn)->data,
                        (size_t)o->C * sizeof(float));
    const float *head = ccoe_st_find(f, "lm_head.weight", NULL, NULL);
    if (o->tie) {
        assert_null(head);
    } else {
        assert_non_null(head);
        assert_memory_equal(head, find_tt(g, "lm_head.weight")->data,
                            (size_t)o->V * o->C * sizeof(float));
    }
    assert_int_equal(checked, (size_t)o->L * 12);
    ccoe_st_close(f);
}

/* Import of each layout variant, then export, then import again: bit-identical parameters, and
 * the exported file holds the HF tensors themselves (under save_pretrained's names). */
static void test_layouts_and_round_trips(void **state)
{
    (void)state;
    struct { const char *what; gpt2_opts o; } cases[8];
    int n = 0;
    gpt2_opts o = base_opts();
    cases[n++] = (typeof(cases[0])){"transformer. prefix, F32, tied head omitted", o};
    o = base_opts();
    o.prefix = "";
    o.dtype = DT_BF16;
    o.shards = 2;
    o.store_head = 1;
    o.buffers = 2;
    cases[n++] = (typeof(cases[0])){"no prefix, BF16, 2 shards, tied head stored, BOOL mask buffers", o};
    o = base_opts();
    o.dtype = DT_F16;
    o.shards = 3;
    o.tie = 0;
    o.store_head = 1;
    o.F = 24;
    o.L = 3;
    cases[n++] = (typeof(cases[0])){"F16, 3 shards, untied head, n_inner 24", o};
    o = base_opts();
    o.prefix = "";
    o.tie = 0;
    o.store_head = 1;
    o.buffers = 1;
    o.extra_cfg = "\"activation_function\": \"gelu_pytorch_tanh\"";
    cases[n++] = (typeof(cases[0])){"no prefix, untied, gelu_pytorch_tanh", o};
    for (int c = 0; c < n; c++) {
        fprintf(stderr, "case %d: %s\n", c, cases[c].what);
        char hf[256], ck[256], ex[256], ck2[256], p[300];
        snprintf(hf, sizeof hf, "%s/layout%d", g_dir, c);
        snprintf(ck, sizeof ck, "%s/layout%d.safetensors", g_dir, c);
        snprintf(ex, sizeof ex, "%s/layout%d-export", g_dir, c);
        snprintf(ck2, sizeof ck2, "%s/layout%d-again.safetensors", g_dir, c);
        gpt2_dir g;
        gpt2_tensors(&cases[c].o, &g);
        gpt2_write(hf, &cases[c].o, &g);
        ccoe_error err;
        ccoe_status s = import(hf, ck, &err);
        if (s != CCOE_OK)
            fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(s, CCOE_OK);
        snprintf(p, sizeof p, "%s/layout%d.tokenizer/vocab.json", g_dir, c);
        assert_true(exists(p));
        check_matches(ck, &cases[c].o, &g);

        ccoe_hf_export_opts eo = {.model = ck, .out_dir = ex};
        s = ccoe_hf_export(&eo, NULL, &err);
        if (s != CCOE_OK)
            fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(s, CCOE_OK);
        /* the export: plain safetensors (no ccoe checksum, format pt), save_pretrained names */
        snprintf(p, sizeof p, "%s/model.safetensors", ex);
        ccoe_st_file *f = NULL;
        assert_int_equal(ccoe_st_open(p, &f, &err), CCOE_ERR_FORMAT); /* no ccoe checksum */
        assert_int_equal(ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED, &f, &err), CCOE_OK);
        assert_int_equal(ccoe_st_checked(f), CCOE_ST_CHECK_NONE);
        assert_string_equal(ccoe_st_meta(f, "format"), "pt");
        size_t want = 0;
        for (int i = 0; i < g.n; i++) {
            const char *name = g.t[i].name;
            if (strstr(name, ".attn.bias") || strstr(name, "masked_bias"))
                continue; /* buffers are not exported */
            if (strcmp(name, "lm_head.weight") == 0 && cases[c].o.tie)
                continue; /* tied: save_pretrained omits it */
            char en[128];
            if (strcmp(name, "lm_head.weight") == 0 || cases[c].o.prefix[0])
                snprintf(en, sizeof en, "%s", name);
            else
                snprintf(en, sizeof en, "transformer.%s", name);
            int nd = 0;
            int64_t sh[4];
            const float *d = ccoe_st_find(f, en, &nd, sh);
            if (!d)
                fprintf(stderr, "export lacks %s\n", en);
            assert_non_null(d);
            assert_int_equal(nd, g.t[i].ndim);
            for (int k = 0; k < nd; k++)
                assert_int_equal(sh[k], g.t[i].shape[k]);
            assert_memory_equal(d, g.t[i].data, numel(&g.t[i]) * sizeof(float));
            want++;
        }
        assert_int_equal(ccoe_st_count(f), want);
        ccoe_st_close(f);
        snprintf(p, sizeof p, "%s/config.json", ex);
        assert_true(exists(p));
        snprintf(p, sizeof p, "%s/merges.txt", ex);
        assert_true(exists(p));

        s = import(ex, ck2, &err);
        if (s != CCOE_OK)
            fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(s, CCOE_OK);
        ccoe_st_file *a = NULL, *b = NULL;
        assert_int_equal(ccoe_st_open(ck, &a, &err), CCOE_OK);
        assert_int_equal(ccoe_st_open(ck2, &b, &err), CCOE_OK);
        ccoe_compare_result r;
        FILE *devnull = fopen("/dev/null", "w");
        assert_int_equal(ccoe_checkpoint_compare(a, b, CCOE_CMP_PARAMS, devnull, &r), 1);
        fclose(devnull);
        assert_int_equal(r.differ + r.only_a + r.only_b, 0);
        ccoe_st_close(a);
        ccoe_st_close(b);
        free_dir(&g);
    }
}

/* Half-precision conversion: every F16 bit pattern against its definition; BF16 = the top
 * half of a float. */
static void test_half_conversion(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        const int sign = h >> 15, ex = (h >> 10) & 31, man = h & 1023;
        float got = ccoe_f16_to_f32((uint16_t)h);
        if (ex == 31) {
            assert_true(man ? isnan(got) : isinf(got));
            assert_int_equal(signbit(got) != 0, sign);
            continue;
        }
        double want = ex ? ldexp(1024 + man, ex - 25) : ldexp(man, -24);
        if (sign)
            want = -want;
        assert_true((double)got == want);
        assert_int_equal(signbit(got) != 0, sign);
    }
    /* a half file is refused unless asked for, then read as floats; BOOL only as a buffer */
    tt t[2] = {{.name = "a", .ndim = 2, .shape = {3, 5}}, {.name = "m", .ndim = 1, .shape = {4}}};
    t[0].data = rand_k64(15, 3);
    t[1].data = rand_k64(4, 4);
    t[1].own = 1 + DT_BOOL;
    char p[128];
    snprintf(p, sizeof p, "%s/half.safetensors", g_dir);
    for (int dt = DT_F16; dt <= DT_BF16; dt++) {
        write_st(p, t, 1, dt);
        ccoe_st_file *f = NULL;
        ccoe_error err = {0};
        assert_int_equal(ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED, &f, &err), CCOE_ERR_FORMAT);
        TU_ASSERT_MSG_HAS(err, "only F32 is supported");
        assert_int_equal(ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED | CCOE_ST_ALLOW_HALF, &f, &err),
                         CCOE_OK);
        assert_string_equal(ccoe_st_dtype(f, "a"), k_dt[dt]);
        assert_memory_equal(ccoe_st_find(f, "a", NULL, NULL), t[0].data, 15 * sizeof(float));
        float back[15];
        const int64_t sh[2] = {3, 5};
        assert_int_equal(ccoe_st_read_into(f, "a", back, 2, sh, &err), CCOE_OK);
        assert_memory_equal(back, t[0].data, sizeof back);
        ccoe_st_close(f);
        write_st(p, t, 2, dt);
        assert_int_equal(ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED | CCOE_ST_ALLOW_HALF, &f, &err),
                         CCOE_ERR_FORMAT);
        TU_ASSERT_MSG_HAS(err, "dtype BOOL");
        assert_int_equal(ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED | CCOE_ST_ALLOW_HALF |
                                                   CCOE_ST_ALLOW_OTHER, &f, &err),
                         CCOE_OK);
        assert_string_equal(ccoe_st_dtype(f, "m"), "BOOL");
        assert_null(ccoe_st_find(f, "m", NULL, NULL));
        const int64_t s4[1] = {4};
        assert_int_equal(ccoe_st_read_into(f, "m", back, 1, s4, &err), CCOE_ERR_FORMAT);
        TU_ASSERT_MSG_HAS(err, "not a float");
        ccoe_st_close(f);
    }
    free(t[0].data);
    free(t[1].data);
    for (uint32_t h = 0; h < 65536; h += 7) {
        uint32_t bits = h << 16;
        float want;
        memcpy(&want, &bits, 4);
        float got = ccoe_bf16_to_f32((uint16_t)h);
        assert_true(memcmp(&got, &want, 4) == 0);
    }
}

/* Logits of the committed fixture against the independent float64 forward. */
/* The logits of fixture tests/fixtures/NAME against its float64 reference, to 1e-4. */
static void fixture_logits(const char *name)
{
    char hf[1200], ck[256], exp_path[1300];
    snprintf(hf, sizeof hf, "%s/tests/fixtures/%s", g_src, name);
    snprintf(ck, sizeof ck, "%s/fixture-%s.safetensors", g_dir, name);
    snprintf(exp_path, sizeof exp_path, "%s/expected_logits.txt", hf);
    ccoe_error err;
    ccoe_status s = import(hf, ck, &err);
    if (s != CCOE_OK)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(s, CCOE_OK);
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    assert_int_equal(ccoe_checkpoint_open(ck, &cfg, &f, &err), CCOE_OK);
    ccoe_gemm gemm;
    assert_int_equal(ccoe_gemm_init(&gemm, CCOE_GEMM_REF, 1, &err), CCOE_OK);
    static ccoe_model m;
    assert_int_equal(ccoe_model_init_moe(&m, &cfg.model, NULL, &cfg.moe, 1, cfg.model.seq_len,
                                         &gemm, 1, &err),
                     CCOE_OK);
    assert_int_equal(ccoe_checkpoint_load(f, ck, &m, NULL, NULL, &err), CCOE_OK);
    ccoe_st_close(f);
    FILE *e = fopen(exp_path, "r");
    assert_non_null(e);
    static char line[1 << 16];
    int32_t ids[64];
    int T = 0, rows = 0;
    const int V = cfg.model.vocab_size;
    double worst = 0;
    while (fgets(line, sizeof line, e)) {
        if (line[0] == '#')
            continue;
        char *p = line;
        if (strncmp(line, "seq ", 4) == 0) {
            p = strchr(line, ':') + 1;
            T = 0;
            char *end;
            for (long v = strtol(p, &end, 10); end != p; v = strtol(p, &end, 10)) {
                ids[T++] = (int32_t)v;
                p = end;
            }
            assert_true(T >= 1 && T <= cfg.model.seq_len);
            ccoe_model_forward(&m, ids, NULL, NULL, 1, T, NULL);
            continue;
        }
        assert_int_equal(strncmp(line, "row ", 4), 0);
        int pos = atoi(line + 4);
        assert_true(pos >= 0 && pos < T);
        const float *lg = ccoe_model_logits(&m, 0, pos);
        p = strchr(line, ':') + 1;
        for (int v = 0; v < V; v++) {
            char *end;
            double want = strtod(p, &end);
            assert_true(end != p);
            p = end;
            double d = fabs((double)lg[v] - want);
            if (d > worst)
                worst = d;
        }
        rows++;
    }
    fclose(e);
    fprintf(stderr, "fixture %s: %d logit rows, largest |ccoe - float64 reference| = %.3g\n",
            name, rows, worst);
    assert_true(rows >= 5);
    assert_true(worst < 1e-4);
    ccoe_model_free(&m);
}

static void test_fixture_logits(void **state)
{
    (void)state;
    fixture_logits("hf-gpt2-tiny");
}

/* LLaMA: GQA (4 heads over 2), untied head, rotary_emb.inv_freq buffers skipped; Qwen2: one
 * key/value head, q/k/v biases, tied head, rope_theta 1e6 (gen_hf_llama_tiny.py). */
static void test_fixture_logits_llama(void **state)
{
    (void)state;
    fixture_logits("hf-llama-tiny");
}

static void test_fixture_logits_qwen2(void **state)
{
    (void)state;
    fixture_logits("hf-qwen2-tiny");
}

/* ---- refusals: each names the problem, and nothing is written ---- */

typedef void (*mutate_fn)(const char *dir, gpt2_opts *o, gpt2_dir *g);

static void m_no_config(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    char p[300];
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
}
static void m_bad_json(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    char p[300];
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, "{\"model_type\": \"gpt2\", \"n_layer\": ");
}
static void m_cfg(const char *dir, const char *text)
{
    char p[300];
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, text);
}
static void m_llama(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    m_cfg(dir, "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\"}");
}
static void m_qwen2(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    m_cfg(dir, "{\"architectures\": [\"Qwen2ForTokenClassification\"], "
                   "\"model_type\": \"qwen2\"}");
}
static void m_mistral(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    m_cfg(dir, "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\"}");
}
static void m_bert(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    m_cfg(dir, "{\"architectures\": [\"BertModel\"], \"model_type\": \"bert\"}");
}
static void rewrite(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    char p[300];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    gpt2_write(dir, o, g);
}
static void m_gelu(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    o->extra_cfg = "\"activation_function\": \"gelu\"";
    rewrite(dir, o, g);
}
static void m_eps(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    o->extra_cfg = "\"layer_norm_epsilon\": 0.5";
    rewrite(dir, o, g);
}
static void m_cross(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    o->extra_cfg = "\"add_cross_attention\": true";
    rewrite(dir, o, g);
}
static void m_missing(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->t[i].name, "transformer.h.1.mlp.c_fc.bias") == 0) {
            free(g->t[i].data);
            g->t[i] = g->t[--g->n];
        }
    rewrite(dir, o, g);
}
static void m_shape(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    tt *t = (tt *)find_tt(g, "transformer.h.0.attn.c_attn.weight");
    int64_t a = t->shape[0];
    t->shape[0] = t->shape[1]; /* stored as a Linear (out, in) instead of Conv1D */
    t->shape[1] = a;
    rewrite(dir, o, g);
}
static void m_nan(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    ((tt *)find_tt(g, "transformer.h.1.attn.c_proj.weight"))->data[5] = NAN;
    rewrite(dir, o, g);
}
static void m_inf(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    ((tt *)find_tt(g, "transformer.wpe.weight"))->data[3] = -INFINITY;
    o->dtype = DT_F16;
    rewrite(dir, o, g);
}
static void m_unexpected(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    add(g, "transformer.", "h.0.attn.q_proj.weight", 2, o->C, o->C, 99);
    rewrite(dir, o, g);
}
static void m_extra_layer(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    add(g, "transformer.", "h.2.ln_1.weight", 1, o->C, 0, 98); /* n_layer = 2 */
    rewrite(dir, o, g);
}
static void m_untied_no_head(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    o->tie = 0;
    rewrite(dir, o, g);
}
static void m_no_weights(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    char p[300];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
}
static void m_f64(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    o->dtype = DT_F64;
    rewrite(dir, o, g);
}
static void m_truncated(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    char p[300];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    struct stat sb;
    stat(p, &sb);
    assert_int_equal(truncate(p, sb.st_size - 10), 0);
}
static void m_index_wrong(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    char p[300];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    o->shards = 2;
    gpt2_write(dir, o, g);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    /* point the first tensor at the second shard */
    FILE *f = fopen(p, "r");
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    char *q = strstr(buf, "model-00001-of-00002");
    q[10] = '2';
    write_text(p, buf);
}
static void m_no_tokenizer(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    char p[300];
    snprintf(p, sizeof p, "%s/merges.txt", dir);
    unlink(p);
}
static void m_small_vocab(const char *dir, gpt2_opts *o, gpt2_dir *g)
{
    o->V = 200; /* the tokenizer has 265 ids */
    free_dir(g);
    gpt2_tensors(o, g);
    rewrite(dir, o, g);
}

static void test_refusals(void **state)
{
    (void)state;
    struct { const char *what; mutate_fn fn; ccoe_status st; const char *m1, *m2; } cases[] = {
        {"no config.json", m_no_config, CCOE_ERR_IO, "has no config.json", "Hugging Face"},
        {"config.json not JSON", m_bad_json, CCOE_ERR_FORMAT, "config.json", "not a JSON"},
        {"llama without its keys", m_llama, CCOE_ERR_FORMAT, "\"num_hidden_layers\"",
         "required"},
        {"qwen2 of another class", m_qwen2, CCOE_ERR_FORMAT, "Qwen2ForTokenClassification",
         "Qwen2ForCausalLM"},
        {"mistral without its keys", m_mistral, CCOE_ERR_FORMAT, "\"num_hidden_layers\"",
         "required"},
        {"bert", m_bert, CCOE_ERR_FORMAT, "\"bert\"", "supports"},
        {"exact gelu", m_gelu, CCOE_ERR_FORMAT, "activation_function \"gelu\"", "tanh"},
        {"eps out of range", m_eps, CCOE_ERR_FORMAT, "layer_norm_epsilon = 0.5", "(0, 0.01]"},
        {"cross attention", m_cross, CCOE_ERR_FORMAT, "add_cross_attention", "not supported"},
        {"missing tensor", m_missing, CCOE_ERR_FORMAT, "'transformer.h.1.mlp.c_fc.bias'", "missing"},
        {"transposed c_attn", m_shape, CCOE_ERR_FORMAT, "'transformer.h.0.attn.c_attn.weight'",
         "has shape [48, 16] but config.json implies [16, 48]"},
        {"NaN", m_nan, CCOE_ERR_NUMERIC, "'transformer.h.1.attn.c_proj.weight' holds NaN",
         "model.safetensors"},
        {"Inf (F16)", m_inf, CCOE_ERR_NUMERIC, "'transformer.wpe.weight' holds Inf", "element 3"},
        {"unexpected tensor", m_unexpected, CCOE_ERR_FORMAT, "'transformer.h.0.attn.q_proj.weight'",
         "not part of a GPT2LMHeadModel"},
        {"block past n_layer", m_extra_layer, CCOE_ERR_FORMAT, "'transformer.h.2.ln_1.weight'",
         "n_layer = 2"},
        {"untied without lm_head", m_untied_no_head, CCOE_ERR_FORMAT, "tie_word_embeddings",
         "lm_head.weight"},
        {"no weights", m_no_weights, CCOE_ERR_IO, "neither model.safetensors", "safetensors"},
        {"F64 dtype", m_f64, CCOE_ERR_FORMAT, "'transformer.wte.weight' has dtype F64",
         "F32, F16 and BF16"},
        {"truncated file", m_truncated, CCOE_ERR_FORMAT, "model.safetensors", "truncated"},
        {"index names the wrong shard", m_index_wrong, CCOE_ERR_FORMAT, "index", "do not belong"},
        {"no tokenizer", m_no_tokenizer, CCOE_ERR_IO, "no tokenizer files", "--tokenizer"},
        {"tokenizer larger than vocab", m_small_vocab, CCOE_ERR_FORMAT, "265 ids",
         "vocab_size = 200"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fprintf(stderr, "refusal %zu: %s\n", c, cases[c].what);
        char hf[256], ck[256], tok[256];
        snprintf(hf, sizeof hf, "%s/bad%zu", g_dir, c);
        snprintf(ck, sizeof ck, "%s/bad%zu.safetensors", g_dir, c);
        snprintf(tok, sizeof tok, "%s/bad%zu.tokenizer", g_dir, c);
        gpt2_opts o = base_opts();
        gpt2_dir g;
        gpt2_tensors(&o, &g);
        gpt2_write(hf, &o, &g);
        cases[c].fn(hf, &o, &g);
        ccoe_error err;
        ccoe_status s = import(hf, ck, &err);
        if (s != cases[c].st)
            fprintf(stderr, "status %d, want %d: %s\n", s, cases[c].st, err.msg);
        assert_int_equal(s, cases[c].st);
        TU_ASSERT_MSG_HAS(err, cases[c].m1);
        TU_ASSERT_MSG_HAS(err, cases[c].m2);
        assert_false(exists(ck));
        assert_false(exists(tok));
        free_dir(&g);
    }
    /* an existing output is kept unless forced */
    char hf[256], ck[256];
    snprintf(hf, sizeof hf, "%s/exists", g_dir);
    snprintf(ck, sizeof ck, "%s/exists.safetensors", g_dir);
    gpt2_opts o = base_opts();
    gpt2_dir g;
    gpt2_tensors(&o, &g);
    gpt2_write(hf, &o, &g);
    write_text(ck, "keep me");
    ccoe_error err;
    assert_int_equal(import(hf, ck, &err), CCOE_ERR_IO);
    TU_ASSERT_MSG_HAS(err, "--force");
    ccoe_hf_import_opts io = {.hf_dir = hf, .out = ck, .force = 1};
    assert_int_equal(ccoe_hf_import(&io, NULL, &err), CCOE_OK);
    free_dir(&g);
}

/* A CCoE model: each path exports as a complete GPT-2 whose blocks are the path's (base
 * prefix, then the expert's own blocks; form ffn: the expert's FFNs swapped in) and whose head
 * is the path's; importing that export gives the path's tensors bit for bit. */
static void test_export_ccoe_paths(void **state)
{
    (void)state;
    /* GPT-2 bases, then a Qwen2-like (q/k/v biases, GQA) and a LLaMA-like base */
    const char *qwen[] = {"model.norm=rmsnorm", "model.ffn=swiglu", "model.pos=rope",
                          "model.bias=false", "model.qkv_bias=true", "model.n_head=4",
                          "model.n_kv_head=2", NULL};
    const char *llama[] = {"model.norm=rmsnorm", "model.ffn=swiglu", "model.pos=rope",
                           "model.bias=false", "model.n_head=4", "model.n_kv_head=1",
                           "model.norm_eps=1e-6", NULL};
    const char *none[] = {NULL};
    const char *gpt2_eps[] = {"model.norm_eps=3e-6", NULL}; /* layer_norm_epsilon */
    const char *forms[][4] = {
        {"ccoe.form=tail", "ccoe.experts=a:1,b:2", "ccoe.routes=arith:a,code:b", "ccoe.own_head=true"},
        {"ccoe.form=ffn", "ccoe.experts=a:1,b:2", "ccoe.routes=arith:a,code:b", "ccoe.own_head=false"},
        {"ccoe.form=tail", "ccoe.experts=a:1,b:2", "ccoe.routes=arith:a,code:b", "ccoe.own_head=true"},
        {"ccoe.form=ffn", "ccoe.experts=a:1,b:2", "ccoe.routes=arith:a,code:b", "ccoe.own_head=false"},
    };
    const char *const *models[] = {none, gpt2_eps, qwen, llama};
    for (int fi = 0; fi < 4; fi++) {
        ccoe_config cfg;
        ccoe_config_defaults(&cfg);
        const char *sets[] = {"model.n_layer=4", "model.n_embd=16", "model.n_head=2",
                              "model.seq_len=8", "model.vocab_size=272"};
        ccoe_error err = {0};
        for (size_t i = 0; i < 5; i++)
            assert_int_equal(ccoe_config_set(&cfg, sets[i], &err), CCOE_OK);
        for (int i = 0; i < 4; i++)
            assert_int_equal(ccoe_config_set(&cfg, forms[fi][i], &err), CCOE_OK);
        for (int i = 0; models[fi][i]; i++)
            assert_int_equal(ccoe_config_set(&cfg, models[fi][i], &err), CCOE_OK);
        char tokcfg[1300];
        snprintf(tokcfg, sizeof tokcfg, "data.tokenizer=%s/tests/fixtures/hf-gpt2-tiny", g_src);
        assert_int_equal(ccoe_config_set(&cfg, tokcfg, &err), CCOE_OK);
        assert_int_equal(ccoe_config_validate(&cfg, &err), CCOE_OK);
        const char names[3][CCOE_NAME_LEN] = {"arith", "code", "prose"};
        ccoe_taskmap gt;
        if (ccoe_taskmap_build(&gt, &cfg, names, 3, &err) != CCOE_OK)
            fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(err.status, CCOE_OK);
        ccoe_gemm gemm;
        assert_int_equal(ccoe_gemm_init(&gemm, CCOE_GEMM_REF, 1, &err), CCOE_OK);
        static ccoe_model m;
        assert_int_equal(ccoe_model_init_moe(&m, &cfg.model, &gt, &cfg.moe, 2, 8, &gemm, 1, &err),
                         CCOE_OK);
        ccoe_model_init_weights(&m, 5, CCOE_INIT_RANDOM);
        char ck[256], out[256];
        snprintf(ck, sizeof ck, "%s/ccoe%d.safetensors", g_dir, fi);
        snprintf(out, sizeof out, "%s/ccoe%d-all", g_dir, fi);
        assert_int_equal(ccoe_checkpoint_save(ck, &cfg, &m, NULL, NULL, &err), CCOE_OK);
        ccoe_hf_export_opts eo = {.model = ck, .path = "all", .out_dir = out};
        ccoe_status s = ccoe_hf_export(&eo, NULL, &err);
        if (s != CCOE_OK)
            fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(s, CCOE_OK);
        for (int p = 0; p < m.n_paths; p++) {
            char dir[300], ck2[320];
            snprintf(dir, sizeof dir, "%s/%s", out, p ? m.taskmap.experts[p - 1].name : "base");
            snprintf(ck2, sizeof ck2, "%s.safetensors", dir);
            s = import(dir, ck2, &err);
            if (s != CCOE_OK)
                fprintf(stderr, "%s\n", err.msg);
            assert_int_equal(s, CCOE_OK);
            ccoe_config c2;
            ccoe_st_file *f = NULL;
            assert_int_equal(ccoe_checkpoint_open(ck2, &c2, &f, &err), CCOE_OK);
            const ccoe_path *pa = &m.paths[p];
            assert_int_equal(c2.model.n_layer, pa->n_base + pa->n_own);
            const ccoe_head_view *hv = &m.w_heads[pa->head];
            assert_int_equal(c2.model.tied_head, hv->lm_head == m.wte);
            const size_t C = 16, F = (size_t)m.cfg.ffn_hidden *
                                         (m.cfg.ffn == CCOE_FFN_SWIGLU ? 2 : 1);
            const size_t W = (size_t)(m.cfg.n_head + 2 * ccoe_model_kv_heads(&m.cfg)) *
                             (C / (size_t)m.cfg.n_head);
            assert_int_equal(c2.model.pos, m.cfg.pos);
            assert_int_equal(ccoe_model_kv_heads(&c2.model), ccoe_model_kv_heads(&m.cfg));
            assert_int_equal(c2.model.qkv_bias, m.cfg.qkv_bias);
            assert_true(c2.model.norm_eps == m.cfg.norm_eps);
            for (int l = 0; l < c2.model.n_layer; l++) {
                const int inst = l < pa->n_base ? l : pa->first_inst + (l - pa->n_base);
                const ccoe_block_view *b = &m.w_blocks[inst], *ffn = b;
                if (pa->ffn_expert >= 0 && l >= pa->ffn_from)
                    ffn = &m.w_xffn[m.xffn_first[pa->ffn_expert] + l - pa->ffn_from];
                char nm[96];
                snprintf(nm, sizeof nm, "blocks.%d.attn.qkv.weight", l);
                assert_memory_equal(ccoe_st_find(f, nm, NULL, NULL), b->qkv_w, W * C * 4);
                snprintf(nm, sizeof nm, "blocks.%d.attn.qkv.bias", l);
                if (b->qkv_b)
                    assert_memory_equal(ccoe_st_find(f, nm, NULL, NULL), b->qkv_b, W * 4);
                snprintf(nm, sizeof nm, "blocks.%d.ln2.weight", l);
                assert_memory_equal(ccoe_st_find(f, nm, NULL, NULL), b->ln2_w, C * 4);
                snprintf(nm, sizeof nm, "blocks.%d.mlp.fc.weight", l);
                assert_memory_equal(ccoe_st_find(f, nm, NULL, NULL), ffn->fc_w, F * C * 4);
                snprintf(nm, sizeof nm, "blocks.%d.mlp.proj.weight", l);
                assert_memory_equal(ccoe_st_find(f, nm, NULL, NULL), ffn->fcproj_w,
                                    C * (size_t)m.cfg.ffn_hidden * 4);
            }
            assert_memory_equal(ccoe_st_find(f, "lnf.weight", NULL, NULL), hv->lnf_w, C * 4);
            if (hv->lm_head != m.wte)
                assert_memory_equal(ccoe_st_find(f, "lm_head.weight", NULL, NULL), hv->lm_head,
                                    272 * C * 4);
            ccoe_st_close(f);
        }
        /* one path by name; an unknown one is refused naming the choices */
        char one[256];
        snprintf(one, sizeof one, "%s/ccoe%d-b", g_dir, fi);
        eo = (ccoe_hf_export_opts){.model = ck, .path = "b", .out_dir = one};
        assert_int_equal(ccoe_hf_export(&eo, NULL, &err), CCOE_OK);
        eo.path = "zz";
        snprintf(one, sizeof one, "%s/ccoe%d-zz", g_dir, fi);
        eo.out_dir = one;
        assert_int_equal(ccoe_hf_export(&eo, NULL, &err), CCOE_ERR_ARG);
        TU_ASSERT_MSG_HAS(err, "base, all, a, b");
        assert_false(exists(one));
        /* an existing non-empty directory is not overwritten */
        eo.path = "base";
        eo.out_dir = out;
        assert_int_equal(ccoe_hf_export(&eo, NULL, &err), CCOE_ERR_IO);
        TU_ASSERT_MSG_HAS(err, "not empty");
        ccoe_model_free(&m);
    }
}

/* A model GPT-2 cannot express is refused by export. */
static void test_export_refuses_other_blocks(void **state)
{
    (void)state;
    struct { const char *sets[4]; const char *m1, *m2; } cases[] = {
        {{"model.norm=rmsnorm"}, "model.norm = rmsnorm", "GPT2LMHeadModel"},
        {{"model.pos=rope"}, "model.pos = rope", "LlamaForCausalLM"},
        {{"model.n_kv_head=1"}, "model.n_kv_head < n_head", "GPT2LMHeadModel"},
        {{"model.norm=rmsnorm", "model.ffn=swiglu", "model.pos=rope", "model.bias=true"},
         "model.bias = true", "LlamaForCausalLM"},
        {{"model.norm=rmsnorm", "model.ffn=swiglu", "model.pos=rope", "model.block=post_ln"},
         "model.block = post_ln", "Qwen2ForCausalLM"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fprintf(stderr, "export refusal %zu: %s\n", c, cases[c].m1);
        ccoe_config cfg;
        ccoe_config_defaults(&cfg);
        const char *sets[] = {"model.n_layer=1", "model.n_embd=16", "model.n_head=2",
                              "model.seq_len=8", "model.vocab_size=272"};
        ccoe_error err = {0};
        for (size_t i = 0; i < 5; i++)
            assert_int_equal(ccoe_config_set(&cfg, sets[i], &err), CCOE_OK);
        for (size_t i = 0; i < 4 && cases[c].sets[i]; i++)
            assert_int_equal(ccoe_config_set(&cfg, cases[c].sets[i], &err), CCOE_OK);
        assert_int_equal(ccoe_config_validate(&cfg, &err), CCOE_OK);
        ccoe_gemm gemm;
        assert_int_equal(ccoe_gemm_init(&gemm, CCOE_GEMM_REF, 1, &err), CCOE_OK);
        static ccoe_model m;
        assert_int_equal(
            ccoe_model_init_moe(&m, &cfg.model, NULL, &cfg.moe, 1, 8, &gemm, 1, &err), CCOE_OK);
        ccoe_model_init_weights(&m, 5, CCOE_INIT_RANDOM);
        char ck[256], out[256];
        snprintf(ck, sizeof ck, "%s/other%zu.safetensors", g_dir, c);
        snprintf(out, sizeof out, "%s/other%zu-hf", g_dir, c);
        assert_int_equal(ccoe_checkpoint_save(ck, &cfg, &m, NULL, NULL, &err), CCOE_OK);
        ccoe_model_free(&m);
        ccoe_hf_export_opts eo = {.model = ck, .out_dir = out};
        assert_int_equal(ccoe_hf_export(&eo, NULL, &err), CCOE_ERR_CONFIG);
        TU_ASSERT_MSG_HAS(err, cases[c].m1);
        TU_ASSERT_MSG_HAS(err, cases[c].m2);
        assert_false(exists(out));
    }
}

/* A byte-tokenizer model exports GPT-2 tokenizer files that encode every byte to ccoe's byte id
 * (vocab.json of the 256 byte stand-ins, no merges), and imports back. */
static void test_export_byte_tokenizer(void **state)
{
    (void)state;
    ccoe_config cfg;
    ccoe_config_defaults(&cfg);
    const char *sets[] = {"model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.seq_len=8",
                          "model.vocab_size=320", "data.tokenizer=byte"};
    ccoe_error err = {0};
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(ccoe_config_set(&cfg, sets[i], &err), CCOE_OK);
    assert_int_equal(ccoe_config_validate(&cfg, &err), CCOE_OK);
    ccoe_gemm gemm;
    assert_int_equal(ccoe_gemm_init(&gemm, CCOE_GEMM_REF, 1, &err), CCOE_OK);
    static ccoe_model m;
    assert_int_equal(ccoe_model_init_moe(&m, &cfg.model, NULL, &cfg.moe, 1, 8, &gemm, 1, &err),
                     CCOE_OK);
    ccoe_model_init_weights(&m, 3, CCOE_INIT_RANDOM);
    char ck[256], out[256], ck2[256];
    snprintf(ck, sizeof ck, "%s/byte.safetensors", g_dir);
    snprintf(out, sizeof out, "%s/byte-hf", g_dir);
    snprintf(ck2, sizeof ck2, "%s/byte-again.safetensors", g_dir);
    assert_int_equal(ccoe_checkpoint_save(ck, &cfg, &m, NULL, NULL, &err), CCOE_OK);
    ccoe_model_free(&m);
    ccoe_hf_export_opts eo = {.model = ck, .out_dir = out};
    assert_int_equal(ccoe_hf_export(&eo, NULL, &err), CCOE_OK);
    ccoe_tokenizer bpe, byte;
    ccoe_status s = ccoe_tokenizer_init(&bpe, out, &err);
    if (s != CCOE_OK)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(s, CCOE_OK);
    assert_int_equal(ccoe_tokenizer_init(&byte, "byte", &err), CCOE_OK);
    char text[256];
    for (int i = 0; i < 256; i++)
        text[i] = (char)(255 - i); /* every byte, invalid UTF-8 included */
    int32_t a[600], b[600];
    size_t na = bpe.ops->encode(bpe.self, text, sizeof text, a, 600);
    size_t nb = byte.ops->encode(byte.self, text, sizeof text, b, 600);
    assert_int_equal(na, 256);
    assert_int_equal(nb, 256);
    assert_memory_equal(a, b, 256 * sizeof a[0]);
    ccoe_tokenizer_free(&bpe);
    ccoe_tokenizer_free(&byte);
    assert_int_equal(import(out, ck2, &err), CCOE_OK);
    ccoe_st_file *x = NULL, *y = NULL;
    assert_int_equal(ccoe_st_open(ck, &x, &err), CCOE_OK);
    assert_int_equal(ccoe_st_open(ck2, &y, &err), CCOE_OK);
    FILE *devnull = fopen("/dev/null", "w");
    assert_int_equal(ccoe_checkpoint_compare(x, y, CCOE_CMP_PARAMS, devnull, NULL), 1);
    fclose(devnull);
    ccoe_st_close(x);
    ccoe_st_close(y);
}

/* ---- LLaMA / Qwen2 / Mistral directories ---- */

typedef struct llama_opts {
    const char *kind;      /* "llama", "qwen2" or "mistral" */
    int L, C, H, Hkv, P, V, F;
    const char *prefix;    /* "model." or "" */
    int dtype;
    int shards;
    int tie;               /* tie_word_embeddings */
    int store_head;        /* tied: lm_head.weight stored anyway (a copy) */
    int inv_freq;          /* the old rotary_emb.inv_freq buffers */
    const char *extra_cfg; /* members placed first in config.json, or NULL */
    uint64_t seed;
} llama_opts;

static llama_opts llama_base(const char *kind)
{
    return (llama_opts){.kind = kind, .L = 2, .C = 16, .H = 4, .Hkv = 2, .P = 8, .V = 272,
                        .F = 24, .prefix = "model.", .dtype = DT_F32, .shards = 1,
                        .seed = 11};
}

static void llama_tensors(const llama_opts *o, gpt2_dir *g)
{
    memset(g, 0, sizeof *g);
    const int C = o->C, hd = o->C / o->H, Q = o->H * hd, K = o->Hkv * hd, F = o->F;
    const int qwen = strcmp(o->kind, "qwen2") == 0;
    g->F = F;
    uint64_t s = o->seed;
    add(g, o->prefix, "embed_tokens.weight", 2, o->V, C, s++);
    char nm[96];
    for (int l = 0; l < o->L; l++) {
#define B(suffix, nd, d0, d1)                               \
    snprintf(nm, sizeof nm, "layers.%d." suffix, l);        \
    add(g, o->prefix, nm, nd, d0, d1, s++)
        B("input_layernorm.weight", 1, C, 0);
        B("self_attn.q_proj.weight", 2, Q, C);
        B("self_attn.k_proj.weight", 2, K, C);
        B("self_attn.v_proj.weight", 2, K, C);
        if (qwen) {
            B("self_attn.q_proj.bias", 1, Q, 0);
            B("self_attn.k_proj.bias", 1, K, 0);
            B("self_attn.v_proj.bias", 1, K, 0);
        }
        B("self_attn.o_proj.weight", 2, C, Q);
        B("post_attention_layernorm.weight", 1, C, 0);
        B("mlp.gate_proj.weight", 2, F, C);
        B("mlp.up_proj.weight", 2, F, C);
        B("mlp.down_proj.weight", 2, C, F);
        if (o->inv_freq) {
            B("self_attn.rotary_emb.inv_freq", 1, hd / 2, 0);
        }
#undef B
    }
    add(g, o->prefix, "norm.weight", 1, C, 0, s++);
    if (!o->tie || o->store_head) {
        tt *h = add(g, "", "lm_head.weight", 2, o->V, C, s++);
        if (o->tie)
            memcpy(h->data, g->t[0].data, numel(h) * sizeof(float));
    }
}

static void llama_write(const char *dir, const llama_opts *o, const gpt2_dir *g)
{
    mkdir(dir, 0777);
    char p[512], cfg[2048];
    const char *arch = strcmp(o->kind, "llama") == 0   ? "LlamaForCausalLM"
                       : strcmp(o->kind, "qwen2") == 0 ? "Qwen2ForCausalLM"
                                                       : "MistralForCausalLM";
    snprintf(cfg, sizeof cfg,
             "{%s%s\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"hidden_act\": "
             "\"silu\", \"num_hidden_layers\": %d, \"hidden_size\": %d, "
             "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
             "\"intermediate_size\": %d, \"max_position_embeddings\": %d, \"vocab_size\": %d, "
             "\"rms_norm_eps\": 1e-06, \"rope_theta\": 500000.0, \"rope_scaling\": null, "
             "\"sliding_window\": null, \"tie_word_embeddings\": %s}",
             o->extra_cfg ? o->extra_cfg : "", o->extra_cfg ? ", " : "", arch, o->kind, o->L,
             o->C, o->H, o->Hkv, o->F, o->P, o->V, o->tie ? "true" : "false");
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, cfg);
    write_weights(dir, g, o->dtype, o->shards);
}

/* The ccoe tensor cname (rows r0 .. r0 + rows of a (.., cols) matrix, or elements of a vector)
 * equals HF tensor hname. */
static void same_rows(ccoe_st_file *f, const char *cname, int64_t r0, const gpt2_dir *g,
                      const char *hname)
{
    const tt *h = find_tt(g, hname);
    int nd = 0;
    int64_t sh[4];
    const float *c = ccoe_st_find(f, cname, &nd, sh);
    if (!h || !c)
        fprintf(stderr, "missing %s / %s\n", hname, cname);
    assert_non_null(h);
    assert_non_null(c);
    const int64_t cols = nd > 1 ? sh[1] : 1;
    assert_true(r0 + h->shape[0] <= sh[0]);
    if (h->ndim > 1)
        assert_int_equal(h->shape[1], cols);
    assert_memory_equal(c + r0 * cols, h->data, numel(h) * sizeof(float));
}

/* Every ccoe tensor of the checkpoint is its HF source: qkv = q | k | v rows, fc = gate | up. */
static void llama_check(const char *ck, const llama_opts *o, const gpt2_dir *g)
{
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    ccoe_error err = {0};
    assert_int_equal(ccoe_checkpoint_open(ck, &cfg, &f, &err), CCOE_OK);
    const int qwen = strcmp(o->kind, "qwen2") == 0;
    assert_int_equal(cfg.model.n_layer, o->L);
    assert_int_equal(cfg.model.n_embd, o->C);
    assert_int_equal(cfg.model.n_head, o->H);
    assert_int_equal(cfg.model.n_kv_head, o->Hkv);
    assert_int_equal(cfg.model.ffn_hidden, o->F);
    assert_int_equal(cfg.model.seq_len, o->P);
    assert_int_equal(cfg.model.tied_head, o->tie);
    assert_int_equal(cfg.model.pos, CCOE_POS_ROPE);
    assert_int_equal(cfg.model.norm, CCOE_NORM_RMSNORM);
    assert_int_equal(cfg.model.ffn, CCOE_FFN_SWIGLU);
    assert_int_equal(cfg.model.bias, 0);
    assert_int_equal(cfg.model.qkv_bias, qwen);
    assert_true(cfg.model.rope_theta == 500000.0);
    assert_true(cfg.model.norm_eps == 1e-6);
    const int64_t hd = o->C / o->H, Q = o->H * hd, K = o->Hkv * hd;
    char hn[160], cn[128];
    const char *pre = o->prefix;
    for (int l = 0; l < o->L; l++) {
#define SAME(cname, r0, hname)                                                  \
    do {                                                                        \
        snprintf(cn, sizeof cn, "blocks.%d.%s", l, cname);                      \
        snprintf(hn, sizeof hn, "%slayers.%d.%s", pre, l, hname);               \
        same_rows(f, cn, r0, g, hn);                                            \
    } while (0)
        SAME("ln1.weight", 0, "input_layernorm.weight");
        SAME("attn.qkv.weight", 0, "self_attn.q_proj.weight");
        SAME("attn.qkv.weight", Q, "self_attn.k_proj.weight");
        SAME("attn.qkv.weight", Q + K, "self_attn.v_proj.weight");
        if (qwen) {
            SAME("attn.qkv.bias", 0, "self_attn.q_proj.bias");
            SAME("attn.qkv.bias", Q, "self_attn.k_proj.bias");
            SAME("attn.qkv.bias", Q + K, "self_attn.v_proj.bias");
        } else {
            snprintf(cn, sizeof cn, "blocks.%d.attn.qkv.bias", l);
            assert_null(ccoe_st_find(f, cn, NULL, NULL));
        }
        SAME("attn.proj.weight", 0, "self_attn.o_proj.weight");
        SAME("ln2.weight", 0, "post_attention_layernorm.weight");
        SAME("mlp.fc.weight", 0, "mlp.gate_proj.weight");
        SAME("mlp.fc.weight", o->F, "mlp.up_proj.weight");
        SAME("mlp.proj.weight", 0, "mlp.down_proj.weight");
#undef SAME
    }
    snprintf(hn, sizeof hn, "%sembed_tokens.weight", pre);
    same_rows(f, "wte", 0, g, hn);
    snprintf(hn, sizeof hn, "%snorm.weight", pre);
    same_rows(f, "lnf.weight", 0, g, hn);
    assert_null(ccoe_st_find(f, "wpe", NULL, NULL));
    if (o->tie)
        assert_null(ccoe_st_find(f, "lm_head.weight", NULL, NULL));
    else
        same_rows(f, "lm_head.weight", 0, g, "lm_head.weight");
    ccoe_st_close(f);
}

/* Each layout variant: import (the name map), export (HF names under "model.", the tensors
 * themselves), import again (bit-identical parameters). */
static void test_llama_layouts_and_round_trips(void **state)
{
    (void)state;
    struct { const char *what; llama_opts o; } cases[8];
    int n = 0;
    llama_opts o = llama_base("llama");
    cases[n++] = (typeof(cases[0])){"llama, GQA 4/2, untied, F32", o};
    o = llama_base("llama");
    o.tie = 1;
    o.prefix = "";
    o.inv_freq = 1;
    o.dtype = DT_BF16;
    o.Hkv = 4;
    cases[n++] = (typeof(cases[0])){"llama, no prefix, tied, inv_freq buffers, BF16, MHA", o};
    o = llama_base("qwen2");
    o.shards = 3;
    cases[n++] = (typeof(cases[0])){"qwen2, q/k/v biases, GQA 4/2, 3 shards", o};
    o = llama_base("qwen2");
    o.tie = 1;
    o.store_head = 1;
    o.Hkv = 1;
    o.dtype = DT_F16;
    cases[n++] = (typeof(cases[0])){"qwen2, tied with a stored copy, one kv head, F16", o};
    o = llama_base("mistral");
    o.extra_cfg = "\"sliding_window\": 4096";
    o.shards = 2;
    o.dtype = DT_BF16;
    cases[n++] = (typeof(cases[0])){"mistral, window >= context, 2 BF16 shards", o};
    for (int c = 0; c < n; c++) {
        fprintf(stderr, "llama case %d: %s\n", c, cases[c].what);
        const llama_opts *lo = &cases[c].o;
        char hf[256], ck[256], ex[256], ck2[256], p[300];
        snprintf(hf, sizeof hf, "%s/llama%d", g_dir, c);
        snprintf(ck, sizeof ck, "%s/llama%d.safetensors", g_dir, c);
        snprintf(ex, sizeof ex, "%s/llama%d-export", g_dir, c);
        snprintf(ck2, sizeof ck2, "%s/llama%d-again.safetensors", g_dir, c);
        gpt2_dir g;
        llama_tensors(lo, &g);
        llama_write(hf, lo, &g);
        ccoe_error err;
        ccoe_status s = import(hf, ck, &err);
        if (s != CCOE_OK)
            fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(s, CCOE_OK);
        llama_check(ck, lo, &g);

        ccoe_hf_export_opts eo = {.model = ck, .out_dir = ex};
        s = ccoe_hf_export(&eo, NULL, &err);
        if (s != CCOE_OK)
            fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(s, CCOE_OK);
        snprintf(p, sizeof p, "%s/model.safetensors", ex);
        ccoe_st_file *f = NULL;
        assert_int_equal(ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED, &f, &err), CCOE_OK);
        size_t want = 0;
        for (int i = 0; i < g.n; i++) {
            const char *name = g.t[i].name;
            if (strstr(name, "inv_freq"))
                continue; /* buffers are not exported */
            if (strcmp(name, "lm_head.weight") == 0 && lo->tie)
                continue;
            char en[160];
            if (strcmp(name, "lm_head.weight") == 0 || lo->prefix[0])
                snprintf(en, sizeof en, "%s", name);
            else
                snprintf(en, sizeof en, "model.%s", name);
            int nd = 0;
            int64_t sh[4];
            const float *d = ccoe_st_find(f, en, &nd, sh);
            if (!d)
                fprintf(stderr, "export lacks %s\n", en);
            assert_non_null(d);
            assert_int_equal(nd, g.t[i].ndim);
            for (int k = 0; k < nd; k++)
                assert_int_equal(sh[k], g.t[i].shape[k]);
            assert_memory_equal(d, g.t[i].data, numel(&g.t[i]) * sizeof(float));
            want++;
        }
        assert_int_equal(ccoe_st_count(f), want);
        ccoe_st_close(f);
        /* config.json names the architecture and the RoPE / GQA settings */
        snprintf(p, sizeof p, "%s/config.json", ex);
        FILE *cf = fopen(p, "r");
        assert_non_null(cf);
        static char text[8192];
        size_t len = fread(text, 1, sizeof text - 1, cf);
        text[len] = '\0';
        fclose(cf);
        const int qwen = strcmp(lo->kind, "qwen2") == 0;
        assert_non_null(strstr(text, qwen ? "\"Qwen2ForCausalLM\"" : "\"LlamaForCausalLM\""));
        char kv[64];
        snprintf(kv, sizeof kv, "\"num_key_value_heads\":\t%d", lo->Hkv);
        if (!strstr(text, kv))
            fprintf(stderr, "config.json lacks %s:\n%s\n", kv, text);
        assert_non_null(strstr(text, kv));
        assert_non_null(strstr(text, "\"rope_theta\":\t500000"));
        assert_non_null(strstr(text, "\"rms_norm_eps\":\t1e-06"));

        s = import(ex, ck2, &err);
        if (s != CCOE_OK)
            fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(s, CCOE_OK);
        ccoe_st_file *a = NULL, *b = NULL;
        assert_int_equal(ccoe_st_open(ck, &a, &err), CCOE_OK);
        assert_int_equal(ccoe_st_open(ck2, &b, &err), CCOE_OK);
        ccoe_compare_result r;
        FILE *devnull = fopen("/dev/null", "w");
        assert_int_equal(ccoe_checkpoint_compare(a, b, CCOE_CMP_PARAMS, devnull, &r), 1);
        fclose(devnull);
        assert_int_equal(r.differ + r.only_a + r.only_b, 0);
        ccoe_st_close(a);
        ccoe_st_close(b);
        free_dir(&g);
    }
}

/* A LLaMA mutation: change the options (before writing) or the directory (after). */
typedef struct llama_bad {
    const char *what;
    const char *extra_cfg;            /* placed first in config.json */
    void (*tensors)(gpt2_dir *g);     /* applied to the tensors before writing, or NULL */
    const char *kind;
    ccoe_status st;
    const char *m1, *m2;
} llama_bad;

static void t_drop_up(gpt2_dir *g)
{
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->t[i].name, "model.layers.1.mlp.up_proj.weight") == 0) {
            free(g->t[i].data);
            g->t[i] = g->t[--g->n];
            return;
        }
    fail();
}

static void t_k_full(gpt2_dir *g)
{
    /* k_proj with num_attention_heads rows: a config that lost num_key_value_heads */
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->t[i].name, "model.layers.0.self_attn.k_proj.weight") == 0) {
            g->t[i].shape[0] = 16;
            free(g->t[i].data);
            g->t[i].data = rand_k64(16 * 16, 5);
            return;
        }
    fail();
}

static void t_qbias(gpt2_dir *g)
{
    add(g, "", "model.layers.0.self_attn.q_proj.bias", 1, 16, 0, 99);
}

static void t_drop_head(gpt2_dir *g)
{
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->t[i].name, "lm_head.weight") == 0) {
            free(g->t[i].data);
            g->t[i] = g->t[--g->n];
            return;
        }
    fail();
}

static void test_llama_refusals(void **state)
{
    (void)state;
    const llama_bad cases[] = {
        {"rope_scaling linear", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}", NULL,
         "llama", CCOE_ERR_FORMAT, "rope_scaling (type \"linear\")", "plain RoPE only"},
        {"rope_scaling llama3", "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8}",
         NULL, "llama", CCOE_ERR_FORMAT, "\"llama3\"", "not supported"},
        {"mistral sliding window", "\"sliding_window\": 4", NULL, "mistral", CCOE_ERR_FORMAT,
         "sliding_window = 4 is smaller than the context", "seq_len 8"},
        {"qwen2 sliding window in use", "\"use_sliding_window\": true, \"sliding_window\": 4",
         NULL, "qwen2", CCOE_ERR_FORMAT, "sliding_window = 4", "not supported"},
        {"head_dim", "\"head_dim\": 8", NULL, "llama", CCOE_ERR_FORMAT, "head_dim = 8",
         "hidden_size / num_attention_heads = 4"},
        {"gelu", "\"hidden_act\": \"gelu\"", NULL, "llama", CCOE_ERR_FORMAT,
         "hidden_act \"gelu\"", "silu"},
        {"attention_bias", "\"attention_bias\": true", NULL, "llama", CCOE_ERR_FORMAT,
         "attention_bias = true", "q/k/v only"},
        {"mlp_bias", "\"mlp_bias\": true", NULL, "mistral", CCOE_ERR_FORMAT, "mlp_bias = true",
         "not supported"},
        {"kv heads do not divide", "\"num_key_value_heads\": 3", NULL, "llama", CCOE_ERR_FORMAT,
         "num_key_value_heads = 3", "num_attention_heads = 4"},
        {"missing tensor", NULL, t_drop_up, "llama", CCOE_ERR_FORMAT,
         "'model.layers.1.mlp.up_proj.weight'", "missing"},
        {"k_proj shape", NULL, t_k_full, "llama", CCOE_ERR_FORMAT,
         "'model.layers.0.self_attn.k_proj.weight'", "has shape [16, 16] but config.json implies "
         "[8, 16]"},
        {"q bias in a llama", NULL, t_qbias, "llama", CCOE_ERR_FORMAT,
         "'model.layers.0.self_attn.q_proj.bias'", "not part of a LlamaForCausalLM"},
        {"untied without lm_head", NULL, t_drop_head, "qwen2", CCOE_ERR_FORMAT,
         "tie_word_embeddings is false", "lm_head.weight"},
        {"other class", "\"architectures\": [\"LlamaForSequenceClassification\"]", NULL, "llama",
         CCOE_ERR_FORMAT, "LlamaForSequenceClassification", "LlamaForCausalLM"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fprintf(stderr, "llama refusal %zu: %s\n", c, cases[c].what);
        char hf[256], ck[256], tok[256];
        snprintf(hf, sizeof hf, "%s/lbad%zu", g_dir, c);
        snprintf(ck, sizeof ck, "%s/lbad%zu.safetensors", g_dir, c);
        snprintf(tok, sizeof tok, "%s/lbad%zu.tokenizer", g_dir, c);
        llama_opts o = llama_base(cases[c].kind);
        o.extra_cfg = cases[c].extra_cfg;
        gpt2_dir g;
        llama_tensors(&o, &g);
        if (cases[c].tensors)
            cases[c].tensors(&g);
        llama_write(hf, &o, &g);
        ccoe_error err;
        ccoe_status s = import(hf, ck, &err);
        if (s != cases[c].st)
            fprintf(stderr, "status %d, want %d: %s\n", s, cases[c].st, err.msg);
        assert_int_equal(s, cases[c].st);
        TU_ASSERT_MSG_HAS(err, cases[c].m1);
        TU_ASSERT_MSG_HAS(err, cases[c].m2);
        assert_false(exists(ck));
        assert_false(exists(tok));
        free_dir(&g);
    }
}

/* The norm epsilon travels: GPT-2's layer_norm_epsilon and LLaMA's rms_norm_eps become
 * model.norm_eps on import and come back out on export, and the second import equals the
 * first. */
static void test_norm_eps_round_trip(void **state)
{
    (void)state;
    for (int llama = 0; llama < 2; llama++) {
        char hf[256], ck[256], out[256], ck2[256];
        snprintf(hf, sizeof hf, "%s/eps%d", g_dir, llama);
        snprintf(ck, sizeof ck, "%s/eps%d.safetensors", g_dir, llama);
        snprintf(out, sizeof out, "%s/eps%d-hf", g_dir, llama);
        snprintf(ck2, sizeof ck2, "%s/eps%d-again.safetensors", g_dir, llama);
        gpt2_dir g;
        if (llama) {
            llama_opts o = llama_base("llama");
            o.extra_cfg = "\"rms_norm_eps\": 2.5e-06";
            llama_tensors(&o, &g);
            llama_write(hf, &o, &g);
        } else {
            gpt2_opts o = base_opts();
            o.extra_cfg = "\"layer_norm_epsilon\": 1e-06";
            gpt2_tensors(&o, &g);
            gpt2_write(hf, &o, &g);
        }
        const double want = llama ? 2.5e-6 : 1e-6;
        ccoe_error err;
        assert_int_equal(import(hf, ck, &err), CCOE_OK);
        ccoe_config cfg;
        ccoe_st_file *f = NULL;
        assert_int_equal(ccoe_checkpoint_open(ck, &cfg, &f, &err), CCOE_OK);
        ccoe_st_close(f);
        assert_true(cfg.model.norm_eps == want);
        ccoe_hf_export_opts eo = {.model = ck, .out_dir = out};
        assert_int_equal(ccoe_hf_export(&eo, NULL, &err), CCOE_OK);
        char p[300], text[4096];
        snprintf(p, sizeof p, "%s/config.json", out);
        FILE *cf = fopen(p, "r");
        assert_non_null(cf);
        size_t n = fread(text, 1, sizeof text - 1, cf);
        fclose(cf);
        text[n] = '\0';
        assert_non_null(strstr(text, llama ? "\"rms_norm_eps\":\t2.5e-06"
                                           : "\"layer_norm_epsilon\":\t1e-06"));
        assert_int_equal(import(out, ck2, &err), CCOE_OK);
        assert_int_equal(ccoe_checkpoint_open(ck2, &cfg, &f, &err), CCOE_OK);
        ccoe_st_close(f);
        assert_true(cfg.model.norm_eps == want);
        int same = 0;
        FILE *devnull = fopen("/dev/null", "w");
        assert_int_equal(
            ccoe_checkpoint_compare_files(ck, ck2, CCOE_CMP_PARAMS, devnull, &same, &err),
            CCOE_OK);
        fclose(devnull);
        assert_true(same);
        free_dir(&g);
    }
}

/* The context: a RoPE model's seq_len defaults to min(max_position_embeddings, 2048) and
 * --seq-len chooses up to max_position_embeddings; export writes the pretrained context back;
 * a GPT-2 keeps its whole position table (another --seq-len is refused). */
static void test_seq_len(void **state)
{
    (void)state;
    char hf[256], ck[256], out[256], ck2[256];
    snprintf(hf, sizeof hf, "%s/ctx", g_dir);
    snprintf(out, sizeof out, "%s/ctx-hf", g_dir);
    snprintf(ck2, sizeof ck2, "%s/ctx-again.safetensors", g_dir);
    llama_opts o = llama_base("qwen2");
    o.P = 32768;
    gpt2_dir g;
    llama_tensors(&o, &g);
    llama_write(hf, &o, &g);
    const struct { int want, seq; ccoe_status st; } cases[] = {
        {0, 2048, CCOE_OK}, {16, 16, CCOE_OK}, {32768, 32768, CCOE_OK}, {32769, 0, CCOE_ERR_ARG}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        snprintf(ck, sizeof ck, "%s/ctx%zu.safetensors", g_dir, c);
        ccoe_hf_import_opts io = {.hf_dir = hf, .out = ck, .seq_len = cases[c].want};
        ccoe_error err = {0};
        ccoe_status st = ccoe_hf_import(&io, NULL, &err);
        if (st != cases[c].st)
            fprintf(stderr, "case %zu: %s\n", c, err.msg);
        assert_int_equal(st, cases[c].st);
        if (cases[c].st != CCOE_OK) {
            TU_ASSERT_MSG_HAS(err, "longer than max_position_embeddings = 32768");
            assert_false(exists(ck));
            continue;
        }
        ccoe_config cfg;
        ccoe_st_file *f = NULL;
        assert_int_equal(ccoe_checkpoint_open(ck, &cfg, &f, &err), CCOE_OK);
        ccoe_st_close(f);
        assert_int_equal(cfg.model.seq_len, cases[c].seq);
        assert_int_equal(cfg.model.max_positions, 32768);
    }
    /* the default import exports max_position_embeddings 32768 and imports back the same */
    snprintf(ck, sizeof ck, "%s/ctx0.safetensors", g_dir);
    ccoe_error err = {0};
    ccoe_hf_export_opts eo = {.model = ck, .out_dir = out};
    assert_int_equal(ccoe_hf_export(&eo, NULL, &err), CCOE_OK);
    char p[300], text[4096];
    snprintf(p, sizeof p, "%s/config.json", out);
    FILE *cf = fopen(p, "r");
    assert_non_null(cf);
    size_t n = fread(text, 1, sizeof text - 1, cf);
    fclose(cf);
    text[n] = '\0';
    assert_non_null(strstr(text, "\"max_position_embeddings\":\t32768"));
    assert_int_equal(import(out, ck2, &err), CCOE_OK);
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    assert_int_equal(ccoe_checkpoint_open(ck2, &cfg, &f, &err), CCOE_OK);
    ccoe_st_close(f);
    assert_int_equal(cfg.model.seq_len, 2048);
    assert_int_equal(cfg.model.max_positions, 32768);
    free_dir(&g);
    /* GPT-2: the table's rows are the context */
    gpt2_opts go = base_opts();
    gpt2_tensors(&go, &g);
    snprintf(hf, sizeof hf, "%s/ctx-gpt2", g_dir);
    gpt2_write(hf, &go, &g);
    snprintf(ck, sizeof ck, "%s/ctx-gpt2.safetensors", g_dir);
    ccoe_hf_import_opts io = {.hf_dir = hf, .out = ck, .seq_len = 4};
    assert_int_equal(ccoe_hf_import(&io, NULL, &err), CCOE_ERR_ARG);
    TU_ASSERT_MSG_HAS(err, "n_positions = 8");
    assert_false(exists(ck));
    io.seq_len = 8;
    assert_int_equal(ccoe_hf_import(&io, NULL, &err), CCOE_OK);
    free_dir(&g);
}

/* export --dtype bf16 / f16: the file holds that dtype, config.json says so, and importing it
 * gives the model's tensors rounded to that dtype (nearest even), bit for bit; F16 refuses a
 * weight beyond its range and leaves nothing. */
static void test_export_dtypes(void **state)
{
    (void)state;
    const char *gpt2[] = {NULL};
    const char *qwen[] = {"model.norm=rmsnorm", "model.ffn=swiglu", "model.pos=rope",
                          "model.bias=false", "model.qkv_bias=true", "model.n_kv_head=1", NULL};
    const char *const *models[] = {gpt2, qwen};
    const char *dts[] = {"bf16", "f16"};
    for (int mi = 0; mi < 2; mi++) {
        ccoe_config cfg;
        ccoe_config_defaults(&cfg);
        const char *sets[] = {"model.n_layer=2", "model.n_embd=16", "model.n_head=2",
                              "model.seq_len=8", "model.vocab_size=272", "model.tied_head=false"};
        ccoe_error err = {0};
        for (size_t i = 0; i < 6; i++)
            assert_int_equal(ccoe_config_set(&cfg, sets[i], &err), CCOE_OK);
        for (int i = 0; models[mi][i]; i++)
            assert_int_equal(ccoe_config_set(&cfg, models[mi][i], &err), CCOE_OK);
        assert_int_equal(ccoe_config_validate(&cfg, &err), CCOE_OK);
        ccoe_gemm gemm;
        assert_int_equal(ccoe_gemm_init(&gemm, CCOE_GEMM_REF, 1, &err), CCOE_OK);
        static ccoe_model m;
        assert_int_equal(ccoe_model_init_moe(&m, &cfg.model, NULL, &cfg.moe, 1, 8, &gemm, 1, &err),
                         CCOE_OK);
        ccoe_model_init_weights(&m, 9, CCOE_INIT_RANDOM);
        for (size_t i = 0; i < m.num_params; i++) /* norms and biases away from 1 and 0 too */
            m.param_block[i] += 0.001f * (float)(i % 7);
        char ck[256];
        snprintf(ck, sizeof ck, "%s/dt%d.safetensors", g_dir, mi);
        assert_int_equal(ccoe_checkpoint_save(ck, &cfg, &m, NULL, NULL, &err), CCOE_OK);
        for (int di = 0; di < 2; di++) {
            char out[256], ck2[256], p[300], text[4096];
            snprintf(out, sizeof out, "%s/dt%d-%s", g_dir, mi, dts[di]);
            snprintf(ck2, sizeof ck2, "%s/dt%d-%s.safetensors", g_dir, mi, dts[di]);
            ccoe_hf_export_opts eo = {.model = ck, .out_dir = out, .dtype = dts[di]};
            ccoe_status s = ccoe_hf_export(&eo, NULL, &err);
            if (s != CCOE_OK)
                fprintf(stderr, "%s\n", err.msg);
            assert_int_equal(s, CCOE_OK);
            snprintf(p, sizeof p, "%s/config.json", out);
            FILE *cf = fopen(p, "r");
            assert_non_null(cf);
            size_t n = fread(text, 1, sizeof text - 1, cf);
            fclose(cf);
            text[n] = '\0';
            assert_non_null(strstr(text, di == 0 ? "\"torch_dtype\":\t\"bfloat16\""
                                                 : "\"torch_dtype\":\t\"float16\""));
            snprintf(p, sizeof p, "%s/model.safetensors", out);
            ccoe_st_file *hf = NULL;
            assert_int_equal(
                ccoe_st_open_flags(p, CCOE_ST_ALLOW_UNCHECKED | CCOE_ST_ALLOW_HALF, &hf, &err),
                CCOE_OK);
            for (size_t i = 0; i < ccoe_st_count(hf); i++)
                assert_string_equal(ccoe_st_dtype(hf, ccoe_st_name(hf, i)),
                                    di == 0 ? "BF16" : "F16");
            ccoe_st_close(hf);
            assert_int_equal(import(out, ck2, &err), CCOE_OK);
            ccoe_config c2;
            ccoe_st_file *f = NULL;
            assert_int_equal(ccoe_checkpoint_open(ck2, &c2, &f, &err), CCOE_OK);
            size_t changed = 0;
            for (int pi = 0; pi < m.n_params; pi++) {
                const ccoe_param *pr = &m.params[pi];
                const float *got = ccoe_st_find(f, pr->name, NULL, NULL);
                if (!got && mi == 0 && strstr(pr->name, ".bias"))
                    continue;
                assert_non_null(got);
                const float *src = m.param_block + pr->offset;
                for (size_t k = 0; k < pr->numel; k++) {
                    float want = di == 0 ? ccoe_bf16_to_f32(ccoe_f32_to_bf16(src[k]))
                                         : ccoe_f16_to_f32(ccoe_f32_to_f16(src[k]));
                    assert_memory_equal(&got[k], &want, sizeof want);
                    changed += want != src[k];
                }
            }
            assert_true(changed > m.num_params / 2); /* the rounding did happen */
            ccoe_st_close(f);
        }
        /* beyond F16's range */
        m.param_block[3] = 1e5f;
        assert_int_equal(ccoe_checkpoint_save(ck, &cfg, &m, NULL, NULL, &err), CCOE_OK);
        char out[256];
        snprintf(out, sizeof out, "%s/dt%d-over", g_dir, mi);
        ccoe_hf_export_opts eo = {.model = ck, .out_dir = out, .dtype = "f16"};
        assert_int_equal(ccoe_hf_export(&eo, NULL, &err), CCOE_ERR_NUMERIC);
        TU_ASSERT_MSG_HAS(err, "beyond the range of F16");
        assert_false(exists(out));
        eo.dtype = "f64";
        assert_int_equal(ccoe_hf_export(&eo, NULL, &err), CCOE_ERR_ARG);
        TU_ASSERT_MSG_HAS(err, "f32, bf16 or f16");
        ccoe_model_free(&m);
    }
}

/* Import and export build weights-only models: no gradient block, the same layout and the
 * same one-token forward as a full model. */
static void test_weights_only_model(void **state)
{
    (void)state;
    ccoe_config cfg;
    ccoe_config_defaults(&cfg);
    const char *sets[] = {"model.n_layer=2", "model.n_embd=16", "model.n_head=2",
                          "model.seq_len=8", "model.vocab_size=272"};
    ccoe_error err = {0};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(ccoe_config_set(&cfg, sets[i], &err), CCOE_OK);
    assert_int_equal(ccoe_config_validate(&cfg, &err), CCOE_OK);
    ccoe_gemm gemm;
    assert_int_equal(ccoe_gemm_init(&gemm, CCOE_GEMM_REF, 1, &err), CCOE_OK);
    static ccoe_model full, w;
    assert_int_equal(ccoe_model_init_moe(&full, &cfg.model, NULL, &cfg.moe, 1, 1, &gemm, 1, &err),
                     CCOE_OK);
    assert_int_equal(ccoe_model_init_weights_only(&w, &cfg.model, NULL, &cfg.moe, &gemm, &err),
                     CCOE_OK);
    assert_null(w.grad_block);
    assert_null(w.g_blocks[0].qkv_w);
    assert_int_equal(w.grad_mem.cap, 0);
    assert_true(full.grad_mem.cap >= full.num_params * sizeof(float));
    assert_int_equal(w.num_params, full.num_params);
    ccoe_model_init_weights(&full, 3, CCOE_INIT_RANDOM);
    memcpy(w.param_block, full.param_block, full.num_params * sizeof(float));
    const int32_t tok = 42;
    ccoe_model_forward(&full, &tok, NULL, NULL, 1, 1, NULL);
    ccoe_model_forward(&w, &tok, NULL, NULL, 1, 1, NULL);
    assert_memory_equal(ccoe_model_logits(&full, 0, 0), ccoe_model_logits(&w, 0, 0),
                        272 * sizeof(float));
    ccoe_model_free(&full);
    ccoe_model_free(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_half_conversion),
        cmocka_unit_test(test_layouts_and_round_trips),
        cmocka_unit_test(test_fixture_logits),
        cmocka_unit_test(test_fixture_logits_llama),
        cmocka_unit_test(test_fixture_logits_qwen2),
        cmocka_unit_test(test_llama_layouts_and_round_trips),
        cmocka_unit_test(test_llama_refusals),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_export_ccoe_paths),
        cmocka_unit_test(test_export_refuses_other_blocks),
        cmocka_unit_test(test_export_byte_tokenizer),
        cmocka_unit_test(test_norm_eps_round_trip),
        cmocka_unit_test(test_seq_len),
        cmocka_unit_test(test_export_dtypes),
        cmocka_unit_test(test_weights_only_model),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
