# Sourced by the scripts in scripts/: one place that knows how to make the Python environment.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
UV_VERSION="0.13.9"
VENV="$ROOT/.venv"
TOOLS="$ROOT/.cache/tools"   # uv lives apart from .venv, which uv keeps identical to the lock

say() { printf '\033[1m[parley]\033[0m %s\n' "$*" >&2; }

find_python() {
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    say "Python 3.11 is required (found: $(python3 --version 2>&1))"; return 1
}

# ensure_python_env base|dev — install requirements/<name>.lock into .venv if it changed.
ensure_python_env() {
    local lock="$ROOT/requirements/$1.lock" stamp="$VENV/.parley-$1.sha256" want
    want="$(sha256sum "$lock" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
        return 0
    fi
    local py; py="$(find_python)"
    if [ ! -x "$TOOLS/bin/uv" ]; then
        say "installing uv $UV_VERSION (the installer) into .cache/tools"
        "$py" -m venv "$TOOLS"
        "$TOOLS/bin/python" -m pip install --quiet "uv==$UV_VERSION"
    fi
    [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
    say "installing requirements/$1.lock into .venv"
    "$TOOLS/bin/uv" pip install --quiet --python "$VENV/bin/python" --require-hashes -r "$lock"
    echo "$want" > "$stamp"
}
