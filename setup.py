"""Build of sparsekeras: the Cython/OpenMP kernel extension (sparsekeras._kernels).

Environment switches:
  SPARSEKERAS_CYTHON_DEBUG=1   compile with Cython bounds/wraparound checks on (debugging).
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join("_kernels")
DEBUG = os.environ.get("SPARSEKERAS_CYTHON_DEBUG", "") not in ("", "0")

# Baseline x86-64 code everywhere; the SIMD inner loops (sk_simd.h) select AVX2/AVX-512 at run
# time, so one wheel serves every CPU. -g0 / --strip-debug keep debug info out of the wheel.
COMPILE_ARGS = ["-O3", "-fopenmp", "-g0", "-Wno-unused-function", "-Wno-unreachable-code"]
LINK_ARGS = ["-fopenmp", "-Wl,--strip-debug"]

kernels = Extension(
    "sparsekeras._kernels",
    sources=[os.path.join(KERNELS, "_kernels.pyx")],
    include_dirs=[KERNELS, numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=COMPILE_ARGS,
    extra_link_args=LINK_ARGS,
    depends=[os.path.join(KERNELS, f) for f in os.listdir(os.path.join(HERE, KERNELS))
             if f.endswith((".pxi", ".h"))],
)

setup(
    ext_modules=cythonize(
        [kernels],
        compiler_directives={
            "language_level": 3,
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "initializedcheck": DEBUG,
            "cdivision": not DEBUG,
            "embedsignature": True,
        },
        build_dir="build/cython",
    ),
)
