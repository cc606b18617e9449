#!/usr/bin/env bash
# Same-run A/B of two webmoe binaries on one model: ROUNDS rounds, each running A then B
# (then B then A on the next round, so drift hits both alike), one `bench --reps 1` each.
# Prints each side's decode and prefill tok/s: median, min, max over the rounds.
#   bench/ab.sh BIN_A BIN_B MODEL [ROUNDS] [GEN_TOKENS]
set -euo pipefail
A=$1 B=$2 MODEL=$3 ROUNDS=${4:-7} GEN=${5:-64}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { "$1" bench --model "$MODEL" --reps 1 --prompt-tokens 128 --gen-tokens "$GEN" --json 2>/dev/null >> "$tmp/$2"; }
for r in $(seq "$ROUNDS"); do
  if (( r % 2 )); then run "$A" a; run "$B" b; else run "$B" b; run "$A" a; fi
done
python3 - "$tmp" "$A" "$B" <<'PY'
import json, statistics, sys
d = sys.argv[1]
for side, name in (("a", sys.argv[2]), ("b", sys.argv[3])):
    rows = [json.loads(l) for l in open(f"{d}/{side}")]
    for what in ("decode", "prefill"):
        v = sorted(r[f"{what}_tokens_per_s"]["median"] for r in rows)
        print(f"{name:32} {what:8} median {statistics.median(v):6.2f}  min {v[0]:6.2f}  max {v[-1]:6.2f} tok/s over {len(v)} rounds")
PY
