"""The README's Python example runs as written (in a scratch folder) and does what it says."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README has no python example"
    code = blocks[0] + (
        "\nimport keras\n"
        "m = keras.models.load_model('small.keras')\n"
        "layer = [l for l in m.layers if isinstance(l, sparsekeras.layers.CompactDense)][0]\n"
        "assert abs(layer.sparsity - 0.9) < 1e-3, layer.sparsity\n"
        "print('README example OK', layer.sparsity)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "README example OK" in proc.stdout


def test_sparse_convolutions_example_runs(tmp_path):
    text = (ROOT / "docs" / "sparse-convolutions.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0] + (
        "\nimport keras\n"
        "m = keras.models.load_model('cnn_small.keras')\n"
        "convs = [l for l in m.layers if isinstance(l, sparsekeras.layers.CompactConv2D)]\n"
        "assert len(convs) == 3, convs\n"
        "L = sparsekeras.layers\n"
        "pruned = [l for l in model.layers if isinstance(l, (L.SparseConv2D, L.SparseDepthwiseConv2D))]\n"
        "assert len(pruned) == 3 and all(abs(l.sparsity - 0.8) < 0.01 for l in pruned)\n"
        "assert all(l.sparsity >= 0.79 for l in convs), [l.sparsity for l in convs]\n"
        "acc = model.evaluate(x[1400:], y[1400:], verbose=0)[1]\n"
        "assert acc > 0.7, acc\n"
        "print('CNN example OK', acc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CNN example OK" in proc.stdout


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def _run(code, tmp_path):
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_sparse_data_examples_run(tmp_path):
    """docs/sparse-data.md: the pipeline snippet, the bag-of-words classifier with a pruned first
    layer and the sparse autoencoder run as written and do what the page says."""
    blocks = _python_blocks(ROOT / "docs" / "sparse-data.md")
    assert len(blocks) == 3
    snippet = ("import sparsekeras, tensorflow as tf\n" + blocks[0] +
               "\nassert x.dense_shape.numpy().tolist() == [2, 5]"
               "\nassert tf.sparse.to_dense(x).numpy()[0, 3] == 2.0\nprint('snippet OK')")
    assert "snippet OK" in _run(snippet, tmp_path)

    out = _run(blocks[1], tmp_path)
    acc, sparsity, on, on_input = re.search(
        r"test accuracy ([\d.]+), first layer sparsity ([\d.]+), sparse kernels: (\w+), "
        r"sparse x sparse for sparse inputs: (\w+)", out).groups()
    assert float(acc) > 0.9 and abs(float(sparsity) - 0.9) < 1e-3, out
    assert (on, on_input) == ("True", "False"), out  # 0.9 < SPARSE_INPUT_SWITCH_SPARSITY
    assert "same predictions: True" in out, out

    out = _run(blocks[2], tmp_path)
    rows = dict(re.findall(r"^(plain|KL rho=0\.05)\s+mean activation ([\d.]+)", out, re.M))
    near = dict(re.findall(r"^(plain|KL rho=0\.05)\s+.*near-zero \(<0\.1\) ([\d.]+)", out, re.M))
    assert float(rows["KL rho=0.05"]) < 0.1 < float(rows["plain"]), out
    assert float(near["KL rho=0.05"]) > 0.5 > float(near["plain"]), out


def test_sparse_data_page_is_linked():
    for page in ("README.md", "docs/getting-started.md"):
        assert "sparse-data.md" in (ROOT / page).read_text(), page
