"""An installed package (a wheel, as `pip install <path or git URL>` builds one) carries the spec
files it validates with: it was a 500 on every cover when they were only in the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ["openapi.yaml", "control-openapi.yaml", *(f"schemas/{p.name}" for p in sorted((ROOT / "schemas").glob("*.json")))]


def test_a_wheel_carries_the_spec_files_and_serves_a_cover_from_them(tmp_path):
    src = tmp_path / "src"  # what a git checkout holds (no build/ left by an earlier build)
    for name in ("pyproject.toml", "README.md", "openapi.yaml", "control-openapi.yaml"):
        src.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    for name in ("schemas", "mock_server", "contract"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("kie_mock-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in SPEC:  # the same bytes as the checkout's (the symlinks in mock_server/_spec followed)
            assert z.read(f"mock_server/_spec/{name}") == (ROOT / name).read_bytes(), name
        z.extractall(tmp_path / "site")
    assert "mock_server/paths.py" in names
    script = """
import json, sys
import mock_server.paths as paths
from mock_server.app import create_app
from mock_server.config import Config
assert paths.ROOT == paths._PACKAGE / "_spec", paths.ROOT
c = create_app(Config(clock="virtual"), start_scheduler=False).test_client()
body = {"uploadUrl": "https://a.example/x", "prompt": "p", "customMode": False, "instrumental": False,
        "model": "V3_5", "callBackUrl": "http://127.0.0.1:9/cb"}
auth = {"Authorization": "Bearer kie-mock-key"}
ok = c.post("/api/v1/generate/upload-cover", json=body, headers=auth).get_json()
bad = c.post("/api/v1/generate/upload-cover", json=dict(body, model="V9"), headers=auth).get_json()
print(json.dumps([ok["code"], bad["code"]]))
"""
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[200, 422]", run.stdout + run.stderr
