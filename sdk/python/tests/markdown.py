"""Test scaffolding: the fenced code blocks of the READMEs the tests run
as printed (test_readme.py, test_example_readme.py), read from the Markdown
itself so that a README and its test cannot drift apart."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

#: The checkout's root (this file is sdk/python/tests/markdown.py).
CHECKOUT = pathlib.Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Block:
    #: What follows the opening fence: `python`, `python fragment`, `sh`...
    info: str
    code: str
    #: The line of the opening fence, from 1, for a failure to name.
    line: int


def fenced(markdown: pathlib.Path) -> list[Block]:
    """The fenced blocks of `markdown`, in order."""
    blocks: list[Block] = []
    open_: tuple[str, int] | None = None
    lines: list[str] = []
    for number, line in enumerate(markdown.read_text().splitlines(), start=1):
        if not line.startswith("```"):
            if open_ is not None:
                lines.append(line)
            continue
        if open_ is None:
            open_ = (line[3:].strip(), number)
            lines = []
        else:
            blocks.append(Block(open_[0], "\n".join(lines) + "\n", open_[1]))
            open_ = None
    if open_ is not None:
        raise AssertionError(f"{markdown}:{open_[1]}: a fence is never closed")
    return blocks
