"""The two parties' gRPC channel: unary calls of a generic service whose messages are maps of named tensors.

A message is a ``tensorflow.serving.PredictResponse`` used only as a typed ``map<string, TensorProto>``
(its ``outputs``), so no new protos are generated. The media party serves (:func:`serve`); the ad party
calls (:class:`Peer`), counting the bytes each way. Plaintext on 127.0.0.1, TLS optional
(:mod:`tfads.federated.tls`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

log = logging.getLogger(__name__)
SERVICE = "tfads.federated.SplitLearning"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
Message = dict[str, np.ndarray]
Handler = Callable[[Message], Message]


class PeerLost(RuntimeError):
    """The other party did not answer (it died, timed out or refused the call); the message says where."""


def pack(message: Mapping[str, np.ndarray | bytes | list | int | float]) -> bytes:
    """Serialize a map of arrays (lists of bytes become DT_STRING tensors)."""
    proto = predict_pb2.PredictResponse()
    for name, value in message.items():
        array = np.asarray(value, dtype=object) if _is_bytes_list(value) else np.asarray(value)
        proto.outputs[name].CopyFrom(tf.make_tensor_proto(array))
    return proto.SerializeToString()


def unpack(data: bytes) -> Message:
    """The map of arrays :func:`pack` wrote (strings as an object array of bytes)."""
    proto = predict_pb2.PredictResponse.FromString(data)
    return {name: tf.make_ndarray(tensor) for name, tensor in proto.outputs.items()}


def _is_bytes_list(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], bytes)


def serve(handlers: Mapping[str, Handler], address: str, *,
          credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    """Start a server for ``handlers`` (method name -> function of a message) on ``address`` (port 0: any free
    port); one worker thread, so calls run one at a time in arrival order. Returns (server, bound port).

    A handler's ``ValueError`` answers FAILED_PRECONDITION with its message (e.g. a misaligned step)."""

    def wrap(name: str, fn: Handler):
        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return pack(fn(unpack(request)))
            except ValueError as e:
                log.warning("%s refused: %s", name, e)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{name}: {e}")

        return grpc.unary_unary_rpc_method_handler(call)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=OPTIONS)
    generic = grpc.method_handlers_generic_handler(SERVICE, {n: wrap(n, fn) for n, fn in handlers.items()})
    server.add_generic_rpc_handlers((generic,))
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    return server, port


class CountingPeer:
    """Serialized bytes per method and direction of a peer's calls."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()

    def count(self, method: str, request: bytes, response: bytes) -> Message:
        self.sent[method] += len(request)
        self.received[method] += len(response)
        return unpack(response)

    @property
    def bytes_exchanged(self) -> int:
        """Bytes of serialized messages both ways (gRPC framing and TLS records not included)."""
        return sum(self.sent.values()) + sum(self.received.values())


class LocalPeer(CountingPeer):
    """The media party's handlers in this process, through the same message encoding (and bytes) as gRPC."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        super().__init__()
        self.handlers = dict(handlers)

    def call(self, method: str, message: Mapping[str, object], **_: object) -> Message:
        request = pack(message)
        return self.count(method, request, pack(self.handlers[method](unpack(request))))


class Peer(CountingPeer):
    """The ad party's end: one call per method with a deadline, bytes counted per direction.

    Args:
      target: ``host:port`` of the media party.
      deadline_s: deadline of each call; a call past it (or to a dead peer) raises :class:`PeerLost`.
      credentials: TLS channel credentials (None: plaintext).
    """

    def __init__(self, target: str, *, deadline_s: float = 30.0,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        super().__init__()
        self.target, self.deadline_s = target, deadline_s
        self.channel = (grpc.secure_channel(target, credentials, options=OPTIONS) if credentials
                        else grpc.insecure_channel(target, options=OPTIONS))

    def call(self, method: str, message: Mapping[str, object], *, wait_for_ready: bool = False,
             timeout_s: float | None = None) -> Message:
        """Send ``message`` to ``method``; the answer. Raises PeerLost naming the method and the status."""
        request = pack(message)
        stub = self.channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            response = stub(request, timeout=timeout_s or self.deadline_s, wait_for_ready=wait_for_ready)
        except grpc.RpcError as e:
            raise PeerLost(f"media party at {self.target}: {method} failed: {e.code().name}: {e.details()}") from e
        return self.count(method, request, response)

    def close(self) -> None:
        self.channel.close()
