"""int8 calibration sources (`ssd_tf.calibration`, `export_savedmodel.py --calibration_data`):
the run's data by default through each reader (VOC, COCO, TFRecord, tfds, synthetic), the
explicit specs, the old `--dataset_dir` flag, and the export's summary lines.

Images are solid colours, so a bilinear resize to any size keeps every pixel: the expected
calibration image of a colour c is c everywhere (hand golden, no resize computed here)."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import conftest
from ssd_tf import calibration
from ssd_tf import run_config
from ssd_tf.datasets import factory
from ssd_tf.datasets import synthetic
from ssd_tf.datasets import tfrecord

REPO = pathlib.Path(__file__).resolve().parents[1]
COLOURS = [(200, 10, 30), (5, 250, 100), (60, 70, 80)]
SHAPE = (16, 24)


def _png(colour, h=30, w=40):
    return tf.io.encode_png(np.full((h, w, 3), colour, np.uint8)).numpy()


def _voc(root, colours=COLOURS, split='train'):
    """A VOC root whose image i is colour i (one 'raccoon' box each)."""
    for sub in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f'im{i}' for i in range(len(colours))]
    for image_id, colour in zip(ids, colours):
        # PNG bytes under a .jpg name: read by content (lossless, so the colour is exact).
        (root / 'JPEGImages' / f'{image_id}.jpg').write_bytes(_png(colour))
        (root / 'Annotations' / f'{image_id}.xml').write_text(
            f'<annotation><filename>{image_id}.jpg</filename><size><width>40</width>'
            f'<height>30</height><depth>3</depth></size><object><name>raccoon</name>'
            f'<difficult>0</difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax>'
            f'<ymax>25</ymax></bndbox></object></annotation>')
    (root / 'ImageSets' / 'Main' / f'{split}.txt').write_text(''.join(i + '\n' for i in ids))
    return str(root)


def _colours_of(images):
    """The one colour of each calibration image (asserting it is one colour)."""
    out = []
    for im in images:
        assert im.shape == (1,) + SHAPE + (3,) and im.dtype == np.uint8
        flat = im.reshape(-1, 3)
        assert (flat == flat[0]).all()
        out.append(tuple(int(v) for v in flat[0]))
    return out


def _config(**kw):
    return run_config.RunConfig.from_dict(kw)


# ---------------------------------------------------------------------------- specs
def test_specs_parse_to_sources_and_bad_ones_name_the_flag(tmp_path):
    voc_dir = _voc(tmp_path / 'voc')
    run = _config(dataset_name='voc', dataset_dir=voc_dir, dataset_split_name='trainval')
    src = calibration.parse_spec(None, run)
    assert (src.kind, src.dataset_dir, src.split, src.origin) == ('voc', voc_dir, 'trainval',
                                                                  'run')
    assert calibration.parse_spec('run', run) == src
    assert calibration.parse_spec('synthetic', run).kind == 'synthetic'
    coco = calibration.parse_spec('coco:/data/coco', run, split='val2017')
    assert (coco.kind, coco.dataset_dir, coco.split) == ('coco', '/data/coco', 'val2017')
    tfds_run = _config(dataset_name='tfds', dataset_dir='voc/2007', tfds_data_dir='/tfds')
    t = calibration.parse_spec('tfds:coco/2017', tfds_run, split='validation')
    assert (t.kind, t.dataset_dir, t.split, t.tfds_data_dir) == ('tfds', 'coco/2017',
                                                                 'validation', '/tfds')
    # A file pattern keeps its colons after the first.
    assert calibration.parse_spec('tfrecord:gs://b/x-*', None).dataset_dir == 'gs://b/x-*'
    for bad in ('voc', 'voc:', 'pascal:/x', 'synthetic:/x', 'runs'):
        with pytest.raises(ValueError, match=f'--calibration_data={bad}'):
            calibration.parse_spec(bad, run)


def test_old_dataset_dir_flag_is_a_voc_source():
    src = calibration.parse_spec(None, _config(dataset_name='synthetic'), split='val',
                                 legacy_voc_dir='/data/VOC2007')
    assert (src.kind, src.dataset_dir, src.split) == ('voc', '/data/VOC2007', 'val')
    assert src.describe(4) == ("int8 calibration: 4 images of voc /data/VOC2007 split val "
                               "(--dataset_dir)")


def test_default_falls_back_to_synthetic_saying_why_and_run_refuses(tmp_path):
    gone = _config(dataset_name='voc', dataset_dir=str(tmp_path / 'moved'))
    src = calibration.parse_spec(None, gone)
    assert src.kind == 'synthetic' and src.origin == 'default'
    assert str(tmp_path / 'moved') in src.describe(100) and 'not found' in src.describe(100)
    with pytest.raises(ValueError, match='--calibration_data=run.*moved.*not found'):
        calibration.parse_spec('run', gone)
    # A slim checkpoint has no run config.
    assert 'no run config' in calibration.parse_spec(None, None).describe(5)
    with pytest.raises(ValueError, match='no run config'):
        calibration.parse_spec('run', None)
    with pytest.raises(ValueError, match='TFRecord files .* not found'):
        calibration.parse_spec('run', _config(dataset_name='tfrecord',
                                              dataset_dir=str(tmp_path / 'x-*')))


def test_describe_names_the_source_the_count_and_why(tmp_path):
    src = calibration.parse_spec(None, _config(dataset_name='voc',
                                               dataset_dir=_voc(tmp_path / 'r')))
    assert src.describe(3) == (f"int8 calibration: 3 images of voc {tmp_path / 'r'} split "
                               f"train (the run's training data)")
    assert calibration.parse_spec('synthetic', None).describe(100) == \
        "int8 calibration: 100 images of synthetic shapes (--calibration_data)"


# ---------------------------------------------------------------------------- readers
def test_voc_source_reads_the_images_in_order_up_to_the_limit(tmp_path):
    src = calibration.parse_spec(None, _config(dataset_name='voc',
                                               dataset_dir=_voc(tmp_path / 'voc')))
    assert _colours_of(calibration.calibration_images(src, SHAPE, 100)) == COLOURS
    assert _colours_of(calibration.calibration_images(src, SHAPE, 2)) == COLOURS[:2]


def test_coco_source_from_a_hand_written_json(tmp_path):
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'val2017').mkdir()
    for i, colour in enumerate(COLOURS[:2]):
        (tmp_path / 'val2017' / f'{i}.png').write_bytes(_png(colour, 20, 30))
    (tmp_path / 'annotations' / 'instances_val2017.json').write_text(json.dumps({
        'images': [{'id': 1, 'file_name': '0.png', 'height': 20, 'width': 30},
                   {'id': 2, 'file_name': '1.png', 'height': 20, 'width': 30}],
        'categories': [{'id': 1, 'name': 'raccoon'}],
        'annotations': [{'id': 5, 'image_id': 1, 'category_id': 1, 'bbox': [1, 1, 10, 10],
                         'iscrowd': 0}]}))
    src = calibration.parse_spec(f'coco:{tmp_path}', None, split='val2017')
    assert _colours_of(calibration.calibration_images(src, SHAPE)) == COLOURS[:2]
    run = _config(dataset_name='coco', dataset_dir=str(tmp_path), dataset_split_name='val2017')
    assert _colours_of(calibration.calibration_images(calibration.parse_spec(None, run),
                                                      SHAPE)) == COLOURS[:2]


@pytest.mark.parametrize('layout', [tfrecord.SLIM, tfrecord.OD_API])
def test_tfrecord_source_of_the_converter_in_either_layout(tmp_path, layout):
    records, _, _ = factory.load_records('voc', _voc(tmp_path / 'voc'), 'train')
    tfrecord.write_tfrecords(records, str(tmp_path / 'rec'), 'raccoon', 'train', num_shards=2,
                             layout=layout)
    pattern = str(tmp_path / 'rec' / 'raccoon_train_*')
    run = _config(dataset_name='tfrecord', dataset_dir=pattern)
    got = _colours_of(calibration.calibration_images(calibration.parse_spec(None, run), SHAPE))
    # Two shards written round-robin (0, 2 | 1) and read file by file.
    assert sorted(got) == sorted(COLOURS) and len(got) == 3
    assert len(calibration.calibration_images(
        calibration.parse_spec(f'tfrecord:{pattern}', None), SHAPE, 2)) == 2


def test_tfds_source_through_the_tfds_fakes():
    tfds = conftest.import_extra('tensorflow_datasets', 'tfds')
    import tfds_fakes
    with tfds.testing.mock_data(as_dataset_fn=tfds_fakes.fake_as_dataset):
        run = _config(dataset_name='tfds', dataset_dir='voc/2007', dataset_split_name='test')
        src = calibration.parse_spec(None, run)
        assert src.kind == 'tfds' and src.origin == 'run'
        # The fakes' images are 40x60, 41x60, 42x60 random pixels (seeds 0, 1, 2): resized
        # to their own size (40x60) the first comes back pixel for pixel.
        got = calibration.calibration_images(src, (40, 60), 2)
    first = np.random.RandomState(0).randint(0, 255, (40, 60, 3)).astype(np.uint8)
    assert len(got) == 2
    np.testing.assert_array_equal(got[0][0], first)


def test_synthetic_source_follows_the_runs_mode_and_seed():
    run = _config(dataset_name='synthetic', synthetic_objects='small', seed=3)
    src = calibration.parse_spec(None, run)
    assert (src.kind, src.synthetic_objects, src.seed, src.origin) == ('synthetic', 'small', 3,
                                                                       'run')
    assert 'synthetic small objects' in src.describe(2)
    got = list(calibration.source_images(src, 2))
    records = synthetic.make_synthetic_split('train', 2, 3, objects='small')
    assert len(got) == 2
    np.testing.assert_array_equal(got[1], records[1].image)
    other = synthetic.make_synthetic_split('train', 2, 0, objects='small')
    assert not np.array_equal(got[1], other[1].image)  # the run's seed, not seed 0


def test_a_source_without_images_is_a_clear_error(tmp_path):
    root = tmp_path / 'voc'
    _voc(root)
    (root / 'ImageSets' / 'Main' / 'val.txt').write_text('')
    with pytest.raises(ValueError, match=f'no image.*voc {root} split val'):
        calibration.calibration_images(calibration.parse_spec(f'voc:{root}', None, 'val'),
                                       SHAPE)


# ---------------------------------------------------------------------------- the program
@pytest.mark.slow
def test_export_summary_says_what_calibrated_int8_and_the_metadata(tmp_path):
    """export_savedmodel.py with the old --dataset_dir flag and int8: the summary names the
    VOC folder and the number of images, and the metadata line."""
    from conftest import sharpened_network
    net, model = sharpened_network(0, 'ssd_small', 5., 4.)
    train_dir = tmp_path / 'train'
    ckpt = tf.train.Checkpoint(model=model, global_step=tf.Variable(1, dtype=tf.int64))
    tf.train.CheckpointManager(ckpt, str(train_dir), 1, checkpoint_name='ckpt').save()
    voc_dir = _voc(tmp_path / 'voc')
    (train_dir / 'config.json').write_text(json.dumps(dict(
        model_name='ssd_small', num_classes=5, image_shape=[128, 128],
        label_names=list(synthetic.SYNTHETIC_CLASSES), dataset_name='synthetic')))
    out = subprocess.run(
        [sys.executable, str(REPO / 'export_savedmodel.py'), f'--checkpoint_path={train_dir}',
         f'--output_dir={tmp_path / "serving"}', '--tflite_quantization=int8',
         f'--dataset_dir={voc_dir}', '--tflite_metadata=off'],
        cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"int8 calibration: 3 images of voc {voc_dir} split train (--dataset_dir)" \
        in out.stdout
    assert "TFLite metadata: none (--tflite_metadata=off" in out.stdout
    assert (tmp_path / 'serving' / '1' / 'tflite' / 'model_int8.tflite').is_file()
