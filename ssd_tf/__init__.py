"""ssd-tf: the SSD detector for TensorFlow 2 / Keras 3 (see README.md).

`ssd_tf.SSDDetector` is the Keras model (`ssd_tf.keras_detector`), imported on first use so
that `import ssd_tf.boxes` does not load the training and export stack. Importing the package
puts a stand-in under the detector's Keras name ('ssd_tf>SSDDetector'), so that
`keras.saving.load_model('x.keras')` finds the class: the stand-in imports
`ssd_tf.keras_detector` (whose class then replaces it in the registry) and builds from it.
"""
import keras

_REGISTERED_NAME = 'ssd_tf>SSDDetector'


def __getattr__(name):
    if name == 'SSDDetector':
        from ssd_tf.keras_detector import SSDDetector
        return SSDDetector
    raise AttributeError(f"module 'ssd_tf' has no attribute {name!r}")


class _SSDDetectorOnFirstLoad:
    """What Keras finds under 'ssd_tf>SSDDetector' until `ssd_tf.keras_detector` is imported:
    `from_config` imports it and returns `SSDDetector.from_config(config)`."""

    @classmethod
    def from_config(cls, config, custom_objects=None):
        del custom_objects
        from ssd_tf.keras_detector import SSDDetector
        return SSDDetector.from_config(config)

    def get_config(self):  # Keras registers only classes with a get_config
        raise NotImplementedError


keras.saving.get_custom_objects().setdefault(_REGISTERED_NAME, _SSDDetectorOnFirstLoad)
