"""The public face: __all__ is complete and sorted, and imports run one way (runtime never imports domain)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import soloist

ROOT = Path(__file__).resolve().parents[2]


class TestPublicApi:
    def test_all_is_sorted_and_resolves(self) -> None:
        """Every name in soloist.__all__ exists, and the list is sorted."""
        assert soloist.__all__ == sorted(soloist.__all__)
        for name in soloist.__all__:
            assert hasattr(soloist, name), name

    def test_every_public_name_is_exported(self) -> None:
        """Names bound in runtime/__init__ without a leading underscore are all listed in __all__."""
        public = {
            n for n in vars(soloist) if not n.startswith("_") and n not in {"annotations", "net", "cli", "testing"}
        }
        assert public == set(soloist.__all__)

    def test_init_only_reexports(self) -> None:
        """runtime/__init__.py holds imports and __all__, no code."""
        tree = ast.parse((ROOT / "runtime" / "__init__.py").read_text())
        for node in tree.body:
            assert isinstance(node, ast.Import | ast.ImportFrom | ast.Assign | ast.Expr), ast.dump(node)[:80]

    def test_runtime_never_imports_domain(self) -> None:
        """No module under runtime/ imports domain (the CLI loads a domain by import path at run time)."""
        for path in (ROOT / "runtime").rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
                    assert not node.module.startswith("soloist_shop"), f"{path} imports {node.module}"
                elif isinstance(node, ast.Import):
                    assert not any(a.name.startswith("soloist_shop") for a in node.names), f"{path} imports domain"

    def test_domain_imports_runtime_only_in_wiring(self) -> None:
        """Only domain/shop/wiring.py imports the runtime; the rules stay pure."""
        for path in (ROOT / "domain").rglob("*.py"):
            if path.name == "wiring.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert node.module.partition(".")[0] != "soloist", f"{path} imports {node.module}"
                elif isinstance(node, ast.Import):
                    assert not any(a.name == "soloist" or a.name.startswith("soloist.") for a in node.names), (
                        f"{path} imports runtime"
                    )


class TestWheel:
    def test_the_wheel_installs_two_import_names(self, tmp_path: Path) -> None:
        """``pip install soloist`` puts exactly ``soloist`` and ``soloist_shop`` on the path, with their data files
        (the dashboard page, the typing markers) and no stray top-level module (``runtime``, ``domain``, ``tests``)."""
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (wheel,) = tmp_path.glob("soloist-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
        assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"soloist", "soloist_shop"}
        for needed in (
            "soloist/py.typed",
            "soloist/net/dashboard.html",
            "soloist/testing/plugin.py",
            "soloist_shop/py.typed",
        ):
            assert needed in names, needed
        packages = {name.rsplit("/", 1)[0] for name in names if name.endswith("/__init__.py")}
        assert packages == {"soloist", "soloist/net", "soloist/testing", "soloist_shop"}
