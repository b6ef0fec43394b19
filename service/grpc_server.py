"""The KServe V2 gRPC service (`inference.GRPCInferenceService`), for tritonclient.grpc and other V2 clients.

It runs in the app's process and event loop (grpcio's asyncio server, started and stopped by the app's
lifespan) on its own port (RNNSERVE_GRPC_PORT, default 8001 as Triton's), on the same session manager
as HTTP. Each call is translated into the V2 request shape of service/kserve.py and answered by the
same code as `POST /v2/models/{name}/infer`, so sequences, validation, the `seq` extension and errors
are the HTTP ones:

    ModelInferRequest  -> {"parameters", "inputs", "outputs", "id"} + binary tail  -> kserve.infer
    InferResult        -> ModelInferResponse (outputs always as raw_output_contents)

Served: ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelConfig,
ModelStatistics, ModelInfer and ModelStreamInfer (bidirectional: requests of one stream are answered
in order, one at a time, so a sequence can be streamed; an error answers that request's
`error_message` and the stream goes on, as Triton does). Any other method of the service answers
UNIMPLEMENTED. Auth: the metadata `authorization: Bearer <key>`, as the HTTP header. Errors carry the
gRPC status of their HTTP status and the trailing metadata `rnnserve-error-code` (and
`rnnserve-expected-seq` on a seq conflict).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from starlette.datastructures import State

from service import kserve, triton_config
from service.auth import Authenticator
from service.deps import bearer_owner, manager_of_state
from service.errors import BadRequest, InvalidInput, SequenceConflict, ServiceError
from service.grpc_proto import kserve_v2_pb2 as pb
from service.routes.kserve import EXTENSIONS
from service.sessions import SessionManager

log = logging.getLogger("rnnserve.grpc")

SERVICE = "inference.GRPCInferenceService"
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    410: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
_CONTENTS = {  # V2 datatype -> the InferTensorContents field that carries it
    "BOOL": "bool_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def status_of(error: ServiceError) -> grpc.StatusCode:
    return _STATUS.get(error.status, grpc.StatusCode.INTERNAL)


def _trailers(error: ServiceError) -> tuple[tuple[str, str], ...]:
    trailers = [("rnnserve-error-code", error.code)]
    if isinstance(error, SequenceConflict):
        trailers.append(("rnnserve-expected-seq", str(error.expected_seq)))
    return tuple(trailers)


def _parameter(value: Any) -> Any:
    """The Python value of an InferParameter (None when unset)."""
    which = value.WhichOneof("parameter_choice")
    return getattr(value, which) if which else None


def set_parameter(target: Any, value: Any) -> None:
    """Set an InferParameter from a Python value: its kind follows the type (uint64 from 2^63 up)."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if value >= 1 << 63:
            target.uint64_param = value
        else:
            target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def request_to_v2(request: Any) -> tuple[dict[str, Any], bytes]:
    """A ModelInferRequest as the V2 JSON request shape and its binary tail."""
    body: dict[str, Any] = {"parameters": {k: _parameter(v) for k, v in request.parameters.items()}}
    if request.id:
        body["id"] = request.id
    tails: list[bytes] = []
    inputs = []
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} input(s)")
    for i, tensor in enumerate(request.inputs):
        spec: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "parameters": {k: _parameter(v) for k, v in tensor.parameters.items()},
        }
        part: bytes | None = None
        if raw:
            part = raw[i]
        elif tensor.datatype == "BYTES":
            part = b"".join(struct.pack("<I", len(item)) + item for item in tensor.contents.bytes_contents)
        elif tensor.datatype in _CONTENTS:
            spec["data"] = list(getattr(tensor.contents, _CONTENTS[tensor.datatype]))
        if part is not None:  # binary data follow one another in input order, as over HTTP
            spec["parameters"]["binary_data_size"] = len(part)
            tails.append(part)
        inputs.append(spec)
    body["inputs"] = inputs
    if request.outputs:
        body["outputs"] = [{"name": o.name} for o in request.outputs]
    return body, b"".join(tails)


def result_to_response(result: kserve.InferResult) -> Any:
    header = result.header
    response = pb.ModelInferResponse(
        model_name=header["model_name"], model_version=header["model_version"], id=header.get("id", "")
    )
    for key, value in header.get("parameters", {}).items():
        set_parameter(response.parameters[key], value)
    for tensor, _ in result.outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor.raw())
    return response


class InferenceService:
    """The RPC handlers, on the app's state (the manager appears once the lifespan has created it)."""

    def __init__(self, state: State, version: str) -> None:
        self.state = state
        self.version = version

    @property
    def manager(self) -> SessionManager:
        return manager_of_state(self.state)

    def owner(self, context: grpc.aio.ServicerContext) -> str | None:
        auth: Authenticator = self.state.auth
        metadata = dict(context.invocation_metadata() or ())
        return bearer_owner(auth, metadata.get("authorization"))

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            ready = len(self.manager.registry) > 0
        except ServiceError:
            ready = False
        return pb.ServerReadyResponse(ready=ready)

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name="rnnserve", version=self.version, extensions=EXTENSIONS)

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.owner(context)
        try:
            kserve.model_metadata(self.manager, request.name, request.version or None)
        except ServiceError as error:
            if error.status != 404:
                raise
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.owner(context)
        found = kserve.model_metadata(self.manager, request.name, request.version or None)
        return json_format.ParseDict(found, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    async def model_config(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.owner(context)
        manager = self.manager
        model = manager.registry.get(request.name, request.version or None)
        default = manager.registry.default_version(model.name)
        config = triton_config.model_config(model, manager.settings, default)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    async def model_statistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.owner(context)
        registry = self.manager.registry
        if request.version:
            models = [registry.get(request.name, request.version)]
        elif request.name:
            registry.get(request.name)
            models = [m for m in registry.all() if m.name == request.name]
        else:
            models = registry.all()
        stats = triton_config.statistics(models, self.state.metrics)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def _infer(self, request: Any, owner: str | None) -> Any:
        _check_parsed(request)
        body, tail = request_to_v2(request)
        name, version = request.model_name, request.model_version or None
        result = await kserve.infer(self.manager, owner, name, version, body, tail)
        return result_to_response(result)

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._infer(request, self.owner(context))

    async def model_stream_infer(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        owner = self.owner(context)
        async for request in requests:
            started = time.perf_counter()
            try:
                response = pb.ModelStreamInferResponse(infer_response=await self._infer(request, owner))
                status = 200
            except ServiceError as error:
                status = error.status
                response = pb.ModelStreamInferResponse(error_message=f"[{error.code}] {error.message}")
                response.infer_response.id = request.id  # which request failed
            except Exception:
                log.exception("gRPC ModelStreamInfer: a request failed")
                status = 500
                response = pb.ModelStreamInferResponse(error_message="internal error; see the server log")
                response.infer_response.id = request.id
            self._count("ModelStreamInfer/request", status, time.perf_counter() - started)
            yield response

    def _count(self, method: str, status: int, seconds: float) -> None:
        self.state.metrics.record_request("GRPC", f"/{SERVICE}/{method}", status, seconds)

    def _unary(self, method: str, handler: Callable[[Any, Any], Awaitable[Any]]) -> Callable[..., Any]:
        """`handler` with errors turned into gRPC statuses, and the request counted in the metrics."""

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            status = 200
            try:
                _check_parsed(request)
                return await handler(request, context)
            except ServiceError as error:
                status = error.status
                await context.abort(status_of(error), error.message, _trailers(error))
            except Exception:
                status = 500
                log.exception("gRPC %s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
            finally:
                self._count(method, status, time.perf_counter() - started)

        return call

    def _stream(self, handler: Callable[[Any, Any], AsyncIterator[Any]]) -> Callable[..., Any]:
        async def call(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in handler(requests, context):
                    yield response
            except ServiceError as error:  # before the first request: auth, readiness
                await context.abort(status_of(error), error.message, _trailers(error))

        return call

    def handler(self) -> grpc.GenericRpcHandler:
        unary: dict[str, tuple[Callable[[Any, Any], Awaitable[Any]], type[Message]]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
        }
        methods = {
            name: grpc.unary_unary_rpc_method_handler(
                self._unary(name, handler),
                request_deserializer=_deserializer(message),
                response_serializer=_serialize,
            )
            for name, (handler, message) in unary.items()
        }
        methods["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self._stream(self.model_stream_infer),
            request_deserializer=_deserializer(pb.ModelInferRequest),
            response_serializer=_serialize,
        )
        return grpc.method_handlers_generic_handler(SERVICE, methods)


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes are not the method's protobuf message. grpcio answers a deserializer's
    exception with UNKNOWN; this stands in for the message so that the handler answers
    INVALID_ARGUMENT (and, in a stream, that request's error while the stream goes on)."""

    message_type: str
    id: str = ""  # as ModelInferRequest.id, which a stream's error answer echoes


def _deserializer(message: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(raw: bytes) -> Message | Malformed:
        try:
            return message.FromString(raw)
        except DecodeError:
            return Malformed(message.DESCRIPTOR.full_name)

    return parse


def _check_parsed(request: Any) -> None:
    if isinstance(request, Malformed):
        raise BadRequest(f"the request is not a valid {request.message_type} protobuf message")


def _serialize(message: Message) -> bytes:
    raw: bytes = message.SerializeToString()
    return raw


async def start(
    state: State, version: str, host: str, port: int, max_message_bytes: int
) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on (host, port); returns it and the port it bound (port 0 picks one)."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a silently shared port
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers((InferenceService(state, version).handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    await server.start()
    return server, bound
