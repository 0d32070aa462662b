"""tensorflow-datasets (tfds) object detection sets by name, e.g. `voc/2007`, `coco/2017`.

`TfdsSource(name, split, data_dir)` is a source for `ssd_tf.data.build_dataset` /
`build_eval_dataset` (as a TFRecord pattern is): its records stream through the same graph
checks as TFRecords (`tfrecord.check_features`), and the image bytes through the one decoder
(`ssd_tf.images`; tfds is asked not to decode them). Feature mapping (tfds -> pipeline):

  image (encoded)         -> image/encoded      image/filename -> the image id
  objects/bbox            -> boxes (tfds's BBoxFeature is already relative [ymin, xmin, ymax, xmax])
  objects/label (0-based) -> labels 1..C-1 (0 is the background here)
  objects/is_difficult    -> difficult (VOC)    objects/is_truncated -> truncated (VOC)
  objects/is_crowd        -> is_crowd (COCO)

The label map is the names of the `objects/label` ClassLabel. Nothing is downloaded: a data
set that is not prepared in the data dir (`--tfds_data_dir`, else `TFDS_DATA_DIR`, else
tfds's `~/tensorflow_datasets`) is a ValueError naming the command that prepares it, this
`ssd_tf.cli.tfds` (on request only; `tfds build` of tensorflow-datasets 4.9 needs apache-beam):

    python -m ssd_tf.datasets.tfds voc/2007 --data_dir /data/tfds

tensorflow-datasets is the optional extra `tfds` (`pip install -e '.[tfds]'`).
"""
import dataclasses
import os
import tempfile
from typing import Optional

import numpy as np
import tensorflow as tf

from ssd_tf import tfdata_options
from ssd_tf.datasets import labelmap as labelmap_lib

EXTRA = "pip install -e '.[tfds]'  (or: pip install tensorflow-datasets)"
# tfds feature -> slim TFRecord key of the per-object value (labels and boxes apart).
_OBJECT_FLAGS = {'is_difficult': 'image/object/bbox/difficult',
                 'is_truncated': 'image/object/bbox/truncated',
                 'is_crowd': 'image/object/bbox/is_crowd'}
_BOX_KEYS = ('ymin', 'xmin', 'ymax', 'xmax')


def import_tfds():
    """The `tensorflow_datasets` module; ImportError naming the extra when it is absent."""
    try:
        import tensorflow_datasets
    except ImportError as e:
        raise ImportError(f"--dataset_name=tfds needs tensorflow-datasets, which is not "
                          f"installed: {EXTRA}") from e
    return tensorflow_datasets


def data_dir_in_use(data_dir=None):
    """Where tfds looks for prepared data: `data_dir`, else $TFDS_DATA_DIR, else tfds's
    default (`~/tensorflow_datasets`)."""
    return data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
        '~/tensorflow_datasets')


def _builder(name, data_dir):
    """`tfds.builder(name, data_dir=...)`. A builder of a set not prepared in `data_dir` makes
    an empty `tmp...tfds` directory for tfds's metadata lookup and never removes it (one per
    call, tensorflow-datasets 4.9): its temporary files go to a directory of ours, removed
    after the call (the builder has read what they held by then)."""
    tfds = import_tfds()
    try:
        with tempfile.TemporaryDirectory(prefix='ssd_tf_tfds_') as private:
            before, tempfile.tempdir = tempfile.tempdir, private
            try:
                return tfds.builder(name, data_dir=data_dir)
            finally:
                tempfile.tempdir = before
    except (ValueError, KeyError) as e:  # DatasetNotFoundError is a ValueError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"--dataset_dir={name}: not a tfds data set ({first}); give the "
                         f"tfds name and config, e.g. voc/2007 or coco/2017, optionally "
                         f"with :version") from None


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """One split of a tfds object detection data set.

    name: the tfds name with config and optional version, `voc/2007`, `coco/2017:1.1.0`.
    split: as tfds spells it, with its slicing: `train`, `validation`, `test`, `train[:90%]`.
    data_dir: where tfds keeps prepared data (None: $TFDS_DATA_DIR, else its default).
    """
    name: str
    split: str
    data_dir: Optional[str] = None

    def builder(self):
        return _builder(self.name, self.data_dir)

    def _objects(self):
        """The `objects` features; ValueError when the set is not an object detection one."""
        features = self.builder().info.features
        objects = features['objects'] if 'objects' in features else None
        if objects is None or 'image' not in features or not all(
                k in objects for k in ('bbox', 'label')):
            raise ValueError(f"--dataset_dir={self.name}: the tfds features have no image, "
                             f"objects/bbox and objects/label (an object detection data set "
                             f"has them): {features}")
        return objects

    def label_map(self):
        """The LabelMap of the `objects/label` ClassLabel names (tfds label i -> i + 1)."""
        names = self._objects()['label'].names
        try:
            return labelmap_lib.LabelMap(names)
        except ValueError as e:
            raise ValueError(f"--dataset_dir={self.name}: its class names cannot be a label "
                             f"map: {e}") from e

    def num_examples(self):
        """Examples in the split as tfds's metadata says (None when it does not say)."""
        try:
            n = self.builder().info.splits[self.split].num_examples
        except (KeyError, ValueError, TypeError):
            return None
        return int(n) or None

    def describe(self):
        return f"tfds {self.name} split {self.split} (data dir {data_dir_in_use(self.data_dir)})"

    def _as_dataset(self, shuffle_files, seed):
        tfds = import_tfds()
        read_config = tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=True)
        try:
            return self.builder().as_dataset(
                split=self.split, shuffle_files=shuffle_files, read_config=read_config,
                decoders={'image': tfds.decode.SkipDecoding()})
        except AssertionError:  # tfds: "could not find data in ..."
            raise ValueError(
                f"--dataset_dir={self.name}: the tfds data set is not prepared in "
                f"{data_dir_in_use(self.data_dir)}. Nothing is downloaded unless you "
                f"ask: prepare it with `{prepare_command(self.name, self.data_dir)}` (VOC "
                f"2007 about 0.9 GB, COCO 2017 about 25 GB), or point --tfds_data_dir (or "
                f"TFDS_DATA_DIR) at the directory that holds it") from None
        except (ValueError, KeyError) as e:
            raise ValueError(f"--dataset_split_name={self.split}: not a split of tfds "
                             f"{self.name}: {e}") from None

    def check(self):
        """Fails now (ValueError naming the flag) when the data set is unknown, not an
        object detection set, not prepared, or has no such split; reads no example."""
        self._objects()
        self._as_dataset(False, None)

    def stream(self, shuffle=False, seed=None):
        """`{'file', 'record', 'values'}` per example, as `data.build_dataset` reads
        TFRecords (`file` and `record` name the example: the tfds name, split and tfds_id,
        and its index in this stream; `values` is the `tfrecord.object_features` input).
        `shuffle`: tfds shuffles its files (with `seed`)."""
        objects = self._objects()
        flags = [k for k in _OBJECT_FLAGS if k in objects]
        prefix = f"tfds {self.name} {self.split} ("

        def to_values(index, ex):
            obj = ex['objects']
            bbox = tf.reshape(tf.cast(obj['bbox'], tf.float32), [-1, 4])
            values = {'image/encoded': ex['image'],
                      'image/filename': ex.get('image/filename', tf.constant('')),
                      'image/object/bbox/label': tf.cast(obj['label'], tf.int64) + 1}
            for j, k in enumerate(_BOX_KEYS):
                values[f'image/object/bbox/{k}'] = bbox[:, j]
            for k in flags:
                values[_OBJECT_FLAGS[k]] = tf.cast(obj[k], tf.int64)
            where = tf.strings.join([prefix, ex.get('tfds_id', tf.constant('')), ')'])
            return {'file': where, 'record': index, 'values': values}

        return self._as_dataset(shuffle, seed).enumerate().map(to_values)

    def boxes(self, max_examples=None):
        """The ground-truth boxes `[N, 4]` (yxyx relative, float32) of the first
        `max_examples` examples (None: all), for the anchor coverage report; images are not
        decoded. Returns `(boxes, examples_read)`."""
        ds = self._as_dataset(False, None)
        if max_examples is not None:
            ds = ds.take(int(max_examples))
        ds = tfdata_options.configure(
            ds.map(lambda ex: tf.cast(ex['objects']['bbox'], tf.float32)))
        parts = [np.asarray(b, np.float32).reshape(-1, 4) for b in ds.as_numpy_iterator()]
        boxes = np.concatenate(parts) if parts else np.zeros([0, 4], np.float32)
        return boxes, len(parts)


def prepare_command(name, data_dir=None):
    """The command that downloads and prepares tfds `name` into `data_dir`."""
    return f"python -m ssd_tf.datasets.tfds {name} --data_dir {data_dir_in_use(data_dir)}"


def prepare_builder(name, data_dir=None):
    """The tfds builder of `name` in `data_dir` (for `ssd_tf.cli.tfds` to download and prepare);
    ValueError/ImportError when tfds or the name is unusable."""
    return _builder(name, data_dir)


if __name__ == '__main__':
    # The command is ssd_tf.cli.tfds,
    # run without importing it (the library imports no program).
    import runpy
    runpy.run_module('ssd_tf.cli.tfds', run_name='__main__', alter_sys=True)
