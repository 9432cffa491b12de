#!/usr/bin/env bash
# Installs NVIDIA's NVRTC shared library and the CUDA runtime headers from PyPI into a venv, so
# that the CUDA code generator's output can be compiled (to PTX and CUBIN) on a machine without
# a GPU or a CUDA toolkit. The wheels are NVIDIA's redistributables: install them, never commit
# them.
#
# Usage: scripts/install-nvrtc.sh [VENV_DIR]        (default: target/nvrtc-venv)
# Prints two lines that a caller can `eval`:
#   export KILN_NVRTC_LIB=<absolute path of libnvrtc.so.12>
#   export KILN_CUDA_INCLUDE=<absolute path of the folder holding cuda_bf16.h>
# Everything else (pip's progress) goes to stderr.
set -euo pipefail

NVRTC_VERSION=12.9.86
# The runtime wheel only supplies headers (cuda_bf16.h, cuda_fp16.h and what they include).
RUNTIME_VERSION=12.9.79

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/target/nvrtc-venv}"
python="${PYTHON:-python3}"

command -v "$python" >/dev/null || { echo "install-nvrtc: $python is required" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION" "nvidia-cuda-runtime-cu12==$RUNTIME_VERSION" >&2

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
lib="$site/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
include="$site/nvidia/cuda_runtime/include"

[ -f "$lib" ] || { echo "install-nvrtc: $lib not found after install" >&2; exit 1; }
[ -f "$include/cuda_bf16.h" ] || { echo "install-nvrtc: $include/cuda_bf16.h not found after install" >&2; exit 1; }

echo "export KILN_NVRTC_LIB=$lib"
echo "export KILN_CUDA_INCLUDE=$include"
