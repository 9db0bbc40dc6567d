#!/usr/bin/env python3
"""Reference WordPiece token ids for the texts of a JSONL file.

Produces the ids that the gateway's own tokenizer must reproduce, using the
Hugging Face ``tokenizers`` package (``pip install tokenizers``) in one of two
constructions:

* ``--tokenizer-json tokenizer.json``: ``tokenizers.Tokenizer.from_file`` on the
  model's tokenizer.json, with truncation and padding disabled and
  ``add_special_tokens=False``;
* ``--table table.bin``: a tokenizer built from the vocab stored in a static
  table written by tools/distill.py: ``models.WordPiece`` (unk ``[UNK]``,
  ``##`` continuation prefix, the table's max_input_chars_per_word) with
  ``normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
  strip_accents=None, lowercase=True)`` and ``pre_tokenizers.BertPreTokenizer()``;
  no post-processor, so no special tokens are added, and no truncation.

If both are given, the tokenizer.json construction produces the output and every
text is also encoded with the table construction; any difference is reported
and the exit status is 1.  (One known difference: tokenizer.json declares
[PAD] [UNK] [CLS] [SEP] [MASK] as added tokens, so a text containing such a
literal string is matched to that token there, but split as ordinary text by the
table construction.)

Output: one JSON object per line, ``{"id": ..., "text": ..., "ids": [...]}``,
for each row's ``prompt`` (id = the row's ``id``) and for each message whose
``content`` is a string (id = the row's id + ``#m<k>``, k = 0-based index in
``messages``).  Written to stdout or ``--out``; the summary goes to stderr.

Usage::

    python3 tools/reference_tokens.py --table conf/minilm-l6-static.bin \
        --tokenizer-json tokenizer.json --data dev.jsonl --out reference.jsonl
"""

import argparse
import hashlib
import json
import struct
import sys

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

MAGIC = b"SYSTATIC"


def read_table_vocab(path):
    """Vocab list and max_input_chars_per_word from a distill.py table."""
    with open(path, "rb") as f:
        data = f.read()
    body, digest = data[:-32], data[-32:]
    if body[:8] != MAGIC:
        raise SystemExit(f"{path}: not a static table (bad magic)")
    if hashlib.sha256(body).digest() != digest:
        raise SystemExit(f"{path}: SHA-256 trailer does not match")
    version, n_vocab, dims, max_chars, blob_len = struct.unpack_from("<5I", body, 8)
    if version != 1:
        raise SystemExit(f"{path}: unsupported format version {version}")
    vocab = body[28 : 28 + blob_len].decode("utf-8").split("\n")
    if len(vocab) != n_vocab:
        raise SystemExit(f"{path}: header says {n_vocab} tokens, found {len(vocab)}")
    if len(body) != 28 + blob_len + 4 * n_vocab + 2 * n_vocab * dims:
        raise SystemExit(f"{path}: size does not match the header")
    return vocab, max_chars


def tokenizer_from_table(path):
    vocab, max_chars = read_table_vocab(path)
    ids = {tok: i for i, tok in enumerate(vocab)}
    if len(ids) != len(vocab):
        raise SystemExit(f"{path}: duplicate tokens in vocab")
    tok = Tokenizer(
        models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=max_chars)
    )
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def tokenizer_from_json(path):
    tok = Tokenizer.from_file(path)
    tok.no_truncation()
    tok.no_padding()
    return tok


def iter_texts(path):
    """Yield (id, text) for each prompt and string message content."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            row_id = row.get("id", f"line{line_no}")
            if isinstance(row.get("prompt"), str):
                yield row_id, row["prompt"]
            for k, msg in enumerate(row.get("messages") or []):
                if isinstance(msg.get("content"), str):
                    yield f"{row_id}#m{k}", msg["content"]


def main():
    ap = argparse.ArgumentParser(description="Reference WordPiece ids for JSONL texts.")
    ap.add_argument("--table", help="static table (.bin) written by tools/distill.py")
    ap.add_argument("--tokenizer-json", help="the model's tokenizer.json")
    ap.add_argument("--data", required=True, help="JSONL with prompt / messages fields")
    ap.add_argument("--out", help="output JSONL (default: stdout)")
    args = ap.parse_args()
    if not (args.table or args.tokenizer_json):
        ap.error("give --table, --tokenizer-json, or both")

    primary = tokenizer_from_json(args.tokenizer_json) if args.tokenizer_json else tokenizer_from_table(args.table)
    other = tokenizer_from_table(args.table) if args.tokenizer_json and args.table else None

    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    n_texts = n_tokens = n_unk = 0
    mismatches = []
    unk_id = primary.token_to_id("[UNK]")
    for text_id, text in iter_texts(args.data):
        ids = primary.encode(text, add_special_tokens=False).ids
        n_texts += 1
        n_tokens += len(ids)
        n_unk += ids.count(unk_id)
        if other is not None and other.encode(text, add_special_tokens=False).ids != ids:
            mismatches.append(text_id)
        out.write(json.dumps({"id": text_id, "text": text, "ids": ids}) + "\n")
    if args.out:
        out.close()

    print(f"{n_texts} texts, {n_tokens} tokens ({n_unk} [UNK])", file=sys.stderr)
    if other is not None:
        if mismatches:
            print(f"MISMATCH: tokenizer.json and table vocab differ on {len(mismatches)} texts: "
                  f"{mismatches[:10]}", file=sys.stderr)
            return 1
        print(f"tokenizer.json and table vocab constructions agree on all {n_texts} texts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
