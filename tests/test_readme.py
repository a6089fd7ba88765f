"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert blocks, "README has no python examples"
  namespace: dict = {}
  for block in blocks:  # later blocks may use names from earlier ones
    exec(compile(block, str(README), "exec"), namespace)  # pylint: disable=exec-used
