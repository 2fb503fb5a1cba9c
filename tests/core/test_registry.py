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
