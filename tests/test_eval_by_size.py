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
    # bucket, npos, dets counted, AP07, AP12, recall (goldens of test_per_size_ap_hand_golden);
    # one box of the class per bucket, under the report's 10: no mean AP, the class named
    assert '8-16%          1       2     nan     nan  1.0000' in table
    assert '32-64%         1       1     nan     nan  1.0000' in table
    assert 'left out: 8-16% thing (1); 32-64% thing (1)' in table
    # with every class counted, the hand goldens
    table = evaluation.format_size_table(evaluation.size_metrics(run.evaluator, 1), 1)
    assert '8-16%          1       2  0.5000  0.5000  1.0000' in table
    assert '32-64%         1       1  1.0000  1.0000  1.0000' in table
    m, paths = evaluation.write_report(run, str(tmp_path), num_sample_images=0)
    with open(paths['json']) as f:
        saved = json.load(f)
    assert saved['by_size']['8-16%']['map07'] is None
    assert saved['by_size']['8-16%']['ap07'] == {'thing': pytest.approx(0.5)}
    assert saved['by_size']['32-64%']['ap12'] == {'thing': 1.0}


def _two_class_bucket(num_a):
    """One 100 x 100 image; every box 10 x 10 px (10 % of the side -> bucket 8-16%).
    Class 'a': `num_a` boxes in a row at x = 10 * k, each detected exactly (score .9).
    Class 'b': one box at [80, 80, 90, 90], not detected.
    So AP('a') = 1 and AP('b') = 0 in the bucket; recall num_a / (num_a + 1)."""
    ev = metrics.VOCEvaluator(3, ['a', 'b'])
    boxes_a = [[0, 10 * k, 10, 10 * k + 10] for k in range(num_a)]
    ev.add_image('i', boxes_a + [[80, 80, 90, 90]], [1] * num_a + [2],
                 det_boxes=boxes_a, det_scores=[.9] * num_a, det_classes=[1] * num_a,
                 image_shape=(100, 100), relative=False)
    return ev


def test_a_class_with_few_boxes_in_a_bucket_is_left_out_of_its_mean_not_of_its_recall():
    # min_positives 1 (every class): mean of AP 1 and AP 0 = 1/2
    b = _two_class_bucket(2).evaluate_by_size(EDGES, NAMES)['8-16%']
    assert b['map07'] == pytest.approx(1 / 2) and b['map12'] == pytest.approx(1 / 2)
    assert b['left_out'] == [] and b['class_npos'] == {'a': 2, 'b': 1}
    # min_positives 2: 'b' (one box) is left out -> the mean is AP('a') = 1; its AP and
    # count are still reported, and the recall still counts its missed box: 2 / 3
    b = _two_class_bucket(2).evaluate_by_size(EDGES, NAMES, min_positives=2)['8-16%']
    assert b['map07'] == pytest.approx(1.) and b['map12'] == pytest.approx(1.)
    assert b['left_out'] == ['b'] and b['ap07'] == {'a': pytest.approx(1.), 'b': 0.}
    assert b['recall'] == pytest.approx(2 / 3)
    # min_positives 3: both classes are under it -> no mean (nan), recall still 2 / 3
    b = _two_class_bucket(2).evaluate_by_size(EDGES, NAMES, min_positives=3)['8-16%']
    assert np.isnan(b['map07']) and np.isnan(b['map12'])
    assert sorted(b['left_out']) == ['a', 'b'] and b['recall'] == pytest.approx(2 / 3)


def test_the_report_needs_ten_boxes_of_a_class_in_a_bucket_and_names_those_left_out(
        tmp_path):
    import json
    from ssd_tf import evaluation
    assert evaluation.MIN_BUCKET_POSITIVES == 10

    def report(num_a):
        run = evaluation.EvalRun(evaluator=_two_class_bucket(num_a), num_images=1,
                                 seconds=1., detect_seconds=0., detections={}, samples={})
        return run, evaluation.compute_metrics(run)
    # 10 boxes of 'a' (AP 1) and 1 of 'b' (AP 0): the bucket's AP is 1, not 1/2
    run, m = report(10)
    b = m['by_size']['8-16%']
    assert b['map07'] == pytest.approx(1.) and b['left_out'] == ['b']
    assert b['recall'] == pytest.approx(10 / 11)
    table = evaluation.format_table(m)
    assert '8-16%         11      10  1.0000  1.0000  0.9091' in table
    assert ('AP over the classes with >= 10 boxes in the bucket (nan: none has); '
            'left out: 8-16% b (1)') in table
    m, paths = evaluation.write_report(run, str(tmp_path), num_sample_images=0)
    with open(paths['json']) as f:
        saved = json.load(f)['by_size']['8-16%']
    assert saved['class_npos'] == {'a': 10, 'b': 1} and saved['left_out'] == ['b']
    assert saved['ap07'] == {'a': pytest.approx(1.), 'b': 0.}
    # 9 boxes of 'a': no class reaches 10 -> nan (null in metrics.json)
    _, m = report(9)
    assert np.isnan(m['by_size']['8-16%']['map07'])
    assert '8-16%         10       9     nan     nan  0.9000' in evaluation.format_table(m)


def test_a_metrics_json_written_before_the_minimum_still_formats():
    from ssd_tf import evaluation
    old = {'8-16%': {'npos': 3, 'num_detections': 2, 'recall': 2 / 3, 'map07': .5,
                     'map12': .5, 'ap07': {'a': 1., 'b': 0.}, 'ap12': {'a': 1., 'b': 0.}}}
    table = evaluation.format_size_table(old)
    assert '8-16%          3       2  0.5000  0.5000  0.6667' in table
    assert 'left out' not in table
