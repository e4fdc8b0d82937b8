"""TensorFlow Serving's REST API over the versioned SavedModels of `pipelines.export`.

- `servables`: the served models: polling the export directory, loading and
  unloading versions, atomic swaps, version labels (`ModelManager`);
  `model_config`: TF Serving's model config file (`--model-config-file`);
  `heap`: the garbage collector around version swaps;
  `savedmodel`: one loaded version (`Servable`, `load_servable`);
  `batching`: the batching queue in front of each model's signature (`Batcher`).
- `rest`: the REST API itself (routes, `RestApi`), independent of the HTTP stack;
  `request`: request parsing and checking (`parse_predict`);
  `codec`: JSON decoding and encoding, kind to the other threads on large bodies;
  `responses`: the answers (`Response`, `Pending`) and error wording;
  `bad_request`: `BadRequest`, a client mistake with its 4xx status.
- `http`: the HTTP server it runs on (`HttpServer`: the standard library's
  ThreadingHTTPServer with body limits, timeouts, a cap on open connections
  and cancellation when a client goes away);
  `metrics`: the Prometheus metrics (`ServerMetrics`, one registry per server),
  at `GET /monitoring/prometheus/metrics`.
- `grpc_server`: TF Serving's gRPC API beside REST (`GrpcServer`);
  `grpc_codec`: its messages as arrays and examples, and `RpcError`;
  `classify`: the Classify API's requests (REST) over the export's `classify` signature.
- `mlflow_serve`: `mlflow models serve`, the other way of serving.

`pipelines/serve.py` is the command line (`make serve`).
"""
