"""Embedded TF-Serving-compatible model server (gRPC + REST) for laptops, tests and CI."""

from serving.server.errors import ServingError
from serving.server.flags import parse_flags
from serving.server.main import ModelServer

__all__ = ["ModelServer", "ServingError", "parse_flags"]
