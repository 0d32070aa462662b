"""The README's examples as files (`examples/`), each run as a user pastes it: a fresh Python
process in an empty temporary directory; and detect's hint when nothing scores over the
threshold."""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import conftest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'


def _run_example(name, cwd, timeout=1800):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / 'examples' / name)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_keras_quickstart_runs_and_leaves_nothing_behind(tmp_path):
    before = set(os.listdir(tempfile.gettempdir()))
    out = _run_example('keras_quickstart.py', tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "exported: ['assets', 'fingerprint.pb', 'saved_model.pb', 'variables']" in out.stdout
    assert 'detections per test image:' in out.stdout
    assert '`shuffle=True` was passed' not in out.stderr  # SSDDetector.fit's default
    assert os.listdir(tmp_path) == []  # nothing in the working directory
    left = set(os.listdir(tempfile.gettempdir())) - before
    assert not {'ssd.keras', 'ssd_keras_export'} & left, left


@pytest.mark.slow
def test_mediapipe_snippet_prints_every_category_and_closes(tmp_path):
    conftest.import_extra('mediapipe', 'mobile')
    photo = SHARED_DATA / 'raccoon' / 'JPEGImages' / 'raccoon-1.jpg'
    if not photo.is_file():
        pytest.skip('../shared/data is not present (a user checkout has no ../shared)')
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf.export import tflite as export_tflite
    # Random heads sharpened so that boxes score over the snippet's 0.5 (tests/conftest.py).
    net, model = conftest.sharpened_network(0, 'ssd_small', 5., 4.)
    preprocess = prep.image_preprocess_fn(net.params.img_shape)
    with tempfile.TemporaryDirectory() as build:
        path = export_tflite.export_tflite(net, model, lambda im: preprocess(im)[0], build,
                                    ['float32'], label_names=['a', 'b', 'c', 'd'],
                                    metadata='on')['float32']
        shutil.copy(path, tmp_path / 'model_float32.tflite')
    shutil.copy(photo, tmp_path / 'raccoon.jpg')
    out = _run_example('mediapipe_detect.py', tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # No exception printed at exit (the detector is closed by the with block).
    assert 'Exception ignored' not in out.stderr and 'Traceback' not in out.stderr, out.stderr
    lines = out.stdout.splitlines()
    assert lines, 'no detection printed'
    for line in lines:
        label, score, *box = line.split()
        assert label in 'abcd' and float(score) >= 0.5 and len(box) == 4


# ---------------------------------------------------------------------------- detect's hint
def _writer_run(tmp_path, scores):
    from ssd_tf import detect
    image = np.zeros((20, 30, 3), np.uint8)
    path = str(tmp_path / 'a.png')
    with detect.DetectionWriter([path], str(tmp_path / 'out'), ['cat'], 0.3) as writer:
        writer.add(path, image, {'boxes': np.full((len(scores), 4), .5, np.float32),
                                 'classes': np.ones(len(scores), np.int64),
                                 'scores': np.asarray(scores, np.float32)})
    return writer.results


def test_zero_detections_say_the_best_score_and_the_flag(tmp_path):
    from ssd_tf import detect
    results = _writer_run(tmp_path, [0.05, 0.127, 0.01])
    text = detect.summary(results, 'out', 0.3)
    assert text.splitlines()[0] == '1 images, 0 detections, 0 skipped -> out'
    # 0.127 -> floor to hundredths: 0.12, a threshold that keeps that box.
    assert text.splitlines()[1] == ("  no box scored >= 0.3; the highest score was 0.127: to "
                                    "see the best boxes, pass --score_threshold=0.12")
    assert 'highest score' not in detect.summary(_writer_run(tmp_path, [0.9]), 'out', 0.3)
    assert 'no box at all' in detect.summary(_writer_run(tmp_path, []), 'out', 0.3)
    assert len(detect.summary(results, 'out').splitlines()) == 1  # no threshold: no hint
