"""A griffe extension: moonpool's docstrings name things Sphinx-style; show them as code.

``:class:`~moonpool.net.SimNetwork``` becomes ```SimNetwork``` (the ``~`` keeps the last
part, as in Sphinx) and ``:meth:`send_reply``` becomes ```send_reply```, so that the API
reference reads cleanly without turning every docstring into Markdown.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|exc|data|mod|obj):`(~?)([^`]+)`")


def _as_code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def plain_roles(text: str) -> str:
    """``text`` with every Sphinx role replaced by inline code."""
    return _ROLE.sub(_as_code, text)


class SphinxRolesAsCode(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
