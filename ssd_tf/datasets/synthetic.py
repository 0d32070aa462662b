"""A procedural, seeded detection data set that needs no download: coloured shapes on
textured backgrounds, with exact boxes.

Four classes (circle, cross, rectangle, triangle = 1..4), 0-4 objects per image, sizes 10%-60% of
the image side, random colours kept apart from the local background, gradient + stripes +
noise backgrounds, and at most moderate overlap (an earlier, partly hidden object keeps at
least 70% of its box visible; boxes are amodal). Each box is the exact pixel extent of its
drawn shape: `[row0 / H, col0 / W, (row1 + 1) / H, (col1 + 1) / W]` (pixel edges).

Two modes (`objects=`, the `--synthetic_objects` flag), the same four classes:
- 'shapes' (default, the main job's data): 160x160 images, 0-4 objects of 10%-60% of the side.
- 'small': 320x320 images, 5-15 objects of 3%-10% of the side (about 10-32 pixels at 320),
  to develop small-object detection on (see README "Small objects").

Image `i` of seed `s` depends only on `(s, i)` (and the mode), so
`make_synthetic_examples(10, s)` is a prefix of `make_synthetic_examples(100, s)`.
"""
import collections
import math
import os

import cv2
import numpy as np

from ssd_tf.datasets import labelmap as labelmap_lib
from ssd_tf.datasets import records as records_lib

# Alphabetical, like VOC, so that a label map inferred from the written XMLs agrees.
SYNTHETIC_CLASSES = ('circle', 'cross', 'rectangle', 'triangle')
SYNTHETIC_LABEL_MAP = labelmap_lib.LabelMap(SYNTHETIC_CLASSES)

DEFAULT_IMAGE_SIZE = 160
MIN_SIZE, MAX_SIZE = 0.10, 0.60          # object box side / image side
NUM_OBJECTS_P = (0.05, 0.30, 0.30, 0.20, 0.15)  # P(0..4 objects per image)
MAX_HIDDEN = 0.30                        # largest part of an earlier box a later one may cover
MIN_COLOUR_DISTANCE = 120.               # L1 RGB distance object colour vs local background
_PLACEMENT_TRIES = 40

# One mode of the data set: box side / image side in [min_size, max_size] (log-uniform), the
# number of objects per image (`num_objects(rng)`), the default image side, and whether the
# box side bounds are whole pixels (ceil/floor: boxes stay inside the stated range) or, as the
# original 'shapes' mode, fractional (kept so that its images never change).
SyntheticMode = collections.namedtuple(
    'SyntheticMode', ['name', 'min_size', 'max_size', 'num_objects', 'image_size',
                      'whole_pixel_bounds', 'seed_tag'])
SMALL_MIN_SIZE, SMALL_MAX_SIZE = 0.03, 0.10
SMALL_NUM_OBJECTS = (5, 15)              # uniform, inclusive
SMALL_IMAGE_SIZE = 320
MODES = {
    'shapes': SyntheticMode('shapes', MIN_SIZE, MAX_SIZE,
                            lambda rng: rng.choice(len(NUM_OBJECTS_P), p=NUM_OBJECTS_P),
                            DEFAULT_IMAGE_SIZE, False, ()),
    'small': SyntheticMode('small', SMALL_MIN_SIZE, SMALL_MAX_SIZE,
                           lambda rng: rng.integers(SMALL_NUM_OBJECTS[0],
                                                    SMALL_NUM_OBJECTS[1] + 1),
                           SMALL_IMAGE_SIZE, True, (1,)),
}
OBJECT_MODES = tuple(MODES)

# Image index of the first 'test' image: far above any train set, so the splits never share an
# image whatever their sizes (in memory or written as VOC).
TEST_FIRST_INDEX = 1_000_000


def _background(rng, size):
    """Gradient between two muted colours + faint stripes + noise: float32 `[S, S, 3]`."""
    c0, c1 = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = coords[:, None], coords[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    t = np.float32(np.cos(angle)) * xx + np.float32(np.sin(angle)) * yy  # [S, S]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    freq, phase, s_angle = rng.uniform(2, 8), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    stripes = np.sin(np.float32(2 * np.pi * freq) * (np.float32(np.cos(s_angle)) * xx +
                                                      np.float32(np.sin(s_angle)) * yy)
                     + np.float32(phase))
    amplitude, sigma = np.float32(rng.uniform(0, 15)), np.float32(rng.uniform(3, 10))
    img = c0 + (c1 - c0) * t[..., None] + amplitude * stripes[..., None]
    img += sigma * rng.standard_normal(size=(size, size, 3), dtype=np.float32)
    return img


def _shape_mask(rng, cls, y0, x0, h, w, size):
    """Mask `[S, S]` uint8 of a shape of class `cls` drawn inside the box at (y0, x0, h, w)."""
    mask = np.zeros([size, size], np.uint8)
    y1, x1 = y0 + h - 1, x0 + w - 1
    if cls == 'circle':
        r = min(h, w) // 2
        cv2.circle(mask, (x0 + r, y0 + r), r, 1, thickness=-1, lineType=cv2.LINE_8)
    elif cls == 'rectangle':
        mask[y0:y1 + 1, x0:x1 + 1] = 1
    elif cls == 'triangle':
        kind = rng.integers(4)  # apex up, down, left, right
        apex = rng.uniform(0.2, 0.8)
        if kind == 0:
            pts = [(x0 + apex * (w - 1), y0), (x0, y1), (x1, y1)]
        elif kind == 1:
            pts = [(x0 + apex * (w - 1), y1), (x0, y0), (x1, y0)]
        elif kind == 2:
            pts = [(x0, y0 + apex * (h - 1)), (x1, y0), (x1, y1)]
        else:
            pts = [(x1, y0 + apex * (h - 1)), (x0, y0), (x0, y1)]
        cv2.fillPoly(mask, [np.round(np.array(pts)).astype(np.int32)], 1, lineType=cv2.LINE_8)
    elif cls == 'cross':
        th = max(2, int(round(rng.uniform(0.25, 0.4) * min(h, w))))
        cy, cx = y0 + (h - th) // 2, x0 + (w - th) // 2
        mask[cy:cy + th, x0:x1 + 1] = 1
        mask[y0:y1 + 1, cx:cx + th] = 1
    else:
        raise ValueError(f"unknown synthetic class {cls!r}")
    return mask


def _mask_box(mask):
    """Pixel-edge extent of a mask: `(row0, col0, row1 + 1, col1 + 1)`."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return rows[0], cols[0], rows[-1] + 1, cols[-1] + 1


def _colour(rng, bg_mean):
    for _ in range(50):
        c = rng.uniform(0, 255, size=3)
        c[rng.integers(3)] = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])
        if np.abs(c - bg_mean).sum() >= MIN_COLOUR_DISTANCE:
            return c
    return np.where(bg_mean > 127, 0., 255.)


def _hidden_fraction(box, other):
    """Fraction of `box`'s area covered by `other` (pixel yxyx)."""
    ih = min(box[2], other[2]) - max(box[0], other[0])
    iw = min(box[3], other[3]) - max(box[1], other[1])
    if ih <= 0 or iw <= 0:
        return 0.
    return ih * iw / float((box[2] - box[0]) * (box[3] - box[1]))


def get_mode(objects):
    """The `SyntheticMode` named `objects` ('shapes' or 'small'); ValueError naming the flag."""
    if objects not in MODES:
        raise ValueError(f"--synthetic_objects={objects!r} is unknown; choose one of "
                         f"{', '.join(OBJECT_MODES)}")
    return MODES[objects]


def _image_size(image_size, mode):
    size = mode.image_size if image_size is None else int(image_size)
    if size < 16:
        raise ValueError(f"synthetic image_size={image_size} is too small (at least 16)")
    return size


def _side_bounds(mode, size):
    """Box side bounds in pixels `(lo, hi)` of `mode` at image side `size`."""
    lo, hi = mode.min_size * size, mode.max_size * size
    if mode.whole_pixel_bounds:
        lo, hi = math.ceil(lo - 1e-9), max(math.floor(hi + 1e-9), math.ceil(lo - 1e-9))
    return lo, hi


def synthetic_image(seed, index, image_size=None, with_masks=False, objects='shapes'):
    """Image `index` of `seed` in mode `objects`: `(image uint8 [S, S, 3] RGB, boxes [N, 4]
    relative yxyx, labels [N] (1..4), masks [N, S, S] bool or None)`; S = image_size, by
    default the mode's (160 shapes, 320 small)."""
    mode = get_mode(objects)
    rng = np.random.default_rng([int(seed), int(index), *mode.seed_tag])
    size = _image_size(image_size, mode)
    lo, hi = _side_bounds(mode, size)
    img = _background(rng, size)
    n = mode.num_objects(rng)
    boxes, labels, masks = [], [], []
    for _ in range(n):
        label = int(rng.integers(len(SYNTHETIC_CLASSES))) + 1
        cls = SYNTHETIC_CLASSES[label - 1]
        for _ in range(_PLACEMENT_TRIES):
            side = np.exp(rng.uniform(np.log(mode.min_size), np.log(mode.max_size))) * size
            aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.667)))  # w / h
            h = int(np.clip(round(side / np.sqrt(aspect)), lo, hi))
            w = int(np.clip(round(side * np.sqrt(aspect)), lo, hi))
            if cls == 'circle':
                d = min(h, w)
                if mode.whole_pixel_bounds:  # an odd diameter inside [lo, hi]
                    h = w = d if d % 2 else (d - 1 if d - 1 >= lo else d + 1)
                else:
                    h = w = min(h, w) // 2 * 2 + 1
            y0 = int(rng.integers(0, size - h + 1))
            x0 = int(rng.integers(0, size - w + 1))
            mask = _shape_mask(rng, cls, y0, x0, h, w, size)
            box = _mask_box(mask)
            if all(_hidden_fraction(b, box) <= MAX_HIDDEN for b in boxes):
                break
        else:
            continue  # no room left: fewer objects
        m = mask.astype(bool)
        colour = _colour(rng, img[m].mean(axis=0))
        img[m] = colour + 6 * rng.standard_normal(size=(int(m.sum()), 3), dtype=np.float32)
        boxes.append(box)
        labels.append(label)
        masks.append(m)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    # float64 then float32, exactly as the readers' pixel / size, so a VOC round trip is exact.
    rel = (np.array(boxes, np.float64).reshape(-1, 4) / size).astype(np.float32)
    masks = np.array(masks, bool).reshape(-1, size, size) if with_masks else None
    return image, rel, np.array(labels, np.int64), masks


def make_synthetic_examples(num, seed=0, image_size=None, first_index=0, objects='shapes'):
    """`num` in-memory records (images `first_index` .. of `seed`, mode `objects`), image in
    `Record.image` (uint8 `[S, S, 3]` RGB, S = image_size or the mode's), boxes `[N, 4]`
    relative yxyx, labels 1..4 (SYNTHETIC_LABEL_MAP)."""
    size = _image_size(image_size, get_mode(objects))
    out = []
    for i in range(first_index, first_index + int(num)):
        image, boxes, labels, _ = synthetic_image(seed, i, size, objects=objects)
        out.append(records_lib.make_record(
            f'{i:06d}', size, size, boxes, labels,
            [SYNTHETIC_LABEL_MAP.name(l) for l in labels], image=image))
    return out


def make_synthetic_split(split, num, seed=0, image_size=None, objects='shapes'):
    """Records of split 'train' (= 'trainval', indices 0..num-1) or 'test' (indices
    TEST_FIRST_INDEX..) of mode `objects`, the same images `write_synthetic_voc` writes."""
    first = {'train': 0, 'trainval': 0, 'test': TEST_FIRST_INDEX}.get(split)
    if first is None:
        raise ValueError(f"synthetic splits are train, trainval and test, got {split!r}")
    return make_synthetic_examples(num, seed, image_size, first_index=first, objects=objects)


def _voc_xml(record, filename):
    objs = []
    for box, text in zip(record.boxes, record.label_text):
        # Exact integers: boxes are pixel edges / size and the VOC reader divides by the size.
        ymin, xmin, ymax, xmax = (int(round(v)) for v in
                                  box * np.array([record.height, record.width] * 2))
        objs.append(
            f"  <object>\n    <name>{text}</name>\n    <pose>Unspecified</pose>\n"
            f"    <truncated>0</truncated>\n    <difficult>0</difficult>\n    <bndbox>\n"
            f"      <xmin>{xmin}</xmin>\n      <ymin>{ymin}</ymin>\n"
            f"      <xmax>{xmax}</xmax>\n      <ymax>{ymax}</ymax>\n    </bndbox>\n"
            f"  </object>\n")
    return (f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{filename}</filename>\n"
            f"  <size>\n    <width>{record.width}</width>\n    <height>{record.height}</height>\n"
            f"    <depth>3</depth>\n  </size>\n  <segmented>0</segmented>\n"
            + ''.join(objs) + "</annotation>\n")


def write_synthetic_voc(out_dir, num_train, num_test, seed=0, image_size=None,
                        objects='shapes'):
    """Writes the data set (mode `objects`) as a VOC directory readable by `voc.read_voc`.

    Images are lossless PNG files (`JPEGImages/<id>.png`, named in the XML `<filename>`) so the
    boxes stay exact; splits `train` (ids 000000..), `trainval` (= train) and `test` (ids from
    TEST_FIRST_INDEX, as `make_synthetic_split`); `labels.txt` beside. Returns `out_dir`.
    """
    for sub in ('Annotations', 'JPEGImages', os.path.join('ImageSets', 'Main')):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    splits = {'train': make_synthetic_split('train', num_train, seed, image_size, objects),
              'test': make_synthetic_split('test', num_test, seed, image_size, objects)}
    for split, recs in splits.items():
        for r in recs:
            filename = r.image_id + '.png'
            ok, buf = cv2.imencode('.png', cv2.cvtColor(r.image, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError(f"cv2 could not encode synthetic image {r.image_id}")
            buf.tofile(os.path.join(out_dir, 'JPEGImages', filename))
            with open(os.path.join(out_dir, 'Annotations', r.image_id + '.xml'), 'w') as f:
                f.write(_voc_xml(r, filename))
        ids = ''.join(r.image_id + '\n' for r in recs)
        with open(os.path.join(out_dir, 'ImageSets', 'Main', f'{split}.txt'), 'w') as f:
            f.write(ids)
        if split == 'train':
            with open(os.path.join(out_dir, 'ImageSets', 'Main', 'trainval.txt'), 'w') as f:
                f.write(ids)
    SYNTHETIC_LABEL_MAP.write(out_dir)
    return out_dir
