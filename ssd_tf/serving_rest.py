"""TF Serving's REST API for the SSD export, on the standard library only (no TensorFlow,
no numpy): what a REST client of the served model needs, importable anywhere Python runs.

  from ssd_tf.serving_rest import RestClient
  client = RestClient('http://localhost:8501', 'ssd')
  out = client.predict([open('photo.jpg', 'rb').read()])  # {'detection_boxes': [[...]], ...}

`RestClient.predict` sends the encoded images to the export's `serving_default` signature
(input `image_bytes`, binary values as `{"b64": ...}`) and returns the outputs as nested
Python lists (`detection_boxes [B][K][4]`, `detection_scores [B][K]`, `detection_classes
[B][K]`, `num_detections [B]`). `ssd_tf.serving_client` (the command that writes PNGs and
detections.json, and the gRPC client) builds on it.
"""
import base64
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request

# The SavedModel's names (ssd_tf.export.BYTES_SIGNATURE, BYTES_INPUT, OUTPUT_KEYS; a test
# checks they agree): repeated here because ssd_tf.export imports TensorFlow.
BYTES_SIGNATURE = 'serving_default'
BYTES_INPUT = 'image_bytes'
OUTPUT_KEYS = ('detection_boxes', 'detection_classes', 'detection_scores', 'num_detections')
# A response is ~10 KB of JSON per image (100 detections); more is not a TF Serving answer.
MAX_RESPONSE_BYTES = 64 << 20


class ServingError(Exception):
    """A failed call: `status` (HTTP status, gRPC code name, or None when the server was not
    reached), `message` (the server's error text) and the URL/target."""

    def __init__(self, status, message, where):
        super().__init__(f"{where}: {status or 'no answer'}: {message}")
        self.status, self.message, self.where = status, message, where

    @property
    def refused(self):
        """True for a refusal of the request's content (HTTP 400, INVALID_ARGUMENT)."""
        return self.status in (400, 'INVALID_ARGUMENT')


class RestClient:
    """TF Serving's REST API at `server` (`http://host:8501`) for `model_name` [version]."""

    def __init__(self, server, model_name='ssd', version=None, signature=BYTES_SIGNATURE,
                 timeout=60., columnar=False):
        server = server if '://' in server else f'http://{server}'
        parts = urllib.parse.urlsplit(server)
        if parts.scheme not in ('http', 'https') or not parts.netloc:
            raise ValueError(f"--server={server}: expected http://host:port (REST) or "
                             f"host:port with --protocol=grpc")
        self.base = f"{server.rstrip('/')}/v1/models/{urllib.parse.quote(model_name)}"
        if version is not None:
            self.base += f'/versions/{int(version)}'
        self.signature, self.timeout, self.columnar = signature, timeout, columnar
        self.input_name = BYTES_INPUT

    def _call(self, url, body=None):
        data = None if body is None else json.dumps(body).encode('utf-8')
        request = urllib.request.Request(url, data=data, method='GET' if body is None else 'POST',
                                         headers={'Content-Type': 'application/json'})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
            if len(raw) > MAX_RESPONSE_BYTES:
                raise ServingError('bad response', f"the response is over {MAX_RESPONSE_BYTES} "
                                   f"bytes", url)
            return json.loads(raw.decode('utf-8'))
        except urllib.error.HTTPError as e:
            raw = e.read(1 << 20).decode('utf-8', 'replace')
            try:
                message = json.loads(raw)['error']
            except (ValueError, KeyError, TypeError):
                message = raw.strip()[:1000] or e.reason
            raise ServingError(e.code, message, url) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, 'reason', e)
            raise ServingError(None, f"cannot reach the server ({reason})", url) from None
        except ValueError as e:  # a body that is not JSON (UnicodeDecodeError included)
            raise ServingError('bad response', f"not TF Serving's JSON ({e})", url) from None

    def status(self):
        """The model status JSON (`GET /v1/models/<name>`)."""
        return self._call(self.base)

    def signatures(self):
        """`{signature name: {'inputs': {name: dtype}, 'outputs': {name: dtype}}}` from the
        model metadata (`GET .../metadata`)."""
        meta = self._call(f'{self.base}/metadata')
        try:
            defs = meta['metadata']['signature_def']['signature_def']
            return {name: {side: {k: v.get('dtype') for k, v in d.get(side, {}).items()}
                           for side in ('inputs', 'outputs')} for name, d in defs.items()}
        except (KeyError, TypeError, AttributeError) as e:
            raise ServingError('bad response', f"no signature_def in the metadata ({e!r})",
                               f'{self.base}/metadata') from None

    def predict(self, encoded):
        """Encoded images (list of bytes) -> `{output name: nested list [B, ...]}` (floats)."""
        values = [{'b64': base64.b64encode(d).decode('ascii')} for d in encoded]
        body = {'signature_name': self.signature}
        if self.columnar:
            body['inputs'] = {self.input_name: values}
        else:
            body['instances'] = values
        url = f'{self.base}:predict'
        out = self._call(url, body)
        try:
            if self.columnar:
                return {k: list(v) for k, v in out['outputs'].items()}
            rows = out['predictions']
            return {k: [r[k] for r in rows] for k in rows[0]}
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise ServingError('bad response', f"unexpected predict response ({e!r}): "
                               f"{json.dumps(out)[:300]}", url) from None
