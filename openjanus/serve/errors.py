"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`: what every error
answer of the server holds (and of Ray Serve's proxy in front of replicas). No imports beyond
the standard library, so that the proxy's middleware (`openjanus.serve.ray_proxy`) loads no
model code."""

from __future__ import annotations

__all__ = ["APIError"]


class APIError(Exception):
    """An error answer in OpenAI's shape: HTTP status, message, type, and the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
