"""The TFLite exports in the phone developers' own tools: MediaPipe's ObjectDetector loads each
variant (float32, float16, dynamic, int8; metadata written at export) and finds the
SavedModel's detections on the real raccoon test images; TFLite_Detection_PostProcess decodes
our anchors and prior_scaling like `encoding.bboxes_decode`; the metadata and its modes.

The exports are tests/test_export.py's (`build_export`: ssd_small, 5 synthetic classes, seeded
random weights with sharpened class heads, so that scores depend on the image), built once per
session. MediaPipe (the extra `mobile`) is installed in CI; without it the MediaPipe tests skip.
"""
import importlib.metadata
import logging
import zipfile

import cv2
import flatbuffers
import numpy as np
import pytest
import tensorflow as tf

import conftest
import test_export
from conftest import SHARED_DATA
from ssd_tf.export import saved_model as export
from ssd_tf.export import tflite as export_tflite
from ssd_tf.export import tflite_runtime
from ssd_tf import postprocess
from ssd_tf import tflite_metadata

CLASS_NAMES = test_export.CLASS_NAMES
NUM_RACCOON = 8
# Detections compared above SCORE (MediaPipe asked for SCORE - MARGIN, so that a score that
# rounds differently at the threshold cannot drop a detection on one side only).
SCORE = 0.5
MARGIN = 0.05
# Box tolerance in pixels of the 128 x 128 input: MediaPipe returns integer pixel boxes, the
# origin and the size each truncated (measured: the far side up to 1.9 px off, the near side
# < 1 px); float16/dynamic keep float activations; int8 quantises the network's weights and
# activations (stated, looser).
BOX_TOL_PX = {'float32': 2., 'float16': 2., 'dynamic': 2., 'int8': 4.}
# Quantised weights (dynamic) or activations (int8) move a few scores across SCORE: at most
# this share of the detections of either side may lack a partner (measured 0/820, 0/821,
# 1/811, 3/816 for float32, float16, dynamic, int8).
UNMATCHED = {'float32': 0., 'float16': 0., 'dynamic': 0.01, 'int8': 0.02}


def _mediapipe():
    return conftest.import_extra('mediapipe', 'mobile')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    return test_export.build_export(tmp_path_factory)


@pytest.fixture(scope='module')
def raccoons():
    root = SHARED_DATA / 'raccoon'
    if not root.is_dir():
        pytest.skip('../shared/data is not present (a user checkout has no ../shared)')
    return _raccoons(root)


def _raccoons(root):
    """(name, RGB uint8 image at the model input size) of the first NUM_RACCOON raccoon test
    images, warp-resized as the SavedModel does (`export_tflite.representative_images`). Both tools
    get these pixels: MediaPipe's own resize of a full frame uses another kernel, and the
    random-weight heads turn those pixel differences into different detections."""
    names = (root / 'ImageSets' / 'Main' / 'test.txt').read_text().split()[:NUM_RACCOON]
    out = []
    for name in names:
        data = (root / 'JPEGImages' / f'{name}.jpg').read_bytes()
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                             cv2.COLOR_BGR2RGB)
        size = (test_export.IMG, test_export.IMG)
        out.append((name, export_tflite.representative_images([image], size)[0][0]))
    return out


@pytest.fixture(scope='module')
def saved_model_detections(exported, raccoons):
    return _saved_model_detections(exported, raccoons)


def _saved_model_detections(exported, raccoons):
    """Per raccoon image: (boxes [N, 4] in pixels xyxy, class names [N], scores [N])."""
    fn = tf.saved_model.load(str(exported['saved_model'])).signatures[export.IMAGES_SIGNATURE]
    out = []
    for _, image in raccoons:
        res = fn(images=tf.constant(image[None]))
        n = int(res['num_detections'][0])
        h, w = image.shape[:2]
        y0, x0, y1, x1 = res['detection_boxes'][0, :n].numpy().T
        out.append((np.stack([x0 * w, y0 * h, x1 * w, y1 * h], -1),
                    [CLASS_NAMES[int(c) - 1] for c in res['detection_classes'][0, :n]],
                    res['detection_scores'][0, :n].numpy()))
    return out


def _mediapipe_detections(path, images, score_threshold):
    mp = _mediapipe()
    from mediapipe.tasks.python import vision
    options = vision.ObjectDetectorOptions(
        base_options=mp.tasks.BaseOptions(model_asset_path=str(path)),
        score_threshold=score_threshold, max_results=test_export.MAX_DET)
    out = []
    with vision.ObjectDetector.create_from_options(options) as detector:
        for image in images:
            res = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB,
                                           data=np.ascontiguousarray(image)))
            boxes = [(d.bounding_box.origin_x, d.bounding_box.origin_y,
                      d.bounding_box.origin_x + d.bounding_box.width,
                      d.bounding_box.origin_y + d.bounding_box.height) for d in res.detections]
            out.append((np.array(boxes, np.float64).reshape(-1, 4),
                        [d.categories[0].category_name for d in res.detections],
                        np.array([d.categories[0].score for d in res.detections])))
    return out


def _unmatched(a, b, tol):
    """Detections of `a` (score >= SCORE) without a detection of `b` of the same class whose
    box is within `tol` pixels on every side; and how many `a` has."""
    boxes, names, scores = a
    keep = scores >= SCORE
    missing = 0
    for box, name in zip(boxes[keep], np.array(names, object)[keep]):
        close = np.abs(b[0] - box).max(-1) <= tol if len(b[0]) else np.zeros(0, bool)
        same = np.array([n == name for n in b[1]], bool)
        missing += not (close & same).any()
    return missing, int(keep.sum())


@pytest.mark.parametrize('variant', export_tflite.TFLITE_QUANTIZATIONS)
def test_mediapipe_object_detector_finds_the_saved_model_detections(
        exported, raccoons, saved_model_detections, variant):
    mine = _mediapipe_detections(exported['tflite'][variant], [r[1] for r in raccoons],
                                 SCORE - MARGIN)
    total, lost, counts = 0, 0, []
    for ref, got in zip(saved_model_detections, mine):
        for a, b in ((ref, got), (got, ref)):
            missing, n = _unmatched(a, b, BOX_TOL_PX[variant])
            lost += missing
            total += n
        counts.append(int((ref[2] >= SCORE).sum()))
    # Meaningful: detections on most images, and they differ from image to image.
    assert sum(c > 0 for c in counts) >= NUM_RACCOON // 2, counts
    firsts = {tuple(np.round(r[0][0]).astype(int)) for r in saved_model_detections if len(r[0])}
    assert len(firsts) >= NUM_RACCOON // 2
    assert lost <= UNMATCHED[variant] * total, (variant, lost, total)
    if not UNMATCHED[variant]:
        # Same count above SCORE, but for scores within 2e-3 of it (float16 weights move
        # scores by up to 6e-4, float32 kernels of TF and TFLite by 1e-6).
        def count(scores):
            return int((scores[np.abs(scores - SCORE) > 2e-3] >= SCORE).sum())
        assert [count(m[2]) for m in mine] == [count(r[2]) for r in saved_model_detections]


def test_metadata_describes_the_model_and_embeds_the_labels(exported):
    _mediapipe()
    data = open(exported['tflite']['float32'], 'rb').read()
    md = tflite_metadata.read_metadata(data)
    graph = md['subgraph_metadata'][0]
    image = graph['input_tensor_metadata'][0]
    assert image['content']['content_properties']['color_space'] == 'RGB'
    assert image['process_units'][0]['options'] == {'mean': [0.0], 'std': [1.0]}
    assert image['stats'] == {'max': [255.0], 'min': [0.0]}
    outs = graph['output_tensor_metadata']
    assert [o['name'] for o in outs] == ['location', 'category', 'score',
                                         'number of detections']
    # [ymin, xmin, ymax, xmax]: left is coordinate 1, top 0, right 3, bottom 2.
    assert outs[0]['content']['content_properties'] == {'index': [1, 0, 3, 2],
                                                        'type': 'BOUNDARIES'}
    assert outs[1]['associated_files'][0]['type'] == 'TENSOR_VALUE_LABELS'
    # Output tensor groups (schema 1.2.0) are the newest field the writer uses.
    assert md['min_parser_version'] == '1.2.0'
    # A .tflite with metadata is also a zip of its associated files: line i = class i.
    with zipfile.ZipFile(exported['tflite']['float32']) as z:
        assert z.read('labels.txt').decode().split('\n')[:len(CLASS_NAMES)] == CLASS_NAMES
    assert tflite_metadata.read_metadata(open(exported['tflite_op'], 'rb').read()) is not None


def test_detect_reads_the_labels_embedded_in_a_lone_tflite(exported, tmp_path):
    _mediapipe()
    from ssd_tf import detect
    lone = tmp_path / 'model.tflite'  # no labels.txt beside it
    lone.write_bytes(open(exported['tflite']['float32'], 'rb').read())
    assert tflite_metadata.embedded_labels(lone) == CLASS_NAMES
    fn, labels = detect.make_detector(lone)
    assert labels == CLASS_NAMES
    image = test_export._images(1, 30)[0]
    dets = fn(None, image)
    assert len(dets['classes']) and dets['classes'].min() >= 1  # 1-based ids, as labels.txt
    plain = tmp_path / 'plain.tflite'
    plain.write_bytes(b'TFL3 not a zip')
    assert tflite_metadata.embedded_labels(plain) is None


def _metadata_buffer(**fields):
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    md = fb.ModelMetadataT()
    graph = fb.SubGraphMetadataT()
    for key, value in fields.items():
        setattr(graph, key, value)
    md.subgraphMetadata = [graph]
    builder = flatbuffers.Builder(0)
    builder.Finish(md.Pack(builder), file_identifier=b'M001')
    return bytes(builder.Output())


def test_minimum_parser_version_follows_the_schema_rules():
    _mediapipe()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    vocab = fb.AssociatedFileT()
    vocab.type = fb.AssociatedFileType.VOCABULARY
    versioned = fb.AssociatedFileT()
    versioned.version = '2'
    tensor = fb.TensorMetadataT()
    tensor.associatedFiles = [vocab]
    group = fb.TensorGroupT()
    assert tflite_metadata.minimum_parser_version(_metadata_buffer()) == '1.0.0'
    assert tflite_metadata.minimum_parser_version(
        _metadata_buffer(inputTensorMetadata=[tensor])) == '1.0.1'
    assert tflite_metadata.minimum_parser_version(
        _metadata_buffer(inputProcessUnits=[])) == '1.1.0'
    assert tflite_metadata.minimum_parser_version(
        _metadata_buffer(outputTensorGroups=[group], associatedFiles=[versioned])) == '1.4.1'
    assert tflite_metadata.minimum_parser_version(
        _metadata_buffer(customMetadata=[], inputTensorMetadata=[tensor])) == '1.5.0'


def test_metadata_modes(monkeypatch, caplog):
    with pytest.raises(ValueError, match='--tflite_metadata=maybe'):
        tflite_metadata.resolve_mode('maybe')
    assert tflite_metadata.resolve_mode('off') is False
    monkeypatch.setattr(tflite_metadata, 'import_problem',
                        lambda: "ModuleNotFoundError: No module named 'mediapipe'")
    with pytest.raises(ValueError, match=r"--tflite_metadata=on .*No module named 'mediapipe'"
                                         r".*\[mobile\]"):
        tflite_metadata.resolve_mode('on')
    monkeypatch.setattr(tflite_metadata, '_SAID_NO_METADATA', [])
    with caplog.at_level(logging.WARNING):
        assert tflite_metadata.resolve_mode('auto') is False
        assert tflite_metadata.resolve_mode('auto') is False
    said = [r for r in caplog.records if 'no metadata' in r.getMessage()]
    assert len(said) == 1 and "[mobile]" in said[0].getMessage()


def test_export_without_label_names_refuses_metadata_on(exported, tmp_path):
    ex = exported
    with pytest.raises(ValueError, match='--tflite_metadata=on needs the label names'):
        export_tflite.export_tflite(ex['net'], ex['model'], lambda im: im, tmp_path, ['float32'],
                                    metadata='on')


def test_detection_postprocess_scales_goldens():
    assert postprocess.detection_postprocess_scales((0.1, 0.1, 0.2, 0.2)) == \
        pytest.approx((10., 10., 5., 5.))
    assert postprocess.detection_postprocess_scales((0.1, 0.2, 0.3, 0.4)) == \
        pytest.approx((10., 5., 1 / 0.3, 2.5))
    assert postprocess.detection_postprocess_scales((0.1, 0.2, 0.3, 0.4), True) == \
        pytest.approx((5., 10., 2.5, 1 / 0.3))


def test_detection_postprocess_op_decodes_like_ours(exported):
    """TFLite_Detection_PostProcess decodes our offsets on our anchors (centre form, scales
    from prior_scaling) into the boxes of `encoding.bboxes_decode`: a detection of the op and
    one of builtin_nms with the same class and score come from the same anchor, and have the
    same box. The selections differ a little: the op suppresses on unclipped boxes (it decodes
    inside), builtin_nms on boxes clipped to the image (as the SavedModel)."""
    op_det = tflite_runtime.TFLiteDetector(exported['tflite_op'])
    builtin = tflite_runtime.TFLiteDetector(exported['tflite']['float32'])
    ops = {op['op_name'] for op in op_det.interpreter._get_ops_details()}  # noqa: SLF001
    assert postprocess.DETECTION_POSTPROCESS_OP in ops and 'NON_MAX_SUPPRESSION_V4' not in ops
    paired, total = 0, 0
    for image in test_export._images(6, 60):
        a, b = op_det.run_resized(image[None]), builtin.run_resized(image[None])
        n, m = int(a['num_detections'][0]), int(b['num_detections'][0])
        for box, cls, score in zip(a['detection_boxes'][0, :n], a['detection_classes'][0, :n],
                                   a['detection_scores'][0, :n]):
            if score < 0.3:
                continue
            total += 1
            same = (b['detection_classes'][0, :m] == cls) & \
                (np.abs(b['detection_scores'][0, :m] - score) < 1e-6)
            if same.any():
                paired += 1
                np.testing.assert_allclose(b['detection_boxes'][0, :m][same][0], box,
                                           atol=1e-5)
    assert total >= 50 and paired >= 0.9 * total, (paired, total)


def test_one_opencv_build_owns_cv2():
    """mediapipe pulls opencv-contrib-python, whose cv2 overwrites the headless one; the README
    install line keeps one build. Both installed: uninstalling either breaks cv2."""
    owners = sorted(d.metadata['Name'] for d in importlib.metadata.distributions()
                    if (d.metadata['Name'] or '').lower().startswith('opencv')
                    and any(str(f).startswith('cv2/') for f in d.files or []))
    assert len(owners) == 1, (f"several OpenCV builds own cv2: {owners}; see README "
                              f"\"Export and deployment\" (mobile extra)")
    ok, buf = cv2.imencode('.png', np.zeros((4, 4, 3), np.uint8))
    assert ok and cv2.imdecode(buf, cv2.IMREAD_COLOR).shape == (4, 4, 3)
