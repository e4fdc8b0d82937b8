"""TensorFlow Serving's REST API over the versioned SavedModels of `pipelines.export`.

- `servables`: the served models: polling the export directory, loading
  versions, atomic swaps (`ModelManager`);
  `savedmodel`: one loaded version (`Servable`, `load_servable`);
  `batching`: the batching queue in front of each model's signature (`Batcher`).
- `rest`: the REST API itself (routes, `RestApi`), independent of the HTTP stack;
  `request`: request parsing and checking (`parse_predict`);
  `codec`: JSON decoding and encoding, kind to the other threads on large bodies;
  `responses`: the answers (`Response`, `Pending`) and error wording.
- `http`: the HTTP stacks it runs on (`make_server`: aiohttp by default;
  uvicorn and the standard library's ThreadingHTTPServer kept for the
  measurement in bench/bench_serve.py), one module each (`http_aiohttp`,
  `http_uvicorn`, `http_stdlib`) over `http_base` (the shared limits and
  timeouts).
- `mlflow_serve`: `mlflow models serve`, the other way of serving.

`pipelines/serve.py` is the command line (`make serve`).
"""
