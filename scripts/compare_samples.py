#!/usr/bin/env python3
"""Paired comparison of two `kiln eval --log-samples` files of the same task.

    python3 scripts/compare_samples.py BASE.jsonl TUNED.jsonl [--metric acc]

Prints both accuracies, their difference with its paired standard error (the sample standard
deviation of the per-example differences over sqrt(n)), the discordant counts (examples only one
model gets right) and the exact two-sided McNemar p-value (a binomial test on the discordant
examples). Standard library only.
"""

import argparse
import json
import math
import sys


def load(path, metric):
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = {}
    for r in rows:
        if metric not in r:
            sys.exit(f"{path}: a record has no `{metric}` field: {r}")
        out[r["doc"]] = float(r[metric])
    return out


def mcnemar_p(b, c):
    """Exact two-sided p-value of b successes in b + c fair coin flips."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("tuned")
    ap.add_argument("--metric", default="acc")
    args = ap.parse_args()
    a, b = load(args.base, args.metric), load(args.tuned, args.metric)
    if a.keys() != b.keys():
        sys.exit("the two files hold different examples (same task, same --limit?)")
    docs = sorted(a)
    n = len(docs)
    if n < 2:
        sys.exit("need at least 2 examples")
    d = [b[i] - a[i] for i in docs]
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    only_tuned = sum(1 for i in docs if b[i] > a[i])
    only_base = sum(1 for i in docs if a[i] > b[i])
    acc_a, acc_b = sum(a.values()) / n, sum(b.values()) / n
    print(f"n = {n}, metric {args.metric}")
    print(f"base  {acc_a:.4f}")
    print(f"tuned {acc_b:.4f}")
    print(f"difference {mean:+.4f} ± {sd / math.sqrt(n):.4f} (paired standard error)")
    print(f"only tuned right {only_tuned}, only base right {only_base}, "
          f"McNemar exact two-sided p = {mcnemar_p(only_tuned, only_base):.4f}")


if __name__ == "__main__":
    main()
