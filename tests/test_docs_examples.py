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
