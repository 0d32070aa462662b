"""Matching ground truth to anchors and encoding/decoding box offsets.

It is the job of this module to turn one image's labels and boxes into per-layer training
targets (and offsets back into boxes); it does not compute losses or run NMS.

Boxes are `[ymin, xmin, ymax, xmax]` relative to the image. Offsets are stored in the slim
order `[x, y, w, h]`, while `prior_scaling = [s0, s1, s2, s3]` follows the box convention's
order y, x, h, w (as the slim encoder did): `t_x = (cx - xa) / wa / s1`,
`t_y = (cy - ya) / ha / s0`, `t_w = log(w / wa) / s3`, `t_h = log(h / ha) / s2`.
`bboxes_decode` is the exact inverse for any prior_scaling. Under `reference_compat=True` it
keeps the slim decoder, which multiplies x by s0, y by s1, w by s2 and h by s3 (the offset
vector's order), so it inverts the encoder only when s0 == s1 and s2 == s3 (the default
`(0.1, 0.1, 0.2, 0.2)` is such a scaling).

Two matchers:
- reference (`reference_compat=True`), the slim SSD: every anchor takes the ground-truth box
  of highest IoU (strictly above 0; ties keep the earlier box; labels >= num_classes skipped),
  with that box's label whatever the IoU; the 0.5 threshold is applied later, in the loss
  (`gscores > match_threshold`). Anchors with IoU 0 get label 0, score 0 and the target of the
  box `[0, 0, 1, 1]`.
- default, the paper's: each valid box's best anchor is positive (bipartite step), then every
  anchor whose best IoU is `>= match_threshold`; other anchors get label 0 and zero offsets.
  Valid boxes have `1 <= label < num_classes` and a positive area (padding rows, zero-area boxes
  and out-of-range labels are ignored). `gscores` is the IoU with the matched box (for an
  unmatched anchor, its best IoU with any valid box).

Everything runs as graph ops with no loop over boxes or anchors, works in tf.data and compiles
under XLA (`tf.function(jit_compile=True)`). The default matcher runs XLA-compiled unless
`jit_compile=False`: its `[N, K]` IoU and reductions fuse, which at 34k anchors
(`ssd_small_320`) cuts the input pipeline's CPU time per image to about half or less
(bench/bench_pipeline.py, docs/benchmarks.md). Its offsets and IoUs may differ from op-by-op
ones in the last bit, so an anchor on a tie or exactly at the threshold may match differently.
The reference matcher always runs op by op, bit-exact with the slim graph.
"""
import numpy as np
import tensorflow as tf

from ssd_tf import anchors as anchors_lib
from ssd_tf import boxes as boxes_lib


def _flat_anchors(anchors, dtype):
    """Anchor layers -> flat `(ya, xa, ha, wa)` constants, each `[K]`, layer-major then H, W, A."""
    return tuple(tf.constant(v.astype(dtype.as_numpy_dtype))
                 for v in anchors_lib.anchors_flat(anchors))


def _layer_shapes(anchors):
    return [(int(y.shape[0]), int(y.shape[1]), int(np.asarray(h).shape[0]))
            for y, x, h, w in anchors]


def _split_layers(flat, anchors):
    """Splits a flat `[K, ...]` tensor into per-layer `[H, W, A, ...]` tensors."""
    shapes = _layer_shapes(anchors)
    sizes = [h * w * a for h, w, a in shapes]
    parts = tf.split(flat, sizes, axis=0)
    return [tf.reshape(p, list(s) + p.shape.as_list()[1:]) for p, s in zip(parts, shapes)]


def _first_argmax(x, axis):
    """Index of the first maximum along `axis` (deterministic ties), and the maximum."""
    m = tf.reduce_max(x, axis=axis, keepdims=True)
    n = tf.shape(x)[axis]
    idx_shape = [1] * x.shape.rank
    idx_shape[axis] = -1
    idx = tf.reshape(tf.range(n), idx_shape)
    first = tf.reduce_min(tf.where(tf.equal(x, m), idx, n), axis=axis)
    return first, tf.squeeze(m, axis=axis)


def _iou_with_anchors(bboxes, ya, xa, ha, wa):
    """IoU `[N, K]` of boxes `[N, 4]` (yxyx) with anchors, in the slim code's operation order.

    The slim code computes `vol_anchors = (xmax - xmin) * (ymax - ymin)` and
    `union = vol_anchors - inter + (bymax - bymin) * (bxmax - bxmin)`; the same order is kept so
    that reference results match to the bit.
    """
    ymin, xmin, ymax, xmax = tf.unstack(
        boxes_lib.cxcywh_to_yxyx(tf.stack([ya, xa, ha, wa], axis=-1)), axis=-1)  # [K] each
    vol_anchors = (xmax - xmin) * (ymax - ymin)  # [K]
    b = bboxes[:, None, :]  # [N, 1, 4]
    int_ymin = tf.maximum(ymin, b[..., 0])
    int_xmin = tf.maximum(xmin, b[..., 1])
    int_ymax = tf.minimum(ymax, b[..., 2])
    int_xmax = tf.minimum(xmax, b[..., 3])
    h = tf.maximum(int_ymax - int_ymin, 0.)
    w = tf.maximum(int_xmax - int_xmin, 0.)
    inter_vol = h * w  # [N, K]
    union_vol = vol_anchors - inter_vol + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return tf.math.divide_no_nan(inter_vol, union_vol)


def _encode_offsets(ymin, xmin, ymax, xmax, ya, xa, ha, wa, prior_scaling):
    """Box corners `[K]` each -> offsets `[K, 4]` (`[x, y, w, h]`), in the slim order of ops.

    prior_scaling `[s0, s1, s2, s3]` divides y, x, h, w. The centre and size are computed
    here rather than with `boxes.yxyx_to_cxcywh` because the slim order of operations
    (`(ymax + ymin) / 2`) is needed for bit-exact reference targets.
    """
    cy = (ymax + ymin) / 2.
    cx = (xmax + xmin) / 2.
    h = ymax - ymin
    w = xmax - xmin
    cy = (cy - ya) / ha / prior_scaling[0]
    cx = (cx - xa) / wa / prior_scaling[1]
    h = tf.math.log(h / ha) / prior_scaling[2]
    w = tf.math.log(w / wa) / prior_scaling[3]
    return tf.stack([cx, cy, w, h], axis=-1)


@tf.autograph.experimental.do_not_convert  # graph code as written (see ssd_tf/data.py)
def bboxes_encode(labels, bboxes, anchors, num_classes, prior_scaling=(0.1, 0.1, 0.2, 0.2),
                  match_threshold=0.5, reference_compat=False, dtype=tf.float32,
                  jit_compile=True):
    """Encodes one image's ground truth on all anchor layers.

    labels: `[N]` int (0 background, 1..C-1 objects). bboxes: `[N, 4]` yxyx relative.
    anchors: list of `(y [H,W,1], x [H,W,1], h [A], w [A])`.
    jit_compile: the default matcher runs XLA-compiled, its boxes padded with ignored rows to
      `padded_box_count(N)` (exact up to 8, then 4 sizes per octave) so that XLA compiles
      once per size, not once per box count; False
      runs it op by op (the offsets may then differ in the last bits). The reference matcher
      always runs op by op, as the slim graph did, so that it stays bit-exact.
    Returns `(gclasses, glocalisations, gscores)`: lists per layer of `[H, W, A]` int64,
    `[H, W, A, 4]` (`[x, y, w, h]` offsets) and `[H, W, A]` float.
    """
    labels = tf.cast(tf.reshape(tf.convert_to_tensor(labels), [-1]), tf.int64)  # [N]
    bboxes = tf.cast(tf.convert_to_tensor(bboxes), dtype)
    if bboxes.shape.rank is not None and bboxes.shape[-1] not in (None, 4):
        raise ValueError(f"bboxes must be [N, 4] (ymin, xmin, ymax, xmax), got {bboxes.shape}")
    bboxes = tf.reshape(bboxes, [-1, 4])  # [N, 4]
    ya, xa, ha, wa = _flat_anchors(anchors, tf.as_dtype(dtype))  # [K] each
    static = dict(num_classes=int(num_classes), prior_scaling=tuple(prior_scaling),
                  match_threshold=float(match_threshold))
    if reference_compat or not jit_compile:
        flat = _match(labels, bboxes, ya, xa, ha, wa, reference_compat=reference_compat,
                      **static)
    else:
        # Padding rows have label 0: the default matcher ignores them (see the module doc).
        pad = padded_box_count(tf.shape(labels)[0]) - tf.shape(labels)[0]
        flat = _match_xla(tf.pad(labels, [[0, pad]]), tf.pad(bboxes, [[0, pad], [0, 0]]),
                          ya, xa, ha, wa, reference_compat=False, **static)
    return tuple(_split_layers(t, anchors) for t in flat)


# Images without boxes are padded to one ignored row. A floor above 1 costs: the matcher's
# work grows with the padded count, and most photos have a few boxes (at 1 box, padding to 16
# made the XLA matcher slower than op by op; bench/bench_pipeline.py compares the two floors).
MIN_PADDED_BOXES = 1


def padded_box_count(n):
    """The box count `n` (int32 scalar tensor) rounded up to one of four sizes per octave, at
    least `MIN_PADDED_BOXES`: with p the power of two >= n, the next multiple of max(p / 8, 1)
    (1, 2, ..., 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...): at most 25 % padding, one XLA
    compilation per size."""
    n = tf.maximum(tf.cast(n, tf.int32), MIN_PADDED_BOXES)
    p = n - 1
    for shift in (1, 2, 4, 8, 16):
        p = tf.bitwise.bitwise_or(p, tf.bitwise.right_shift(p, shift))
    step = tf.maximum((p + 1) // 8, 1)
    return (n + step - 1) // step * step


def _match(labels, bboxes, ya, xa, ha, wa, num_classes, prior_scaling, match_threshold,
           reference_compat):
    """The matcher on flat anchors `[K]` each: `(gclasses [K] int64, glocs [K, 4],
    gscores [K])` for labels `[N]` and boxes `[N, 4]`."""
    dtype = bboxes.dtype
    iou = _iou_with_anchors(bboxes, ya, xa, ha, wa)  # [N, K]
    n = tf.shape(labels)[0]
    k = tf.shape(ya)[0]

    if reference_compat:
        usable = labels < num_classes  # [N]
        scores = tf.where(usable[:, None], iou, tf.zeros_like(iou))
    else:
        box_area = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
        usable = (labels >= 1) & (labels < num_classes) & (box_area > 0.)
        scores = tf.where(usable[:, None], iou, -tf.ones_like(iou))
    # A zero row of index N so that images without boxes reduce to "no match" cleanly.
    scores = tf.concat([scores, tf.zeros([1, k], dtype)], axis=0)  # [N+1, K]
    best_gt, best_iou = _first_argmax(scores, axis=0)  # [K], [K]

    if reference_compat:
        matched = best_iou > 0.  # the strict "jaccard > running score" update from 0
    else:
        # Bipartite step: each usable box's best anchor (first on ties), when it overlaps at all.
        best_anchor, gt_best_iou = _first_argmax(scores[:-1], axis=1)  # [N], [N]
        picks = usable & (gt_best_iou > 0.)  # [N]
        # Several boxes may pick the same anchor: the one with the highest IoU there (its best
        # IoU) wins, then the lowest index, so the result does not depend on scatter order.
        # Decided among the N boxes ([N, N]), not over the anchors.
        box = tf.range(n)
        iou_i, iou_j = gt_best_iou[:, None], gt_best_iou[None, :]
        beaten = (tf.equal(best_anchor[:, None], best_anchor[None, :]) & picks[None, :]
                  & ((iou_j > iou_i) | ((iou_j == iou_i) & (box[None, :] < box[:, None]))))
        winner = picks & tf.logical_not(tf.reduce_any(beaten, axis=1))  # [N]
        # Each winner has its anchor to itself; the other boxes go to a spare slot K, dropped.
        slot = tf.where(winner, best_anchor, k)[:, None]  # [N, 1]
        forced_gt = tf.scatter_nd(slot, box + 1, [k + 1])[:k] - 1  # [K], -1: not forced
        forced = forced_gt >= 0
        forced_iou = tf.scatter_nd(slot, tf.where(winner, gt_best_iou, 0.), [k + 1])[:k]
        best_gt = tf.where(forced, forced_gt, best_gt)
        threshold_match = best_iou >= match_threshold
        best_iou = tf.where(forced, forced_iou, best_iou)
        matched = forced | threshold_match

    labels_pad = tf.concat([labels, tf.zeros([1], tf.int64)], axis=0)  # [N+1]
    boxes_pad = tf.concat([bboxes, tf.constant([[0., 0., 1., 1.]], dtype)], axis=0)  # [N+1, 4]
    gclasses = tf.where(matched, tf.gather(labels_pad, best_gt), tf.zeros([k], tf.int64))
    gscores = tf.where(matched, best_iou, tf.zeros([k], dtype)) if reference_compat \
        else best_iou
    # Unmatched anchors point at the padding row, whose box is [0, 0, 1, 1].
    gt_boxes = tf.gather(boxes_pad, tf.where(matched, best_gt, n))  # [K, 4]
    glocs = _encode_offsets(gt_boxes[:, 0], gt_boxes[:, 1], gt_boxes[:, 2], gt_boxes[:, 3],
                            ya, xa, ha, wa, prior_scaling)  # [K, 4]
    if not reference_compat:
        glocs = tf.where(matched[:, None], glocs, tf.zeros_like(glocs))
    return gclasses, glocs, gscores


# The [N, K] IoU and its reductions fuse under XLA (bench/bench_pipeline.py --model_name
# ssd_small_320 compares it with the op-by-op graph).
_match_xla = tf.function(_match, jit_compile=True, autograph=False)


def bboxes_decode(feat_localizations, anchors, prior_scaling=(0.1, 0.1, 0.2, 0.2),
                  reference_compat=False):
    """Decodes per-layer offsets into boxes.

    feat_localizations: list per layer of `[..., H, W, A, 4]` (`[x, y, w, h]` offsets).
    prior_scaling `[s0, s1, s2, s3]` applies to y, x, h, w: the exact inverse of
    `bboxes_encode` for any scaling. `reference_compat=True`: the slim decoder, which applies
    s0 to x, s1 to y, s2 to w and s3 to h (the inverse only for symmetric scaling).
    Returns a list per layer of `[..., H, W, A, 4]` yxyx boxes, unclipped.
    """
    if len(feat_localizations) != len(anchors):
        raise ValueError(f"{len(feat_localizations)} localisation layers for "
                         f"{len(anchors)} anchor layers")
    s_y, s_x, s_h, s_w = prior_scaling
    if reference_compat:
        s_x, s_y, s_w, s_h = prior_scaling
    out = []
    for loc, (yref, xref, href, wref) in zip(feat_localizations, anchors):
        loc = tf.convert_to_tensor(loc)
        dt = loc.dtype
        yref, xref, href, wref = (tf.constant(np.asarray(v), dtype=dt)
                                  for v in (yref, xref, href, wref))
        cx = loc[..., 0] * wref * s_x + xref
        cy = loc[..., 1] * href * s_y + yref
        w = wref * tf.exp(loc[..., 2] * s_w)
        h = href * tf.exp(loc[..., 3] * s_h)
        out.append(boxes_lib.cxcywh_to_yxyx(tf.stack([cy, cx, h, w], axis=-1)))
    return out


def bboxes_encode_flat(labels, bboxes, anchors, num_classes, **kwargs):
    """`bboxes_encode` with outputs concatenated over layers: `[K]`, `[K, 4]`, `[K]`."""
    gclasses, glocs, gscores = bboxes_encode(labels, bboxes, anchors, num_classes, **kwargs)
    return (tf.concat([tf.reshape(g, [-1]) for g in gclasses], 0),
            tf.concat([tf.reshape(g, [-1, 4]) for g in glocs], 0),
            tf.concat([tf.reshape(g, [-1]) for g in gscores], 0))
