"""Every dataset the library iterates runs with `tfdata_options`: tf.data's autotuning thread
off (its lost wake-up made deleting an iterator wait up to a minute; `bench/
bench_iterator_delete.py`), and a deterministic order where the pipeline promises one."""
import numpy as np
import pytest
import tensorflow as tf

import conftest
from ssd_tf import anchors_report, calibration, tfdata_options
from ssd_tf import data as data_lib
from ssd_tf.datasets import factory, synthetic, tfrecord


def test_options_turn_the_autotuning_model_off_and_set_determinism_only_when_asked():
    assert tfdata_options.options().autotune.enabled is False
    assert tfdata_options.options().deterministic is None  # unset: tf.data's default
    assert tfdata_options.options(True).deterministic is True
    assert tfdata_options.options(False).deterministic is False
    # A fresh tf.data.Options leaves autotuning on (what the module turns off).
    assert tf.data.Options().autotune.enabled is None


def test_configure_keeps_the_elements_and_the_options_reach_the_transformations_after_it():
    ds = tfdata_options.configure(tf.data.Dataset.range(5), deterministic=True)
    assert list(ds.as_numpy_iterator()) == [0, 1, 2, 3, 4]
    later = ds.map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE).batch(2).prefetch(
        tf.data.AUTOTUNE)
    assert later.options().autotune.enabled is False
    assert later.options().deterministic is True
    assert [b.tolist() for b in later.as_numpy_iterator()] == [[0, 2], [4, 6], [8]]


def _identity(image, labels, bboxes):
    return tf.image.resize(image, (16, 16)), labels, bboxes


@pytest.mark.parametrize('is_training', [True, False])
def test_build_dataset_pipelines_run_without_the_autotuning_thread(is_training):
    records = synthetic.make_synthetic_examples(4, seed=0, image_size=24)
    ds = data_lib.build_dataset(records, _identity, batch_size=2, is_training=is_training,
                                seed=0)
    assert ds.options().autotune.enabled is False
    assert ds.options().deterministic is True
    images, _ = next(iter(ds))
    assert images.shape == (2, 16, 16, 3)


def test_build_dataset_on_tfrecords_runs_without_the_autotuning_thread(tmp_path):
    tfrecord.write_tfrecords(synthetic.make_synthetic_examples(3, seed=0, image_size=24),
                             str(tmp_path), 's', 'train')
    ds = data_lib.build_dataset(str(tmp_path / 's_train_*.tfrecord'), _identity, batch_size=3,
                                is_training=False, num_classes=5)
    assert ds.options().autotune.enabled is False and ds.options().deterministic is True
    assert next(iter(ds))[0].shape[0] == 3


@pytest.fixture
def iterated(monkeypatch):
    """Records `autotune.enabled` of every tf.data dataset iterated while the test runs."""
    seen = []
    original = tf.data.Dataset.__iter__

    def spy(self):
        seen.append(self.options().autotune.enabled)
        return original(self)
    monkeypatch.setattr(tf.data.Dataset, '__iter__', spy)
    return seen


@pytest.fixture
def shards(tmp_path):
    records = synthetic.make_synthetic_examples(3, seed=0, image_size=24)
    tfrecord.write_tfrecords(records, str(tmp_path), 's', 'train', num_shards=2)
    return str(tmp_path / 's_train_*.tfrecord'), records


def test_the_spy_sees_a_plain_dataset_with_autotuning_on(iterated):
    # The spy is what the scan tests rely on: a dataset not configured shows up as None
    # (tf.data's default, on), so a scan that skipped `configure` would fail them.
    list(tf.data.Dataset.range(2))
    list(tf.data.Dataset.range(2).as_numpy_iterator())
    assert iterated == [None, None]


def test_tfrecord_scans_run_without_the_autotuning_thread(iterated, shards):
    pattern, records = shards
    files = tfrecord.match_files(pattern)
    assert tfrecord.detect_layout(files) == 'slim'
    assert len(tfrecord.read_tfrecord_records(pattern)) == 3
    assert data_lib._count_records(files[0]) == (2, False)
    label_map = factory.tfrecord_label_map(pattern)
    assert label_map is not None
    boxes, n = anchors_report.boxes_of_tfrecords(pattern)
    assert n == 3 and len(boxes) == sum(len(r.boxes) for r in records)
    source = calibration.parse_spec(f'tfrecord:{pattern}', None)
    assert len(calibration.calibration_images(source, (16, 16), 2)) == 2
    # layout detection per shard, the reader, the count, the label-text scan per shard, the
    # box scan, calibration: each iterated at least once, none with autotuning.
    assert len(iterated) >= 8
    assert iterated == [False] * len(iterated)


def test_the_tfds_box_scan_runs_without_the_autotuning_thread(iterated):
    tfds = conftest.import_extra('tensorflow_datasets', 'tfds')
    import tfds_fakes
    from ssd_tf.datasets import tfds as tfds_lib
    with tfds.testing.mock_data(as_dataset_fn=tfds_fakes.fake_as_dataset):
        boxes, n = tfds_lib.TfdsSource('voc/2007', 'test').boxes()
    assert n == 3 and boxes.shape[1] == 4
    assert iterated and iterated == [False] * len(iterated)
    np.testing.assert_array_less(-1e-6, boxes)


def test_the_default_prefetch_holds_a_fixed_number_of_batches_across_pauses():
    # prefetch(AUTOTUNE) doubles its buffer each time a pause lets it fill and a burst empties
    # it; the default depth (data.PREFETCH_BATCHES) never runs further ahead. Counted: images
    # the map has prepared minus images the consumer took, after each pause.
    import time
    produced = tf.Variable(0, dtype=tf.int64)

    def counting(image, labels, bboxes):
        with tf.control_dependencies([produced.assign_add(1)]):
            return tf.image.resize(image, (8, 8)), labels, bboxes
    records = synthetic.make_synthetic_examples(16, seed=0, image_size=16)
    ds = data_lib.build_dataset(records, counting, batch_size=1, is_training=True, seed=0,
                                num_parallel_calls=1)
    it, taken, ahead = iter(ds), 0, []
    for _ in range(6):
        for _ in range(12):  # a burst empties the buffer
            next(it)
            taken += 1
        time.sleep(0.4)  # a pause lets it fill
        ahead.append(int(produced.numpy()) - taken)
    # the buffer, plus the few elements in flight in the map and the batch (2 seen here; the
    # prefetch's own tuner reached 10 and 18 in the same loop)
    assert max(ahead) <= data_lib.PREFETCH_BATCHES + 3, ahead
    assert max(ahead) >= data_lib.PREFETCH_BATCHES  # it did fill during the pauses
