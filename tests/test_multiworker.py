"""Multi-worker training (issue 17): the custom training loop of docs/pruning-guide.md ("Multi-worker
training") run on 2 worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy."""
import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import keras
import numpy as np

import sparsekeras
from sparsekeras.callbacks import prunable_targets

GUIDE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "pruning-guide.md"
TIMEOUT = 420  # seconds for both workers together (two TensorFlow start-ups on a loaded machine)

# Appended to the guide's block on each worker: what the test compares.
EPILOGUE = """
np.savez(f"weights_{task_id}.npz", *[keras.ops.convert_to_numpy(v) for v in model.weights])
np.save(f"pred_{task_id}.npy", model.predict(np.linspace(-1, 1, 48, dtype="float32").reshape(3, 16), verbose=0))
"""


def _guide_block():
    text = GUIDE.read_text()
    section = text[text.index("## Multi-worker training"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_two_workers_end_identical_and_chief_model_loads(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_guide_block() + EPILOGUE)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT))
    finally:
        for proc in procs:  # a worker left waiting for its peer is ended, not left behind
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    # Each worker printed: task id, sparsity, loss.
    lines = [out.strip().splitlines()[-1].split() for out, _ in outputs]
    assert sorted(int(line[0]) for line in lines) == [0, 1]
    assert all(abs(float(line[1]) - 0.8) < 0.01 for line in lines), lines

    w0, w1 = np.load(tmp_path / "weights_0.npz"), np.load(tmp_path / "weights_1.npz")
    assert w0.files == w1.files and len(w0.files) == 6  # 2 x (kernel, bias, mask)
    for key in w0.files:  # bitwise identical masks and weights on both workers
        np.testing.assert_array_equal(w0[key], w1[key])
    # The workers trained on different data: the all-reduced gradients made them agree.
    np.testing.assert_array_equal(np.load(tmp_path / "pred_0.npy"), np.load(tmp_path / "pred_1.npy"))

    model = keras.models.load_model(tmp_path / "pruned.keras")
    targets = prunable_targets(model)
    assert len(targets) == 2
    for target in targets:
        assert abs(target.sparsity - 0.8) < 0.01
    x = np.linspace(-1, 1, 48, dtype="float32").reshape(3, 16)
    np.testing.assert_allclose(model.predict(x, verbose=0), np.load(tmp_path / "pred_0.npy"),
                               atol=1e-5)
    masks = [w0[k] for k in w0.files if w0[k].ndim == 2 and set(np.unique(w0[k])) <= {0.0, 1.0}]
    assert len(masks) == 2
    for target, mask in zip(targets, masks):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(target.mask), mask)
