"""The README's Node.js example, run as written (the fake's address and the receiver's port
swapped for free ones): a non-Python client goes from submit to the three callbacks."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from test_failures import serve

README = Path(__file__).resolve().parent.parent / "README.md"


def node_example() -> str:
    text = README.read_text()
    start = text.index("The same from Node.js 20")
    return re.search(r"```js\n(.*?)```", text[start:], re.S).group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_node_example_receives_every_callback(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the README's Node.js example is not run")
    code = node_example()
    assert '"http://127.0.0.1:8787"' in code and "listen(9000)" in code and "127.0.0.1:9000/callback" in code
    port = free_port()
    with serve("--stage-delays", "0.2,0.4,0.6") as base:
        script = (code.replace('"http://127.0.0.1:8787"', f'"{base}"').replace("listen(9000)", f"listen({port})")
                  .replace("127.0.0.1:9000/callback", f"127.0.0.1:{port}/callback"))
        (tmp_path / "cover.mjs").write_text(script)
        out = subprocess.run([node, "cover.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [l.split()[1] for l in lines if l.startswith("callback ")] == ["text", "first", "complete"], out.stdout
    assert any(l.startswith("record-info ") for l in lines), out.stdout
