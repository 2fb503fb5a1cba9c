"""`import capmill` must stay light: no torch, transformers, vllm or ray, even after touching every exported name."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "vllm", "ray", "torchvision", "pyarrow")


def test_import_capmill_loads_no_backend():
    code = (
        "import sys, capmill, capmill.records, capmill.errors, capmill.registry, capmill.cli.main;"
        "[getattr(capmill, name) for name in capmill.__all__];"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"import capmill pulled in {out}"
