"""A client of the SSD served by TensorFlow Serving: writes what `ssd_tf.detect` writes.

The command is `ssd_tf.cli.serving_client` (`ssd-serving-client`; `python -m
ssd_tf.serving_client` hands over to it):

  python -m ssd_tf.serving_client --server http://localhost:8501 --images photos/ \\
      --export_dir /tmp/ssd_export/1 --output_dir detections
  python -m ssd_tf.serving_client --server localhost:8500 --protocol grpc --images a.jpg

Sends the image files (JPEG/PNG/GIF/BMP bytes, as they are) to the `serving_default`
signature of export_savedmodel.py's SavedModel (`image_bytes: string [None]`), over TF
Serving's REST API (`POST /v1/models/<name>[/versions/<v>]:predict`, binary values as
`{"b64": ...}`, row `{"instances": [...]}` -> `{"predictions": [...]}` or, with --columnar,
`{"inputs": {...}}` -> `{"outputs": {...}}`; errors `{"error": ...}` with an HTTP status) or its
gRPC API (`PredictionService.Predict`, with the `tensorflow-serving-api` package: extra
`serving`). Writes the annotated PNGs and detections.json of `ssd_tf.detect` through its
`DetectionWriter`, so the files are the same as `detect.py` on the same SavedModel.

Before the first request the client asks the server for the model's metadata (`GET
.../metadata` / GetModelMetadata) and checks the signature and its string input. TF Serving's
metadata carries the signatures only, not the export's assets, so the class names and the
limits come from --export_dir (the version directory: its assets/export_config.json) or
--labels / --max_batch_size; without them the classes are named by id.

Bounded, and named when refused: a file over --max_file_bytes is not read; a file that is not
a JPEG/PNG/GIF/BMP, is visibly truncated or is over the pixel budget (the export's
max_image_pixels, else 200 MP) is skipped from its header before anything is sent (the same
reasons as `detect`); a request holds at most the export's max_batch_size images and
--max_request_bytes of image data. A request the server refuses (HTTP 400 / INVALID_ARGUMENT)
is split: a batch-size refusal makes the client send at most the size the server names, and a
refused batch is re-sent image by image so that only the offending images get an `"error"`
entry (`server refused: <the server's message>`). Any other failure (server down, unknown model,
a timeout, HTTP 5xx) stops the run with the server's message; detections.json keeps the
images done so far.
"""
import os
import re

import numpy as np
import tensorflow as tf

from ssd_tf import detect as detect_lib
from ssd_tf.export import saved_model as export
from ssd_tf import images
from ssd_tf import serving_rest

DEFAULT_MAX_FILE_BYTES = 64 << 20      # one image file; a 200 MP JPEG is ~30-60 MB
DEFAULT_MAX_REQUEST_BYTES = 64 << 20   # image bytes of one request (JSON base64 adds 1/3)
MAX_RESPONSE_BYTES = serving_rest.MAX_RESPONSE_BYTES
_BATCH_REFUSAL = re.compile(r'takes at most (\d+) per request')


ServingError = serving_rest.ServingError


# ---------------------------------------------------------------------------- REST
class RestClient(serving_rest.RestClient):
    """`serving_rest.RestClient` (TF Serving's REST API at `server`, standard library only)
    whose `predict` gives numpy arrays, as `GrpcClient`."""

    def predict(self, encoded):
        """Encoded images (list of bytes) -> `{output name: numpy array [B, ...]}`."""
        return {k: np.asarray(v, np.float32) for k, v in super().predict(encoded).items()}


# ---------------------------------------------------------------------------- gRPC
def _grpc_modules():
    try:
        import grpc
        from tensorflow_serving.apis import get_model_metadata_pb2
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_service_pb2_grpc
    except ImportError as e:
        raise ValueError(f"--protocol=grpc needs the tensorflow-serving-api package ({e}); "
                         f"pip install -e '.[serving]' (or use --protocol=rest)") from None
    return grpc, get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc


class GrpcClient:
    """TF Serving's gRPC API at `server` (`host:8500`) for `model_name` [version]."""

    def __init__(self, server, model_name='ssd', version=None, signature=export.BYTES_SIGNATURE,
                 timeout=60., max_message_bytes=DEFAULT_MAX_REQUEST_BYTES * 2):
        self._grpc, self._meta_pb2, self._predict_pb2, services = _grpc_modules()
        target = server.split('://', 1)[-1].rstrip('/')
        if ':' not in target:
            raise ValueError(f"--server={server}: expected host:port for --protocol=grpc "
                             f"(TF Serving's gRPC port is 8500)")
        options = [('grpc.max_send_message_length', max_message_bytes),
                   ('grpc.max_receive_message_length', max_message_bytes)]
        self._channel = self._grpc.insecure_channel(target, options=options)
        self._stub = services.PredictionServiceStub(self._channel)
        self.target, self.model_name, self.version = target, model_name, version
        self.signature, self.timeout = signature, timeout
        self.input_name = export.BYTES_INPUT

    def _spec(self, spec):
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = int(self.version)

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except self._grpc.RpcError as e:
            code = e.code().name if hasattr(e, 'code') else None
            status = None if code in ('UNAVAILABLE', 'DEADLINE_EXCEEDED') else code
            message = e.details() if hasattr(e, 'details') else str(e)
            if status is None:
                message = f"cannot reach the server ({code}: {message})"
            raise ServingError(status, message, self.target) from None

    def signatures(self):
        """As RestClient.signatures, from GetModelMetadata."""
        from tensorflow.core.framework import types_pb2
        request = self._meta_pb2.GetModelMetadataRequest()
        self._spec(request.model_spec)
        request.metadata_field.append('signature_def')
        response = self._call(self._stub.GetModelMetadata, request)
        defs = self._meta_pb2.SignatureDefMap()
        response.metadata['signature_def'].Unpack(defs)
        return {name: {side: {k: types_pb2.DataType.Name(v.dtype)
                              for k, v in getattr(d, side).items()}
                       for side in ('inputs', 'outputs')}
                for name, d in defs.signature_def.items()}

    def predict(self, encoded):
        request = self._predict_pb2.PredictRequest()
        self._spec(request.model_spec)
        request.model_spec.signature_name = self.signature
        request.inputs[self.input_name].CopyFrom(
            tf.make_tensor_proto(list(encoded), dtype=tf.string, shape=[len(encoded)]))
        response = self._call(self._stub.Predict, request)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


# ---------------------------------------------------------------------------- the run
def check_signature(signatures, signature, where):
    """Checks that `signature` exists and takes export's string `image_bytes` input."""
    if signature not in signatures:
        raise ValueError(f"{where}: the model has no signature {signature!r} (it has "
                         f"{', '.join(sorted(signatures)) or 'none'}); pass --signature")
    inputs = signatures[signature]['inputs']
    if inputs.get(export.BYTES_INPUT) != 'DT_STRING' or len(inputs) != 1:
        raise ValueError(f"{where}: signature {signature!r} takes {inputs}, not one "
                         f"{export.BYTES_INPUT!r} string input: not an ssd-tf export's "
                         f"{export.BYTES_SIGNATURE}")
    missing = set(export.OUTPUT_KEYS) - set(signatures[signature]['outputs'])
    if missing:
        raise ValueError(f"{where}: signature {signature!r} lacks the outputs "
                         f"{sorted(missing)}")


def read_export_info(export_dir):
    """`(label names or None, RunConfig of export_config.json)` of an export version
    directory (or its assets/ folder), read with `run_config.RunConfig.read`."""
    from ssd_tf import run_config
    for path in (os.path.join(export_dir, 'assets', run_config.EXPORT_CONFIG_FILENAME),
                 os.path.join(export_dir, run_config.EXPORT_CONFIG_FILENAME)):
        if os.path.isfile(path):
            config = run_config.RunConfig.read(path)
            return config.label_names, config
    raise ValueError(f"--export_dir={export_dir}: no assets/{run_config.EXPORT_CONFIG_FILENAME}"
                     f" (pass the version directory export_savedmodel.py wrote, e.g. "
                     f"/tmp/ssd_export/1)")


def _read_checked(path, max_pixels, max_file_bytes):
    """The bytes of an image file after the header checks of `ssd_tf.images` (the reasons
    `detect` gives); ValueError with the reason."""
    try:
        size = os.path.getsize(path)
        if size > max_file_bytes:
            raise ValueError(f"the file has {size} bytes, over --max_file_bytes="
                             f"{max_file_bytes}")
        data = images.read_regular_file(path, max_file_bytes)
    except OSError as e:
        raise ValueError(f"cannot read the file: {e.strerror or e}") from None
    if len(data) > max_file_bytes:
        raise ValueError(f"the file grew over --max_file_bytes={max_file_bytes}")
    problem = images.encoded_image_problem(data, max_pixels).numpy().decode('utf-8', 'replace')
    if problem:
        raise ValueError(problem)
    return data


def _batches(paths, max_batch, max_request_bytes, read):
    """Yields lists of `(path, bytes or ValueError)`: consecutive files, at most `max_batch`
    readable images and `max_request_bytes` of image data each (one image always fits)."""
    batch, n, size = [], 0, 0
    for path in paths:
        try:
            item = read(path)
        except ValueError as e:
            item = e
        if isinstance(item, bytes) and n and (n + 1 > max_batch[0] or
                                              size + len(item) > max_request_bytes):
            yield batch
            batch, n, size = [], 0, 0
        batch.append((path, item))
        if isinstance(item, bytes):
            n, size = n + 1, size + len(item)
    if batch:
        yield batch


def _predict(client, encoded, max_batch):
    """Detections per image of `encoded` (list of bytes): a dict, or the server's refusal
    text for that image. Splits on a batch-size refusal (lowering max_batch[0] for the rest of
    the run) and re-sends a refused batch image by image; other errors propagate."""
    try:
        out = client.predict(encoded)
    except ServingError as e:
        if not e.refused:
            raise
        limit = _BATCH_REFUSAL.search(e.message or '')
        if limit and int(limit.group(1)) < len(encoded):
            max_batch[0] = max(1, int(limit.group(1)))
            step = max_batch[0]
            return [r for i in range(0, len(encoded), step)
                    for r in _predict(client, encoded[i:i + step], max_batch)]
        if len(encoded) > 1:
            return [r for d in encoded for r in _predict(client, [d], max_batch)]
        # the Assert text without TensorFlow's wrapping, as detect reports it
        return [f"server refused: {detect_lib._reason(e, '')}"]
    got = len(np.asarray(out.get('num_detections', [])))
    if got != len(encoded) or set(export.OUTPUT_KEYS) - set(out):
        raise ServingError('bad response', f"{got} results with keys {sorted(out)} for "
                           f"{len(encoded)} images", getattr(client, 'base', client))
    return [detect_lib.from_signature_output(out, i) for i in range(len(encoded))]


def run(client, image_paths, output_dir, label_names=None, score_threshold=0.3,
        max_batch_size=export.MAX_BATCH_SIZE, max_pixels=images.DEFAULT_MAX_PIXELS,
        max_file_bytes=DEFAULT_MAX_FILE_BYTES, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES):
    """Sends the images to `client` (RestClient/GrpcClient) in batches and writes the PNGs and
    detections.json of `ssd_tf.detect`; returns the JSON list. A ServingError other than a
    refusal stops the run (detections.json keeps the images done)."""
    max_batch = [max(1, int(max_batch_size))]
    with detect_lib.DetectionWriter(image_paths, output_dir, label_names,
                                    score_threshold) as writer:
        read = lambda p: _read_checked(p, max_pixels, max_file_bytes)  # noqa: E731
        for batch in _batches(image_paths, max_batch, max_request_bytes, read):
            encoded = [item for _, item in batch if isinstance(item, bytes)]
            outs = iter(_predict(client, encoded, max_batch) if encoded else [])
            for path, item in batch:
                if isinstance(item, ValueError):
                    writer.skip(path, item)
                    continue
                out = next(outs)
                if isinstance(out, str):
                    writer.skip(path, out)
                    continue
                try:
                    image = images.decode_image(item, max_pixels, where=path).numpy()
                except tf.errors.OpError as e:  # the server decoded what we cannot
                    writer.skip(path, f"decoded by the server but not here: "
                                      f"{detect_lib._reason(e, path)}")
                    continue
                writer.add(path, image, out)
    return writer.results


if __name__ == '__main__':
    # The command is ssd_tf.cli.serving_client,
    # run without importing it (the library imports no program).
    import runpy
    runpy.run_module('ssd_tf.cli.serving_client', run_name='__main__', alter_sys=True)
