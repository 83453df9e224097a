"""Compiled sparse kernels of sparsekeras (Cython + OpenMP).

Two levels, as in scikit-learn's sparsefuncs_fast: `def` functions here check and convert their
arguments (dtype, shape, contiguity, CSR structure) and release the GIL; `cdef ... noexcept
nogil` bodies in the .pxi files do the loops. The C API (sparsekeras_kernels.h) exposes the same
bodies to the TensorFlow op library.

Arrays are raw CSR triples (indptr, indices, data) plus a shape: this is the level the public
`sparsekeras.linalg` (scipy.sparse containers) and the TensorFlow ops build on.
"""
cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from libc.math cimport fabs
from cython.parallel cimport prange, threadid
cimport numpy as cnp

import numpy as np

cnp.import_array()

# The hand-written C API header: including it makes the C compiler check every `cdef public`
# definition below against its prototype.
cdef extern from "sparsekeras_kernels.h":
    pass
cdef extern from "sparsekeras_conv.h":
    pass

include "_common.pxi"
include "csr_check.pxi"
include "csr_matmul.pxi"
include "csr_sddmm.pxi"
include "csr_transpose.pxi"
include "take.pxi"
include "csr_convert.pxi"
include "api.pxi"
include "bcsc_matmul.pxi"
include "csr_conv2d.pxi"
include "csr_spgemm.pxi"
