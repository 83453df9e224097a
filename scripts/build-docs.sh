#!/usr/bin/env bash
# Build the documentation site (mkdocs.yml: docs/ and the API reference from the docstrings)
# with warnings as errors: a broken link or anchor, a page left out of the nav, a docstring
# griffe cannot parse all fail the build.
#   bash scripts/build-docs.sh [SITE_DIR]      (default: site/)
# Runs the mkdocs of the environment in $PYTHON (default: .venv/bin/python), which needs
# requirements-docs.txt. The API reference is read from this checkout's source by griffe
# (statically: nothing is imported or compiled). This script installs nothing: CI (.ci/run)
# installs requirements-docs.txt first.
set -euo pipefail
cd "$(dirname "$0")/.."
site_dir=${1:-site}
python=${PYTHON:-.venv/bin/python}
if ! "$python" -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null; then
  echo "build-docs: mkdocs, mkdocs-material or mkdocstrings[python] is missing from $python;" \
       "install them with: $python -m pip install -r requirements-docs.txt" >&2
  exit 1
fi
export NO_MKDOCS_2_WARNING=1   # Material's banner about MkDocs 2.0 (not a build warning)
"$python" -m mkdocs build --strict --site-dir "$site_dir"
echo "build-docs: $(find "$site_dir" -name index.html | wc -l) pages in $site_dir"
