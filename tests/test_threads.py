"""Thread-count setting: round trips, validation, OMP_NUM_THREADS default, small-work cutoff."""
import os
import subprocess
import sys

import numpy as np
import pytest

import sparsekeras
from sparsekeras import _kernels, _threads


@pytest.mark.parametrize("n", [1, 2, 3, 7, np.int64(4)])
def test_set_get_round_trip(n):
    sparsekeras.set_num_threads(n)
    assert sparsekeras.get_num_threads() == int(n)
    assert type(sparsekeras.get_num_threads()) is int


def test_none_restores_default():
    sparsekeras.set_num_threads(5)
    sparsekeras.set_num_threads(None)
    assert sparsekeras.get_num_threads() == _threads.default_num_threads()


def test_context_manager_restores():
    sparsekeras.set_num_threads(2)
    with sparsekeras.num_threads(1):
        assert sparsekeras.get_num_threads() == 1
        with sparsekeras.num_threads(3):
            assert sparsekeras.get_num_threads() == 3
        assert sparsekeras.get_num_threads() == 1
    assert sparsekeras.get_num_threads() == 2
    with pytest.raises(RuntimeError):
        with sparsekeras.num_threads(4):
            raise RuntimeError("boom")
    assert sparsekeras.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, [2]])
def test_invalid_values(bad):
    sparsekeras.set_num_threads(2)
    with pytest.raises(ValueError, match=r"n must be a positive integer or None; received: "):
        sparsekeras.set_num_threads(bad)
    with pytest.raises(ValueError, match=r"received: "):
        with sparsekeras.num_threads(bad):
            pass
    assert sparsekeras.get_num_threads() == 2
    with pytest.raises(ValueError, match=r"n_threads must be >= 1; received: 0"):
        _kernels._set_num_threads(0)


def _threads_in_subprocess(tmp_path, omp):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = omp
    code = ("import sparsekeras, sparsekeras._threads as t; "
            "print(sparsekeras.get_num_threads(), t.default_num_threads(), sparsekeras.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got, default, path = proc.stdout.split()
    assert os.path.dirname(path) == os.path.dirname(sparsekeras.__file__)
    return int(got), int(default)


@pytest.mark.parametrize("omp", ["1", "3", "3,2"])
def test_default_honours_omp_num_threads(tmp_path, omp):
    want = int(omp.split(",")[0])
    assert _threads_in_subprocess(tmp_path, omp) == (want, want)


def test_default_ignores_invalid_omp_num_threads(tmp_path, monkeypatch):
    for bad in ("abc", "0", "-2"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        n = _threads.default_num_threads()
        assert 1 <= n <= len(os.sched_getaffinity(0))
    got, default = _threads_in_subprocess(tmp_path, "abc")
    assert got == default >= 1


def test_threads_for_work():
    sparsekeras.set_num_threads(2)
    for tiny in (0, 1, 100, 10_000):
        assert _kernels.threads_for_work(tiny) == 1
    assert _kernels.threads_for_work(10**9) == 2
    assert _kernels.threads_for_work(2**70) == 2  # clamped, no overflow
    sparsekeras.set_num_threads(1)
    assert _kernels.threads_for_work(10**9) == 1
