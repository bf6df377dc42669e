#!/usr/bin/env python3
"""An independent reference of `ccoe tokenizer train` (src/tokenizer_train.c), written plainly:
every merge recounts every pair of every distinct pre-token, so it is slow and obviously right.

    bpe_train_ref.py --vocab N [--min-frequency F] [--special TOK]... [--no-special] FILE...

prints the learned merges, one "left right" line each in GPT-2's byte-level alphabet (the lines
of merges.txt after its #version header). The rules it implements (tokenizer_train.h):
special tokens are cut out of the text; GPT-2's pre-tokenization pattern (the `regex` module);
ids 0..255 the bytes, then the specials, then merged tokens (a merge whose result is already a
token reuses it); the pair of highest count is merged, ties to the smallest (left bytes, right
bytes); merges run left to right within a word; pairs whose token would exceed 256 bytes are
never counted; training stops at N ids or when the best count is below F (default 2).
Input must be UTF-8 (the C trainer also takes other bytes; this reference does not).
"""
import argparse
import collections
import sys

import regex

PAT = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
MAX_TOKEN = 256


def byte_alphabet():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def split_specials(text, specials):
    """The pieces of text between special tokens (earliest first, the longest at a tie)."""
    pieces, start = [], 0
    while True:
        best, best_len = len(text), 0
        for s in specials:
            at = text.find(s, start)
            if at >= 0 and (at < best or (at == best and len(s) > best_len)):
                best, best_len = at, len(s)
        pieces.append(text[start:best])
        if best == len(text):
            return pieces
        start = best + best_len


def train(texts, vocab_size, min_freq, specials):
    words = collections.Counter()
    for text in texts:
        for piece in split_specials(text, specials):
            for w in PAT.findall(piece):
                words[w.encode("utf-8")] += 1
    tokens = [bytes([b]) for b in range(256)] + [s.encode("utf-8") for s in specials]
    ids = {t: i for i, t in enumerate(tokens[:256])}
    seqs = [[list(w), c] for w, c in words.items()]  # ids of the bytes are the bytes
    merges = []
    while len(tokens) < vocab_size:
        counts = collections.Counter()
        for seq, c in seqs:
            for x, y in zip(seq, seq[1:]):
                if len(tokens[x]) + len(tokens[y]) <= MAX_TOKEN:
                    counts[(x, y)] += c
        if not counts:
            break
        (a, b), n = min(counts.items(),
                        key=lambda kv: (-kv[1], tokens[kv[0][0]], tokens[kv[0][1]]))
        if n < min_freq:
            break
        new = tokens[a] + tokens[b]
        z = ids.get(new)
        if z is None:
            z = len(tokens)
            tokens.append(new)
            ids[new] = z
        merges.append((a, b))
        for s in seqs:
            seq, out, i = s[0], [], 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(z)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            s[0] = out
    return tokens, merges


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--special", action="append", default=[])
    ap.add_argument("--no-special", action="store_true")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    specials = [] if a.no_special else (a.special or ["<|endoftext|>"])
    texts = []
    for f in a.files:
        with open(f, "rb") as fh:
            texts.append(fh.read().decode("utf-8"))
    tokens, merges = train(texts, a.vocab, a.min_frequency, specials)
    m = byte_alphabet()
    out = sys.stdout
    for x, y in merges:
        out.write("".join(m[c] for c in tokens[x]) + " " + "".join(m[c] for c in tokens[y]) + "\n")


if __name__ == "__main__":
    main()
