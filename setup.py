"""Build hook only; the project's metadata is in pyproject.toml.

The checkout keeps ``playbooks/``, ``inventory/``, ``templates/`` and ``contrib/`` at its
top level. A wheel carries them inside the package, as ``provisioner/share/<name>/``, where
``provisioner.shipped`` finds them through importlib.resources. An editable install
(``pip install -e``) copies nothing: it reads the checkout's own files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("playbooks", "inventory", "templates", "contrib")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ansible", ".mypy_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = {".pyc", ".pyo", ".retry", ".swp"}


def shipped_files() -> list[Path]:
    """Every file of the shipped trees, relative to the checkout (links are not followed:
    a link in the tree is an error, so a wheel never carries a file from outside it)."""
    files = []
    for top in SHIPPED:
        for path in sorted((HERE / top).rglob("*")):
            rel = path.relative_to(HERE)
            if SKIPPED_DIRS & set(rel.parts) or path.suffix in SKIPPED_SUFFIXES:
                continue
            if path.is_symlink():
                raise SystemExit(f"setup.py: {rel} is a symbolic link; gpuctl ships files only")
            if path.is_file():
                files.append(rel)
    return files


class BuildPyWithShipped(build_py):
    """``build_py`` that also copies the shipped trees into ``provisioner/share/``."""

    def _shipped_targets(self) -> list[tuple[Path, Path]]:
        if self.editable_mode:
            return []
        share = Path(self.build_lib) / "provisioner" / "share"
        return [(HERE / rel, share / rel) for rel in shipped_files()]

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            # A file removed from the checkout must not linger from an earlier build.
            shutil.rmtree(Path(self.build_lib) / "provisioner" / "share", ignore_errors=True)
        for source, target in self._shipped_targets():
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target), preserve_mode=True)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode),
                *(str(target) for _, target in self._shipped_targets())]


setup(cmdclass={"build_py": BuildPyWithShipped})
