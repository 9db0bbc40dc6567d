#!/usr/bin/env python3
"""How far the gateway's token estimate is from real tokenizers, on labelled routing rows.

For every row the last user message goes to a running gateway's POST /v1/route; its
`last_user_tokens` feature is compared with the token count of OpenAI's cl100k_base and
o200k_base encodings (the `bpe-openai` package ships both, so nothing is downloaded).

    pip install bpe-openai
    python3 benches/token_estimate.py --url http://127.0.0.1:8080/v1/route --data rows.jsonl
"""
import argparse
import json
import statistics
import urllib.request

import bpe_openai


def estimate(url, text):
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]}).encode()
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)["features"]["last_user_tokens"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="the gateway's /v1/route")
    ap.add_argument("--data", required=True, help="JSONL rows with `messages`")
    a = ap.parse_args()
    encodings = {name: bpe_openai.get_encoding(name) for name in ("cl100k_base", "o200k_base")}
    texts = []
    with open(a.data, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                msgs = json.loads(line)["messages"]
                users = [m["content"] for m in msgs if m["role"] == "user" and isinstance(m["content"], str)]
                if users:
                    texts.append(users[-1])
    estimates = [estimate(a.url, t) for t in texts]
    print(f"{len(texts)} messages, {sum(len(t) for t in texts)} characters")
    print("| encoding | real tokens | estimated | total error | mean abs error per message | p90 abs error |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, enc in encodings.items():
        real = [len(enc.encode(t)) for t in texts]
        rel = [abs(e - r) / r for e, r in zip(estimates, real) if r > 0]
        total = (sum(estimates) - sum(real)) / sum(real)
        p90 = sorted(rel)[int(0.9 * (len(rel) - 1))]
        print(f"| {name} | {sum(real)} | {sum(estimates):.0f} | {total:+.1%} | {statistics.mean(rel):.1%} | {p90:.1%} |")


if __name__ == "__main__":
    main()
