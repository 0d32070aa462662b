import os
import pathlib

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


@pytest.fixture
def shared_data():
    """Path of ../shared/data (raccoon, bccd); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip('../shared/data is not present (a user checkout has no ../shared)')
    return SHARED_DATA


# `.ci/run` installs every optional extra and sets this: there a missing extra is a failure,
# not a skip. A user checkout without an extra skips its tests with the install line.
REQUIRE_EXTRAS = bool(os.environ.get('SSD_TF_REQUIRE_EXTRAS'))


def import_extra(module, extra):
    """Imports `module` of the optional extra `extra` (e.g. 'mediapipe', 'mobile'): skips the
    test with the install line when it is missing, or fails under SSD_TF_REQUIRE_EXTRAS."""
    if REQUIRE_EXTRAS:
        import importlib
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"pip install -e '.[{extra}]'")


def sharpen_class_heads(model, num_classes, scale=5., background_bias=4.):
    """Scales the class-head kernels (`*_conv_cls`) of a randomly initialised SSD by `scale`
    and raises their background biases by `background_bias`, so that scores depend strongly
    on the image: some detections score > 0.5, many stay low (raw random heads give ~uniform
    1/C scores, where the NMS order is arbitrary). Channel a*C + c is class c of anchor a."""
    for layer in model.layers:
        if layer.name.endswith('_conv_cls'):
            kernel, bias = layer.get_weights()
            bias = bias.reshape(-1, num_classes)
            bias[:, 0] += background_bias
            layer.set_weights([kernel * scale, bias.reshape(-1)])


def sharpened_network(seed, name='ssd_small', scale=5., background_bias=4.):
    """`(net, model)`: network `name` with seeded random weights and sharpened class heads
    (`sharpen_class_heads`), the model the export and serving tests export."""
    import keras
    from nets import nets_factory
    keras.utils.set_random_seed(seed)
    net = nets_factory.get_network(name)()
    model = net.keras_model()
    sharpen_class_heads(model, net.params.num_classes, scale, background_bias)
    return net, model


def quiet_progress(total, start=0):
    """A `training.ProgressBar` for in-process training tests: prints nothing and keeps its
    messages in `.messages`."""
    from ssd_tf import training

    class Quiet(training.ProgressBar):
        def __init__(self):
            super().__init__(total, start, 1000, stream=open(os.devnull, 'w'))
            self.messages = []

        def message(self, text):
            self.messages.append(text)
    return Quiet()


def assert_train_flag_refused(tmp_path, args, needle):
    """train_ssd.py with `args` fails at once: non-zero exit, `needle` in its stderr, no
    traceback, and nothing written to its --train_dir (`tmp_path/r`)."""
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / 'train_ssd.py'), '--train_dir',
                        str(tmp_path / 'r')] + list(args), capture_output=True, text=True,
                       timeout=120, cwd=root, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    assert r.returncode != 0 and needle in r.stderr, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr
    assert not (tmp_path / 'r').exists()
