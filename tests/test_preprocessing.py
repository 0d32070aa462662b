"""Augmentation invariants on synthetic images with known objects, eval goldens, seeds."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from preprocessing import ssd_vgg_preprocessing as prep

MEANS = np.array([123., 117., 104.], np.float32)  # the VGG means, RGB (SPEC.md)
BG = (40, 40, 40)
# label -> colour of a solid rectangle; far apart so bilinear edges never look like another.
COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}
# label -> box [ymin, xmin, ymax, xmax] relative to a 120 x 160 image (pixel edges / size).
BOXES = {1: (12 / 120, 16 / 160, 60 / 120, 72 / 160),
         2: (66 / 120, 80 / 160, 114 / 120, 152 / 160),
         3: (6 / 120, 100 / 160, 30 / 120, 124 / 160)}


def scene(height=120, width=160):
    """(image uint8 [H, W, 3], labels [3], boxes [3, 4], difficult [3]) with solid rectangles."""
    image = np.zeros((height, width, 3), np.uint8) + np.array(BG, np.uint8)
    labels = np.array(sorted(COLOURS), np.int64)
    boxes = np.array([BOXES[l] for l in labels], np.float32)
    for l, (y0, x0, y1, x1) in zip(labels, boxes):
        image[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = \
            COLOURS[l]
    difficult = (labels == 2).astype(np.int64)  # flags follow label 2 wherever it goes
    return image, labels, boxes, difficult


def unwhiten(image):
    return np.asarray(image) + MEANS


def is_colour(pixels, colour, tol=40.):
    return np.all(np.abs(pixels - np.array(colour, np.float32)) < tol, axis=-1)


@pytest.fixture
def no_photometric(monkeypatch):
    """Identity photometric map, so that the geometry can be checked on exact colours."""
    monkeypatch.setattr(prep, '_photometric_affine', lambda mean, seeds: (tf.eye(3), tf.zeros(3)))


def check_boxes_on_objects(image, labels, boxes, size):
    """Every kept box lies in [0,1] and frames its object: its interior is the label's colour
    and (almost) no pixel of that colour lies outside it."""
    rgb = unwhiten(image)
    assert np.all(boxes >= 0.) and np.all(boxes <= 1.)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    for l, (y0, x0, y1, x1) in zip(labels, boxes):
        py0, px0, py1, px1 = (np.array([y0, x0, y1, x1]) * size).round().astype(int)
        inner = rgb[py0 + 1:py1 - 1, px0 + 1:px1 - 1]
        if inner.size:
            assert is_colour(inner, COLOURS[l]).mean() > 0.95, (l, y0, x0, y1, x1)
        mask = is_colour(rgb, COLOURS[l])
        mask[max(py0 - 2, 0):py1 + 2, max(px0 - 2, 0):px1 + 2] = False
        assert mask.sum() <= 2, (l, mask.sum())


@pytest.mark.slow
def test_paper_chain_boxes_frame_their_objects(no_photometric):
    image, labels, boxes, difficult = scene()
    size = 96
    saw_fill = saw_flip = saw_drop = False
    for s in range(24):
        out, l, b, d = [x.numpy() for x in prep.preprocess_for_train(
            image, labels, boxes, (size, size), seed=[s, 3], difficults=difficult)]
        assert out.shape == (size, size, 3) and out.dtype == np.float32
        assert len(l) == len(b) == len(d)
        np.testing.assert_array_equal(d, (l == 2).astype(np.int64))  # aligned with labels
        check_boxes_on_objects(out, l, b, size)
        saw_fill |= bool(np.any(np.all(out == 0., axis=-1)))  # expand canvas = mean colour
        saw_drop |= len(l) < 3
        if 1 in l:
            # Object 1 is left of object 2's centre in the source; a flip reverses the order.
            i1 = list(l).index(1)
            saw_flip |= b[i1, 1] > 0.5 and 2 in l and b[list(l).index(2), 1] < b[i1, 1]
    assert saw_fill and saw_flip and saw_drop  # expand, flip and cropping paths exercised


def test_paper_chain_with_photometric_keeps_range_and_greys():
    """Grey stays grey (saturation and hue act on chroma only, contrast is per channel around
    equal means) and values stay in [0, 255] before the means are subtracted."""
    grey = np.zeros((64, 80, 3), np.uint8) + np.arange(80, dtype=np.uint8)[None, :, None] * 3
    for s in range(8):
        out = prep.preprocess_for_train(grey, [1], [[0.2, 0.2, 0.8, 0.8]], (48, 48),
                                        seed=[s, 0])[0].numpy()
        rgb = unwhiten(out)
        assert rgb.min() >= -1e-3 and rgb.max() <= 255. + 1e-3
        on_image = ~np.all(out == 0., axis=-1)  # the expand canvas is the (non-grey) mean
        spread = rgb[on_image].max(axis=-1) - rgb[on_image].min(axis=-1)
        assert spread.max() < 1.


def test_photometric_affine_maps_grey_to_grey():
    """Around a grey mean, a grey pixel stays grey; each distortion has probability 0.5, so
    some seeds give the identity (all four off, p = 1/16) and most do not."""
    identity = 0
    for s in range(48):
        m, b = prep._photometric_affine(tf.constant([90., 90., 90.]),
                                        prep._seeds(tf.constant([s, 1]), 2))
        m, b = m.numpy(), b.numpy()
        assert np.ptp(np.array([50., 50., 50.]) @ m + b) < 1e-3
        identity += np.allclose(m, np.eye(3), atol=1e-6) and np.allclose(b, 0., atol=1e-4)
    assert 0 < identity < 20


@pytest.mark.slow
def test_sampled_patches_satisfy_constraints():
    boxes = tf.constant([[0.1, 0.1, 0.4, 0.3], [0.5, 0.6, 0.9, 0.95]])
    whole = 0
    for s in range(60):
        p = prep._sample_patch(boxes, tf.constant([0., 0., 1., 1.]),
                               prep._seeds(tf.constant([s, 9]), 4)).numpy()
        if np.allclose(p, [0, 0, 1, 1]):
            whole += 1
            continue
        h, w = p[2] - p[0], p[3] - p[1]
        assert 0.3 ** 2 - 1e-5 <= h * w <= 1. + 1e-6
        assert 0.5 - 1e-4 <= w / h <= 2. + 1e-4
        assert np.all(p >= 0.) and np.all(p <= 1. + 1e-6)
        c = (boxes.numpy()[:, :2] + boxes.numpy()[:, 2:]) / 2.
        assert np.any(np.all((c > p[:2]) & (c < p[2:]), axis=1))  # holds a box centre
    assert 0 < whole < 60


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(height=st.integers(8, 90), width=st.integers(8, 90), n=st.integers(0, 6),
       seed=st.integers(0, 2 ** 31 - 1), data=st.data())
def test_property_boxes_valid_and_labels_aligned(height, width, n, seed, data):
    """Random image sizes and boxes: output boxes inside [0, 1] with positive size, and the
    kept labels a subsequence of the input ones (label i marks box i, order kept)."""
    corners = np.array(data.draw(st.lists(
        st.tuples(*[st.floats(0., 1.)] * 4), min_size=n, max_size=n)), np.float32).reshape(-1, 4)
    boxes = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]),
                            np.maximum(corners[:, :2], corners[:, 2:])], axis=1)
    labels = np.arange(1, n + 1, dtype=np.int64)
    image = np.zeros((height, width, 3), np.uint8)
    for rc in (False, True):
        out, l, b, _ = [x.numpy() for x in prep.preprocess_for_train(
            image, labels, boxes, (24, 24), reference_compat=rc, seed=[seed, 0])]
        assert out.shape == (24, 24, 3) and np.all(np.isfinite(out))
        assert len(l) == len(b) <= n
        assert np.all(np.diff(l) > 0)  # a subsequence of 1..n
        positive = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        if rc:
            # The slim chain keeps every box it does not crop away, bit for bit: one thinner
            # than float32's resolution can come out with zero size (hypothesis found a box
            # 1.2e-38 wide at x = 0, flipped to x = 1 - 1.2e-38 = 1). Boxes of a side of at
            # least 1e-6 (16 ulps at 1) keep a positive size.
            sides = boxes[l - 1, 2:] - boxes[l - 1, :2]
            positive |= np.any(sides < 1e-6, axis=1)
        assert np.all(positive)
        if not rc:  # the slim chain keeps boxes unclipped by design
            assert np.all(b >= 0.) and np.all(b <= 1.)


@pytest.mark.parametrize('reference_compat', [False, True])
def test_zero_boxes(reference_compat):
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    for boxes, labels in [(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)), (None, None)]:
        for s in range(4):
            out, l, b, _ = prep.preprocess_for_train(image, labels, boxes, (32, 32),
                                                  reference_compat=reference_compat,
                                                  seed=[s, 1])
            assert out.shape == (32, 32, 3)
            assert l.shape == (0,) and b.shape == (0, 4)
            assert np.all(np.isfinite(out.numpy()))
    out = prep.preprocess_for_eval(image, np.zeros((0,), np.int64), np.zeros((0, 4)), (32, 32))
    assert out[0].shape == (32, 32, 3) and out[2].shape == (0, 4)


@pytest.mark.parametrize('reference_compat', [False, True])
def test_seeded_determinism(reference_compat):
    image, labels, boxes, _ = scene()

    def run(seed):
        return [x.numpy() for x in prep.preprocess_for_train(
            image, labels, boxes, (64, 64), reference_compat=reference_compat, seed=seed)]

    a, b = run([5, 7]), run(tf.constant([5, 7], tf.int64))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    others = [run([s, 7])[0] for s in range(6, 9)]
    assert any(not np.array_equal(a[0], o) for o in others)


@pytest.mark.slow
def test_graph_mode_with_unknown_shapes_and_tf_data_map():
    image, labels, boxes, difficult = scene()
    spec = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([2], tf.int64))
    for rc in (False, True):
        fn = tf.function(lambda i, l, b, d, s, rc=rc: prep.preprocess_for_train(
            i, l, b, (40, 50), reference_compat=rc, seed=s, difficults=d), input_signature=spec)
        out = fn.get_concrete_function().structured_outputs
        assert out[0].shape == (40, 50, 3) and out[2].shape.as_list() == [None, 4]
        _, l, b, d = fn(image[:60, :100], labels[:0], boxes[:0], difficult[:0], [1, 2])
        assert l.shape == (0,) and b.shape == (0, 4) and d.shape == (0,)
    # Inside tf.data.Dataset.map, with a per-element seed from the element's position.
    ds = tf.data.Dataset.range(3).map(lambda i: prep.preprocess_for_train(
        tf.image.crop_to_bounding_box(image, 0, 0, 100 - 10 * tf.cast(i, tf.int32), 160),
        labels, boxes, (40, 50), seed=tf.stack([i, 0])), num_parallel_calls=2)
    assert ds.element_spec[0].shape == (40, 50, 3)
    assert len(list(ds)) == 3


def test_nchw():
    image, labels, boxes, _ = scene()
    out = prep.preprocess_for_train(image, labels, boxes, (40, 50), data_format='NCHW',
                                    seed=[1, 2])[0]
    assert out.shape == (3, 40, 50)
    assert prep.preprocess_for_eval(image, labels, boxes, (40, 50),
                                    data_format='NCHW')[0].shape == (3, 40, 50)
    with pytest.raises(ValueError, match='data_format'):
        prep.preprocess_for_eval(image, labels, boxes, (40, 50), data_format='HWC')


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match='channels=3'):
        prep.preprocess_for_train(np.zeros((10, 10, 1), np.uint8), [1], [[0, 0, 1, 1]],
                                  (8, 8), seed=[0, 0])
    with pytest.raises(ValueError, match='seed'):
        prep.preprocess_for_train(np.zeros((10, 10, 3), np.uint8), [1], [[0, 0, 1, 1]],
                                  (8, 8), seed=[0, 0, 1])
    with pytest.raises(ValueError, match='last dimension of 4'):
        prep.preprocess_for_train(np.zeros((10, 10, 3), np.uint8), [1], [[0, 0, 1]],
                                  (8, 8), seed=[0, 0])


# ------------------------------------------------------------------ slim (reference) chain
def test_slim_overlap_rule_golden():
    # Crop = top half of the image. Box A fully inside -> y doubled: [0.2, 0.1, 0.6, 0.3].
    # Box B: rows 0.4..0.8, only 0.4..0.5 inside = 25% of its area -> dropped.
    # Box C: rows 0.3..0.6, 0.3..0.5 inside = 2/3 -> kept and NOT clipped: [0.6, .5, 1.2, .6].
    boxes = tf.constant([[0.1, 0.1, 0.3, 0.3], [0.4, 0.1, 0.8, 0.3], [0.3, 0.5, 0.6, 0.6]])
    resized = prep.bboxes_resize([0., 0., 0.5, 1.], boxes)
    labels, kept, diff = prep.bboxes_filter_overlap(tf.constant([1, 2, 3]), resized,
                                                    difficults=tf.constant([0, 1, 0]))
    np.testing.assert_array_equal(labels, [1, 3])
    np.testing.assert_array_equal(diff, [0, 0])
    np.testing.assert_allclose(kept, [[0.2, 0.1, 0.6, 0.3], [0.6, 0.5, 1.2, 0.6]], atol=1e-6)
    # Exactly half inside is not "more than half": dropped.
    _, kept, _ = prep.bboxes_filter_overlap([1], [[0.5, 0., 1.5, 1.]])
    assert kept.shape == (0, 4)


@pytest.mark.slow
def test_slim_chain_keeps_unclipped_boxes_with_majority_inside():
    image, labels, boxes, difficult = scene()
    saw_unclipped = False
    for s in range(30):
        out, l, b, d = [x.numpy() for x in prep.preprocess_for_train(
            image, labels, boxes, (64, 64), reference_compat=True, seed=[s, 4],
            difficults=difficult)]
        assert out.shape == (64, 64, 3)
        rgb = unwhiten(out)
        assert rgb.min() >= -1e-3 and rgb.max() <= 255. + 1e-3  # distort_color clips to [0, 1]
        np.testing.assert_array_equal(d, (l == 2).astype(np.int64))
        inside = (np.clip(b[:, 2], 0, 1) - np.clip(b[:, 0], 0, 1)) * \
                 (np.clip(b[:, 3], 0, 1) - np.clip(b[:, 1], 0, 1))
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        assert np.all(inside > 0.5 * area - 1e-6)
        saw_unclipped |= bool(np.any((b < -1e-6) | (b > 1 + 1e-6)))
    assert saw_unclipped


# ------------------------------------------------------------------ evaluation
def eval_image():
    """100 x 200 constant image (value 100) and two boxes with hand-checkable coordinates."""
    image = np.full((100, 200, 3), 100, np.uint8)
    boxes = np.array([[0.2, 0.1, 0.6, 0.5], [0.0, 0.5, 1.0, 1.0]], np.float32)
    return image, np.array([3, 7], np.int64), boxes


def test_eval_warp():
    image, labels, boxes = eval_image()
    out, l, b, bbox_img, _ = prep.preprocess_for_eval(image, labels, boxes, (300, 300))
    assert out.shape == (300, 300, 3)
    np.testing.assert_allclose(out[150, 150], 100. - MEANS, atol=1e-4)
    np.testing.assert_allclose(b, boxes)  # relative coordinates survive a warp
    np.testing.assert_array_equal(l, labels)
    np.testing.assert_allclose(bbox_img, [0, 0, 1, 1])


def test_eval_pad_and_resize_golden():
    image, labels, boxes = eval_image()
    # out 100x100: factor = min(1, 100/100, 100/200) = 0.5 -> 50 x 100, padded by 25 rows top
    # and bottom: y' = (50 y + 25) / 100 = 0.5 y + 0.25; x unchanged.
    out, l, b, bbox_img, _ = prep.preprocess_for_eval(image, labels, boxes, (100, 100),
                                                      resize=prep.Resize.PAD_AND_RESIZE)
    want = boxes.copy()
    want[:, [0, 2]] = boxes[:, [0, 2]] * 0.5 + 0.25
    np.testing.assert_allclose(b, want, atol=1e-6)
    np.testing.assert_allclose(bbox_img, [0.25, 0., 0.75, 1.], atol=1e-6)
    np.testing.assert_allclose(out[10, 50], 0.)  # padding = the mean colour
    np.testing.assert_allclose(out[50, 50], 100. - MEANS, atol=1e-4)
    # out 300x300: never enlarged (factor 1), padded by 100 rows and 50 columns on each side:
    # y' = (100 y + 100) / 300, x' = (200 x + 50) / 300.
    out, _, b, _, _ = prep.preprocess_for_eval(image, labels, boxes, (300, 300),
                                               resize='PAD_AND_RESIZE')
    assert out.shape == (300, 300, 3)
    want = np.stack([(100 * boxes[:, 0] + 100) / 300, (200 * boxes[:, 1] + 50) / 300,
                     (100 * boxes[:, 2] + 100) / 300, (200 * boxes[:, 3] + 50) / 300], -1)
    np.testing.assert_allclose(b, want, atol=1e-6)


def test_eval_central_crop_golden():
    image, labels, boxes = eval_image()
    # 100 x 200 -> 100 x 100: 50 columns cropped on the left: x' = (200 x - 50) / 100.
    out, _, b, bbox_img, _ = prep.preprocess_for_eval(image, labels, boxes, (100, 100),
                                                      resize=prep.Resize.CENTRAL_CROP)
    assert out.shape == (100, 100, 3)
    want = boxes.copy()
    want[:, [1, 3]] = 2. * boxes[:, [1, 3]] - 0.5
    np.testing.assert_allclose(b, want, atol=1e-6)
    np.testing.assert_allclose(bbox_img, [0., -0.5, 1., 1.5], atol=1e-6)


def test_eval_none_and_difficults():
    image, labels, boxes = eval_image()
    out, l, b, bbox_img, d = prep.preprocess_for_eval(image, labels, boxes, None,
                                                      resize=prep.Resize.NONE,
                                                      difficults=[0, 1])
    assert out.shape == (100, 200, 3)
    np.testing.assert_allclose(b, boxes)
    np.testing.assert_array_equal(d, [0, 1])  # default: difficult boxes kept, flags aligned
    _, l, b, _, d = prep.preprocess_for_eval(image, labels, boxes, (300, 300),
                                             difficults=[0, 1], reference_compat=True)
    np.testing.assert_array_equal(l, [3])  # slim: difficult boxes removed
    np.testing.assert_array_equal(d, [0])
    np.testing.assert_allclose(b, boxes[:1])


def test_preprocess_image_dispatch():
    image, labels, boxes = eval_image()
    train = prep.preprocess_image(image, labels, boxes, (64, 64), 'NHWC', is_training=True,
                                  seed=[0, 1])
    assert isinstance(train, prep.TrainExample) and train.image.shape == (64, 64, 3)
    evals = prep.preprocess_image(image, labels, boxes, (64, 64), 'NHWC')
    assert isinstance(evals, prep.EvalExample) and evals.image.shape == (64, 64, 3)


@pytest.mark.slow
@pytest.mark.parametrize('reference_compat', [False, True])
def test_fixed_return_types_with_or_without_difficults(reference_compat):
    # The same named fields whether difficults are given or not; when they are not, the flags
    # are all-zero int64 aligned with the kept boxes (so no caller slices or counts items).
    image, labels, boxes, difficult = scene()
    for d in (None, difficult):
        train = prep.preprocess_for_train(image, labels, boxes, (48, 48), seed=[3, 1],
                                          reference_compat=reference_compat, difficults=d)
        assert type(train) is prep.TrainExample
        assert train.difficults.shape == train.labels.shape
        evals = prep.preprocess_for_eval(image, labels, boxes, (48, 48), difficults=d,
                                         reference_compat=reference_compat)
        assert type(evals) is prep.EvalExample
        np.testing.assert_allclose(evals.bbox_img, [0., 0., 1., 1.])
        assert evals.difficults.shape == evals.labels.shape
        if d is None:
            assert train.difficults.dtype == tf.int64 and evals.difficults.dtype == tf.int64
            assert not np.any(train.difficults) and not np.any(evals.difficults)
            np.testing.assert_array_equal(evals.labels, labels)  # nothing removed
    # In tf.data the element is the namedtuple too.
    ds = tf.data.Dataset.from_tensors((image, labels, boxes)).map(
        lambda i, l, b: prep.preprocess_for_eval(i, l, b, (48, 48)))
    assert type(ds.element_spec) is prep.EvalExample


def _np_crop_or_pad(image, out_h, out_w):
    """Central crop and/or zero pad in numpy (offsets (in - out) // 2, as SPEC.md's slim
    `resize_image_with_crop_or_pad`); written here so that no helper of the module under test
    computes an expected value."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    cy, cx = max((h - out_h) // 2, 0), max((w - out_w) // 2, 0)
    image = image[cy:cy + min(out_h, h), cx:cx + min(out_w, w)]
    py, px = max((out_h - h) // 2, 0), max((out_w - w) // 2, 0)
    out = np.zeros((out_h, out_w) + image.shape[2:], image.dtype)
    out[py:py + image.shape[0], px:px + image.shape[1]] = image
    return out


def _eval_old_order(image, out_shape, resize):
    """The pre-change default eval path: means subtracted at full size, then resized."""
    whitened = prep.tf_image_whitened(image)
    if resize == 'WARP_RESIZE':
        return tf.image.resize(whitened, out_shape, method='bilinear').numpy()
    h, w = image.shape[:2]
    factor = min(1., out_shape[0] / h, out_shape[1] / w)
    if resize == 'PAD_AND_RESIZE':
        whitened = tf.image.resize(whitened, (int(np.floor(factor * h)),
                                              int(np.floor(factor * w))), method='bilinear')
    return _np_crop_or_pad(whitened, out_shape[0], out_shape[1])


def _eval_images(shared_dir, count=4):
    """A few real photos (raccoon test images) when ../shared/data is there, else noise."""
    folder = None if shared_dir is None else shared_dir / 'raccoon' / 'JPEGImages'
    if folder is not None and folder.is_dir():
        return [tf.io.decode_jpeg(p.read_bytes(), channels=3).numpy()
                for p in sorted(folder.glob('*.jpg'))[:count]]
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in ((480, 640), (333, 500), (120, 90), (300, 300))[:count]]


@pytest.mark.parametrize('resize', ['WARP_RESIZE', 'PAD_AND_RESIZE', 'CENTRAL_CROP'])
def test_eval_resize_first_matches_the_old_order(resize):
    from conftest import SHARED_DATA
    for image in _eval_images(SHARED_DATA if SHARED_DATA.is_dir() else None):
        new = prep.preprocess_for_eval(image, None, None, (300, 300), resize=resize).image
        old = _eval_old_order(image, (300, 300), resize)
        # Bilinear weights sum to 1, so resize(x) - m == resize(x - m) up to float32 rounding.
        np.testing.assert_allclose(new.numpy(), old, rtol=0., atol=1e-4)
        if resize == 'CENTRAL_CROP':  # pixels are only moved: the same bits
            np.testing.assert_array_equal(new.numpy(), old)


# A 2 x 4 grey image (the same value in R, G, B), worked by hand below:
#   row 0:   0  30  60  90
#   row 1: 120 150 180 210
# Means (SPEC.md, RGB) 123, 117, 104 are subtracted per channel.
TINY_GREY = np.array([[0, 30, 60, 90], [120, 150, 180, 210]], np.uint8)
# (resize, out_shape, reference_compat) -> (expected grey values before the means [h, w];
# None where a pixel is padding (0 after the means: the mean colour), bbox_img).
# - WARP_RESIZE to 2 x 3, reference_compat (TF1 bilinear, no half-pixel centres): source
#   x = out_x * 4/3: 0, 1.333, 2.667 -> 0; 30*2/3 + 60/3 = 40; 60/3 + 90*2/3 = 80 (row 1:
#   120, 150*2/3 + 180/3 = 160, 180/3 + 210*2/3 = 200); rows map 1:1 (scale 2/2).
# - WARP_RESIZE to 2 x 3, default (half-pixel centres): x = (out_x + .5) * 4/3 - .5 = .1667,
#   1.5, 2.8333 -> 0 + 30*.1667 = 5; (30 + 60)/2 = 45; 60 + 30*.8333 = 85 (row 1: 125, 165,
#   205).
# - PAD_AND_RESIZE to 2 x 2: factor min(1, 2/2, 2/4) = .5 -> 1 x 2, then padded to 2 x 2 at
#   offset (2 - 1) // 2 = 0 (the last row is padding); bbox_img [0, 0, .5, 1].
#   reference_compat: source (y, x) = (2 out_y, 2 out_x): in[0, 0] = 0, in[0, 2] = 60.
#   default: y = (0 + .5) * 2 - .5 = .5 (mean of the rows), x = .5, 2.5: (0 + 30 + 120 +
#   150)/4 = 75, (60 + 90 + 180 + 210)/4 = 135.
# - CENTRAL_CROP to 4 x 2 (the same in both orders, pixels only move): crop x offset
#   (4 - 2) // 2 = 1 -> columns 1, 2; pad y offset (4 - 2) // 2 = 1 -> rows 1, 2 of 4.
#   bbox_img: y (0 * 2 + 1) / 4 = .25, (1 * 2 + 1) / 4 = .75; x (0 * 4 - 1) / 2 = -.5,
#   (1 * 4 - 1) / 2 = 1.5 (not clipped).
TINY_EVAL_GOLDENS = {
    ('WARP_RESIZE', (2, 3), True): ([[0, 40, 80], [120, 160, 200]], [0, 0, 1, 1]),
    ('WARP_RESIZE', (2, 3), False): ([[5, 45, 85], [125, 165, 205]], [0, 0, 1, 1]),
    ('PAD_AND_RESIZE', (2, 2), True): ([[0, 60], [None, None]], [0, 0, .5, 1]),
    ('PAD_AND_RESIZE', (2, 2), False): ([[75, 135], [None, None]], [0, 0, .5, 1]),
    ('CENTRAL_CROP', (4, 2), True): ([[None, None], [30, 60], [150, 180], [None, None]],
                                     [.25, -.5, .75, 1.5]),
    ('CENTRAL_CROP', (4, 2), False): ([[None, None], [30, 60], [150, 180], [None, None]],
                                      [.25, -.5, .75, 1.5]),
}


@pytest.mark.parametrize('resize,out_shape,reference_compat', sorted(TINY_EVAL_GOLDENS))
def test_eval_resize_hand_worked_2x4(resize, out_shape, reference_compat):
    grey, bbox_img = TINY_EVAL_GOLDENS[(resize, out_shape, reference_compat)]
    want = np.array([[[np.nan] * 3 if v is None else [v - m for m in MEANS] for v in row]
                     for row in grey], np.float32)
    want[np.isnan(want)] = 0.  # padding is 0 after the means: the mean colour
    image = np.repeat(TINY_GREY[..., None], 3, axis=-1)
    got = prep.preprocess_for_eval(image, None, None, out_shape, resize=resize,
                                   reference_compat=reference_compat)
    np.testing.assert_allclose(got.image.numpy(), want, rtol=0., atol=1e-4)
    np.testing.assert_allclose(got.bbox_img.numpy(), bbox_img, rtol=0., atol=1e-6)


@pytest.mark.slow
def test_eval_float_memory_is_bounded_by_the_output_size():
    # Resize first, straight from uint8: no float tensor in the graph is larger than the
    # network input, whatever the picture's size (a 16000 x 16000 photo would otherwise need
    # 3 GB of float32 for the mean subtraction alone).
    out_h, out_w = 300, 300
    for resize in ('WARP_RESIZE', 'CENTRAL_CROP'):
        fn = tf.function(lambda im, resize=resize: prep.preprocess_for_eval(
            im, None, None, (out_h, out_w), resize=resize).image,
            input_signature=[tf.TensorSpec([2000, 3000, 3], tf.uint8)])
        graph = fn.get_concrete_function().graph
        sizes = [t.shape.num_elements() for op in graph.get_operations() for t in op.outputs
                 if t.dtype.is_floating and t.shape.is_fully_defined()]
        assert sizes and max(sizes) <= out_h * out_w * 3, (resize, max(sizes))


def test_unwhiten_round_trip():
    image = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    whitened = prep.tf_image_whitened(image)
    np.testing.assert_array_equal(prep.np_image_unwhitened(whitened.numpy()), image)
    np.testing.assert_array_equal(prep.tf_image_unwhitened(whitened).numpy(), image)


def test_eval_input_already_at_output_size_is_only_whitened():
    # TFLite feeds images already at the network size; TFLite has no uint8 -> float resize,
    # so the graph must not contain one (and a same-size half-pixel resize is the identity).
    image = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = prep.preprocess_for_eval(image, None, None, (40, 50)).image
    np.testing.assert_array_equal(out.numpy(), image.astype(np.float32) - MEANS)
    fn = tf.function(lambda im: prep.preprocess_for_eval(im, None, None, (40, 50)).image,
                     input_signature=[tf.TensorSpec([40, 50, 3], tf.uint8)])
    ops = {op.type for op in fn.get_concrete_function().graph.get_operations()}
    assert 'ResizeBilinear' not in ops


# ------------------------------------------------- graph code as written (no AutoGraph)
def _in_graph(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` inside a `tf.function` with AutoGraph on: an unmarked `fn` is
    converted (its Python control flow rewritten), a `do_not_convert` one runs as written."""
    @tf.function(autograph=True)
    def f():
        return fn(*args, **kwargs)
    return [t.numpy() for t in tf.nest.flatten(f())]


@pytest.mark.parametrize('kwargs', [
    dict(), dict(patch_overlap='coverage'), dict(expand_max_ratio=2.),
    dict(reference_compat=True)], ids=['paper', 'coverage', 'expand', 'reference_compat'])
def test_the_training_chain_runs_unconverted_and_equals_its_autograph_conversion(kwargs):
    """The tf.data map converts with AutoGraph whatever it calls; preprocess_for_train is
    marked to run as written (its graph code has no Python control flow on tensors), which
    saves seconds of conversion per dataset. Converted or not, the same outputs."""
    fn = prep.preprocess_for_train
    assert fn.__wrapped__ is not fn  # marked: the original is the wrapped function
    image, labels, boxes, difficult = scene()
    args = (tf.constant(image), tf.constant(labels), tf.constant(boxes))
    kw = dict(out_shape=(64, 64), seed=tf.constant([3, 5], tf.int64),
              difficults=tf.constant(difficult), **kwargs)
    as_written = _in_graph(fn, *args, **kw)
    converted = _in_graph(fn.__wrapped__, *args, **kw)
    assert len(as_written) == len(converted)
    for a, b in zip(as_written, converted):
        np.testing.assert_array_equal(a, b)


def test_eval_preprocessing_and_encoding_run_unconverted_and_equal_their_conversion():
    from nets import nets_factory
    from ssd_tf import encoding
    image, labels, boxes, _ = scene()
    for compat in (False, True):
        args = (tf.constant(image), tf.constant(labels), tf.constant(boxes))
        kw = dict(out_shape=(64, 64), reference_compat=compat)
        for a, b in zip(_in_graph(prep.preprocess_for_eval, *args, **kw),
                        _in_graph(prep.preprocess_for_eval.__wrapped__, *args, **kw)):
            np.testing.assert_array_equal(a, b)
    cls = nets_factory.get_network('ssd_small')
    anchors = cls(cls.default_params._replace(num_classes=4)).anchors()
    args = (tf.constant(labels), tf.constant(boxes), anchors)
    for a, b in zip(_in_graph(encoding.bboxes_encode, *args, num_classes=4),
                    _in_graph(encoding.bboxes_encode.__wrapped__, *args, num_classes=4)):
        np.testing.assert_array_equal(a, b)
