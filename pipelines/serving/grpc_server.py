"""TensorFlow Serving's gRPC API beside the REST one (`--grpc-port`; `make serve` listens on 8500, as TF Serving).

On the official generated servicers of tensorflow-serving-api, so any TF
Serving client (`PredictionServiceStub`, `ModelServiceStub`) works:

- `PredictionService.Predict`: inputs and outputs as TensorProtos (`class_name`
  as DT_STRING); `output_filter` honoured. On `serving_default` (uint8
  `image` [N, H, W, C]; other integer dtypes are taken when their values fit,
  as REST takes integers; floats and strings are refused) it runs in the
  model's `Batcher`, so gRPC and REST requests are batched together; any other
  signature of the export (`image_bytes`: DT_STRING encoded files) runs
  unbatched (`Servable.run_signature`).
- `Classify`: `tf.train.Example`s (bytes feature `image/encoded`) on the
  export's `classify` signature, unbatched; `example_list_with_context`
  merges the context into each example as TF Serving does. An empty
  `signature_name` means `classify` here (TF Serving would look under
  `serving_default`, a predict signature, and refuse).
- `MultiInference`: its tasks on one input, as TF Serving checks them (one
  model, the first task's `model_spec` picks the version, each signature
  once, methods classify or regress); an export's one classification
  signature makes one `classify` task, answered as `Classify` answers it.
- `GetModelMetadata` ("signature_def"): a `SignatureDefMap` packed in an `Any`.
- `Regress`: INVALID_ARGUMENT, as TF Serving for a model without a regression
  signature (UNIMPLEMENTED should an export ever have one).
- `ModelService.GetModelStatus`: the rows of REST status (`manager.status`).
  `HandleReloadConfigRequest`: UNIMPLEMENTED, one line (`--model-config-file`
  is read again when it changes).

Shared with REST: the `ModelManager` (versions: `model_spec.version` or
`version_label`), the batching queues, the limits (`max_rows` rows or
examples per request; messages up to `max_message_bytes`, the REST body
limit, larger ones refused by gRPC itself; `predict_timeout_s`, or the
client's deadline if sooner) and the metrics (protocol "grpc").

Errors are one status with a message, with TF Serving's codes: NOT_FOUND
(unknown model, version or label; no version loaded), INVALID_ARGUMENT (bad
shape, dtype, value, output filter, model spec, metadata field; a signature
of the wrong kind), FAILED_PRECONDITION (Predict on a signature the export
has not, TF Serving's code), UNIMPLEMENTED (a MultiInference task's method
other than classify or regress; regression), RESOURCE_EXHAUSTED (too many rows, too large a
message, too many RPCs at once), DEADLINE_EXCEEDED (no answer in time),
UNAVAILABLE (the server is stopping), INTERNAL (the server's fault, logged).

Threads: gRPC's thread-per-RPC server with `threads` workers (default 32, the
default `--max-batch`: enough waiting Predicts to fill a batch by gRPC
alone); a Predict's worker waits there for its rows from the batcher. Up to
`4 x threads` RPCs may be in progress or queued; more are refused with
RESOURCE_EXHAUSTED rather than queued without bound. gRPC's asyncio server:
an earlier measurement found it slower; a later prototype of Predict on it
(awaiting the batcher's future) served 8% more requests/s than this server
(median of 4 interleaved 5 s rounds, bench/bench_serve_grpc.py's client,
974 against 901), not enough to change the protocol ratio, which the CPU
per request sets on a machine shared with the clients (docs/results.md).
`stop(grace_s)` refuses new RPCs at once and gives those in flight `grace_s`
seconds.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent import futures

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)

from pipelines.serving.batching import ServerStopping
from pipelines.serving.grpc_codec import Code, RpcError, example_list, input_array, tensor_info
from pipelines.serving.responses import BadRequest, _first_line, clip
from pipelines.serving.savedmodel import CLASSIFY, SIGNATURE, Servable
from pipelines.serving.servables import ModelManager, NotFound

log = logging.getLogger("pipelines.serve")

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_API = {"Predict": "predict", "Classify": "classify", "Regress": "regress", "MultiInference": "multi_inference",
        "GetModelMetadata": "metadata", "GetModelStatus": "status"}  # metric labels (pipelines.serving.metrics.APIS)
_STATE = get_model_status_pb2.ModelVersionStatus.State
_ERROR_CODE = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type.values_by_name


def _rpc(fn):
    """Run one RPC; every failure becomes one gRPC status with a message; each RPC is counted."""
    api = _API[fn.__name__]

    @functools.wraps(fn)
    def wrapper(self: "_Services", request, context: grpc.ServicerContext):
        t0, code = time.perf_counter(), Code.OK
        try:
            return fn(self, request, context)
        except Exception as e:  # noqa: BLE001 - never die on a request
            err = _status(e, f"gRPC {fn.__name__}")
            code, message = err.code, str(err)
        finally:
            self.record(_model_name(request), api, code, time.perf_counter() - t0)
        context.abort(code, clip(message, 2000))

    return wrapper


def _model_name(request) -> str:
    """The model a request names (a MultiInference's first task's), for the metrics."""
    if isinstance(request, inference_pb2.MultiInferenceRequest):
        return request.tasks[0].model_spec.name if request.tasks else ""
    return request.model_spec.name


def _status(e: BaseException, where: str = "gRPC signature call") -> RpcError:
    """Any failure of a request (a lookup, a check, the signature call) as a gRPC status."""
    import tensorflow as tf

    if isinstance(e, RpcError):
        return e
    if isinstance(e, NotFound):
        return RpcError(Code.NOT_FOUND, str(e))
    if isinstance(e, BadRequest):  # 413: a limit
        return RpcError(Code.RESOURCE_EXHAUSTED if e.status == 413 else Code.INVALID_ARGUMENT, str(e))
    if isinstance(e, (tf.errors.InvalidArgumentError, ValueError, TypeError)):
        return RpcError(Code.INVALID_ARGUMENT, f"the model rejected the input: {_first_line(e)}")
    if isinstance(e, TimeoutError):
        return RpcError(Code.DEADLINE_EXCEEDED, str(e) or "the model did not answer in time; try again")
    if isinstance(e, ServerStopping):
        return RpcError(Code.UNAVAILABLE, str(e))
    log.error("%s failed", where, exc_info=e)
    return RpcError(Code.INTERNAL, f"internal error: {type(e).__name__}: {_first_line(e)}")


def _abandon(fut: futures.Future, why: str) -> None:
    """Give up on a queued predict: the batcher drops its remaining rows (see `Pending.abandon`)."""
    try:
        if not fut.done():
            fut.set_exception(TimeoutError(why))
    except Exception:  # noqa: BLE001 - InvalidStateError: answered meanwhile
        pass


def _set_spec(spec, name: str, version: int, signature: str) -> None:
    spec.name, spec.signature_name = name, signature
    spec.version.value = version


class _Services(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    """PredictionService and ModelService over one `ModelManager` (see the module docstring)."""

    def __init__(self, manager: ModelManager, predict_timeout_s: float, max_rows: int | None, max_message_bytes: int,
                 metrics=None):
        self.manager, self.metrics = manager, metrics
        self.predict_timeout_s, self.max_rows, self.max_message_bytes = predict_timeout_s, max_rows, max_message_bytes

    def record(self, model: str, api: str, code: grpc.StatusCode, seconds: float) -> None:
        if self.metrics is not None:
            try:
                self.metrics.observe_request(model, api, code.name, seconds, protocol="grpc")
            except Exception:  # noqa: BLE001 - counting never fails a request
                log.exception("recording gRPC metrics failed")

    def _version(self, spec) -> tuple[int | None, str | None]:
        if not spec.name:
            raise RpcError(Code.INVALID_ARGUMENT, "Missing ModelSpec: model_spec.name is empty")
        which = spec.WhichOneof("version_choice")
        return (spec.version.value if which == "version" else None,
                spec.version_label if which == "version_label" else None)

    def _resolve(self, spec) -> tuple[Servable, object]:
        return self.manager.resolve(spec.name, *self._version(spec))

    @staticmethod
    def _signature(servable: Servable, name: str, method: str, what: str):
        defs = servable.signature_def_protos
        if name not in defs:
            raise RpcError(Code.INVALID_ARGUMENT, f"No signature was found with the name: {name} (model "
                                                  f"{servable.name!r} version {servable.version} has {sorted(defs)})")
        if defs[name].method_name != method:
            raise RpcError(Code.INVALID_ARGUMENT, f"Expected {what} signature method_name to be {method}. "
                                                  f"Was: {defs[name].method_name}")
        return defs[name]

    # -- PredictionService

    @_rpc
    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        servable, batcher = self._resolve(request.model_spec)
        sig = request.model_spec.signature_name or SIGNATURE
        if sig == SIGNATURE:
            specs, outputs = servable.inputs, list(servable.outputs)
        elif sig in servable.signature_def_protos:
            d = servable.signature_def_protos[sig]
            specs, outputs = {k: tensor_info(k, v) for k, v in sorted(d.inputs.items())}, sorted(d.outputs)
        else:  # TF Serving's code and words
            raise RpcError(Code.FAILED_PRECONDITION, f'Serving signature key "{sig}" not found.')
        names = list(request.output_filter) or outputs
        for n in names:
            if n not in outputs:
                raise RpcError(Code.INVALID_ARGUMENT, f"output tensor alias not found in signature: {n} "
                                                      f"Outputs expected to be in the set {sorted(outputs)}.")
        if len(set(names)) != len(names):
            raise RpcError(Code.INVALID_ARGUMENT, f"duplicate output tensor alias in output_filter {names}")
        if set(request.inputs) != set(specs):
            raise RpcError(Code.INVALID_ARGUMENT, f"the request's inputs are {sorted(request.inputs)}, "
                                                  f"signature {sig!r} takes {sorted(specs)}")
        inputs = {k: input_array(k, request.inputs[k], spec, self.max_rows, self.max_message_bytes)
                  for k, spec in specs.items()}
        if len({len(a) for a in inputs.values()}) > 1:
            raise RpcError(Code.INVALID_ARGUMENT, f"inputs have different batch sizes "
                                                  f"{ {k: len(a) for k, a in inputs.items()} }")
        if sig == SIGNATURE:
            out = self._batched(batcher, servable, inputs, context)
        else:
            try:
                out = servable.run_signature(sig, inputs)
            except Exception as e:  # noqa: BLE001 - worded by _status
                raise _status(e) from None
        import tensorflow as tf

        response = predict_pb2.PredictResponse()
        _set_spec(response.model_spec, request.model_spec.name, servable.version, sig)
        for n in names:
            response.outputs[n].CopyFrom(tf.make_tensor_proto(out[n]))
        return response

    def _batched(self, batcher, servable: Servable, inputs: dict, context) -> dict:
        """Run `inputs` in the model's batching queue, waiting at most `predict_timeout_s` or the deadline."""
        fut = batcher.submit(servable, inputs)
        context.add_callback(lambda: _abandon(fut, "the client went away"))  # when the RPC ends, any way
        left = context.time_remaining()
        timeout = self.predict_timeout_s if left is None else max(0.0, min(self.predict_timeout_s, left))
        try:
            return fut.result(timeout)
        except futures.TimeoutError:
            if fut.done():
                return fut.result(0)  # answered just now
            _abandon(fut, "timed out")
            raise RpcError(Code.DEADLINE_EXCEEDED, f"the model did not answer within {timeout:g} s; try again")
        except Exception as e:  # noqa: BLE001 - worded by _status
            raise _status(e) from None

    @_rpc
    def Classify(self, request: classification_pb2.ClassificationRequest, context):
        servable, _ = self._resolve(request.model_spec)
        sig = self._classify_signature(servable, request.model_spec.signature_name)
        response = classification_pb2.ClassificationResponse()
        self._classify(servable, request.input, response.result)
        _set_spec(response.model_spec, request.model_spec.name, servable.version, sig)
        return response

    def _classify_signature(self, servable: Servable, name: str) -> str:
        sig = name or CLASSIFY
        self._signature(servable, sig, CLASSIFY_METHOD, "classification")
        if sig != CLASSIFY:
            raise RpcError(Code.INVALID_ARGUMENT, f"Classify runs the {CLASSIFY!r} signature only, not {sig!r}")
        return sig

    def _classify(self, servable: Servable, inp, result, request: str = "ClassificationRequest") -> None:
        """Run the `classify` signature on the examples of `inp` (of a `request`) into the ClassificationResult
        `result`."""
        examples = example_list(inp)
        if not examples:
            raise RpcError(Code.INVALID_ARGUMENT, f"{request}::input is empty.")
        if self.max_rows is not None and len(examples) > self.max_rows:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"{len(examples)} examples, over the limit of {self.max_rows} "
                                                    f"per request (--max-rows); split it into several requests")
        try:
            out = servable.classify(examples)
        except Exception as e:  # noqa: BLE001 - worded by _status
            raise _status(e) from None
        classes, scores = out.get("classes"), out.get("scores")
        for i in range(len(examples)):
            c = result.classifications.add()
            for j in range((classes if classes is not None else scores).shape[1]):
                label = classes[i, j] if classes is not None else ""
                c.classes.add(label=label.decode() if isinstance(label, bytes) else str(label),
                              score=float(scores[i, j]) if scores is not None else 0.0)

    @_rpc
    def Regress(self, request: regression_pb2.RegressionRequest, context):
        servable, _ = self._resolve(request.model_spec)
        self._signature(servable, request.model_spec.signature_name or SIGNATURE, REGRESS_METHOD, "regression")
        raise RpcError(Code.UNIMPLEMENTED, "this server does not run regression signatures")

    @_rpc
    def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context):
        """Classify and regress tasks on one input, with TF Serving's checks in its order: the first task's
        `model_spec` picks the model and version, then per task one model name, each signature once, the
        signature found, its method. An empty `signature_name` is `classify` for a classify task (as `Classify`
        here), else `serving_default`. The input is classified once for the `classify` task (an export has one
        classification signature, and none for regression)."""
        if not request.tasks:
            raise RpcError(Code.INVALID_ARGUMENT, "MultiInferenceRequest has no tasks; give one per signature")
        servable, _ = self._resolve(request.tasks[0].model_spec)
        name, done = request.tasks[0].model_spec.name, set()
        for task in request.tasks:
            if not task.model_spec.name:
                raise RpcError(Code.INVALID_ARGUMENT, "Found ModelSpec with an empty model name.")
            if task.model_spec.name != name:
                raise RpcError(Code.INVALID_ARGUMENT,
                               "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            sig = task.model_spec.signature_name or (CLASSIFY if task.method_name == CLASSIFY_METHOD else SIGNATURE)
            if sig in done:
                raise RpcError(Code.INVALID_ARGUMENT, f"Duplicate evaluation of signature: {sig}")
            done.add(sig)
            if sig not in servable.signature_def_protos:
                raise RpcError(Code.INVALID_ARGUMENT, f"Requested signature not found in model graph: {clip(sig, 80)}")
            if task.method_name == CLASSIFY_METHOD:
                self._classify_signature(servable, sig)
            elif task.method_name == REGRESS_METHOD:
                self._signature(servable, sig, REGRESS_METHOD, "regression")
                raise RpcError(Code.UNIMPLEMENTED, "this server does not run regression signatures")
            else:
                raise RpcError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {clip(task.method_name, 80)}")
        response = inference_pb2.MultiInferenceResponse()
        result = response.results.add()  # the classify task: the only one the checks above let through
        self._classify(servable, request.input, result.classification_result, "MultiInferenceRequest")
        _set_spec(result.model_spec, name, servable.version, CLASSIFY)
        return response

    @_rpc
    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        self._version(request.model_spec)
        if not request.metadata_field:
            raise RpcError(Code.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field")
        for f in request.metadata_field:
            if f != "signature_def":
                raise RpcError(Code.INVALID_ARGUMENT, f"Metadata field {clip(f, 60)} is not supported "
                                                      f"(supported: signature_def)")
        servable, _ = self._resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _set_spec(response.model_spec, request.model_spec.name, servable.version, "")
        defs = get_model_metadata_pb2.SignatureDefMap()
        for k, v in servable.signature_def_protos.items():
            defs.signature_def[k].CopyFrom(v)
        response.metadata["signature_def"].Pack(defs)
        return response

    # -- ModelService

    @_rpc
    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        rows = self.manager.status(request.model_spec.name, *self._version(request.model_spec))
        response = get_model_status_pb2.GetModelStatusResponse()
        for r in rows:
            response.model_version_status.add(
                version=r.version, state=_STATE.Value(r.state),
                status=status_pb2.StatusProto(error_code=_ERROR_CODE[r.error_code].number,
                                              error_message=r.error_message),
            )
        return response

    def HandleReloadConfigRequest(self, request, context):
        """Not served (the generated servicer's answer is the same code, with a traceback in the log per call)."""
        context.abort(Code.UNIMPLEMENTED, "HandleReloadConfigRequest is not supported here: edit the file of "
                                          "--model-config-file (it is read again when it changes)")


class GrpcServer:
    """TF Serving's gRPC API on `host:port` (0: a free port) over `manager`; `start()` returns the bound port."""

    def __init__(self, manager: ModelManager, host: str = "127.0.0.1", port: int = 8500,
                 max_message_bytes: int = 8 << 20, predict_timeout_s: float = 60.0, max_rows: int | None = 4096,
                 threads: int = 32, metrics=None):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self.services = _Services(manager, predict_timeout_s, max_rows, max_message_bytes, metrics)
        self.host, self.port, self.threads, self.max_message_bytes = host, port, threads, max_message_bytes
        self._server: grpc.Server | None = None

    def start(self) -> int:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not shared with another server
            ],
            maximum_concurrent_rpcs=4 * self.threads,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self.services, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(self.services, server)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if not port:  # grpc raises a RuntimeError that does not say why (older versions answer 0)
            raise OSError(f"gRPC cannot bind {address} (the port is in use, or the host is not this machine's)")
        server.start()
        self._server, self.port = server, port
        return port

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new RPCs now; those in flight get `grace_s` seconds to finish, then are cancelled."""
        if self._server is not None:
            self._server.stop(grace_s).wait(grace_s + 5)
            self._server = None
