"""The REST client on the standard library (`ssd_tf.serving_rest`): importing it loads neither
TensorFlow nor numpy, it speaks TF Serving's REST format to a stand-in server, and its names
are the SavedModel's."""
import base64
import http.server
import json
import pathlib
import subprocess
import sys
import threading

import pytest

from ssd_tf import serving_rest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_importing_the_rest_client_imports_no_tensorflow_and_no_numpy():
    code = ("import sys; from ssd_tf.serving_rest import RestClient; "
            "print(sorted(m for m in ('tensorflow', 'numpy', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={'PYTHONPATH': str(REPO), 'PATH': ''})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'


def test_names_are_the_saved_models():
    from ssd_tf.export import saved_model as export
    assert serving_rest.BYTES_SIGNATURE == export.BYTES_SIGNATURE
    assert serving_rest.BYTES_INPUT == export.BYTES_INPUT
    assert tuple(serving_rest.OUTPUT_KEYS) == tuple(export.OUTPUT_KEYS)


@pytest.fixture
def stand_in_server():
    """A TF Serving stand-in: records the predict body, answers one detection per image."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
            seen.append((self.path, body))
            rows = [{'detection_boxes': [[.1, .2, .3, .4]], 'detection_scores': [.9],
                     'detection_classes': [1.], 'num_detections': 1.}
                    for _ in body['instances']]
            data = json.dumps({'predictions': rows}).encode()
            self.send_response(200)
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.HTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}', seen
    server.shutdown()


def test_predict_sends_b64_rows_and_returns_lists(stand_in_server):
    url, seen = stand_in_server
    client = serving_rest.RestClient(url, 'ssd', version=2)
    out = client.predict([b'\xff\xd8abc', b'png!'])
    path, body = seen[0]
    assert path == '/v1/models/ssd/versions/2:predict'
    assert body['signature_name'] == 'serving_default'
    # base64 of b'png!' is 'cG5nIQ=='.
    assert body['instances'][1] == {'b64': 'cG5nIQ=='}
    assert base64.b64decode(body['instances'][0]['b64']) == b'\xff\xd8abc'
    assert out['detection_scores'] == [[.9], [.9]] and out['num_detections'] == [1., 1.]
    assert out['detection_boxes'][1] == [[.1, .2, .3, .4]]


def test_an_unreachable_server_is_a_serving_error_naming_the_url():
    client = serving_rest.RestClient('http://127.0.0.1:9', 'ssd', timeout=5)
    with pytest.raises(serving_rest.ServingError, match='127.0.0.1:9.*cannot reach'):
        client.predict([b'x'])
