"""The tf.data builder: output structure, zero-object images, eval GT, determinism, sources,
bad TFRecord records (skipped, counted, named; strict stop; exact resume) and the check command."""
import functools
import os

import cv2
import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf

from ssd_tf import anchors as anchors_lib
from ssd_tf import data
from ssd_tf import encoding
from ssd_tf.cli import check_data as check_cli
from ssd_tf.datasets import check as check_lib
from ssd_tf.datasets import records, synthetic, tfrecord

OUT = 32
MEANS = (123., 117., 104.)
# Two tiny layers on a 32x32 input: 4x4 with 2 anchors (s0, sqrt(s0*s1)), 2x2 with 3 (+ ratio 2).
ANCHORS = anchors_lib.ssd_anchors_all_layers(
    (OUT, OUT), [(4, 4), (2, 2)], [(8., 16.), (16., 32.)], [[], [2.]], [8, 16])
NUM_CLASSES = 5


def resize_preprocess(image, labels, bboxes):
    """The trivial preprocess of these tests: warp to 32x32 and subtract the means."""
    image = tf.image.resize(tf.cast(image, tf.float32), [OUT, OUT]) - MEANS
    return image, labels, bboxes


def flip_preprocess(image, labels, bboxes, seed):
    """resize_preprocess + a stateless random horizontal flip (boxes flipped too)."""
    image, labels, bboxes = resize_preprocess(image, labels, bboxes)
    flip = tf.random.stateless_uniform([], seed) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    flipped = tf.stack([bboxes[:, 0], 1. - bboxes[:, 3], bboxes[:, 2], 1. - bboxes[:, 1]], 1)
    return image, labels, tf.cond(flip, lambda: flipped, lambda: bboxes)


def encode(labels, bboxes):
    return encoding.bboxes_encode(labels, bboxes, ANCHORS, NUM_CLASSES)


def empty_record(image_id, size=40):
    return records.make_record(image_id, size, size, np.zeros([0, 4]), [], [],
                               image=np.full([size, size, 3], 90, np.uint8))


def synthetic_records(n, seed=0):
    return synthetic.make_synthetic_examples(n, seed=seed, image_size=40)


def write_jpeg(path, h, w, channels=3):
    img = np.random.default_rng(0).integers(0, 255, size=(h, w, channels), dtype=np.uint8)
    cv2.imwrite(str(path), img if channels == 3 else img[..., 0])
    return str(path)


@pytest.mark.slow
def test_training_structure_with_zero_object_images():
    recs = synthetic_records(5) + [empty_record('e1'), empty_record('e2')]
    ds = data.build_dataset(recs, resize_preprocess, encode, batch_size=7, seed=0, with_gt=True)
    images, t = next(iter(ds))
    spec = ds.element_spec
    assert spec[0].shape == (7, OUT, OUT, 3) and spec[0].dtype == tf.float32
    assert [s.shape for s in spec[1]['gclasses']] == [(7, 4, 4, 2), (7, 2, 2, 3)]
    assert [s.shape for s in spec[1]['glocalisations']] == [(7, 4, 4, 2, 4), (7, 2, 2, 3, 4)]
    assert all(s.dtype == tf.int64 for s in spec[1]['gclasses'])
    assert all(s.dtype == tf.float32 for s in spec[1]['gscores'])
    assert t['labels'].dtype == tf.int64 and t['bboxes'].shape[-1] == 4
    num = t['num_boxes'].numpy()
    assert sorted(num)[:2] == [0, 0]  # the two empty images, shuffled somewhere in the batch
    for i in np.flatnonzero(num == 0):
        assert all(int(tf.reduce_max(g[i])) == 0 for g in t['gclasses'])
        assert all(float(tf.reduce_max(g[i])) == 0. for g in t['gscores'])
        assert not np.any(t['labels'][i].numpy())
    for i in np.flatnonzero(num > 0):
        assert max(int(tf.reduce_max(g[i])) for g in t['gclasses']) >= 1
    assert t['labels'].shape[1] == num.max()  # padded to the largest count in the batch


@pytest.mark.slow
def test_training_repeats_and_drops_remainder():
    ds = data.build_dataset(synthetic_records(5), resize_preprocess, None, batch_size=2, seed=0)
    batches = list(ds.take(6))  # 12 images from 5 records: only possible with repeat
    assert all(b[0].shape[0] == 2 for b in batches)
    assert batches[0][1] == {}  # no encode_fn, no ground truth asked


@pytest.mark.slow
def test_eval_dataset_keeps_order_ids_sizes_and_original_gt(tmp_path):
    # Files of different sizes, one greyscale, one PNG named .jpg.
    paths = [write_jpeg(tmp_path / 'a.jpg', 30, 50), write_jpeg(tmp_path / 'b.jpg', 64, 20, 1)]
    cv2.imwrite(str(tmp_path / 'c.png'), np.zeros([10, 12, 3], np.uint8))
    os.rename(tmp_path / 'c.png', tmp_path / 'c.jpg')
    paths.append(str(tmp_path / 'c.jpg'))
    recs = [
        records.make_record('a', 30, 50, [[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], [1, 3],
                            ['x', 'y'], difficult=[0, 1], image_path=paths[0]),
        records.make_record('b', 64, 20, np.zeros([0, 4]), [], [], image_path=paths[1]),
        records.make_record('c', 10, 12, [[0.5, 0.5, 1, 1]], [2], ['z'], is_crowd=[1],
                            image_path=paths[2]),
    ]
    ds = data.build_eval_dataset(recs, resize_preprocess, batch_size=2, encode_fn=encode)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [2, 1]  # every image once, last batch kept
    t = {k: np.concatenate([np.asarray(b[1][k]) for b in batches if k in b[1]], 0)
         for k in ('image_id', 'height', 'width', 'num_boxes')}
    assert t['image_id'].tolist() == [b'a', b'b', b'c']
    assert t['height'].tolist() == [30, 64, 10] and t['width'].tolist() == [50, 20, 12]
    assert t['num_boxes'].tolist() == [2, 0, 1]
    first = batches[0][1]
    np.testing.assert_allclose(first['bboxes'][0].numpy(), recs[0].boxes)
    assert first['difficult'][0].numpy().tolist() == [0, 1]
    assert first['labels'][1].numpy().tolist() == [0, 0]  # padding
    last = batches[1][1]
    assert last['is_crowd'][0].numpy().tolist() == [1] and last['labels'][0].numpy().tolist() == [2]
    assert 'gclasses' in first


def test_training_drops_crowd_boxes():
    rec = records.make_record('c', 40, 40, [[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]], [1, 2],
                              ['a', 'b'], is_crowd=[0, 1],
                              image=np.zeros([40, 40, 3], np.uint8))
    ds = data.build_dataset([rec], resize_preprocess, None, batch_size=1, seed=0, with_gt=True)
    _, t = next(iter(ds))
    assert t['labels'].numpy().tolist() == [[1]]


def _batches(ds, n):
    return [tf.nest.map_structure(lambda x: x.numpy(), b) for b in ds.take(n)]


@pytest.mark.slow
def test_pipeline_is_deterministic_with_a_seed():
    recs = synthetic_records(12)

    def build(seed):
        return data.build_dataset(recs, flip_preprocess, encode, batch_size=4, seed=seed,
                                  with_gt=True, num_parallel_calls=4)

    a, b, c = _batches(build(7), 6), _batches(build(7), 6), _batches(build(8), 6)
    for x, y in zip(a, b):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))
    # The second epoch (batches 3..5) is another shuffle of the same 12 images.
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a[:3], a[3:]))


@pytest.mark.slow
def test_start_resumes_the_stream_exactly():
    recs = synthetic_records(10)

    def build(start):
        return data.build_dataset(recs, flip_preprocess, encode, batch_size=4, seed=7,
                                  with_gt=True, start=start)

    full = _batches(build(0), 5)
    resumed = _batches(build(3 * 4), 2)  # after 3 steps of 4 images (crosses an epoch)
    for x, y in zip(full[3:], resumed):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)


def test_seed_reaches_the_preprocessing():
    rec = synthetic_records(1)
    ds = data.build_dataset(rec * 1, flip_preprocess, None, batch_size=1, seed=3)
    flips = set()
    first = None
    for images, _ in ds.take(16):  # the same image 16 times: both flips must occur
        if first is None:
            first = images.numpy()
        flips.add(bool(np.array_equal(images.numpy(), first)))
    assert flips == {True, False}


@pytest.mark.slow
def test_tfrecord_source_matches_record_source(tmp_path):
    recs = synthetic_records(5) + [empty_record('e')]
    recs[1].difficult[:] = 1
    tfrecord.write_tfrecords(recs, str(tmp_path), 'syn', 'test', num_shards=2)
    from_records = _batches(data.build_eval_dataset(recs, resize_preprocess, batch_size=3), 2)
    from_files = _batches(data.build_eval_dataset(str(tmp_path / 'syn_test_*.tfrecord'),
                                                  resize_preprocess, batch_size=3), 2)
    # Round-robin shards read back interleaved one by one: the original order.
    for x, y in zip(from_records, from_files):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)
    train = data.build_dataset(str(tmp_path / '*.tfrecord'), resize_preprocess, encode,
                               batch_size=4, seed=0, shuffle_buffer=10)
    images, t = next(iter(train))
    assert images.shape == (4, OUT, OUT, 3) and t['gclasses'][0].shape == (4, 4, 4, 2)


@pytest.mark.slow
def test_slim_records_without_ids_get_positions(tmp_path):
    path = str(tmp_path / 'voc_2007_test_000.tfrecord')  # the original's file naming
    with tf.io.TFRecordWriter(path) as w:
        for r in synthetic_records(3):
            ex = tfrecord.record_to_example(r)
            del ex.features.feature['image/filename']
            del ex.features.feature['image/object/bbox/is_crowd']
            w.write(ex.SerializeToString())
    _, t = next(iter(data.build_eval_dataset(path, resize_preprocess, batch_size=3)))
    assert t['image_id'].numpy().tolist() == [b'0', b'1', b'2']


def test_max_boxes_pads_to_a_fixed_size_and_overflow_fails_loudly():
    recs = synthetic_records(6)
    ds = data.build_eval_dataset(recs, resize_preprocess, batch_size=3, max_boxes=10)
    assert ds.element_spec[1]['bboxes'].shape.as_list() == [None, 10, 4]
    _, t = next(iter(ds))
    assert t['labels'].shape == (3, 10)
    busy = max(recs, key=lambda r: r.num_boxes)
    assert busy.num_boxes >= 2
    ds = data.build_eval_dataset([busy], resize_preprocess, batch_size=1, max_boxes=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match='max_boxes'):
        next(iter(ds))


@pytest.mark.slow
def test_in_memory_images_of_different_sizes_and_extra_preprocess_outputs():
    recs = [empty_record('s', 20), empty_record('l', 50)]

    def four_outputs(image, labels, bboxes):
        return resize_preprocess(image, labels, bboxes) + (tf.constant([0., 0., 1., 1.]),)

    ds = data.build_eval_dataset(recs, four_outputs, batch_size=2)
    images, t = next(iter(ds))
    assert images.shape == (2, OUT, OUT, 3)
    assert t['height'].numpy().tolist() == [20, 50]
    np.testing.assert_allclose(images.numpy()[0, 0, 0], np.array([90., 90., 90.]) - MEANS)


def test_empty_source_is_a_clear_error():
    with pytest.raises(ValueError, match='empty list of records'):
        data.build_dataset([], resize_preprocess)
    with pytest.raises(FileNotFoundError, match='no TFRecord files'):
        data.build_dataset('/nonexistent/*.tfrecord', resize_preprocess)


@pytest.mark.slow
def test_with_the_augmentation_of_preprocessing_if_present():
    prep = pytest.importorskip('preprocessing.ssd_vgg_preprocessing')
    fn = functools.partial(prep.preprocess_for_train, out_shape=(OUT, OUT))
    recs = synthetic_records(6) + [empty_record('e')]

    def build():
        return data.build_dataset(recs, fn, encode, batch_size=4, seed=1, with_gt=True)

    a, b = _batches(build(), 2), _batches(build(), 2)
    for x, y in zip(a, b):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)
    assert a[0][0].shape == (4, OUT, OUT, 3)


# ---------------------------------------------------------------------------- bad TFRecords
def _example(rec, **changes):
    """`tfrecord.record_to_example(rec)` with features replaced (None deletes one)."""
    ex = tfrecord.record_to_example(rec)
    feats = ex.features.feature
    for key, value in changes.items():
        key = 'image/' + key.replace('__', '/')
        if value is None:
            del feats[key]
        elif isinstance(value, bytes):
            feats[key].CopyFrom(tf.train.Feature(bytes_list=tf.train.BytesList(value=[value])))
        else:
            feats[key].CopyFrom(tf.train.Feature(float_list=tf.train.FloatList(value=value)))
    return ex.SerializeToString()


def _jpeg_record(image_id, boxes, labels):
    img = np.random.default_rng(1).integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
    data = cv2.imencode('.jpg', img)[1].tobytes()
    return records.make_record(image_id, 40, 40, boxes, labels, ['x'] * len(labels),
                               encoded=data)


def bad_shard(path):
    """A shard of 4 good records (ids g0..g3) and one record of each kind of problem, in a
    known order. Returns `(path, {record index: expected kind})`."""
    good = [_jpeg_record(f'g{i}', [[0.1, 0.1, 0.6, 0.7]], [1 + i % 3]) for i in range(4)]
    base = _jpeg_record('bad', [[0.1, 0.1, 0.6, 0.7], [0.2, 0.3, 0.5, 0.9]], [1, 2])
    jpeg = base.encoded
    corrupt = jpeg[:200] + bytes(range(256)) * 4 + b'\xff\xd9'  # passes the byte checks
    rows = [
        (tfrecord.record_to_example(good[0]).SerializeToString(), None),
        (_example(base, object__bbox__xmin=[0.1]), tfrecord.UNEQUAL_BOX_LISTS),
        (_example(base, object__bbox__xmin=[], object__bbox__ymin=[], object__bbox__xmax=[],
                  object__bbox__ymax=[]), tfrecord.UNEQUAL_BOX_LISTS),  # labels, no boxes
        (_example(base, encoded=jpeg[:len(jpeg) // 2]), tfrecord.BAD_IMAGE),  # truncated
        (_example(base, encoded=None), tfrecord.MISSING_IMAGE),
        (_example(base, encoded=b''), tfrecord.MISSING_IMAGE),
        (_example(base, encoded=b'<html>not found</html>'), tfrecord.BAD_IMAGE),
        (tfrecord.record_to_example(good[1]).SerializeToString(), None),
        (_example(base, object__bbox__xmax=[28., 36.], object__bbox__ymax=[24., 20.]),
         tfrecord.BOX_OUTSIDE),  # pixel coordinates
        (_example(base, encoded=corrupt), tfrecord.UNREADABLE),  # the decoder fails
        (b'not a tf.train.Example', tfrecord.UNREADABLE),
        (tfrecord.record_to_example(good[2]).SerializeToString(), None),
        (tfrecord.record_to_example(good[3]).SerializeToString(), None),
    ]
    with tf.io.TFRecordWriter(str(path)) as w:
        for serialized, _ in rows:
            w.write(serialized)
    return str(path), {i: kind for i, (_, kind) in enumerate(rows) if kind}


@pytest.mark.slow
def test_bad_tfrecord_records_are_skipped_counted_and_named(tmp_path):
    path, bad = bad_shard(tmp_path / 'x_00000.tfrecord')
    report = check_lib.DataProblems()
    ds = data.build_dataset(path, resize_preprocess, batch_size=3, is_training=False,
                            with_gt=True, report=report)
    ids = [i for _, t in ds for i in t['image_id'].numpy().tolist()]
    assert ids == [b'g0', b'g1', b'g2', b'g3']  # every good record, in order, nothing else
    assert report.num_skipped == len(bad) == 9
    want = {}
    for kind in bad.values():
        want[kind] = want.get(kind, 0) + 1
    assert dict(report.skipped) == want
    assert report.num_dropped_boxes == 0
    summary = report.summary()
    for index, kind in bad.items():
        if index != 9 and index != 10:  # the decoder's failures are named by stream position
            assert f'{path} record {index}: ' in summary, (index, summary)
    assert 'pixel coordinates' in summary and '2 labels but 2 ymin, 1 xmin' in summary
    assert 'stream position 9' in summary and 'stream position 10' in summary


@pytest.mark.slow
def test_bad_boxes_are_dropped_and_reported_the_record_kept(tmp_path):
    rec = _jpeg_record('r', [[-1e-5, 0.1, 0.6, 1.0000001], [0.5, 0.5, 0.2, 0.9],
                             [0.2, 0.2, 0.4, 0.4], [0.3, 0.3, 0.8, 0.8]], [1, 2, 7, 0])
    path = str(tmp_path / 'b.tfrecord')
    tfrecord.write_tfrecords([rec], str(tmp_path), 'b', 'x')
    path = str(tmp_path / 'b_x_00000-of-00001.tfrecord')
    report = check_lib.DataProblems()
    _, t = next(iter(data.build_dataset(path, resize_preprocess, batch_size=1,
                                        is_training=False, with_gt=True, num_classes=5,
                                        report=report)))
    # box 1 is inverted (ymin 0.5 > ymax 0.2), box 2 has label 7 >= 5, box 3 label 0 < 1;
    # box 0 is float rounding at the border: clipped to [0, 1]
    assert t['labels'].numpy().tolist() == [[1]]
    np.testing.assert_array_equal(t['bboxes'][0].numpy(), np.float32([[0., 0.1, 0.6, 1.]]))
    assert report.num_skipped == 0
    assert dict(report.dropped_boxes) == {tfrecord.INVERTED_BOX: 1,
                                          tfrecord.LABEL_OUT_OF_RANGE: 2}
    assert f'{path} record 0: box 2 (label 7' in report.summary()


@pytest.mark.slow
def test_strict_data_stops_at_the_first_bad_record_naming_it(tmp_path):
    path, _ = bad_shard(tmp_path / 'x.tfrecord')
    report = check_lib.DataProblems(strict=True)
    ds = data.build_dataset(path, resize_preprocess, batch_size=2, is_training=False,
                            report=report)
    with pytest.raises(tf.errors.OpError):
        list(ds)
    assert report.strict_error.startswith(f'bad input data: {path} record 1: 2 labels but')
    assert report.num_skipped >= 1


@pytest.mark.slow
def test_training_on_bad_records_runs_and_resumes_exactly(tmp_path):
    path, _ = bad_shard(tmp_path / 'x.tfrecord')

    def build(start, report):
        return data.build_dataset(path, flip_preprocess, encode, batch_size=4, seed=5,
                                  shuffle_buffer=20, with_gt=True, start=start, report=report)

    full_report, resumed_report = check_lib.DataProblems(), check_lib.DataProblems()
    full = _batches(build(0, full_report), 7)  # 28 positions: more than two epochs of 13
    resumed = _batches(build(4 * 4, resumed_report), 3)
    for x, y in zip(full[4:], resumed):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)
    assert full_report.num_skipped >= 20 and resumed_report.num_skipped < full_report.num_skipped
    # 9 of the 13 records are bad: a batch's bad rows take a good row of the same batch (each
    # good record has one box); only a batch without any good record keeps the placeholders.
    # A batch with a bad row holds a copy of one of its good rows: fewer than 4 distinct
    # images. 28 positions hold 8 to 10 good ones (4 of each epoch of 13), so most of the 7
    # batches mix good and bad rows.
    mixed = 0
    for images, t in full:
        boxes = t['num_boxes'].tolist()
        if any(boxes):
            mixed += len({im.tobytes() for im in images}) < 4
            assert boxes == [1, 1, 1, 1] and np.all(images.std(axis=(1, 2, 3)) > 1.)
        else:
            assert np.all(images == images[0])  # the placeholders, never a half-read record
    assert mixed >= 4


@pytest.mark.slow
def test_resume_skips_records_without_parsing_them(tmp_path):
    path = str(tmp_path / 'r.tfrecord')
    recs = synthetic_records(5)
    with tf.io.TFRecordWriter(path) as w:
        w.write(b'garbage: parsing this record fails')
        for r in recs:
            w.write(tfrecord.record_to_example(r).SerializeToString())
    report = check_lib.DataProblems(strict=True)
    resumed = _batches(data.build_dataset(path, resize_preprocess, batch_size=5, start=1,
                                          is_training=False, with_gt=True, report=report), 1)
    assert report.num_skipped == 0  # the garbage record was skipped before any parse
    assert resumed[0][1]['image_id'].tolist() == [r.image_id.encode() for r in recs]
    expected = _batches(data.build_eval_dataset(recs, resize_preprocess, batch_size=5), 1)
    np.testing.assert_array_equal(resumed[0][0], expected[0][0])


def _write_labels(path):
    from ssd_tf.datasets import labelmap
    return labelmap.LabelMap(['x', 'y']).write(str(path))


@pytest.mark.slow
def test_check_command_names_every_bad_record_and_exits_1_with_strict_data(tmp_path, capsys):
    path, bad = bad_shard(tmp_path / 'x_00000.tfrecord')
    tfrecord.write_tfrecords(synthetic_records(3), str(tmp_path), 'x', 'ok')
    pattern = str(tmp_path / 'x_*.tfrecord')
    # The two shards' label texts disagree: the name most records give label 2 is 'x', also
    # label 1's, so 'x' would stand for two labels: reported...
    assert check_cli.main(['--dataset_name', 'tfrecord', '--dataset_dir', pattern]) == 0
    assert "class 'x' has labels 1 and 2" in capsys.readouterr().out
    # ... unless --label_map says which names are right (its 2 classes give C = 3).
    names = _write_labels(tmp_path / 'names.txt')
    assert check_cli.main(['--dataset_name', 'tfrecord', '--dataset_dir', pattern,
                           '--label_map', names]) == 0
    out = capsys.readouterr().out
    assert '16 records read' in out and '9 records skipped' in out
    for index in bad:  # the decoder's failures too: the check reads the shards in order
        assert f'{path} record {index}: ' in out, index
    assert 'looks written in pixel coordinates' in out
    assert 'label out of range' in out  # g2 has label 3, outside [1, 3)
    assert check_cli.main(['--dataset_name', 'tfrecord', '--dataset_dir', pattern,
                           '--num_classes', '3', '--strict_data']) == 1
    clean = str(tmp_path / 'x_ok_*.tfrecord')
    assert check_cli.main(['--dataset_name', 'tfrecord', '--dataset_dir', clean,
                           '--strict_data']) == 0
    out = capsys.readouterr().out
    assert '0 records skipped, 0 boxes dropped' in out
    assert "['circle', 'cross', 'rectangle']" in out  # the classes in the records' label_text
    assert check_cli.main(['--dataset_name', 'tfrecord', '--dataset_dir',
                           str(tmp_path / 'none_*.tfrecord')]) == 2


def test_data_problems_summary_goes_to_tensorboard(tmp_path):
    problems = check_lib.DataProblems(examples_per_kind=2)
    for i in range(3):
        problems.add(f'x.tfrecord record {i}', tfrecord.MISSING_IMAGE, 'image/encoded is empty')
    problems.add('x.tfrecord record 7', tfrecord.INVERTED_BOX, 'box 0 (...)', whole_record=False)
    text = problems.summary()
    assert text.splitlines()[0] == 'data problems: 3 records skipped, 1 boxes dropped'
    assert 'record 1: image/encoded' in text and 'record 2:' not in text  # first 2 kept
    writer = tf.summary.create_file_writer(str(tmp_path))
    problems.write_summary(step=42, writer=writer)
    writer.flush()
    values = {}
    for f in os.listdir(tmp_path):
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / f)):
            for v in event.summary.value:
                values[v.tag] = (event.step, tf.make_ndarray(v.tensor))
    assert values['data/records_skipped'] == (42, 3) and values['data/boxes_dropped'][1] == 1
    assert values['data/missing_or_empty_image_encoded'][1] == 3
    assert b'3 records skipped' in values['data/problems'][1].item()


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(ok=st.lists(st.booleans(), min_size=1, max_size=6))
def test_bad_rows_take_a_good_row_of_their_batch(ok):
    b = len(ok)
    images = tf.reshape(tf.range(b, dtype=tf.float32), [b, 1, 1, 1])  # row i holds i
    targets = {'labels': tf.reshape(tf.range(b, dtype=tf.int64) * 10, [b, 1]),
               '_ok': tf.constant(ok)}
    out_images, out_targets = data._replace_bad_rows(images, targets)
    rows = out_images.numpy().reshape(b).astype(int).tolist()
    assert '_ok' not in out_targets
    assert out_targets['labels'].numpy().reshape(b).tolist() == [10 * r for r in rows]
    if any(ok):
        for i, row in enumerate(rows):
            assert ok[row]  # every row now holds a good record ...
            assert row == i if ok[i] else row == next(  # ... the next good one, cyclically
                j % b for j in range(i, i + b) if ok[j % b])
    else:
        assert rows == list(range(b))  # nothing to take: the placeholders stay


@pytest.mark.slow
def test_a_truncated_shard_is_named_by_the_check_and_does_not_stop_eval(tmp_path, capsys):
    paths = tfrecord.write_tfrecords(synthetic_records(6), str(tmp_path), 's', 't', 2)
    whole = open(paths[0], 'rb').read()
    with open(paths[0], 'wb') as f:
        f.write(whole[:-100])  # shard 0 (records 0, 2, 4) loses the end of its last record
    pattern = str(tmp_path / 's_*.tfrecord')
    assert check_cli.main(['--dataset_name', 'tfrecord', '--dataset_dir', pattern,
                           '--strict_data']) == 1
    assert f'{paths[0]} record 2 (the file ends inside this record' in capsys.readouterr().out
    report = check_lib.DataProblems()
    ds = data.build_dataset(pattern, resize_preprocess, batch_size=6, is_training=False,
                            with_gt=True, report=report)
    ids = sorted(i for _, t in ds for i in t['image_id'].numpy().tolist())
    recs = synthetic_records(6)
    assert ids == sorted(r.image_id.encode() for r in recs[:4] + recs[5:])  # all but record 4
    assert report.num_skipped == 1


# ---------------------------------------------------------------------------- train_ssd.py
def _train_on(shard, tmp_path, *extra):
    import pathlib
    import subprocess
    import sys
    from ssd_tf.datasets import labelmap
    root = pathlib.Path(__file__).resolve().parents[1]
    labels = labelmap.LabelMap(['p', 'q', 'r']).write(str(tmp_path / 'my_labels.txt'))
    cmd = [sys.executable, str(root / 'train_ssd.py'), '--dataset_name=tfrecord',
           f'--dataset_dir={shard}', f'--label_map={labels}', '--batch_size=4',
           '--max_number_of_steps=2', '--eval_split_name=', '--log_every_n_steps=1',
           f'--train_dir={tmp_path / "run"}', *extra]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root, env=env)


@pytest.mark.slow
def test_train_ssd_on_bad_tfrecords_reports_them_and_honours_label_map(tmp_path):
    shard, bad = bad_shard(tmp_path / 'x.tfrecord')
    r = _train_on(shard, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # the end-of-training summary names the shard and counts the skipped records
    assert 'records skipped' in r.stderr and 'x.tfrecord record 1' in r.stderr, r.stderr[-3000:]
    # --label_map is used for TFRecord data (today: ignored) and travels with the run
    from ssd_tf.datasets import labelmap
    assert list(labelmap.LabelMap.read(str(tmp_path / 'run')).names) == ['p', 'q', 'r']


@pytest.mark.slow
def test_train_ssd_strict_data_stops_naming_the_record(tmp_path):
    shard, bad = bad_shard(tmp_path / 'x.tfrecord')
    r = _train_on(shard, tmp_path, '--strict_data')
    assert r.returncode == 2, r.stderr[-3000:]
    # the first bad record of the (shuffled) stream is named: shard and index
    assert any(f'x.tfrecord record {i}:' in r.stderr for i in bad), r.stderr[-3000:]
    assert '--strict_data' in r.stderr
    assert 'Traceback' not in r.stderr
