"""MkDocs hook: Sphinx roles in sockpool's docstrings read as plain code on the site.

The docstrings cross-reference with Sphinx roles (``:class:`SSHHost```,
``:func:`~sockpool.cores.detect_cores```), which Markdown leaves as a stray
``:class:`` before the code.  This drops the role and, as Sphinx does for a
name written with ``~``, keeps only the last part of the dotted name.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(
    r":(?:py:)?(?:class|func|mod|attr|meth|exc|data|obj|const):<code>(~?)([^<]*)</code>")


def _code(match: re.Match[str]) -> str:
    short, name = match.groups()
    return f"<code>{name.rsplit('.', 1)[-1] if short else name}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """The page's HTML with every Sphinx role before a code span removed."""
    return ROLE.sub(_code, html)
