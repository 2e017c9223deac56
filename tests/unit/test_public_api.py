"""Every public name of every package resolves (the lazy export tables name real objects)."""

import importlib

import pytest

PACKAGES = ["hwnas", "hwnas.builder", "hwnas.export", "hwnas.nas", "hwnas.oneshot", "search_spaces"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package):
    mod = importlib.import_module(package)
    missing = [name for name in mod.__all__ if getattr(mod, name, None) is None]
    assert not missing, f"{package}: {missing}"
    assert set(mod.__all__) <= set(dir(mod))


def test_unknown_name_is_an_attribute_error():
    import hwnas.nas

    with pytest.raises(AttributeError, match="no_such_name"):
        hwnas.nas.no_such_name  # noqa: B018
