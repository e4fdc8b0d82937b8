"""What the layer families share (not public API; imports nothing itself).

- `base.py`: `ConfigLayer` (`get_config` from the `__init__` arguments),
  `AxisPooling`, `WrappedBatchNorm`;
- `conv.py`: `Conv2DBase` and `BasisConv2D` (the dense kernel, `dense_kernel()`,
  and its cache at eager inference);
- `validation.py`: the argument checks (also used by `models/`);
- `_ops.py`, `_geometry.py`, `_tf_fast.py`: binomial filters, padding and blur
  passes, and their TensorFlow fast path.
"""
