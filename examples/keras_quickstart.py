"""The README's Keras example: train ssd_small on synthetic shapes with SSDDetector.fit,
predict, save and load the .keras file, export a SavedModel. Everything it writes goes into a
temporary directory of its own, removed at the end."""
import os
import tempfile

import keras
import numpy as np

from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import SSDDetector, data
from ssd_tf.datasets import factory

records, label_map, _ = factory.load_records('synthetic', None, 'train', num_images=256)
detector = SSDDetector.from_network('ssd_small', label_names=label_map.names)
augment = lambda i, l, b, seed=None: prep.preprocess_for_train(i, l, b, (128, 128), seed=seed)
train = data.build_dataset(records, augment, detector.encode_targets, batch_size=32)
detector.compile(optimizer=keras.optimizers.Adam(1e-3))  # loss options: see below
detector.fit(train, steps_per_epoch=20, epochs=2)
test, _, _ = factory.load_records('synthetic', None, 'test', num_images=4, image_size=128)
out = detector.predict(np.stack([r.image for r in test]))  # boxes, classes, scores, num_detections
with tempfile.TemporaryDirectory() as tmp:
    detector.save(os.path.join(tmp, 'ssd.keras'))
    detector = keras.saving.load_model(os.path.join(tmp, 'ssd.keras'))
    detector.export(os.path.join(tmp, 'export'))  # export/1: export_savedmodel.py's model
    print('exported:', sorted(os.listdir(os.path.join(tmp, 'export', '1'))))
print('detections per test image:', [int(n) for n in out['num_detections']])
