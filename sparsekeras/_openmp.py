"""libgomp's waiting policy, set for the kernels before their runtime loads.

TensorFlow calls an op's kernel from whichever of its threads runs the op (inter-op pool,
eager caller), and libgomp keeps one team of worker threads per calling thread. Once a process
has more libgomp-managed threads than CPUs, which happens after the first few op calls,
libgomp "throttles" its busy-wait: a worker spins 100 times (about a microsecond) before it
sleeps on a futex, instead of 300,000. A kernel runs 2-4 parallel regions per call (check,
pack, compute, store) with short serial gaps between them, so each region then starts by waking
a sleeping worker. With OMP_WAIT_POLICY=ACTIVE the throttled count is 1000 spins, enough to
bridge those gaps; GOMP_SPINCOUNT=300000 keeps the unthrottled count at libgomp's default, so
idle workers still sleep after the same ~1 ms as without this setting (ACTIVE alone would let
them spin for minutes). Measured (docs/performance.md): forward+backward of a 4096 x 4096
product at 99% sparsity, batch 32, in a tf.function: 1.48 -> 0.87 ms.

libgomp reads these variables once, when it is loaded, so they are set only around the import of
the compiled module and removed again: subprocesses and later libraries see the user's
environment unchanged. A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins, and
SPARSEKERAS_OMP_TUNING=0 turns the setting off. If libgomp was already loaded by another
library, it keeps that library's settings.
"""
import contextlib
import os

__all__ = ["tuned_wait_policy", "TUNED"]

TUNED = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}


@contextlib.contextmanager
def tuned_wait_policy(environ=None):
    """Set TUNED in `environ` (os.environ) for the duration of the block, unless the user set
    either variable or SPARSEKERAS_OMP_TUNING=0; restore the environment afterwards."""
    env = os.environ if environ is None else environ
    apply = (env.get("SPARSEKERAS_OMP_TUNING", "1").strip() != "0"
             and not any(k in env for k in TUNED))
    if apply:
        env.update(TUNED)
    try:
        yield apply
    finally:
        if apply:
            for k in TUNED:
                env.pop(k, None)
