"""The public names are an explicit list; every one resolves."""
import sparsekeras
from sparsekeras import linalg

EXPECTED_TOP = ["linalg", "ops", "layers", "schedules", "callbacks", "regularizers", "data",
                "CSRTensor",
                "sparsify", "strip", "densify", "compact", "decompact", "coverage",
                "shrink", "fold_batchnorm",
                "set_num_threads", "get_num_threads", "num_threads",
                "__version__"]
EXPECTED_OPS = ["CSRTensor", "matmul", "csr_csr_matmul", "dense_csc_matmul", "dense_bcsc_matmul",
                "bcsc_expand", "dense_csr_matmul", "sddmm",
                "transpose", "transpose_structure", "to_csr", "conv2d", "csr_conv2d",
                "conv_kernel_structure", "layer_norm"]
EXPECTED_DATA = ["from_token_ids", "from_scipy", "token_ids_to_scipy"]
EXPECTED_LINALG = ["matmul", "sddmm", "to_csr", "to_dense", "canonicalize", "transpose", "validate",
                   "bcsc_from_dense", "bcsc_to_dense", "block_fill"]


def test_top_level_all():
    assert sparsekeras.__all__ == EXPECTED_TOP
    for name in EXPECTED_TOP:
        assert getattr(sparsekeras, name) is not None
    assert sparsekeras.linalg is linalg
    assert isinstance(sparsekeras.__version__, str) and sparsekeras.__version__.count(".") == 2


def test_linalg_all():
    assert linalg.__all__ == EXPECTED_LINALG
    for name in EXPECTED_LINALG:
        obj = getattr(linalg, name)
        assert callable(obj) and obj.__doc__, name


def test_star_import_exposes_only_public_names():
    ns = {}
    exec("from sparsekeras import *", ns)
    assert sorted(k for k in ns if k != "__builtins__") == sorted(EXPECTED_TOP)
    ns = {}
    exec("from sparsekeras.linalg import *", ns)
    assert sorted(k for k in ns if k != "__builtins__") == sorted(EXPECTED_LINALG)


def test_ops_all():
    from sparsekeras import ops

    assert ops.__all__ == EXPECTED_OPS
    for name in EXPECTED_OPS:
        assert callable(getattr(ops, name)), name


def test_source_checkout_import_error_is_clear():
    """Importing the uncompiled source tree (python -m from the checkout root) explains itself."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", "import sparsekeras"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "source checkout" in proc.stderr and "console script" in proc.stderr, proc.stderr[-2000:]


def test_data_all():
    from sparsekeras import data

    assert data.__all__ == EXPECTED_DATA
    for name in EXPECTED_DATA:
        obj = getattr(data, name)
        assert callable(obj) and obj.__doc__, name


def test_one_version_everywhere():
    """The version is written once (sparsekeras/_version.py): the package, the console script
    and the installed distribution's metadata report the same."""
    import importlib.metadata
    import subprocess
    import sys

    assert importlib.metadata.version("sparsekeras") == sparsekeras.__version__
    proc = subprocess.run([sys.executable, "-m", "sparsekeras", "--version"], capture_output=True,
                          text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"sparsekeras {sparsekeras.__version__}"
