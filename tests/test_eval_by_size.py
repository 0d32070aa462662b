"""Per-size evaluation (issue 23 item 2): AP and recall per object-size bucket, hand goldens."""
import numpy as np
import pytest

from ssd_tf import boxes as boxes_lib
from ssd_tf import metrics

EDGES, NAMES = boxes_lib.SIZE_EDGES, boxes_lib.SIZE_NAMES


def _one_image_case():
    """One 100 x 100 image, one class.
    GT A [10, 10, 20, 20]: side 10 px = 10 % of the side -> bucket 8-16%.
    GT B [50, 50, 90, 90]: side 40 px = 40 %            -> bucket 32-64%.
    d2 score .95 [70, 0, 80, 10] (10 %, overlaps nothing): unmatched.
    d1 score .9 on B exactly; d3 score .7 on A exactly."""
    ev = metrics.VOCEvaluator(2, ['thing'])
    ev.add_image('img', [[10, 10, 20, 20], [50, 50, 90, 90]], [1, 1],
                 det_boxes=[[50, 50, 90, 90], [70, 0, 80, 10], [10, 10, 20, 20]],
                 det_scores=[.9, .95, .7], det_classes=[1, 1, 1],
                 image_shape=(100, 100), relative=False)
    return ev


def test_per_size_ap_hand_golden():
    by = _one_image_case().evaluate_by_size(EDGES, NAMES)
    # 8-16%: A counts (npos 1), B is ignored. Ranked: d2 FP (10 %, in the bucket), d1 matched
    # to the ignored B -> neither (tp 0, fp 0), d3 TP on A. cum tp 0,0,1; cum fp 1,1,1 ->
    # precision at recall 1 = 1 / (1 + 1) = 1/2. VOC07: max precision at recall >= t is 1/2
    # for all 11 t -> 1/2; VOC12: 1/2 * (1 - 0) = 1/2.
    small = by['8-16%']
    assert small['npos'] == 1 and small['tp'] == 1 and small['num_detections'] == 2
    assert small['map07'] == pytest.approx(1 / 2) and small['map12'] == pytest.approx(1 / 2)
    assert small['recall'] == pytest.approx(1.)
    # 32-64%: B counts, A is ignored. d2 unmatched and 10 % (not this bucket) -> ignored;
    # d1 TP on B; d3 matched to the ignored A -> neither. Precision 1 at recall 1 -> AP 1.
    # (Were d2 counted as FP here, precision at d1 would be 1/2 and AP 0.5.)
    big = by['32-64%']
    assert big['npos'] == 1 and big['tp'] == 1 and big['num_detections'] == 1
    assert big['map07'] == pytest.approx(1.) and big['map12'] == pytest.approx(1.)
    assert big['ap12'] == {'thing': pytest.approx(1.)}
    # buckets without ground truth: npos 0, AP and recall undefined
    assert by['2-4%']['npos'] == 0 and np.isnan(by['2-4%']['map07'])
    assert np.isnan(by['2-4%']['recall'])
    # the overall AP is unchanged: ranks d2 FP, d1 TP, d3 TP; npos 2 -> precision 0, 1/2,
    # 2/3 at recall 0, 1/2, 1; the VOC12 envelope is 2/3 over recall 0..1 -> 2/3
    assert _one_image_case().evaluate()['map12'] == pytest.approx(2 / 3)


def test_a_missed_box_lowers_its_bucket_recall_only():
    # 200 x 200 image: GT A 6 px (3 % -> 2-4%), GT B 60 px (30 % -> 16-32%); one detection on B.
    ev = metrics.VOCEvaluator(2, ['thing'])
    ev.add_image('i', [[0, 0, 6, 6], [100, 100, 160, 160]], [1, 1],
                 det_boxes=[[100, 100, 160, 160]], det_scores=[.8], det_classes=[1],
                 image_shape=(200, 200), relative=False)
    by = ev.evaluate_by_size(EDGES, NAMES)
    assert by['2-4%']['recall'] == 0. and by['2-4%']['map12'] == 0.
    assert by['16-32%']['recall'] == 1. and by['16-32%']['map12'] == 1.


def test_difficult_ground_truth_stays_ignored_in_its_bucket():
    ev = metrics.VOCEvaluator(2, ['thing'])
    ev.add_image('i', [[10, 10, 20, 20]], [1], gt_difficult=[True],
                 det_boxes=[[10, 10, 20, 20]], det_scores=[.9], det_classes=[1],
                 image_shape=(100, 100), relative=False)
    b = ev.evaluate_by_size(EDGES, NAMES)['8-16%']
    assert b['npos'] == 0 and b['num_detections'] == 0


def test_no_image_shape_no_per_size_result():
    ev = metrics.VOCEvaluator(2, ['thing'])
    ev.add_image('i', [[10, 10, 20, 20]], [1], det_boxes=[[10, 10, 20, 20]], det_scores=[.9],
                 det_classes=[1])
    assert ev.evaluate_by_size(EDGES, NAMES) is None


def test_report_table_and_json_carry_the_size_buckets(tmp_path):
    import json
    from ssd_tf import evaluation
    run = evaluation.EvalRun(evaluator=_one_image_case(), num_images=1, seconds=1.,
                             detect_seconds=0., detections={}, samples={})
    m = evaluation.compute_metrics(run)
    assert list(m['by_size']) == ['8-16%', '32-64%']  # buckets with ground truth only
    table = evaluation.format_table(m)
    # bucket, npos, dets counted, AP07, AP12, recall (goldens of test_per_size_ap_hand_golden)
    assert '8-16%          1       2  0.5000  0.5000  1.0000' in table
    assert '32-64%         1       1  1.0000  1.0000  1.0000' in table
    m, paths = evaluation.write_report(run, str(tmp_path), num_sample_images=0)
    with open(paths['json']) as f:
        saved = json.load(f)
    assert saved['by_size']['8-16%']['map07'] == pytest.approx(0.5)
    assert saved['by_size']['32-64%']['ap12'] == {'thing': 1.0}
