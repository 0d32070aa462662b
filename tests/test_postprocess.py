"""Detection post-processing: the slim per-class chain, combined NMS, the TFLite-ops NMS
(parity with combined) and the one set of detection defaults."""
import pathlib

import numpy as np
import pytest

import slim_port
from nets import ssd_vgg_300
from ssd_tf import postprocess

ROOT = str(pathlib.Path(__file__).resolve().parents[1])  # this checkout, for subprocesses


def _layers(preds, boxes):
    """[B, K, C] / [B, K, 4] -> one pseudo-layer [B, K, 1, 1, C] / [B, K, 1, 1, 4]."""
    return [preds[:, :, None, None, :]], [boxes[:, :, None, None, :]]


def _random(rng, b=2, k=60, c=4):
    logits = rng.normal(size=(b, k, c)) * 2
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    centres = rng.uniform(0, 1, size=(b, k, 2))
    size = rng.uniform(.05, .4, size=(b, k, 2))
    boxes = np.concatenate([centres - size / 2, centres + size / 2], -1)
    return p.astype(np.float32), boxes.astype(np.float32)


@pytest.mark.parametrize('seed', [0, 1])
def test_reference_matches_literal_slim_chain(seed):
    p, b = _random(np.random.default_rng(seed))
    got_s, got_b = postprocess.detected_bboxes_reference(
        *_layers(p, b), num_classes=4, select_threshold=0.1, nms_threshold=0.45, top_k=30,
        keep_top_k=10)
    want_s, want_b = slim_port.detected_bboxes(p, b, 4, 0.1, 0.45, 30, 10)
    assert sorted(got_s) == [1, 2, 3]
    for c in want_s:
        assert got_s[c].shape == (2, 10) and got_b[c].shape == (2, 10, 4)
        np.testing.assert_allclose(got_s[c].numpy(), want_s[c], rtol=1e-6)
        np.testing.assert_allclose(got_b[c].numpy(), want_b[c], rtol=1e-6)


def _two_boxes_case():
    # Two heavily overlapping boxes of class 1 (IoU 0.8) and one of class 2 on the same spot;
    # one box sticks out of the image.
    boxes = np.array([[[.1, .1, .5, .5], [.1, .1, .5, .42], [.1, .1, .5, .5], [.6, .6, 1.2, .9]]],
                     np.float32)
    p = np.array([[[.1, .9, 0., 0.], [.2, .8, 0., 0.], [.3, 0., .7, 0.], [.4, 0., 0., .6]]],
                 np.float32)
    return p, boxes


def test_combined_golden():
    p, boxes = _two_boxes_case()
    out = postprocess.detected_bboxes_combined(*_layers(p, boxes), select_threshold=0.01,
                                               nms_threshold=0.45, top_k=10, keep_top_k=5)
    n = int(out['num_detections'][0])
    # class 1: the 0.8 box is suppressed by the 0.9 one; class 2 and 3 survive.
    assert n == 3
    np.testing.assert_allclose(out['scores'][0, :n].numpy(), [.9, .7, .6], rtol=1e-6)
    np.testing.assert_array_equal(out['classes'][0].numpy(), [1, 2, 3, 0, 0])
    # boxes are clipped to the image, padding rows are zero and not counted
    np.testing.assert_allclose(out['bboxes'][0, 2].numpy(), [.6, .6, 1., .9], rtol=1e-6)
    assert np.all(out['bboxes'][0, n:].numpy() == 0) and np.all(out['scores'][0, n:] == 0)


def test_reference_differs_where_spec_says():
    p, boxes = _two_boxes_case()
    rs, rb = postprocess.detected_bboxes_reference(*_layers(p, boxes), num_classes=4,
                                                   select_threshold=0.01, nms_threshold=0.45,
                                                   top_k=10, keep_top_k=5)
    # per class, keep_top_k rows each, zero-padded; below-threshold boxes kept as zero rows
    assert rs[1].shape == (1, 5) and rb[1].shape == (1, 5, 4)
    np.testing.assert_allclose(rs[1][0].numpy(), [.9, 0., 0., 0., 0.], rtol=1e-6)
    # no clipping: the box leaving the image keeps xmax... ymax 1.2
    np.testing.assert_allclose(rb[3][0, 0].numpy(), [.6, .6, 1.2, .9], rtol=1e-6)
    # with the slim clipping_bbox, it is clipped
    _, rbc = postprocess.detected_bboxes_reference(*_layers(p, boxes), num_classes=4,
                                                   select_threshold=0.01, nms_threshold=0.45,
                                                   top_k=10, keep_top_k=5,
                                                   clipping_bbox=[0., 0., 1., 1.])
    np.testing.assert_allclose(rbc[3][0, 0].numpy(), [.6, .6, 1., .9], rtol=1e-6)


def test_combined_keep_top_k_over_all_classes():
    p, b = _random(np.random.default_rng(3), b=2, k=80, c=5)
    out = postprocess.detected_bboxes_combined(*_layers(p, b), select_threshold=0.0,
                                               nms_threshold=0.99, top_k=400, keep_top_k=7)
    assert out['scores'].shape == (2, 7) and out['classes'].shape == (2, 7)
    assert np.all(out['num_detections'].numpy() == 7)
    # the 7 best (score, class) pairs over all classes, sorted
    for i in range(2):
        best = np.sort(p[i, :, 1:].reshape(-1))[::-1][:7]
        np.testing.assert_allclose(out['scores'][i].numpy(), best, rtol=1e-6)
    s = out['scores'].numpy()
    assert np.all(np.diff(s, axis=1) <= 0)


def test_combined_no_detection():
    p = np.zeros([1, 5, 3], np.float32)
    p[..., 0] = 1.
    b = np.tile(np.array([[.1, .1, .2, .2]], np.float32), [1, 5, 1])
    out = postprocess.detected_bboxes_combined(*_layers(p, b), keep_top_k=4)
    assert int(out['num_detections'][0]) == 0
    assert np.all(out['classes'].numpy() == 0) and np.all(out['scores'].numpy() == 0)


def test_ssdnet_detected_bboxes_modes():
    rng = np.random.default_rng(4)
    an = ssd_vgg_300.SSDNet().anchors()
    preds = [rng.dirichlet(np.ones(21), size=(1,) + a[0].shape[:2] + a[2].shape)
             .astype(np.float32) for a in an]
    locs = [rng.normal(size=(1,) + a[0].shape[:2] + a[2].shape + (4,)).astype(np.float32) * .1
            for a in an]
    for rc in (True, False):
        net = ssd_vgg_300.SSDNet(reference_compat=rc)
        dec = net.bboxes_decode(locs, an)
        out = net.detected_bboxes(preds, dec, select_threshold=0.01, nms_threshold=0.45,
                                  top_k=400, keep_top_k=200)
        if rc:
            rs, rb = out
            assert sorted(rs) == list(range(1, 21)) and rb[5].shape == (1, 200, 4)
        else:
            assert out['bboxes'].shape == (1, 200, 4)
            assert out['bboxes'].numpy().min() >= 0 and out['bboxes'].numpy().max() <= 1
            assert 0 < int(out['num_detections'][0]) <= 200


def test_top_k_larger_than_anchor_count():
    # 10 anchors, top_k 400: the candidates are all the anchors (small networks hit this)
    p, b = _random(np.random.default_rng(5), b=1, k=10, c=3)
    out = postprocess.detected_bboxes_combined(*_layers(p, b), select_threshold=0.,
                                               nms_threshold=1., top_k=400, keep_top_k=50)
    assert int(out['num_detections'][0]) == 20  # 10 anchors x 2 classes, nothing suppressed
    rs, _ = postprocess.detected_bboxes_reference(*_layers(p, b), num_classes=3, top_k=400,
                                                  keep_top_k=5)
    assert rs[1].shape == (1, 5)


def _peaked(rng, b, k, c):
    """Probabilities with one dominant class per anchor, boxes partly outside the image."""
    logits = rng.normal(size=(b, k, c))
    logits[np.arange(b)[:, None], np.arange(k)[None, :], rng.integers(0, c, size=(b, k))] += 6.
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    centres = rng.uniform(-.1, 1.1, size=(b, k, 2))
    size = rng.uniform(.02, .5, size=(b, k, 2))
    boxes = np.concatenate([centres - size / 2, centres + size / 2], -1)
    return p.astype(np.float32), boxes.astype(np.float32)


@pytest.mark.parametrize('kind,seed,k,top_k,keep', [
    ('random', 0, 300, 400, 100),  # top_k larger than the anchor count
    ('random', 1, 500, 50, 100),
    ('peaked', 2, 200, 400, 20),   # more candidates than kept detections
    ('peaked', 3, 12, 400, 100),   # a tiny network: fewer boxes than max detections
])
def test_savedmodel_and_tflite_nms_give_the_same_detections(kind, seed, k, top_k, keep):
    rng = np.random.default_rng(seed)
    c = 5
    p, b = (_random(rng, b=3, k=k, c=c) if kind == 'random' else _peaked(rng, 3, k, c))
    nms = dict(select_threshold=0.05, nms_threshold=0.45, top_k=top_k)
    combined = postprocess.detected_bboxes_combined(*_layers(p, b), keep_top_k=keep, **nms)
    for i in range(p.shape[0]):
        boxes, classes, scores, count = [x.numpy() for x in postprocess.tflite_postprocess(
            p[i], b[i], c, max_detections=keep, **nms)]
        n = int(combined['num_detections'][i])
        assert int(count) == n and n > 0
        np.testing.assert_array_equal(classes[:n], combined['classes'][i, :n].numpy())
        np.testing.assert_allclose(scores[:n], combined['scores'][i, :n].numpy(), atol=1e-6)
        np.testing.assert_allclose(boxes[:n], combined['bboxes'][i, :n].numpy(), atol=1e-5)
        assert not np.any(boxes[n:]) and not np.any(classes[n:]) and not np.any(scores[n:])


def _script_flag_defaults(script, names):
    """The defaults of `names` in a script's absl flags (each script in its own process: two
    scripts define the same flag names)."""
    import json
    import subprocess
    import sys
    code = (f"import json, {script}; f = {script}.flags.FLAGS; "
            f"print(json.dumps([f[n].default for n in {list(names)!r}]))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def test_one_set_of_detection_defaults():
    from ssd_tf import evaluation
    from ssd_tf.export import saved_model as export
    assert (evaluation.SELECT_THRESHOLD, evaluation.NMS_THRESHOLD, evaluation.SELECT_TOP_K,
            evaluation.KEEP_TOP_K, evaluation.MATCHING_THRESHOLD) == (
        postprocess.SELECT_THRESHOLD, postprocess.NMS_THRESHOLD, postprocess.SELECT_TOP_K,
        postprocess.KEEP_TOP_K, postprocess.MATCHING_THRESHOLD) == (0.01, 0.45, 400, 200, 0.5)
    assert (export.SELECT_THRESHOLD, export.NMS_THRESHOLD, export.SELECT_TOP_K,
            export.MAX_DETECTIONS) == (0.01, 0.45, 400, postprocess.MAX_DETECTIONS) == \
        (0.01, 0.45, 400, 100)
    assert _script_flag_defaults('eval_ssd', ['select_threshold', 'nms_threshold',
                                              'select_top_k', 'keep_top_k',
                                              'matching_threshold']) == (0.01, 0.45, 400, 200, 0.5)
    assert _script_flag_defaults('export_savedmodel', [
        'select_threshold', 'nms_threshold', 'select_top_k', 'max_detections']) == \
        (0.01, 0.45, 400, 100)


def test_ssdnet_detected_bboxes_default_nms_threshold_is_045():
    # Two boxes of one class with 0.45 < IoU < 0.5: [0, 0, .5, .5] and [0, 0, .5, .2375]
    # have areas .25 and .11875, the second inside the first: IoU = .11875 / .25 = 0.475.
    p = np.array([[[.1, .9, 0.], [.2, .8, 0.]]], np.float32)
    b = np.array([[[0., 0., .5, .5], [0., 0., .5, .2375]]], np.float32)
    params = ssd_vgg_300.SSDNet.default_params._replace(num_classes=3)
    out = ssd_vgg_300.SSDNet(params).detected_bboxes(*_layers(p, b))
    assert int(out['num_detections'][0]) == 1  # suppressed at 0.45, like everything else
    rs, _ = ssd_vgg_300.SSDNet(params, reference_compat=True).detected_bboxes(*_layers(p, b))
    np.testing.assert_allclose(rs[1][0, :2].numpy(), [.9, .8])  # the slim signature: 0.5


def test_export_does_not_import_evaluation():
    import subprocess
    import sys
    code = ("import sys, ssd_tf.export; "
            "sys.exit(1 if 'ssd_tf.evaluation' in sys.modules else 0)")
    assert subprocess.run([sys.executable, '-c', code], cwd=ROOT).returncode == 0
