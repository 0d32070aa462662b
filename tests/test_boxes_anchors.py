"""Box maths and anchors: hand-derived goldens and properties."""
import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from nets import ssd_vgg_300, ssd_vgg_512
from ssd_tf import anchors as anchors_lib
from ssd_tf import boxes


def _random_boxes(rng, n):
    a = rng.uniform(0, 1, size=(n, 2, 2))
    lo, hi = a.min(axis=1), a.max(axis=1)  # [n, 2] each: (y, x)
    return np.stack([lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]], axis=-1).astype(np.float32)


def test_iou_golden():
    # [0,0,1,1] vs its top half: intersection 0.5, union 1 -> 0.5.
    # [0,0,1,1] vs [0.5,0.5,1.5,1.5]: intersection 0.25, union 1 + 1 - 0.25 = 1.75 -> 1/7.
    got = boxes.iou([[0., 0., 1., 1.]], [[0., 0., .5, 1.], [.5, .5, 1.5, 1.5], [2., 2., 3., 3.]])
    np.testing.assert_allclose(got.numpy(), [[0.5, 1 / 7., 0.]], rtol=1e-6)


def test_iou_zero_area_is_zero_not_nan():
    got = boxes.iou([[.2, .2, .2, .2]], [[.2, .2, .2, .2], [0., 0., 1., 1.]]).numpy()
    assert np.all(np.isfinite(got)) and np.all(got == 0.)


def test_last_dimension_checked():
    with pytest.raises(ValueError, match='last dimension of 4'):
        boxes.iou(np.zeros([2, 3]), np.zeros([2, 4]))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 6), st.integers(1, 6))
def test_iou_symmetric_and_bounded(seed, n, m):
    rng = np.random.default_rng(seed)
    a, b = _random_boxes(rng, n), _random_boxes(rng, m)
    ab, ba = boxes.iou(a, b).numpy(), boxes.iou(b, a).numpy()
    np.testing.assert_allclose(ab, ba.T, rtol=1e-6)
    assert ab.min() >= 0. and ab.max() <= 1. + 1e-6
    np.testing.assert_allclose(np.diag(boxes.iou(a, a).numpy()), 1., rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1))
def test_format_round_trips(seed):
    b = _random_boxes(np.random.default_rng(seed), 5)
    np.testing.assert_allclose(boxes.cxcywh_to_yxyx(boxes.yxyx_to_cxcywh(b)).numpy(), b,
                               atol=1e-6)
    np.testing.assert_allclose(
        boxes.pixel_to_relative(boxes.relative_to_pixel(b, 480, 640), 480, 640).numpy(), b,
        atol=1e-6)


def test_clip_boxes():
    got = boxes.clip_boxes([[-.1, .2, 1.3, .9]]).numpy()
    np.testing.assert_allclose(got, [[0., .2, 1., .9]])


def test_clip_boxes_wholly_outside_and_the_slim_variant():
    # A box below the image: clamped to a zero-area box on the border by default; the slim
    # bboxes_clip only raises minima / lowers maxima, leaving it inverted (ymin 1.2 > ymax 1).
    b = [[1.2, .2, 1.5, .4], [.1, -.3, .5, .6]]
    np.testing.assert_allclose(boxes.clip_boxes(b).numpy(), [[1., .2, 1., .4],
                                                             [.1, 0., .5, .6]])
    np.testing.assert_allclose(boxes.clip_boxes(b, reference_compat=True).numpy(),
                               [[1.2, .2, 1., .4], [.1, 0., .5, .6]])
    # a window per batch row broadcasts: [B, 1, 4] against boxes [B, K, 4]
    got = boxes.clip_boxes(np.full((2, 3, 4), .5, np.float32),
                           np.array([[[0., 0., .4, .4]], [[0., 0., 1., 1.]]], np.float32))
    np.testing.assert_allclose(got.numpy()[:, 0], [[.4, .4, .4, .4], [.5, .5, .5, .5]])


def test_reframe_golden_and_inverse_of_the_window():
    # window [.2, .1, .6, .5] (size .4 x .4): its corners map to 0 and 1, its centre
    # (.4, .3) to .5; a box [.3, .2, .4, .5] -> [(.3-.2)/.4, (.2-.1)/.4, (.4-.2)/.4, 1].
    window = [.2, .1, .6, .5]
    got = boxes.reframe([[.2, .1, .6, .5], [.3, .2, .4, .5]], window).numpy()
    np.testing.assert_allclose(got, [[0., 0., 1., 1.], [.25, .25, .5, 1.]], atol=1e-6)
    # numpy float64 in, float64 out (the evaluation path), [B, 1, 4] windows broadcast
    b64 = np.array([[.3, .2, .4, .5]])
    assert boxes.reframe(b64, np.array(window)).dtype == tf.float64
    per_row = boxes.reframe(np.tile(b64, (2, 1, 1)), np.array([[window], [[0., 0., 1., 1.]]]))
    np.testing.assert_allclose(per_row.numpy()[:, 0], [[.25, .25, .5, 1.], b64[0]], atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1))
def test_flip_left_right_is_an_involution_keeping_area(seed):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 1, (6, 2))
    s = rng.uniform(0, .5, (6, 2))
    b = np.concatenate([c - s / 2, c + s / 2], -1).astype(np.float32)
    f = boxes.flip_left_right(b).numpy()
    np.testing.assert_allclose(boxes.flip_left_right(f).numpy(), b, atol=1e-6)
    np.testing.assert_allclose(boxes.area(f).numpy(), boxes.area(b).numpy(), atol=1e-6)
    np.testing.assert_allclose(f[:, [0, 2]], b[:, [0, 2]])  # y untouched
    np.testing.assert_allclose(f[:, 1], 1. - b[:, 3], atol=1e-6)  # new xmin = 1 - old xmax


def test_to_original_relative_numpy_and_tf_paths_agree():
    # evaluation (numpy, one image) and export (tf, a batch) both go through boxes.reframe +
    # clip_boxes; bbox_img [0, .25, 1, .75] = an image padded left and right.
    from ssd_tf import evaluation
    from ssd_tf.export import saved_model as export
    det = np.array([[.25, .5, .5, 1.], [0., 0., .1, .1]], np.float32)
    bbox_img = np.array([0., .25, 1., .75], np.float32)
    a = evaluation.to_original_relative(det, bbox_img)
    b = export.to_original_relative(det[None], bbox_img[None]).numpy()[0]
    np.testing.assert_allclose(a, [[.25, .5, .5, 1.], [0., 0., .1, 0.]], atol=1e-6)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_ssd300_first_layer_anchor_sizes():
    y, x, h, w = ssd_vgg_300.SSDNet().anchors()[0]
    # s0 = 21/300 = 0.07; sqrt(21*45)/300 = 0.102469...; ratio 2: h = 0.07/sqrt(2) = 0.049497,
    # w = 0.07*sqrt(2) = 0.098995; ratio 0.5 swaps them.
    np.testing.assert_allclose(h, [0.07, math.sqrt(21 * 45) / 300, 0.07 / math.sqrt(2),
                                   0.07 * math.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(w, [0.07, math.sqrt(21 * 45) / 300, 0.07 * math.sqrt(2),
                                   0.07 / math.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose([h[2], w[2]], [0.0495, 0.0990], atol=1e-4)
    assert y.shape == (38, 38, 1) and x.shape == (38, 38, 1) and y.dtype == np.float32
    # centres: (row + 0.5) * 8 / 300
    assert y[0, 0, 0] == pytest.approx(0.5 * 8 / 300)
    assert x[0, 37, 0] == pytest.approx(37.5 * 8 / 300)
    assert y[3, 0, 0] == pytest.approx(3.5 * 8 / 300)


def test_anchor_centres_not_clipped():
    # 10x10 layer, step 32: the last centre is 9.5 * 32 / 300 = 1.01333 (> 1, as in slim).
    y, x, h, w = ssd_vgg_300.SSDNet().anchors()[2]
    assert y[9, 0, 0] == pytest.approx(1.013333, abs=1e-5)


def test_anchor_counts_and_ratio_direction():
    a300 = ssd_vgg_300.SSDNet().anchors()
    a512 = ssd_vgg_512.SSDNet().anchors()
    assert sum(anchors_lib.num_boxes_per_layer(a300)) == 8732
    assert sum(anchors_lib.num_boxes_per_layer(a512)) == 24564
    # The network's heads count A per cell: 4, 6, 6, 6, 4, 4 for SSD300 (38*38*4 = 5776 ...).
    from nets import ssd_vgg_keras
    per_cell = ssd_vgg_keras.num_anchors_per_location(ssd_vgg_300.SSDNet.default_params)
    assert per_cell == [4, 6, 6, 6, 4, 4]
    assert [h * w * a for (h, w), a in zip(ssd_vgg_300.SSDNet.default_params.feat_shapes,
                                           per_cell)] == anchors_lib.num_boxes_per_layer(a300)
    for (y, x, h, w), ratios in zip(a300, ssd_vgg_300.SSDNet.default_params.anchor_ratios):
        # aspect ratio means w / h, anchors 2.. follow the ratio list.
        np.testing.assert_allclose(w[2:] / h[2:], ratios, rtol=1e-5)


def test_anchors_to_boxes_order_and_centres():
    an = ssd_vgg_300.SSDNet().anchors()
    flat = anchors_lib.anchors_to_boxes(an)
    assert flat.shape == (8732, 4)
    y, x, h, w = an[0]
    # index (row 1, col 2, anchor 3) of layer 0 is (1*38 + 2)*4 + 3
    i = (1 * 38 + 2) * 4 + 3
    np.testing.assert_allclose(flat[i], [y[1, 2, 0] - h[3] / 2, x[1, 2, 0] - w[3] / 2,
                                         y[1, 2, 0] + h[3] / 2, x[1, 2, 0] + w[3] / 2])
    # centres of the flattened boxes are the anchor centres
    np.testing.assert_allclose((flat[:, 0] + flat[:, 2]) / 2,
                               np.concatenate([np.broadcast_to(a[0], a[0].shape[:2] + a[2].shape)
                                               .reshape(-1) for a in an]), atol=1e-6)


def test_params_field_order():
    assert ssd_vgg_300.SSDParams._fields == (
        'img_shape', 'num_classes', 'no_annotation_label', 'feat_layers', 'feat_shapes',
        'anchor_size_bounds', 'anchor_sizes', 'anchor_ratios', 'anchor_steps', 'anchor_offset',
        'normalizations', 'prior_scaling')
    with pytest.raises(TypeError, match='SSDParams'):
        ssd_vgg_300.SSDNet(params=(1, 2))


def test_anchor_tensors_accepted_by_tf():
    # anchors are numpy; box functions accept numpy or tensors alike
    b = anchors_lib.anchors_to_boxes(ssd_vgg_300.SSDNet().anchors())[:3]
    np.testing.assert_allclose(boxes.area(tf.constant(b)).numpy(), boxes.area(b).numpy())
