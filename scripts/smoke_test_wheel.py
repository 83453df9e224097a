"""Smoke test of an installed sparsekeras wheel, run from a folder outside the source tree in a
fresh virtual environment: import, a product against NumPy, a tiny pruning fit, a `.keras` save
and a load in a fresh process, and the console script."""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import scipy.sparse as sp

import keras
import sparsekeras
from sparsekeras import callbacks, linalg, schedules


def main():
    here = os.path.dirname(os.path.abspath(sparsekeras.__file__))
    assert "site-packages" in here, f"sparsekeras imported from {here}, not an installed wheel"
    rng = np.random.default_rng(0)
    a = sp.random_array((50, 40), density=0.1, format="csr", dtype=np.float32, rng=rng)
    b = rng.standard_normal((40, 7)).astype(np.float32)
    np.testing.assert_allclose(linalg.matmul(a, b), a.toarray().astype(np.float64) @ b,
                               rtol=1e-5, atol=1e-5)
    x = rng.standard_normal((256, 16)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    model = keras.Sequential([keras.Input((16,)),
                              sparsekeras.layers.SparseDense(64, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callbacks.GradualPruning(
        schedules.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2))])
    assert abs(model.layers[0].sparsity - 0.8) < 0.01, model.layers[0].sparsity
    tmp = tempfile.mkdtemp()
    try:
        sparsekeras.strip(model).save(os.path.join(tmp, "m.keras"))
        np.save(os.path.join(tmp, "x.npy"), x)
        np.save(os.path.join(tmp, "y.npy"), keras.ops.convert_to_numpy(model(x)))
        code = ("import numpy as np, keras, sparsekeras\n"
                "m = keras.saving.load_model('m.keras')\n"
                "err = np.abs(keras.ops.convert_to_numpy(m(np.load('x.npy'))) - np.load('y.npy')).max()\n"
                "assert err < 1e-5, err\nprint('reload ok', err)\n")
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        exe = os.path.join(os.path.dirname(sys.executable), "sparsekeras")
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=300)
        assert version.stdout.strip() == f"sparsekeras {sparsekeras.__version__}", version
        info = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=300)
        assert info.returncode == 0 and "SIMD path" in info.stdout, info.stderr[-2000:]
    finally:
        shutil.rmtree(tmp)
    print(f"wheel smoke test OK: sparsekeras {sparsekeras.__version__} from {here}")


if __name__ == "__main__":
    main()
