"""sparsekeras: compiled sparse linear algebra for Keras 3 on TensorFlow.

Really sparse neural networks on the CPU: the kernels (`sparsekeras.linalg`) are Cython/OpenMP
with AVX2/AVX-512 inner loops, work on scipy.sparse inputs, and are shared with the TensorFlow
ops and Keras layers built on them.
"""
from sparsekeras._openmp import tuned_wait_policy as _tuned_wait_policy

try:
    with _tuned_wait_policy():  # libgomp reads its wait policy when it loads (see _openmp.py)
        from sparsekeras import _kernels  # noqa: F401  (compiled; absent from a source checkout)
except ImportError as _e:  # pragma: no cover - exercised by tests/test_public_api.py in a subprocess
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    if _os.path.exists(_os.path.join(_os.path.dirname(_here), "setup.py")):
        raise ImportError(
            f"sparsekeras is being imported from its source checkout ({_here}), which holds no "
            "compiled kernels. Install it (pip install .) and run from another folder, or use "
            "the `sparsekeras` console script; `python -m sparsekeras` from the checkout's root "
            "picks up the source tree.") from _e
    raise
from sparsekeras import linalg
from sparsekeras._threads import get_num_threads, num_threads, set_num_threads
from sparsekeras import ops
from sparsekeras.ops import CSRTensor
from sparsekeras import layers, schedules, callbacks, regularizers, data
from sparsekeras._convert import compact, coverage, decompact, densify, sparsify, strip
from sparsekeras._shrink import shrink
from sparsekeras._fold import fold_batchnorm

from sparsekeras._version import __version__

__all__ = ["linalg", "ops", "layers", "schedules", "callbacks", "regularizers", "data", "CSRTensor",
           "sparsify", "strip", "densify", "compact", "decompact", "coverage", "shrink",
           "fold_batchnorm", "set_num_threads", "get_num_threads", "num_threads", "__version__"]
