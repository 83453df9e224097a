"""sparsekeras: compiled sparse linear algebra for Keras 3 on TensorFlow.

Really sparse neural networks on the CPU: the kernels (`sparsekeras.linalg`) are Cython/OpenMP
with AVX2/AVX-512 inner loops, work on scipy.sparse inputs, and are shared with the TensorFlow
ops and Keras layers built on them.
"""
from sparsekeras import linalg
from sparsekeras._threads import get_num_threads, num_threads, set_num_threads
from sparsekeras import ops
from sparsekeras.ops import CSRTensor
from sparsekeras import layers, schedules, callbacks
from sparsekeras._convert import sparsify, strip

__version__ = "0.1.0"

__all__ = ["linalg", "ops", "layers", "schedules", "callbacks", "CSRTensor", "sparsify", "strip",
           "set_num_threads", "get_num_threads", "num_threads", "__version__"]
