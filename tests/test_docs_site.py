"""The documentation site (mkdocs.yml) leaves nothing out: every Markdown page under docs/ is in
its nav, every nav entry exists, and the API reference (docs/api/*.md) renders every public name.

The strict build itself (`scripts/build-docs.sh`) runs in CI (.ci/run), with the docs
requirements; this test needs neither mkdocs nor PyYAML: the nav is read line by line.
"""
import importlib
import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_NAV_PAGE = re.compile(r"""^\s*-\s*(?:(?:"[^"]*"|'[^']*'|[^:]+):\s*)?(\S+\.md)\s*$""")


def nav_pages(text):
    """The .md paths of the `nav:` section of an mkdocs.yml text, in order."""
    pages, in_nav = [], False
    for line in text.splitlines():
        if re.match(r"^nav:\s*$", line):
            in_nav = True
            continue
        if in_nav and re.match(r"^\S", line) and not line.startswith("#"):
            break                                   # the next top-level key
        if in_nav and line.strip() and not line.strip().startswith("#"):
            match = _NAV_PAGE.match(line)
            if match:
                pages.append(match.group(1))
            elif not line.rstrip().endswith(":"):   # a section title ("- Guides:") has no page
                raise ValueError(f"mkdocs.yml: a nav line not understood: {line!r}")
    return pages


def test_nav_parser():
    text = ("site_name: x\nnav:\n  - Home: index.md\n  - Guides:\n      - A guide: a.md\n"
            "      - 'B: quoted': sub/b.md\n  - c.md\nplugins:\n  - search\n")
    assert nav_pages(text) == ["index.md", "a.md", "sub/b.md", "c.md"]


def test_every_page_is_in_the_nav():
    """A new page under docs/ must be added to mkdocs.yml's nav (and the nav names no missing
    page, and no page twice)."""
    nav = nav_pages((ROOT / "mkdocs.yml").read_text())
    assert "index.md" in nav and "api/index.md" in nav, nav
    assert len(nav) == len(set(nav)), sorted(p for p in nav if nav.count(p) > 1)
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    unlisted, absent = sorted(set(pages) - set(nav)), sorted(set(nav) - set(pages))
    assert unlisted == [], f"pages missing from mkdocs.yml's nav: {unlisted}"
    assert absent == [], f"nav entries with no page under docs/: {absent}"


def _rendered_names():
    text = "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.md")))
    return set(re.findall(r"^:::\s*(\S+)", text, re.M))


def _public_names(module):
    """`__all__`, and any other name without an underscore that the module defines or takes from
    sparsekeras (not a module, not an import from another package)."""
    names = set(module.__all__)
    for n in dir(module):
        obj = getattr(module, n)
        if (not n.startswith("_") and not inspect.ismodule(obj)
                and (getattr(obj, "__module__", None) or "").startswith("sparsekeras")):
            names.add(n)
    return sorted(names)


def test_api_reference_covers_the_public_api():
    """Every public name of the public modules is rendered (`::: module.name`) on an API page;
    a new export must get its entry."""
    rendered = _rendered_names()
    missing = []
    for name in ("layers", "callbacks", "schedules", "regularizers", "data", "ops", "linalg"):
        module = importlib.import_module(f"sparsekeras.{name}")
        missing += [f"sparsekeras.{name}.{n}" for n in _public_names(module)
                    if f"sparsekeras.{name}.{n}" not in rendered]
    top = importlib.import_module("sparsekeras")
    for n in _public_names(top):
        if inspect.ismodule(getattr(top, n)) or n == "__version__":
            continue
        if n == "CSRTensor":                       # the same class as sparsekeras.ops.CSRTensor
            continue
        if f"sparsekeras.{n}" not in rendered:
            missing.append(f"sparsekeras.{n}")
    assert missing == [], f"public names with no entry in docs/api/*.md: {missing}"
    assert "sparsekeras.ops.CSRTensor" in rendered and top.CSRTensor is top.ops.CSRTensor
