"""Export tests: SavedModel signatures (fresh process, dynamic batch, REST JSON, corrupt bytes),
saved_model_cli, export_savedmodel.py flags, TFLite variants and ssd_tf.detect.

One `ssd_small` (5 classes, 128x128, 1364 anchors) with seeded random weights is exported once
per module. Its class-head kernels are scaled by HEAD_SCALE and the background biases raised by
BACKGROUND_BIAS so that scores depend strongly on the image: some detections score > 0.5,
many stay low (raw random heads give ~uniform 0.2 scores, where NMS order is arbitrary).
"""
import base64
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import tensorflow as tf

from nets import nets_factory
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import evaluation
from ssd_tf.export import saved_model as export
from ssd_tf.export import tflite as export_tflite
from ssd_tf.export import tflite_runtime
from ssd_tf import metrics
from ssd_tf.datasets import synthetic
from conftest import sharpened_network
from test_images import gif_bytes, png_claiming

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASS_NAMES = list(synthetic.SYNTHETIC_CLASSES)
HEAD_SCALE = 5.
BACKGROUND_BIAS = 4.
IMG = 128  # ssd_small input
MAX_DET = 100
# Quantised variants are judged by VOC mAP (VOC12) of their detections against the float
# SavedModel's detections with score >= GT_SCORE taken as ground truth, on NUM_EVAL images.
# Margins: float16 and dynamic-range weights keep float activations (near-identical boxes);
# int8 quantises the network's weights and activations (pre-processing, box decoding and NMS
# stay float): measured 1.0 / 0.998 / 0.996 / 0.985 for float32 / float16 / dynamic / int8.
# On a trained ssd_small (bench/bench_export.py --accuracy_checkpoint) int8 loses 0.002
# VOC07 mAP (0.832 -> 0.830, 200 synthetic test images).
GT_SCORE = 0.5
NUM_EVAL = 16
MIN_MAP = {'float32': 0.99, 'float16': 0.97, 'dynamic': 0.97, 'int8': 0.9}


def _preprocess(image):
    # export_savedmodel.py's and detect's pre-processing: the one resize of every runtime
    # (images.resize_to_input), then the eval pre-processing.
    return prep.image_preprocess_fn((IMG, IMG))(image)


def _images(n, first=0, size=IMG):
    return [synthetic.synthetic_image(0, synthetic.TEST_FIRST_INDEX + first + i, size)[0]
            for i in range(n)]


def _encode(image, ext='.png'):
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


_BUILT = {}


def build_export(tmp_path_factory):
    """The exports of this module, built once per session (tests/test_mobile.py shares them)."""
    if not _BUILT:
        _BUILT.update(_build_export(tmp_path_factory))
    return _BUILT


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    return build_export(tmp_path_factory)


def _build_export(tmp_path_factory):
    root = tmp_path_factory.mktemp('export')
    net, model = sharpened_network(0, 'ssd_small', HEAD_SCALE, BACKGROUND_BIAS)
    # A training directory as train_ssd.py writes it.
    train_dir = root / 'train'
    ckpt = tf.train.Checkpoint(model=model, global_step=tf.Variable(7, dtype=tf.int64))
    tf.train.CheckpointManager(ckpt, str(train_dir), 1, checkpoint_name='ckpt').save()
    (train_dir / 'config.json').write_text(json.dumps(dict(
        model_name='ssd_small', num_classes=5, image_shape=[IMG, IMG],
        label_names=CLASS_NAMES)))
    synthetic.SYNTHETIC_LABEL_MAP.write(str(train_dir / 'labels.txt'))
    sm_dir = export.export_saved_model(net, model, _preprocess, root / 'serving', version=1,
                                       label_names=CLASS_NAMES, max_detections=MAX_DET)
    calib = export_tflite.representative_images(_images(20, first=100), (IMG, IMG))
    tfl = export_tflite.export_tflite(net, model, lambda im: _preprocess(im)[0], root / 'tflite',
                                      export_tflite.TFLITE_QUANTIZATIONS, calib,
                                      max_detections=MAX_DET, label_names=CLASS_NAMES)
    # The same network with TFLite_Detection_PostProcess (tests/test_mobile.py).
    tfl_op = export_tflite.export_tflite(net, model, lambda im: _preprocess(im)[0],
                                         root / 'tflite_op', ['float32'],
                                         max_detections=MAX_DET, label_names=CLASS_NAMES,
                                         postprocess_op='detection_postprocess')
    return dict(root=root, net=net, model=model, train_dir=train_dir, saved_model=sm_dir,
                tflite=tfl, tflite_op=tfl_op['float32'], keras_detect=evaluation.keras_detector(model, net,
                                                                   keep_top_k=MAX_DET))


def _reference(exported, images):
    """In-process detections of the Keras model on RGB uint8 images (warp resize)."""
    x = tf.stack([_preprocess(im)[0] for im in images])
    det = exported['keras_detect'](x)
    return {'detection_boxes': det['bboxes'].numpy(), 'detection_scores': det['scores'].numpy(),
            'detection_classes': det['classes'].numpy().astype(np.float32),
            'num_detections': det['num_detections'].numpy().astype(np.float32)}


def _assert_same(a, b, atol=1e-4):
    np.testing.assert_array_equal(a['num_detections'], b['num_detections'])
    np.testing.assert_array_equal(a['detection_classes'], b['detection_classes'])
    np.testing.assert_allclose(a['detection_scores'], b['detection_scores'], atol=atol)
    np.testing.assert_allclose(a['detection_boxes'], b['detection_boxes'], atol=atol)


def _assert_same_set(a, b, atol):
    """The same detections up to the order of near-equal scores (float rounding differs
    between TFLite and TF kernels): equal counts, sorted scores close, and each detection
    of `a` has one of `b` with the same class and a box within atol."""
    np.testing.assert_array_equal(a['num_detections'], b['num_detections'])
    n = int(a['num_detections'][0])
    np.testing.assert_allclose(a['detection_scores'][0], b['detection_scores'][0], atol=atol)
    for box, cls in zip(a['detection_boxes'][0, :n], a['detection_classes'][0, :n]):
        close = np.abs(b['detection_boxes'][0, :n] - box).max(-1) <= atol
        assert (close & (b['detection_classes'][0, :n] == cls)).any(), (box, cls)


FRESH_PROCESS = textwrap.dedent('''
    import base64, json, sys
    import numpy as np
    import tensorflow as tf
    path, request_file, out_file = sys.argv[1:4]
    loaded = tf.saved_model.load(path)
    sigs = loaded.signatures
    body = json.load(open(request_file))
    # TF Serving's REST row format for a single named input: each instance is its value.
    data = [base64.b64decode(inst['b64']) for inst in body['instances']]
    images = np.load(out_file + '.in.npy')
    res = {}
    for k, v in sigs['serving_default'](image_bytes=tf.constant(data)).items():
        res['bytes/' + k] = v.numpy()
    for k, v in sigs['serving_images'](images=tf.constant(images)).items():
        res['images/' + k] = v.numpy()
    for k, v in sigs['serving_images'](images=tf.constant(images[:1])).items():
        res['images1/' + k] = v.numpy()
    res['inputs'] = np.array([str(sigs[s].structured_input_signature) for s in sorted(sigs)])
    np.savez(out_file, **res)
''')


@pytest.mark.slow
def test_saved_model_in_fresh_process_matches_in_process(exported, tmp_path):
    images = _images(3)
    request = {'instances': [{'b64': base64.b64encode(_encode(im)).decode()} for im in images]}
    (tmp_path / 'request.json').write_text(json.dumps(request))
    np.save(tmp_path / 'out.npz.in.npy', np.stack(images))
    script = tmp_path / 'client.py'
    script.write_text(FRESH_PROCESS)
    env = dict(os.environ, PYTHONPATH='')  # no project imports in the serving process
    subprocess.run([sys.executable, str(script), exported['saved_model'],
                    str(tmp_path / 'request.json'), str(tmp_path / 'out.npz')],
                   check=True, cwd=tmp_path, env=env, capture_output=True)
    res = np.load(tmp_path / 'out.npz')
    ref = _reference(exported, images)
    assert ref['num_detections'].min() > 0 and (ref['detection_scores'] > GT_SCORE).any()
    for prefix in ('bytes/', 'images/'):
        _assert_same({k: res[prefix + k] for k in export.OUTPUT_KEYS}, ref)
    _assert_same({k: res['images1/' + k] for k in export.OUTPUT_KEYS},
                 {k: v[:1] for k, v in ref.items()})
    assert 'image_bytes' in res['inputs'][0] and 'images' in res['inputs'][1]


@pytest.mark.slow
def test_string_batch_of_different_sizes_equals_one_by_one(exported):
    fn = tf.saved_model.load(exported['saved_model']).signatures['serving_default']
    images = [_images(1, 5, size=s)[0] for s in (96, 160, 200)]
    images[1] = cv2.resize(images[1], (240, 160))  # non-square
    data = [_encode(images[0], '.jpg'), _encode(images[1]), _encode(images[2], '.bmp')]
    batch = {k: v.numpy() for k, v in fn(image_bytes=tf.constant(data)).items()}
    assert batch['detection_boxes'].shape == (3, MAX_DET, 4)
    for i, d in enumerate(data):
        one = {k: v.numpy() for k, v in fn(image_bytes=tf.constant([d])).items()}
        _assert_same(one, {k: v[i:i + 1] for k, v in batch.items()}, atol=1e-5)
    # Boxes are relative to the original image: warp resize maps [0, 1] onto it, so the
    # in-process model on the decoded, resized image gives the same boxes.
    decoded = [tf.io.decode_image(d, channels=3).numpy() for d in data]
    _assert_same(batch, _reference(exported, decoded))
    n = batch['num_detections'].astype(int)
    assert ((batch['detection_boxes'] >= 0) & (batch['detection_boxes'] <= 1)).all()
    assert (batch['detection_classes'][0, :n[0]] >= 1).all()
    assert (batch['detection_classes'][0, n[0]:] == 0).all()


@pytest.mark.slow
def test_corrupt_bytes_raise_invalid_argument_naming_the_image(exported):
    fn = tf.saved_model.load(exported['saved_model']).signatures['serving_default']
    good = _encode(_images(1)[0], '.jpg')
    with pytest.raises(tf.errors.InvalidArgumentError, match=r'image 1 of the batch.*JPEG/PNG'):
        fn(image_bytes=tf.constant([good, b'not an image at all']))
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(image_bytes=tf.constant([good[:len(good) // 3]]))  # truncated JPEG body


@pytest.mark.slow
def test_saved_model_cli_lists_both_signatures(exported):
    cmd = ([sys.executable, '-m', 'tensorflow.python.tools.saved_model_cli'])
    out = subprocess.run(cmd + ['show', '--dir', exported['saved_model'], '--all'],
                         capture_output=True, text=True, check=True).stdout
    assert "signature_def['serving_default']" in out
    assert "signature_def['serving_images']" in out
    assert 'image_bytes' in out and 'DT_STRING' in out and 'DT_UINT8' in out
    for key in export.OUTPUT_KEYS:
        assert key in out


@pytest.mark.slow
def test_label_map_and_config_in_assets(exported):
    assets = pathlib.Path(exported['saved_model']) / 'assets'
    assert (assets / 'labels.txt').read_text().splitlines()[:2] == ['0:none', '1:circle']
    # One name per line, no background: line i = the TFLite models' 0-based class i.
    assert (assets / 'labels_tflite.txt').read_text().split() == CLASS_NAMES
    cfg = json.loads((assets / 'export_config.json').read_text())
    assert cfg['num_classes'] == 5 and cfg['image_shape'] == [IMG, IMG]
    loaded = tf.saved_model.load(exported['saved_model'])
    assert loaded.labels_file.asset_path.numpy().decode().endswith('labels.txt')


@pytest.mark.slow
def test_export_refuses_to_overwrite_a_version(exported):
    net, model = exported['net'], exported['model']
    with pytest.raises(FileExistsError, match='--overwrite'):
        export.export_saved_model(net, model, _preprocess, exported['root'] / 'serving', 1)
    with pytest.raises(ValueError, match='--version'):
        export.version_dir('x', 0)
    with pytest.raises(ValueError, match='label map has 2 classes'):
        export.export_saved_model(net, model, _preprocess, exported['root'] / 'serving', 9,
                                  label_names=['a', 'b'])


@pytest.mark.slow
def test_checkpoint_loading_checks_flags_against_config(exported):
    from ssd_tf import builder
    with pytest.raises(ValueError, match='--num_classes=21.*num_classes=5'):
        builder.load_model(exported['train_dir'], num_classes=21)
    with pytest.raises(ValueError, match='--model_name=ssd_300_vgg'):
        builder.load_model(exported['train_dir'], model_name='ssd_300_vgg')
    built = builder.load_model(exported['train_dir'])
    assert built.label_names == CLASS_NAMES and built.path.endswith('ckpt-1')
    for a, b in zip(built.model.weights, exported['model'].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
def test_export_script_end_to_end(exported, tmp_path):
    out = tmp_path / 'serving'
    cmd = [sys.executable, str(REPO / 'export_savedmodel.py'),
           f'--checkpoint_path={exported["train_dir"]}', f'--output_dir={out}', '--version=3',
           f'--max_detections={MAX_DET}', '--max_batch_size=8']
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    images = _images(2, 9)
    fn = tf.saved_model.load(str(out / '3')).signatures['serving_images']
    got = {k: v.numpy() for k, v in fn(images=tf.constant(np.stack(images))).items()}
    _assert_same(got, _reference(exported, images))
    cfg = json.loads((out / '3' / 'assets' / 'export_config.json').read_text())
    assert (cfg['max_batch_size'], cfg['max_image_pixels']) == (8, 200_000_000)
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert again.returncode != 0 and 'already exists' in again.stderr + again.stdout
    # --overwrite publishes the SavedModel and its TFLite file together, nothing left over.
    subprocess.run(cmd + ['--overwrite', '--tflite'], check=True, cwd=REPO, capture_output=True)
    assert (out / '3' / 'tflite' / 'model_float32.tflite').is_file()
    assert sorted(os.listdir(out)) == ['3']


def _one_based(out):
    """Raw TFLite outputs (classes 0-based, as the task APIs expect) with the SavedModel's
    1-based class ids on the live rows (padding rows stay 0)."""
    out = dict(out)
    live = np.arange(out['detection_classes'].shape[1]) < out['num_detections'][0]
    out['detection_classes'] = np.where(live, out['detection_classes'] + 1, 0.)
    return out


def _agreement_map(detections, reference):
    """VOC12 mAP of `detections` against reference detections with score >= GT_SCORE."""
    ev = metrics.VOCEvaluator(5, CLASS_NAMES)
    for i, (d, r) in enumerate(zip(detections, reference)):
        gt = r['detection_scores'] >= GT_SCORE
        ev.add_image(i, r['detection_boxes'][gt], r['detection_classes'][gt].astype(int),
                     det_boxes=d['detection_boxes'], det_scores=d['detection_scores'],
                     det_classes=d['detection_classes'].astype(int), image_shape=(IMG, IMG))
    return ev.evaluate()['map12']


@pytest.mark.slow
@pytest.mark.parametrize('variant', export_tflite.TFLITE_QUANTIZATIONS)
def test_tflite_variants_match_saved_model(exported, variant):
    images = _images(NUM_EVAL, 30)
    ref = _reference(exported, images)
    det = tflite_runtime.TFLiteDetector(exported['tflite'][variant])
    assert det.input_shape == (1, IMG, IMG, 3)
    outs = [_one_based(det.run_resized(im[None])) for im in images]
    assert list(outs[0]) == list(export.OUTPUT_KEYS)
    if variant == 'float32':
        for i, o in enumerate(outs):
            _assert_same_set(o, {k: v[i:i + 1] for k, v in ref.items()}, atol=2e-4)
    refs, dets = [], []
    for i, o in enumerate(outs):
        n, m = int(ref['num_detections'][i]), int(o['num_detections'][0])
        refs.append({k: ref[k][i, :n] for k in export.OUTPUT_KEYS[:3]})
        dets.append({k: o[k][0, :m] for k in export.OUTPUT_KEYS[:3]})
    assert sum(int((r['detection_scores'] >= GT_SCORE).sum()) for r in refs) >= 10
    agreement = _agreement_map(dets, refs)
    assert agreement >= MIN_MAP[variant]


@pytest.mark.slow
def test_tflite_sizes(exported):
    size = {q: os.path.getsize(p) for q, p in exported['tflite'].items()}
    # float32 holds the weights (measured 2.09 MB for 594,500 parameters, i.e. 2.38 MB of
    # float32: the converter folds and shares some constants); float16 halves it, int8 and
    # dynamic-range weights quarter it (plus the graph).
    params = exported["model"].count_params()
    assert 0.8 * 4 * params < size["float32"] < 4 * params + 3e5
    assert size['float16'] < 0.6 * size['float32']
    assert size['int8'] < 0.35 * size['float32'] and size['dynamic'] < 0.35 * size['float32']
    # int8: the network's conv kernels are int8, the box decoding / NMS ops float32.
    interp = tflite_runtime.tflite_interpreter(model_path=exported['tflite']['int8'])
    ops = interp._get_ops_details()  # pylint: disable=protected-access
    dtypes = {d['index']: d['dtype'] for d in interp.get_tensor_details()}
    conv_in = {dtypes[op['inputs'][0]] for op in ops if op['op_name'] == 'CONV_2D'}
    assert conv_in == {np.int8}
    nms = [op for op in ops if op['op_name'] == 'NON_MAX_SUPPRESSION_V4']
    assert len(nms) == 4 and all(dtypes[op['inputs'][1]] == np.float32 for op in nms)


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['saved_model', 'tflite'])
def test_detect_writes_pngs_and_json(exported, tmp_path, kind):
    from ssd_tf import detect
    img_dir = tmp_path / 'images'
    img_dir.mkdir()
    images = _images(2, 40, size=160)
    for i, im in enumerate(images):
        (img_dir / f'im{i}.jpg').write_bytes(_encode(im, '.jpg'))
    model = (exported['saved_model'] if kind == 'saved_model'
             else exported['tflite']['float32'])
    fn, labels = detect.make_detector(model)
    assert labels == CLASS_NAMES
    res = detect.run(fn, detect.list_images([str(img_dir)]), str(tmp_path / 'out'), labels,
                     score_threshold=0.3)
    assert [pathlib.Path(r['image']).name for r in res] == ['im0.jpg', 'im1.jpg']
    # Outputs are named after the whole file name (im0.jpg -> im0.jpg.png; was im0.png) so
    # that a.jpg and a.png do not collide.
    assert (tmp_path / 'out' / 'im0.jpg.png').is_file()
    saved = json.loads((tmp_path / 'out' / 'detections.json').read_text())
    assert saved == json.loads(json.dumps(res))
    dets = [d for r in res for d in r['detections']]
    assert dets and all(d['score'] >= 0.3 for d in dets)
    for d in dets:
        assert d['label'] == CLASS_NAMES[d['class_id'] - 1]
        np.testing.assert_allclose(d['box_pixels'], np.array(d['box']) * 160, rtol=1e-6)
    with pytest.raises(ValueError, match='neither a file nor a directory'):
        detect.list_images([str(tmp_path / 'missing.jpg')])


@pytest.mark.slow
def test_detect_from_training_checkpoint_equals_saved_model(exported, tmp_path):
    from ssd_tf import detect
    image = _images(1, 50, size=160)[0]
    path = tmp_path / 'a.png'
    path.write_bytes(_encode(image))
    sm_fn, _ = detect.make_detector(exported['saved_model'])
    ck_fn, labels = detect.make_detector(exported['train_dir'])
    assert labels == CLASS_NAMES
    a = detect.run(sm_fn, [str(path)], str(tmp_path / 'sm'), labels, 0.3)
    b = detect.run(ck_fn, [str(path)], str(tmp_path / 'ck'), labels, 0.3)
    assert a[0]['detections'] and len(a[0]['detections']) == len(b[0]['detections'])
    for da, db in zip(a[0]['detections'], b[0]['detections']):
        assert da['class_id'] == db['class_id']
        np.testing.assert_allclose(da['box'], db['box'], atol=1e-4)


@pytest.mark.slow
def test_detect_tiles_a_checkpoint_and_refuses_exports(exported, tmp_path):
    """detect --tiles: a training directory detects on tiles (the tiled module: at least the
    whole image's detections, here more); a SavedModel or a TFLite file is refused by name."""
    from ssd_tf import detect
    image = _images(1, 50, size=160)[0]
    path = tmp_path / 'a.png'
    path.write_bytes(_encode(image))
    plain, labels = detect.make_detector(exported['train_dir'])
    tiled, _ = detect.make_detector(exported['train_dir'], tiles=(2, 2, 0.25, 0.))
    a = plain(path.read_bytes(), image)
    b = tiled(path.read_bytes(), image)
    assert len(a['scores']) > 0 and not (len(a['scores']) == len(b['scores']) and
                                         np.allclose(a['scores'], b['scores']))
    assert np.all((b['boxes'] >= 0) & (b['boxes'] <= 1))
    for source in (exported['saved_model'], exported['tflite']['float32']):
        with pytest.raises(ValueError, match='--tiles does not apply'):
            detect.make_detector(source, tiles=(2, 2, 0.25))


@pytest.mark.slow
@pytest.mark.parametrize('variant', export_tflite.TFLITE_QUANTIZATIONS)
def test_tflite_outputs_in_the_task_api_order(exported, variant):
    """The object-detector task APIs (MediaPipe, TFLite Task Library) index the outputs:
    locations, classes, scores, count, as outputs 0..3 and as ascending tensor indices (the
    metadata writer pairs them that way); the signature names them the same."""
    interp = tflite_runtime.tflite_interpreter(model_path=exported['tflite'][variant])
    details = interp.get_output_details()
    shapes = [tuple(int(s) for s in d['shape']) for d in details]
    assert shapes == [(1, MAX_DET, 4), (1, MAX_DET), (1, MAX_DET), (1,)]
    indices = [d['index'] for d in details]
    assert indices == sorted(indices)
    sig = interp.get_signature_list()['serving_default']
    assert sig['inputs'] == ['images'] and sig['outputs'] == list(export.OUTPUT_KEYS)
    runner = interp.get_signature_runner()
    out = {k: np.array(v) for k, v in runner(images=_images(1, 30)[0][None]).items()}
    del runner
    interp.set_tensor(interp.get_input_details()[0]['index'], _images(1, 30)[0][None])
    interp.invoke()  # the same results by output index, as an app without signatures reads
    for d, key in zip(details, export.OUTPUT_KEYS):
        np.testing.assert_array_equal(interp.get_tensor(d['index']), out[key])
    n = int(out['num_detections'][0])
    assert n > 0 and out['detection_classes'][0, :n].min() >= 0
    assert out['detection_classes'][0, :n].max() <= len(CLASS_NAMES) - 1


@pytest.mark.slow
def test_export_script_bfloat16_saved_model_agrees_with_float(exported, tmp_path):
    base = [sys.executable, str(REPO / 'export_savedmodel.py'),
            f'--checkpoint_path={exported["train_dir"]}', f'--output_dir={tmp_path}',
            f'--max_detections={MAX_DET}', '--mixed_precision=mixed_bfloat16',
            '--allow_slow_bfloat16']  # agreement, not speed: also on CPUs without bf16
    bad = subprocess.run(base + ['--tflite'], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and 'SavedModel only' in bad.stderr + bad.stdout
    subprocess.run(base, check=True, cwd=REPO, capture_output=True)
    images = _images(NUM_EVAL, 30)
    ref = _reference(exported, images)
    fn = tf.saved_model.load(str(tmp_path / '1')).signatures['serving_images']
    got = {k: v.numpy() for k, v in fn(images=tf.constant(np.stack(images))).items()}
    refs, dets = [], []
    for i in range(NUM_EVAL):
        n, m = int(ref['num_detections'][i]), int(got['num_detections'][i])
        refs.append({k: ref[k][i, :n] for k in export.OUTPUT_KEYS[:3]})
        dets.append({k: got[k][i, :m] for k in export.OUTPUT_KEYS[:3]})
    # bfloat16 keeps ~3 significant digits in the network: measured agreement 0.9998 here;
    # on the trained ssd_small the VOC07 mAP is unchanged (0.832 float32, 0.832 bfloat16).
    assert _agreement_map(dets, refs) >= 0.95
    cfg = json.loads((tmp_path / '1' / 'assets' / 'export_config.json').read_text())
    assert cfg['mixed_precision'] == 'mixed_bfloat16'


@pytest.mark.slow
def test_export_script_tiles(exported, tmp_path):
    """export_savedmodel.py --tiles: refused beside --tflite (TFLite detects the whole image),
    recorded in export_config.json, and the export tiles (more passes, other detections)."""
    base = [sys.executable, str(REPO / 'export_savedmodel.py'),
            f'--checkpoint_path={exported["train_dir"]}', f'--output_dir={tmp_path}',
            f'--max_detections={MAX_DET}', '--tiles=2x2', '--tile_overlap=0.3', '--tile_max_box=0']
    bad = subprocess.run(base + ['--tflite'], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and '--tiles=2x2 applies to the SavedModel only' in bad.stderr
    subprocess.run(base, check=True, cwd=REPO, capture_output=True)
    cfg = json.loads((tmp_path / '1' / 'assets' / 'export_config.json').read_text())
    assert cfg['tiles'] == {'rows': 2, 'cols': 2, 'overlap': 0.3, 'max_box': 0.0}
    images = tf.constant(np.stack(_images(2, 30)))
    tiled = tf.saved_model.load(str(tmp_path / '1')).signatures['serving_images']
    plain = tf.saved_model.load(exported['saved_model']).signatures['serving_images']
    a, b = plain(images=images), tiled(images=images)
    assert not np.allclose(a['detection_scores'].numpy(), b['detection_scores'].numpy())


# ---------------------------------------------------------------------------- hardening
@pytest.mark.slow
def test_refused_requests_name_the_image_and_the_model_serves_the_next(exported):
    loaded = tf.saved_model.load(exported['saved_model'])
    fn = loaded.signatures['serving_default']
    images = _images(2, 60)
    good = [_encode(im) for im in images]
    jpeg = _encode(images[0], '.jpg')
    cut = jpeg[:len(jpeg) // 2]
    frames = [im[..., 0] // 2 for im in _images(40, 70)]  # a 40-frame GIF
    bad = [
        ([good[0], png_claiming(16000, 16000)],
         r'image 1 of the batch \(0-based\): 16000x16000 pixels is over the limit of 200000000'),
        ([cut], r'image 0 of the batch \(0-based\): truncated JPEG'),
        ([good[0]] * 65, r'the request has 65 images; this model takes at most 64'),
    ]
    for request, message in bad:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            fn(image_bytes=tf.constant(request))
    with pytest.raises(tf.errors.InvalidArgumentError, match='at most 64'):
        loaded.signatures['serving_images'](images=tf.zeros([65, 8, 8, 3], tf.uint8))
    # The same loaded model answers the next request as before.
    got = {k: v.numpy() for k, v in fn(image_bytes=tf.constant(good)).items()}
    _assert_same(got, _reference(exported, images))
    # A GIF is decoded from its first frame only: same detections as that frame as a PNG.
    gif = {k: v.numpy() for k, v in fn(image_bytes=tf.constant([gif_bytes(frames)])).items()}
    first = np.repeat((frames[0] * 2)[..., None], 3, -1)
    _assert_same(gif, {k: v.numpy() for k, v in
                       fn(image_bytes=tf.constant([_encode(first)])).items()})
    cfg = json.loads((pathlib.Path(exported['saved_model']) / 'assets' /
                      'export_config.json').read_text())
    assert (cfg['max_image_pixels'], cfg['max_batch_size']) == (200_000_000, 64)


@pytest.mark.slow
def test_export_limits_are_set_at_export(exported, tmp_path):
    target = export.export_saved_model(exported['net'], exported['model'], _preprocess,
                                       tmp_path, 1, max_image_pixels=IMG * IMG,
                                       max_batch_size=2)
    loaded = tf.saved_model.load(target)
    small, large = _encode(_images(1)[0]), _encode(_images(1, size=IMG + 1)[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match='129x129 pixels is over the limit '
                       'of 16384'):
        loaded.signatures['serving_default'](image_bytes=tf.constant([small, large]))
    with pytest.raises(tf.errors.InvalidArgumentError, match='has 3 images.*at most 2'):
        loaded.signatures['serving_default'](image_bytes=tf.constant([small] * 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match='129x129 pixels are over'):
        loaded.signatures['serving_images'](images=tf.zeros([1, IMG + 1, IMG + 1, 3], tf.uint8))
    out = loaded.signatures['serving_default'](image_bytes=tf.constant([small, small]))
    assert out['detection_boxes'].shape == (2, MAX_DET, 4)


def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob('*'))
            if p.is_file()}


@pytest.mark.slow
def test_overwrite_failure_mid_export_keeps_the_old_version(exported, tmp_path, monkeypatch):
    net, model = exported['net'], exported['model']
    target = pathlib.Path(export.export_saved_model(net, model, _preprocess, tmp_path, 1,
                                                    label_names=CLASS_NAMES))
    before = _tree(target)

    def add_tflite(version_dir):
        export_tflite.export_tflite(net, model, lambda im: _preprocess(im)[0],
                                    os.path.join(version_dir, 'tflite'), ['float32'])

    def crash(*args, **kwargs):
        raise RuntimeError('injected TFLite converter crash')

    monkeypatch.setattr(export_tflite, 'convert_tflite', crash)
    with pytest.raises(RuntimeError, match='injected'):
        export.export_saved_model(net, model, _preprocess, tmp_path, 1, overwrite=True,
                                  max_detections=7, before_publish=add_tflite)
    assert _tree(target) == before
    assert sorted(os.listdir(tmp_path)) == ['1']  # no staging directory left behind
    # The swap without renameat2, with the second rename failing: the old version is put back.
    monkeypatch.setattr(export, '_exchange', lambda a, b: False)
    real_rename, calls = os.rename, []

    def flaky_rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError('injected rename failure')
        real_rename(src, dst)

    monkeypatch.setattr(os, 'rename', flaky_rename)
    with pytest.raises(OSError, match='injected'):
        export.export_saved_model(net, model, _preprocess, tmp_path, 1, overwrite=True)
    monkeypatch.setattr(os, 'rename', real_rename)
    assert _tree(target) == before and sorted(os.listdir(tmp_path)) == ['1']
    monkeypatch.undo()
    export.export_saved_model(net, model, _preprocess, tmp_path, 1, overwrite=True,
                              max_detections=7, before_publish=add_tflite)
    assert (target / 'tflite' / 'model_float32.tflite').is_file()
    cfg = json.loads((target / 'assets' / 'export_config.json').read_text())
    assert cfg['max_detections'] == 7 and sorted(os.listdir(tmp_path)) == ['1']


@pytest.mark.slow
def test_detect_never_overwrites_inputs_and_reports_bad_images(exported, tmp_path):
    from ssd_tf import detect
    images = _images(2, 80, size=160)
    inputs = {'a.jpg': _encode(images[0], '.jpg'), 'a.png': _encode(images[1]),
              'a.jpg.png': _encode(images[1]), 'cut.jpg': _encode(images[0], '.jpg')[:500],
              'huge.png': png_claiming(16000, 16000), 'text.gif': b'GIF? no, just text'}
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
    fn, labels = detect.make_detector(exported['saved_model'])
    paths = detect.list_images([str(tmp_path)])
    res = detect.run(fn, paths, str(tmp_path), labels, 0.3)  # output dir = input dir
    for name, data in inputs.items():
        assert (tmp_path / name).read_bytes() == data, name
    outputs = sorted(set(os.listdir(tmp_path)) - set(inputs))
    # a.jpg.png is an input, so a.jpg's drawing is a.jpg-2.png
    assert outputs == ['a.jpg-2.png', 'a.jpg.png.png', 'a.png.png', 'detections.json']
    saved = json.loads((tmp_path / 'detections.json').read_text())
    assert saved == json.loads(json.dumps(res))
    errors = {pathlib.Path(r['image']).name: r['error'] for r in saved if 'error' in r}
    assert errors == {'cut.jpg': 'truncated JPEG (no end-of-image marker)',
                      'huge.png': '16000x16000 pixels is over the limit of 200000000',
                      'text.gif': errors['text.gif']}
    assert errors['text.gif'].startswith('not a JPEG/PNG/GIF/BMP file (first bytes 47 49 46')
    assert len(saved) == len(inputs)


def test_detect_json_is_written_when_the_run_stops(tmp_path):
    from ssd_tf import detect
    image = _images(1)[0]
    for name in ('a.png', 'b.png'):
        (tmp_path / name).write_bytes(_encode(image))

    def detector(data, image):
        if detector.calls:
            raise KeyboardInterrupt
        detector.calls += 1
        return {'boxes': np.zeros([0, 4]), 'classes': np.zeros([0], int), 'scores': np.zeros([0])}
    detector.calls = 0
    with pytest.raises(KeyboardInterrupt):
        detect.run(detector, [str(tmp_path / 'a.png'), str(tmp_path / 'b.png')],
                   str(tmp_path / 'out'))
    saved = json.loads((tmp_path / 'out' / 'detections.json').read_text())
    assert [pathlib.Path(r['image']).name for r in saved] == ['a.png']


@pytest.mark.slow
def test_detect_module_runs_the_script(exported, tmp_path):
    (tmp_path / 'a.jpg').write_bytes(_encode(_images(1, 90)[0], '.jpg'))
    (tmp_path / 'b.jpg').write_bytes(b'\xff\xd8\xff truncated')
    out = subprocess.run([sys.executable, '-m', 'ssd_tf.detect',
                          f'--model={exported["saved_model"]}', f'--images={tmp_path}',
                          f'--output_dir={tmp_path / "out"}'],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert '1 images' in out.stdout and '1 skipped' in out.stdout and 'b.jpg' in out.stdout
    assert (tmp_path / 'out' / 'a.jpg.png').is_file()


# The README (serving): "at most 2 images are decoded at once". A subprocess with 8 inter-op
# threads (this machine's default pool may have only 2, which would bound any count at 2),
# whose pre-processing (run on each decoded image inside the map over the request) counts
# how many images are between decode and the end of their pre-processing at the same time.
_DECODE_CONCURRENCY = """
import json, sys, threading, time
sys.path.insert(0, {root!r})
import tensorflow as tf
tf.config.threading.set_inter_op_parallelism_threads(8)
import numpy as np
from nets import nets_factory
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf.export import saved_model as export

lock, state = threading.Lock(), {{'now': 0, 'max': 0}}


def hold(image):
    with lock:
        state['now'] += 1
        state['max'] = max(state['max'], state['now'])
    time.sleep(0.3)
    with lock:
        state['now'] -= 1
    return image


net = nets_factory.get_network('ssd_small')()
model = net.keras_model()
base = prep.image_preprocess_fn(net.params.img_shape)


def counted(image):
    image = tf.numpy_function(hold, [image], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return base(image)


png = tf.io.encode_png(np.zeros((30, 40, 3), np.uint8)).numpy()
frames = np.zeros((8, 30, 40, 3), np.uint8)
out = {{}}
for name, kw in (('default', {{}}), ('six', {{'decode_parallelism': 6}})):
    module = export.DetectionModule(net, model, counted, **kw)
    for signature, arg in (('bytes', tf.constant([png] * 8)), ('images', tf.constant(frames))):
        state.update(now=0, max=0)
        fn = module.detect_bytes if signature == 'bytes' else module.detect_images
        assert int(fn(arg)['num_detections'].shape[0]) == 8
        out[name + '_' + signature] = state['max']
print(json.dumps(out))
"""


@pytest.mark.slow
def test_at_most_two_images_are_decoded_at_once():
    out = subprocess.run([sys.executable, '-c', _DECODE_CONCURRENCY.format(root=str(REPO))],
                         capture_output=True, text=True, cwd=REPO, timeout=600,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # The default export: 2 at once (the bound is reached, so the count does see overlap);
    # with decode_parallelism=6 the same count sees more: the instrument is not the limit.
    assert seen['default_bytes'] == 2 and seen['default_images'] == 2, seen
    assert seen['six_bytes'] > 2 and seen['six_images'] > 2, seen


@pytest.mark.slow
def test_export_and_detect_test_time_flip(exported, tmp_path):
    """export_savedmodel.py --test_time_flip: refused beside --tflite, recorded in
    export_config.json, and its SavedModel detects like DetectionModule(test_time_flip=True)
    on the checkpoint (other detections than the plain export); detect.py flips a checkpoint
    and refuses a SavedModel or a TFLite file by name."""
    from ssd_tf import builder, detect
    base = [sys.executable, str(REPO / 'export_savedmodel.py'),
            f'--checkpoint_path={exported["train_dir"]}', f'--output_dir={tmp_path}',
            f'--max_detections={MAX_DET}', '--test_time_flip']
    bad = subprocess.run(base + ['--tflite'], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and '--test_time_flip applies to the SavedModel only' in bad.stderr
    subprocess.run(base, check=True, cwd=REPO, capture_output=True)
    cfg = json.loads((tmp_path / '1' / 'assets' / 'export_config.json').read_text())
    assert cfg['test_time_flip'] is True
    plain_cfg = json.loads((pathlib.Path(exported['saved_model']) / 'assets' /
                            'export_config.json').read_text())
    assert plain_cfg['test_time_flip'] is False
    images = tf.constant(np.stack(_images(2, 30)))
    flipped = tf.saved_model.load(str(tmp_path / '1')).signatures['serving_images']
    plain = tf.saved_model.load(exported['saved_model']).signatures['serving_images']
    a, b = plain(images=images), flipped(images=images)
    assert not np.allclose(a['detection_scores'].numpy(), b['detection_scores'].numpy())
    built = builder.load_model(exported['train_dir'])
    module = export.DetectionModule(
        built.net, built.model, prep.image_preprocess_fn(tuple(built.net.params.img_shape)),
        max_detections=MAX_DET, test_time_flip=True)
    c = module.detect_images(images)
    np.testing.assert_allclose(b['detection_scores'].numpy(), c['detection_scores'].numpy(),
                               atol=1e-5)
    image = _images(1, 50, size=160)[0]
    path = tmp_path / 'a.png'
    path.write_bytes(_encode(image))
    one, _ = detect.make_detector(exported['train_dir'], test_time_flip=True)
    two, _ = detect.make_detector(exported['train_dir'])
    d1, d2 = one(path.read_bytes(), image), two(path.read_bytes(), image)
    assert len(d1['scores']) > 0 and not (len(d1['scores']) == len(d2['scores']) and
                                          np.allclose(d1['scores'], d2['scores']))
    for source in (exported['saved_model'], exported['tflite']['float32']):
        with pytest.raises(ValueError, match='--test_time_flip does not apply'):
            detect.make_detector(source, test_time_flip=True)
