"""Check that the built API reference documents every public name.

``python docs/check_reference.py SITE_DIR`` (run by ``nox -s docs`` and CI after
``mkdocs build``): mkdocstrings leaves out what has no docstring, so a new export
without one would silently be missing from the reference.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

PACKAGES = ("moonpool.sim", "moonpool.net", "moonpool.transport", "moonpool.storage")


def missing(site: Path) -> list[str]:
    """``package.name`` of every export the reference pages do not document."""
    absent: list[str] = []
    for package in PACKAGES:
        page = site / "reference" / f"{package.rsplit('.', 1)[1]}.html"
        documented = set(re.findall(rf'id="{re.escape(package)}\.(\w+)"', page.read_text()))
        module = importlib.import_module(package)
        absent += [f"{package}.{name}" for name in module.__all__ if name not in documented]
    return absent


def main(argv: list[str]) -> int:
    site = Path(argv[1] if len(argv) > 1 else "site")
    absent = missing(site)
    if absent:
        print(
            f"the API reference in {site} does not document: {', '.join(absent)} "
            f"(give each a docstring)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
