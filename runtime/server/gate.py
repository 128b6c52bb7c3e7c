"""One generation at a time per model: a FIFO gate with a bounded queue (asyncio side)."""
from __future__ import annotations

import asyncio
from collections import deque


class QueueFull(Exception):
    def __init__(self, waiting: int):
        super().__init__(f"{waiting} waiting")
        self.waiting = waiting


class Gate:
    def __init__(self, limit: int):
        self.limit = limit
        self.busy = False
        self.waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for f in self.waiters if not f.done())

    def enter(self) -> "Ticket":
        """A place in line, taken now (QueueFull past the limit); await Ticket.wait() for the
        turn and call Ticket.release() when done."""
        fut = asyncio.get_running_loop().create_future()
        if not self.busy and not self.waiting:
            self.busy = True
            fut.set_result(None)
        elif self.waiting >= self.limit:
            raise QueueFull(self.waiting)
        else:
            self.waiters.append(fut)
        return Ticket(self, fut)

    def _next(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)   # the gate passes straight to the next in line
                return
        self.busy = False


class Ticket:
    def __init__(self, gate: Gate, fut: asyncio.Future):
        self.gate, self.fut = gate, fut
        self.released = False

    async def wait(self) -> None:
        try:
            await asyncio.shield(self.fut)
        except asyncio.CancelledError:
            self.release()
            raise

    def release(self) -> None:
        """Give the turn back (or leave the line); safe to call more than once."""
        if self.released:
            return
        self.released = True
        if self.fut.done() and not self.fut.cancelled():
            self.gate._next()
        else:
            self.fut.cancel()
