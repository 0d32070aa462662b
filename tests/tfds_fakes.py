"""Examples for `tfds.testing.mock_data(as_dataset_fn=fake_as_dataset)` (tfds's own mock,
no download): VOC- and COCO-like examples written and read back by tfds's feature codecs.
A module of its own so that a `train_ssd.py` subprocess can import it (without eval_ssd's
flags)."""
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def _voc_examples():
    """3 VOC-like tfds examples: (dog, difficult person) in each; tfds labels 11 and 14."""
    out = []
    for i in range(3):
        img = np.random.RandomState(i).randint(0, 255, (40 + i, 60, 3)).astype(np.uint8)
        out.append({'image': img, 'image/filename': f'{i:06d}.jpg', 'labels': [11, 14],
                    'labels_no_difficult': [11],
                    'objects': {'bbox': [tfds.features.BBox(.1, .2, .5, .6),
                                         tfds.features.BBox(.3, .3, .9, .8)],
                                'label': [11, 14], 'is_difficult': [False, True],
                                'is_truncated': [True, False], 'pose': [0, 1]}})
    # an inverted box: dropped and reported, the other box kept
    out[2]['objects']['bbox'][0] = tfds.features.BBox(.5, .2, .5, .6)
    return out


def _coco_examples():
    """2 COCO-like examples: a person and a crowd of cars (tfds labels 0 and 2)."""
    out = []
    for i in range(2):
        img = np.random.RandomState(10 + i).randint(0, 255, (30, 50, 3)).astype(np.uint8)
        out.append({'image': img, 'image/filename': f'c{i}.jpg', 'image/id': 100 + i,
                    'objects': {'bbox': [tfds.features.BBox(.1, .1, .4, .5),
                                         tfds.features.BBox(.5, .2, .9, .9)],
                                'label': [0, 2], 'is_crowd': [False, True], 'area': [10, 20],
                                'id': [1, 2]}})
    return out


def fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """`FileReaderBuilder._as_dataset` for `tfds.testing.mock_data(as_dataset_fn=...)`: the
    examples above, serialized and read back by tfds's own feature codecs (as prepared data
    is), honouring `decoders` and `read_config.add_tfds_id`."""
    feats = self.info.features
    examples = _voc_examples() if self.name == 'voc' else _coco_examples()
    serialized = [feats.serialize_example(e) for e in examples]
    ds = tf.data.Dataset.from_tensor_slices(serialized).map(
        lambda s: feats.deserialize_example(s, decoders=decoders))
    if read_config is not None and read_config.add_tfds_id:
        ids = tf.data.Dataset.range(len(serialized)).map(lambda i: tf.strings.join(
            [f'{self.name}-{split}.tfrecord-00000-of-00001__', tf.strings.as_string(i)]))
        ds = tf.data.Dataset.zip((ds, ids)).map(lambda e, i: {**e, 'tfds_id': i})
    return ds
