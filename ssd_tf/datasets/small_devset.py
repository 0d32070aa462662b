"""A real small-object dev set made from VOC photographs: mosaics of thumbnails.

Each output image is a square canvas of `canvas` pixels cut into a k x k grid (k drawn from
`grids`, default 2 and 3). Each cell holds one photograph of the split (drawn from all
sources), scaled with its aspect ratio kept so that the median side of its objects becomes a
target size t of the canvas side, t drawn log-uniformly in `target` (default 2.5-7 %), but never
larger than the cell; it is placed at a random position inside its cell, and the rest of the
canvas is flat grey (`FILL`). So the objects are real (real textures and clutter around them
inside each photo), most of them 2-8 % of the image side; a photo's objects keep their relative
sizes (a blood smear's platelets end up under 2 %, its white cells near 8-16 %).

Test images are made only from the sources' `test` split and training images only from their
`train` split (each source's `ImageSets/Main/<split>.txt`), so no photo is in both.

Box maths (exact, `place_boxes`): a photo `H x W` resized to `h x w` pixels and pasted with its
top-left corner at `(oy, ox)` on a canvas `CH x CW` maps a relative box `(y0, x0, y1, x1)` to
`((oy + y0 h) / CH, (ox + x0 w) / CW, (oy + y1 h) / CH, (ox + x1 w) / CW)`: the per-axis scale
is `h / H` and `w / W` of the rounded pixel size, so the box follows the pixels exactly.

Output: a Pascal VOC root (`JPEGImages/<split>_<i>.jpg`, `Annotations/<split>_<i>.xml`,
`ImageSets/Main/{train,test}.txt`, `labels.txt`) that every reader and command of the project
takes (`--dataset_name=voc --dataset_dir=OUT`), and `devset.json` with the object-size
distribution (the coverage report's buckets, `ssd_tf.boxes.SIZE_NAMES`). The same
sources, seed and settings give byte-identical files.
"""
import json
import os
import xml.etree.ElementTree as ET

import numpy as np

from ssd_tf import boxes as boxes_lib
from ssd_tf.datasets import labelmap as labelmap_lib
from ssd_tf.datasets import voc

FILL = 114  # grey of the canvas outside the photos
SPLITS = ('train', 'test')


def place_boxes(boxes, resized_hw, offset_yx, canvas_hw):
    """Relative boxes `[N, 4]` yxyx of a photo resized to `resized_hw = (h, w)` pixels and
    pasted with its top-left corner at `offset_yx = (oy, ox)` on a canvas `canvas_hw = (CH, CW)`
    -> relative boxes `[N, 4]` of the canvas (float64; see the module docstring)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    h, w = (float(v) for v in resized_hw)
    oy, ox = (float(v) for v in offset_yx)
    ch, cw = (float(v) for v in canvas_hw)
    scale = np.array([h / ch, w / cw, h / ch, w / cw])
    shift = np.array([oy / ch, ox / cw, oy / ch, ox / cw])
    return b * scale + shift


def box_sides(boxes):
    """sqrt(h * w) of relative boxes `[N, 4]` (the coverage report's size measure)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))


def photo_scale(photo_hw, median_side, cell, canvas, target_side):
    """The resize factor of a photo `photo_hw = (H, W)` pixels whose objects' median side is
    `median_side` (relative to the photo, as `box_sides`): its objects become `target_side` of
    the `canvas` side, capped so that the photo fits a `cell`-pixel cell."""
    height, width = photo_hw
    fit = cell / max(height, width)
    want = target_side * canvas / (median_side * np.sqrt(height * width))
    return min(fit, want)


def _paste(canvas_img, photo, scale, cell_yx, cell, rng):
    """Resizes `photo` by `scale` and pastes it at a random place of its cell; returns the
    resized `(h, w)` and the offset `(oy, ox)`."""
    import cv2
    height, width = photo.shape[:2]
    h, w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    small = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
    oy = cell_yx[0] + int(rng.integers(0, cell - h + 1))
    ox = cell_yx[1] + int(rng.integers(0, cell - w + 1))
    canvas_img[oy:oy + h, ox:ox + w] = small
    return (h, w), (oy, ox)


def _read_rgb(path):
    import cv2
    data = np.fromfile(path, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot decode the image")
    return bgr[:, :, ::-1]


def make_image(photos, rng, canvas=512, grids=(2, 3), target=(0.025, 0.07), min_pixels=2):
    """One mosaic: `photos` a list of `(rgb uint8 [H, W, 3], Record)` to draw from. Returns
    `(image uint8 [canvas, canvas, 3], boxes [N, 4] relative, names [N])`; boxes whose pixel
    side (sqrt of the area) is under `min_pixels` are left out."""
    k = int(rng.choice(grids))
    cell = canvas // k
    img = np.full([canvas, canvas, 3], FILL, np.uint8)
    boxes, names = [], []
    for r in range(k):
        for c in range(k):
            rgb, rec = photos[int(rng.integers(len(photos)))]
            rec_boxes = np.asarray(rec.boxes, np.float64).reshape(-1, 4)
            median = float(np.median(box_sides(rec_boxes))) if len(rec_boxes) else 0.5
            t = float(np.exp(rng.uniform(np.log(target[0]), np.log(target[1]))))
            scale = photo_scale(rgb.shape[:2], median, cell, canvas, t)
            hw, off = _paste(img, rgb, scale, (r * cell, c * cell), cell, rng)
            placed = place_boxes(rec_boxes, hw, off, (canvas, canvas))
            keep = box_sides(placed) * canvas >= min_pixels
            boxes.append(placed[keep])
            names += [n for n, ok in zip(rec.label_text, keep) if ok]
    return img, np.concatenate(boxes) if boxes else np.zeros([0, 4]), names


def _annotation_xml(image_id, size, boxes, names):
    root = ET.Element('annotation')
    ET.SubElement(root, 'folder').text = 'JPEGImages'
    ET.SubElement(root, 'filename').text = f'{image_id}.jpg'
    s = ET.SubElement(root, 'size')
    for tag, v in (('width', size), ('height', size), ('depth', 3)):
        ET.SubElement(s, tag).text = str(v)
    for b, name in zip(boxes, names):
        o = ET.SubElement(root, 'object')
        ET.SubElement(o, 'name').text = name
        ET.SubElement(o, 'difficult').text = '0'
        ET.SubElement(o, 'truncated').text = '0'
        bb = ET.SubElement(o, 'bndbox')
        # VOC pixels; rounding to 0.01 px keeps the box exact to 1/100 of a pixel
        px = np.round(np.asarray(b) * size, 2)
        for tag, v in zip(('ymin', 'xmin', 'ymax', 'xmax'), px):
            ET.SubElement(bb, tag).text = f'{v:g}'
    return ET.tostring(root, encoding='unicode')


def size_distribution(boxes):
    """Share of `boxes` `[N, 4]` in each size bucket of the coverage report
    (`boxes_lib.SIZE_NAMES`) and the share within 2-8 % of the side."""
    sides = box_sides(boxes)
    idx = boxes_lib.size_bucket(boxes)
    n = max(len(sides), 1)
    counts = {name: int((idx == i).sum()) for i, name in enumerate(boxes_lib.SIZE_NAMES)}
    return {'boxes': int(len(sides)), 'by_size': counts,
            'share_2_8': float(((sides >= 0.02) & (sides < 0.08)).sum() / n),
            'median_side': float(np.median(sides)) if len(sides) else None}


def load_photos(source_dirs, split):
    """`(rgb, Record)` of every annotated image of `split` of the VOC roots `source_dirs`."""
    photos = []
    for d in source_dirs:
        records, _ = voc.read_voc(d, split, check_images=False)
        photos += [(_read_rgb(r.image_path), r) for r in records if len(r.boxes)]
    if not photos:
        raise ValueError(f"no annotated image in split {split!r} of {list(source_dirs)}")
    return photos


def make_devset(source_dirs, out_dir, num_images=None, seed=0, canvas=512, grids=(2, 3),
                target=(0.025, 0.07)):
    """Writes the dev set (see the module docstring) into `out_dir`; `num_images` maps a split
    to its image count (default train 400, test 100). Returns the report dict (also written as
    `devset.json`)."""
    import cv2
    num_images = dict({'train': 400, 'test': 100}, **(num_images or {}))
    for sub in ('JPEGImages', 'Annotations', os.path.join('ImageSets', 'Main')):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    report = {'sources': [os.path.abspath(d) for d in source_dirs], 'seed': seed,
              'canvas': canvas, 'grids': list(grids), 'target': list(target), 'splits': {}}
    names_seen = set()
    for split_index, split in enumerate(SPLITS):
        photos = load_photos(source_dirs, split)
        rng = np.random.default_rng([seed, split_index])
        ids, all_boxes = [], []
        for i in range(num_images[split]):
            img, boxes, names = make_image(photos, rng, canvas, grids, target)
            image_id = f'{split}_{i:05d}'
            ok, jpg = cv2.imencode('.jpg', img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise ValueError(f"cannot encode {image_id}")
            jpg.tofile(os.path.join(out_dir, 'JPEGImages', image_id + '.jpg'))
            with open(os.path.join(out_dir, 'Annotations', image_id + '.xml'), 'w') as f:
                f.write(_annotation_xml(image_id, canvas, boxes, names))
            ids.append(image_id)
            all_boxes.append(boxes)
            names_seen.update(names)
        with open(os.path.join(out_dir, 'ImageSets', 'Main', split + '.txt'), 'w') as f:
            f.write('\n'.join(ids) + '\n')
        dist = size_distribution(np.concatenate(all_boxes))
        report['splits'][split] = dict(dist, images=len(ids), photos=len(photos))
    labelmap_lib.LabelMap(sorted(names_seen)).write(out_dir)
    with open(os.path.join(out_dir, 'devset.json'), 'w') as f:
        json.dump(report, f, indent=2)
    return report


def format_report(report):
    """The size distribution of `make_devset`'s report as a table."""
    names = boxes_lib.SIZE_NAMES
    lines = [f"{'split':<6} {'images':>6} {'boxes':>6} {'2-8 %':>6}  " +
             ' '.join(f'{n:>7}' for n in names)]
    for split, d in report['splits'].items():
        lines.append(f"{split:<6} {d['images']:>6} {d['boxes']:>6} "
                     f"{100 * d['share_2_8']:>5.1f}%  " +
                     ' '.join(f"{d['by_size'][n]:>7}" for n in names))
    return '\n'.join(lines)
