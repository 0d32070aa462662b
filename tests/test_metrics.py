"""Tests of ssd_tf.metrics: VOC AP, voc_eval rules, in-memory evaluator, COCO metrics."""
import contextlib
import copy
import io
import json
import math
import os

import numpy as np
import pytest

from ssd_tf import metrics


# ---------------------------------------------------------------------------- AP functions
def test_ap_hand_computed_curve():
    # Ranked detections TP, FP, TP with npos = 2:
    #   recall = [.5, .5, 1], precision = [1, .5, 2/3].
    # VOC12: envelope = 1 on (0, .5], 2/3 on (.5, 1] -> .5 * 1 + .5 * 2/3 = 5/6.
    # VOC07: t = 0, .1, .2, .3, .4, .5 (6 thresholds) reach recall .5 -> max precision 1;
    #   t = .6 .. 1 (5) only recall 1 -> 2/3.  (6 + 5 * 2/3) / 11 = 28/33.
    rec, prec = [.5, .5, 1.], [1., .5, 2. / 3.]
    assert metrics.average_precision_voc12(prec, rec) == pytest.approx(5. / 6.)
    assert metrics.average_precision_voc07(prec, rec) == pytest.approx(28. / 33.)


def test_ap_envelope_uses_later_higher_precision():
    # recall [.25, .5, .75], precision [.5, .4, .6]: the envelope is .6 everywhere up to .75
    # (a later, higher precision lifts the earlier points), then 0 on (.75, 1].
    # VOC12 = .75 * .6 = .45.  VOC07: t = 0...7 (8 thresholds, .7 < .75) -> .6; t = .8, .9,
    # 1 -> 0.  8 * .6 / 11 = 4.8/11.
    rec, prec = [.25, .5, .75], [.5, .4, .6]
    assert metrics.average_precision_voc12(prec, rec) == pytest.approx(.45)
    assert metrics.average_precision_voc07(prec, rec) == pytest.approx(4.8 / 11.)


def test_ap_voc07_uses_py_faster_rcnn_float_thresholds():
    # np.arange(0, 1.1, .1)[3] == 0.30000000000000004 > 3/10: a recall of exactly 0.3 reaches
    # only t = 0, .1, .2 -> 3/11 (a linspace threshold would give 4/11).
    assert metrics.average_precision_voc07([1.], [3. / 10.]) == pytest.approx(3. / 11.)


@pytest.mark.parametrize('fn', [metrics.average_precision_voc07,
                                metrics.average_precision_voc12])
def test_ap_edge_cases(fn):
    assert fn([], []) == 0.
    assert fn([0., 0.], [0., 0.]) == 0.  # only false positives
    # perfect ranking of 4 objects: precision 1 at recall .25 .. 1
    assert fn([1.] * 4, [.25, .5, .75, 1.]) == pytest.approx(1.)
    with pytest.raises(ValueError):
        fn([1.], [1., 1.])


def test_ap_properties_random():
    rng = np.random.default_rng(0)
    for _ in range(50):
        npos = int(rng.integers(1, 10))
        flags = rng.random(int(rng.integers(1, 30))) < .5
        tp = np.cumsum(flags)
        rec = np.minimum(tp, npos) / npos
        prec = tp / np.arange(1, len(flags) + 1)
        ap12 = metrics.average_precision_voc12(prec, rec)
        ap07 = metrics.average_precision_voc07(prec, rec)
        # precision <= 1, so VOC12 AP never exceeds the final recall, and VOC07 AP never
        # exceeds the share of the 11 thresholds that the final recall reaches ...
        assert 0. <= ap12 <= rec[-1] + 1e-12
        reached = np.sum(metrics.VOC07_RECALL_THRESHOLDS <= rec[-1])
        assert 0. <= ap07 <= reached / 11. + 1e-12
        # ... and appending false positives never changes either AP.
        prec2 = np.concatenate([prec, tp[-1] / (len(flags) + np.arange(1, 4))])
        rec2 = np.concatenate([rec, [rec[-1]] * 3])
        assert metrics.average_precision_voc12(prec2, rec2) == pytest.approx(
            metrics.average_precision_voc12(prec, rec))
        assert metrics.average_precision_voc07(prec2, rec2) == pytest.approx(
            metrics.average_precision_voc07(prec, rec))


def test_iou_voc_pixels_plus_one_convention():
    # GT x 1..4, y 1..1: 4 pixels; det x 1..3, y 1..1: 3 pixels, all inside -> IoU 3/4.
    # (Without +1 both boxes would have zero area.)
    assert metrics.iou_voc_pixels([1, 1, 1, 3], [[1, 1, 1, 4]])[0] == pytest.approx(.75)
    # disjoint but adjacent pixels: x 1..2 and 3..4 -> 0
    assert metrics.iou_voc_pixels([1, 1, 1, 2], [[1, 3, 1, 4]])[0] == 0.


# ---------------------------------------------------------------------------- voc_eval
_XML = """<annotation><filename>{name}.jpg</filename>
<size><width>300</width><height>200</height><depth>3</depth></size>
{objects}</annotation>"""
_OBJ_FULL = """<object><name>{cls}</name><pose>Left</pose><truncated>0</truncated>
<difficult>{diff}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>
<ymax>{b[3]}</ymax></bndbox></object>"""
# no pose, no truncated, no difficult
_OBJ_BARE = """<object><name>{cls}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>
<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"""

# Ground truth (boxes xmin ymin xmax ymax, pixels):
#   img_a: dog [10 10 50 50]; dog [100 100 150 150] difficult; cat [200 20 240 60] (bare XML)
#   img_b: dog [1 1 40 10] (40 x 10 = 400 pixels with the +1 convention)
#   img_c: cat [5 5 25 25] (bare XML), no dog
_GT = {
    'img_a': [('dog', (10, 10, 50, 50), 0, True), ('dog', (100, 100, 150, 150), 1, True),
              ('cat', (200, 20, 240, 60), 0, False)],
    'img_b': [('dog', (1, 1, 40, 10), 0, True)],
    'img_c': [('cat', (5, 5, 25, 25), 0, False)],
}
# dog detections (image, score, xmin ymin xmax ymax), ranked by score:
#  .9 img_a exact dog                     -> TP
#  .8 img_a dog shifted by 1 (IoU > .5)   -> FP (its best GT is already matched)
#  .7 img_a on the difficult dog          -> ignored (neither TP nor FP)
#  .6 img_c (no dog on img_c)             -> FP
#  .5 img_b x 1..20: 200/400 = IoU exactly .5 with the +1 convention -> FP (needs > .5)
#  .4 img_b exact                         -> TP
# npos = 2 (difficult excluded). tp = [1,0,0,0,0,1], fp = [0,1,0,1,1,0]
#  recall = [.5,.5,.5,.5,.5,1], precision = [1, .5, .5, 1/3, .25, .4]
#  VOC12 = .5 * 1 + .5 * .4 = .7;  VOC07 = (6 * 1 + 5 * .4) / 11 = 8/11.
_DOG_DETS = [('img_a', .9, (10, 10, 50, 50)), ('img_a', .8, (11, 11, 51, 51)),
             ('img_a', .7, (100, 100, 150, 150)), ('img_c', .6, (10, 10, 50, 50)),
             ('img_b', .5, (1, 1, 20, 10)), ('img_b', .4, (1, 1, 40, 10))]
# cat: one exact detection on img_a, one poor one on img_c (IoU 0) ranked below.
#  npos = 2: recall [.5, .5], precision [1, .5] -> VOC12 = .5, VOC07 = 6/11.
_CAT_DETS = [('img_c', .3, (100, 100, 120, 120)), ('img_a', .95, (200, 20, 240, 60))]


def _write_voc(tmp_path, gt=_GT, dets=None):
    ann = tmp_path / 'Annotations'
    ann.mkdir()
    for name, objs in gt.items():
        body = ''.join((_OBJ_FULL if full else _OBJ_BARE).format(cls=c, b=b, diff=d)
                       for c, b, d, full in objs)
        (ann / f'{name}.xml').write_text(_XML.format(name=name, objects=body))
    (tmp_path / 'test.txt').write_text('\n'.join(gt) + '\n')
    dets = dets if dets is not None else {'dog': _DOG_DETS, 'cat': _CAT_DETS}
    for cls, rows in dets.items():
        (tmp_path / f'comp4_det_test_{cls}.txt').write_text(''.join(
            f'{i} {s} {b[0]} {b[1]} {b[2]} {b[3]}\n' for i, s, b in rows))
    return (str(tmp_path / 'comp4_det_test_{}.txt'), str(ann / '{}.xml'),
            str(tmp_path / 'test.txt'))


def test_voc_eval_rules_dog(tmp_path):
    detpath, annopath, imageset = _write_voc(tmp_path)
    rec, prec, ap12 = metrics.voc_eval(detpath, annopath, imageset, 'dog')
    np.testing.assert_allclose(rec, [.5, .5, .5, .5, .5, 1.])
    np.testing.assert_allclose(prec, [1., .5, .5, 1. / 3., .25, .4])
    assert ap12 == pytest.approx(.7)
    _, _, ap07 = metrics.voc_eval(detpath, annopath, imageset, 'dog', use_07_metric=True)
    assert ap07 == pytest.approx(8. / 11.)


def test_voc_eval_iou_exactly_threshold_is_not_a_match(tmp_path):
    # Only the IoU == .5 detection: FP at ovthresh .5, TP at .49.
    detpath, annopath, imageset = _write_voc(
        tmp_path, dets={'dog': [('img_b', .5, (1, 1, 20, 10))]})
    assert metrics.iou_voc_pixels([1, 1, 10, 20], [[1, 1, 10, 40]])[0] == .5
    rec, prec, _ = metrics.voc_eval(detpath, annopath, imageset, 'dog', ovthresh=.5)
    assert rec.tolist() == [0.] and prec.tolist() == [0.]
    rec, prec, _ = metrics.voc_eval(detpath, annopath, imageset, 'dog', ovthresh=.49)
    assert rec.tolist() == [.5] and prec.tolist() == [1.]


def test_voc_eval_bare_xml_and_unsorted_file(tmp_path):
    # cat objects come from XML without pose/truncated/difficult; the results file is not
    # sorted by score (voc_eval sorts).
    detpath, annopath, imageset = _write_voc(tmp_path)
    rec, prec, ap = metrics.voc_eval(detpath, annopath, imageset, 'cat')
    np.testing.assert_allclose(rec, [.5, .5])
    np.testing.assert_allclose(prec, [1., .5])
    assert ap == pytest.approx(.5)
    assert metrics.voc_eval(detpath, annopath, imageset, 'cat',
                            use_07_metric=True)[2] == pytest.approx(6. / 11.)
    parsed = metrics.parse_voc_xml(annopath.format('img_c'))
    assert parsed['objects'] == [dict(name='cat', bbox=[5., 5., 25., 25.], difficult=False,
                                      truncated=False, pose='Unspecified')]
    assert (parsed['height'], parsed['width']) == (200, 300)


def test_voc_eval_class_without_gt_and_empty_results(tmp_path):
    detpath, annopath, imageset = _write_voc(
        tmp_path, dets={'dog': [], 'bird': [('img_a', .5, (1, 1, 5, 5))]})
    rec, prec, ap = metrics.voc_eval(detpath, annopath, imageset, 'dog')
    assert rec.size == 0 and ap == 0.  # GT but no detections: AP 0
    _, _, ap = metrics.voc_eval(detpath, annopath, imageset, 'bird')
    assert math.isnan(ap)  # no GT: undefined


def test_voc_eval_errors_name_the_file(tmp_path):
    detpath, annopath, imageset = _write_voc(tmp_path)
    with pytest.raises(ValueError, match='comp4_det_test_horse'):
        metrics.voc_eval(detpath, annopath, imageset, 'horse')
    with pytest.raises(ValueError, match='nothere.txt'):
        metrics.voc_eval(detpath, annopath, str(tmp_path / 'nothere.txt'), 'dog')
    (tmp_path / 'comp4_det_test_dog.txt').write_text('img_a 0.5 1 2 3\n')
    with pytest.raises(ValueError, match='comp4_det_test_dog.txt:1'):
        metrics.voc_eval(detpath, annopath, imageset, 'dog')
    (tmp_path / 'comp4_det_test_dog.txt').write_text('img_zzz 0.5 1 2 3 4\n')
    with pytest.raises(ValueError, match='img_zzz'):
        metrics.voc_eval(detpath, annopath, imageset, 'dog')


# ---------------------------------------------------------------------------- in memory
_NAMES = ['cat', 'dog']


def _voc_set_in_memory(annopath, imageset, dets):
    """Ground truth from the XMLs and detections from the rows, as evaluate_detections takes."""
    gts, out = {}, {}
    for image_id in metrics.read_image_set(imageset):
        objs = metrics.parse_voc_xml(annopath.format(image_id))['objects']
        gts[image_id] = dict(boxes=[o['bbox'] for o in objs],
                             labels=[_NAMES.index(o['name']) + 1 for o in objs],
                             difficult=[o['difficult'] for o in objs])
        out[image_id] = dict(boxes=np.zeros((0, 4)), scores=[], classes=[])
    for cls, rows in dets.items():
        for image_id, s, (x0, y0, x1, y1) in rows:
            d = out[image_id]
            d['boxes'] = np.concatenate([d['boxes'], [[y0, x0, y1, x1]]])
            d['scores'] = list(d['scores']) + [s]
            d['classes'] = list(d['classes']) + [_NAMES.index(cls) + 1]
    return gts, out


def test_in_memory_equals_voc_eval(tmp_path):
    dets = {'dog': _DOG_DETS, 'cat': _CAT_DETS}
    detpath, annopath, imageset = _write_voc(tmp_path, dets=dets)
    gts, out = _voc_set_in_memory(annopath, imageset, dets)
    res = metrics.evaluate_detections(gts, out, num_classes=3, class_names=_NAMES)
    for name in _NAMES:
        rec, prec, ap12 = metrics.voc_eval(detpath, annopath, imageset, name)
        ap07 = metrics.voc_eval(detpath, annopath, imageset, name, use_07_metric=True)[2]
        assert res['ap12'][name] == ap12 and res['ap07'][name] == ap07
        np.testing.assert_array_equal(res['per_class'][name]['recall'], rec)
        np.testing.assert_array_equal(res['per_class'][name]['precision'], prec)
    assert res['map12'] == pytest.approx((.7 + .5) / 2)
    assert res['map07'] == pytest.approx((8. / 11. + 6. / 11.) / 2)
    assert res['ap'] is res['ap12']
    assert res['per_class']['dog']['npos'] == 2
    assert (res['per_class']['dog']['tp'], res['per_class']['dog']['fp']) == (2, 3)


def test_in_memory_relative_boxes():
    # Relative boxes times (h, w) = (200, 300) give the pixel boxes: same result.
    gt_pix = {'a': dict(boxes=[[20, 30, 100, 150]], labels=[1])}
    det_pix = {'a': dict(boxes=[[20, 30, 100, 150], [0, 0, 10, 10]], scores=[.9, .8],
                         classes=[1, 1])}
    rel = lambda b: (np.asarray(b, float) / [200, 300, 200, 300])
    gt_rel = {'a': dict(boxes=rel(gt_pix['a']['boxes']), labels=[1])}
    det_rel = {'a': dict(det_pix['a'], boxes=rel(det_pix['a']['boxes']))}
    r1 = metrics.evaluate_detections(gt_pix, det_pix, 2)
    r2 = metrics.evaluate_detections(gt_rel, det_rel, 2, image_shapes={'a': (200, 300)})
    assert r1['ap12'] == r2['ap12'] == {'class_1': 1.}


def test_writer_round_trip_random_equals_voc_eval(tmp_path):
    """Random sets with score ties and duplicates: evaluate() == voc_eval(written files)."""
    rng = np.random.default_rng(1)
    ev = metrics.VOCEvaluator(3, _NAMES)
    gt_xml = {}
    for i in range(12):
        n = int(rng.integers(0, 4))
        y0, x0 = rng.integers(1, 80, size=(2, n))
        hh, ww = rng.integers(5, 60, size=(2, n))
        gboxes = np.stack([y0, x0, y0 + hh, x0 + ww], -1).reshape(-1, 4).astype(float)
        glabels = rng.integers(1, 3, size=n)
        gdiff = rng.random(n) < .2
        k = int(rng.integers(0, 6))
        # detections: jittered copies of GT boxes (duplicates likely) and random ones
        src = gboxes[rng.integers(0, n, size=k)] if n else np.zeros((k, 4)) + 10
        dboxes = src + rng.integers(-4, 5, size=(k, 4))
        dscores = rng.integers(1, 6, size=k) / 10.  # many ties
        dclasses = rng.integers(1, 3, size=k)
        image_id = f'im{i:02d}'
        ev.add_image(image_id, gboxes, glabels, gdiff, dboxes, dscores, dclasses)
        gt_xml[image_id] = [(_NAMES[l - 1], (b[1], b[0], b[3], b[2]), int(d), True)
                            for b, l, d in zip(gboxes.astype(int), glabels, gdiff)]
    res = ev.evaluate()
    paths = ev.write_voc_results(str(tmp_path), split='test')
    assert sorted(os.path.basename(p) for p in paths.values()) == [
        'comp4_det_test_cat.txt', 'comp4_det_test_dog.txt']
    _, annopath, imageset = _write_voc(tmp_path, gt=gt_xml, dets={})
    detpath = str(tmp_path / 'comp4_det_test_{}.txt')
    for name in _NAMES:
        for use07, key in ((False, 'ap12'), (True, 'ap07')):
            rec, prec, ap = metrics.voc_eval(detpath, annopath, imageset, name,
                                             use_07_metric=use07)
            assert ap == pytest.approx(res[key][name], abs=1e-12, nan_ok=True)
            np.testing.assert_allclose(rec, res['per_class'][name]['recall'])
            np.testing.assert_allclose(prec, res['per_class'][name]['precision'])


def test_evaluator_rejects_bad_input():
    ev = metrics.VOCEvaluator(3)
    with pytest.raises(ValueError, match='outside 1..2'):
        ev.add_image('a', [[0, 0, 1, 1]], [3])
    with pytest.raises(ValueError, match='detection class 0'):
        ev.add_image('b', [], [], det_boxes=[[0, 0, 1, 1]], det_scores=[.1], det_classes=[0])
    ev.add_image('c', [], [])
    with pytest.raises(ValueError, match='twice'):
        ev.add_image('c', [], [])
    with pytest.raises(ValueError, match='class_names'):
        metrics.VOCEvaluator(3, ['only_one'])
    with pytest.raises(ValueError, match='without ground truth'):
        metrics.evaluate_detections({}, {'x': {}}, 3)


def test_map_ignores_classes_without_gt():
    gts = {'a': dict(boxes=[[10, 10, 20, 20]], labels=[1])}
    dets = {'a': dict(boxes=[[10, 10, 20, 20], [0, 0, 5, 5]], scores=[.9, .9], classes=[1, 2])}
    res = metrics.evaluate_detections(gts, dets, 3)
    assert res['ap12']['class_1'] == 1. and math.isnan(res['ap12']['class_2'])
    assert res['map12'] == 1. and res['map07'] == pytest.approx(1.)  # 11 * (1/11)


# ---------------------------------------------------------------------------- COCO
def _run_pycocotools(gt, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = copy.deepcopy(gt)
        c.createIndex()
        e = COCOeval(c, c.loadRes(copy.deepcopy(dets)), 'bbox')
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def test_voc_to_coco_convention():
    coco = metrics.voc_to_coco_dict(
        [dict(image_id='x', boxes=[[11, 21, 30, 60]], labels=[2], difficult=[True],
              height=100, width=200)], ['cat', 'dog'])
    # y 11..30, x 21..60 -> x = 20, y = 10, w = 40, h = 20 (area 800 = VOC +1 area)
    ann, = coco['annotations']
    assert ann['bbox'] == [20., 10., 40., 20.] and ann['area'] == 800.
    assert ann['iscrowd'] == 1 and ann['category_id'] == 2
    assert coco['images'] == [dict(id=0, file_name='x', height=100, width=200)]
    assert [c['name'] for c in coco['categories']] == ['cat', 'dog']


def test_coco_metrics_equal_pycocotools_direct(tmp_path):
    rng = np.random.default_rng(3)
    images = []
    dets = []
    for i in range(6):
        n = int(rng.integers(1, 4))
        y0, x0 = rng.integers(1, 200, size=(2, n))
        hh, ww = rng.integers(8, 150, size=(2, n))
        boxes = np.stack([y0, x0, y0 + hh, x0 + ww], -1).astype(float)
        labels = rng.integers(1, 3, size=n)
        images.append(dict(image_id=f'im{i}', boxes=boxes, labels=labels,
                           difficult=rng.random(n) < .2, height=400, width=400))
        jitter = boxes + rng.normal(0, 4, size=boxes.shape)
        dets += metrics.detections_to_coco(i, jitter, rng.random(n), labels)
        dets += metrics.detections_to_coco(i, boxes[:1] + 30, [.05], labels[:1])
    gt = metrics.voc_to_coco_dict(images, ['cat', 'dog'])
    expected = _run_pycocotools(gt, dets)
    got = metrics.coco_metrics(gt, dets)
    assert list(got) == list(metrics.COCO_METRIC_NAMES)
    np.testing.assert_allclose([got[k] for k in metrics.COCO_METRIC_NAMES], expected)
    # from files too
    (tmp_path / 'gt.json').write_text(json.dumps(gt))
    metrics.write_coco_results(str(tmp_path / 'dt.json'), dets)
    got2 = metrics.coco_metrics(str(tmp_path / 'gt.json'), str(tmp_path / 'dt.json'))
    assert got2 == got


def test_coco_metrics_perfect_and_empty():
    images = [dict(image_id='a', boxes=[[10, 10, 109, 109]], labels=[1], height=200,
                   width=200)]
    gt = metrics.voc_to_coco_dict(images, ['obj'])
    perfect = metrics.detections_to_coco(0, [[10, 10, 109, 109]], [.9], [1])
    got = metrics.coco_metrics(gt, perfect)
    # one 100x100 box (area 10000 > 96^2: large), found exactly; no small/medium GT -> -1
    assert got['AP'] == pytest.approx(1.) and got['AP50'] == pytest.approx(1.)
    assert got['APl'] == pytest.approx(1.) and got['APs'] == got['APm'] == -1.
    assert metrics.coco_metrics(gt, [])['AP'] == 0.
    with pytest.raises(ValueError, match='nope.json'):
        metrics.coco_metrics('/nonexistent/nope.json', perfect)


# ---------------------------------------------------------------------------- crowd boxes
def test_voc_ap_crowd_golden():
    """Crowd ground truth is treated like difficult (VOC rule), derived by hand.

    One image, one class. GT: a box A (pixels y 11..30, x 11..30) and a crowd box C (y 51..90,
    x 51..90). Detections by score: .9 exactly on C -> ignored (neither TP nor FP);
    .8 on empty ground (y 1..5, x 61..65) -> FP; .7 exactly on A -> TP. npos = 1 (C not
    counted). Ranked (ignored one has tp = fp = 0): tp [0, 0, 1], fp [0, 1, 0];
    recall [0, 0, 1], precision [0, 0, .5]. VOC12: envelope .5 over recall 0..1 -> .5;
    VOC07: max precision at every threshold is .5 -> .5.
    (Counting C as an ordinary object would give npos 2, tp [1, 0, 1]: AP12 = .5 + .5 * 2/3.)
    """
    a, c = [11, 11, 30, 30], [51, 51, 90, 90]
    gts = {'im': dict(boxes=[a, c], labels=[1, 1], is_crowd=[0, 1])}
    dets = {'im': dict(boxes=[c, [1, 61, 5, 65], a], scores=[.9, .8, .7], classes=[1, 1, 1])}
    res = metrics.evaluate_detections(gts, dets, num_classes=2, class_names=['person'])
    assert res['per_class']['person']['npos'] == 1
    assert (res['per_class']['person']['tp'], res['per_class']['person']['fp']) == (1, 1)
    np.testing.assert_allclose(res['per_class']['person']['precision'], [0., 0., .5])
    assert res['ap12']['person'] == pytest.approx(.5)
    assert res['ap07']['person'] == pytest.approx(.5)


# Hand-made COCO set with crowd regions ([x, y, w, h]; crowd = iscrowd 1), and detections.
#   image 1: cat A [10, 10, 40, 30]; cat crowd [100, 100, 80, 60]; dog [5, 60, 30, 30]
#   image 2: cat [20, 20, 50, 50]; dog crowd [0, 0, 200, 150] (a crowd covering everything)
_COCO_GT = dict(
    images=[dict(id=1, file_name='1.jpg', height=240, width=320),
            dict(id=2, file_name='2.jpg', height=240, width=320)],
    categories=[dict(id=1, name='cat', supercategory='none'),
                dict(id=2, name='dog', supercategory='none')],
    annotations=[
        dict(id=1, image_id=1, category_id=1, bbox=[10, 10, 40, 30], area=1200, iscrowd=0),
        dict(id=2, image_id=1, category_id=1, bbox=[100, 100, 80, 60], area=4800, iscrowd=1),
        dict(id=3, image_id=1, category_id=2, bbox=[5, 60, 30, 30], area=900, iscrowd=0),
        dict(id=4, image_id=2, category_id=1, bbox=[20, 20, 50, 50], area=2500, iscrowd=0),
        dict(id=5, image_id=2, category_id=2, bbox=[0, 0, 200, 150], area=30000, iscrowd=1)])
_COCO_DETS = [
    dict(image_id=1, category_id=1, bbox=[11, 10, 40, 30], score=.9),     # on A
    dict(image_id=1, category_id=1, bbox=[110, 105, 40, 30], score=.95),  # inside the crowd
    dict(image_id=1, category_id=1, bbox=[250, 10, 30, 30], score=.6),    # FP
    dict(image_id=1, category_id=2, bbox=[5, 62, 30, 28], score=.8),      # on the dog
    dict(image_id=2, category_id=1, bbox=[22, 18, 50, 50], score=.7),     # on the cat
    dict(image_id=2, category_id=2, bbox=[30, 30, 60, 60], score=.85),    # in the dog crowd
    dict(image_id=2, category_id=2, bbox=[40, 20, 30, 40], score=.5),     # in the dog crowd
]


def test_coco_metrics_with_crowd_equal_pycocotools_direct(tmp_path):
    """Crowd boxes reach pycocotools as iscrowd through VOCEvaluator (the eval path), giving
    what pycocotools gives on the hand-made COCO files directly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    (tmp_path / 'gt.json').write_text(json.dumps(_COCO_GT))
    (tmp_path / 'dt.json').write_text(json.dumps(_COCO_DETS))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / 'gt.json'))
        e = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / 'dt.json')), 'bbox')
        e.evaluate()
        e.accumulate()
        e.summarize()
    expected = e.stats

    def voc(b):  # COCO [x, y, w, h] -> VOC pixels yxyx (the inverse of the export convention)
        return [b[1] + 1, b[0] + 1, b[1] + b[3], b[0] + b[2]]

    ev = metrics.VOCEvaluator(3, ['cat', 'dog'])
    for im in _COCO_GT['images']:
        anns = [a for a in _COCO_GT['annotations'] if a['image_id'] == im['id']]
        dets = [d for d in _COCO_DETS if d['image_id'] == im['id']]
        ev.add_image(im['file_name'], [voc(a['bbox']) for a in anns],
                     [a['category_id'] for a in anns], None,
                     [voc(d['bbox']) for d in dets], [d['score'] for d in dets],
                     [d['category_id'] for d in dets], image_shape=(im['height'], im['width']),
                     relative=False, gt_is_crowd=[a['iscrowd'] for a in anns])
    got = metrics.coco_metrics(ev.coco_ground_truth(), ev.coco_detections())
    np.testing.assert_allclose([got[k] for k in metrics.COCO_METRIC_NAMES], expected)
    # the crowd regions matter: counted as objects, AP differs
    plain = copy.deepcopy(_COCO_GT)
    for a in plain['annotations']:
        a['iscrowd'] = 0
    assert not np.allclose(_run_pycocotools(plain, _COCO_DETS), expected)


# ---------------------------------------------------------------------------- file names
def test_results_file_names_are_safe_for_any_class_name(tmp_path):
    """Class names with path characters still give one distinct file each, inside out_dir;
    ordinary names keep their file names."""
    names = ['a/b', '..', 'a_b', 'x\\y', 'ok name', '']
    ev = metrics.VOCEvaluator(len(names) + 1, names)
    ev.add_image('im', [[1, 1, 9, 9]], [1], None, [[1, 1, 9, 9]] * len(names),
                 [.5] * len(names), list(range(1, len(names) + 1)))
    out = str(tmp_path / 'results')
    paths = ev.write_voc_results(out)
    assert len(set(paths.values())) == len(names)
    for name, path in paths.items():
        assert os.path.dirname(path) == out and os.path.isfile(path), name
        assert not os.path.basename(path).startswith('.')
        assert metrics.read_voc_results(path)[0] == ['im']
    assert os.path.basename(paths['a_b']) == 'comp4_det_test_a_b.txt'
    assert os.path.basename(paths['ok name']) == 'comp4_det_test_ok name.txt'
    assert paths['a/b'] != paths['a_b']


@pytest.mark.parametrize('bad', ['a/b', '..', '.hidden', 'back\\slash', 'nul\x00', 'tab\tx'])
def test_label_map_rejects_path_characters_naming_file_and_line(tmp_path, bad):
    from ssd_tf.datasets import labelmap
    path = tmp_path / 'labels.txt'
    path.write_text(f'0:none\n1:cat\n2:{bad}\n', encoding='utf-8')
    with pytest.raises(ValueError, match=f'{path}:3: invalid class name'):
        labelmap.LabelMap.read(str(path))
    jpath = tmp_path / 'labels.json'
    jpath.write_text(json.dumps({'none': 0, 'cat': 1, bad: 2}, indent=1), encoding='utf-8')
    with pytest.raises(ValueError, match=f'{jpath}:4: invalid class name'):
        labelmap.LabelMap.read(str(jpath))
    with pytest.raises(ValueError, match='invalid class name'):
        labelmap.LabelMap(['cat', bad])
    assert labelmap.LabelMap(['cat', 'traffic light', 'a.b']).names[1] == 'traffic light'


# ---------------------------------------------------------------------------- one VOC parser
def test_voc_eval_reads_through_the_data_readers_parser(tmp_path):
    """metrics.parse_voc_xml / read_image_set are datasets.voc's parser and id reader."""
    from ssd_tf.datasets import voc
    _, annopath, imageset = _write_voc(tmp_path)
    assert metrics.read_image_set(imageset) == voc.read_id_list(imageset)
    for image_id in metrics.read_image_set(imageset):
        ann = voc.read_annotation(annopath.format(image_id))
        parsed = metrics.parse_voc_xml(annopath.format(image_id))
        assert [(o['name'], o['bbox'], bool(o['difficult'])) for o in ann['objects']] == \
            [(o['name'], o['bbox'], o['difficult']) for o in parsed['objects']]
        assert ann['size'] == (parsed['height'], parsed['width'])
    (tmp_path / 'Annotations' / 'img_b.xml').write_text(
        '<annotation><object><name>dog</name></object></annotation>')
    with pytest.raises(ValueError, match='img_b.xml.*no <bndbox>'):
        metrics.parse_voc_xml(annopath.format('img_b'))


def test_voc_class_name_with_a_slash_is_refused_naming_the_xml(tmp_path):
    """A VOC set whose annotations name a class 'a/b' fails when its label map is inferred,
    before any run, naming the annotation file."""
    from ssd_tf.datasets import voc
    _write_voc(tmp_path, gt={'img_a': [('cat', (1, 1, 9, 9), 0, True)],
                             'img_b': [('a/b', (1, 1, 9, 9), 0, True)]}, dets={})
    with pytest.raises(ValueError, match=r"img_b\.xml: class name 'a/b' cannot be used"):
        voc.infer_label_map(str(tmp_path))
