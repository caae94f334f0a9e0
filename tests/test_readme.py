"""Every ```python block of README.md runs as written.

The blocks build on each other, as a reader pastes them into one session: they run in order, in one namespace, in
one fresh Python process (default dtypes, no test settings; cwd a temporary folder, where the blocks' files go).
A block whose first line is `# needs: WHAT` uses something the tests cannot have (a published checkpoint, a GPU, a
weights file); it is compiled but not run, and listed as a skipped test with what it needs. A later block must not
use what such a block defines.
"""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
NEEDS = "# needs:"

# Runs the blocks of the JSON file argv[1], (line, code) pairs, in one namespace; a failure names the block's line.
RUNNER = """
import json, sys, traceback
namespace = {"__name__": "__main__"}
for line, code in json.load(open(sys.argv[1])):
    try:
        exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"the README block at line {line} failed")
"""


def readme_blocks(text):
    """[(line, code)] of the ```python blocks of a markdown text, `line` the 1-based line of the block's first
    code line."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```[ \t]*$", text, re.MULTILINE | re.DOTALL)]


def needs(code):
    """What a block needs that the tests cannot have (its first line `# needs: ...`), or None."""
    first = code.lstrip("\n").split("\n", 1)[0].strip()
    return first[len(NEEDS):].strip() if first.startswith(NEEDS) else None


with open(README, encoding="utf-8") as _f:
    BLOCKS = readme_blocks(_f.read())
RUNNABLE = [(line, code) for line, code in BLOCKS if needs(code) is None]
NEEDING = [(line, code) for line, code in BLOCKS if needs(code) is not None]


def test_the_extraction_finds_blocks_and_their_needs():
    text = "a\n```python\nx = 1\n```\n\n```python\n# needs: a GPU\ny = 2\n```\n```bash\nls\n```\n"
    assert readme_blocks(text) == [(3, "x = 1\n"), (7, "# needs: a GPU\ny = 2\n")]
    assert [needs(code) for _, code in readme_blocks(text)] == [None, "a GPU"]
    # The README's own: the Use block, "Your own model", schedules and learned samplers run; the published
    # checkpoint does not.
    assert len(RUNNABLE) >= 4 and NEEDING
    assert all(NEEDS not in code.split("\n", 1)[1] for _, code in BLOCKS if "\n" in code), \
        "a `# needs:` comment counts only as a block's first line"


@pytest.mark.parametrize("line,code", NEEDING, ids=[f"line{line}" for line, _ in NEEDING])
def test_blocks_that_need_what_the_tests_cannot_have(line, code):
    compile(code, f"README.md, block at line {line}", "exec")  # it is at least Python
    pytest.skip(f"README block at line {line} needs {needs(code)}")


def test_every_runnable_block_runs_in_order(tmp_path):
    (tmp_path / "blocks.json").write_text(json.dumps(RUNNABLE))
    # This checkout's fastsamplers, not an installed one; the CPU (a GPU is held by the test process itself).
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", RUNNER, "blocks.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
