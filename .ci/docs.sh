#!/usr/bin/env bash
# Build the documentation with warnings as errors: docstring markup, the API reference generated
# from the package (docs/conf.py, the melody-api directive), the examples included from
# examples/, and every melody name the guides and migration tables mention (the :api: role:
# a name melody does not have is a warning, so an error here).
#
# Needs melody importable (pip install -e . done, as .ci/run does); installs the `docs` extra's
# requirements from pyproject.toml without reinstalling melody. Output: docs/_build/html.
set -euo pipefail
cd "$(dirname "$0")/.."

python -c "import tomllib" 2>/dev/null || python -m pip install -q tomli  # Python 3.10
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
python - >"$reqs" <<'PY'
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["docs"]))
PY
python -m pip install -q -r "$reqs"

rm -rf docs/_build
python -m sphinx -W --keep-going -E -q -b html docs docs/_build/html
echo "docs built without warnings: docs/_build/html/index.html"
