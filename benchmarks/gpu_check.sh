#!/usr/bin/env bash
# The one prepared GPU check (issue 15): CUDA tests, throughput for small/base/large, large at batch 64
# with gradient checkpointing, and a 60 s pre-training run with its data-loader wait. Finishes in under
# 8 minutes on one H100/H200; writes OUT/gpu_check.json and OUT/gpu_check.md.
#
#   benchmarks/gpu_check.sh [OUT] [--dry-run]     (default OUT: gpu_check_out; --dry-run: CPU plumbing only)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_out}"
shift || true
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
