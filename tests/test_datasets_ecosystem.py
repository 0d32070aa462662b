"""Data where users keep it: tensorflow-datasets by name (tested with tfds's own
`tfds.testing.mock_data`, no download), TF Object Detection API TFRecords (records built by
hand with the OD API's key names) and its `label_map.pbtxt`."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from hypothesis import given, settings, strategies as st

import conftest
import eval_ssd
from ssd_tf import data as data_lib
from ssd_tf.datasets import check as check_lib
from ssd_tf.cli import convert
from ssd_tf.cli import tfds as tfds_cli
from ssd_tf.data import check_tfrecords
from ssd_tf.datasets import factory
from ssd_tf.datasets import labelmap
from ssd_tf.datasets import tfds as tfds_lib
from ssd_tf.datasets import tfrecord


def _tfds():
    """tensorflow_datasets, or a skip (a failure under SSD_TF_REQUIRE_EXTRAS, as in CI):
    only the tests of the tfds source need the extra; label_map.pbtxt, OD API records and
    gapped ids run without it."""
    return conftest.import_extra('tensorflow_datasets', 'tfds')

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- label_map.pbtxt
PBTXT = """# the OD API's own style, with comments
item {
  name: "/m/01g317"   # a machine id: the display name is the class name
  id: 1
  display_name: 'person'
}
item: { id: 2, name: 'it\\'s a "cat"' keypoints { id: 0 label: "nose" } frequency: FREQUENT }
item <id: 3 name: "dog"; ancestor_ids: [1, 2]>
"""


def test_pbtxt_quote_styles_comments_display_names_and_other_fields(tmp_path):
    items = labelmap.parse_pbtxt(PBTXT)
    assert [(i['id'], i['name'], i['display_name'], i['line']) for i in items] == [
        (1, '/m/01g317', 'person', 2), (2, 'it\'s a "cat"', None, 7), (3, 'dog', None, 8)]
    path = tmp_path / 'label_map.pbtxt'
    path.write_text(PBTXT)
    assert labelmap.LabelMap.read(path).names == ('person', 'it\'s a "cat"', 'dog')


@pytest.mark.parametrize('text, where, needle', [
    ("item {\n id: 1\n name: 'a' ", ':3:', 'the file ends'),
    ("item { id: 1 name: 'a' }\nitem {\n id: 0 name: 'b' }", ':3:', 'integer 1..'),
    ("item {\n id: 99999999999999 name: 'a' }", ':2:', 'integer 1..2147483647'),
    ("item { id: 1 name: 'a' }\n\nitem { id: 1 name: 'b' }", ':3:', 'id 1 is used twice'),
    ("item {\n id: 1\n name: 'a/b' }", ':3:', "invalid class name 'a/b'"),
    ("item { id: 1 name: 'a }", ':1:', 'unterminated string'),
    ("item { id: 1 name: 'a' }\n%", ':2:', 'syntax error'),
    ("label { id: 1 name: 'a' }", ':1:', "expected 'item {'"),
    ("item { id: 1 }", ':1:', 'needs an id and a name'),
    ("item { id: 1 name: 'a' name: 'b' }", ':1:', 'given twice'),
    ("# nothing\n", ': ', "no 'item"),
])
def test_pbtxt_errors_name_the_file_and_line(tmp_path, text, where, needle):
    path = tmp_path / 'label_map.pbtxt'
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        labelmap.LabelMap.read(path)
    assert f"{path}{where}" in str(e.value)  # the file, and the line where there is one
    assert needle in str(e.value)


_NAMES = st.lists(st.text(st.characters(blacklist_categories=('Cs', 'Cc')), min_size=1,
                          max_size=8).filter(lambda n: not labelmap.class_name_problem(n)
                                             and n != labelmap.BACKGROUND_NAME),
                  min_size=1, max_size=6, unique=True)


@settings(max_examples=40, deadline=None)
@given(names=_NAMES)
def test_pbtxt_write_read_round_trip(tmp_path_factory, names):
    path = tmp_path_factory.mktemp('pb') / 'label_map.pbtxt'
    labelmap.LabelMap(names).write(path)
    assert labelmap.LabelMap.read(path).names == tuple(names)


# ---------------------------------------------------------------------------- OD API records
def _jpeg(h=24, w=32, seed=0):
    img = np.random.RandomState(seed).randint(0, 255, (h, w, 3)).astype(np.uint8)
    return tf.io.encode_jpeg(img).numpy()


def _feature(values):
    v = list(values)
    if v and isinstance(v[0], bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))
    if v and isinstance(v[0], float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v))


def od_api_example(source_id, boxes, labels, texts, difficult=None, crowd=None):
    """A record as the OD API's create_*_tf_record.py scripts write it (keys by hand)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    f = {'image/height': [24], 'image/width': [32],
         'image/filename': [f'{source_id}.jpg'.encode()], 'image/source_id': [source_id.encode()],
         'image/key/sha256': [b'0' * 64], 'image/encoded': [_jpeg()], 'image/format': [b'jpeg'],
         'image/object/bbox/ymin': [float(x) for x in b[:, 0]],
         'image/object/bbox/xmin': [float(x) for x in b[:, 1]],
         'image/object/bbox/ymax': [float(x) for x in b[:, 2]],
         'image/object/bbox/xmax': [float(x) for x in b[:, 3]],
         'image/object/class/text': [t.encode() for t in texts],
         'image/object/class/label': list(labels),
         'image/object/truncated': [0] * len(labels),
         'image/object/view': [b'Unspecified'] * len(labels)}
    if difficult is not None:
        f['image/object/difficult'] = list(difficult)
    if crowd is not None:
        f['image/object/is_crowd'] = list(crowd)
    feature = {k: _feature(v) if v else tf.train.Feature() for k, v in f.items()}
    # an empty list must still be a typed feature (as the OD API writes it)
    for k in ('image/object/bbox/ymin', 'image/object/bbox/xmin', 'image/object/bbox/ymax',
              'image/object/bbox/xmax'):
        if not f[k]:
            feature[k] = tf.train.Feature(float_list=tf.train.FloatList())
    return tf.train.Example(features=tf.train.Features(feature=feature))


def slim_example(boxes, labels):
    """A record with the slim SSD converter's keys, by hand."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    feature = {'image/encoded': _feature([_jpeg()]), 'image/format': _feature([b'JPEG']),
               'image/object/bbox/label': _feature(labels)}
    for j, k in enumerate(('ymin', 'xmin', 'ymax', 'xmax')):
        feature[f'image/object/bbox/{k}'] = _feature([float(x) for x in b[:, j]])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _write(path, examples):
    with tf.io.TFRecordWriter(str(path)) as w:
        for ex in examples:
            w.write(ex.SerializeToString())
    return str(path)


def _od_shard(path):
    # 2 images: a dog + a difficult cat; a person + a crowd of people
    return _write(path, [
        od_api_example('img1', [[.1, .2, .5, .6], [.3, .3, .9, .8]], [2, 1], ['dog', 'cat'],
                       difficult=[0, 1]),
        od_api_example('img2', [[.0, .0, .4, .4], [.5, .5, 1., 1.]], [3, 3],
                       ['person', 'person'], crowd=[0, 1])])


def test_od_api_record_parsed_by_hand_keys():
    ex, kind, _, box_kinds, _ = [t.numpy() if hasattr(t, 'numpy') else t for t in
                                 tfrecord.check_example(
                                     od_api_example('42', [[.1, .2, .5, .6]], [2], ['dog'],
                                                    difficult=[1], crowd=[1])
                                     .SerializeToString(), num_classes=4,
                                     layout=tfrecord.OD_API)]
    assert kind == b'' and list(box_kinds) == [b'']
    assert ex['image_id'].numpy() == b'42'  # image/source_id, not the filename
    assert ex['labels'].numpy().tolist() == [2]
    np.testing.assert_allclose(ex['bboxes'].numpy(), [[.1, .2, .5, .6]])
    assert ex['difficult'].numpy().tolist() == [1] and ex['is_crowd'].numpy().tolist() == [1]
    assert ex['label_text'].numpy().tolist() == [b'dog']
    # the same record read with the slim keys has no objects: the layout matters
    slim = tfrecord.parse_example(od_api_example('42', [[.1, .2, .5, .6]], [2], ['dog'])
                                  .SerializeToString())
    assert slim['labels'].numpy().size == 0


def test_detect_layout_and_a_mix_of_shards_is_refused(tmp_path):
    od = _od_shard(tmp_path / 'od-00000.tfrecord')
    slim = _write(tmp_path / 'slim-00000.tfrecord', [slim_example([[.1, .1, .5, .5]], [1])])
    # a record without objects tells nothing: the next one does
    empty_first = _write(tmp_path / 'od-00001.tfrecord', [
        tf.train.Example(features=tf.train.Features(feature={
            'image/encoded': _feature([_jpeg()])})),
        od_api_example('x', [[.1, .1, .5, .5]], [1], ['cat'])])
    assert tfrecord.detect_layout(od) == tfrecord.OD_API
    assert tfrecord.detect_layout([od, empty_first]) == tfrecord.OD_API
    assert tfrecord.detect_layout(slim) == tfrecord.SLIM
    with pytest.raises(ValueError) as e:
        tfrecord.detect_layout(str(tmp_path / '*.tfrecord'))
    assert 'mix key layouts' in str(e.value) and od in str(e.value) and slim in str(e.value)
    both = tf.train.Example()
    both.CopyFrom(od_api_example('b', [[.1, .1, .5, .5]], [1], ['cat']))
    both.features.feature['image/object/bbox/label'].int64_list.value.append(1)
    mixed = _write(tmp_path / 'both.tfrecord', [both])
    with pytest.raises(ValueError, match=f"{mixed} record 0 has the keys of both layouts"):
        tfrecord.detect_layout(mixed)


def _eval_rows(source, **kw):
    ds = data_lib.build_eval_dataset(source, lambda i, l, b: (tf.image.resize(i, (16, 16)), l, b),
                                     batch_size=8, **kw)
    rows = []
    for _, t in ds:
        for i in range(int(tf.shape(t['num_boxes'])[0])):
            n = int(t['num_boxes'][i])
            rows.append({k: t[k][i][:n].numpy().tolist() for k in
                         ('labels', 'difficult', 'is_crowd')} |
                        {'bboxes': t['bboxes'][i][:n].numpy(),
                         'image_id': t['image_id'][i].numpy().decode()})
    return rows


@pytest.mark.slow
def test_od_api_shards_through_the_pipeline_and_label_map_pbtxt(tmp_path, caplog):
    shard = _od_shard(tmp_path / 'od_train-00000-of-00001.tfrecord')
    # no label file: the label map is spelled by image/object/class/text
    assert factory.tfrecord_label_map(shard).names == ('cat', 'dog', 'person')
    # label_map.pbtxt beside the shards wins over the texts
    (tmp_path / 'label_map.pbtxt').write_text(
        "item { id: 1 name: 'cat' }\nitem { id: 2 name: 'dog' }\nitem { id: 3 "
        "name: '/m/01g317' display_name: 'person' }\n")
    assert factory.tfrecord_label_map(shard).names == ('cat', 'dog', 'person')
    with caplog.at_level('INFO', logger='ssd_tf.data'):
        rows = _eval_rows(shard)
    assert 'TF Object Detection API TFRecord keys' in caplog.text  # the layout found, logged
    assert [r['image_id'] for r in rows] == ['img1', 'img2']
    assert rows[0]['labels'] == [2, 1] and rows[0]['difficult'] == [0, 1]
    assert rows[1]['labels'] == [3, 3] and rows[1]['is_crowd'] == [0, 1]
    np.testing.assert_allclose(rows[0]['bboxes'], [[.1, .2, .5, .6], [.3, .3, .9, .8]])
    # training: crowd boxes leave the targets, difficult ones stay (as for the slim layout)
    train = data_lib.build_dataset(shard, lambda i, l, b: (tf.image.resize(i, (16, 16)), l, b),
                                   batch_size=2, is_training=True, seed=1, with_gt=True,
                                   repeat=False, num_classes=4)
    _, t = next(iter(train))
    counts = sorted(t['num_boxes'].numpy().tolist())
    assert counts == [1, 2]


@pytest.mark.slow
def test_a_record_of_the_other_layout_inside_a_shard_is_reported_not_read_empty(tmp_path):
    shard = _write(tmp_path / 'od.tfrecord', [
        od_api_example('a', [[.1, .1, .5, .5]], [1], ['cat']),
        slim_example([[.2, .2, .6, .6]], [1])])
    problems = check_lib.DataProblems()
    ds = data_lib.build_dataset(shard, lambda i, l, b: (tf.image.resize(i, (16, 16)), l, b),
                                batch_size=4, is_training=False, with_gt=True, report=problems)
    images = sum(int(x.shape[0]) for x, _ in ds)
    assert images == 1
    assert problems.skipped == {tfrecord.OTHER_LAYOUT: 1}
    assert f"{shard} record 1" in problems.examples[tfrecord.OTHER_LAYOUT][0]


def test_convert_od_api_then_read_equals_convert_slim_then_read(tmp_path):
    outs = {}
    for layout in tfrecord.LAYOUTS:
        out = tmp_path / layout
        assert convert.main(['--dataset_name', 'synthetic', '--split', 'test', '--num_images',
                             '5', '--image_size', '48', '--output_dir', str(out),
                             '--layout', layout, '--shards', '2']) == 0
        outs[layout] = out
    od_files = sorted(str(p) for p in outs['od_api'].glob('*.tfrecord'))
    raw = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(od_files[0]))).numpy())
    keys = set(raw.features.feature)
    assert {'image/object/class/label', 'image/object/class/text', 'image/source_id',
            'image/object/is_crowd', 'image/object/difficult'} <= keys
    assert 'image/object/bbox/label' not in keys
    assert (outs['od_api'] / 'label_map.pbtxt').is_file()
    assert not (outs['od_api'] / 'labels.txt').exists()
    assert labelmap.LabelMap.read(outs['od_api'] / 'label_map.pbtxt') == \
        labelmap.LabelMap.read(outs['slim'])
    assert factory.tfrecord_label_map(od_files) == labelmap.LabelMap.read(outs['slim'])
    a = tfrecord.read_tfrecord_records(od_files)
    b = tfrecord.read_tfrecord_records(str(outs['slim'] / '*.tfrecord'))
    assert len(a) == len(b) == 5
    for ra, rb in zip(a, b):
        assert (ra.image_id, ra.height, ra.width, ra.label_text) == \
            (rb.image_id, rb.height, rb.width, rb.label_text)
        assert ra.encoded == rb.encoded
        for field in ('boxes', 'labels', 'difficult', 'truncated', 'is_crowd'):
            np.testing.assert_array_equal(getattr(ra, field), getattr(rb, field))


# ---------------------------------------------------------------------------- tfds
@pytest.fixture
def mock_tfds():
    """tfds's own mock_data (no download) with tfds_fakes' examples; yields the tfds module."""
    tfds = _tfds()
    import tfds_fakes  # imports tensorflow_datasets
    with tfds.testing.mock_data(as_dataset_fn=tfds_fakes.fake_as_dataset):
        yield tfds


@pytest.mark.slow
def test_tfds_voc_reaches_the_pipeline_with_tfds_labels(mock_tfds):
    source = tfds_lib.TfdsSource('voc/2007', 'test')
    assert source.label_map() == labelmap.VOC_LABEL_MAP  # the ClassLabel names
    problems = check_lib.DataProblems()
    ds = data_lib.build_dataset(source, lambda i, l, b: (tf.image.resize(i, (16, 16)), l, b),
                                batch_size=8, is_training=False, with_gt=True, report=problems,
                                num_classes=21)
    _, t = next(iter(ds))
    assert t['image_id'].numpy().tolist() == [b'000000.jpg', b'000001.jpg', b'000002.jpg']
    assert t['height'].numpy().tolist() == [40, 41, 42]
    # tfds 11 (dog) -> 12, 14 (person) -> 15; background 0
    assert t['labels'].numpy().tolist() == [[12, 15], [12, 15], [15, 0]]
    assert t['difficult'].numpy().tolist() == [[0, 1], [0, 1], [1, 0]]
    np.testing.assert_allclose(t['bboxes'].numpy()[0], [[.1, .2, .5, .6], [.3, .3, .9, .8]])
    assert problems.dropped_boxes == {tfrecord.INVERTED_BOX: 1}
    assert 'voc-test.tfrecord-00000-of-00001__2' in problems.examples[tfrecord.INVERTED_BOX][0]


@pytest.mark.slow
def test_tfds_coco_crowd_is_kept_for_eval_and_dropped_in_training(mock_tfds, tmp_path,
                                                                   monkeypatch):
    import tempfile
    source = tfds_lib.TfdsSource('coco/2017', 'validation')
    # the names of tfds's ClassLabel (prepared COCO carries the category names; the mock,
    # without generated metadata, numbers them), read from tfds itself, whose builder leaves
    # an empty directory in the temporary directory: a test's own here
    names = source.label_map().names
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    assert names == tuple(mock_tfds.builder('coco/2017').info.features['objects']['label'].names)
    monkeypatch.undo()
    assert len(names) == 80
    rows = _eval_rows(source)
    assert [r['labels'] for r in rows] == [[1, 3], [1, 3]]
    assert [r['is_crowd'] for r in rows] == [[0, 1], [0, 1]]
    train = data_lib.build_dataset(
        tfds_lib.TfdsSource('coco/2017', 'train[:50%]'),
        lambda i, l, b: (tf.image.resize(i, (16, 16)), l, b), batch_size=2, is_training=True,
        seed=0, with_gt=True, repeat=False, num_classes=81)
    _, t = next(iter(train))
    assert t['labels'].numpy().tolist() == [[1], [1]]  # the crowd of cars is not a target


def test_tfds_not_prepared_names_the_command_and_nothing_is_downloaded(tmp_path,
                                                                        monkeypatch):
    import tempfile
    _tfds()
    # the process's temporary directory: tfds's builder of an unprepared set makes an empty
    # tmp...tfds directory there and leaves it; the builder call must leave nothing
    temp = tmp_path / 'temp'
    temp.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(temp))
    source = tfds_lib.TfdsSource('voc/2007', 'train', str(tmp_path / 'tfds'))
    with pytest.raises(ValueError) as e:
        source.check()
    assert f"python -m ssd_tf.datasets.tfds voc/2007 --data_dir {tmp_path / 'tfds'}" in \
        str(e.value)
    assert not (tmp_path / 'tfds' / 'downloads').exists()
    assert list(temp.iterdir()) == [] and tempfile.tempdir == str(temp)
    with pytest.raises(ValueError, match='--dataset_dir=no_such_set_xyz: not a tfds data set'):
        tfds_lib.TfdsSource('no_such_set_xyz', 'train').label_map()


def test_tfds_prepare_command_prepares_on_request(mock_tfds, capsys):
    # under the mock, tfds's download_and_prepare is a no-op: the command's own path runs
    assert tfds_cli.main(['voc/2007', '--data_dir', '/nonexistent/tfds']) == 0
    assert 'voc/2007 prepared in /nonexistent/tfds' in capsys.readouterr().out
    assert tfds_cli.main(['no_such_set_xyz']) == 2
    assert 'not a tfds data set' in capsys.readouterr().err


def test_tfds_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tfds\]'"):
        tfds_lib.TfdsSource('voc/2007', 'train').label_map()


_TRAIN_UNDER_MOCK = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import tensorflow_datasets as tfds
from absl import app
import tfds_fakes
import train_ssd
with tfds.testing.mock_data(as_dataset_fn=tfds_fakes.fake_as_dataset):
    sys.argv = ['train_ssd.py'] + {args!r}
    app.run(train_ssd.main)
"""


@pytest.fixture
def _reset_flags():
    yield
    flags.FLAGS.unparse_flags()


@pytest.mark.slow
def test_tfds_train_and_eval_commands_end_to_end(tmp_path, mock_tfds, _reset_flags):
    train_dir = str(tmp_path / 'run')
    args = ['--dataset_name=tfds', '--dataset_dir=voc/2007', '--dataset_split_name=train',
            '--eval_split_name=test', f'--train_dir={train_dir}', '--batch_size=2',
            '--max_number_of_steps=2', '--log_every_n_steps=1', '--seed=0']
    script = _TRAIN_UNDER_MOCK.format(root=str(ROOT), tests=str(ROOT / 'tests'), args=args)
    p = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       timeout=600, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'tfds voc/2007 split train' in p.stderr
    assert 'VOC07 mAP (test, 3 images)' in p.stdout
    assert labelmap.LabelMap.read(train_dir) == labelmap.VOC_LABEL_MAP
    with open(os.path.join(train_dir, 'config.json')) as f:
        cfg = json.load(f)
    assert (cfg['dataset_name'], cfg['dataset_dir'], cfg['num_classes']) == ('tfds', 'voc/2007',
                                                                            21)
    # eval_ssd.py on the run: data set and classes from its config.json, streamed from tfds
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['eval_ssd', f'--checkpoint_path={train_dir}', '--num_sample_images=0',
                 f'--eval_dir={tmp_path / "eval"}'])
    e = eval_ssd.Evaluation()
    assert isinstance(e.source, tfds_lib.TfdsSource) and e.class_names == list(
        labelmap.VOC_CLASSES)
    m = e.evaluate(e.path, e.kind)
    assert m['num_images'] == 3


@pytest.mark.slow
def test_train_refuses_mixed_layouts_before_writing_anything(tmp_path):
    od = _od_shard(tmp_path / 'mix-00000.tfrecord')
    slim = _write(tmp_path / 'mix-00001.tfrecord', [slim_example([[.1, .1, .5, .5]], [1])])
    train_dir = tmp_path / 'run'
    p = subprocess.run([sys.executable, str(ROOT / 'train_ssd.py'), '--dataset_name=tfrecord',
                        f'--dataset_dir={tmp_path / "mix-*.tfrecord"}', '--num_classes=4',
                        f'--train_dir={train_dir}', '--max_number_of_steps=1'],
                       capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert p.returncode == 2
    assert 'mix key layouts' in p.stderr and od in p.stderr and slim in p.stderr
    assert not train_dir.exists()


# ---------------------------------------------------------------------------- ids with gaps
# The OD API's mscoco_label_map.pbtxt in small: ids skip numbers (COCO: 80 classes, 1..90).
GAPPED_PBTXT = """item { name: "/m/01g317" id: 1 display_name: "person" }
item { name: "/m/0k4j" id: 3 display_name: "car" }
# ids 4..89 are not used
item { name: "/m/01x3z" id: 90 display_name: "toothbrush" }
"""
GAPPED_IDS = [1, 3, 90]


def test_label_map_with_gaps_gets_contiguous_training_labels_in_id_order(tmp_path):
    path = tmp_path / 'label_map.pbtxt'
    # items out of id order: training labels follow the ids, not the file
    path.write_text('\n'.join(reversed(GAPPED_PBTXT.strip().splitlines())))
    lm = labelmap.LabelMap.read(path)
    assert lm.names == ('person', 'car', 'toothbrush') and lm.num_classes == 4
    assert lm.dataset_ids == (1, 3, 90) and lm.label_ids == GAPPED_IDS
    assert [lm.dataset_id(i) for i in (1, 2, 3)] == GAPPED_IDS
    assert lm.mapping_description() == ("label map has 3 classes with ids 1..90 (gaps): "
                                        "mapped to training labels 1..3")
    # every format keeps the ids; the training map (a run's or an export's labels.txt) is 1..3
    for name in ('again.pbtxt', 'labels.txt', 'labels.json'):
        assert labelmap.LabelMap.read(lm.write(tmp_path / name)) == lm
    train = lm.training_label_map()
    assert train.names == lm.names and train.label_ids is None and train != lm
    assert labelmap.LabelMap(['a', 'b']).mapping_description() == ''
    with pytest.raises(ValueError, match='increasing'):
        labelmap.LabelMap(['a', 'b'], [3, 2])


@settings(max_examples=30, deadline=None)
@given(ids=st.lists(st.integers(1, 10_000), min_size=1, max_size=12, unique=True),
       probes=st.lists(st.integers(-3, 10_003), max_size=20))
def test_training_labels_are_the_rank_of_known_ids_and_unknown_ids_are_flagged(ids, probes):
    ids = sorted(ids)
    labels, known = tfrecord.training_labels(tf.constant(probes, tf.int64), ids)
    assert labels.numpy().tolist() == [ids.index(p) + 1 if p in ids else -1 for p in probes]
    assert known.numpy().tolist() == [p in ids for p in probes]


def _gapped_shard(tmp_path):
    """OD API records with the dataset ids 1, 3, 90 and one id (5) the label map lacks."""
    (tmp_path / 'label_map.pbtxt').write_text(GAPPED_PBTXT)
    return _write(tmp_path / 'coco_val-00000-of-00001.tfrecord', [
        od_api_example('img1', [[.1, .2, .5, .6], [.3, .3, .9, .8]], [90, 1],
                       ['toothbrush', 'person']),
        od_api_example('img2', [[.0, .0, .4, .4], [.5, .5, 1., 1.]], [3, 5],
                       ['car', 'bus'])])


@pytest.mark.slow
def test_od_api_records_with_gapped_ids_get_contiguous_labels_and_unknown_ids_are_named(
        tmp_path):
    shard = _gapped_shard(tmp_path)
    lm = factory.tfrecord_label_map(shard)  # label_map.pbtxt beside the shard
    assert lm.label_ids == GAPPED_IDS
    problems = check_lib.DataProblems()
    rows = _eval_rows(shard, label_ids=lm.label_ids)
    assert [r['labels'] for r in rows] == [[3, 1], [2]]  # 90 -> 3, 1 -> 1, 3 -> 2; 5 dropped
    np.testing.assert_allclose(rows[1]['bboxes'], [[0., 0., .4, .4]])
    train = data_lib.build_dataset(
        shard, lambda i, l, b: (tf.image.resize(i, (16, 16)), l, b), batch_size=2,
        is_training=True, seed=0, with_gt=True, repeat=False, num_classes=lm.num_classes,
        label_ids=lm.label_ids, report=problems)
    _, t = next(iter(train))
    assert sorted(map(sorted, t['labels'].numpy().tolist())) == [[0, 2], [1, 3]]
    assert problems.dropped_boxes == {tfrecord.LABEL_NOT_IN_MAP: 1}
    example = problems.examples[tfrecord.LABEL_NOT_IN_MAP][0]
    assert f"{shard} record 1" in example and '(label 5,' in example  # the record's own id
    # the data check tool maps alike (without the map, 90 would be 'label out of range')
    n, checked = check_tfrecords(shard, num_classes=4, label_ids=GAPPED_IDS)
    assert n == 2 and checked.dropped_boxes == {tfrecord.LABEL_NOT_IN_MAP: 1}


# train_ssd.py's data step and run files, without training (train_ssd's flags cannot live
# beside eval_ssd's in this process).
_TRAIN_RUN_FILES = """
import sys
sys.path[:0] = [{root!r}]
import train_ssd
from ssd_tf import run_config
cfg = run_config.RunConfig(dataset_name='tfrecord', dataset_dir={shard!r},
                           dataset_split_name='val', model_name='ssd_small',
                           reference_compat=False, train_dir={train_dir!r})
cfg, net, _, label_map, _ = train_ssd.load_training_data(cfg, 1)
train_ssd.write_run_files(cfg, label_map)
"""


@pytest.mark.slow
def test_run_config_and_eval_keep_the_mapping_and_coco_results_use_dataset_ids(
        tmp_path, _reset_flags):
    from ssd_tf import evaluation
    from ssd_tf import run_config
    shard = _gapped_shard(tmp_path)
    train_dir = tmp_path / 'run'
    p = subprocess.run([sys.executable, '-c', _TRAIN_RUN_FILES.format(
        root=str(ROOT), shard=shard, train_dir=str(train_dir))], capture_output=True,
        text=True, timeout=600, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count('label map has 3 classes with ids 1..90 (gaps): mapped to training '
                          'labels 1..3') == 1  # logged once
    back = run_config.RunConfig.read(train_dir)
    assert (back.num_classes, back.label_names, back.label_ids) == (
        4, ['person', 'car', 'toothbrush'], GAPPED_IDS)
    lm = labelmap.LabelMap.read(shard.rsplit('/', 1)[0] + '/label_map.pbtxt')
    # labels.txt: the network's (training) labels; a resume with other ids is refused
    assert labelmap.LabelMap.read(train_dir) == lm.training_label_map()
    assert run_config.resume_conflicts(back, back.replace(label_ids=[1, 2, 3])) == [
        ('label_map (dataset ids of the classes)', GAPPED_IDS, [1, 2, 3])]
    # eval_ssd.py on the run: the classes and ids from its config.json
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['eval_ssd', f'--checkpoint_path={train_dir}'])
    _, source, eval_map, num_classes = eval_ssd.resolve_data(back)
    assert eval_map == lm and num_classes == 4
    # the same classes in shards numbered 1..3 (our converter's labels.txt beside them):
    # their own file says what the records' ids are, not the run's COCO-style ids
    other = tmp_path / 'converted'
    other.mkdir()
    lm.training_label_map().write(other)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['eval_ssd', f'--checkpoint_path={train_dir}',
                 f'--dataset_dir={_write(other / "x_val.tfrecord", [])}'])
    assert eval_ssd.resolve_data(back)[2] == lm.training_label_map()
    # COCO results and ground truth carry the dataset's ids (what pycocotools expects)
    ds = data_lib.build_eval_dataset(source, lambda i, l, b: (
        tf.image.resize(i, (16, 16)), l, b, tf.constant([0., 0., 1., 1.])), batch_size=2,
        label_ids=eval_map.label_ids)

    def detector(images):  # img1's toothbrush (label 3) and a car (label 2) in every image
        b = int(images.shape[0])
        return {'bboxes': np.tile([[[.1, .2, .5, .6], [.0, .0, .4, .4]]], (b, 1, 1)),
                'scores': np.tile([[.9, .8]], (b, 1)), 'classes': np.tile([[3, 2]], (b, 1)),
                'num_detections': np.full([b], 2)}
    run = evaluation.run_evaluation(detector, ds, num_classes, list(eval_map.names),
                                    category_ids=eval_map.label_ids)
    m, paths = evaluation.write_report(run, str(tmp_path / 'eval'), coco=True,
                                       num_sample_images=0)
    with open(paths['coco_results']) as f:
        results = json.load(f)
    assert sorted({r['category_id'] for r in results}) == [3, 90]
    with open(paths['coco_groundtruth']) as f:
        gt = json.load(f)
    assert [(c['id'], c['name']) for c in gt['categories']] == [
        (1, 'person'), (3, 'car'), (90, 'toothbrush')]
    assert sorted(a['category_id'] for a in gt['annotations']) == [1, 3, 90]
    assert m['coco']['AP50'] > 0  # pycocotools matched the ids of both files
