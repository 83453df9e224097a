"""GradualPruning resumes exactly whatever the order of the callbacks (issue 23, item 5): a run
killed mid-pruning or after compaction and resumed with BackupAndRestore listed after or before
GradualPruning ends with the masks and weights of the uninterrupted run."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import sparsekeras
from sparsekeras.callbacks import GradualPruning
from sparsekeras.layers import SparseDense
from sparsekeras.schedules import PolynomialDecay

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS_PER_EPOCH, EPOCHS = 4, 5
# Pruning at steps 0, 3, 6, 9, 12 (end); compaction from step 13. An epoch starts at a step that
# is not a pruning step, so that a resume which misreads its step prunes where it should not.
SCHEDULE = dict(initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=12, frequency=3)


class _Kill(keras.callbacks.Callback):
    """Ends the process abruptly (no cleanup, as a crash) when `step` starts."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            os._exit(17)


def train(order, backup_dir=None, kill_at=None):
    """The run: returns its final weights (kernels, biases, masks) as arrays."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), SparseDense(16, activation="relu"),
                              SparseDense(4)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8 * STEPS_PER_EPOCH, 8)).astype("float32")
    y = rng.standard_normal((len(x), 4)).astype("float32")
    callbacks = [GradualPruning(PolynomialDecay(**SCHEDULE))]
    if backup_dir is not None:
        backup = keras.callbacks.BackupAndRestore(str(backup_dir))
        callbacks = [backup] + callbacks if order == "backup_first" else callbacks + [backup]
    if kill_at is not None:
        callbacks.append(_Kill(kill_at))
    model.fit(x, y, batch_size=8, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
    sparsekeras.decompact(model)  # compare the dense layout
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


@pytest.fixture(scope="module")
def uninterrupted():
    return train("pruning_first")


@pytest.mark.parametrize("order, kill_at", [("backup_first", 10), ("pruning_first", 10),
                                            ("pruning_first", 18)])
def test_resume_is_exact_in_any_callback_order(order, kill_at, uninterrupted, tmp_path):
    """kill_at 10: mid-pruning (resumed at step 8, not a pruning step); 18: after compaction
    (resumed at step 16 from an uncompacted backup)."""
    backup = tmp_path / "backup"
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {HERE!r})
        import test_resume_order
        test_resume_order.train({order!r}, {str(backup)!r}, kill_at={kill_at})
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    killed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 17, killed.stderr[-3000:]  # died at kill_at, as a crash
    resumed = train(order, backup)
    assert len(resumed) == len(uninterrupted) == 6
    for got, want in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(got, want)
    masks = [w for w in resumed if w.ndim == 2 and set(np.unique(w)) <= {0.0, 1.0}]
    assert [round(1 - m.mean(), 2) for m in masks] == [0.8, 0.8]
