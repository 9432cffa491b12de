#!/usr/bin/env bash
# Kiln vs nanoGPT on Tiny Shakespeare, CPU, side by side with nanoGPT's figures measured on this
# kind of machine (shared/bench/nanogpt-cpu.md; override with NANOGPT_WALL_S / NANOGPT_LARGE_S).
#
#   bench/shakespeare.sh          # both parts
#   bench/shakespeare.sh small    # the 2000-step run of examples/shakespeare_char.yaml
#   bench/shakespeare.sh large    # per-step time of the large config (6 layers, d 384, ctx 256)
#
# Small: the whole `kiln train` process, wall time, against nanoGPT eager's 141 s (goal: ratio at
# most 0.6), plus the validation loss at step 2000 on nanoGPT's 20-batch estimate (goal: <= 1.89)
# and on the full validation split. Large: median step time over steps 3..N of a short run against
# nanoGPT eager's 1.22 s per step (goal: ratio at most 1.0).
set -euo pipefail
cd "$(dirname "$0")/.."
NANOGPT_WALL_S=${NANOGPT_WALL_S:-141}
NANOGPT_LARGE_S=${NANOGPT_LARGE_S:-1.22}
LARGE_STEPS=${LARGE_STEPS:-12}
what=${1:-all}

cargo build --release --quiet
KILN=target/release/kiln
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# KEEP=DIR keeps the small run's folder (checkpoints for `kiln generate`) in DIR.
small_out=${KEEP:-$out/small}

metric() { # file step key
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
path, step, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
v = None
for line in open(path):
    r = json.loads(line)
    if r.get("step") == step and r.get(key) is not None:
        v = r[key]
print("nan" if v is None else v)
PY
}

if [[ $what == all || $what == small ]]; then
  start=$(date +%s.%N)
  rm -rf "$small_out"
  "$KILN" train examples/shakespeare_char.yaml --out "$small_out" 2> "$out/small.log"
  end=$(date +%s.%N)
  wall=$(python3 -c "print(f'{$end - $start:.1f}')")
  val=$(metric "$small_out/metrics.jsonl" 2000 val_loss)
  full=$(metric "$small_out/metrics.jsonl" 2000 full_val_loss)
  ratio=$(python3 -c "print(f'{$wall / $NANOGPT_WALL_S:.3f}')")
  echo "small: kiln ${wall} s vs nanoGPT eager ${NANOGPT_WALL_S} s: ratio ${ratio} (goal <= 0.6)"
  echo "small: val loss at 2000 (20 batches) ${val} (goal <= 1.89; nanoGPT 1.8857), full validation split ${full}"
fi

if [[ $what == all || $what == large ]]; then
  "$KILN" train examples/shakespeare_char.yaml --out "$out/large" \
    --set model=gpt2_char_large --set batch_size=8 --set seq_len=256 \
    --set steps="$LARGE_STEPS" --set eval.every=0 --set eval.full=false \
    --set checkpoint.every=0 --set log_every=1 --profile 2> "$out/large.log"
  python3 - "$out/large/timings.jsonl" "$NANOGPT_LARGE_S" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ms = [r["step_ms"] for r in rows if r["step"] >= 3]
med = statistics.median(ms) / 1e3
base = float(sys.argv[2])
print(f"large: kiln {med:.3f} s/step (median of {len(ms)}) vs nanoGPT eager {base} s/step: "
      f"ratio {med / base:.3f} (goal <= 1.0)")
PY
  sed -n '/^profile:/,$p' "$out/large.log"
fi
