#!/usr/bin/env bash
# Build the standalone one-folder bundle dist/wattlens/ and smoke-test it.
#
#   packaging/build.sh               build, then smoke-test the built bundle
#   packaging/build.sh --smoke-only  smoke-test an existing dist/wattlens/
#
# How: copy the working tree (tracked + untracked, .gitignore honoured) to build/bundle-src so a
# stale build/lib can never leak into the package, install it NON-editable with --no-deps into a
# clean venv build/bundle-venv, add the core runtime dependencies from pyproject.toml (no torch or
# transformers: they are the `advisor` extra, which the bundle leaves out; see
# packaging/wattlens.spec), then run PyInstaller
# on packaging/wattlens.spec from that venv. The venv is reused while the dependency list is
# unchanged. Needs network access to the package index the first time. Env: PYTHON (default
# python3, >= 3.10).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
VENV=$ROOT/build/bundle-venv
SRC=$ROOT/build/bundle-src
DIST=$ROOT/dist
BUNDLE=$DIST/wattlens
EXE=$BUNDLE/wattlens

say() { printf '%s\n' "build.sh: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

validate_metadata() {
    if command -v desktop-file-validate >/dev/null; then
        desktop-file-validate packaging/io.github.wattlens.Wattlens.desktop || die "desktop file invalid"
        say "desktop file valid (desktop-file-validate)"
    else
        say "desktop-file-validate not installed (apt-get install desktop-file-utils): skipped"
    fi
    if command -v appstreamcli >/dev/null; then
        appstreamcli validate --no-net packaging/io.github.wattlens.Wattlens.metainfo.xml >&2 \
            || die "AppStream metainfo invalid"
    else
        say "appstreamcli not installed (apt-get install appstream): skipped"
    fi
}

build() {
    mkdir -p "$ROOT/build"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    # The core runtime dependencies from pyproject.toml plus the `package` extra (never the
    # `advisor` extra; the filter guards against torch/transformers coming back into the core).
    local reqs
    reqs=$("$VENV/bin/python" - "$ROOT/pyproject.toml" <<'EOF'
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

LEFT_OUT = {"torch", "transformers"}
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
reqs = project["dependencies"] + project["optional-dependencies"]["package"]
for req in reqs:
    name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower()
    if name not in LEFT_OUT:
        print(req)
EOF
)
    local stamp="$VENV/.wattlens-deps"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$reqs" ]; then
        say "installing runtime dependencies (without torch/transformers) into $VENV"
        # shellcheck disable=SC2086  # one requirement per line, none contains a space
        "$VENV/bin/python" -m pip install -q $reqs
        printf '%s' "$reqs" > "$stamp"
    fi

    say "copying the working tree to $SRC"
    rm -rf "$SRC"
    mkdir -p "$SRC"
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
            | "$VENV/bin/python" -c '
import os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
for rel in sys.stdin.buffer.read().decode().split("\0"):
    path = os.path.join(src, rel)
    if rel and os.path.isfile(path):  # skips files deleted in the work tree
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(path, os.path.join(dst, rel))
' "$ROOT" "$SRC"
    else
        tar -C "$ROOT" --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.git -cf - . \
            | tar -C "$SRC" -xf -
    fi
    say "installing wattlens (non-editable, --no-deps)"
    "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$SRC"
    "$VENV/bin/python" -c 'import importlib.resources as r; r.files("wattlens.resources").joinpath("cpu_tdp.json").read_text()' \
        || die "wattlens.resources/cpu_tdp.json is not installed as package data"

    say "running PyInstaller"
    rm -rf "$BUNDLE"
    # Run from build/ so the repo root (whose app/, profiler/ folders are not `wattlens.*`) is
    # not on sys.path; the installed copy in the venv is what gets frozen.
    (cd "$ROOT/build" && "$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
        --distpath "$DIST" --workpath "$ROOT/build/pyinstaller" "$ROOT/packaging/wattlens.spec")
    [ -x "$EXE" ] || die "PyInstaller did not produce $EXE"
}

smoke() {
    [ -x "$EXE" ] || die "no bundle at $BUNDLE: run packaging/build.sh first"
    local tmp
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    # A throwaway database and runtime dir: the smoke test never touches the user's own data.
    export WATTLENS_DB="$tmp/smoke.db" XDG_DATA_HOME="$tmp/data"
    local py="$VENV/bin/python"
    [ -x "$py" ] || py=$PYTHON

    say "smoke: wattlens --help"
    "$EXE" --help > "$tmp/help.txt" || die "wattlens --help exited $?"
    grep -q "doctor" "$tmp/help.txt" || die "wattlens --help does not list the subcommands"

    say "smoke: wattlens doctor"
    "$EXE" doctor >&2 || die "wattlens doctor exited $?"

    say "smoke: wattlens doctor --json parses"
    "$EXE" doctor --json > "$tmp/doctor.json" || die "wattlens doctor --json exited $?"
    "$py" - "$tmp/doctor.json" "$BUNDLE" <<'EOF' || die "wattlens doctor --json is not the expected JSON"
import json, os, sys
doc = json.load(open(sys.argv[1]))
assert isinstance(doc, dict), doc
for key in ("usable", "unavailable", "checks"):
    assert isinstance(doc.get(key), list), f"doctor --json lacks the list {key!r}"
assert doc["usable"], "no usable power source at all (the CPU model should always be there)"
pyspy = [c for c in doc["checks"] if c["name"].startswith("py-spy")]
if os.path.exists(os.path.join(sys.argv[2], "py-spy")):
    assert pyspy and "not found" not in pyspy[0]["detail"], pyspy
print(f"build.sh: doctor --json: {len(doc['usable'])} usable, {len(doc['unavailable'])} unavailable",
      file=sys.stderr)
EOF

    say "smoke: no torch/transformers/CUDA libraries in the bundle"
    if find "$BUNDLE" \( -name 'libtorch*' -o -name 'libcudnn*' -o -name 'libcublas*' \
            -o -path '*/torch/*' -o -path '*/transformers/*' \) -print -quit | grep -q .; then
        die "torch, transformers or CUDA libraries ended up in the bundle"
    fi
    [ -f "$BUNDLE/_internal/wattlens/resources/cpu_tdp.json" ] || die "cpu_tdp.json missing from the bundle"
    [ -f "$BUNDLE/_internal/wattlens/profiler/agent/bootstrap/sitecustomize.py" ] \
        || die "the agent bootstrap (for \`wattlens run\`) is missing from the bundle"

    say "smoke: attach to a process, then report it as html and pdf (matplotlib in the bundle)"
    sleep 30 &
    local target=$!
    "$EXE" attach "$target" --duration 2 --no-stacks --no-gpu --json > "$tmp/attach.json" \
        || { kill "$target"; die "wattlens attach exited $?"; }
    kill "$target"; wait "$target" 2>/dev/null || true
    local sid
    sid=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["session_id"])' "$tmp/attach.json") \
        || die "wattlens attach --json did not print a session id"
    for fmt in html pdf; do
        "$EXE" report "$sid" --format "$fmt" -o "$tmp/report.$fmt" > /dev/null \
            || die "wattlens report --format $fmt exited $?"
        [ -s "$tmp/report.$fmt" ] || die "wattlens report --format $fmt wrote nothing"
    done
    if [ -f "$SRC/app/advise.py" ] || [ ! -d "$SRC" ]; then
        "$EXE" advise "$sid" --json > "$tmp/advise.json" || die "wattlens advise exited $?"
        "$py" -c 'import json, sys; json.load(open(sys.argv[1]))' "$tmp/advise.json" \
            || die "wattlens advise --json is not JSON"
    fi

    if [ -f "$SRC/app/optimize_cmd.py" ] || [ ! -d "$SRC" ]; then
        say "smoke: a command that needs torch fails with one line that says to use pip"
        mkdir -p "$tmp/model"
        echo '{"model_type": "gpt2"}' > "$tmp/model/config.json"
        set +e
        "$EXE" optimize "$tmp/model" --action bf16 --out "$tmp/out" > "$tmp/opt.out" 2> "$tmp/opt.err"
        local rc=$?
        set -e
        cat "$tmp/opt.err" >&2
        [ "$rc" -eq 2 ] || die "optimize in the bundle exited $rc, expected 2 (a missing extra)"
        [ "$(wc -l < "$tmp/opt.err")" -eq 1 ] || die "optimize in the bundle did not fail with one line"
        grep -qF "pip install 'wattlens[advisor]'" "$tmp/opt.err" \
            || die "optimize's error does not say to install the advisor extra with pip"
        if grep -q "internal error" "$tmp/opt.err"; then die "optimize reported an internal error"; fi
    else
        say "smoke: optimize is not in this tree yet: its torch check skipped"
    fi

    if [ -f "$SRC/app/gui/main.py" ] || [ ! -d "$SRC" ]; then
        say "smoke: wattlens gui starts (offscreen) and is still running after 15 s"
        set +e
        QT_QPA_PLATFORM=offscreen timeout 15 "$EXE" gui > "$tmp/gui.log" 2>&1
        local grc=$?
        set -e
        [ "$grc" -eq 124 ] || { cat "$tmp/gui.log" >&2; die "wattlens gui exited $grc within 15 s"; }
    else
        say "smoke: the GUI is not in this tree yet: its start check skipped"
    fi

    say "smoke test passed; bundle size: $(du -sh "$BUNDLE" | cut -f1)"
}

case "${1:-}" in
    --smoke-only) smoke ;;
    "") validate_metadata; build; smoke ;;
    *) die "unknown option $1 (use --smoke-only or nothing)" ;;
esac
