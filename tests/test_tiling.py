"""Tiled inference (`ssd_tf.tiling`, `DetectionModule(tiles=...)`, eval_ssd.py/detect.py/
export_savedmodel.py --tiles): hand-derived windows and mappings, the merge, and the tiled
module against the untiled module run on each tile by hand."""
import cv2
import numpy as np
import pytest
import tensorflow as tf

from conftest import sharpened_network
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import postprocess
from ssd_tf import tiling
from ssd_tf.cli import flags as shared_flags
from ssd_tf.export import saved_model as export


# ---------------------------------------------------------------------------- windows
def test_tile_windows_two_by_two_quarter_overlap():
    # n = 2, o = 1/4: t = 1 / (2 - 1/4) = 4/7; the second tile starts at t (1 - o) = 3/7
    # and ends at 3/7 + 4/7 = 1; the two share 4/7 - 3/7 = 1/7 = o t.
    w = tiling.tile_windows(2, 2, 0.25)
    t, s = 4 / 7, 3 / 7
    expected = [[0, 0, t, t], [0, s, t, 1], [s, 0, 1, t], [s, s, 1, 1]]
    np.testing.assert_allclose(w, expected, atol=1e-12)


def test_tile_windows_rows_and_columns_differ_and_no_overlap():
    # 1 row x 3 columns, no overlap: columns of a third each, one row of the full height.
    w = tiling.tile_windows(1, 3, 0.)
    expected = [[0, 0, 1, 1 / 3], [0, 1 / 3, 1, 2 / 3], [0, 2 / 3, 1, 1]]
    np.testing.assert_allclose(w, expected, atol=1e-12)


@pytest.mark.parametrize('rows,cols,overlap', [(2, 3, 0.25), (3, 3, 0.5), (4, 1, 0.1)])
def test_tile_windows_cover_the_image_with_the_overlap(rows, cols, overlap):
    w = tiling.tile_windows(rows, cols, overlap).reshape(rows, cols, 4)
    assert w.min() == 0. and w.max() == 1.
    side_y = w[0, 0, 2] - w[0, 0, 0]
    for r in range(rows - 1):  # consecutive rows share overlap * side
        np.testing.assert_allclose(w[r, 0, 2] - w[r + 1, 0, 0], overlap * side_y, atol=1e-12)
    np.testing.assert_allclose(w[..., 2] - w[..., 0], side_y, atol=1e-12)  # equal tiles


@pytest.mark.parametrize('text,msg', [('2', 'ROWSxCOLS'), ('ax2', 'ROWSxCOLS'),
                                      ('0x2', 'from 1 to'), ('9x1', 'from 1 to')])
def test_bad_tiles_flag_is_named(text, msg):
    with pytest.raises(ValueError, match='--tiles') as e:
        shared_flags.tiles_from_flags(text, 0.25)
    assert msg in str(e.value)


def test_bad_overlap_is_named():
    with pytest.raises(ValueError, match='--tile_overlap=1.0'):
        shared_flags.tiles_from_flags('2x2', 1.0)
    assert shared_flags.tiles_from_flags(None, 0.25) is None
    assert shared_flags.tiles_from_flags(' 3X2 ', 0.5) == (3, 2, 0.5, tiling.DEFAULT_MAX_BOX)
    assert shared_flags.tiles_from_flags('2x2', 0.25, 0.) == (2, 2, 0.25, 0.)
    with pytest.raises(ValueError, match='--tile_max_box=1.5'):
        shared_flags.tiles_from_flags('2x2', 0.25, 1.5)


def test_small_enough_golden():
    # sides: sqrt(0.12 * 0.12) = 0.12; sqrt(0.05 * 0.25) = 0.1118; sqrt(0.01 * 0.04) = 0.02;
    # a degenerate box (ymax < ymin) has no area.
    boxes = tf.constant([[.2, .2, .32, .32], [0., 0., .05, .25], [.5, .5, .51, .54],
                         [.6, .6, .5, .9]])
    assert tiling.small_enough(boxes, 0.1).numpy().tolist() == [False, False, True, True]
    assert tiling.small_enough(boxes, 0.115).numpy().tolist() == [False, True, True, True]
    assert tiling.small_enough(boxes, 0.125).numpy().tolist() == [True, True, True, True]
    assert tiling.small_enough(boxes[None], 0.).numpy().tolist() == [[True] * 4]


# ---------------------------------------------------------------------------- mapping
def test_from_window_golden():
    # window [0.5, 0.25, 1, 0.75]: origin (0.5, 0.25), size (0.5, 0.5); a box [0, 0.5, 0.5, 1]
    # in it -> y 0.5 + 0 * 0.5 = 0.5, x 0.25 + 0.5 * 0.5 = 0.5, y 0.5 + 0.25 = 0.75, x 0.75.
    out = tiling.from_window([[[0., 0.5, 0.5, 1.]]], [[0.5, 0.25, 1., 0.75]]).numpy()
    np.testing.assert_allclose(out, [[[0.5, 0.5, 0.75, 0.75]]])


def test_cut_by_tile_edge_golden():
    # window [0, 0.4, 0.6, 1]: its left edge (x 0.4) and bottom edge (y 0.6) are inside the
    # image; side 0.6, margin 0.01 -> tolerance 0.006.
    window = [[0., 0.4, 0.6, 1.]]
    boxes = [[[0., 0.4, 0.1, 0.5],      # on the left edge: cut
              [0.2, 0.405, 0.3, 0.5],   # 0.005 from it: cut
              [0.2, 0.41, 0.3, 0.5],    # 0.01 from it: kept
              [0.0, 0.9, 0.1, 1.0],     # on the image's top and right borders: kept
              [0.5, 0.7, 0.6, 0.8]]]    # on the bottom edge: cut
    cut = tiling.cut_by_tile_edge(boxes, window).numpy()
    assert cut.tolist() == [[True, True, False, False, True]]
    # the whole image's window cuts nothing
    assert not tiling.cut_by_tile_edge(boxes, [[0., 0., 1., 1.]]).numpy().any()


def test_merge_suppresses_within_a_class_only():
    # Two overlapping boxes of class 1 (IoU 0.81 > 0.45): the 0.6 one goes; the same box
    # with class 2 stays; a dropped (invalid) 0.95 detection and padding never appear.
    boxes = [[[0., 0., .5, .5], [0., 0., .45, .45], [0., 0., .45, .45], [.6, .6, 1., 1.],
              [0., 0., 0., 0.]]]
    scores = [[0.9, 0.6, 0.7, 0.95, 0.]]
    classes = [[1, 1, 2, 1, 0]]
    valid = [[True, True, True, False, False]]
    out = postprocess.merge_detections(boxes, scores, classes, valid, num_classes=3, nms_threshold=0.45,
                       keep_top_k=4)
    assert int(out['num_detections'][0]) == 2
    np.testing.assert_allclose(out['scores'][0].numpy(), [0.9, 0.7, 0., 0.])
    assert out['classes'][0].numpy().tolist() == [1, 2, 0, 0]
    np.testing.assert_allclose(out['bboxes'][0, :2].numpy(), [[0, 0, .5, .5], [0, 0, .45, .45]])


def test_merge_of_an_image_without_detections():
    out = postprocess.merge_detections(tf.zeros([1, 3, 4]), tf.zeros([1, 3]), tf.zeros([1, 3], tf.int32),
                       tf.zeros([1, 3], tf.bool), num_classes=3, nms_threshold=0.45,
                       keep_top_k=2)
    assert int(out['num_detections'][0]) == 0
    assert not out['scores'].numpy().any()


def test_crop_windows_snaps_outwards_to_pixels():
    # A 10 x 7 image (values = row * 10 + column), windows [0, 0, 0.55, 0.5] and
    # [0.45, 0.5, 1, 1]: rows floor(0)..ceil(5.5) = 0..6, columns 0..ceil(3.5) = 4; rows
    # floor(4.5) = 4..10, columns floor(3.5) = 3..7. The pre-processing here returns the crop
    # as it is (padded into 10 x 7), so its pixels can be checked.
    image = (np.arange(10)[:, None] * 10 + np.arange(7)[None, :]).astype(np.uint8)
    image = np.repeat(image[..., None], 3, axis=-1)

    def keep(crop):
        h, w = tf.shape(crop)[0], tf.shape(crop)[1]
        padded = tf.pad(crop, [[0, 10 - h], [0, 7 - w], [0, 0]])
        return tf.cast(padded, tf.float32), tf.cast(tf.stack([0, 0, h, w]), tf.float32)
    crops, sizes, snapped = tiling.crop_windows(
        tf.constant(image), np.array([[0, 0, .55, .5], [.45, .5, 1, 1]]), keep)
    np.testing.assert_allclose(snapped.numpy(), [[0, 0, 1, 1], [0, 0, .6, 4 / 7],
                                                 [.4, 3 / 7, 1, 1]], atol=1e-6)
    assert sizes.numpy()[:, 2:].tolist() == [[10, 7], [6, 4], [6, 4]]
    assert crops[1, 0, 0, 0] == 0 and crops[1, 5, 3, 0] == 53      # rows 0-5, cols 0-3
    assert crops[2, 0, 0, 0] == 43 and crops[2, 5, 3, 0] == 96     # rows 4-9, cols 3-6


# ---------------------------------------------------------------------------- the module
@pytest.fixture(scope='module')
def detector():
    net, model = sharpened_network(3, 'ssd_small')
    return net, model, prep.image_preprocess_fn(tuple(net.params.img_shape))


def _photo(seed, h=260, w=390):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (h // 13, w // 13, 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_NEAREST)
    return img


def _png(image):
    return tf.io.encode_png(tf.constant(image)).numpy()


def test_one_by_one_is_the_untiled_module(detector):
    net, model, pre = detector
    data = tf.constant([_png(_photo(0)), _png(_photo(1))])
    plain = export.DetectionModule(net, model, pre).detect_bytes(data)
    one = export.DetectionModule(net, model, pre, tiles=(1, 1, 0.25)).detect_bytes(data)
    for key in export.OUTPUT_KEYS:
        np.testing.assert_array_equal(plain[key].numpy(), one[key].numpy())


@pytest.mark.parametrize('max_box', [0., 0.12])
def test_tiled_detections_are_those_of_the_passes_mapped_back(detector, max_box):
    """Each tiled detection is a detection of the untiled module run on the whole image or
    on one tile (cut out and encoded by hand here), mapped to the whole image by
    `y = y0 + y' (y1 - y0)`, and is not on an inner edge of its tile; a tile's detection has
    a side sqrt(h w) under max_box (0: any); NMS kept the best."""
    net, model, pre = detector
    image = _photo(2)
    h, w = image.shape[:2]
    plain = export.DetectionModule(net, model, pre, max_detections=100)
    tiled = export.DetectionModule(net, model, pre, max_detections=100,
                                   tiles=(2, 2, 0.25, max_box))
    out = tiled.detect_bytes(tf.constant([_png(image)]))
    n = int(out['num_detections'][0])
    assert n > 0
    # 2x2, overlap 1/4 on 260 x 390: tile side 4/7 -> rows 0..ceil(148.57) = 149 and
    # floor(111.43) = 111..260; columns 0..ceil(222.86) = 223 and floor(167.14) = 167..390.
    rows, cols = [(0, 149), (111, 260)], [(0, 223), (167, 390)]
    passes = [((0, 0, h, w), image)] + [((r0, c0, r1, c1), image[r0:r1, c0:c1])
                                         for r0, r1 in rows for c0, c1 in cols]
    candidates, large_tile_boxes = [], 0
    for (r0, c0, r1, c1), crop in passes:
        d = plain.detect_bytes(tf.constant([_png(crop)]))
        k = int(d['num_detections'][0])
        b = d['detection_boxes'][0, :k].numpy().astype(np.float64)
        mapped = np.stack([(r0 + b[:, 0] * (r1 - r0)) / h, (c0 + b[:, 1] * (c1 - c0)) / w,
                           (r0 + b[:, 2] * (r1 - r0)) / h, (c0 + b[:, 3] * (c1 - c0)) / w], 1)
        inner = [r0 > 0, c0 > 0, r1 < h, c1 < w]
        for box, s, c in zip(mapped, d['detection_scores'][0, :k].numpy(),
                             d['detection_classes'][0, :k].numpy()):
            side = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
            if any(inner) and max_box and side >= max_box:
                large_tile_boxes += 1
                continue                                # a tile's box too large to keep
            candidates.append((box, s, c, inner, (r0 / h, c0 / w, r1 / h, c1 / w)))
    boxes = out['detection_boxes'][0, :n].numpy()
    scores = out['detection_scores'][0, :n].numpy()
    classes = out['detection_classes'][0, :n].numpy()
    assert np.all(np.diff(scores) <= 0)
    for box, s, c in zip(boxes, scores, classes):
        match = [cand for cand in candidates if cand[2] == c and abs(cand[1] - s) < 1e-5
                 and np.abs(cand[0] - box).max() < 1e-4]
        assert match, (box, s, c)
        # not cut: no inner edge of its pass within 1 % of that pass's side
        cand_box, _, _, inner, win = match[0]
        side = (win[2] - win[0], win[3] - win[1])
        gaps = [cand_box[0] - win[0], cand_box[1] - win[1], win[2] - cand_box[2],
                win[3] - cand_box[3]]
        tol = [0.01 * side[0], 0.01 * side[1]] * 2
        assert not any(i and g <= t for i, g, t in zip(inner, gaps, tol)), (box, win)
    if max_box:
        assert large_tile_boxes > 0            # the cap had boxes to drop
        sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        assert (sides >= max_box).any()        # ... but not the whole image's large ones
    # the tiles add detections the whole image alone does not have
    whole = plain.detect_bytes(tf.constant([_png(image)]))
    assert n != int(whole['num_detections'][0]) or not np.allclose(
        scores, whole['detection_scores'][0, :n].numpy())


def test_module_refuses_bad_tiles(detector):
    with pytest.raises(ValueError, match='--tile_max_box=-0.1'):
        export.DetectionModule(*detector, tiles=(2, 2, 0.25, -0.1))
    with pytest.raises(ValueError, match='--tile_overlap=1.0'):
        export.DetectionModule(*detector, tiles=(2, 2, 1.0))


def test_tiled_module_on_an_empty_request_and_images_signature(detector):
    net, model, pre = detector
    tiled = export.DetectionModule(net, model, pre, tiles=(2, 2, 0.25))
    empty = tiled.detect_bytes(tf.constant([], tf.string))
    assert empty['detection_boxes'].shape[0] == 0
    frames = np.stack([_photo(4), _photo(5)])
    by_images = tiled.detect_images(tf.constant(frames))
    by_bytes = tiled.detect_bytes(tf.constant([_png(f) for f in frames]))
    np.testing.assert_allclose(by_images['detection_scores'].numpy(),
                               by_bytes['detection_scores'].numpy(), atol=1e-6)
