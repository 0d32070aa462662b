"""Box maths as small pure functions on `[ymin, xmin, ymax, xmax]` boxes normalised to [0, 1].

Every function accepts numpy arrays or tensors and returns tensors; the last dimension of any
box argument must be 4. Formats other than yxyx appear only in a function's name
(`yxyx_to_cxcywh`, `pixel_to_relative`).
"""
import numpy as np
import tensorflow as tf


def _as_boxes(boxes, dtype=None, name="boxes"):
    """Converts to a float tensor and checks the last dimension is 4."""
    boxes = tf.convert_to_tensor(boxes, dtype=dtype)
    if not boxes.dtype.is_floating:
        boxes = tf.cast(boxes, tf.float32)
    if boxes.shape.rank is not None and boxes.shape.rank >= 1 and boxes.shape[-1] is not None \
            and boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have a last dimension of 4 ([ymin, xmin, ymax, xmax]), "
                         f"got shape {boxes.shape}")
    return boxes


def area(boxes):
    """Area of boxes `[..., 4]` (yxyx) -> `[...]`; inverted boxes have area 0."""
    boxes = _as_boxes(boxes)
    h = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.)
    w = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.)
    return h * w


def intersection(boxes1, boxes2):
    """Pairwise intersection areas: boxes1 `[N, 4]`, boxes2 `[M, 4]` (yxyx) -> `[N, M]`."""
    boxes1 = _as_boxes(boxes1, name="boxes1")
    boxes2 = _as_boxes(boxes2, dtype=boxes1.dtype, name="boxes2")
    b1 = boxes1[:, None, :]  # [N, 1, 4]
    b2 = boxes2[None, :, :]  # [1, M, 4]
    h = tf.maximum(tf.minimum(b1[..., 2], b2[..., 2]) - tf.maximum(b1[..., 0], b2[..., 0]), 0.)
    w = tf.maximum(tf.minimum(b1[..., 3], b2[..., 3]) - tf.maximum(b1[..., 1], b2[..., 1]), 0.)
    return h * w


def coverage(windows, boxes):
    """Pairwise fraction of each box's area inside each window: windows `[K, 4]`, boxes
    `[M, 4]` (yxyx) -> `[K, M]` in [0, 1] (intersection / box area; 1 for a box wholly inside).

    The window's own size does not count, unlike `iou`: a window far larger than a box covers
    it fully. A zero-area box is covered by nothing (0), so it never makes a window valid.
    """
    windows = _as_boxes(windows, name="windows")
    boxes = _as_boxes(boxes, dtype=windows.dtype, name="boxes")
    return tf.math.divide_no_nan(intersection(windows, boxes), area(boxes)[None, :])


def iou(boxes1, boxes2):
    """Pairwise IoU: boxes1 `[N, 4]`, boxes2 `[M, 4]` (yxyx) -> `[N, M]` in [0, 1].

    The matrix is boxes1 x boxes2. A pair whose union is 0 (two zero-area boxes) has IoU 0.
    """
    boxes1 = _as_boxes(boxes1, name="boxes1")
    boxes2 = _as_boxes(boxes2, dtype=boxes1.dtype, name="boxes2")
    inter = intersection(boxes1, boxes2)
    union = area(boxes1)[:, None] + area(boxes2)[None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def clip_boxes(boxes, window=(0., 0., 1., 1.), reference_compat=False):
    """Clips boxes `[..., 4]` (yxyx) to `window` (yxyx, `[4]` or broadcastable to `boxes`).

    Default: every coordinate is clamped into the window, so a box wholly outside it becomes a
    zero-area box on its border. `reference_compat=True`: the slim `bboxes_clip`, which only
    raises the minima and lowers the maxima (the box's intersection with the window), so a box
    wholly outside comes out inverted. Both agree on every box that overlaps the window.
    """
    boxes = _as_boxes(boxes)
    window = tf.cast(_as_boxes(window, name="window"), boxes.dtype)
    if reference_compat:
        return tf.stack([tf.maximum(boxes[..., 0], window[..., 0]),
                         tf.maximum(boxes[..., 1], window[..., 1]),
                         tf.minimum(boxes[..., 2], window[..., 2]),
                         tf.minimum(boxes[..., 3], window[..., 3])], axis=-1)
    lo = tf.gather(window, [0, 1, 0, 1], axis=-1)
    hi = tf.gather(window, [2, 3, 2, 3], axis=-1)
    return tf.minimum(tf.maximum(boxes, lo), hi)


def reframe(boxes, window):
    """Expresses boxes `[..., 4]` (yxyx) in the frame of `window` (yxyx, `[4]` or broadcastable
    to `boxes`, e.g. `[B, 1, 4]` for boxes `[B, K, 4]`): `(box - window origin) / window size`.

    Not clipped. The window's own corners map to `[0, 0, 1, 1]`; reframing by the window of
    a crop moves boxes into the crop's frame, reframing by the original image's extent in the
    network input (`bbox_img`) moves detections back to the original image.
    """
    boxes = _as_boxes(boxes)
    window = tf.cast(_as_boxes(window, name="window"), boxes.dtype)
    origin = tf.gather(window, [0, 1, 0, 1], axis=-1)
    size = tf.gather(window, [2, 3, 2, 3], axis=-1) - origin
    return (boxes - origin) / size


def flip_left_right(boxes):
    """Boxes `[..., 4]` (yxyx, relative) of an image mirrored left-right: x -> 1 - x."""
    boxes = _as_boxes(boxes)
    return tf.stack([boxes[..., 0], 1. - boxes[..., 3], boxes[..., 2], 1. - boxes[..., 1]],
                    axis=-1)


def yxyx_to_cxcywh(boxes):
    """`[..., 4]` yxyx -> `[..., 4]` as `[cy, cx, h, w]` (centre first, y before x)."""
    boxes = _as_boxes(boxes)
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    return tf.stack([boxes[..., 0] + h / 2., boxes[..., 1] + w / 2., h, w], axis=-1)


def cxcywh_to_yxyx(boxes):
    """`[..., 4]` as `[cy, cx, h, w]` -> `[..., 4]` yxyx."""
    boxes = _as_boxes(boxes)
    cy, cx, h, w = tf.unstack(boxes, axis=-1)
    return tf.stack([cy - h / 2., cx - w / 2., cy + h / 2., cx + w / 2.], axis=-1)


def pixel_to_relative(boxes, height, width):
    """Pixel yxyx `[..., 4]` -> relative yxyx, dividing y by `height` and x by `width`."""
    boxes = _as_boxes(boxes)
    scale = tf.cast(tf.stack([height, width, height, width]), boxes.dtype)
    return boxes / scale


def relative_to_pixel(boxes, height, width):
    """Relative yxyx `[..., 4]` -> pixel yxyx (inverse of `pixel_to_relative`)."""
    boxes = _as_boxes(boxes)
    scale = tf.cast(tf.stack([height, width, height, width]), boxes.dtype)
    return boxes * scale


# Object-size buckets of the coverage report, the per-size evaluation and the small-object
# dev set: the side sqrt(h * w) of a relative box, as a share of the image side.
SIZE_EDGES = (0.02, 0.04, 0.08, 0.16, 0.32, 0.64)
SIZE_NAMES = ('<2%', '2-4%', '4-8%', '8-16%', '16-32%', '32-64%', '>64%')


def size_bucket(gt_boxes):
    """Size bucket index (into `SIZE_NAMES`) of each box `[N, 4]`: sqrt(h * w) vs
    `SIZE_EDGES` (an edge value falls in the upper bucket)."""
    b = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    side = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    return np.searchsorted(SIZE_EDGES, side, side='right')
