"""Pre-processing for SSD VGG networks: training augmentation and evaluation resizing.

Images are `[H, W, 3]` RGB, uint8 or float holding pixel values in 0..255; boxes are `[N, 4]`
`[ymin, xmin, ymax, xmax]` normalised to [0, 1]; labels are `[N]`. Every function returns a
float32 image of RGB pixel values minus the VGG means `(_R_MEAN, _G_MEAN, _B_MEAN)` (no /255, no
BGR swap) and boxes relative to the returned image, as a fixed namedtuple: `TrainExample(image,
labels, bboxes, difficults)` from `preprocess_for_train`, `EvalExample(image, labels, bboxes,
bbox_img, difficults)` from `preprocess_for_eval` (difficults all-zero when none are given).
Box maths (flip, reframing, clipping) comes from `ssd_tf.boxes`. Everything is TF graph code
(runs inside `tf.data.Dataset.map`, no `py_function`, no Python loop over boxes).

Evaluation resizes (or crops) first and converts to float and subtracts the means at the output
size, so its memory is bounded by `out_shape` whatever the input's size; `reference_compat=True`
keeps the slim order (means subtracted at full size, then TF1's bilinear resize).

Two training chains:
- default: the SSD paper's augmentation (photometric distortions, expand / zoom-out, min-IoU
  patch sampling, horizontal flip, one resize). `expand_max_ratio` bounds the zoom-out (1: none,
  for data whose objects are already small); `patch_overlap='coverage'` measures the patch
  sampling's overlap by the fraction of a box inside the patch instead of the IoU, so that it
  crops (zooms in) around small boxes too. Boxes are clipped to the sampled patch; boxes
  whose centre leaves the patch, or thinner than `MIN_BOX_SIZE`, are dropped. For speed the
  expand + patch + flip + resize is one `crop_and_resize` read straight from the uint8 image
  (no full-resolution float copy), and the photometric distortions run afterwards on the
  output pixels as one affine colour map (see `_photometric_affine`): the same as caffe's
  order for these pointwise ops except that contrast uses the mean of the visible patch,
  values are clipped once at the end rather than after each step, and hue is a rotation of
  the YIQ chroma plane rather than an HSV shift.
- `reference_compat=True`: the slim SSD's chain (`sample_distorted_bounding_box` crop, boxes
  kept when more than half of their area is inside the crop and NOT clipped, warp resize, flip,
  colour distortion in [0, 1], x255 minus means). Same distributions as the original, drawn
  from stateless ops, so not the original's random numbers.

Randomness is stateless: `seed` is an int32/int64 tensor of shape `[2]` (e.g. built per element
in tf.data from a base seed and the element index) and the same seed gives the same output.
"""
import collections
import enum

import numpy as np
import tensorflow as tf

from ssd_tf import boxes as boxes_lib
from ssd_tf import images as images_lib

# Resizing strategies for evaluation (the slim names and order).
Resize = enum.IntEnum('Resize', ('NONE',            # Nothing.
                                 'CENTRAL_CROP',    # Central crop and/or pad to out_shape.
                                 'PAD_AND_RESIZE',  # Shrink to fit, then pad to out_shape.
                                 'WARP_RESIZE'))    # Warp resize to out_shape.

# VGG mean parameters (RGB, 0..255 pixel values).
_R_MEAN = 123.
_G_MEAN = 117.
_B_MEAN = 104.
_MEANS = (_R_MEAN, _G_MEAN, _B_MEAN)
# Grey value sampled outside the image by crop_and_resize (replaced by the mean colour at the
# end); close to the means so that it barely moves the contrast statistics.
_FILL = sum(_MEANS) / 3.

EVAL_SIZE = (300, 300)

# Fixed return types: every call returns all fields (difficults are all-zero int64 flags when
# none are given), so callers read fields by name instead of counting tuple items.
TrainExample = collections.namedtuple('TrainExample', ['image', 'labels', 'bboxes',
                                                       'difficults'])
EvalExample = collections.namedtuple('EvalExample', ['image', 'labels', 'bboxes', 'bbox_img',
                                                     'difficults'])

# Slim training chain (SPEC "Preprocessing").
MIN_OBJECT_COVERED = 0.25
CROP_RATIO_RANGE = (0.6, 1.67)  # width / height of the crop.
CROP_AREA_RANGE = (0.1, 1.0)
CROP_MAX_ATTEMPTS = 200
BBOX_CROP_OVERLAP = 0.5         # Keep a box when more than this fraction of it is in the crop.

# SSD paper / caffe training chain.
BRIGHTNESS_DELTA = 32.          # Pixel values (0..255).
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18. / 360.          # caffe's hue_delta of 18 degrees, as a fraction of the circle.
PHOTOMETRIC_PROB = 0.5          # Each photometric distortion is applied with this probability.
EXPAND_PROB = 0.5
EXPAND_MAX_RATIO = 4.           # The paper's; `preprocess_for_train(expand_max_ratio=...)`.
# `expand_max_ratio_for_boxes`: no zoom-out for data whose median box side sqrt(h * w) is under
# this fraction of the image side (the paper's 4x would take it under 2 %).
NO_ZOOM_OUT_MEDIAN_SIDE = 0.08
# Patch sampling modes: NaN = the whole image, -inf = any patch, else the minimum IoU with some
# ground-truth box. Each mode is drawn with equal probability.
PATCH_MIN_IOUS = (float('nan'), 0.1, 0.3, 0.5, 0.7, 0.9, float('-inf'))
PATCH_SCALE_RANGE = (0.3, 1.)   # sqrt of the patch area, relative to the (expanded) image.
PATCH_ASPECT_RANGE = (0.5, 2.)  # width / height, relative units.
PATCH_TRIALS = 50               # Candidate patches sampled at once (caffe's max_trials).
# How a candidate patch's overlap with a box is measured against the mode's minimum
# (`preprocess_for_train(patch_overlap=...)`): 'iou', the paper's; 'coverage', the fraction of
# the box inside the patch (what slim's min_object_covered measures). A patch at least
# PATCH_SCALE_RANGE[0] of the side reaches IoU 0.1 only with a box of 0.3 * sqrt(0.1) = 9.5 %
# of the side or more, so on small objects the paper's IoU modes fall back to the whole image.
PATCH_OVERLAPS = ('iou', 'coverage')
FLIP_PROB = 0.5
# mosaic_batch: where a mosaic's rows and columns are cut, as a fraction of the side.
MOSAIC_SPLIT_RANGE = (0.25, 0.75)
# Boxes thinner than this (relative to the output image) after clipping are dropped.
MIN_BOX_SIZE = 1e-3


# --------------------------------------------------------------------------- helpers
def tf_image_whitened(image, means=_MEANS):
    """Subtracts the per-channel `means` from a `[..., C]` image (cast to float32)."""
    image = tf.cast(image, tf.float32)
    if image.shape.rank is None or image.shape[-1] != len(means):
        raise ValueError(f"image must have {len(means)} channels in its last dimension, "
                         f"got shape {image.shape}")
    return image - tf.constant(means, dtype=tf.float32)


def tf_image_unwhitened(image, means=_MEANS, to_int=True):
    """Adds the means back to a `[..., 3]` preprocessed image; uint8 (clipped) if `to_int`."""
    image = tf.convert_to_tensor(image, tf.float32) + tf.constant(means, dtype=tf.float32)
    if to_int:
        image = tf.cast(tf.clip_by_value(tf.round(image), 0., 255.), tf.uint8)
    return image


def np_image_unwhitened(image, means=_MEANS, to_int=True):
    """Numpy version of `tf_image_unwhitened` (returns a new array, input untouched)."""
    image = np.asarray(image, dtype=np.float32) + np.asarray(means, dtype=np.float32)
    if to_int:
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image


def _check_inputs(image, labels, bboxes, difficults, where):
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3 or image.shape[-1] != 3:
        raise ValueError(f"{where}: image must be [height, width, 3] RGB, got shape "
                         f"{image.shape}; decode with channels=3")
    if bboxes is None:
        bboxes = tf.zeros([0, 4], tf.float32)
    bboxes = tf.cast(tf.convert_to_tensor(bboxes), tf.float32)
    if bboxes.shape.rank is not None and bboxes.shape.rank >= 1 and \
            bboxes.shape[-1] not in (None, 4):
        raise ValueError(f"{where}: bboxes must be [N, 4] ([ymin, xmin, ymax, xmax]) with a "
                         f"last dimension of 4, got shape {bboxes.shape}")
    bboxes = tf.reshape(bboxes, [-1, 4])
    if labels is None:
        labels = tf.zeros([tf.shape(bboxes)[0]], tf.int64)
    labels = tf.convert_to_tensor(labels)
    if difficults is None:
        difficults = tf.zeros([tf.shape(bboxes)[0]], tf.int64)
    difficults = tf.convert_to_tensor(difficults)
    return image, labels, bboxes, difficults


def _seeds(seed, num):
    """Splits a `[2]` seed into `num` independent `[2]` seeds (a `[num, 2]` tensor).

    `seed=None` draws a fresh seed from TF's global generator (not reproducible).
    """
    if seed is None:
        seed = tf.random.uniform([2], maxval=2 ** 31 - 1, dtype=tf.int32)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape.rank != 1 or seed.shape[0] not in (None, 2):
        raise ValueError(f"seed must be an int32/int64 tensor of shape [2], got {seed!r}")
    seed = tf.cast(seed, tf.int64)  # so that int32 and int64 seeds give the same stream
    return tf.random.experimental.stateless_split(seed, num)


def _uniform(seed, shape=(), minval=0., maxval=1.):
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def _gather_all(mask, *tensors):
    """`tf.boolean_mask` of each tensor (None passes through)."""
    return tuple(None if t is None else tf.boolean_mask(t, mask) for t in tensors)


def _to_data_format(image, data_format):
    if data_format == 'NCHW':
        return tf.transpose(image, perm=(2, 0, 1))
    if data_format != 'NHWC':
        raise ValueError(f"data_format must be 'NHWC' or 'NCHW', got {data_format!r}")
    return image


def _out_hw(out_shape):
    if out_shape is None or len(out_shape) != 2 or min(int(s) for s in out_shape) < 2:
        raise ValueError(f"out_shape must be (height, width) with both >= 2, got {out_shape!r}")
    return int(out_shape[0]), int(out_shape[1])


# --------------------------------------------------------------------------- paper chain
def _sample_patch(bboxes, image_rect, seeds, overlap='iou'):
    """Min-IoU patch sampling (SSD paper), vectorised over `PATCH_TRIALS` candidates.

    bboxes `[N, 4]` and image_rect `[4]` yxyx relative to the (expanded) canvas. Draws a mode
    from `PATCH_MIN_IOUS` and `PATCH_TRIALS` candidate patches (scale `PATCH_SCALE_RANGE`,
    aspect w/h `PATCH_ASPECT_RANGE`, uniform position); a candidate is valid when some box has
    an overlap >= the mode's minimum with it and it contains at least one box centre (with no
    box: when it contains the image's centre). The overlap is the IoU (`overlap='iou'`, the
    paper's) or the fraction of the box inside the patch (`'coverage'`, see `PATCH_OVERLAPS`).
    Returns the first valid patch `[4]` yxyx, or `[0, 0, 1, 1]` for the whole-image mode or
    when no candidate is valid.
    """
    min_ious = tf.constant(PATCH_MIN_IOUS, tf.float32)
    mode = tf.random.stateless_uniform([], seeds[0], maxval=len(PATCH_MIN_IOUS), dtype=tf.int32)
    min_iou = min_ious[mode]
    k = PATCH_TRIALS
    rnd = _uniform(seeds[1], [4, k])
    scale = PATCH_SCALE_RANGE[0] + rnd[0] * (PATCH_SCALE_RANGE[1] - PATCH_SCALE_RANGE[0])
    # Aspect range narrowed so that the patch fits: w = s*sqrt(a) <= 1, h = s/sqrt(a) <= 1.
    lo = tf.maximum(PATCH_ASPECT_RANGE[0], tf.square(scale))
    hi = tf.minimum(PATCH_ASPECT_RANGE[1], 1. / tf.square(scale))
    aspect = lo + (hi - lo) * rnd[1]
    ph = tf.minimum(scale / tf.sqrt(aspect), 1.)
    pw = tf.minimum(scale * tf.sqrt(aspect), 1.)
    y0 = rnd[2] * (1. - ph)
    x0 = rnd[3] * (1. - pw)
    patches = tf.stack([y0, x0, y0 + ph, x0 + pw], axis=-1)  # [K, 4]

    def centre_in(b):  # b [M, 4] -> [K, M]
        cy = (b[:, 0] + b[:, 2]) / 2.
        cx = (b[:, 1] + b[:, 3]) / 2.
        return ((cy > patches[:, 0:1]) & (cy < patches[:, 2:3]) &
                (cx > patches[:, 1:2]) & (cx < patches[:, 3:4]))

    has_boxes = tf.shape(bboxes)[0] > 0
    measure = boxes_lib.coverage if overlap == 'coverage' else boxes_lib.iou
    overlap_ok = tf.reduce_any(measure(patches, bboxes) >= min_iou, axis=1)  # [K]
    valid = tf.where(has_boxes, overlap_ok & tf.reduce_any(centre_in(bboxes), axis=1),
                     centre_in(image_rect[None])[:, 0])
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    use_patch = tf.reduce_any(valid) & tf.logical_not(tf.math.is_nan(min_iou))
    return tf.where(use_patch, patches[first], tf.constant([0., 0., 1., 1.]))


# RGB -> YIQ (rows: Y, I, Q); a hue shift is a rotation of the (I, Q) plane.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0]


def _photometric_affine(mean, seeds):
    """Samples caffe's photometric distortions as one affine map on RGB pixel rows.

    mean: `[3]` per-channel mean of the image the map is applied to (contrast scales around
    the running mean). Brightness (+-`BRIGHTNESS_DELTA`), then either (contrast, saturation,
    hue) or (saturation, hue, contrast), each applied with probability `PHOTOMETRIC_PROB`.
    Contrast scales around the per-channel mean (as `tf.image.adjust_contrast`), saturation
    blends with the luma grey, hue rotates the YIQ chroma plane by +-`HUE_DELTA` of a turn.
    All four are affine, so the chain is `x @ matrix + bias` with `matrix [3, 3]`,
    `bias [3]`; the caller clips once at the end (caffe clips after each step, uint8).
    """
    apply = _uniform(seeds[0], [4]) < PHOTOMETRIC_PROB  # brightness, contrast, sat., hue
    p = _uniform(seeds[1], [5])
    eye = tf.eye(3)
    delta = tf.where(apply[0], (2. * p[0] - 1.) * BRIGHTNESS_DELTA, 0.)
    contrast = tf.where(apply[1], CONTRAST_RANGE[0] + p[1] *
                        (CONTRAST_RANGE[1] - CONTRAST_RANGE[0]), 1.)
    sat = tf.where(apply[2], SATURATION_RANGE[0] + p[2] *
                   (SATURATION_RANGE[1] - SATURATION_RANGE[0]), 1.)
    angle = tf.where(apply[3], (2. * p[3] - 1.) * HUE_DELTA * 2. * np.pi, 0.)
    contrast_first = p[4] < 0.5
    # Row-vector convention: x' = x @ m.  Saturation: x' = s x + (1 - s) (x . luma) 1.
    m_sat = sat * eye + (1. - sat) * tf.constant(_LUMA[:, None] * np.ones((1, 3)), tf.float32)
    c, s = tf.cos(angle), tf.sin(angle)
    zero, one = tf.zeros([]), tf.ones([])
    rot = tf.stack([tf.stack([one, zero, zero]), tf.stack([zero, c, -s]),
                    tf.stack([zero, s, c])])
    m_hue = tf.matmul(tf.matmul(tf.constant(_YIQ_TO_RGB, tf.float32), rot),
                      tf.constant(_RGB_TO_YIQ, tf.float32))
    m_hue = tf.transpose(m_hue)  # column convention -> row convention
    m_sh = tf.matmul(m_sat, m_hue)

    def contrast_step(m, b):
        # x'' = f (x' - mu') + mu' with mu' = mean @ m + b the running mean.
        mu = tf.linalg.matvec(m, mean, transpose_a=True) + b
        return m * contrast, b * contrast + (1. - contrast) * mu

    m, b = eye, tf.fill([3], delta)  # brightness
    m1, b1 = contrast_step(m, b)
    m = tf.where(contrast_first, tf.matmul(m1, m_sh), tf.matmul(m, m_sh))
    b = tf.where(contrast_first, tf.linalg.matvec(m_sh, b1, transpose_a=True),
                 tf.linalg.matvec(m_sh, b, transpose_a=True))
    m2, b2 = contrast_step(m, b)
    return tf.where(contrast_first, m, m2), tf.where(contrast_first, b, b2)


def _sampling_points(lo, hi, size_in, size_out):
    """Input pixel positions `[size_out]` sampled for a window `[lo, hi]` (relative edges).

    Output pixel `i` reads the input at `(lo + (i + 0.5) / size_out * (hi - lo)) * size_in - 0.5`
    (pixel centres at integers, the half-pixel convention of `tf.image.resize`); `hi < lo`
    gives a mirrored window.
    """
    centres = (tf.range(size_out, dtype=tf.float32) + 0.5) / size_out
    return (lo + (hi - lo) * centres) * tf.cast(size_in, tf.float32) - 0.5


def _valid_run(positions, size_in):
    """Positions `[n]` (monotonic) -> (first index, count, first, last position) of the run
    of positions inside `[0, size_in - 1]`; at least one position is kept, clipped inside."""
    limit = tf.cast(size_in - 1, tf.float32)
    valid = (positions >= 0.) & (positions <= limit)
    count = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.int32)), 1)
    start = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    start = tf.minimum(start, tf.shape(positions)[0] - count)
    first = tf.clip_by_value(positions[start], 0., limit)
    last = tf.clip_by_value(positions[start + count - 1], 0., limit)
    return start, count, first / tf.maximum(limit, 1.), last / tf.maximum(limit, 1.)


def _preprocess_train_paper(image, labels, bboxes, difficults, out_shape, seed,
                           expand_max_ratio=EXPAND_MAX_RATIO, patch_overlap='iou'):
    out_h, out_w = out_shape
    seeds = _seeds(seed, 10)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]

    # Expand (zoom out): the image sits at (ty, tx) in a canvas `ratio` times larger, in
    # canvas-relative units; the rest of the canvas is filled with the mean.
    ratio = tf.where(_uniform(seeds[0]) < EXPAND_PROB,
                     _uniform(seeds[1], (), 1., expand_max_ratio), 1.)
    offset = _uniform(seeds[2], [2]) * (1. - 1. / ratio)  # [ty, tx]
    offset4 = tf.tile(offset, [2])
    canvas_boxes = bboxes / ratio + offset4
    image_rect = tf.concat([offset, offset + 1. / ratio], axis=0)

    # Patch in canvas units, then boxes: keep those whose centre is in the patch, clip, rescale.
    patch = _sample_patch(canvas_boxes, image_rect, seeds[3:7], patch_overlap)
    centres = (canvas_boxes[:, 0:2] + canvas_boxes[:, 2:4]) / 2.  # [N, 2]
    keep = tf.reduce_all((centres > patch[0:2]) & (centres < patch[2:4]), axis=1)
    patch_size = tf.tile(patch[2:4] - patch[0:2], [2])
    out_boxes = (boxes_lib.clip_boxes(canvas_boxes, patch) - tf.tile(patch[0:2], [2])) / patch_size
    keep &= tf.reduce_all(out_boxes[:, 2:4] - out_boxes[:, 0:2] > MIN_BOX_SIZE, axis=1)
    labels, out_boxes, difficults = _gather_all(keep, labels, out_boxes, difficults)

    # Horizontal flip of the boxes; the image flip is folded into the sampling window below.
    flip = _uniform(seeds[7]) < FLIP_PROB
    out_boxes = tf.where(flip, boxes_lib.flip_left_right(out_boxes), out_boxes)

    # One bilinear crop_and_resize does crop + flip + resize straight from uint8, for the output
    # pixels that fall on the image; the expand canvas around them is padding.
    window = (patch - offset4) * ratio  # patch in image-relative units, may exceed [0, 1].
    x_lo = tf.where(flip, window[3], window[1])
    x_hi = tf.where(flip, window[1], window[3])
    row0, rows, y1, y2 = _valid_run(_sampling_points(window[0], window[2], height, out_h), height)
    col0, cols, x1, x2 = _valid_run(_sampling_points(x_lo, x_hi, width, out_w), width)
    out = tf.image.crop_and_resize(image[None], tf.stack([[y1, x1, y2, x2]]), [0],
                                   tf.stack([rows, cols]),
                                   extrapolation_value=_FILL)[0]  # [rows, cols, 3] float32
    mean = tf.reduce_mean(out, axis=[0, 1])
    matrix, bias = _photometric_affine(mean, seeds[8:10])
    means = tf.constant(_MEANS, tf.float32)
    out = tf.reshape(tf.matmul(tf.reshape(out, [-1, 3]), matrix), [rows, cols, 3])
    out = tf.clip_by_value(out + bias, 0., 255.) - means
    # Padding with 0 = the mean colour once the means are subtracted.
    out = tf.pad(out, [[row0, out_h - row0 - rows], [col0, out_w - col0 - cols], [0, 0]])
    out = tf.ensure_shape(out, [out_h, out_w, 3])
    return out, labels, out_boxes, difficults


def expand_max_ratio_for_boxes(boxes):
    """The zoom-out bound for a data set: `(ratio, reason)` for its training boxes `[N, 4]`
    yxyx relative (numpy; boxes without a positive finite size are ignored).

    1 (no zoom-out) when the median box side sqrt(h * w) is under `NO_ZOOM_OUT_MEDIAN_SIDE`
    of the image side: the objects are small already, and zooming out makes them smaller than
    anything at test time. Else (or without boxes) the paper's `EXPAND_MAX_RATIO`, which
    teaches large-object data the small sizes it lacks. `reason` says which, in words.
    Measured (docs/small-objects.md): median 4 % (the small-object dev set) VOC07 +0.009 and
    +0.015 without zoom-out; 18 % (bccd) -0.007 and 69 % (raccoon) -0.048 without it.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    b = b[np.all(np.isfinite(b), axis=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    if not len(b):
        return EXPAND_MAX_RATIO, 'no training box to measure: the paper\'s zoom-out'
    side = float(np.median(np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))))
    if side < NO_ZOOM_OUT_MEDIAN_SIDE:
        return 1., (f"the median training box is {100 * side:.1f}% of the image side, under "
                    f"{100 * NO_ZOOM_OUT_MEDIAN_SIDE:g}%: no zoom-out")
    return EXPAND_MAX_RATIO, (f"the median training box is {100 * side:.1f}% of the image side "
                              f"(not under {100 * NO_ZOOM_OUT_MEDIAN_SIDE:g}%): the paper's "
                              "zoom-out")


# --------------------------------------------------------------------------- slim chain
def distort_color(image, color_ordering, seed):
    """The slim colour distortion (fast_mode=False) on a float image in [0, 1], clipped.

    `color_ordering` (int tensor in 0..3) selects one of the four slim orderings of brightness
    (32/255), saturation (0.5-1.5), hue (0.2) and contrast (0.5-1.5). `seed`: `[2]`.
    """
    s = _seeds(seed, 4)

    def b(x):
        return tf.image.stateless_random_brightness(x, 32. / 255., s[0])

    def sat(x):
        return tf.image.stateless_random_saturation(x, 0.5, 1.5, s[1])

    def h(x):
        return tf.image.stateless_random_hue(x, 0.2, s[2])

    def c(x):
        return tf.image.stateless_random_contrast(x, 0.5, 1.5, s[3])

    orders = [(b, sat, h, c), (sat, b, c, h), (c, h, b, sat), (h, sat, c, b)]

    def branch(ops):
        def fn():
            x = image
            for op in ops:
                x = op(x)
            return x
        return fn

    image = tf.switch_case(color_ordering, [branch(o) for o in orders])
    return tf.clip_by_value(image, 0., 1.)


def bboxes_resize(bbox_ref, bboxes):
    """Expresses bboxes `[N, 4]` (yxyx) in the frame of `bbox_ref` `[4]` (yxyx), not clipped."""
    return boxes_lib.reframe(bboxes, tf.convert_to_tensor(bbox_ref, tf.float32))


def bboxes_filter_overlap(labels, bboxes, threshold=BBOX_CROP_OVERLAP, difficults=None):
    """The slim rule: keeps boxes `[N, 4]` (yxyx) with more than `threshold` of their area
    inside `[0, 1]^2`, unclipped (a zero-area box is dropped). Returns
    `(labels, bboxes, difficults)` filtered alike (difficults None if not given)."""
    inside = tf.squeeze(boxes_lib.intersection(tf.constant([[0., 0., 1., 1.]]), bboxes), 0)
    overlap = tf.math.divide_no_nan(inside, boxes_lib.area(bboxes))
    return _gather_all(overlap > threshold, labels, bboxes, difficults)


def _resize_legacy(image, size):
    """TF1 `resize_images(..., BILINEAR, align_corners=False)` (no half-pixel centres)."""
    return tf.raw_ops.ResizeBilinear(images=image[None], size=size, align_corners=False,
                                     half_pixel_centers=False)[0]


def _preprocess_train_slim(image, labels, bboxes, difficults, out_shape, seed):
    seeds = _seeds(seed, 4)
    if image.dtype == tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.float32)  # [0, 1]
    else:
        image = tf.cast(image, tf.float32) / 255.
    begin, size, distort_bbox = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=bboxes[None], seed=seeds[0],
        min_object_covered=MIN_OBJECT_COVERED, aspect_ratio_range=CROP_RATIO_RANGE,
        area_range=CROP_AREA_RANGE, max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, size)
    bboxes = bboxes_resize(distort_bbox[0, 0], bboxes)
    labels, bboxes, difficults = bboxes_filter_overlap(labels, bboxes, BBOX_CROP_OVERLAP,
                                                       difficults)
    image = _resize_legacy(image, out_shape)
    flip = _uniform(seeds[1]) < FLIP_PROB
    image = tf.where(flip, tf.reverse(image, axis=[1]), image)
    bboxes = tf.where(flip, boxes_lib.flip_left_right(bboxes), bboxes)
    ordering = tf.random.stateless_uniform([], seeds[2], maxval=4, dtype=tf.int32)
    image = distort_color(image, ordering, seeds[3])
    image = image * 255. - tf.constant(_MEANS, tf.float32)
    image = tf.ensure_shape(image, [out_shape[0], out_shape[1], 3])
    return image, labels, bboxes, difficults


@tf.autograph.experimental.do_not_convert  # graph code as written (see ssd_tf/data.py)
def preprocess_for_train(image, labels, bboxes, out_shape, data_format='NHWC',
                         scope='ssd_preprocessing_train', reference_compat=False, seed=None,
                         difficults=None, expand_max_ratio=None, patch_overlap=None):
    """Augments one training example.

    Args:
      image: `[H, W, 3]` RGB, uint8 or float pixel values in 0..255.
      labels: `[N]` class ids (any dtype, kept).
      bboxes: `[N, 4]` `[ymin, xmin, ymax, xmax]` relative to the image.
      out_shape: `(height, width)` of the output image.
      data_format: 'NHWC' (image `[h, w, 3]`) or 'NCHW' (`[3, h, w]`).
      scope: name scope.
      reference_compat: True for the slim chain, False (default) for the SSD paper's chain
        (see the module docstring).
      seed: int32/int64 `[2]` tensor for the stateless random ops; same seed -> same output.
        None draws one from the global generator (not reproducible).
      difficults: optional `[N]` flags, filtered like the labels.
      expand_max_ratio: the paper chain's largest zoom-out: with probability `EXPAND_PROB` the
        image is placed in a mean-filled canvas whose side is a ratio drawn uniformly from
        `[1, expand_max_ratio]` times its own. None: `EXPAND_MAX_RATIO` (4, the paper's); 1: no
        zoom-out (the same random draws otherwise). The slim chain has no zoom-out: a value
        with `reference_compat=True` is a ValueError.
      patch_overlap: how the paper chain's patch sampling measures a patch's overlap with a
        box: 'iou' (None: the paper's) or 'coverage' (the fraction of the box inside the
        patch, which lets the sampling zoom in on small objects too; `PATCH_OVERLAPS`). The
        same random draws either way. A value with `reference_compat=True` is a ValueError.

    Returns:
      A `TrainExample(image, labels, bboxes, difficults)`: image float32 `[h, w, 3]` of
      pixel values minus the means; labels `[M]`, bboxes `[M, 4]` yxyx relative to the output
      image, difficults `[M]` (all-zero int64 when not given), for the M <= N boxes kept.
    """
    out_shape = _out_hw(out_shape)
    if reference_compat and expand_max_ratio is not None:
        raise ValueError(f"expand_max_ratio={expand_max_ratio} with reference_compat=True: the "
                         "slim chain has no zoom-out (expand) step")
    if expand_max_ratio is None:
        expand_max_ratio = EXPAND_MAX_RATIO
    try:
        ratio = float(expand_max_ratio)
    except (TypeError, ValueError):
        ratio = float('nan')
    if not 1. <= ratio < float('inf'):
        raise ValueError(f"expand_max_ratio must be a finite number >= 1 (1: no zoom-out), "
                         f"got {expand_max_ratio!r}")
    if reference_compat and patch_overlap is not None:
        raise ValueError(f"patch_overlap={patch_overlap!r} with reference_compat=True: the slim "
                         "chain samples its crop by sample_distorted_bounding_box")
    if patch_overlap is None:
        patch_overlap = 'iou'
    if patch_overlap not in PATCH_OVERLAPS:
        raise ValueError(f"patch_overlap must be one of {PATCH_OVERLAPS}, got {patch_overlap!r}")
    with tf.name_scope(scope):
        image, labels, bboxes, difficults = _check_inputs(image, labels, bboxes, difficults,
                                                          'preprocess_for_train')
        if reference_compat:
            image, labels, bboxes, difficults = _preprocess_train_slim(
                image, labels, bboxes, difficults, out_shape, seed)
        else:
            image, labels, bboxes, difficults = _preprocess_train_paper(
                image, labels, bboxes, difficults, out_shape, seed, ratio, patch_overlap)
        image = _to_data_format(image, data_format)
        return TrainExample(image, labels, bboxes, difficults)


# --------------------------------------------------------------------------- mosaic
def _mosaic_rows(images, split, offsets):
    """The mosaic images: row i's `[H, W, C]` image is the four rectangles of `split` `[B, 2]`
    (py, px pixels: top-left `[0, py) x [0, px)`, top-right, bottom-left, bottom-right), the
    q-th copied from row `(i + q) % B` at its pixel offset `offsets[:, q]` `[B, 4, 2]` (oy, ox:
    the window's top-left corner in that row's image). Pure slicing, no resampling."""
    b, h, w = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]

    def one(i):
        py, px = split[i, 0], split[i, 1]
        sizes = ((py, px), (py, w - px), (h - py, px), (h - py, w - px))
        parts = [tf.slice(images[(i + q) % b], tf.stack([offsets[i, q, 0], offsets[i, q, 1], 0]),
                          tf.stack([sizes[q][0], sizes[q][1], -1])) for q in range(4)]
        return tf.concat([tf.concat(parts[0:2], axis=1), tf.concat(parts[2:4], axis=1)], axis=0)

    out = tf.map_fn(one, tf.range(b), fn_output_signature=images.dtype)
    return tf.ensure_shape(out, images.shape)


@tf.autograph.experimental.do_not_convert  # graph code as written (see ssd_tf/data.py)
def mosaic_batch(images, labels, bboxes, seed, prob):
    """Scale-keeping mosaics of a batch of augmented training examples (after
    `preprocess_for_train`, before target encoding).

    Each row becomes a mosaic with probability `prob`: its image is cut at a point drawn
    uniformly in `MOSAIC_SPLIT_RANGE` of the height and of the width into four rectangles,
    filled from rows i (top-left), i+1 (top-right), i+2 (bottom-left) and i+3 (bottom-right)
    of the batch (cyclically), each with a window of the rectangle's size at a uniformly
    random whole-pixel place in that row's image. Pixels are copied, not resized, so objects
    keep their size (unlike a mosaic of shrunk images, or the zoom-out); the images show more
    objects, contexts and cut objects per step. A box goes with its pixels: kept when its
    centre lies in its rectangle (half-open), clipped to it, and dropped when thinner than
    `MIN_BOX_SIZE` (the crop rule of the paper chain). Other rows are returned unchanged.

    Args:
      images: `[B, H, W, C]` float (NHWC; the same size for every row).
      labels: `[B, M]` int, 0 for padding (no box).
      bboxes: `[B, M, 4]` yxyx relative to the images (padding rows are ignored).
      seed: `[2]` int seed of the stateless draws (the same seed, the same mosaics).
      prob: the probability of a mosaic per row, in [0, 1].

    Returns:
      `(images [B, H, W, C], labels [B, 4M], bboxes [B, 4M, 4])`: each row's boxes from its
      four sources in rectangle order, label 0 and a zero box where a box was dropped or
      padded (a row left unchanged keeps its boxes in the first M places).
    """
    prob = float(prob)
    if not 0. <= prob <= 1.:
        raise ValueError(f"mosaic prob must be in [0, 1], got {prob}")
    images = tf.convert_to_tensor(images)
    labels, bboxes = tf.convert_to_tensor(labels), tf.convert_to_tensor(bboxes)
    if images.shape.rank != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"mosaic_batch needs NHWC images [B, H, W, C], got {images.shape}")
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    hw = tf.stack([h, w])
    seeds = _seeds(seed, 3)
    on = _uniform(seeds[0], tf.stack([b])) < prob  # [B]
    lo, hi = MOSAIC_SPLIT_RANGE
    cut = tf.cast(tf.round(_uniform(seeds[1], tf.stack([b, 2]), lo, hi) *
                           tf.cast(hw, tf.float32)), tf.int32)
    split = tf.where(on[:, None], cut, hw[None])  # [B, 2]: (H, W) leaves the row as it was
    rect = _mosaic_rects(split, hw)
    size = rect[:, :, 2:4] - rect[:, :, 0:2]  # [B, 4, 2]
    room = tf.cast(hw[None, None] - size + 1, tf.float32)
    offsets = tf.minimum(tf.cast(tf.floor(_uniform(seeds[2], tf.stack([b, 4, 2])) * room),
                                 tf.int32), hw[None, None] - size)  # [B, 4, 2]
    labels, bboxes = _mosaic_boxes(labels, bboxes, rect, offsets, hw)
    return _mosaic_rows(images, split, offsets), labels, bboxes


def _mosaic_rects(split, hw):
    """The four rectangles `[B, 4, 4]` (r0, c0, r1, c1) in pixels, in source order (top-left,
    top-right, bottom-left, bottom-right), of the cuts `split` `[B, 2]` (py, px) of images of
    `hw` `[2]` pixels."""
    py, px = split[:, 0], split[:, 1]
    zero = tf.zeros_like(py)
    full_h, full_w = zero + hw[0], zero + hw[1]
    return tf.stack([tf.stack([zero, zero, py, px], 1), tf.stack([zero, px, py, full_w], 1),
                     tf.stack([py, zero, full_h, px], 1), tf.stack([py, px, full_h, full_w], 1)],
                    1)


def _mosaic_boxes(labels, bboxes, rect, offsets, hw):
    """The boxes of the mosaics `_mosaic_rows` makes with the rectangles `rect` `[B, 4, 4]`
    (`_mosaic_rects` of its cuts) and `offsets` `[B, 4, 2]` on images of `hw` `[2]` pixels:
    `(labels [B, 4M], bboxes [B, 4M, 4])` from labels `[B, M]` (0: padding) and bboxes
    `[B, M, 4]` (the rule in `mosaic_batch`)."""
    b, m = tf.shape(labels)[0], tf.shape(labels)[1]
    scale = tf.cast(tf.tile(hw, [2]), tf.float32)  # [4] (H, W, H, W)
    r = (tf.cast(rect, tf.float32) / scale)[:, :, None]  # [B, 4, 1, 4] relative
    shift = tf.cast(tf.tile(rect[:, :, 0:2] - offsets, [1, 1, 2]), tf.float32) / scale
    src = (tf.range(b)[:, None] + tf.range(4)[None]) % b  # [B, 4]
    q_boxes = tf.gather(tf.cast(bboxes, tf.float32), src) + shift[:, :, None]  # [B, 4, M, 4]
    q_labels = tf.gather(labels, src)  # [B, 4, M]
    centre = (q_boxes[..., 0:2] + q_boxes[..., 2:4]) / 2.
    inside = tf.reduce_all((centre >= r[..., 0:2]) & (centre < r[..., 2:4]), axis=-1)
    clipped = tf.minimum(tf.maximum(q_boxes, tf.tile(r[..., 0:2], [1, 1, 1, 2])),
                         tf.tile(r[..., 2:4], [1, 1, 1, 2]))
    keep = inside & (q_labels > 0) & tf.reduce_all(
        clipped[..., 2:4] - clipped[..., 0:2] > MIN_BOX_SIZE, axis=-1)
    out_labels = tf.reshape(tf.where(keep, q_labels, tf.zeros_like(q_labels)), [b, 4 * m])
    out_boxes = tf.reshape(tf.where(keep[..., None], clipped, 0.), [b, 4 * m, 4])
    return out_labels, out_boxes


# --------------------------------------------------------------------------- evaluation
def _crop_or_pad(image, bboxes, target_height, target_width, between=None):
    """Central crop and/or zero pad of `[H, W, C]` to the target size, boxes moved along.

    bboxes `[N, 4]` yxyx relative to the input -> relative to the output (not clipped).
    `between`: optional `image -> image` applied after the crop and before the padding (the
    mean subtraction, so that only the cropped pixels are converted to float and the padding
    is 0 = the mean colour).
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    crop_y = tf.maximum((height - target_height) // 2, 0)
    crop_x = tf.maximum((width - target_width) // 2, 0)
    pad_y = tf.maximum((target_height - height) // 2, 0)
    pad_x = tf.maximum((target_width - width) // 2, 0)
    crop_h = tf.minimum(target_height, height)
    crop_w = tf.minimum(target_width, width)
    image = tf.image.crop_to_bounding_box(image, crop_y, crop_x, crop_h, crop_w)
    if between is not None:
        image = between(image)
    image = tf.image.pad_to_bounding_box(image, pad_y, pad_x, target_height, target_width)
    f = tf.float32
    # pixel = relative * input size - crop offset + pad offset; relative = pixel / target size.
    scale = tf.cast(tf.stack([height, width, height, width]), f)
    shift = tf.cast(tf.stack([pad_y - crop_y, pad_x - crop_x, pad_y - crop_y, pad_x - crop_x]), f)
    target = tf.cast(tf.stack([target_height, target_width, target_height, target_width]), f)
    return image, (bboxes * scale + shift) / target


def _eval_resize(image, bboxes, out_shape, resize, reference_compat):
    """Resizes the RGB image `[H, W, 3]` (0..255) with the `resize` strategy and subtracts
    the means; bboxes `[N, 4]` (yxyx) follow. Returns `(image float32, bboxes)`.

    Default order: resize (or crop) first, then the float conversion and the mean subtraction,
    so that no float copy is larger than the output (memory is bounded by the network input,
    not by the picture; bilinear resizing commutes with the mean subtraction up to float32
    rounding, ~1e-5). `reference_compat=True`: the slim order, means subtracted at full size,
    then TF1's bilinear (no half-pixel centres).
    """
    if reference_compat:
        image = tf_image_whitened(image)

        def warp(img, size):
            return _resize_legacy(img, size)
        whiten = None
    else:
        def warp(img, size):
            if isinstance(size, tuple) and tuple(img.shape[0:2]) == size:
                # Already the output size (e.g. a TFLite input): a half-pixel bilinear resize
                # to the same size is the identity, and TFLite has no uint8 -> float resize.
                return img
            return tf.image.resize(img, size, method='bilinear')  # uint8 in, float32 out
        whiten = tf_image_whitened

    if resize == Resize.CENTRAL_CROP:
        # Cropping moves pixels without changing them: both orders give the same bits.
        return _crop_or_pad(image, bboxes, out_shape[0], out_shape[1], between=whiten)
    if resize == Resize.PAD_AND_RESIZE:
        hw = tf.cast(tf.shape(image)[0:2], tf.float64)
        factor = tf.minimum(tf.constant(1., tf.float64),
                            tf.reduce_min(tf.constant(out_shape, tf.float64) / hw))
        size = tf.cast(tf.floor(factor * hw), tf.int32)
        image = warp(image, size)
        return _crop_or_pad(image, bboxes, out_shape[0], out_shape[1], between=whiten)
    if resize == Resize.WARP_RESIZE:
        image = warp(image, out_shape)
    return (image if whiten is None else whiten(image)), bboxes


@tf.autograph.experimental.do_not_convert  # graph code as written (see ssd_tf/data.py)
def preprocess_for_eval(image, labels, bboxes, out_shape=EVAL_SIZE, data_format='NHWC',
                        difficults=None, resize=Resize.WARP_RESIZE,
                        scope='ssd_preprocessing_eval', reference_compat=False):
    """Prepares one evaluation image: the chosen `resize` strategy and mean subtraction.

    Args:
      image: `[H, W, 3]` RGB, uint8 or float pixel values in 0..255.
      labels: `[N]`; bboxes: `[N, 4]` yxyx relative to the image (None allowed).
      out_shape: `(height, width)`.
      difficults: optional `[N]` flags. Default: returned unchanged (VOC evaluation needs the
        difficult boxes). `reference_compat=True`: the slim behaviour, difficult boxes are
        removed (and the all-zero remaining flags returned).
      resize: a `Resize` (or its name):
        NONE: no resizing; CENTRAL_CROP: centrally crop and/or zero-pad (in mean-subtracted
        values, i.e. the mean colour) to out_shape, no scaling; PAD_AND_RESIZE: shrink
        (never enlarge) keeping the aspect ratio so the image fits in out_shape (size floored),
        then centrally pad to out_shape; WARP_RESIZE: bilinear warp to out_shape.
      reference_compat: the slim order (means subtracted at full size, then resized with TF1's
        bilinear, no half-pixel centres). Default: resized first with `tf.image.resize`
        (half-pixel centres) straight from the input dtype, then converted to float32 and the
        means subtracted at the output size, so memory per image is bounded by out_shape.

    Returns:
      An `EvalExample(image, labels, bboxes, bbox_img, difficults)`: image float32
      `[h, w, 3]` minus means ('NCHW': `[3, h, w]`), bboxes `[N, 4]` relative to the output
      (not clipped), bbox_img `[4]` the input image's extent in output coordinates,
      difficults `[N]` (all-zero int64 when not given).
    """
    if isinstance(resize, str):
        resize = Resize[resize.upper()]
    resize = Resize(resize)
    if resize != Resize.NONE:
        out_shape = _out_hw(out_shape)
    with tf.name_scope(scope):
        given_difficults = difficults is not None
        image, labels, bboxes, difficults = _check_inputs(image, labels, bboxes, difficults,
                                                          'preprocess_for_eval')
        # The image's own rectangle rides along as box 0.
        bboxes = tf.concat([tf.constant([[0., 0., 1., 1.]]), bboxes], axis=0)
        image, bboxes = _eval_resize(image, bboxes, out_shape, resize, reference_compat)
        if resize != Resize.NONE:
            image = tf.ensure_shape(image, [out_shape[0], out_shape[1], 3])

        bbox_img, bboxes = bboxes[0], bboxes[1:]
        if given_difficults and reference_compat:
            labels, bboxes, difficults = _gather_all(
                tf.logical_not(tf.cast(difficults, tf.bool)), labels, bboxes, difficults)
        image = _to_data_format(image, data_format)
        return EvalExample(image, labels, bboxes, bbox_img, difficults)


def image_preprocess_fn(out_shape):
    """The evaluation pre-processing of one image without ground truth, as the exports,
    `detect` and `SSDDetector.predict` run it: a function `image uint8 [H, W, 3] ->
    (image float32 [h, w, 3] warped to `out_shape` minus the VGG means, bbox_img [4])`.
    The warp is `ssd_tf.images.resize_to_input` (uint8, MediaPipe's sampling), the resize of
    every runtime, so that a photo scores the same in the SavedModel, a checkpoint, a TFLite
    file and MediaPipe; the eval's own resize then has nothing left to do."""
    shape = tuple(int(s) for s in out_shape)

    def preprocess(image):
        if tuple(image.shape[:2]) != shape:  # a TFLite input has the size already
            image = images_lib.resize_to_input(image, shape)
        out = preprocess_for_eval(image, None, None, out_shape=shape)
        return out.image, out.bbox_img
    return preprocess


def preprocess_image(image, labels, bboxes, out_shape, data_format, is_training=False,
                     **kwargs):
    """`preprocess_for_train` if `is_training` else `preprocess_for_eval` (kwargs passed on);
    returns a `TrainExample` or an `EvalExample` accordingly."""
    if is_training:
        return preprocess_for_train(image, labels, bboxes, out_shape=out_shape,
                                    data_format=data_format, **kwargs)
    return preprocess_for_eval(image, labels, bboxes, out_shape=out_shape,
                               data_format=data_format, **kwargs)
