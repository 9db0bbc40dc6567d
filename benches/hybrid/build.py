#!/usr/bin/env python3
"""Build the hybrid-stage benchmark set: long RAG chat requests and long conversations.

Documents come from the Python 3.11 documentation (Debian package python3.11-doc,
PSF License). The script fetches the package into a cache folder when needed, extracts
the readable text of the pages named in questions.jsonl, and writes two JSONL files:

    rag.jsonl            one OpenAI chat request per question, in four message shapes
    conversations.jsonl  one OpenAI chat request per long conversation

Every fact is checked to occur verbatim in its request, and every question is checked
to share no run of three consecutive words with the text that states its fact.

    python3 benches/hybrid/build.py [--cache DIR] [--out DIR]
"""
import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from html.parser import HTMLParser

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "python3.11-doc"
HTML_ROOT = "usr/share/doc/python3.11/html"
SHAPES = ["last_user_markers", "last_user_plain", "system", "tool_result"]

CHARS_PER_TOKEN = 4
MIN_TOKENS = 2000          # every document is at least this long ...
MAX_TOKENS = 8000          # ... and at most this long
SLACK_CHARS = 1200         # a window may overshoot its wanted size by this much
TARGET_TOKENS = [2500, 4000, 5500, 7000]   # window sizes, rotated per question
FACT_POSITIONS = [0.1, 0.5, 0.9]           # where the fact paragraph sits in a window

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the Python documentation and return the best matching page text.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to look for."}},
            "required": ["query"],
        },
    },
}


class BuildError(Exception):
    """A check failed or an input is missing; the message says which."""


# ---------------------------------------------------------------------------
# Corpus: fetch and extract
# ---------------------------------------------------------------------------

def ensure_corpus(cache):
    """Return the HTML root inside `cache`, downloading and unpacking the package if absent."""
    root = os.path.join(cache, "root", HTML_ROOT)
    if os.path.isdir(os.path.join(root, "library")):
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise BuildError(
            f"the corpus is not in {cache} and apt-get/dpkg are unavailable; on a Debian or "
            f"Ubuntu machine run `apt-get download {PACKAGE}` and `dpkg -x <file>.deb "
            f"{os.path.join(cache, 'root')}`, or pass --cache pointing at such a folder")
    os.makedirs(cache, exist_ok=True)
    print(f"fetching {PACKAGE} into {cache} ...", file=sys.stderr)
    subprocess.run(["apt-get", "download", PACKAGE], cwd=cache, check=True)
    debs = sorted(glob.glob(os.path.join(cache, f"{PACKAGE}_*.deb")))
    if not debs:
        raise BuildError(f"apt-get download {PACKAGE} produced no .deb in {cache}")
    subprocess.run(["dpkg", "-x", debs[-1], os.path.join(cache, "root")], check=True)
    if not os.path.isdir(os.path.join(root, "library")):
        raise BuildError(f"unpacked {debs[-1]} but {root} has no library/ folder")
    return root


BLOCK_TAGS = {"p", "li", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd", "div",
              "section", "table", "tr", "blockquote", "dl", "ul", "ol", "caption",
              "figure", "figcaption", "thead", "tbody", "br", "hr"}
SKIP_TAGS = {"script", "style", "noscript", "template"}


class DocText(HTMLParser):
    """Collect the paragraphs of a Sphinx page's main body (div.body), nothing else."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs = []
        self.buf = []
        self.body_depth = 0      # >0 while inside div.body (counts nested divs)
        self.skip_depth = 0      # >0 while inside script/style/headerlink
        self.pre_depth = 0       # >0 while inside <pre>: whitespace is kept
        self.cell_depth = 0      # >0 while inside a table cell: blocks become inline
        self.row_cells = 0       # cells seen in the current table row
        self.prefix = ""         # "- " for the next paragraph when it starts a list item

    def flush(self):
        """End the current paragraph; whitespace is collapsed except inside <pre>."""
        raw = "".join(self.buf)
        self.buf = []
        text = raw.strip("\n").rstrip() if self.pre_depth else " ".join(raw.split())
        if text:
            self.paragraphs.append(self.prefix + text)
            self.prefix = ""

    def handle_starttag(self, tag, attrs):
        """Enter div.body, start skipped regions, table cells and new paragraphs."""
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if self.body_depth == 0:
            if tag == "div" and "body" in classes and a.get("role") == "main":
                self.body_depth = 1
            return
        if tag == "div":
            self.body_depth += 1
        if self.skip_depth:
            if tag not in ("br", "hr", "img", "input", "meta", "link", "wbr"):
                self.skip_depth += 1
            return
        if tag in SKIP_TAGS or "headerlink" in classes:
            self.skip_depth = 1
            return
        if self.cell_depth:
            if tag in ("td", "th"):
                self.cell_depth += 1
            elif tag in BLOCK_TAGS and self.buf and not self.buf[-1].endswith(" "):
                self.buf.append(" ")
            return
        if tag in ("td", "th"):
            self.cell_depth = 1
            if self.row_cells:
                self.buf.append(" | ")
            self.row_cells += 1
            return
        if tag in BLOCK_TAGS:
            self.flush()
            if tag == "tr":
                self.row_cells = 0
            if tag == "li":
                self.prefix = "- "
            if tag == "pre":
                self.pre_depth += 1

    def handle_endtag(self, tag):
        """Close what handle_starttag opened; a closing block tag ends the paragraph."""
        if self.body_depth == 0:
            return
        if tag == "div":
            self.body_depth -= 1
            if self.body_depth == 0:
                self.flush()
                return
        if self.skip_depth:
            self.skip_depth -= 1
            return
        if self.cell_depth:
            if tag in ("td", "th"):
                self.cell_depth -= 1
            return
        if tag in BLOCK_TAGS:
            self.flush()
            if tag == "pre":
                self.pre_depth -= 1

    def handle_data(self, data):
        """Keep text inside div.body unless it is in a skipped region."""
        if self.body_depth and not self.skip_depth:
            self.buf.append(data)


def page_paragraphs(root, page):
    """Readable paragraphs of one documentation page, e.g. page='library/zlib.html'."""
    path = os.path.join(root, page)
    if not os.path.isfile(path):
        raise BuildError(f"page {page} not found under {root}")
    parser = DocText()
    with open(path, encoding="utf-8") as f:
        parser.feed(f.read())
    parser.close()
    if not parser.paragraphs:
        raise BuildError(f"no body text found in {page}")
    return parser.paragraphs


# ---------------------------------------------------------------------------
# Paraphrase rule
# ---------------------------------------------------------------------------

def word_lists(text):
    """The lower-cased words of `text`, under two readings of "punctuation stripped".

    Punctuation is either deleted ("don't" -> "dont", "zlib.compress" -> "zlibcompress")
    or treated as a separator ("don", "t"); the rule must hold under both.
    """
    text = text.lower()
    deleted = re.sub(r"[^\w\s]|_", "", text).split()
    separated = re.findall(r"[^\W_]+", text)
    return deleted, separated


def trigrams(text):
    """All runs of three consecutive words of `text`, under both readings."""
    grams = set()
    for w in word_lists(text):
        grams.update(" ".join(w[i:i + 3]) for i in range(len(w) - 2))
    return grams


def shared_trigrams(a, b):
    """Runs of three consecutive words that occur in both texts."""
    return sorted(trigrams(a) & trigrams(b))


def check_paraphrase(item_id, question, source, fact):
    """Fail unless the question shares no 3-word run with `source` and does not quote the fact."""
    shared = shared_trigrams(question, source)
    if shared:
        raise BuildError(f"{item_id}: question shares word runs with its fact text: {shared}")
    if fact.lower() in question.lower():
        raise BuildError(f"{item_id}: question contains the fact {fact!r}")


# ---------------------------------------------------------------------------
# RAG requests
# ---------------------------------------------------------------------------

def load_jsonl(path):
    """Read a JSONL file, skipping blank lines."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def take(paras, want, from_end):
    """Contiguous paragraphs from one end of `paras` until about `want` chars; also says if all were used."""
    seq = list(reversed(paras)) if from_end else list(paras)
    taken, size = [], 0
    for p in seq:
        if size >= want or size + len(p) > want + SLACK_CHARS:
            break
        taken.append(p)
        size += len(p) + 2
    exhausted = len(taken) == len(seq)
    return (list(reversed(taken)) if from_end else taken), size, exhausted


def build_document(index, q, pages, order):
    """Document text for question `index`: a window of its page placing the fact at a rotating position.

    The window holds about TARGET_TOKENS[...] tokens with the fact paragraph at FACT_POSITIONS[...]
    of its length. When the page runs out before the window is full on one side, paragraphs of the
    neighbouring pages in questions.jsonl order fill that side (previous pages before, next after).
    """
    paras = pages[q["page"]]
    hits = [i for i, p in enumerate(paras) if q["fact_sentence"] in p]
    if not hits:
        raise BuildError(f"{q['id']}: fact_sentence not found in the text of {q['page']}")
    if q["fact"] not in q["fact_sentence"]:
        raise BuildError(f"{q['id']}: fact {q['fact']!r} is not inside its fact_sentence")
    k = hits[0]
    # Size and position rotate on different cycles, so every shape sees every size and position.
    size_slot = (index + index // len(SHAPES)) % len(TARGET_TOKENS)
    target = TARGET_TOKENS[size_slot] * CHARS_PER_TOKEN
    rest = max(target - len(paras[k]), 0)
    want_before = FACT_POSITIONS[index % len(FACT_POSITIONS)] * rest
    want_after = rest - want_before
    before, got_before, open_before = take(paras[:k], want_before, from_end=True)
    after, got_after, open_after = take(paras[k + 1:], want_after, from_end=False)
    here = order.index(q["page"])
    for step in range(1, len(order)):
        if not open_before or got_before >= want_before:
            break
        extra, size, open_before = take(pages[order[(here - step) % len(order)]],
                                        want_before - got_before, from_end=True)
        before, got_before = extra + before, got_before + size
    for step in range(1, len(order)):
        if not open_after or got_after >= want_after:
            break
        extra, size, open_after = take(pages[order[(here + step) % len(order)]],
                                       want_after - got_after, from_end=False)
        after, got_after = after + extra, got_after + size
    text = "\n\n".join(before + [paras[k]] + after)
    tokens = len(text) / CHARS_PER_TOKEN
    if not MIN_TOKENS <= tokens <= MAX_TOKENS:
        raise BuildError(f"{q['id']}: document is about {tokens:.0f} tokens, "
                         f"outside {MIN_TOKENS}-{MAX_TOKENS}")
    return text


def rag_request(index, q, doc):
    """One OpenAI chat request in the shape chosen by rotating over SHAPES."""
    shape = SHAPES[index % len(SHAPES)]
    question = q["question"]
    if shape == "last_user_markers":
        messages = [{"role": "user", "content": f"Context:\n{doc}\n\nQuestion: {question}"}]
    elif shape == "last_user_plain":
        messages = [{"role": "user", "content": f"{doc}\n\n{question}"}]
    elif shape == "system":
        messages = [{"role": "system", "content": f"Answer from this documentation:\n\n{doc}"},
                    {"role": "user", "content": question}]
    else:
        call_id = f"call_{q['id']}"
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": call_id, "type": "function",
                "function": {"name": "search_docs", "arguments": json.dumps({"query": question})}}]},
            {"role": "tool", "tool_call_id": call_id, "content": doc},
            {"role": "user", "content": f"Using the search result, answer: {question}"},
        ]
    request = {"model": "auto", "messages": messages}
    if shape == "tool_result":
        request["tools"] = [SEARCH_TOOL]
    return shape, request


def build_rag(root, questions):
    """All RAG rows (plus where each fact sits in its document), checking every question."""
    seen = set()
    if len({q.get("id") for q in questions}) != len(questions):
        raise BuildError("question ids in questions.jsonl are not unique")
    for q in questions:
        for key in ("id", "page", "question", "fact", "fact_sentence"):
            if not isinstance(q.get(key), str) or not q[key]:
                raise BuildError(f"questions.jsonl entry {q.get('id')!r} lacks {key}")
        if q["page"] in seen:
            raise BuildError(f"{q['id']}: page {q['page']} is used by two questions")
        seen.add(q["page"])
        if not 2 <= len(q["fact"]) <= 40:
            raise BuildError(f"{q['id']}: fact must be 2-40 characters")
        check_paraphrase(q["id"], q["question"], q["fact_sentence"], q["fact"])
    order = [q["page"] for q in questions]
    pages = {p: page_paragraphs(root, p) for p in order}
    rows, positions = [], []
    for i, q in enumerate(questions):
        doc = build_document(i, q, pages, order)
        positions.append(doc.index(q["fact_sentence"]) / len(doc))
        if q["fact"] not in doc or q["fact_sentence"] not in doc:
            raise BuildError(f"{q['id']}: fact or fact_sentence missing from the built document")
        shape, request = rag_request(i, q, doc)
        if not any(q["fact"] in (m.get("content") or "") for m in request["messages"]
                   if doc in (m.get("content") or "")):
            raise BuildError(f"{q['id']}: the document carrying the fact is missing from the request")
        rows.append({"id": q["id"], "shape": shape, "fact": q["fact"], "question": q["question"],
                     "doc_chars": len(doc), "request": request})
    return rows, positions


# ---------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------

def build_conversations(convs):
    """Conversation rows; checks turn order, fact placement and the paraphrase rule."""
    rows = []
    for c in convs:
        cid, fact, msgs = c["id"], c["fact"], c["messages"]
        if not 14 <= len(msgs) <= 24:
            raise BuildError(f"{cid}: has {len(msgs)} messages, expected 14-24")
        for i, m in enumerate(msgs):
            want = "user" if i % 2 == 0 else "assistant"
            if m.get("role") != want or not isinstance(m.get("content"), str):
                raise BuildError(f"{cid}: message {i} should be a {want} turn with text")
        if msgs[-1]["content"] != c["question"]:
            raise BuildError(f"{cid}: the last message must be the question")
        holders = [i for i, m in enumerate(msgs) if fact in m["content"]]
        if len(holders) != 1 or holders[0] >= len(msgs) / 3:
            raise BuildError(f"{cid}: fact {fact!r} must occur in exactly one turn in the "
                             f"first third, found in turns {holders}")
        check_paraphrase(cid, c["question"], msgs[holders[0]]["content"], fact)
        tokens = sum(len(m["content"]) for m in msgs) / CHARS_PER_TOKEN
        if not 3000 <= tokens <= 8000:
            raise BuildError(f"{cid}: about {tokens:.0f} tokens, expected 3000-8000")
        rows.append({"id": cid, "fact": fact, "question": c["question"],
                     "request": {"model": "auto", "messages": msgs}})
    return rows


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def write_jsonl(path, rows):
    """Write rows as UTF-8 JSONL."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def summary(rag, positions, convs):
    """Print counts per shape, token statistics and where facts sit in the documents."""
    def stats(values):
        return f"{min(values):>6.0f} {statistics.median(values):>8.0f} {max(values):>6.0f}"
    print(f"{'set':<20} {'count':>5} {'min':>6} {'median':>8} {'max':>6}   (tokens ~ chars/4)")
    for shape in SHAPES:
        toks = [r["doc_chars"] / CHARS_PER_TOKEN for r in rag if r["shape"] == shape]
        print(f"{shape:<20} {len(toks):>5} {stats(toks)}")
    toks = [r["doc_chars"] / CHARS_PER_TOKEN for r in rag]
    print(f"{'rag (all)':<20} {len(toks):>5} {stats(toks)}")
    toks = [sum(len(m["content"]) for m in r["request"]["messages"]) / CHARS_PER_TOKEN
            for r in convs]
    print(f"{'conversations':<20} {len(toks):>5} {stats(toks)}")
    thirds = [sum(int(min(p, 0.999) * 3) == t for p in positions) for t in range(3)]
    print(f"fact position in RAG documents: start {thirds[0]}, middle {thirds[1]}, end {thirds[2]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="/tmp/switchyard-hybrid-corpus",
                    help="folder holding the unpacked python3.11-doc package")
    ap.add_argument("--out", default=os.path.join(HERE, "out"),
                    help="where rag.jsonl and conversations.jsonl are written "
                         "(default: benches/hybrid/out)")
    a = ap.parse_args()
    try:
        questions = load_jsonl(os.path.join(HERE, "questions.jsonl"))
        with open(os.path.join(HERE, "conversations.json"), encoding="utf-8") as f:
            convs = json.load(f)
        root = ensure_corpus(a.cache)
        rag, positions = build_rag(root, questions)
        counts = {s: sum(r["shape"] == s for r in rag) for s in SHAPES}
        if min(counts.values()) < 10:
            raise BuildError(f"each shape needs at least 10 requests: {counts}")
        conv_rows = build_conversations(convs)
    except (BuildError, subprocess.CalledProcessError, OSError, json.JSONDecodeError) as e:
        sys.exit(f"build.py: error: {e}")
    os.makedirs(a.out, exist_ok=True)
    write_jsonl(os.path.join(a.out, "rag.jsonl"), rag)
    write_jsonl(os.path.join(a.out, "conversations.jsonl"), conv_rows)
    summary(rag, positions, conv_rows)
    print(f"wrote {len(rag)} RAG requests and {len(conv_rows)} conversations to "
          f"{os.path.relpath(a.out)}")


if __name__ == "__main__":
    main()
