"""The small-object dev set (issue 23 item 1): exact box placement, split separation,
determinism, sizes, and that the project's VOC reader takes it."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ssd_tf.datasets import small_devset
from ssd_tf.datasets import voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_place_boxes_top_right_tile_of_a_2x2_mosaic():
    # Canvas 200 x 200, 2x2 cells of 100 px; the top-right cell starts at (y, x) = (0, 100).
    # A 50 x 100 photo kept at scale 1, centred vertically in its cell: offset (25, 100).
    # Box (0.2, 0.2, 0.6, 0.6) of the photo = pixels y 10..30, x 20..60
    #   -> canvas pixels y 25+10=35 .. 25+30=55, x 100+20=120 .. 100+60=160
    #   -> relative (35/200, 120/200, 55/200, 160/200) = (0.175, 0.6, 0.275, 0.8).
    got = small_devset.place_boxes([[0.2, 0.2, 0.6, 0.6]], (50, 100), (25, 100), (200, 200))
    np.testing.assert_allclose(got, [[0.175, 0.6, 0.275, 0.8]], atol=1e-12)
    # A 400 x 200 photo shrunk to 100 x 50 (scale 1/4) at the right edge of the same cell:
    # offset (0, 150). Box (0.5, 0.5, 1, 1) = resized pixels y 50..100, x 25..50
    #   -> canvas y 50..100, x 175..200 -> (0.25, 0.875, 0.5, 1.0).
    got = small_devset.place_boxes([[0.5, 0.5, 1., 1.]], (100, 50), (0, 150), (200, 200))
    np.testing.assert_allclose(got, [[0.25, 0.875, 0.5, 1.0]], atol=1e-12)


def test_photo_scale_hits_the_target_side_or_fits_the_cell():
    # 100 x 100 photo, objects' median side 0.5 (50 px). Target 5 % of a 400 px canvas = 20 px
    # -> scale 20 / 50 = 0.4 (40 px photo, under the 200 px cell).
    assert small_devset.photo_scale((100, 100), 0.5, 200, 400, 0.05) == pytest.approx(0.4)
    # Target 80 % = 320 px would need scale 6.4; the 200 px cell caps it at 200 / 100 = 2.
    assert small_devset.photo_scale((100, 100), 0.5, 200, 400, 0.8) == pytest.approx(2.0)


def test_size_distribution_uses_the_coverage_buckets():
    # sides sqrt(h w): 0.01 (<2%), 0.03 (2-4%), 0.05 (4-8%), 0.1 (8-16%)
    boxes = [[0, 0, .01, .01], [0, 0, .03, .03], [0, 0, .05, .05], [0, 0, .1, .1]]
    d = small_devset.size_distribution(boxes)
    assert d['boxes'] == 4
    assert d['by_size']['<2%'] == 1 and d['by_size']['2-4%'] == 1
    assert d['by_size']['4-8%'] == 1 and d['by_size']['8-16%'] == 1
    assert d['share_2_8'] == pytest.approx(0.5)


def _tiny_voc(root, colour_of_split):
    """A VOC root with 2 train and 2 test photos 120 x 160: a flat colour per split with one
    white 40 x 60 object at pixels y 30..70, x 50..110."""
    for sub in ('JPEGImages', 'Annotations', 'ImageSets/Main'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for split, colour in colour_of_split.items():
        ids = []
        for i in range(2):
            image_id = f'{split}{i}'
            img = np.zeros([120, 160, 3], np.uint8)
            img[:] = colour
            img[30:70, 50:110] = 255
            cv2.imwrite(os.path.join(root, 'JPEGImages', image_id + '.jpg'), img[:, :, ::-1])
            with open(os.path.join(root, 'Annotations', image_id + '.xml'), 'w') as f:
                f.write(f"<annotation><filename>{image_id}.jpg</filename><size><width>160"
                        f"</width><height>120</height><depth>3</depth></size><object><name>"
                        f"thing</name><difficult>0</difficult><bndbox><xmin>50</xmin><ymin>30"
                        f"</ymin><xmax>110</xmax><ymax>70</ymax></bndbox></object>"
                        f"</annotation>")
            ids.append(image_id)
        with open(os.path.join(root, 'ImageSets', 'Main', split + '.txt'), 'w') as f:
            f.write('\n'.join(ids) + '\n')


def test_devset_is_voc_exact_split_separated_and_deterministic(tmp_path):
    src = str(tmp_path / 'src')
    _tiny_voc(src, {'train': (200, 0, 0), 'test': (0, 0, 200)})
    kw = dict(num_images={'train': 3, 'test': 3}, seed=5, canvas=256)
    report = small_devset.make_devset([src], str(tmp_path / 'a'), **kw)
    small_devset.make_devset([src], str(tmp_path / 'b'), **kw)
    for split in ('train', 'test'):
        for i in range(3):
            for sub, ext in (('JPEGImages', '.jpg'), ('Annotations', '.xml')):
                name = os.path.join(sub, f'{split}_{i:05d}{ext}')
                assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
    for split, other in (('train', 2), ('test', 0)):  # colour channel of the other split
        records, rep = voc.read_voc(str(tmp_path / 'a'), split)
        assert len(records) == 3 and not rep.skipped
        for r in records:
            img = cv2.imread(r.image_path)[:, :, ::-1].astype(int)
            # no photo of the other split: its colour (200 in channel `other`) is absent
            assert not np.any((img[:, :, other] > 150) & (img.sum(-1) < 500))
            assert len(r.boxes) >= 4  # 2x2 or 3x3 cells, one object each
            for b in r.boxes:  # every box lies on the white object: exact placement
                y0, x0, y1, x1 = np.round(np.asarray(b) * 256).astype(int)
                inner = img[y0 + 1:y1 - 1, x0 + 1:x1 - 1]
                assert inner.size and inner.min() > 200, (b, inner.min())
                # and the pixels just outside are not white (the box is not too small)
                assert img[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2].min() < 200
    assert report['splits']['test']['images'] == 3
    assert (tmp_path / 'a' / 'labels.txt').read_text().strip().endswith('thing')


def test_real_devset_is_mostly_2_to_8_percent(shared_data, tmp_path):
    out = str(tmp_path / 'dev')
    report = small_devset.make_devset([str(shared_data / 'raccoon'), str(shared_data / 'bccd')],
                                      out, {'train': 6, 'test': 6}, seed=0)
    for split in ('train', 'test'):
        assert report['splits'][split]['share_2_8'] > 0.7
    assert report['splits']['test']['photos'] == 40 + 72  # the sources' test splits only
    assert report['splits']['train']['photos'] == 160 + 205


def test_program_rejects_a_source_that_is_not_voc(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'make_small_devset.py'),
                        '--out', str(tmp_path / 'o'), '--sources', str(tmp_path)],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2
    assert f'{tmp_path} is not a VOC root' in r.stderr
