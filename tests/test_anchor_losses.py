"""Where the coverage report says boxes are lost (issue 23 item 2), on hand-made boxes."""
import numpy as np

from nets import ssd_small
from ssd_tf import anchors_report

# One layer: a 2 x 2 grid of centres at 0.25 and 0.75, one square anchor shape of side 0.5.
LAYER = (np.array([0.25, 0.75]).reshape(2, 1, 1) * np.ones((2, 2, 1)),
         np.array([0.25, 0.75]).reshape(1, 2, 1) * np.ones((2, 2, 1)),
         np.array([0.5]), np.array([0.5]))
BOXES = np.array([
    [0.0, 0.0, 0.5, 0.5],      # A: exactly the anchor at (0.25, 0.25) -> IoU 1, covered
    [0.25, 0.25, 0.75, 0.75],  # B: the shape fits (IoU 1 when centred) but the nearest centre
                               #    is 0.25 away on both axes: IoU .0625 / .4375 = 0.143
    [0.4, 0.4, 0.5, 0.6],      # C: 0.1 x 0.2; centred on the 0.5 square: IoU 0.02 / 0.25
                               #    = 0.08 < 0.5 whatever the grid; 42 px at 300 px input
    [0.5, 0.5, 0.52, 0.52],    # D: side 0.02 * 300 = 6 px at the input, under 8 px
])


def test_each_reason_on_hand_made_boxes():
    got = anchors_report.loss_reasons(BOXES, [LAYER], (300, 300), 0.5)
    assert got == ['', 'map too coarse', 'no anchor shape', 'input too small']


def test_shape_iou_ignores_the_grid():
    # A and B: the 0.5 square fits exactly (1.0); C: 0.02 / 0.25 = 0.08; D: 0.0004 / 0.25
    np.testing.assert_allclose(anchors_report.best_shape_iou(BOXES, [LAYER]),
                               [1., 1., 0.08, 0.0016], atol=1e-9)


def test_a_larger_input_or_a_lower_threshold_changes_the_reason():
    # D at a 600 px input is 12 px: no longer too small; uncovered, its shape IoU 0.0016 ->
    # no anchor shape.
    assert anchors_report.loss_reasons(BOXES[3:], [LAYER], (600, 600), 0.5) == \
        ['no anchor shape']
    # B at threshold 0.1 is covered (0.143 >= 0.1).
    assert anchors_report.loss_reasons(BOXES[1:2], [LAYER], (300, 300), 0.1) == ['']


def test_losses_by_size_buckets_and_the_report_table():
    reasons = ['', 'map too coarse', 'no anchor shape', 'input too small']
    lost = anchors_report.losses_by_size(reasons, BOXES)
    # sides: B 0.5 -> 32-64%, C sqrt(0.02) = 0.141 -> 8-16%, D 0.02 -> 2-4% (edge goes up)
    assert lost['32-64%']['map too coarse'] == 1
    assert lost['8-16%']['no anchor shape'] == 1
    assert lost['2-4%']['input too small'] == 1
    assert sum(sum(v.values()) for v in lost.values()) == 3
    # on a real network the report carries the table and its JSON the counts
    net = ssd_small.SSDNet()
    report = anchors_report.anchor_coverage(BOXES, net)
    text = report.format()
    assert 'boxes lost, by size' in text
    d = report.to_dict()['lost_by_size']
    # D is 0.02 * 128 = 2.6 px at ssd_small's 128 px input
    assert d['2-4%']['input too small'] == 1
    assert sum(sum(v.values()) for v in d.values()) >= 1


def _small_boxes():
    """10 boxes of side 0.05 (4-8 % of the side) and 2 of side 0.01 (<2 %), spread out."""
    out = []
    for i in range(10):
        y = 0.05 + 0.09 * i
        out.append([y, y, y + 0.05, y + 0.05])
    out += [[0.5, 0.1, 0.51, 0.11], [0.1, 0.5, 0.11, 0.51]]
    return np.array(out)


def test_small_boxes_warning_names_the_small_object_command():
    report = anchors_report.anchor_coverage(_small_boxes(), ssd_small.SSDNet(),
                                            small_object_network='ssd_small_320',
                                            small_object_input=(320, 320))
    assert report.small_share == 1.0  # all 12 boxes are under 16 % of the side
    warning = report.warning()
    assert ('python train_ssd.py --model_name=ssd_small_320 --anchors=auto --class_balance=0.5 '
            '--max_number_of_steps=1600 --max_train_secs=1140 --test_time_flip '
            '<your --dataset_name/--dataset_dir flags> '
            '(input 320x320') in warning
    # the two 0.01 boxes are 0.01 * 320 = 3.2 px at 320 px: still under 8 px
    assert '2 boxes stay under 8 px even at that input' in warning
    assert '100% of the boxes are under 16% of the image side' in warning


def test_no_command_for_large_boxes_or_without_a_small_network():
    big = np.array([[0.1, 0.1, 0.6, 0.6], [0.3, 0.2, 0.9, 0.8]])  # sides 0.5, 0.6
    report = anchors_report.anchor_coverage(big, ssd_small.SSDNet(),
                                            small_object_network='ssd_small_320',
                                            small_object_input=(320, 320))
    assert report.small_share == 0. and report.recommended_command() == ''
    report = anchors_report.anchor_coverage(_small_boxes(), ssd_small.SSDNet())
    assert report.recommended_command() == ''
    assert 'train_ssd.py' not in report.warning()
