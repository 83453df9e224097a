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
