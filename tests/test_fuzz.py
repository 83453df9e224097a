"""Fuzzing of the NumPy-level functions and the TensorFlow ops with malformed sparse structures
(issue 23).

hypothesis draws batches of small case descriptions (target, mode, sizes, a mutation of the
structure: out-of-range, negative and wrapping indices including +-2**32, non-monotone, short or
long indptr, wrong lengths, huge and negative dimensions, zero-size operands, bad index dtypes,
NaN/inf); a worker process started with the "spawn" context runs them (tests/fuzz_worker.py). An
abort or a hang there is counted and the case printed; the worker is restarted.

Outcome categories: abort, hang, wrong (valid input, result differs from the float64 NumPy
reference), silent (invalid input accepted), unnamed (error that names no argument or value),
refused (valid input refused) must all be zero; ok and named are the good outcomes.

Default run: 300 cases. Before a release: `pytest tests/test_fuzz.py -m release -s` (10,000 cases;
set SPARSEKERAS_FUZZ_CASES to change the count).
"""
import collections
import multiprocessing
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_worker

NUMPY_TARGETS = ["linalg.matmul(S,D)", "linalg.matmul(D,S)", "linalg.sddmm", "linalg.transpose",
                 "linalg.to_dense"]
OPS_TARGETS = ["ops.matmul(S,D)", "ops.matmul(SparseTensor,D)", "ops.matmul(D,S)",
               "ops.dense_csc_matmul", "ops.dense_csr_matmul", "ops.sddmm", "ops.transpose",
               "ops.csr_csr_matmul", "ops.csr_conv2d_1x1", "ops.dense_bcsc_matmul"]
MUTATIONS = ["none", "unsorted", "duplicate", "explicit_zero", "nan", "empty",
             "indptr0", "indptr_dec", "indptr_short", "indptr_long", "indptr_last", "index_oob",
             "index_oob", "index_oob", "values_len", "shape_neg", "shape_huge_rows",
             "shape_huge_cols", "shape_len", "dense_inner", "dense_huge", "index_dtype"]
BAD = ("abort", "hang", "wrong", "silent", "unnamed", "refused", "harness")
BATCH = 50
CASE_TIMEOUT = 60.0


@st.composite
def cases(draw):
    numpy_level = draw(st.booleans())
    mutation = draw(st.sampled_from(MUTATIONS))
    index_dtype = draw(st.sampled_from(["int32", "int64"]))
    if mutation == "index_dtype":
        index_dtype = draw(st.sampled_from(["uint8", "uint64", "bool", "float32"]))
        if numpy_level:
            mutation, index_dtype = "none", "int64"
    case = {
        "target": draw(st.sampled_from(NUMPY_TARGETS if numpy_level else OPS_TARGETS)),
        "mode": "numpy" if numpy_level else draw(st.sampled_from(["eager", "graph", "static", "grad"])),
        "fmt": draw(st.sampled_from(["csr", "csc", "coo"])) if numpy_level else "csr",
        "m": draw(st.integers(0, 7)),
        "k": draw(st.integers(0, 7)),
        "n": draw(st.integers(1, 4)),
        "density": draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "mutation": mutation,
        "param": draw(st.integers(0, 1000)),
        "index_dtype": index_dtype,
    }
    if mutation == "index_dtype" and case["mode"] == "graph":
        case["mode"] = "eager"  # a bad dtype is refused before any graph exists
    return case


class Worker:
    """A spawned worker process running batches of cases; restarted after an abort or hang."""

    def __init__(self):
        self.ctx = multiprocessing.get_context("spawn")
        self.proc = None

    def start(self):
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=fuzz_worker.serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(300):
            raise RuntimeError("fuzz worker did not start")
        assert self.conn.recv()[0] == "ready"

    def stop(self):
        if self.proc is not None:
            if self.proc.is_alive():
                try:
                    self.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
                self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
            self.proc = None

    def run(self, batch):
        """[(category, detail)] per case of the batch."""
        if self.proc is None:
            self.start()
        out = [None] * len(batch)
        self.conn.send(batch)
        current = None
        while True:
            if not self.conn.poll(CASE_TIMEOUT):
                self.proc.kill()
                self.proc.join()
                self.proc = None
                out[current if current is not None else 0] = ("hang", "no answer in "
                                                              f"{CASE_TIMEOUT:.0f} s")
                break
            try:
                kind, i, outcome = self.conn.recv()
            except EOFError:
                self.proc.join()
                code = self.proc.exitcode
                self.proc = None
                out[current if current is not None else 0] = ("abort", f"exit code {code}")
                break
            if kind == "start":
                current = i
            elif kind == "done":
                out[i] = outcome
            else:
                break
        # Cases after an abort or a hang were not run: run them in a fresh worker.
        rest = [i for i, o in enumerate(out) if o is None]
        if rest:
            for i, o in zip(rest, self.run([batch[i] for i in rest])):
                out[i] = o
        return out


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.stop()


def _fuzz(worker, n_cases):
    counts = collections.Counter()
    per_target = collections.defaultdict(collections.Counter)
    failures = []

    pending = []

    def flush():
        for case, (category, detail) in zip(pending, worker.run(pending)):
            counts[category] += 1
            per_target[case["target"]][category] += 1
            if category in BAD and sum(f[0] == category for f in failures) < 8:
                failures.append((category, detail, case))
        pending.clear()

    # One case per hypothesis example (its own diversity), run in batches in the worker; the
    # outcomes are counted here and asserted at the end (no shrinking: the cases are small and
    # printed in full).
    @settings(max_examples=n_cases, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def run(case):
        pending.append(case)
        if len(pending) == BATCH:
            flush()

    run()
    if pending:
        flush()
    total = sum(counts.values())
    print(f"\nfuzz: {total} cases: " + ", ".join(f"{k}={counts[k]}" for k in
                                                 ("ok", "named") + BAD))
    for target in sorted(per_target):
        print(f"  {target}: " + ", ".join(f"{k}={v}" for k, v in sorted(per_target[target].items())))
    report = "\n".join(f"{c}: {d}\n    case: {case}" for c, d, case in failures)
    assert not any(counts[k] for k in BAD), f"{dict(counts)}\n{report}"
    assert total >= n_cases * 9 // 10, total  # hypothesis may skip a few duplicates
    # The suite exercises both sides: valid results compared and invalid inputs refused.
    assert counts["ok"] > total // 10 and counts["named"] > total // 10, dict(counts)


def test_fuzz_default(worker):
    _fuzz(worker, int(os.environ.get("SPARSEKERAS_FUZZ_CASES", 300)))


@pytest.mark.release
def test_fuzz_release(worker):
    _fuzz(worker, max(10_000, int(os.environ.get("SPARSEKERAS_FUZZ_CASES", 10_000))))


def test_worker_reports_abort_and_hang(worker):
    """The harness itself: a case that aborts and one that hangs are counted as such (the
    outcome categories could otherwise never fail)."""
    fuzz_worker_cases = [{"target": "__abort__"}, {"target": "__hang__"}]
    global CASE_TIMEOUT
    old, CASE_TIMEOUT = CASE_TIMEOUT, 20.0
    try:
        out = worker.run(fuzz_worker_cases)
    finally:
        CASE_TIMEOUT = old
    assert out[0][0] == "abort" and out[1][0] == "hang", out
