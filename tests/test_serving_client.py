"""ssd_tf.serving_client against a TF Serving test double, and ssd_tf.hardware's bfloat16 check.

The double (stdlib http.server in a thread; a grpcio server for gRPC) answers from a real
exported SavedModel (an untrained `ssd_small`, exported once per module with small limits:
max_batch_size 3, max_image_pixels 200x200) with TF Serving's documented REST formats: model
status `GET /v1/models/<name>[/versions/<v>]`, metadata `.../metadata`, `POST ...:predict` with
row (`instances` -> `predictions`) or columnar (`inputs` -> `outputs`) bodies, `{"b64": ...}`
binary values, errors as `{"error": ...}` with 400 (bad request, refused by the model) and 404
(unknown model or version). The client's detections.json and PNGs must equal `ssd_tf.detect`'s
on the same SavedModel and images.
"""
import base64
import http.server
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import threading

import cv2
import numpy as np
import pytest
import tensorflow as tf

from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import detect
from ssd_tf.export import saved_model as export
from ssd_tf import hardware
from ssd_tf import serving_client
from ssd_tf.cli import serving_client as serving_client_cli
from ssd_tf.datasets import synthetic
from conftest import sharpened_network
import conftest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASS_NAMES = list(synthetic.SYNTHETIC_CLASSES)
MAX_BATCH = 3
MAX_PIXELS = 200 * 200


def _preprocess(image):
    out = prep.preprocess_for_eval(image, None, None, out_shape=(128, 128))
    return out[0], out[3]


def _encode(image, ext='.png'):
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _image(i, size):
    return synthetic.synthetic_image(0, synthetic.TEST_FIRST_INDEX + i, size)[0]


@pytest.fixture(scope='module')
def saved_model(tmp_path_factory):
    root = tmp_path_factory.mktemp('serving_export')
    net, model = sharpened_network(1)  # scores depend on the image
    return export.export_saved_model(net, model, _preprocess, root / 'ssd', version=1,
                                     label_names=CLASS_NAMES, max_batch_size=MAX_BATCH,
                                     max_image_pixels=MAX_PIXELS)


# ---------------------------------------------------------------------------- the double
class TFServingDouble:
    """TF Serving's REST API for one model (`name`, `version`) answered by the SavedModel."""

    def __init__(self, saved_model_dir, name='ssd', version=1):
        from tensorflow.core.framework import types_pb2
        self.loaded = tf.saved_model.load(str(saved_model_dir))
        self.name, self.version, self.requests = name, version, []

        def dtype(t):
            return types_pb2.DataType.Name(tf.as_dtype(t.dtype).as_datatype_enum)

        def info(t, key):
            dims = [{'size': str(-1 if d is None else d), 'name': ''} for d in t.shape]
            return {'dtype': dtype(t), 'tensor_shape': {'dim': dims, 'unknown_rank': False},
                    'name': f'{key}:0'}
        self.signature_def = {
            sig: {'inputs': {k: info(t, k) for k, t in fn.structured_input_signature[1].items()},
                  'outputs': {k: info(t, k) for k, t in fn.structured_outputs.items()},
                  'method_name': 'tensorflow/serving/predict'}
            for sig, fn in self.loaded.signatures.items()}

    def answer(self, method, path, body):
        """`(HTTP status, JSON object)` of one request."""
        m = re.fullmatch(r'/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata|:predict)?', path)
        if not m:
            return 404, {'error': f'Malformed request: {method} {path}'}
        name, version, verb = m.groups()
        if name != self.name or (version and int(version) != self.version):
            what = f'Specific({name}, {version})' if version else f'Latest({name})'
            return 404, {'error': f'Servable not found for request: {what}'}
        if method == 'GET' and verb is None:
            return 200, {'model_version_status': [{
                'version': str(self.version), 'state': 'AVAILABLE',
                'status': {'error_code': 'OK', 'error_message': ''}}]}
        if method == 'GET' and verb == '/metadata':
            return 200, {'model_spec': {'name': name, 'signature_name': '',
                                        'version': str(self.version)},
                         'metadata': {'signature_def': {
                             'signature_def': self.signature_def,
                             '@type': 'type.googleapis.com/tensorflow.serving.SignatureDefMap'}}}
        if method != 'POST' or verb != ':predict':
            return 404, {'error': f'Malformed request: {method} {path}'}
        try:
            request = json.loads(body)
        except ValueError as e:
            return 400, {'error': f'JSON Parse error: {e}'}
        if ('instances' in request) == ('inputs' in request):
            return 400, {'error': "Missing 'inputs' or 'instances' key" if 'inputs' not in
                         request else "Both 'inputs' and 'instances' keys are specified"}
        sig = request.get('signature_name', 'serving_default')
        if sig not in self.loaded.signatures:
            return 400, {'error': f'Serving signature name: "{sig}" not found in signature def'}
        fn = self.loaded.signatures[sig]
        (key,) = fn.structured_input_signature[1]
        rows = request.get('instances')
        values = rows if rows is not None else request['inputs']
        values = values[key] if isinstance(values, dict) else values
        try:
            if fn.structured_input_signature[1][key].dtype == tf.string:
                values = [base64.b64decode(v['b64'], validate=True) for v in values]
            self.requests.append(len(values))
            out = fn(**{key: tf.constant(values)})
        except (KeyError, TypeError, ValueError) as e:
            return 400, {'error': f'Failed to process element: {e!r}'}
        except tf.errors.InvalidArgumentError as e:
            return 400, {'error': e.message}
        out = {k: v.numpy() for k, v in out.items()}
        if rows is not None:
            return 200, {'predictions': [{k: v[i].tolist() for k, v in out.items()}
                                         for i in range(len(values))]}
        return 200, {'outputs': {k: v.tolist() for k, v in out.items()}}


@pytest.fixture(scope='module')
def server(saved_model):
    double = TFServingDouble(saved_model)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self, method):
            n = int(self.headers.get('Content-Length') or 0)
            status, obj = double.answer(method, self.path, self.rfile.read(n) if n else b'')
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._reply('GET')

        def do_POST(self):  # noqa: N802
            self._reply('POST')

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield double, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
    """5 good images of 3 sizes (JPEG and PNG), a file that is not an image, an image over
    the export's pixel budget (250x250) and a truncated JPEG."""
    d = tmp_path_factory.mktemp('client_images')
    for i, (size, ext) in enumerate([(160, '.jpg'), (128, '.png'), (180, '.jpg'),
                                     (160, '.png'), (140, '.jpg')]):
        (d / f'im{i}{ext}').write_bytes(_encode(_image(i, size), ext))
    (d / 'notes.png').write_bytes(b'these are notes, not a PNG')
    (d / 'wide.png').write_bytes(_encode(_image(9, 250)))
    (d / 'zcut.jpg').write_bytes(_encode(_image(7, 160), '.jpg')[:600])
    return d


@pytest.fixture(scope='module')
def reference(saved_model, image_dir, tmp_path_factory):
    """`(paths, detect.run's JSON, output dir)` on the SavedModel."""
    fn, labels = detect.make_detector(saved_model)
    assert labels == CLASS_NAMES
    paths = detect.list_images([str(image_dir)])
    out = tmp_path_factory.mktemp('detect_out')
    return paths, detect.run(fn, paths, str(out), labels, 0.3), out


def _good(results):
    return [r for r in results if 'error' not in r]


def _assert_same(got, ref):
    """Equal detections.json lists; the floats within 1e-5 (the server runs images in
    batches, detect one by one: the convolutions may round differently)."""
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert {k: v for k, v in g.items() if k != 'detections'} == \
            {k: v for k, v in r.items() if k != 'detections'}
        assert [(d['class_id'], d['label']) for d in g['detections']] == \
            [(d['class_id'], d['label']) for d in r['detections']], g['image']
        for dg, dr in zip(g['detections'], r['detections']):
            np.testing.assert_allclose([dg['score']] + dg['box'], [dr['score']] + dr['box'],
                                       atol=1e-5)
            np.testing.assert_allclose(dg['box_pixels'], dr['box_pixels'], atol=1e-2)


# ---------------------------------------------------------------------------- REST
@pytest.mark.slow
@pytest.mark.parametrize('columnar', [False, True])
def test_rest_client_writes_what_detect_writes(server, saved_model, image_dir, reference,
                                               tmp_path, columnar):
    double, url = server
    paths, ref, ref_dir = reference
    labels, config = serving_client.read_export_info(saved_model)
    assert labels == CLASS_NAMES and config.get('max_batch_size') == MAX_BATCH
    client = serving_client.RestClient(url, 'ssd', signature='serving_default',
                                       columnar=columnar)
    serving_client.check_signature(client.signatures(), 'serving_default', url)
    del double.requests[:]
    got = serving_client.run(client, paths, str(tmp_path), labels, 0.3,
                             max_batch_size=MAX_BATCH, max_pixels=MAX_PIXELS)
    # batches within the export's limit; the three bad files are never sent
    assert double.requests == [3, 2]
    assert json.loads((tmp_path / 'detections.json').read_text()) == json.loads(json.dumps(got))
    _assert_same(_good(got), _good(ref))
    assert len(_good(got)) == 5 and sum(len(r['detections']) for r in _good(got)) > 0
    for r in _good(ref):  # the same annotated PNGs
        name = os.path.basename(r['image']) + '.png'
        a, b = (cv2.imread(str(d / name)) for d in (tmp_path, ref_dir))
        assert a.shape == b.shape and np.mean(a != b) < 1e-3, name
    errors = {os.path.basename(r['image']): r['error'] for r in got if 'error' in r}
    ref_errors = {os.path.basename(r['image']): r['error'] for r in ref if 'error' in r}
    assert errors['notes.png'] == ref_errors['notes.png']
    assert errors['notes.png'].startswith('not a JPEG/PNG/GIF/BMP file')
    assert errors['zcut.jpg'] == ref_errors['zcut.jpg'] == \
        'truncated JPEG (no end-of-image marker)'
    assert errors['wide.png'] == '250x250 pixels is over the limit of 40000'  # from its header


@pytest.mark.slow
def test_server_refusals_split_the_request_and_name_the_image(server, reference, tmp_path):
    """Without the export's limits the client sends 200-MP-budget images in batches of 10:
    the server refuses the batch size (the client then sends at most 3) and the over-budget
    image (re-sent alone, it gets the server's reason); the other images still match."""
    double, url = server
    paths, ref, _ = reference
    del double.requests[:]
    got = serving_client.run(serving_client.RestClient(url), paths, str(tmp_path), CLASS_NAMES,
                             0.3, max_batch_size=10)
    # 6 sendable images: refused as a batch of 6, then 3 + 3, where the second 3 (with the
    # 250x250 image) is refused and re-sent one by one
    assert double.requests == [6, 3, 3, 1, 1, 1]
    errors = {os.path.basename(r['image']): r['error'] for r in got if 'error' in r}
    assert errors['wide.png'] == ('server refused: image 0 of the batch (0-based): 250x250 '
                                  'pixels is over the limit of 40000')
    _assert_same(_good(got), _good(ref))


@pytest.mark.slow
def test_cli_end_to_end_and_its_errors(server, saved_model, image_dir, reference, tmp_path,
                                       capsys):
    _, url = server
    _, ref, _ = reference
    out = tmp_path / 'out'
    rc = serving_client_cli.main(['--server', url, '--images', str(image_dir), '--output_dir',
                              str(out), '--export_dir', str(saved_model)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert '5 images' in printed.out and '3 skipped' in printed.out
    _assert_same(_good(json.loads((out / 'detections.json').read_text())), _good(ref))

    def fails(*args):
        rc = serving_client_cli.main(['--images', str(image_dir), '--output_dir',
                                  str(tmp_path / 'x')] + list(args))
        err = capsys.readouterr().err
        assert rc == 2, err
        return err
    assert "Servable not found for request: Latest(other)" in fails(
        '--server', url, '--model_name', 'other')
    assert "Specific(ssd, 7)" in fails('--server', url, '--model_version', '7')
    assert "no signature 'nope'" in fails('--server', url, '--signature', 'nope')
    assert "not one 'image_bytes' string input" in fails('--server', url, '--signature',
                                                         'serving_images')
    closed = f'http://127.0.0.1:{_free_port()}'
    assert 'cannot reach the server' in fails('--server', closed)
    assert '--max_batch_size=0 must be positive' in fails('--server', url,
                                                          '--max_batch_size', '0')


@pytest.mark.slow
def test_oversize_files_are_not_read_and_a_stop_keeps_the_json(server, reference, tmp_path):
    _, url = server
    paths, ref, _ = reference
    got = serving_client.run(serving_client.RestClient(url), paths[:2], str(tmp_path / 'a'),
                             CLASS_NAMES, max_batch_size=MAX_BATCH, max_file_bytes=2000)
    sizes = [os.path.getsize(p) for p in paths[:2]]
    assert [r.get('error') for r in got] == [
        f"the file has {s} bytes, over --max_file_bytes=2000" if s > 2000 else None
        for s in sizes]
    assert any(s > 2000 for s in sizes)

    class DiesAfterOne(serving_client.RestClient):
        calls = 0

        def predict(self, encoded):
            DiesAfterOne.calls += 1
            if DiesAfterOne.calls > 1:
                raise serving_client.ServingError(503, 'the server is shutting down', url)
            return super().predict(encoded)
    with pytest.raises(serving_client.ServingError, match='503: the server is shutting down'):
        serving_client.run(DiesAfterOne(url), paths, str(tmp_path / 'b'), CLASS_NAMES,
                           max_batch_size=2, max_pixels=MAX_PIXELS)
    saved = json.loads((tmp_path / 'b' / 'detections.json').read_text())
    _assert_same(saved, _good(ref)[:2])  # the first batch of 2, kept


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- gRPC
@pytest.mark.slow
def test_grpc_client_writes_what_detect_writes(server, saved_model, reference, tmp_path):
    conftest.import_extra('tensorflow_serving', 'serving')  # CI installs the extra
    import grpc
    from concurrent import futures
    from tensorflow_serving.apis import get_model_metadata_pb2
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    double, _ = server
    paths, ref, _ = reference

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802
            if request.model_spec.name != 'ssd':
                context.abort(grpc.StatusCode.NOT_FOUND, 'Servable not found for request: '
                              f'Latest({request.model_spec.name})')
            fn = double.loaded.signatures[request.model_spec.signature_name or
                                          'serving_default']
            try:
                out = fn(**{k: tf.constant(tf.make_ndarray(v))
                            for k, v in request.inputs.items()})
            except tf.errors.InvalidArgumentError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
            response = predict_pb2.PredictResponse()
            for k, v in out.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
            return response

        def GetModelMetadata(self, request, context):  # noqa: N802
            from tensorflow.core.framework import types_pb2
            from tensorflow.core.protobuf import meta_graph_pb2
            defs = get_model_metadata_pb2.SignatureDefMap()
            for sig, d in double.signature_def.items():
                proto = meta_graph_pb2.SignatureDef(method_name=d['method_name'])
                for side in ('inputs', 'outputs'):
                    for k, t in d[side].items():
                        getattr(proto, side)[k].name = t['name']
                        getattr(proto, side)[k].dtype = types_pb2.DataType.Value(t['dtype'])
                defs.signature_def[sig].CopyFrom(proto)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = 'ssd'
            response.metadata['signature_def'].Pack(defs)
            return response

    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), grpc_server)
    port = grpc_server.add_insecure_port('127.0.0.1:0')
    grpc_server.start()
    try:
        client = serving_client.GrpcClient(f'127.0.0.1:{port}', 'ssd')
        serving_client.check_signature(client.signatures(), 'serving_default', 'grpc')
        got = serving_client.run(client, paths, str(tmp_path), CLASS_NAMES, 0.3,
                                 max_batch_size=10)
        _assert_same(_good(got), _good(ref))
        errors = {os.path.basename(r['image']): r['error'] for r in got if 'error' in r}
        assert errors['wide.png'].startswith('server refused: image 0 of the batch')
        with pytest.raises(serving_client.ServingError, match='NOT_FOUND.*Latest\\(other\\)'):
            serving_client.GrpcClient(f'127.0.0.1:{port}', 'other').predict([b'x'])
    finally:
        grpc_server.stop(None)


def test_grpc_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorflow_serving', None)
    monkeypatch.setitem(sys.modules, 'tensorflow_serving.apis', None)
    with pytest.raises(ValueError, match=r"tensorflow-serving-api.*\.\[serving\]"):
        serving_client.GrpcClient('localhost:8500')


# ---------------------------------------------------------------------------- bfloat16
CPUINFO = textwrap.dedent("""\
    processor\t: 0
    vendor_id\t: AuthenticAMD
    model name\t: AMD EPYC
    flags\t\t: fpu sse2 avx2 avx512f {extra}
    bogomips\t: 4000
    """)


@pytest.mark.parametrize('extra, status', [('avx512_bf16 avx512_vnni', 'yes'),
                                           ('amx_bf16 amx_tile', 'yes'),
                                           ('amx_bf16', 'no'),  # no tile unit
                                           ('avx512_vnni', 'no')])
def test_cpu_bfloat16_from_cpuinfo(tmp_path, extra, status):
    path = tmp_path / 'cpuinfo'
    path.write_text(CPUINFO.format(extra=extra))
    got = hardware.cpu_bfloat16(str(path), system='Linux', environ={})
    assert (got.status, got.device) == (status, 'CPU')
    assert str(path) in got.reason


def test_cpu_bfloat16_unknown_or_capped(tmp_path):
    missing = hardware.cpu_bfloat16(str(tmp_path / 'none'), system='Linux', environ={})
    assert missing.status == 'unknown' and 'cannot read' in missing.reason
    arm = tmp_path / 'arm'
    arm.write_text('processor\t: 0\nFeatures\t: fp asimd bf16\n')
    assert hardware.cpu_bfloat16(str(arm), system='Linux', environ={}).status == 'unknown'
    mac = hardware.cpu_bfloat16(str(arm), system='Darwin', environ={})
    assert mac.status == 'unknown' and 'Darwin' in mac.reason
    has = tmp_path / 'has'
    has.write_text(CPUINFO.format(extra='avx512_bf16'))
    capped = hardware.cpu_bfloat16(str(has), 'Linux', {'ONEDNN_MAX_CPU_ISA': 'avx512_core'})
    assert capped.status == 'no' and 'ONEDNN_MAX_CPU_ISA=AVX512_CORE' in capped.reason
    assert hardware.cpu_bfloat16(str(has), 'Linux', {'ONEDNN_MAX_CPU_ISA': 'ALL'}).status == 'yes'
    assert hardware.gpu_bfloat16((8, 6)).status == 'yes'
    assert hardware.gpu_bfloat16((7, 5)).status == 'no'
    assert hardware.gpu_bfloat16(None).status == 'unknown'
    assert hardware.bfloat16_support('tpu').status == 'yes'


def test_check_bfloat16_refuses_allows_or_warns():
    flag = '--mixed_precision=mixed_bfloat16'
    lacks = hardware.Support('no', 'CPU', 'no avx512_bf16 or amx_bf16 in the flags')
    with pytest.raises(hardware.SlowPrecisionError) as err:
        hardware.check_bfloat16(flag, support=lacks)
    for needle in (flag, '5x slower', '0.99 vs 5.02', '0.32 vs 1.47', '--allow_slow_bfloat16'):
        assert needle in str(err.value)
    assert 'will be slow' in hardware.check_bfloat16(flag, True, support=lacks)
    unknown = hardware.Support('unknown', 'CPU', 'cannot read /proc/cpuinfo')
    assert 'unknown' in hardware.check_bfloat16(flag, support=unknown)
    assert hardware.check_bfloat16(flag, support=hardware.Support('yes', 'CPU', '')) is None


@pytest.mark.parametrize('flag, status, policy', [
    ('auto', 'yes', 'mixed_bfloat16'), ('auto', 'no', 'float32'),
    ('auto', 'unknown', 'float32'),  # not gambled on: 5x slower without the hardware
    ('float32', 'yes', 'float32'), (None, 'yes', 'float32'),  # None: an older run's float32
    ('mixed_float16', 'no', 'mixed_float16'), ('mixed_bfloat16', 'no', 'mixed_bfloat16'),
])
def test_choose_precision(flag, status, policy):
    support = hardware.Support(status, 'CPU', 'the reason')
    got, why = hardware.choose_precision(flag, support)
    assert got == policy
    if flag == 'auto':  # the run's first screen says why, naming the flag and the device
        assert why.startswith('--mixed_precision=auto') and 'CPU' in why and 'the reason' in why
    with pytest.raises(ValueError, match='--mixed_precision=float64'):
        hardware.choose_precision('float64', support)


# The entry points in a subprocess each (their absl flags clash with eval_ssd's in this
# process), with /proc/cpuinfo replaced; stopped right after the check, before any model.
_ENTRY = textwrap.dedent("""\
    import json, sys
    from ssd_tf import hardware
    script = sys.argv[1]
    import keras
    class Reached(Exception):
        pass
    def stop(*args, **kwargs):
        raise Reached(keras.mixed_precision.global_policy().name)
    if script == 'train':
        import train_ssd as mod
        mod.load_training_data = stop
    else:
        import export_savedmodel as mod
        from ssd_tf import builder
        builder.load_model = stop
    results = []
    for cpuinfo, argv in json.loads(sys.argv[2]):
        hardware.CPUINFO_PATH = cpuinfo
        mod.FLAGS.unparse_flags()
        mod.FLAGS([script] + argv)
        keras.mixed_precision.set_dtype_policy('float32')
        print('CASE', file=sys.stderr, flush=True)
        try:
            results.append(['returned', mod.main([script])])
        except Reached as e:
            results.append(['reached', str(e)])
        except Exception as e:  # noqa: BLE001 - ValueError, absl's UsageError
            results.append(['refused', f'{type(e).__name__}: {e}'])
    print('RESULTS' + json.dumps(results))
    """)


@pytest.mark.slow
@pytest.mark.parametrize('script', ['train', 'export'])
def test_entry_points_refuse_slow_bfloat16_unless_allowed(tmp_path, script):
    lacks, has = tmp_path / 'lacks', tmp_path / 'has'
    lacks.write_text(CPUINFO.format(extra='avx512_vnni'))
    has.write_text(CPUINFO.format(extra='avx512_bf16'))
    bf16 = ['--mixed_precision=mixed_bfloat16']
    common = ([f'--train_dir={tmp_path / "run"}'] if script == 'train' else
              [f'--checkpoint_path={tmp_path}', f'--output_dir={tmp_path / "out"}'])
    cases = [(str(lacks), common + c) for c in
             (bf16, bf16 + ['--allow_slow_bfloat16'], [], ['--allow_slow_bfloat16'])]
    cases += [(str(has), common + bf16), (str(has), common)]
    out = subprocess.run(  # one process for all cases: the TensorFlow import is the cost
        [sys.executable, '-c', _ENTRY, script, json.dumps(cases)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != 'ONEDNN_MAX_CPU_ISA'})
    line = [x for x in out.stdout.splitlines() if x.startswith('RESULTS')]
    assert line, out.stderr[-3000:]
    refused, allowed, plain, stray, fast, default = json.loads(line[0][len('RESULTS'):])
    logs = out.stderr.split('CASE\n')[1:]  # the stderr of each case, in order
    assert len(logs) == len(cases)
    if script == 'train':  # main prints the error and returns 2
        assert refused == ['returned', 2]
        assert re.search(r'train_ssd.py: error: --mixed_precision=mixed_bfloat16: this CPU has '
                         r'no bfloat16 .*5x slower.*--allow_slow_bfloat16', logs[0])
    else:
        assert refused[0] == 'refused' and '--allow_slow_bfloat16' in refused[1]
        assert 'SlowPrecisionError' in refused[0] + refused[1] and '5x slower' in refused[1]
    assert stray[0] == 'refused' and 'applies to --mixed_precision' in stray[1]
    assert allowed == ['reached', 'mixed_bfloat16'] and 'will be slow' in logs[1]
    assert plain == ['reached', 'float32']
    assert fast == ['reached', 'mixed_bfloat16'] and 'warning' not in logs[4]
    if script == 'train':  # --mixed_precision=auto, the default: bfloat16 where it is fast
        assert default == ['reached', 'mixed_bfloat16']
        assert 'precision: mixed_bfloat16 (--mixed_precision=auto: this CPU computes' in logs[5]
        assert 'precision: float32 (--mixed_precision=auto: bfloat16 arithmetic is no' in logs[2]
    else:  # a SavedModel exports in float32 unless asked
        assert default == ['reached', 'float32']
