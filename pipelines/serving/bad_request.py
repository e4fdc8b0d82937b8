"""`BadRequest`, a client mistake with its 4xx status: in a module of its own, so that the servable
(`savedmodel`, which refuses images by their headers) raises it without importing the answering layer
(`responses`, which imports the batcher, which imports the servable)."""

from __future__ import annotations


class BadRequest(ValueError):
    """A client mistake; `status` is the 4xx code to answer with (and `headers` to add, e.g. Allow)."""

    def __init__(self, message: str, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
