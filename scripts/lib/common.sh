# Sourced by the scripts in scripts/: one place that knows how to make the Python environment.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
UV_VERSION="0.13.9"
# PARLEY_PYTHON=3.12 or 3.13 builds and uses .venv-3.13 (the same locks hold for 3.11-3.13);
# the default 3.11 keeps .venv.
PARLEY_PYTHON="${PARLEY_PYTHON:-3.11}"
venv_for() { if [ "$1" = 3.11 ]; then echo "$ROOT/.venv"; else echo "$ROOT/.venv-$1"; fi; }
VENV="$(venv_for "$PARLEY_PYTHON")"
TOOLS="$ROOT/.cache/tools"   # uv lives apart from .venv, which uv keeps identical to the lock

say() { printf '\033[1m[parley]\033[0m %s\n' "$*" >&2; }

# find_python [X.Y] — an interpreter of that version (default $PARLEY_PYTHON): on PATH, or one
# that pyenv installed (every machine here has pyenv's 3.12 and 3.13 beside the default 3.11).
find_python() {
    local want="${1:-$PARLEY_PYTHON}" candidate
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    for candidate in "python$want" python3 "$pyenv_root"/versions/"$want".*/bin/python"$want"; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c "import sys; sys.exit('%d.%d' % sys.version_info[:2] != '$want')" 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    say "Python $want is required (found: $(python3 --version 2>&1))"; return 1
}

# ensure_python_env base|dev [X.Y] — install requirements/<name>.lock into the venv for that
# Python (default $PARLEY_PYTHON: .venv, or .venv-X.Y) if it changed.
ensure_python_env() {
    local version="${2:-$PARLEY_PYTHON}"
    local venv; venv="$(venv_for "$version")"
    local lock="$ROOT/requirements/$1.lock" stamp="$venv/.parley-$1.sha256" want
    want="$(sha256sum "$lock" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
        return 0
    fi
    local py; py="$(find_python "$version")"
    if [ ! -x "$TOOLS/bin/uv" ]; then
        say "installing uv $UV_VERSION (the installer) into .cache/tools"
        "$py" -m venv "$TOOLS"
        "$TOOLS/bin/python" -m pip install --quiet "uv==$UV_VERSION"
    fi
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    say "installing requirements/$1.lock into ${venv#"$ROOT"/} (Python $version)"
    "$TOOLS/bin/uv" pip install --quiet --python "$venv/bin/python" --require-hashes -r "$lock"
    echo "$want" > "$stamp"
}
