"""How a client sees a server's refusal: the gRPC status code and the stable reason word of its details."""

from __future__ import annotations

import grpc

# Failures that mean "the server is gone or unreachable": reconnect (re-attesting) and join again.
CONNECTION_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class RemoteError(Exception):
    """A call the server rejected: the gRPC status code and the reason word from its details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        head = details.split(":", 1)[0]
        self.reason = head if head and " " not in head else ""

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> RemoteError:
        return cls(error.code(), error.details() or "")
