"""ssd-tf: the SSD detector for TensorFlow 2 / Keras 3 (see README.md).

`ssd_tf.SSDDetector` is the Keras model (`ssd_tf.keras_detector`); the class is registered
with Keras when it is imported, so `keras.saving.load_model('x.keras')` finds it once
`ssd_tf.SSDDetector` (or `ssd_tf.keras_detector`) has been touched, and whenever `ssd_tf` is
imported after TensorFlow or Keras. `import ssd_tf` alone does not import TensorFlow, so that
the programs can quiet TensorFlow's start-up logs first (`ssd_tf.quiet`) and the REST client
(`ssd_tf.serving_client`) runs on the standard library.
"""
import sys as _sys

from ssd_tf import quiet as _quiet  # the standard library only

_quiet.setup_if_program()  # train_ssd.py, detect.py, ssd-*, python -m ssd_tf.*: before TF


def __getattr__(name):
    if name == 'SSDDetector':
        from ssd_tf.keras_detector import SSDDetector
        return SSDDetector
    raise AttributeError(f"module 'ssd_tf' has no attribute {name!r}")


if 'keras' in _sys.modules or 'tensorflow' in _sys.modules:  # TensorFlow is paid for already
    from ssd_tf.keras_detector import SSDDetector  # noqa: F401,E402
