"""A streaming response tied to its job: when the response ends for any reason (done, client
gone, never started) the job is stopped and the model freed."""
from __future__ import annotations

from starlette.responses import StreamingResponse


class JobStream(StreamingResponse):
    def __init__(self, job, content, **kw):
        super().__init__(content, **kw)
        self.job = job
        self.headers.setdefault("Cache-Control", "no-cache")
        self.headers.setdefault("X-Accel-Buffering", "no")

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.abandon()
