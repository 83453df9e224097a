"""Every ```python block of README.md and docs/*.md runs, as written, by the test suite.

Each page's blocks run in order in ONE fresh Python process (in a scratch folder), so that a
block may use what an earlier block of its page defined, as a reader pasting them would. Only
marker comments just above a block change what runs (they are invisible on the rendered page):

    <!-- docs-test: replace "OLD" "NEW" -->   run the next block with OLD replaced by NEW (to
                                             shrink data or epochs; OLD must occur in it)
    <!-- docs-test: setup                      code run just before the next block (the data or
    CODE                                       model a fragment assumes), given to the reader
    -->                                        in the surrounding text
    <!-- docs-test: skip REASON -->            the next block is not run (REASON required)
    <!-- docs-test: requires MOD ... -->       the next block needs these optional modules
                                             (requirements-edge.txt): the test is skipped
                                             without them (CI installs them)
    <!-- docs-test: slow -->                   the next block is long: it runs in the page's
                                             `-all` test, marked slow (the default run
                                             runs the page without it)

After the page has run, CHECKS below assert that its blocks did what the page says.
"""
import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
_TOKEN = re.compile(r"<!--\s*docs-test:\s*(\w+)(.*?)-->|```python\n(.*?)```", re.S)


def parse_page(path):
    """(blocks, page options): blocks are dicts with `code` (the block with its replacements),
    `setup`, `skip` (reason or None), `slow`, `requires` (module names)."""
    blocks, pending, options = [], [], {}
    for match in _TOKEN.finditer(path.read_text()):
        kind, arg, code = match.groups()
        if code is None:
            if kind in ("replace", "setup", "skip", "slow", "requires"):
                pending.append((kind, arg))
            else:
                raise ValueError(f"{path.name}: unknown docs-test marker {kind!r}")
            continue
        block = {"code": code, "skip": None, "setup": "", "slow": False, "requires": []}
        for kind, arg in pending:
            if kind == "replace":
                old, new = ast.literal_eval("(" + arg.strip().replace('" "', '", "', 1) + ")")
                if old not in block["code"]:
                    raise ValueError(f"{path.name} block {len(blocks)}: the replace marker's "
                                     f"{old!r} is not in the block")
                block["code"] = block["code"].replace(old, new)
            elif kind == "setup":
                block["setup"] += textwrap.dedent(arg).strip("\n") + "\n"
            elif kind == "skip":
                if not arg.strip():
                    raise ValueError(f"{path.name} block {len(blocks)}: skip needs a reason")
                block["skip"] = arg.strip()
            elif kind == "slow":
                block["slow"] = True
            elif kind == "requires":
                block["requires"].extend(arg.split())
        pending = []
        blocks.append(block)
    if pending:
        raise ValueError(f"{path.name}: markers {pending} are not followed by a python block")
    return blocks, options


def _runs(block, with_slow):
    return block["skip"] is None and (with_slow or not block["slow"])


def page_script(path, checks, with_slow=True):
    """The script a page's test runs: each block (setup first), then the page's checks, with
    a line printed after each block so that a failure says where."""
    blocks, _ = parse_page(path)
    parts = []
    for i, block in enumerate(blocks):
        if not _runs(block, with_slow):
            parts.append(f"# block {i} not run: {block['skip'] or 'slow'}\n")
            continue
        parts.append(block["setup"] + block["code"] + f"\nprint('docs-test: block {i} ran')\n")
        if i in checks:
            parts.append(textwrap.dedent(checks[i]) + f"\nprint('docs-test: block {i} checked')\n")
    return "".join(parts)


# page -> {block index: code run right after that block (asserts on what it defined)}.
CHECKS = {
    "README.md": {0: """
        m = keras.models.load_model('small.keras')
        layer = [l for l in m.layers if isinstance(l, sparsekeras.layers.CompactDense)][0]
        assert abs(layer.sparsity - 0.9) < 1e-3, layer.sparsity
    """},
    "getting-started.md": {
        0: """
            dense = [l for l in model.layers if isinstance(l, sparsekeras.layers.SparseDense)]
            assert len(dense) == 2 and all(abs(l.sparsity - 0.9) < 1e-3 for l in dense)
            assert all(l.compacted for l in dense)              # the schedule ended in the fit
        """,
        1: """
            import numpy as np
            np.testing.assert_allclose(served.serve(x[:4]).numpy(),
                                       model.predict(x[:4], verbose=0), atol=1e-5)
            np.testing.assert_allclose(restored.predict(x[:4], verbose=0),
                                       model.predict(x[:4], verbose=0), atol=1e-5)
        """,
        2: """
            np.testing.assert_allclose(y.numpy(), x @ w_scipy.toarray(), rtol=1e-4, atol=1e-4)
        """},
    "pruning-guide.md": {
        0: """
            assert [l.block for l in small.layers
                    if isinstance(l, sparsekeras.layers.CompactDense)] == [8]
        """,
        1: """
            assert model.layers[0].compacted and abs(model.layers[0].sparsity - 0.9) < 1e-3
        """},
    "sparse-convolutions.md": {0: """
        m = keras.models.load_model('cnn_small.keras')
        convs = [l for l in m.layers if isinstance(l, sparsekeras.layers.CompactConv2D)]
        assert len(convs) == 3, convs
        L = sparsekeras.layers
        pruned = [l for l in model.layers
                  if isinstance(l, (L.SparseConv2D, L.SparseDepthwiseConv2D))]
        assert len(pruned) == 3 and all(abs(l.sparsity - 0.8) < 0.01 for l in pruned)
        assert all(l.sparsity >= 0.79 for l in convs), [l.sparsity for l in convs]
        acc = model.evaluate(x[1400:], y[1400:], verbose=0)[1]
        assert acc > 0.7, acc
    """},
    "sparse-data.md": {0: """
        import tensorflow as tf
        assert x.dense_shape.numpy().tolist() == [2, 5]
        assert tf.sparse.to_dense(x).numpy()[0, 3] == 2.0
    """},
}


def _check_sparse_data_output(out):
    acc, sparsity, on, on_input = re.search(
        r"test accuracy ([\d.]+), first layer sparsity ([\d.]+), sparse kernels: (\w+), "
        r"sparse x sparse for sparse inputs: (\w+)", out).groups()
    assert float(acc) > 0.9 and abs(float(sparsity) - 0.9) < 1e-3, out
    assert (on, on_input) == ("True", "False"), out  # 0.9 < SPARSE_INPUT_SWITCH_SPARSITY
    assert "same predictions: True" in out, out
    rows = dict(re.findall(r"^(plain|KL rho=0\.05)\s+mean activation ([\d.]+)", out, re.M))
    near = dict(re.findall(r"^(plain|KL rho=0\.05)\s+.*near-zero \(<0\.1\) ([\d.]+)", out, re.M))
    assert float(rows["KL rho=0.05"]) < 0.1 < float(rows["plain"]), out
    assert float(near["KL rho=0.05"]) > 0.5 > float(near["plain"]), out


def _check_edge_output(out):
    assert "LiteRT matches Keras: True" in out and "ONNX matches Keras: True" in out, out
    sizes = dict(re.findall(r"^(model\S*) (\d+) bytes$", out, re.M))
    assert int(sizes["model_sparse.tflite"]) < 0.5 * int(sizes["model.tflite"]), sizes


# (page, block index) -> function asserting on the page's printed output, once that block ran.
OUTPUT_CHECKS = {("sparse-data.md", 2): _check_sparse_data_output,
                 ("pruning-guide.md", 2): _check_edge_output}


def _page_params():
    params = []
    for path in PAGES:
        blocks, _ = parse_page(path)
        if not blocks:
            continue
        params.append(pytest.param(path, False, id=path.name))
        if any(block["slow"] for block in blocks):
            params.append(pytest.param(path, True, id=path.name + "-all",
                                       marks=[pytest.mark.slow]))
    return params


@pytest.mark.parametrize("path, with_slow", _page_params())
def test_page_examples_run(path, with_slow, tmp_path):
    """The page's python blocks run in order in a fresh process and do what the page says
    (blocks marked slow only in the page's `-all` test)."""
    blocks, _ = parse_page(path)
    for block in blocks:
        if _runs(block, with_slow):
            for module in block["requires"]:
                pytest.importorskip(module)
    checks = {i: code for i, code in CHECKS.get(path.name, {}).items()
              if _runs(blocks[i], with_slow)}
    script = tmp_path / "page.py"
    script.write_text(page_script(path, checks, with_slow))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    for i, block in enumerate(blocks):
        if _runs(block, with_slow):
            assert f"docs-test: block {i} ran" in proc.stdout
    for i in checks:
        assert f"docs-test: block {i} checked" in proc.stdout
    for (page, i), check in OUTPUT_CHECKS.items():
        if page == path.name and _runs(blocks[i], with_slow):
            check(proc.stdout)


def test_every_page_with_code_is_run():
    """No page's python block escapes: every one runs, or is skipped with a reason; checks
    name blocks that exist."""
    names = {path.name for path in PAGES}
    assert {"README.md", "getting-started.md", "pruning-guide.md"} <= names
    for path in PAGES:
        blocks, _ = parse_page(path)
        assert len(blocks) == path.read_text().count("```python"), path.name
        for i in list(CHECKS.get(path.name, {})) + [i for p, i in OUTPUT_CHECKS if p == path.name]:
            assert i < len(blocks) and blocks[i]["skip"] is None, (path.name, i)


def test_markers_are_applied(tmp_path):
    """The markers do what the module docstring says (a replace that matches nothing, a skip
    without a reason are errors)."""
    page = tmp_path / "page.md"
    page.write_text('<!-- docs-test: replace "n = 1000" "n = 2" -->\n```python\nn = 1000\n```\n'
                    "<!-- docs-test: setup\nm = n + 1\n-->\n```python\nprint(m)\n```\n"
                    "<!-- docs-test: skip needs a GPU -->\n```python\nraise SystemExit(1)\n```\n"
                    "<!-- docs-test: slow -->\n```python\nprint('long')\n```\n")
    blocks, _ = parse_page(page)
    assert blocks[0]["code"] == "n = 2\n" and blocks[1]["setup"] == "m = n + 1\n"
    assert blocks[2]["skip"] == "needs a GPU" and blocks[3]["slow"]
    script = page_script(page, {}, with_slow=False)
    assert "raise SystemExit" not in script and "long" not in script
    assert "print('long')" in page_script(page, {}, with_slow=True)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stdout
    assert "3\n" in out and "block 1 ran" in out
    page.write_text('<!-- docs-test: replace "absent" "x" -->\n```python\nn = 1\n```\n')
    with pytest.raises(ValueError, match="not in the block"):
        parse_page(page)
    page.write_text("<!-- docs-test: skip -->\n```python\nn = 1\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        parse_page(page)


def test_sparse_data_page_is_linked():
    for page in ("README.md", "docs/getting-started.md"):
        assert "sparse-data.md" in (ROOT / page).read_text(), page
