"""A click progress bar over chunks (kiln imatrix, kiln eval, --imatrix auto) on stderr."""
from __future__ import annotations

import sys

import click


class ChunkBar:
    """Opened on the first `update(done, total[, item])`, with position, percent and ETA;
    `item` (what is running) is shown beside it. Nothing at all when `quiet`."""

    def __init__(self, label: str, quiet: bool = False):
        self.label, self.quiet, self.bar, self.done = label, quiet, None, 0

    def update(self, done: int, total: int, item: str | None = None) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr,
                                         show_eta=True, show_pos=True, show_percent=True,
                                         width=30, item_show_func=lambda name: name)
            self.bar.__enter__()
        self.bar.update(done - self.done, item)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
