"""Tiled inference: the box maths of detecting on overlapping tiles of an image and merging
the detections (the job of this module is the windows, the crops and the merge; running the
network is its caller's, `ssd_tf.export.saved_model.DetectionModule(tiles=...)`).

A small object in a large image shrinks below what the network resolves when the whole image
is warped to the network input. Tiling runs the network on the whole image AND on `rows x
cols` overlapping windows (each warped to the input, so its objects are larger there), maps
every detection back to the whole image and merges them with per-class NMS:

- `tile_windows(rows, cols, overlap)`: the windows `[rows * cols, 4]`, yxyx relative to the
  image, neighbours sharing `overlap` of a tile's side.
- `crop_windows(image, windows, preprocess_fn)`: the whole image plus its tiles, snapped to
  whole pixels and pre-processed; returns the snapped windows (what the boxes are mapped by).
- `from_window(boxes, windows)`: boxes relative to a window -> relative to the whole image.
- `cut_by_tile_edge(boxes, windows)`: detections of a tile that touch one of its INNER edges
  (an edge inside the image): the object may go on beyond the tile; the neighbour tile that
  overlaps it, or the whole-image pass, sees it whole. They are dropped before the merge.
- `small_enough(boxes, max_box)`: the tiles' detections are kept only for boxes under
  `max_box` of the image side; larger objects come from the whole-image pass, which sees them
  at the scale the network was trained on (a tile magnifies them and its large detections
  were mostly false or duplicates on the small-object dev set, crowding the small ones out of
  the `keep_top_k` the merge keeps).
- the merge, per-class NMS over all passes of an image, is NMS's home's:
  `ssd_tf.postprocess.merge_detections`.

`Tiles(rows, cols, overlap, max_box)` carries the settings (`--tiles`, `--tile_overlap`,
`--tile_max_box`).

Boxes are `[ymin, xmin, ymax, xmax]` relative to [0, 1] throughout.
"""
import collections

import numpy as np
import tensorflow as tf

from ssd_tf import boxes as boxes_lib

# Share of a tile's side that neighbouring tiles have in common (`tile_windows`). An object up
# to this share of the tile appears whole in at least one tile; larger ones are found by the
# whole-image pass.
DEFAULT_OVERLAP = 0.25
# A tile detection whose box comes within this share of the tile's side of an inner tile edge
# counts as cut by it (3 px at a 320-px input; a cut object's box is clipped ONTO the edge).
EDGE_MARGIN = 0.01
MAX_TILES_PER_SIDE = 8
# A tile's detections are kept only for boxes whose side (sqrt of the area) is under this
# share of the image side. Chosen on the small-object dev set (ssd_small_320 --anchors=auto,
# 2x2 tiles; docs/small-objects.md): VOC07 0.7329 keeping all, 0.7408 / 0.7383 / 0.7324 with
# 0.02 / 0.03 / 0.04; VOC12 0.7609, 0.7746 / 0.7790 / 0.7626.
DEFAULT_MAX_BOX = 0.03


class Tiles(collections.namedtuple('Tiles', ['rows', 'cols', 'overlap', 'max_box'])):
    """Tiled-detection settings: a `rows x cols` grid of tiles sharing `overlap` of their
    side with their neighbours; a tile's detections kept for boxes under `max_box` of the
    image side (0: all). `Tiles(2, 2)` takes the defaults; `check_tiles` validates."""
    __slots__ = ()

    def __new__(cls, rows, cols, overlap=DEFAULT_OVERLAP, max_box=DEFAULT_MAX_BOX):
        return super().__new__(cls, int(rows), int(cols), float(overlap), float(max_box))


def check_tiles(rows, cols, overlap, max_box=DEFAULT_MAX_BOX, flag='--tiles'):
    """ValueError naming the flag unless 1 <= rows, cols <= MAX_TILES_PER_SIDE,
    0 <= overlap < 1 and 0 <= max_box <= 1 (1x1 means no tiling)."""
    for n in (rows, cols):
        if int(n) != n or not 1 <= n <= MAX_TILES_PER_SIDE:
            raise ValueError(f"{flag}={rows}x{cols}: rows and columns must be whole numbers "
                             f"from 1 to {MAX_TILES_PER_SIDE}")
    if not 0. <= overlap < 1.:
        raise ValueError(f"--tile_overlap={overlap} must be in [0, 1) (a share of the tile "
                         f"side that neighbouring tiles have in common)")
    if not 0. <= max_box <= 1.:
        raise ValueError(f"--tile_max_box={max_box} must be in [0, 1] (a share of the image "
                         f"side; 0 keeps every tile detection)")


def parse_tiles(text, flag='--tiles'):
    """'RxC' (e.g. '2x2', '3x2': rows x columns) -> (rows, cols); None or '' -> None.
    A malformed text is a ValueError naming `flag`."""
    if text is None or str(text).strip() == '':
        return None
    parts = str(text).lower().replace(' ', '').split('x')
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{flag}={text!r} is not ROWSxCOLS (e.g. 2x2)")
    return int(parts[0]), int(parts[1])


def tile_windows(rows, cols, overlap=DEFAULT_OVERLAP):
    """The tiles of an image: numpy float64 `[rows * cols, 4]` yxyx relative to the image,
    row-major (top-left first).

    Along one axis with n tiles of side t and overlap o (a share of t): the tiles cover the
    image, `t + (n - 1) t (1 - o) = 1`, so `t = 1 / (n - (n - 1) o)`; tile i starts at
    `i t (1 - o)`. n = 1 gives one window of the whole axis.
    """
    check_tiles(rows, cols, overlap)

    def axis(n):
        side = 1. / (n - (n - 1) * overlap)
        start = np.arange(n) * side * (1. - overlap)
        return start, np.minimum(start + side, 1.)  # the last tile ends at exactly 1
    y0, y1 = axis(rows)
    x0, x1 = axis(cols)
    out = [[y0[r], x0[c], y1[r], x1[c]] for r in range(rows) for c in range(cols)]
    return np.asarray(out, np.float64).reshape(-1, 4)


def crop_windows(image, windows, preprocess_fn):
    """The whole image and its windows, each pre-processed for the network.

    image: uint8 `[H, W, 3]`. windows: `[T, 4]` yxyx relative (numpy, static T).
    preprocess_fn: `image uint8 [h', w', 3] -> (image [h, w, 3], bbox_img [4])` (the evaluation
    pre-processing, e.g. `preprocessing.ssd_vgg_preprocessing.image_preprocess_fn`).
    Each window is snapped outwards to whole pixels (at least one pixel).
    Returns `(images float32 [T + 1, h, w, 3], bbox_img float32 [T + 1, 4], snapped float32
    [T + 1, 4])`: index 0 is the whole image (snapped window [0, 0, 1, 1]).
    """
    shape = tf.shape(image)
    hw = tf.cast(tf.stack([shape[0], shape[1], shape[0], shape[1]]), tf.float32)  # [4]
    crops, bbox_imgs, snapped = [], [], []
    for window in [None] + [np.asarray(w, np.float32) for w in np.asarray(windows)]:
        if window is None:
            crop, px = image, tf.stack([0., 0.] + [hw[0], hw[1]])
        else:
            lo = tf.floor(window[:2] * hw[:2])
            hi = tf.maximum(tf.math.ceil(window[2:] * hw[2:]), lo + 1.)
            hi = tf.minimum(hi, hw[2:])
            lo = tf.minimum(lo, hi - 1.)
            px = tf.concat([lo, hi], 0)
            b = tf.cast(px, tf.int32)
            crop = image[b[0]:b[2], b[1]:b[3]]
        out, bbox_img = preprocess_fn(crop)
        crops.append(tf.cast(out, tf.float32))
        bbox_imgs.append(tf.cast(bbox_img, tf.float32))
        snapped.append(px / hw)
    return tf.stack(crops), tf.stack(bbox_imgs), tf.stack(snapped)


def from_window(boxes, windows):
    """Boxes `[..., K, 4]` relative to a window -> relative to the whole image (the inverse of
    `boxes.reframe`): `origin + box * size`. windows: `[..., 4]` (one per leading index)."""
    boxes = tf.convert_to_tensor(boxes)
    windows = tf.cast(tf.convert_to_tensor(windows), boxes.dtype)[..., None, :]
    origin = tf.gather(windows, [0, 1, 0, 1], axis=-1)
    size = tf.gather(windows, [2, 3, 2, 3], axis=-1) - origin
    return origin + boxes * size


def cut_by_tile_edge(boxes, windows, margin=EDGE_MARGIN):
    """bool `[..., K]`: the box (relative to the whole image, `[..., K, 4]`) lies within
    `margin` of the window's side of an edge of its window `[..., 4]` that is inside the
    image (an edge at 0 or 1 is the image's own border and cuts nothing)."""
    boxes = tf.convert_to_tensor(boxes)
    w = tf.cast(tf.convert_to_tensor(windows), boxes.dtype)[..., None, :]  # [..., 1, 4]
    side = tf.gather(w, [2, 3, 2, 3], axis=-1) - tf.gather(w, [0, 1, 0, 1], axis=-1)
    tol = margin * side
    inner_lo = w[..., :2] > 0.          # the window's top/left edge is inside the image
    inner_hi = w[..., 2:] < 1.          # its bottom/right edge is
    near_lo = boxes[..., :2] - w[..., :2] <= tol[..., :2]
    near_hi = w[..., 2:] - boxes[..., 2:] <= tol[..., 2:]
    cut = tf.logical_or(tf.logical_and(inner_lo, near_lo), tf.logical_and(inner_hi, near_hi))
    return tf.reduce_any(cut, axis=-1)


def small_enough(boxes, max_box):
    """bool `[..., K]`: the box `[..., K, 4]` (relative to the whole image) has a side, the
    square root of its area, under `max_box`; `max_box` 0 (or less) keeps every box."""
    boxes = tf.convert_to_tensor(boxes)
    if max_box <= 0.:
        return tf.ones(tf.shape(boxes)[:-1], tf.bool)
    return boxes_lib.area(boxes) < tf.cast(max_box, boxes.dtype) ** 2
