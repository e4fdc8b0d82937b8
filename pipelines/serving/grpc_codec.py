"""gRPC messages as this server's arrays and example lists (pipelines/serving/grpc_server.py), and `RpcError`."""

from __future__ import annotations

import grpc
import numpy as np

from pipelines.serving.request import _shape_str
from pipelines.serving.savedmodel import TensorInfo

Code = grpc.StatusCode


class RpcError(Exception):
    """A request answered with gRPC status `code` and `message`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def tensor_info(name: str, info) -> TensorInfo:
    """A SignatureDef's TensorInfo proto as this server's `TensorInfo` (shape None: any)."""
    import tensorflow as tf

    shape = None if info.tensor_shape.unknown_rank else tuple(d.size if d.size >= 0 else None
                                                              for d in info.tensor_shape.dim)
    return TensorInfo(name, np.dtype(tf.dtypes.as_dtype(info.dtype).as_numpy_dtype), shape)


def input_array(key: str, proto, spec: TensorInfo, max_rows: int | None, max_elements: int) -> np.ndarray:
    """One Predict input TensorProto -> an array of the spec's dtype; every mistake an `RpcError`."""
    import tensorflow as tf

    where, want = f"input {key!r}", spec.dtype
    expected = _shape_str(spec.shape) if spec.shape is not None else "any shape"
    if proto.tensor_shape.unknown_rank:
        raise RpcError(Code.INVALID_ARGUMENT, f"{where}: the tensor has no shape; expected {expected}")
    shape = [d.size for d in proto.tensor_shape.dim]
    if spec.shape is not None and (len(shape) != len(spec.shape) or any(
            d < 0 or (s is not None and d != s) for d, s in zip(shape, spec.shape))):
        raise RpcError(Code.INVALID_ARGUMENT, f"{where}: wrong shape {shape}, expected {expected}")
    if not shape or shape[0] <= 0:
        raise RpcError(Code.INVALID_ARGUMENT, f"{where}: no batch (shape {shape}), expected {expected}")
    if max_rows is not None and shape[0] > max_rows:
        raise RpcError(Code.RESOURCE_EXHAUSTED, f"{where} holds {shape[0]} rows, over the limit of {max_rows} per "
                                                f"request (--max-rows); split it into several requests")
    if np.prod(shape, dtype=np.float64) > max_elements:  # a declared shape no message of the limit can fill
        raise RpcError(Code.RESOURCE_EXHAUSTED, f"{where}: {shape} is over the limit of {max_elements} values")
    try:
        dt = tf.dtypes.as_dtype(proto.dtype)
        got = np.dtype(dt.as_numpy_dtype) if dt.base_dtype == dt else None
        name = dt.name
    except (TypeError, ValueError):
        got, name = None, f"type {proto.dtype}"
    if got is not None and got.kind == "O" and dt != tf.string:  # resources, variants
        got = None
    if got is None or (got != want and not (got.kind in "iu" and want.kind in "iuf")):
        extra = " (or another integer type with values in range)" if want.kind in "iu" else ""
        raise RpcError(Code.INVALID_ARGUMENT, f"{where}: expected {tf.as_dtype(want).name}{extra}, got {name}")
    try:
        arr = tf.make_ndarray(proto)
    except OverflowError:  # e.g. 300 in the int_val of a DT_UINT8 tensor
        raise RpcError(Code.INVALID_ARGUMENT, f"{where}: a value is out of range for dtype {name}") from None
    except (ValueError, TypeError):  # NumPy's own words ("index can't contain negative values") would mislead
        raise RpcError(Code.INVALID_ARGUMENT, f"{where}: the tensor's values do not fit its shape {shape}") from None
    if list(arr.shape) != shape:
        raise RpcError(Code.INVALID_ARGUMENT, f"{where}: the tensor's values do not fit its shape {shape}")
    if got != want and want.kind in "iu":
        info, lo, hi = np.iinfo(want), arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise RpcError(Code.INVALID_ARGUMENT, f"{where}: value {(lo if lo < info.min else hi).item()!r} out of "
                                                  f"range for dtype {want.name} ({info.min}..{info.max})")
    return arr.astype(want, copy=False)


def example_list(inp) -> list[bytes]:
    """The serialized `tf.train.Example`s of a Classify `Input`; a context is merged into each example (the
    example's own features win) as TF Serving does it: the context's bytes, then the example's."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in inp.example_list.examples]
    if kind == "example_list_with_context":
        ctx = inp.example_list_with_context.context.SerializeToString()
        return [ctx + e.SerializeToString() for e in inp.example_list_with_context.examples]
    return []
