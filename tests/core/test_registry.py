import pytest

from capmill.errors import UnknownNameError
from capmill.registry import Registry


def test_registry_resolves_lazily_and_names_choices():
    reg = Registry("thing", {"json": "json:dumps"})
    import json

    assert reg.get("json") is json.dumps
    with pytest.raises(UnknownNameError) as info:
        reg.get("yaml")
    assert "unknown thing 'yaml'" in str(info.value) and "json" in str(info.value)


def test_registry_accepts_objects():
    reg = Registry("thing")
    reg.register("x", 42)
    assert reg.get("x") == 42 and "x" in reg and reg.names() == ["x"]


def _installed(tmp_path, monkeypatch, group: str, lines: list[str], dist: str = "capmill-fake") -> None:
    """A real distribution's metadata on sys.path (what pip writes), so importlib.metadata finds its entry points."""
    info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_entry_points_add_names_lazily_and_never_replace_capmill_s(tmp_path, monkeypatch):
    _installed(tmp_path, monkeypatch, "capmill.engines", ["loud = json:dumps", "transformers = json:loads"])
    reg = Registry("engine", {"transformers": "capmill.records:Record"})
    import json

    from capmill.records import Record

    assert reg.get("transformers") is Record  # a built-in name is not looked up in plugins, nor replaced
    assert reg.get("loud") is json.dumps and reg.plugins == {"loud": "capmill-fake"}
    assert reg.names() == ["transformers", "loud"] and "loud" in reg
    assert reg.shadowed == [("transformers", "capmill-fake")]
    reg.register("loud", 7)  # an explicit registration wins over the plugin's entry
    assert reg.get("loud") == 7 and "loud" not in reg.plugins
    assert "loud" not in Registry("thing")  # no entry-point group for other kinds


def test_a_broken_plugin_is_a_config_error_naming_its_package(tmp_path, monkeypatch):
    from capmill.errors import ConfigError

    _installed(tmp_path, monkeypatch, "capmill.sinks", ["bad = capmill_no_such_module:Sink"], dist="capmill-bad")
    reg = Registry("sink", {"jsonl": "json:dumps"})
    with pytest.raises(ConfigError, match="sink 'bad' from the plugin package 'capmill-bad' cannot be loaded"):
        reg.get("bad")
    with pytest.raises(UnknownNameError):
        reg.get("nope")


def test_capmill_plugins_reports_an_entry_that_a_built_in_name_hides(tmp_path, monkeypatch):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    _installed(tmp_path, monkeypatch, "capmill.engines", ["transformers = capmill_fake:Engine"], dist="capmill-fake")
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(tmp_path)])}
    cmd = [sys.executable, "-m", "capmill", "plugins", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [
        {"kind": "engine", "name": "transformers", "package": "capmill-fake", "target": "(ignored: name taken)"}
    ]
