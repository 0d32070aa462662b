"""ssd-tf: the SSD detector for TensorFlow 2 / Keras 3 (see README.md).

`import ssd_tf` imports neither TensorFlow nor Keras: the programs quiet TensorFlow's start-up
logs first (`ssd_tf.quiet`), the REST client (`ssd_tf.serving_rest`) runs on the standard
library, and `import ssd_tf.boxes` does not load the training and export stack.
`ssd_tf.SSDDetector` is the Keras model (`ssd_tf.keras_detector`), imported on first use.

So that `keras.saving.load_model('x.keras')` finds the detector after only `import ssd_tf`,
a stand-in is registered under the detector's Keras name ('ssd_tf>SSDDetector') as soon as
Keras is loaded: now if it already is, otherwise right after Keras's own import finishes (a
one-shot import hook). The stand-in's `from_config` imports `ssd_tf.keras_detector` (whose
class then replaces it in the registry) and builds from it.
"""
import importlib.abc as _abc
import importlib.machinery as _machinery
import sys as _sys

from ssd_tf import quiet as _quiet  # the standard library only

_quiet.setup_if_program()  # train_ssd.py, detect.py, ssd-*, python -m ssd_tf.*: before TF

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


def _register(keras_module):
    keras_module.saving.get_custom_objects().setdefault(_REGISTERED_NAME,
                                                        _SSDDetectorOnFirstLoad)


class _RegisteringLoader:
    """Keras's own loader, which registers the stand-in once Keras has executed; every other
    attribute (resources, is_package, ...) is the wrapped loader's."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _register(module)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _KerasImportHook(_abc.MetaPathFinder):
    """One-shot finder: on the first `import keras` it finds Keras as Python would and wraps
    its loader in `_RegisteringLoader`; it then removes itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'keras':
            return None
        if self in _sys.meta_path:
            _sys.meta_path.remove(self)
        spec = _machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


if 'keras' in _sys.modules:
    _register(_sys.modules['keras'])
elif not any(isinstance(f, _KerasImportHook) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _KerasImportHook())
