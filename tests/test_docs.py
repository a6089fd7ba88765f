"""The Python examples of the README and of every docs page run as written,
and their relative links point at files that exist."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _name(page: pathlib.Path) -> str:
  return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_blocks_run(page):
  """One namespace per page: a page's later blocks may use earlier names."""
  blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, str(page), "exec"), namespace)  # pylint: disable=exec-used


def test_readme_has_python_examples_and_links_every_docs_page():
  readme = (ROOT / "README.md").read_text()
  assert re.search(r"```python\n", readme), "README has no python examples"
  for page in PAGES[1:]:
    assert f"docs/{page.name}" in readme, f"README does not link {_name(page)}"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
  missing = []
  for target in _LINK.findall(page.read_text()):
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
      continue  # a URL, or an anchor on the same page
    path = (page.parent / target.split("#")[0]).resolve()
    if not path.exists():
      missing.append(target)
  assert not missing, f"{_name(page)} links to missing files: {missing}"


def test_readme_stays_a_quick_start():
  """Long material belongs in docs/: the README stays near 250 lines."""
  lines = (ROOT / "README.md").read_text().count("\n")
  assert lines <= 260, f"README.md has {lines} lines; move material to docs/"
