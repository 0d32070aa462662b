"""Matching and encoding: goldens, the slim reference, the default matcher, properties."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import slim_port
from nets import ssd_vgg_300
from ssd_tf import encoding

NET_REF = ssd_vgg_300.SSDNet(reference_compat=True)
NET = ssd_vgg_300.SSDNet()
ANCHORS = NET.anchors()


def _flat(layers, last=None):
    return np.concatenate([np.reshape(np.asarray(x), [-1] + ([last] if last else []))
                           for x in layers])


def _random_gt(rng, n, num_classes=21):
    c = rng.uniform(0.1, 0.9, size=(n, 2))
    hw = rng.uniform(0.02, 0.6, size=(n, 2))
    b = np.concatenate([c - hw / 2, c + hw / 2], axis=1)[:, [0, 1, 2, 3]]
    b = np.clip(b, 0., 1.).astype(np.float32)
    return rng.integers(1, num_classes, size=n).astype(np.int64), b


def test_output_shapes_and_dtypes():
    gc, gl, gs = NET.bboxes_encode(np.array([3]), np.array([[.1, .1, .6, .5]]), ANCHORS)
    assert [g.shape.as_list() for g in gc] == [[38, 38, 4], [19, 19, 6], [10, 10, 6],
                                               [5, 5, 6], [3, 3, 4], [1, 1, 4]]
    assert [g.shape.as_list() for g in gl][0] == [38, 38, 4, 4]
    assert gc[0].dtype == tf.int64 and gl[0].dtype == tf.float32 and gs[0].dtype == tf.float32


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_reference_matches_literal_slim_loop(seed):
    rng = np.random.default_rng(seed)
    labels, bboxes = _random_gt(rng, 6)
    labels[2] = 25  # >= num_classes: skipped by the original
    bboxes[4] = bboxes[1]  # identical boxes: the earlier one keeps the anchors
    gc, gl, gs = NET_REF.bboxes_encode(labels, bboxes, ANCHORS)
    for i, layer in enumerate(ANCHORS):
        el, eloc, es = slim_port.encode_layer(labels, bboxes, layer, 21)
        np.testing.assert_array_equal(gc[i].numpy(), el)
        np.testing.assert_allclose(gs[i].numpy(), es, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(gl[i].numpy(), eloc, rtol=1e-5, atol=1e-5)


def test_reference_iou0_anchor_gets_unit_box_target():
    gc, gl, gs = NET_REF.bboxes_encode(np.array([1]), np.array([[.0, .0, .1, .1]]), ANCHORS)
    y, x, h, w = ANCHORS[5]  # the single 1x1 anchor cell: centre 0.5, first size 261/300
    # The box [0,0,.1,.1] overlaps the big centred anchors of layer 5, so look at layer 0,
    # cell (37, 37): far from the box, IoU 0 -> target of [0,0,1,1]:
    # t_x = (0.5 - xa) / wa / 0.1, t_w = log(1 / wa) / 0.2.
    y, x, h, w = ANCHORS[0]
    assert gc[0].numpy()[37, 37, 0] == 0 and gs[0].numpy()[37, 37, 0] == 0
    xa, wa, ha = x[37, 37, 0], w[0], h[0]
    np.testing.assert_allclose(gl[0].numpy()[37, 37, 0],
                               [(0.5 - xa) / wa / 0.1, (0.5 - xa) / ha / 0.1,
                                np.log(1 / wa) / 0.2, np.log(1 / ha) / 0.2], rtol=1e-5)
    # the default leaves unmatched anchors at zero offsets
    _, gl_def, _ = NET.bboxes_encode(np.array([1]), np.array([[.0, .0, .1, .1]]), ANCHORS)
    np.testing.assert_array_equal(gl_def[0].numpy()[37, 37, 0], [0., 0., 0., 0.])


def test_reference_labels_low_iou_default_does_not():
    labels, bboxes = np.array([7]), np.array([[.2, .2, .7, .6]], np.float32)
    gc_r, _, gs_r = NET_REF.bboxes_encode(labels, bboxes, ANCHORS)
    gc_d, _, gs_d = NET.bboxes_encode(labels, bboxes, ANCHORS)
    gc_r, gs_r, gc_d, gs_d = _flat(gc_r), _flat(gs_r), _flat(gc_d), _flat(gs_d)
    # slim: every anchor with IoU > 0 carries the label
    np.testing.assert_array_equal(gc_r > 0, gs_r > 0)
    assert np.sum((gc_r > 0) & (gs_r < 0.5)) > 100
    # default: labelled anchors are exactly the threshold matches (+ the bipartite best)
    np.testing.assert_array_equal(gc_d > 0, (gs_d >= 0.5) | (gs_d == gs_d.max()))


def test_bipartite_step_gives_thin_box_a_positive():
    # A thin box (0.3 x 0.02) overlaps no anchor with IoU >= 0.5.
    labels, bboxes = np.array([4]), np.array([[.35, .5, .65, .52]], np.float32)
    gc_r, _, gs_r = NET_REF.bboxes_encode(labels, bboxes, ANCHORS)
    gc_d, gl_d, gs_d = NET.bboxes_encode(labels, bboxes, ANCHORS)
    assert _flat(gs_r).max() < 0.5  # so the slim loss sees no positive at all
    pos = _flat(gc_d) > 0
    assert pos.sum() == 1
    best = np.argmax(_flat(gs_r))  # the anchor of highest IoU is the forced one
    assert pos[best] and _flat(gc_d)[best] == 4


def test_two_boxes_same_best_anchor_deterministic():
    # Two identical boxes with different labels: the forced anchor goes to the lower index.
    bboxes = np.array([[.35, .5, .65, .52]] * 2, np.float32)
    gc, _, _ = NET.bboxes_encode(np.array([4, 9]), bboxes, ANCHORS)
    assert set(_flat(gc)[_flat(gc) > 0]) == {4}


@pytest.mark.parametrize('jit', [True, False])
def test_two_boxes_same_best_anchor_the_higher_iou_wins(jit):
    # Two thin boxes around the same centre, neither reaching 0.5 anywhere; both have their
    # best IoU on the same anchor (float64 IoUs: 0.2230 for the first, 0.2706 for the second,
    # slightly wider one). The second box wins that anchor although its index is higher.
    bboxes = np.array([[.35, .5, .65, .52], [.34, .4975, .66, .5225]], np.float32)
    gc, gs = [x.numpy() for x in encoding.bboxes_encode_flat(
        np.array([4, 9]), bboxes, ANCHORS, 21, jit_compile=jit)[::2]]
    assert (gc > 0).sum() == 1
    assert gc[gc > 0].tolist() == [9]
    assert gs[gc > 0][0] == pytest.approx(0.27058, abs=1e-4)


def test_no_ground_truth():
    for net in (NET, NET_REF):
        gc, gl, gs = net.bboxes_encode(np.zeros([0], np.int64), np.zeros([0, 4], np.float32),
                                       ANCHORS)
        assert _flat(gc).sum() == 0 and _flat(gs).sum() == 0
        assert np.all(np.isfinite(_flat(gl, 4)))


def test_zero_area_padding_and_out_of_range_labels_are_ignored():
    labels = np.array([0, 3, 30, -1])
    bboxes = np.array([[.1, .1, .5, .5], [.4, .4, .4, .4], [.2, .2, .8, .8], [.1, .1, .9, .9]],
                      np.float32)
    gc, gl, gs = NET.bboxes_encode(labels, bboxes, ANCHORS)
    assert _flat(gc).sum() == 0
    assert np.all(np.isfinite(_flat(gl, 4)))
    # the original also skips labels >= num_classes
    gc_r, _, _ = NET_REF.bboxes_encode(np.array([30]), bboxes[2:3], ANCHORS)
    assert _flat(gc_r).sum() == 0


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 5))
def test_decode_encode_round_trip_on_matched_anchors(seed, n):
    labels, bboxes = _random_gt(np.random.default_rng(seed), n)
    gc, gl, gs = NET.bboxes_encode(labels, bboxes, ANCHORS)
    decoded = NET.bboxes_decode([g[None] for g in gl], ANCHORS)
    gc_f = _flat(gc)
    dec = _flat([d[0] for d in decoded], 4)[gc_f > 0]
    # every positive decodes to one of the ground-truth boxes of its label
    d = np.abs(dec[:, None, :] - bboxes[None, :, :]).max(-1)  # [P, N]
    assert np.all(d.min(axis=1) < 1e-4)
    assert np.all(labels[np.argmin(d, axis=1)] == gc_f[gc_f > 0])
    # and every valid box has at least one positive (bipartite step)
    assert len(set(np.argmin(d, axis=1))) == len({tuple(b) for b in bboxes})


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 5),
       st.lists(st.floats(0.05, 1.), min_size=4, max_size=4))
def test_decode_inverts_encode_for_asymmetric_prior_scaling(seed, n, scaling):
    # Any prior_scaling [s_y, s_x, s_h, s_w], e.g. (0.05, 0.3, 0.9, 0.1): the matched
    # anchors decode back to their ground-truth box (the slim decoder swaps y/x and h/w).
    labels, bboxes = _random_gt(np.random.default_rng(seed), n)
    an = ANCHORS[:3]  # the three finest layers keep the example fast
    gc, gl, _ = encoding.bboxes_encode(labels, bboxes, an, 21, prior_scaling=scaling)
    decoded = encoding.bboxes_decode([g[None] for g in gl], an, prior_scaling=scaling)
    gc_f = _flat(gc)
    dec = _flat([d[0] for d in decoded], 4)[gc_f > 0]
    if not len(dec):
        return
    d = np.abs(dec[:, None, :] - bboxes[None, :, :]).max(-1)  # [P, N]
    assert np.all(d.min(axis=1) < 1e-4), d.min(axis=1).max()


def test_decode_reference_compat_is_the_slim_decoder():
    # The slim decoder multiplies x by s0, y by s1, w by s2 and h by s3: hand-derived on one
    # anchor of layer 4 (3x3), offsets t = [1, 1, 1, 1], scaling (0.1, 0.2, 0.3, 0.4).
    y, x, h, w = (np.asarray(v, np.float64) for v in ANCHORS[4])
    ya, xa, ha, wa = y[1, 1, 0], x[1, 1, 0], h[0], w[0]
    scaling = (0.1, 0.2, 0.3, 0.4)
    locs = [np.zeros([1] + list(a[0].shape[:2]) + [a[2].shape[0], 4], np.float32)
            for a in ANCHORS]
    locs[4][0, 1, 1, 0] = 1.
    ref = encoding.bboxes_decode(locs, ANCHORS, scaling, reference_compat=True)[4]
    cy, cx = ya + ha * 0.2, xa + wa * 0.1
    hh, ww = ha * np.exp(0.4), wa * np.exp(0.3)
    np.testing.assert_allclose(ref[0, 1, 1, 0], [cy - hh / 2, cx - ww / 2, cy + hh / 2,
                                                 cx + ww / 2], rtol=1e-5)
    # default: y by s0, x by s1, h by s2, w by s3, the encoder's convention
    new = encoding.bboxes_decode(locs, ANCHORS, scaling)[4]
    cy, cx = ya + ha * 0.1, xa + wa * 0.2
    hh, ww = ha * np.exp(0.3), wa * np.exp(0.4)
    np.testing.assert_allclose(new[0, 1, 1, 0], [cy - hh / 2, cx - ww / 2, cy + hh / 2,
                                                 cx + ww / 2], rtol=1e-5)
    # the two agree for the symmetric default scaling, bit for bit
    for a, b in zip(encoding.bboxes_decode(locs, ANCHORS),
                    encoding.bboxes_decode(locs, ANCHORS, reference_compat=True)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_decode_golden():
    # zero offsets decode to the anchor itself: y +- h/2, x +- w/2
    y, x, h, w = ANCHORS[4]
    locs = [np.zeros([1] + list(a[0].shape[:2]) + [a[2].shape[0], 4], np.float32)
            for a in ANCHORS]
    dec = NET.bboxes_decode(locs, ANCHORS)[4].numpy()
    np.testing.assert_allclose(dec[0, 1, 2, 1], [y[1, 2, 0] - h[1] / 2, x[1, 2, 0] - w[1] / 2,
                                                 y[1, 2, 0] + h[1] / 2, x[1, 2, 0] + w[1] / 2],
                               rtol=1e-6)
    # t_w = 0.2 * log(2) doubles the width (prior scaling 0.2)
    locs[4][0, 1, 2, 1, 2] = np.log(2.) / 0.2
    dec2 = NET.bboxes_decode(locs, ANCHORS)[4].numpy()[0, 1, 2, 1]
    assert dec2[3] - dec2[1] == pytest.approx(2 * w[1], rel=1e-5)


@pytest.mark.slow
def test_encoding_compiles_with_xla_and_in_graph():
    fn = tf.function(lambda l, b: encoding.bboxes_encode_flat(l, b, ANCHORS, 21),
                     jit_compile=True)
    labels, bboxes = np.array([2, 5]), np.array([[.1, .1, .4, .5], [.5, .5, .9, .8]], np.float32)
    got = fn(tf.constant(labels), tf.constant(bboxes))
    want = encoding.bboxes_encode_flat(labels, bboxes, ANCHORS, 21)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
    # inside tf.data with a variable number of boxes
    ds = tf.data.Dataset.from_generator(
        lambda: iter([(labels, bboxes), (labels[:0], bboxes[:0])]),
        output_signature=(tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 4], tf.float32)))
    # (tf.data treats Python lists as tensors to stack: per-layer lists travel as tuples)
    out = list(ds.map(lambda l, b: tuple(tuple(x) for x in NET.bboxes_encode(l, b, ANCHORS))))
    assert _flat(out[0][0]).sum() > 0 and _flat(out[1][0]).sum() == 0


# padded_box_count, by hand: p = the power of two >= max(n, 1), then the next multiple of
# max(p / 8, 1): up to 8 the count itself (0 -> 1, an image without boxes gets one ignored
# row); 9 -> p 16, step 2 -> 10; 11 -> 12; 17 -> p 32, step 4 -> 20; 52 -> p 64, step 8 -> 56;
# 100 -> p 128, step 16 -> 112; 129 -> p 256, step 32 -> 160; 1000 -> p 1024, step 128 -> 1024.
@pytest.mark.parametrize('n, want', [(0, 1), (1, 1), (2, 2), (3, 3), (5, 5), (8, 8), (9, 10),
                                     (11, 12), (16, 16), (17, 20), (20, 20), (21, 24),
                                     (33, 40), (52, 56), (64, 64), (65, 80), (100, 112),
                                     (129, 160), (1000, 1024)])
def test_padded_box_count_golden(n, want):
    assert int(encoding.padded_box_count(tf.constant(n))) == want


def test_padded_box_count_bounds_padding_and_compilations():
    """Every count 0..4096: padded >= the count, padding at most 25 % above 8 boxes and none
    up to 8 (most photos have a few boxes; the matcher's work grows with the padded count),
    and 4 sizes in each octave (2^j, 2^(j+1)]: XLA compiles once per size."""
    counts = np.arange(4097)
    got = encoding.padded_box_count(tf.constant(counts, tf.int32)).numpy()  # elementwise
    assert (got >= np.maximum(counts, 1)).all()
    assert (got[1:9] == counts[1:9]).all()
    assert (got[9:] <= 1.25 * counts[9:]).all()
    for j in range(3, 12):
        octave = got[2 ** j + 1:2 ** (j + 1) + 1]
        assert len(set(octave.tolist())) == 4, j


def _both_paths(labels, bboxes, anchors=ANCHORS, num_classes=21):
    return [encoding.bboxes_encode_flat(labels, bboxes, anchors, num_classes, jit_compile=jit)
            for jit in (True, False)]


def _assert_same_targets(a, b):
    # XLA may contract a multiply and an add (FMA): the IoU can differ in its last bit
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())  # classes
    np.testing.assert_allclose(a[2].numpy(), b[2].numpy(), rtol=1e-6, atol=0)  # IoU scores
    np.testing.assert_allclose(a[1].numpy(), b[1].numpy(), rtol=0, atol=1e-5)  # offsets


@pytest.mark.parametrize('n', [0, 3, 17])
def test_xla_matcher_equals_op_by_op(n):
    # ignored rows among the boxes: label 0, a label out of range, a zero-area box
    labels, bboxes = _random_gt(np.random.default_rng(n), n)
    if n >= 3:
        labels[0], labels[1], bboxes[2, 2] = 0, 99, bboxes[2, 0]
    xla, graph = _both_paths(labels, bboxes)
    _assert_same_targets(xla, graph)
    assert (xla[0].numpy() > 0).any() == (n > 3)


def test_padding_rows_change_nothing():
    # 5 boxes pad to 16; with 30 ignored rows added (label 0, real boxes) they pad to 40
    labels, bboxes = _random_gt(np.random.default_rng(4), 5)
    _, extra = _random_gt(np.random.default_rng(5), 30)
    plain = encoding.bboxes_encode_flat(labels, bboxes, ANCHORS, 21)
    padded = encoding.bboxes_encode_flat(np.concatenate([labels, np.zeros(30, np.int64)]),
                                         np.concatenate([bboxes, extra]), ANCHORS, 21)
    _assert_same_targets(plain, padded)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(0, 70))
def test_xla_matcher_equals_op_by_op_property(seed, n):
    rng = np.random.default_rng(seed)
    labels, bboxes = _random_gt(rng, n)
    labels = np.where(rng.random(n) < 0.1, 0, labels)  # some ignored rows
    xla, graph = _both_paths(labels, bboxes)
    # Equal except where the last bit of an IoU can decide (XLA may fuse a multiply-add)
    clear = _clear_anchors(labels, bboxes)
    np.testing.assert_array_equal(xla[0].numpy()[clear], graph[0].numpy()[clear])
    np.testing.assert_allclose(xla[2].numpy()[clear], graph[2].numpy()[clear], rtol=1e-6, atol=0)
    np.testing.assert_allclose(xla[1].numpy()[clear], graph[1].numpy()[clear], atol=1e-5)


def _anchor_table():
    """The SSD300 anchors as `[K, 4]` (cy, cx, h, w), in the encoder's order."""
    return np.concatenate([np.stack([a.reshape(-1) for a in np.broadcast_arrays(y, x, h, w)],
                                    -1) for y, x, h, w in ANCHORS])


def _clear_anchors(labels, bboxes, threshold=0.5):
    """`[K]` bool: anchors whose match no last-bit rounding of an IoU can change: not within
    1e-5 of the threshold, no two boxes within 1e-5 of each other on the anchor, and not an
    anchor within 1e-5 of some box's best (the bipartite pick); float64 IoUs."""
    iou = _np_iou(bboxes[labels > 0], _anchor_table())
    top2 = -np.sort(-np.concatenate([iou, np.zeros((2, iou.shape[1]))]), axis=0)[:2]
    box_best = iou.max(axis=1, keepdims=True)
    near_best = ((iou >= box_best - 1e-5) & (box_best > 0)).any(axis=0)
    tie = (top2[0] - top2[1] < 1e-5) & (top2[0] > 0)
    clear = ~((np.abs(top2[0] - threshold) < 1e-5) | tie | near_best)
    assert clear.mean() > 0.9
    return clear


def _np_default_matcher(labels, bboxes, threshold=0.5):
    """The paper's matcher written out with loops in float64, for labels in 1..20 or 0
    (ignored): `(classes [K], scores [K])`."""
    keep = labels > 0
    lab, iou = labels[keep], _np_iou(bboxes[keep], _anchor_table())  # [M], [M, K]
    k = iou.shape[1]
    classes, scores = np.zeros(k, np.int64), np.zeros(k)
    if len(lab):
        best = iou.argmax(axis=0)
        scores = iou.max(axis=0)
        classes = np.where(scores >= threshold, lab[best], 0)
    picked = {}  # anchor -> the boxes whose best anchor it is
    for i in range(len(lab)):
        if iou[i].max() > 0:
            picked.setdefault(int(iou[i].argmax()), []).append(i)
    for a, boxes in picked.items():
        winner = max(boxes, key=lambda i: (iou[i, a], -i))  # highest IoU, then lowest index
        classes[a], scores[a] = lab[winner], iou[winner, a]
    return classes, scores


@pytest.mark.parametrize('jit', [True, False])
@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(0, 40))
def test_default_matcher_equals_a_loop_written_out(jit, seed, n):
    rng = np.random.default_rng(seed)
    labels, bboxes = _random_gt(rng, n)
    labels = np.where(rng.random(n) < 0.15, 0, labels)
    got = encoding.bboxes_encode_flat(labels, bboxes, ANCHORS, 21, jit_compile=jit)
    want_classes, want_scores = _np_default_matcher(labels, bboxes)
    clear = _clear_anchors(labels, bboxes)
    np.testing.assert_array_equal(got[0].numpy()[clear], want_classes[clear])
    np.testing.assert_allclose(got[2].numpy()[clear], want_scores[clear], rtol=1e-5, atol=1e-6)


def _np_iou(boxes, anchors_cyxhw):
    """IoU `[N, K]` in float64 of yxyx boxes `[N, 4]` and anchors `[K, 4]` (cy, cx, h, w)."""
    cy, cx, h, w = anchors_cyxhw.astype(np.float64).T
    a = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)
    b = boxes.astype(np.float64)[:, None]
    ih = np.clip(np.minimum(a[:, 2], b[..., 2]) - np.maximum(a[:, 0], b[..., 0]), 0, None)
    iw = np.clip(np.minimum(a[:, 3], b[..., 3]) - np.maximum(a[:, 1], b[..., 1]), 0, None)
    inter = ih * iw
    union = h * w + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return inter / np.maximum(union, 1e-12)


def test_bad_box_shape_rejected():
    with pytest.raises(ValueError, match=r'\[N, 4\]'):
        NET.bboxes_encode(np.array([1]), np.zeros([1, 5], np.float32), ANCHORS)
