"""Quiet programs (`ssd_tf.quiet`): TensorFlow's start-up banners and INFO logs are off in the
programs unless --verbose / SSD_TF_VERBOSE=1; real warnings still show; `import ssd_tf` does
not import TensorFlow; SSDDetector.fit on a dataset does not warn about shuffle."""
import os
import pathlib
import subprocess
import sys
import warnings

import pytest

from ssd_tf import quiet

REPO = pathlib.Path(__file__).resolve().parents[1]
# What TensorFlow 2.21 prints on import and first use on a CPU machine (the noise).
NOISE_SEEN = ('oneDNN custom operations are on', 'All log messages before absl::InitializeLog',
              'Could not find cuda drivers', 'failed call to cuInit', 'cpu_feature_guard',
              'Sharding callback duration', '`shuffle=True` was passed')


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for k in ('TF_CPP_MIN_LOG_LEVEL', quiet.ENV_VAR):
        env.pop(k, None)
    env.update(extra)
    return env


# ---------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize('argv, env, want', [
    ([], {}, False),
    (['--verbose'], {}, True),
    (['--verbose=false'], {}, False),
    (['--verbose=1'], {}, True),
    (['--verbose', '--noverbose'], {}, False),
    (['--', '--verbose'], {}, False),  # after --: an argument, not a flag
    ([], {'SSD_TF_VERBOSE': '1'}, True),
    ([], {'SSD_TF_VERBOSE': '0'}, False),
    ([], {'SSD_TF_VERBOSE': 'false'}, False),
])
def test_verbose_from_the_flag_or_the_environment(argv, env, want):
    assert quiet.verbose_requested(argv, env) is want


@pytest.mark.parametrize('argv0, want', [
    ('/x/train_ssd.py', True), ('detect.py', True), ('/usr/bin/ssd-train', True),
    ('-m', True), ('/x/pytest', False), ('my_script.py', False), ('', False)])
def test_which_processes_are_programs(argv0, want):
    assert quiet.is_program(argv0) is want


def test_noise_lines_are_recognised_and_others_kept():
    assert quiet.is_noise('I0000 00:00:1796400688.251978   14646 port.cc:153] oneDNN custom '
                          'operations are on. You may see slightly different numerical')
    assert quiet.is_noise('WARNING: All log messages before absl::InitializeLog() is called '
                          'are written to STDERR\n')
    assert not quiet.is_noise('E0000 some_kernel.cc:10] Invalid argument: bad shape')
    assert not quiet.is_noise('WARNING: only 74.2% of the ground-truth boxes have an anchor')


def test_importing_the_package_does_not_import_tensorflow():
    code = ("import sys, ssd_tf; assert 'tensorflow' not in sys.modules, 'tf imported'; "
            "print(ssd_tf.SSDDetector.__name__, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['SSDDetector', 'True']  # the class loads on first use


# ---------------------------------------------------------------------------- programs
def _export_help(**env):
    """export_savedmodel.py imports TensorFlow at start-up; --helpshort then exits."""
    return subprocess.run([sys.executable, 'export_savedmodel.py', '--helpshort'], cwd=REPO,
                          env=_env(**env), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_program_start_is_quiet_and_verbose_shows_the_banners():
    out = _export_help()  # absl's --helpshort exits with status 1
    assert 'Traceback' not in out.stderr, out.stderr[-2000:]
    assert not [n for n in NOISE_SEEN if n in out.stderr], out.stderr
    assert '--calibration_data' in out.stdout + out.stderr  # the help itself is printed
    loud = _export_help(SSD_TF_VERBOSE='1')
    assert 'oneDNN custom operations are on' in loud.stderr or \
        'All log messages before absl::InitializeLog' in loud.stderr, loud.stderr


@pytest.mark.slow
def test_a_short_training_fits_on_one_screen(tmp_path):
    """train_ssd.py (ssd_small, 3 steps, final evaluation included): at most 40 lines and none
    of the known noise; the program's own lines are there."""
    cmd = [sys.executable, 'train_ssd.py', f'--train_dir={tmp_path / "run"}',
           '--model_name=ssd_small', '--synthetic_num_train=16', '--synthetic_num_test=8',
           '--batch_size=4', '--max_number_of_steps=3', '--anchors=default']
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    lines = text.splitlines()
    assert len(lines) <= 40, text
    assert not [n for n in NOISE_SEEN if n in text], text
    assert 'training ssd_small' in text and 'VOC07 mAP' in text and 'precision: ' in text
    # The project's own warning (the slim anchors cover under 90% of this tiny set's boxes;
    # --anchors=default asked for them: a new run's own default fits them) still shows.
    assert 'WARNING: only' in text


@pytest.mark.slow
def test_detector_fit_on_a_dataset_does_not_warn_about_shuffle():
    import numpy as np
    import keras
    from ssd_tf import SSDDetector
    det = SSDDetector.from_network('ssd_small', label_names=['a', 'b', 'c', 'd'])
    det.compile(optimizer=keras.optimizers.SGD(1e-3))
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import data
    from ssd_tf.datasets import factory
    records, _, _ = factory.load_records('synthetic', None, 'train', num_images=4)
    batch = data.build_dataset(
        records, lambda i, l, b, seed=None: prep.preprocess_for_train(i, l, b, (128, 128),
                                                                      seed=seed),
        det.encode_targets, batch_size=2).take(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        det.fit(batch, epochs=1, verbose=0)
    assert not [w for w in caught if 'shuffle' in str(w.message)], \
        [str(w.message) for w in caught]
    # numpy input keeps Keras's default shuffle=True (no dataset: nothing to warn about).
    assert np.isfinite(det.evaluate(batch, verbose=0, return_dict=True)['loss'])
