"""Thread count of the compiled kernels: one setting, shared by every caller.

The default honours OMP_NUM_THREADS, the process's CPU affinity and a cgroup CPU quota
(containers), like scikit-learn's `_openmp_helpers`. Each kernel call then takes one thread when
its work is too small to pay for an OpenMP fork/join (see `_kernels.threads_for_work`).
"""
import contextlib
import math
import os

from sparsekeras import _kernels

__all__ = ["set_num_threads", "get_num_threads", "num_threads", "default_num_threads"]


def _cgroup_cpu_limit():
    """CPUs allowed by a cgroup quota (v2 cpu.max or v1 cfs), or None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


def default_num_threads():
    """OMP_NUM_THREADS if set, else the CPUs this process may run on (affinity, cgroup quota)."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n >= 1:
                return n
        except ValueError:
            pass
    if hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, limit)
    return max(1, n)


def set_num_threads(n):
    """Set the number of threads the sparse kernels use (None restores the default).

    Args:
        n: a positive int, or None for `default_num_threads()`.

    Raises:
        ValueError: if n is not a positive integer.
    """
    if n is None:
        _kernels._set_num_threads(default_num_threads(), False)
        return
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise ValueError(f"n must be a positive integer or None; received: {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be a positive integer or None; received: {n!r}")
    _kernels._set_num_threads(n)


def get_num_threads():
    """The number of threads the sparse kernels use for large problems."""
    return _kernels._get_num_threads()


@contextlib.contextmanager
def num_threads(n):
    """Context manager: run the enclosed code with `n` kernel threads, then restore.

    Example:
        >>> with sparsekeras.num_threads(1):
        ...     y = sparsekeras.linalg.matmul(x, w)
    """
    # Restore the exact previous setting (count and whether the user chose it) without
    # recomputing the default: the context manager is cheap enough to wrap a single small call.
    previous = (_kernels._get_num_threads(), _kernels._num_threads_is_set())
    set_num_threads(n)
    try:
        yield
    finally:
        _kernels._set_num_threads(*previous)


set_num_threads(None)
