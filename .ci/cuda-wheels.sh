#!/usr/bin/env bash
# Installs the pinned NVIDIA PyPI wheels that give NVRTC (libnvrtc.so.13) and ptxas without a
# CUDA toolkit or a GPU, into $REPO/.cuda-wheels (pip --target). Idempotent: does nothing when
# the same pins are already installed.
#
# The pins matter: a newer NVRTC emits a PTX ISA that CUDA 13.0 drivers reject.
#
# Prints two lines on success:
#   lib=<dir holding libnvrtc.so.13>      (put it on LD_LIBRARY_PATH for cudarc's dynamic loading)
#   ptxas=<path of ptxas>
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${CUDA_WHEELS_DIR:-$REPO/.cuda-wheels}"
PINS=(
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
)
STAMP="$DEST/.pins"
LIB="$DEST/nvidia/cu13/lib"
PTXAS="$DEST/nvidia/cu13/bin/ptxas"

want="$(printf '%s\n' "${PINS[@]}")"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -f "$LIB/libnvrtc.so.13" && -x "$PTXAS" ]]; then
  echo "cuda-wheels: already installed in $DEST" >&2
else
  PY="${PYTHON:-}"
  if [[ -z "$PY" ]]; then
    for c in python3 python; do
      if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
    done
  fi
  if [[ -z "$PY" ]]; then
    echo "cuda-wheels: need python3 with pip to install ${PINS[*]}" >&2
    exit 1
  fi
  echo "cuda-wheels: installing ${PINS[*]} into $DEST" >&2
  rm -rf "$DEST"
  mkdir -p "$DEST"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
    --target "$DEST" "${PINS[@]}" >&2
  # pip may drop the exec bit of files unpacked from some wheels.
  chmod +x "$DEST"/nvidia/cu13/bin/* "$DEST"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
  if [[ ! -f "$LIB/libnvrtc.so.13" || ! -x "$PTXAS" ]]; then
    echo "cuda-wheels: unexpected wheel layout: no $LIB/libnvrtc.so.13 or $PTXAS" >&2
    exit 1
  fi
  printf '%s\n' "${PINS[@]}" > "$STAMP"
fi

echo "lib=$LIB"
echo "ptxas=$PTXAS"
