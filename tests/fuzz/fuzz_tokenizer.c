/* fuzz_tokenizer.c - libFuzzer harness for the BPE tokenizer (src/tokenizer_bpe.c).
 *
 * The first byte of the input picks what the rest is. Odd: a tokenizer.json, opened (a failure
 * must say why) and, when it opens, used to encode and decode a fixed text and the input
 * itself. Even: a text, encoded with a small byte-level BPE written once (all 256 bytes, a few
 * merges, <|endoftext|>); decode(encode(text)) must give the text back byte for byte, and a
 * short output buffer must report the same count. Any mismatch aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* GPT-2's code point for byte b, as UTF-8 appended to out. */
static void put_byte(char *out, int b)
{
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE, n = 0;
    for (int c = 0; c < b && !printable; c++)
        n += !((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE);
    int cp = printable ? b : 256 + n;
    char *w = out + strlen(out);
    if (cp == '"' || cp == '\\')
        *w++ = '\\';
    if (cp < 0x80) {
        *w++ = (char)cp;
    } else {
        *w++ = (char)(0xC0 | cp >> 6);
        *w++ = (char)(0x80 | (cp & 0x3F));
    }
    *w = '\0';
}

static void write_small_bpe(void)
{
    static char v[16384];
    strcpy(v, "{");
    for (int b = 0; b < 256; b++) {
        strcat(v, "\"");
        put_byte(v, b);
        sprintf(v + strlen(v), "\": %d, ", b);
    }
    /* merges: "e" "r", " " "t", "t" "h", "th" "e", " " " " (\xc4\xa0 is the space's U+0120) */
    strcat(v, "\"er\": 256, \"\xc4\xa0t\": 257, \"th\": 258, \"the\": 259, \"\xc4\xa0\xc4\xa0\": 260, "
              "\"<|endoftext|>\": 261}");
    fuzz_write("vocab.json", v, strlen(v));
    static const char m[] = "#version: 0.2\ne r\n\xc4\xa0 t\nt h\nth e\n\xc4\xa0 \xc4\xa0\n";
    fuzz_write("merges.txt", m, sizeof m - 1);
}

static void round_trip(const ccoe_tokenizer *tok, const char *text, size_t n)
{
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    char *back = malloc(n + 1);
    if (!ids || !back)
        abort();
    size_t k = tok->ops->encode(tok->self, text, n, ids, n + 1);
    if (k > n || (n && k == 0))
        abort(); /* every id is at least one byte; a text gives ids */
    int32_t one;
    if (n && tok->ops->encode(tok->self, text, n, &one, 1) != k)
        abort(); /* the count does not depend on the room */
    size_t len = 0;
    ccoe_error err = {0};
    if (ccoe_tokenizer_decode(tok, ids, k, back, n + 1, &len, &err) != CCOE_OK || len != n ||
        memcmp(back, text, n) != 0)
        abort();
    free(ids);
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1 << 20)
        return 0;
    static ccoe_tokenizer small;
    static int ready;
    ccoe_error err = {0};
    if (!ready) {
        write_small_bpe();
        if (ccoe_tokenizer_init(&small, fuzz_dir(), &err) != CCOE_OK) {
            fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
            abort();
        }
        ready = 1;
    }
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    if (!(data[0] & 1)) {
        round_trip(&small, text, n);
        return 0;
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s/json", fuzz_dir());
    mkdir(dir, 0700);
    fuzz_write("json/tokenizer.json", text, n);
    ccoe_tokenizer tok;
    if (ccoe_tokenizer_init(&tok, dir, &err) != CCOE_OK) {
        if (!err.msg[0])
            abort(); /* a failure says why */
        if (getenv("CCOE_FUZZ_VERBOSE"))
            fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
        return 0;
    }
    static const char fixed[] = "Hello, world! It's 2024.\n\t  <|endoftext|> \xce\xb1\xce\xb2 \xff";
    round_trip(&tok, fixed, sizeof fixed - 1);
    round_trip(&tok, text, n);
    ccoe_tokenizer_free(&tok);
    return 0;
}
