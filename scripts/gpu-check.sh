#!/usr/bin/env bash
# GPU check of the CUDA backend: the conformance suite (every kernel kind against the CPU runtime
# on random inputs, and a whole training step replayed as a CUDA graph), NVRTC compilation of
# every generated kernel for this GPU's toolkit, then the benchmarks; the benchmark table is
# printed last. Budget: under 8 minutes on an H100 (each stage has its own timeout).
#
# Usage:
#   scripts/gpu-check.sh                 build (release, --features cuda) and run, on a GPU machine with cargo
#   scripts/gpu-check.sh --build DIR     only build the test binaries into DIR (on any x86-64 machine),
#                                        to carry to a GPU machine that has no Rust toolchain
#   scripts/gpu-check.sh --prebuilt DIR  run the binaries in DIR (on the GPU machine)
#
# With the device tool (whose machines have CUDA 13 and Python but no Rust), build here and carry
# the binaries (about 10 MB; a clean release build takes ~25 min on 2 busy cores):
#   scripts/gpu-check.sh --build target/gpu-check
#   run(command="bash scripts/gpu-check.sh --prebuilt target/gpu-check", carry=["target/gpu-check"])
#
# The CUDA libraries are found wherever the machine has them (CUDA toolkit, pip's nvidia-* wheels,
# the driver's folder) and linked under unversioned names into a temporary folder put first on
# LD_LIBRARY_PATH, because cudarc looks libraries up by name (libnvrtc.so, libcublas.so, ...) and
# a CUDA 13 machine names them *.so.13.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

TESTS=(cuda_conformance cuda_nvrtc cuda_bench)

build() {
    local out="$1"
    mkdir -p "$out"
    # No debug info: the binaries must stay small enough to carry.
    CARGO_PROFILE_RELEASE_DEBUG=0 cargo test --release --locked -p kiln-runtime --features cuda \
        $(printf -- '--test %s ' "${TESTS[@]}") --no-run --message-format=json 2>/dev/null \
        | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
        cp "$exe" "$out/$name"
        strip "$out/$name" 2>/dev/null || true
    done
    for t in "${TESTS[@]}"; do
        [ -x "$out/$t" ] || { echo "gpu-check: building $t failed (run the cargo command above without --message-format to see why)" >&2; exit 1; }
    done
    ls -la "$out" >&2
}

find_lib() {  # find_lib PATTERN: first matching shared library in the usual places
    local pattern="$1" dirs=()
    for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
        [ -n "$d" ] && dirs+=("$d/lib64" "$d/lib" "$d/targets/x86_64-linux/lib")
    done
    dirs+=(/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64)
    for sp in $(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
        dirs+=("$sp/nvidia")
    done
    for d in "${dirs[@]}"; do
        [ -d "$d" ] || continue
        local f
        f="$(find -L "$d" -maxdepth 4 -name "$pattern" -not -name '*builtins*' -not -name '*.alt.*' 2>/dev/null | sort | head -n 1)"
        if [ -n "$f" ]; then echo "$f"; return 0; fi
    done
    return 1
}

setup_libs() {
    local dir; dir="$(mktemp -d /tmp/kiln-cudalibs.XXXXXX)"
    local name pattern f real_dirs=""
    for pair in "libcuda.so:libcuda.so.1" "libnvrtc.so:libnvrtc.so.1[0-9]*" "libcublas.so:libcublas.so.1[0-9]*" "libcublasLt.so:libcublasLt.so.1[0-9]*"; do
        name="${pair%%:*}"; pattern="${pair#*:}"
        if f="$(find_lib "$pattern")"; then
            ln -sf "$f" "$dir/$name"
            # The real folder too: NVRTC opens its builtins library next to itself.
            real_dirs="$real_dirs:$(dirname "$(readlink -f "$f")")"
            echo "gpu-check: $name -> $f"
        else
            echo "gpu-check: WARNING: no $pattern found; tests needing it will report it" >&2
        fi
    done
    export LD_LIBRARY_PATH="$dir$real_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

run_all() {
    local bin="$1" log; log="$(mktemp -d /tmp/kiln-gpu-check.XXXXXX)"
    setup_libs
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
    export KILN_REQUIRE_GPU=1 KILN_REQUIRE_NVRTC=1
    local status=0 results=()
    stage() {  # stage NAME SECONDS BINARY ARGS...
        local name="$1" secs="$2"; shift 2
        local t0=$SECONDS rc=0
        echo "=== $name"
        timeout "$secs" "$@" >"$log/$name.txt" 2>&1 || rc=$?
        grep -v -E '^(running|test result|$)' "$log/$name.txt" | grep -v '^test .* ok$' | tail -n 60 || true
        grep -E '^test result' "$log/$name.txt" || true
        results+=("$(printf '%-18s %-6s %4ss' "$name" "$([ $rc -eq 0 ] && echo ok || echo FAIL:$rc)" "$((SECONDS - t0))")")
        [ $rc -eq 0 ] || status=1
    }
    stage conformance 240 "$bin/cuda_conformance" --test-threads=1 --nocapture
    stage nvrtc 90 "$bin/cuda_nvrtc" --test-threads=1 --nocapture
    stage bench 120 "$bin/cuda_bench" --test-threads=1 --nocapture
    echo
    echo "=== summary"
    printf '%s\n' "${results[@]}"
    echo "total: ${SECONDS}s"
    echo
    # The benchmark table, last.
    sed -n '/^| benchmark/,$p' "$log/bench.txt" | grep '^|' || echo "(no benchmark table: see the bench stage above)"
    return $status
}

case "${1:-}" in
    --build) build "${2:?--build needs a folder}" ;;
    --prebuilt) run_all "$(cd "${2:?--prebuilt needs a folder}" && pwd)" ;;
    "") out="$root/target/gpu-check"; build "$out"; run_all "$out" ;;
    *) echo "usage: $0 [--build DIR | --prebuilt DIR]" >&2; exit 2 ;;
esac
