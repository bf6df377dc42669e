# GPT-2's encoder.py (github.com/openai/gpt-2, src/encoder.py) run per line of a text file:
# the reference tests/cli/tokenizer_gpt2.sh compares ccoe with when python3-regex is installed.
# Usage: python3 gpt2_encoder.py TOKENIZER_DIR TEXT_FILE  (ids per line; <|endoftext|> -> 50256)
import json, sys, regex as re
from functools import lru_cache
@lru_cache()
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~")+1))+list(range(ord("¡"), ord("¬")+1))+list(range(ord("®"), ord("ÿ")+1))
    cs = bs[:]; n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b); cs.append(2**8+n); n += 1
    return dict(zip(bs, [chr(n) for n in cs]))
d = sys.argv[1]
encoder = json.load(open(d + '/vocab.json'))
merges = [tuple(m.split()) for m in open(d + '/merges.txt', encoding='utf-8').read().split('\n')[1:-1]]
ranks = dict(zip(merges, range(len(merges))))
be = bytes_to_unicode()
pat = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
cache = {}
def bpe(token):
    if token in cache: return cache[token]
    word = tuple(token)
    while len(word) > 1:
        pairs = set(zip(word, word[1:]))
        bigram = min(pairs, key=lambda p: ranks.get(p, float('inf')))
        if bigram not in ranks: break
        first, second = bigram; nw = []; i = 0
        while i < len(word):
            try: j = word.index(first, i)
            except ValueError: nw.extend(word[i:]); break
            nw.extend(word[i:j]); i = j
            if word[i] == first and i < len(word)-1 and word[i+1] == second:
                nw.append(first+second); i += 2
            else:
                nw.append(word[i]); i += 1
        word = tuple(nw)
    cache[token] = word
    return word
out = sys.stdout
for line in open(sys.argv[2], encoding='utf-8', newline='\n'):
    if line.endswith('\n'): line = line[:-1]
    ids = []
    for k, piece in enumerate(line.split('<|endoftext|>')):
        if k: ids.append(50256)
        for tok in re.findall(pat, piece):
            ids.extend(encoder[t] for t in bpe(''.join(be[b] for b in tok.encode('utf-8'))))
    out.write(' '.join(map(str, ids)) + '\n')
