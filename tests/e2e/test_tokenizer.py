"""The scorer's own WordPiece tokenizer against the reference (Hugging Face ``tokenizers``), on
every text of the routing development set: each prompt and each message.

The reference is built from the vocabulary stored in the built-in table (tools/reference_tokens.py
says how, and that it agrees with the model's own tokenizer.json on this set); the gateway's ids
come from ``switchyard tokens``.
"""

import json
import subprocess
import sys

from conftest import REPO_ROOT, gateway_binary

TABLE = REPO_ROOT / "conf" / "minilm-l6-static.bin"
DATA = REPO_ROOT / "tests" / "data" / "routing-dev.jsonl"


def test_the_tokenizer_matches_the_reference_on_every_development_text(tmp_path):
    reference = tmp_path / "reference.jsonl"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "reference_tokens.py"),
         "--table", str(TABLE), "--data", str(DATA), "--out", str(reference)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    expected = [json.loads(line) for line in reference.read_text().splitlines()]
    ours = subprocess.run(
        [str(gateway_binary()), "tokens"],
        input=reference.read_text(), check=True, capture_output=True, text=True, timeout=300,
    )
    got = [json.loads(line) for line in ours.stdout.splitlines()]

    rows = sum(1 for line in DATA.read_text().splitlines() if line.strip())
    assert rows == 584
    assert len(expected) > rows, "every prompt, and every message"
    assert [g["id"] for g in got] == [e["id"] for e in expected]
    mismatched = [e["id"] for e, g in zip(expected, got) if e["ids"] != g["ids"]]
    assert mismatched == [], f"{len(mismatched)} texts tokenized differently: {mismatched[:10]}"
    assert sum(len(e["ids"]) for e in expected) > 50_000


def test_the_gateway_names_a_damaged_table(tmp_path):
    damaged = tmp_path / "table.bin"
    damaged.write_bytes(TABLE.read_bytes()[:-1000])
    out = subprocess.run(
        [str(gateway_binary()), "tokens", "--table", str(damaged)],
        input="", capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0
    assert str(damaged) in out.stderr and "checksum" in out.stderr, out.stderr
