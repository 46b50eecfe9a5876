#!/usr/bin/env bash
# One carried GPU session: run on a lent GPU machine (no Rust toolchain, no package registry) from
# the repository root, after `cargo xtask gpu-bundle` built target/gpu-bundle here.
#
#   scripts/gpu-session.sh            the GPU run: versions, gpu-check, bench, the PyTorch
#                                     baselines and their ratios, demo (< 9 min)
#   scripts/gpu-session.sh --dry-run  the same steps on this machine without a GPU: library
#                                     discovery, gpu-check on the CPU emulator (emulated), the
#                                     baseline script's checks (on a CPU if torch is there)
#
# Every table goes to $OUT (default out/gpu-session): env.txt, gpu-check.txt, bench.txt,
# torch-baselines.txt, comparison.txt (medsa vs PyTorch in this run), demo.txt, summary.txt. Exit status: 0 all steps passed, 1 a step failed, 2 no CUDA driver
# (without --dry-run), 3 the bundle is missing.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-out/gpu-session}
BUNDLE=${MEDSA_BUNDLE:-target/gpu-bundle}
mkdir -p "$OUT"
for f in "$BUNDLE/medsa" "$BUNDLE/xtask" "$BUNDLE/ptx"; do
  if [ ! -e "$f" ]; then
    echo "bundle missing: $f (build it with: cargo xtask gpu-bundle)" | tee "$OUT/summary.txt"
    exit 3
  fi
done

# The CUDA 13 libraries of the machine's Python environment (NVIDIA wheels, PyTorch's lib).
libdirs=""
for py in python3 python; do
  command -v "$py" >/dev/null 2>&1 || continue
  for site in $("$py" -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
    [ -d "$site" ] || continue
    while IFS= read -r lib; do
      d=$(dirname "$lib")
      case ":$libdirs:" in *":$d:"*) ;; *) libdirs="${libdirs:+$libdirs:}$d" ;; esac
    done < <(find "$site/nvidia" "$site/torch/lib" -maxdepth 3 \( -name 'libcublas.so*' -o -name 'libnvrtc.so*' -o -name 'libcublasLt.so*' \) 2>/dev/null)
  done
  break
done
[ -d .cuda-wheels/nvidia/cu13/lib ] && libdirs="${libdirs:+$libdirs:}$PWD/.cuda-wheels/nvidia/cu13/lib"
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MEDSA_PTX_DIR="$PWD/$BUNDLE/ptx"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm)"
  echo "library dirs: ${libdirs:-none found}"
  for l in libcublas.so libnvrtc.so; do
    echo "$l: $(find ${libdirs//:/ } -maxdepth 1 -name "$l*" 2>/dev/null | head -1)"
  done
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1
  echo "bundle: $(cat "$BUNDLE/BUNDLE.txt" 2>/dev/null)"
} > "$OUT/env.txt"
cat "$OUT/env.txt"

status=0
step() { # name seconds command...
  local name=$1 secs=$2
  shift 2
  echo "=== $name (limit ${secs} s)"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  tail -5 "$OUT/$name.txt"
  echo "$name: rc $rc, $((SECONDS - t0)) s" >> "$OUT/summary.txt"
  [ $rc -ne 0 ] && status=1
  return $rc
}
: > "$OUT/summary.txt"
if [ $DRY -eq 1 ]; then
  step gpu-check 300 "$BUNDLE/xtask" gpu-check --emulate --precision f32 --seed 1
  step torch-baselines 120 python3 scripts/torch_baselines.py "$OUT" --wheels "$BUNDLE/wheels" --dry-run
  echo "dry run: emulated, not a GPU result" >> "$OUT/summary.txt"
else
  if ! python3 -c 'import ctypes; ctypes.CDLL("libcuda.so.1")' 2>/dev/null; then
    echo "no CUDA driver on this machine (libcuda.so.1 does not load): nothing ran on a GPU" | tee -a "$OUT/summary.txt"
    exit 2
  fi
  step gpu-check 200 "$BUNDLE/xtask" gpu-check --seed 1
  step bench 150 "$BUNDLE/xtask" bench --gpu-only --iters 10
  step torch-baselines 120 python3 scripts/torch_baselines.py "$OUT" --wheels "$BUNDLE/wheels" --iters 10
  if [ -f weights/lite_medsam.pth ]; then
    step demo 60 "$BUNDLE/medsa" demo --device cuda --precision f32 --weights weights/lite_medsam.pth --out "$OUT/demo"
  else
    echo "demo: skipped, weights/lite_medsam.pth was not carried" >> "$OUT/summary.txt"
  fi
fi
cat "$OUT/summary.txt"
exit $status
