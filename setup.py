"""Build of sparsekeras: two extensions, in this order.

1. sparsekeras._kernels: the Cython/OpenMP kernels (and their C API, _kernels/sparsekeras_kernels.h).
2. sparsekeras._sparsekeras_ops: the TensorFlow op library (C++), linked against (1) so
   TensorFlow and numpy callers run the same machine code. Built with the flags of the installed
   TensorFlow, whose version is recorded in sparsekeras/_build_info.py and checked at import.

Environment switches:
  SPARSEKERAS_CYTHON_DEBUG=1   compile with Cython bounds/wraparound checks on (debugging).
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("SPARSEKERAS_CYTHON_DEBUG", "") not in ("", "0")
KERNELS_EXT = "sparsekeras._kernels"
OPS_EXT = "sparsekeras._sparsekeras_ops"

# Baseline x86-64 code everywhere; the SIMD inner loops (sk_simd.h) select AVX2/AVX-512 at run
# time, so one wheel serves every CPU. -g0 / --strip-debug keep debug info out of the wheel.
COMPILE_ARGS = ["-O3", "-g0", "-Wno-unused-function"]
LINK_ARGS = ["-Wl,--strip-debug"]


def _depends(folder, suffixes):
    return [os.path.join(folder, f) for f in sorted(os.listdir(os.path.join(HERE, folder)))
            if f.endswith(suffixes)]


kernels = Extension(
    KERNELS_EXT,
    sources=["_kernels/_kernels.pyx"],
    include_dirs=["_kernels", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=COMPILE_ARGS + ["-fopenmp"],
    extra_link_args=LINK_ARGS + ["-fopenmp"],
    depends=_depends("_kernels", (".pxi", ".h")),
)

ops = Extension(
    OPS_EXT,
    sources=["_ops/sparsekeras_ops.cc", "_ops/conv_ops.cc", "_ops/norm_ops.cc"],
    include_dirs=["_kernels", "_ops"],
    language="c++",
    depends=["_kernels/sparsekeras_kernels.h", "_kernels/sparsekeras_conv.h", "_ops/op_common.h"],
)


class BuildExt(build_ext):
    """Builds the kernels first, then the op library against them and the installed TensorFlow."""

    def build_extensions(self):
        self.extensions.sort(key=lambda e: e.name != KERNELS_EXT)
        # Python's C flags include C-only warnings that g++ rejects noisily.
        for flag in ("-Wstrict-prototypes",):
            if flag in self.compiler.compiler_so:
                self.compiler.compiler_so.remove(flag)
        super().build_extensions()

    def build_extension(self, ext):
        if ext.name == OPS_EXT:
            self._configure_ops(ext)
        super().build_extension(ext)

    def _configure_ops(self, ext):
        try:
            import tensorflow as tf
        except ImportError as e:
            raise RuntimeError("building sparsekeras needs TensorFlow (tensorflow-cpu 2.21) "
                               "installed in the build environment") from e
        kernels_path = self.get_ext_fullpath(KERNELS_EXT)
        ext.extra_compile_args = COMPILE_ARGS + tf.sysconfig.get_compile_flags() + [
            "-fPIC", "-Wno-deprecated-declarations", "--param", "destructive-interference-size=128",
        ]
        ext.extra_link_args = LINK_ARGS + tf.sysconfig.get_link_flags() + [
            f"-L{os.path.dirname(os.path.abspath(kernels_path))}",
            f"-l:{os.path.basename(kernels_path)}",
            "-Wl,-rpath,$ORIGIN",
        ]
        info_path = os.path.join(os.path.dirname(self.get_ext_fullpath(OPS_EXT)), "_build_info.py")
        os.makedirs(os.path.dirname(info_path), exist_ok=True)
        with open(info_path, "w") as f:
            f.write('"""Written by setup.py: what the op library was built against."""\n')
            f.write(f"TF_VERSION = {tf.__version__!r}\n")
            f.write(f"TF_CXX11_ABI = {tf.sysconfig.CXX11_ABI_FLAG!r}\n")


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
    ) + [ops],
    cmdclass={"build_ext": BuildExt},
)
