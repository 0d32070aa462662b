import keras, numpy as np
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
detector.save('/tmp/ssd.keras'); detector = keras.saving.load_model('/tmp/ssd.keras')
detector.export('/tmp/ssd_keras_export')  # /tmp/ssd_keras_export/1: export_savedmodel.py's model
