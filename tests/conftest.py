"""Shared fixtures. The suite must test the installed, compiled package, not the source tree."""
import os
import pathlib

import pytest

_REPO = pathlib.Path(__file__).resolve().parent.parent


_HOW = (f"Install it first: `cd {_REPO} && .venv/bin/pip install --no-build-isolation .` and run "
        "`.venv/bin/pytest tests` (not `python -m pytest`, which puts the repository first on "
        "sys.path). Set SPARSEKERAS_ALLOW_SOURCE_TREE=1 to test an in-place build.")


def pytest_configure(config):
    try:
        import sparsekeras
        from sparsekeras import _kernels  # noqa: F401
    except ImportError as e:
        raise pytest.UsageError(f"cannot import the compiled sparsekeras ({e}). {_HOW}") from e
    source_pkg = (_REPO / "sparsekeras").resolve()
    here = pathlib.Path(sparsekeras.__file__).resolve()
    if os.environ.get("SPARSEKERAS_ALLOW_SOURCE_TREE") != "1" and source_pkg in here.parents:
        raise pytest.UsageError(
            f"sparsekeras was imported from the source tree ({here}), which has no compiled "
            f"_kernels. {_HOW}")


def _isas():
    try:
        from sparsekeras import _kernels
    except ImportError:  # pytest_configure reports it with instructions
        return ["generic"]
    return _kernels.available_isas()


@pytest.fixture(params=_isas())
def isa(request):
    """Run the test once per instruction set this CPU supports; restore detection after."""
    from sparsekeras import _kernels
    _kernels._force_isa(request.param)
    assert _kernels.isa() == request.param
    try:
        yield request.param
    finally:
        _kernels._force_isa(None)


@pytest.fixture(autouse=True)
def _restore_threads():
    import sparsekeras
    before = sparsekeras.get_num_threads()
    yield
    sparsekeras.set_num_threads(before)
