"""soloist.net's public face: a sorted __all__ of names that exist, re-exported from private modules."""

from __future__ import annotations

import soloist.net as net


class TestExports:
    def test_all_is_sorted_and_resolves(self) -> None:
        """__all__ is sorted and every name in it exists."""
        assert net.__all__ == sorted(net.__all__)
        for name in net.__all__:
            assert hasattr(net, name), name

    def test_everything_public_is_exported(self) -> None:
        """Every public attribute of the package is in __all__ and comes from a private module."""
        public = {name for name in vars(net) if not name.startswith("_") and name != "annotations"}
        assert public == set(net.__all__)
        for name in net.__all__:
            module = getattr(getattr(net, name), "__module__", "soloist.net._x")
            assert module.startswith("soloist.net._"), (name, module)
