"""Loads the compiled TensorFlow op library, once per process.

The library is tied to the TensorFlow it was compiled against (its C++ ABI is not stable across
minor versions): a mismatch is refused with both versions named and the command that rebuilds.
Two copies of the library in one process (an editable install plus a wheel, say) would leave
TensorFlow's generated wrapper module empty without an error, so the second one is refused.
"""
import glob
import os

import tensorflow as tf
from tensorflow.python.framework import op_def_registry

_LIBRARY = None
_PROBE_OP = "SparseKeras>CsrMatMul"
REBUILD = ("pip install --force-reinstall --no-cache-dir --no-binary sparsekeras sparsekeras "
           "(or, from a clone: pip install --force-reinstall .)")


def _library_path():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = sorted(glob.glob(os.path.join(here, "_sparsekeras_ops*.so")))
    if not found:
        raise ImportError(f"the sparsekeras op library (_sparsekeras_ops*.so) is missing from {here}; "
                          f"the package was not built. Reinstall it: {REBUILD}")
    return found[0]


def _built_tf_version():
    try:
        from sparsekeras import _build_info
    except ImportError:
        return None
    return _build_info.TF_VERSION


def check_tf_version(running=None, built=None):
    """Raise ImportError if the running TensorFlow is not the minor version the ops were built for."""
    running = running or tf.__version__
    built = built or _built_tf_version()
    if built is None:
        return
    if running.split(".")[:2] != built.split(".")[:2]:
        raise ImportError(
            f"sparsekeras was built against TensorFlow {built}, but TensorFlow {running} is "
            f"installed; its compiled ops only work with the TensorFlow they were built for. "
            f"Rebuild sparsekeras for this TensorFlow: {REBUILD}; or install TensorFlow {built}.")


def load():
    """The op library's generated Python module (loading it on first use)."""
    global _LIBRARY
    if _LIBRARY is not None:
        return _LIBRARY
    check_tf_version()
    path = _library_path()
    if op_def_registry.get(_PROBE_OP) is not None:
        raise ImportError(
            f"another copy of the sparsekeras op library is already loaded in this process, so "
            f"{path} cannot be: two installations of sparsekeras are on sys.path (an editable "
            f"install beside a wheel?). Uninstall one of them.")
    try:
        _LIBRARY = tf.load_op_library(path)
    except tf.errors.NotFoundError as e:
        raise ImportError(
            f"could not load the sparsekeras op library {path} into TensorFlow {tf.__version__} "
            f"(built against {_built_tf_version()}): {e}. Rebuild it: {REBUILD}") from e
    return _LIBRARY
