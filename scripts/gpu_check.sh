#!/usr/bin/env bash
# The GPU check: every GPU figure pvd claims in one command, within a time budget (default 420 s).
#
#   bash scripts/gpu_check.sh [OUT_DIR] [--budget SECONDS] [--dry-run] [--stages env,tests,...] [--verbose]
#
# Stages: env, tests (on CUDA), kernels, e2e, train, report; see bench/gpu_check.py and the README
# ("GPU check"). OUT_DIR defaults to gpu_check_out/ (a temporary folder for --dry-run). Needs only the
# machine's Python with torch and triton, and this working tree: pure-Python packages the machine lacks come
# from scripts/wheels, installed offline into a temporary folder. Exit status 1 names the failed stages.
# Python: $PYTHON, else .venv/bin/python, python3 or python, the first that imports torch.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" "$REPO/.venv/bin/python" python3 python; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
        if "$candidate" -c "import torch" >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

OUT_DIR=""
ARGS=()
DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --budget|--stages) [ $# -ge 2 ] || { echo "gpu_check: $1 needs a value" >&2; exit 2; }
                           ARGS+=("$1" "$2"); shift 2 ;;
        --budget=*|--stages=*|--verbose) ARGS+=("$1"); shift ;;
        --dry-run) DRY_RUN=1; ARGS+=("$1"); shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) [ -z "$OUT_DIR" ] || { echo "gpu_check: one OUT_DIR only (got $OUT_DIR and $1)" >&2; exit 2; }
           OUT_DIR="$1"; shift ;;
    esac
done
if [ -z "$OUT_DIR" ]; then
    OUT_DIR="$REPO/gpu_check_out"
    [ "$DRY_RUN" = 0 ] || OUT_DIR="$(mktemp -d -t pvd-gpu-check-dry-run-XXXXXX)"
fi
if ! PY="$(pick_python)"; then
    echo "gpu_check: no Python that imports torch (tried \$PYTHON, .venv/bin/python, python3, python)" >&2
    exit 2
fi
cd "$REPO"
exec "$PY" bench/gpu_check.py run "$OUT_DIR" --python "$PY" "${ARGS[@]}"
