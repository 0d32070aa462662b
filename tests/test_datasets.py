"""Readers (label map, VOC, COCO, TFRecord, converter, synthetic) and bad-data handling."""
import json
import os
import pathlib
import struct

import cv2
import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.cli import convert
from ssd_tf.datasets import coco, factory, labelmap, records, synthetic, tfrecord, voc

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


# ---------------------------------------------------------------------------- fixtures
def jpeg_bytes(h, w, channels=3, value=None, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, size=(h, w, channels), dtype=np.uint8) if value is None \
        else np.full((h, w, channels), value, np.uint8)
    ok, buf = cv2.imencode('.jpg', img if channels == 3 else img[..., 0])
    assert ok
    return buf.tobytes()


def png_bytes(h, w):
    ok, buf = cv2.imencode('.png', np.zeros((h, w, 3), np.uint8))
    assert ok
    return buf.tobytes()


def cmyk_jpeg_bytes(h=16, w=16):
    """A hand-made baseline CMYK JPEG (Adobe marker, 4 components), all samples 128.

    Quantisation all 1, one-symbol Huffman tables: DC category 0 -> code '0', AC EOB -> '0',
    so each 8x8 block of each component is the 2 bits '00'. cv2 cannot write CMYK files.
    """
    def seg(marker, payload):
        return b'\xff' + bytes([marker]) + struct.pack('>H', len(payload) + 2) + payload
    counts = bytes([1] + [0] * 15)
    out = b'\xff\xd8' + seg(0xEE, b'Adobe' + struct.pack('>HHHB', 100, 0, 0, 0))
    out += seg(0xDB, b'\x00' + b'\x01' * 64)
    out += seg(0xC0, b'\x08' + struct.pack('>HH', h, w) + b'\x04' +
               b''.join(bytes([i + 1, 0x11, 0]) for i in range(4)))
    out += seg(0xC4, b'\x00' + counts + b'\x00') + seg(0xC4, b'\x10' + counts + b'\x00')
    out += seg(0xDA, b'\x04' + b''.join(bytes([i + 1, 0]) for i in range(4)) + b'\x00\x3f\x00')
    out += b'\x00' * ((h // 8) * (w // 8) * 4 * 2 // 8)
    return out + b'\xff\xd9'


def voc_object(name, box, difficult='0', truncated='0', pose=True):
    """box: (xmin, ymin, xmax, ymax) or None for no <bndbox>."""
    parts = [f'<name>{name}</name>']
    if pose:
        parts.append('<pose>Unspecified</pose>')
    if truncated is not None:
        parts.append(f'<truncated>{truncated}</truncated>')
    if difficult is not None:
        parts.append(f'<difficult>{difficult}</difficult>')
    if box is not None:
        parts.append('<bndbox>' + ''.join(f'<{k}>{v}</{k}>' for k, v in
                                          zip(('xmin', 'ymin', 'xmax', 'ymax'), box)) +
                     '</bndbox>')
    return '<object>' + ''.join(parts) + '</object>'


def voc_xml(filename, objects, size=(100, 200)):
    size_el = '' if size is None else (f'<size><width>{size[1]}</width>'
                                       f'<height>{size[0]}</height><depth>3</depth></size>')
    return (f'<annotation><folder>VOC</folder><filename>{filename}</filename>{size_el}'
            + ''.join(objects) + '</annotation>')


def make_voc(root, items, split='train'):
    """items: list of (image_id, image bytes or None, xml text or None)."""
    for sub in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, data, xml in items:
        if data is not None:
            with open(os.path.join(root, 'JPEGImages', image_id + '.jpg'), 'wb') as f:
                f.write(data)
        if xml is not None:
            with open(os.path.join(root, 'Annotations', image_id + '.xml'), 'w') as f:
                f.write(xml)
    with open(os.path.join(root, 'ImageSets', 'Main', split + '.txt'), 'w') as f:
        f.write(''.join(i + '\n' for i, _, _ in items))
    return str(root)


LABELS = labelmap.LabelMap(['cat', 'dog'])


# ---------------------------------------------------------------------------- label map
def test_voc_label_map_is_the_originals_order():
    assert labelmap.VOC_LABEL_MAP.num_classes == 21
    assert labelmap.VOC_LABEL_MAP.id('aeroplane') == 1
    assert labelmap.VOC_LABEL_MAP.id('person') == 15
    assert labelmap.VOC_LABEL_MAP.id('tvmonitor') == 20
    assert list(labelmap.VOC_CLASSES) == sorted(labelmap.VOC_CLASSES)
    assert labelmap.VOC_LABEL_MAP.name(0) == 'none'


@pytest.mark.parametrize('fname', ['labels.txt', 'labels.json'])
def test_label_map_round_trip(tmp_path, fname):
    lm = labelmap.LabelMap(['b', 'a', 'c'])
    path = lm.write(tmp_path / fname)
    assert labelmap.LabelMap.read(path) == lm
    assert lm.id('b') == 1 and lm.name(3) == 'c'


def test_label_map_reads_slim_file_and_directory(tmp_path):
    (tmp_path / 'labels.txt').write_text('1:raccoon\n2:dog\n')  # slim's file has no 0 line
    lm = labelmap.LabelMap.read(tmp_path)
    assert lm.names == ('raccoon', 'dog')
    assert lm.to_dict() == {'none': 0, 'raccoon': 1, 'dog': 2}


def test_label_map_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match='duplicate'):
        labelmap.LabelMap(['a', 'a'])
    with pytest.raises(ValueError, match='reserved'):
        labelmap.LabelMap(['none', 'a'])
    (tmp_path / 'gap.txt').write_text('1:a\n3:b\n')  # gaps: ids kept, training labels 1, 2
    assert labelmap.LabelMap.read(tmp_path / 'gap.txt').dataset_ids == (1, 3)
    (tmp_path / 'neg.json').write_text('{"a": 1, "b": -2}')
    with pytest.raises(ValueError, match='must be >= 1'):
        labelmap.LabelMap.read(tmp_path / 'neg.json')
    with pytest.raises(KeyError, match='unknown class'):
        LABELS.id('horse')
    with pytest.raises(FileNotFoundError):
        labelmap.LabelMap.read(tmp_path / 'missing.txt')


# ---------------------------------------------------------------------------- VOC
def test_voc_reads_difficult_truncated_text_and_relative_boxes(tmp_path):
    xml = voc_xml('a.jpg', [voc_object('dog', (20, 10, 120, 60), difficult='1', truncated='0'),
                            voc_object('cat', (1, 1, 200, 100), difficult='0', truncated='1')])
    root = make_voc(tmp_path, [('a', jpeg_bytes(100, 200), xml)])
    recs, report = voc.read_voc(root, 'train', label_map=LABELS)
    assert report.num_skipped == 0 and len(recs) == 1
    r = recs[0]
    assert (r.height, r.width) == (100, 200)
    # relative = pixel / size (slim converter): ymin 10/100, xmin 20/200, ymax 60/100, xmax 120/200.
    np.testing.assert_allclose(r.boxes[0], [0.1, 0.1, 0.6, 0.6], rtol=1e-6)
    np.testing.assert_allclose(r.boxes[1], [0.01, 0.005, 1.0, 1.0], rtol=1e-6)
    assert r.boxes.dtype == np.float32 and r.boxes.shape == (2, 4)
    assert r.labels.tolist() == [2, 1] and r.label_text == ['dog', 'cat']
    assert r.difficult.tolist() == [1, 0]  # the original read 0 for both (falsy XML leaf)
    assert r.truncated.tolist() == [0, 1]
    assert r.image_path.endswith('a.jpg')


def test_voc_tolerates_missing_optional_fields(tmp_path):
    xml = voc_xml('a.jpg', [voc_object('cat', (0, 0, 50, 50), difficult=None, truncated=None,
                                       pose=False)], size=None)
    root = make_voc(tmp_path, [('a', jpeg_bytes(100, 200), xml)])
    recs, report = voc.read_voc(root, 'train', label_map=LABELS, strict=True)
    assert len(recs) == 1 and report.num_skipped == 0
    assert recs[0].difficult.tolist() == [0] and recs[0].truncated.tolist() == [0]
    assert (recs[0].height, recs[0].width) == (100, 200)  # from the image, no <size>


def test_voc_combines_roots_and_infers_label_map(tmp_path):
    a = make_voc(tmp_path / 'VOC2007', [('x', jpeg_bytes(40, 40),
                                         voc_xml('x.jpg', [voc_object('zebra', (1, 1, 9, 9))],
                                                 (40, 40)))])
    b = make_voc(tmp_path / 'VOC2012', [('x', jpeg_bytes(40, 40),
                                         voc_xml('x.jpg', [voc_object('ant', (1, 1, 9, 9))],
                                                 (40, 40)))])
    recs, _ = voc.read_voc([a, b], 'train')
    assert [r.image_id for r in recs] == ['VOC2007/x', 'VOC2012/x']
    assert [r.labels.tolist() for r in recs] == [[2], [1]]  # inferred sorted: ant=1, zebra=2


def test_voc_image_with_no_objects(tmp_path):
    root = make_voc(tmp_path, [('e', jpeg_bytes(30, 30), voc_xml('e.jpg', [], (30, 30)))])
    recs, _ = voc.read_voc(root, 'train', label_map=LABELS)
    assert recs[0].boxes.shape == (0, 4) and recs[0].labels.shape == (0,)


def test_voc_missing_split_names_available_ones(tmp_path):
    root = make_voc(tmp_path, [('e', jpeg_bytes(30, 30), voc_xml('e.jpg', [], (30, 30)))])
    with pytest.raises(FileNotFoundError, match=r"available splits: \['train'\]"):
        voc.read_voc(root, 'test', label_map=LABELS)


# ---------------------------------------------------------------------------- bad data
GOOD_OBJ = voc_object('cat', (10, 10, 50, 50))

# id -> (image bytes, xml, expected fragment of the skip reason)
BAD_RECORDS = {
    'corrupt': (b'\xff\xd8\xff\xe0' + b'\x00garbage' * 20 + b'\xff\xd9',
                voc_xml('corrupt.jpg', [GOOD_OBJ]), 'cannot decode'),
    'notimage': (b'hello world', voc_xml('notimage.jpg', [GOOD_OBJ]), 'not an image'),
    'truncated': (jpeg_bytes(100, 200)[:600], voc_xml('truncated.jpg', [GOOD_OBJ]),
                  'cannot decode'),
    'empty': (b'', voc_xml('empty.jpg', [GOOD_OBJ]), 'empty image'),
    'nobox': (jpeg_bytes(100, 200), voc_xml('nobox.jpg', [voc_object('cat', None)]),
              'no <bndbox>'),
    'nocoord': (jpeg_bytes(100, 200),
                voc_xml('nocoord.jpg', [voc_object('cat', (10, 10, 'abc', 50))]),
                'non-numeric <bndbox>'),
    'noname': (jpeg_bytes(100, 200), voc_xml('noname.jpg', [voc_object('', (1, 1, 5, 5))]),
               'no <name>'),
    'unknown': (jpeg_bytes(100, 200), voc_xml('unknown.jpg', [voc_object('horse', (1, 1, 5, 5))]),
                "unknown class name 'horse'"),
    'badxml': (jpeg_bytes(100, 200), '<annotation><object>', 'cannot parse'),
    'noimage': (None, voc_xml('noimage.jpg', [GOOD_OBJ]), 'no image file'),
    'noxml': (jpeg_bytes(100, 200), None, 'does not exist'),
}


@pytest.fixture
def bad_voc(tmp_path):
    items = [('good', jpeg_bytes(100, 200), voc_xml('good.jpg', [GOOD_OBJ]))]
    items += [(k, v[0], v[1]) for k, v in BAD_RECORDS.items()]
    return make_voc(tmp_path, items)


def test_bad_records_are_skipped_counted_and_named(bad_voc):
    recs, report = voc.read_voc(bad_voc, 'train', label_map=LABELS)
    assert [r.image_id for r in recs] == ['good']
    assert report.num_skipped == len(BAD_RECORDS)
    reasons = {os.path.splitext(os.path.basename(f))[0]: why for f, why in report.skipped}
    for image_id, (_, _, expected) in BAD_RECORDS.items():
        assert expected in reasons[image_id], (image_id, reasons[image_id])
    summary = report.summary()
    assert f'{len(BAD_RECORDS)} skipped' in summary and 'truncated.jpg' in summary


@pytest.mark.parametrize('image_id', sorted(BAD_RECORDS))
def test_strict_mode_raises_naming_the_file(tmp_path, image_id):
    data, xml, expected = BAD_RECORDS[image_id]
    root = make_voc(tmp_path, [(image_id, data, xml)])
    with pytest.raises(records.DataError, match=expected.replace('(', r'\(')) as e:
        voc.read_voc(root, 'train', label_map=LABELS, strict=True)
    assert image_id in str(e.value)


def test_boxes_outside_or_inverted_are_dropped_partial_ones_clipped(tmp_path):
    xml = voc_xml('a.jpg', [
        voc_object('cat', (10, 10, 50, 50)),       # good
        voc_object('dog', (150, 20, 260, 120)),    # partly outside (200x100): clipped
        voc_object('cat', (300, 10, 350, 50)),     # entirely outside: dropped
        voc_object('dog', (60, 10, 40, 50)),       # xmin > xmax: dropped
        voc_object('cat', (30, 30, 30, 60)),       # zero width: dropped
    ])
    root = make_voc(tmp_path, [('a', jpeg_bytes(100, 200), xml)])
    recs, report = voc.read_voc(root, 'train', label_map=LABELS)
    r = recs[0]
    assert r.labels.tolist() == [1, 2]
    np.testing.assert_allclose(r.boxes[1], [0.2, 0.75, 1.0, 1.0], rtol=1e-6)  # 20/100, 150/200
    assert len(report.dropped_boxes) == 3 and len(report.fixed) == 1
    assert all(f.endswith('a.xml') for f, _ in report.dropped_boxes)
    reasons = ' '.join(why for _, why in report.dropped_boxes)
    assert 'entirely outside' in reasons and 'degenerate' in reasons
    with pytest.raises(records.DataError, match='a.xml'):
        voc.read_voc(root, 'train', label_map=LABELS, strict=True)


@pytest.mark.parametrize('kind', ['png', 'grey', 'cmyk'])
def test_odd_but_valid_images_named_jpg_are_read(tmp_path, kind):
    data = {'png': png_bytes(100, 200), 'grey': jpeg_bytes(100, 200, channels=1),
            'cmyk': cmyk_jpeg_bytes(96, 200 - 200 % 8)}[kind]
    root = make_voc(tmp_path, [('a', data, voc_xml('a.jpg', [GOOD_OBJ], size=None))])
    recs, report = voc.read_voc(root, 'train', label_map=LABELS, strict=True)
    assert len(recs) == 1
    image = tf.io.decode_image(open(recs[0].image_path, 'rb').read(), channels=3,
                               expand_animations=False)
    assert image.shape == (recs[0].height, recs[0].width, 3)


def test_header_only_check_catches_truncated_jpeg(tmp_path):
    data = jpeg_bytes(100, 200)
    root = make_voc(tmp_path, [('cut', data[:600], voc_xml('cut.jpg', [GOOD_OBJ])),
                               ('padded', data + b'\x00' * 100, voc_xml('padded.jpg', [GOOD_OBJ]))])
    recs, report = voc.read_voc(root, 'train', label_map=LABELS, check_images=False)
    assert [r.image_id for r in recs] == ['padded']
    assert (recs[0].height, recs[0].width) == (100, 200)  # from <size>
    assert 'cut.jpg' in report.skipped[0][0] and 'truncated JPEG' in report.skipped[0][1]


def test_size_mismatch_uses_decoded_size(tmp_path):
    xml = voc_xml('a.jpg', [voc_object('cat', (10, 10, 50, 50))], size=(999, 999))
    root = make_voc(tmp_path, [('a', jpeg_bytes(100, 200), xml)])
    recs, report = voc.read_voc(root, 'train', label_map=LABELS)
    assert (recs[0].height, recs[0].width) == (100, 200)
    assert len(report.fixed) == 1 and '999' in report.fixed[0][1]


# ---------------------------------------------------------------------------- COCO
def test_coco_reader(tmp_path):
    (tmp_path / 'img').mkdir()
    (tmp_path / 'img' / '1.jpg').write_bytes(jpeg_bytes(100, 200))
    (tmp_path / 'img' / '2.jpg').write_bytes(jpeg_bytes(50, 50))
    (tmp_path / 'img' / '3.jpg').write_bytes(b'broken')
    ann = {
        'images': [{'id': 1, 'file_name': '1.jpg', 'height': 100, 'width': 200},
                   {'id': 2, 'file_name': '2.jpg', 'height': 50, 'width': 50},
                   {'id': 3, 'file_name': '3.jpg', 'height': 50, 'width': 50}],
        # Category ids with gaps, out of order: sorted ids 1, 3, 7 -> labels 1, 2, 3.
        'categories': [{'id': 7, 'name': 'kite'}, {'id': 1, 'name': 'person'},
                       {'id': 3, 'name': 'car'}],
        'annotations': [
            {'id': 10, 'image_id': 1, 'category_id': 7, 'bbox': [20, 10, 100, 50], 'iscrowd': 0},
            {'id': 11, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 200, 100], 'iscrowd': 1},
            {'id': 12, 'image_id': 3, 'category_id': 3, 'bbox': [0, 0, 5, 5], 'iscrowd': 0}],
    }
    path = tmp_path / 'instances_val.json'
    path.write_text(json.dumps(ann))
    recs, lm, report = coco.read_coco(str(path), str(tmp_path / 'img'))
    assert lm.names == ('person', 'car', 'kite') and lm.label_ids == [1, 3, 7]
    assert [r.image_id for r in recs] == ['1', '2']
    r = recs[0]
    # bbox [x=20, y=10, w=100, h=50] on 200x100 -> [10/100, 20/200, 60/100, 120/200].
    np.testing.assert_allclose(r.boxes[0], [0.1, 0.1, 0.6, 0.6], rtol=1e-6)
    assert r.labels.tolist() == [3, 1] and r.is_crowd.tolist() == [0, 1]
    assert r.label_text == ['kite', 'person']
    assert recs[1].boxes.shape == (0, 4)
    assert report.num_skipped == 1 and '3.jpg' in report.skipped[0][0]
    with pytest.raises(records.DataError, match='3.jpg'):
        coco.read_coco(str(path), str(tmp_path / 'img'), strict=True)


# ---------------------------------------------------------------------------- TFRecords
def slim_example(encoded, shape, boxes, labels, texts, difficult=None, truncated=None):
    """A tf.train.Example exactly as the slim pascalvoc_to_tfrecords `_convert_to_example`
    built it (boxes given as (ymin, xmin, ymax, xmax) relative)."""
    def i64(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    def flt(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    def byt(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))

    ymin, xmin, ymax, xmax = ([b[i] for b in boxes] for i in range(4))
    feature = {
        'image/height': i64([shape[0]]), 'image/width': i64([shape[1]]),
        'image/channels': i64([shape[2]]), 'image/shape': i64(list(shape)),
        'image/object/bbox/xmin': flt(xmin), 'image/object/bbox/xmax': flt(xmax),
        'image/object/bbox/ymin': flt(ymin), 'image/object/bbox/ymax': flt(ymax),
        'image/object/bbox/label': i64(labels), 'image/object/bbox/label_text': byt(texts),
        'image/format': byt([b'JPEG']), 'image/encoded': byt([encoded])}
    if difficult is not None:
        feature['image/object/bbox/difficult'] = i64(difficult)
    if truncated is not None:
        feature['image/object/bbox/truncated'] = i64(truncated)
    return tf.train.Example(features=tf.train.Features(feature=feature))


@pytest.mark.parametrize('with_flags', [True, False])
def test_parse_slim_converter_records(tmp_path, with_flags):
    enc = jpeg_bytes(30, 40)
    ex = slim_example(enc, (30, 40, 3), [(0.1, 0.2, 0.5, 0.6), (0., 0., 1., 1.)], [12, 15],
                      [b'dog', b'person'], difficult=[1, 0] if with_flags else None,
                      truncated=[0, 1] if with_flags else None)
    p = tfrecord.parse_example(ex.SerializeToString())
    np.testing.assert_allclose(p['bboxes'].numpy(), [[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]])
    assert p['labels'].numpy().tolist() == [12, 15]
    assert p['difficult'].numpy().tolist() == ([1, 0] if with_flags else [0, 0])
    assert p['truncated'].numpy().tolist() == ([0, 1] if with_flags else [0, 0])
    assert p['is_crowd'].numpy().tolist() == [0, 0]
    assert p['label_text'].numpy().tolist() == [b'dog', b'person']
    assert (int(p['height']), int(p['width'])) == (30, 40)
    assert p['encoded'].numpy() == enc and p['image_id'].numpy() == b''


def test_parse_record_without_objects():
    ex = slim_example(jpeg_bytes(8, 8), (8, 8, 3), [], [], [], difficult=[], truncated=[])
    p = tfrecord.parse_example(ex.SerializeToString())
    assert p['bboxes'].shape == (0, 4) and p['labels'].shape == (0,)


def test_tfrecord_writer_round_trip(tmp_path):
    recs = synthetic.make_synthetic_examples(7, seed=3, image_size=48)
    recs[0].difficult[:] = 1
    paths = tfrecord.write_tfrecords(recs, str(tmp_path), 'syn', 'train', num_shards=3)
    assert [os.path.basename(p) for p in paths] == [
        f'syn_train_0000{i}-of-00003.tfrecord' for i in range(3)]
    back = tfrecord.read_tfrecord_records(str(tmp_path / 'syn_train_*.tfrecord'))
    by_id = {r.image_id: r for r in back}
    assert sorted(by_id) == [r.image_id for r in recs]
    for r in recs:
        b = by_id[r.image_id]
        np.testing.assert_array_equal(b.boxes, r.boxes)
        np.testing.assert_array_equal(b.labels, r.labels)
        np.testing.assert_array_equal(b.difficult, r.difficult)
        assert b.label_text == r.label_text
        decoded = tf.io.decode_image(b.encoded, channels=3).numpy()
        np.testing.assert_array_equal(decoded, r.image)  # PNG: lossless


def test_a_failed_conversion_leaves_no_shard_under_a_final_name(tmp_path):
    recs = synthetic.make_synthetic_examples(5, seed=3, image_size=32)

    def dies_mid_shard():
        for i, r in enumerate(recs):
            if i == 3:  # shard 0 has records 0 and 2, shard 1 record 1: both half written
                raise KeyboardInterrupt('conversion killed')
            yield r

    old = tfrecord.write_tfrecords(recs[:1], str(tmp_path), 'syn', 'train', num_shards=2)
    before = [open(p, 'rb').read() for p in old]
    with pytest.raises(KeyboardInterrupt):
        tfrecord.write_tfrecords(dies_mid_shard(), str(tmp_path), 'syn', 'train', num_shards=2)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in old)
    assert [open(p, 'rb').read() for p in old] == before  # the complete old shards are kept
    with pytest.raises(KeyboardInterrupt):
        tfrecord.write_tfrecords(dies_mid_shard(), str(tmp_path / 'new'), 'syn', 'train', 2)
    assert os.listdir(tmp_path / 'new') == []
    paths = tfrecord.write_tfrecords(recs, str(tmp_path / 'new'), 'syn', 'train', 2)
    assert sorted(os.listdir(tmp_path / 'new')) == sorted(os.path.basename(p) for p in paths)
    assert len(tfrecord.read_tfrecord_records(str(tmp_path / 'new' / '*.tfrecord'))) == 5


def test_tfrecord_label_map_from_flag_then_beside_then_label_text(tmp_path):
    recs = synthetic.make_synthetic_examples(6, seed=2, image_size=32)
    shards = tfrecord.write_tfrecords(recs, str(tmp_path), 'syn', 'train', num_shards=2)
    pattern = str(tmp_path / 'syn_*.tfrecord')
    # No labels.txt: the names come from the records' label_text.
    assert factory.tfrecord_label_map(pattern) == synthetic.SYNTHETIC_LABEL_MAP
    other = labelmap.LabelMap(['a', 'b', 'c', 'd'])
    other.write(str(tmp_path))  # labels.txt beside the shards wins over the records
    assert factory.tfrecord_label_map([pattern]) == other
    flag = labelmap.LabelMap(['x', 'y', 'z', 'w']).write(str(tmp_path / 'flag.txt'))
    assert factory.tfrecord_label_map(pattern, flag).names == ('x', 'y', 'z', 'w')
    # Records without label_text and no file: no label map.
    bare = str(tmp_path / 'bare' / 'b.tfrecord')
    os.makedirs(os.path.dirname(bare))
    with tf.io.TFRecordWriter(bare) as w:
        ex = tfrecord.record_to_example(recs[0])
        del ex.features.feature['image/object/bbox/label_text']
        w.write(ex.SerializeToString())
    assert factory.tfrecord_label_map(bare) is None
    # Two names for one label (issue 20: label texts are a hint, not a gate): the name most
    # records give wins (two records against one), and record_texts carries it so that the
    # pipeline skips and counts the disagreeing record (tests/test_robust.py).
    clash = str(tmp_path / 'clash' / 'c.tfrecord')
    os.makedirs(os.path.dirname(clash))
    r0, r1, r2 = [r for r in recs if r.num_boxes][:3]
    r1.labels[:] = r0.labels[0]
    r1.label_text = ['other'] * len(r1.label_text)
    r2.labels[:] = r0.labels[0]
    r2.label_text = [r0.label_text[0]] * len(r2.label_text)
    with tf.io.TFRecordWriter(clash) as w:
        for r in (r0, r1, r2):
            w.write(tfrecord.record_to_example(r).SerializeToString())
    clashed = factory.tfrecord_label_map(clash)
    label = int(r0.labels[0])
    assert clashed.names[label - 1] == r0.label_text[0] != 'other'
    assert clashed.record_texts[label] == r0.label_text[0]  # [0]: the background, "none"
    # The shards written above: <name>_<split>_<shard>-of-<count>, 6 records round-robin.
    assert shards == [str(tmp_path / 'syn_train_00000-of-00002.tfrecord'),
                      str(tmp_path / 'syn_train_00001-of-00002.tfrecord')]
    assert [sum(1 for _ in tf.data.TFRecordDataset(p)) for p in shards] == [3, 3]


def test_convert_cli_voc_and_synthetic(tmp_path):
    root = synthetic.write_synthetic_voc(str(tmp_path / 'syn'), num_train=6, num_test=3,
                                         seed=1, image_size=48)
    out = tmp_path / 'out'
    assert convert.main(['--dataset_name', 'voc', '--dataset_dir', root, '--split', 'test',
                         '--output_dir', str(out), '--shards', '2', '--name', 'shapes']) == 0
    assert sorted(os.listdir(out)) == ['labels.txt', 'shapes_test_00000-of-00002.tfrecord',
                                       'shapes_test_00001-of-00002.tfrecord']
    assert labelmap.LabelMap.read(out) == synthetic.SYNTHETIC_LABEL_MAP
    back = tfrecord.read_tfrecord_records(str(out / '*.tfrecord'))
    assert sorted(r.image_id for r in back) == ['1000000', '1000001', '1000002']
    assert convert.main(['--dataset_name', 'synthetic', '--split', 'train', '--num_images', '4',
                         '--image_size', '32', '--output_dir', str(tmp_path / 's')]) == 0
    assert len(tfrecord.read_tfrecord_records(str(tmp_path / 's' / '*.tfrecord'))) == 4


def test_convert_voc_ids_flag(tmp_path):
    xml = voc_xml('a.jpg', [voc_object('person', (10, 10, 50, 50))])
    root = make_voc(tmp_path / 'voc', [('a', jpeg_bytes(100, 200), xml)])
    out = tmp_path / 'out'
    assert convert.main(['--dataset_name', 'voc', '--dataset_dir', root, '--voc_ids',
                         '--output_dir', str(out)]) == 0
    assert labelmap.LabelMap.read(out) == labelmap.VOC_LABEL_MAP
    assert tfrecord.read_tfrecord_records(str(out / '*.tfrecord'))[0].labels.tolist() == [15]


# ---------------------------------------------------------------------------- real data
@pytest.mark.parametrize('name,num_images,num_objects', [('raccoon', 40, 44), ('bccd', 72, 945)])
def test_real_voc_test_splits(name, num_images, num_objects):
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f'{root} not present')
    recs, report = voc.read_voc(str(root), 'test', strict=True)
    assert len(recs) == num_images
    assert sum(r.num_boxes for r in recs) == num_objects
    assert report.num_skipped == 0 and not report.dropped_boxes
    boxes = np.concatenate([r.boxes for r in recs])
    assert np.all(boxes >= 0) and np.all(boxes <= 1)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])


# ---------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_prefix_stable():
    a = synthetic.make_synthetic_examples(6, seed=5, image_size=64)
    b = synthetic.make_synthetic_examples(10, seed=5, image_size=64)
    c = synthetic.make_synthetic_examples(6, seed=6, image_size=64)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.labels, y.labels)
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_synthetic_boxes_match_drawn_pixels():
    size = 80
    n_objects = 0
    for i in range(40):
        image, boxes, labels, masks = synthetic.synthetic_image(0, i, size, with_masks=True)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
        assert set(labels.tolist()) <= {1, 2, 3, 4}
        for box, mask in zip(boxes, masks):
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            # Pixel-edge box: [row0 / S, col0 / S, (row1 + 1) / S, (col1 + 1) / S].
            expected = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]) / size
            np.testing.assert_allclose(box, expected, atol=1e-6)
            side = max(box[2] - box[0], box[3] - box[1])
            assert synthetic.MIN_SIZE - 2 / size <= side <= synthetic.MAX_SIZE + 1e-6
        # The last-drawn object is fully visible: its pixels differ from the background's
        # statistics (colour distance >= MIN_COLOUR_DISTANCE minus noise).
        if len(labels):
            m = masks[-1]
            inside = image[m].astype(float).mean(0)
            ring = cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~m
            for other in masks[:-1]:
                ring &= ~other
            if ring.sum() > 20:
                assert np.abs(inside - image[ring].astype(float).mean(0)).sum() > 40
        n_objects += len(labels)
    assert n_objects > 40


def test_synthetic_class_and_count_balance():
    recs = synthetic.make_synthetic_examples(200, seed=0, image_size=64)
    counts = np.bincount([r.num_boxes for r in recs], minlength=5)
    assert counts[0] > 0 and counts[4] > 0 and counts.sum() == 200
    per_class = np.bincount(np.concatenate([r.labels for r in recs]), minlength=5)[1:]
    assert per_class.min() > 0.6 * per_class.max()


def test_synthetic_voc_round_trip(tmp_path):
    root = synthetic.write_synthetic_voc(str(tmp_path), num_train=5, num_test=2, seed=2,
                                         image_size=64)
    mem = (synthetic.make_synthetic_split('train', 5, seed=2, image_size=64) +
           synthetic.make_synthetic_split('test', 2, seed=2, image_size=64))
    train, _ = voc.read_voc(root, 'train', label_map=synthetic.SYNTHETIC_LABEL_MAP, strict=True)
    test, _ = voc.read_voc(root, 'test', label_map=labelmap.LabelMap.read(root), strict=True)
    assert [r.image_id for r in train + test] == [r.image_id for r in mem]
    for r, m in zip(train + test, mem):
        np.testing.assert_array_equal(r.boxes, m.boxes)
        np.testing.assert_array_equal(r.labels, m.labels)
        img = cv2.cvtColor(cv2.imread(r.image_path), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(img, m.image)


def test_factory_loads_each_kind(tmp_path):
    recs, lm, summary = factory.load_records('synthetic', '', 'test', num_images=3,
                                             image_size=32)
    assert lm == synthetic.SYNTHETIC_LABEL_MAP and len(recs) == 3 and '3 records' in summary
    train, _, _ = factory.load_records('synthetic', '', 'train', num_images=3, image_size=32)
    assert not {r.image_id for r in recs} & {r.image_id for r in train}
    root = synthetic.write_synthetic_voc(str(tmp_path), 2, 1, image_size=32)
    vrecs, vlm, _ = factory.load_records('voc', root, 'test')
    assert vlm == lm and [r.image_id for r in vrecs] == [recs[0].image_id]
    np.testing.assert_array_equal(vrecs[0].boxes, recs[0].boxes)
    with pytest.raises(ValueError, match='dataset_name'):
        factory.load_records('imagenet', '', 'train')
    with pytest.raises(ValueError, match='synthetic splits'):
        factory.load_records('synthetic', '', 'val')


def test_check_command_on_reader_data_sets(bad_voc, tmp_path, capsys):
    from ssd_tf.cli import check_data as check
    args = ['--dataset_name', 'voc', '--dataset_dir', bad_voc, '--label_map']
    label_file = LABELS.write(str(tmp_path / 'labels.txt'))
    assert check.main(args + [label_file]) == 0
    assert f'{len(BAD_RECORDS)} skipped' in capsys.readouterr().out
    assert check.main(args + [label_file, '--strict_data']) == 1
    assert check.main(['--dataset_name', 'synthetic', '--num_images', '3',
                       '--strict_data']) == 0
