"""TensorFlow Serving's REST API over the versioned SavedModels of `pipelines.export`.

- `servables`: loading versions, polling the export directory, atomic swaps,
  and the batching queue in front of each model's signature.
- `rest`: the REST API itself (routes, request parsing and checking,
  TF Serving's JSON answers), independent of the HTTP stack.
- `http`: the HTTP stacks it runs on (aiohttp by default; uvicorn and the
  standard library's ThreadingHTTPServer kept for the measurement in
  bench/bench_serve.py).

`pipelines/serve.py` is the command line (`make serve`).
"""
