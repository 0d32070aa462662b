"""ssd-tf: the SSD detector for TensorFlow 2 / Keras 3 (see README.md).

`ssd_tf.SSDDetector` is the Keras model (`ssd_tf.keras_detector`); importing the package
registers it, so `keras.saving.load_model('x.keras')` finds it.
"""
from ssd_tf.keras_detector import SSDDetector  # noqa: F401
