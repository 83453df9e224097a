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


# ---- libgomp wait policy (sparsekeras/_openmp.py) -------------------------------------------

def test_tuned_wait_policy_sets_and_restores():
    from sparsekeras._openmp import TUNED, tuned_wait_policy

    env = {"PATH": "/bin"}
    with tuned_wait_policy(env) as applied:
        assert applied and {k: env[k] for k in TUNED} == TUNED
    assert env == {"PATH": "/bin"}
    with pytest.raises(RuntimeError):
        with tuned_wait_policy(env):
            raise RuntimeError("boom")
    assert env == {"PATH": "/bin"}


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "10"},
                                  {"SPARSEKERAS_OMP_TUNING": "0"}])
def test_tuned_wait_policy_respects_the_user(user):
    from sparsekeras._openmp import tuned_wait_policy

    env = dict(user)
    with tuned_wait_policy(env) as applied:
        assert not applied and env == user
    assert env == user


def _gomp_display(tmp_path, extra_env):
    """The first libgomp OMP_DISPLAY_ENV block printed while importing sparsekeras (the runtime
    the kernels link), and the tuned variables left in os.environ afterwards."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SPARSEKERAS_OMP_TUNING")}
    env.update(extra_env, OMP_DISPLAY_ENV="verbose")
    code = ("import os, sparsekeras; "
            "print('LEFT', [k for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT') if k in os.environ])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    block = proc.stderr.split("OPENMP DISPLAY ENVIRONMENT BEGIN")[1].split("END")[0]
    settings = dict(line.strip().split(" = ") for line in block.splitlines() if " = " in line)
    left = [line for line in proc.stdout.splitlines() if line.startswith("LEFT")][0]
    return settings, left


def test_kernels_runtime_gets_tuned_wait_policy(tmp_path):
    settings, left = _gomp_display(tmp_path, {})
    assert settings["OMP_WAIT_POLICY"] == "'ACTIVE'"
    assert settings["GOMP_SPINCOUNT"] == "'300000'"
    assert left == "LEFT []"  # the user's environment is as it was


def test_kernels_runtime_keeps_user_wait_policy(tmp_path):
    settings, left = _gomp_display(tmp_path, {"OMP_WAIT_POLICY": "PASSIVE"})
    assert settings["OMP_WAIT_POLICY"] == "'PASSIVE'"
    assert left == "LEFT ['OMP_WAIT_POLICY']"
