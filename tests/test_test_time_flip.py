"""Test-time flip (`postprocess.average_mirrored`, `postprocess.detections_of`, --test_time_flip
in eval_ssd.py, detect.py and export_savedmodel.py): a hand-derived average, mirror
equivariance of the flipped detector (which the plain one lacks), and the evaluation's and the
export's detectors agreeing."""
import cv2
import numpy as np
import pytest
import tensorflow as tf

from conftest import sharpened_network
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import evaluation
from ssd_tf import postprocess
from ssd_tf.export import saved_model as export


def test_average_mirrored_golden():
    # one layer: H 1, W 2, A 1, C 2. The mirrored pass's column 1 sees the image's column 0.
    p = tf.constant([[[[[.2, .8]], [[.6, .4]]]]])                      # [1, 1, 2, 1, 2]
    mp = tf.constant([[[[[0., 1.]], [[.5, .5]]]]])
    b = tf.constant([[[[[.1, .1, .3, .4]], [[.1, .6, .3, .9]]]]])      # [1, 1, 2, 1, 4]
    mb = tf.constant([[[[[0., .05, .2, .45]], [[.2, .62, .4, .94]]]]])
    (avg_p,), (avg_b,) = postprocess.average_mirrored([p], [b], [mp], [mb])
    # column 0: (.2 + .5) / 2, (.8 + .5) / 2; column 1: (.6 + 0) / 2, (.4 + 1) / 2
    np.testing.assert_allclose(avg_p.numpy(), [[[[[.35, .65]], [[.3, .7]]]]], atol=1e-7)
    # column 0: [.1, .1, .3, .4] and mirrored column 1 [.2, 1 - .94, .4, 1 - .62] = [.2, .06,
    # .4, .38] -> [.15, .08, .35, .39]; column 1: [.1, .6, .3, .9] and [0, .55, .2, .95]
    np.testing.assert_allclose(avg_b.numpy(), [[[[[.15, .08, .35, .39]],
                                                 [[.05, .575, .25, .925]]]]], atol=1e-7)


@pytest.fixture(scope='module')
def network():
    return sharpened_network(7, 'ssd_small')


def _photos(n, size=128, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([cv2.resize(rng.integers(0, 256, (size // 8, size // 8, 3), np.uint8),
                                (size, size), interpolation=cv2.INTER_NEAREST)
                     for _ in range(n)])


def _mirror(boxes):
    return np.stack([boxes[..., 0], 1. - boxes[..., 3], boxes[..., 2], 1. - boxes[..., 1]], -1)


def _sorted(det, i):
    n = int(det['num_detections'][i])
    order = np.lexsort((det['bboxes'][i, :n, 1].numpy(), -det['scores'][i, :n].numpy()))
    return (det['scores'][i, :n].numpy()[order], det['classes'][i, :n].numpy()[order],
            det['bboxes'][i, :n].numpy()[order])


@pytest.mark.parametrize('flip', [True, False])
def test_the_flipped_detector_is_mirror_equivariant_and_the_plain_one_is_not(network, flip):
    """Detecting on the mirror image with --test_time_flip gives the mirrored detections of
    the image (same scores and classes; ssd_small's anchor grid is mirror-symmetric); without
    it a network with random weights does not."""
    net, model = network
    images = tf.constant(_photos(2).astype(np.float32) - 120.)
    anchors = net.anchors()
    a = postprocess.detections_of(model, images, net, anchors, test_time_flip=flip)
    b = postprocess.detections_of(model, tf.reverse(images, [2]), net, anchors,
                                  test_time_flip=flip)
    same = []
    for i in range(2):
        sa, ca, ba = _sorted(a, i)
        sb, cb, bb = _sorted(b, i)
        assert len(sa) > 10
        order = np.lexsort((_mirror(bb)[:, 1], -sb))
        same.append(len(sa) == len(sb) and np.allclose(sa, sb[order], atol=1e-6) and
                    np.array_equal(ca, cb[order]) and
                    np.allclose(ba, _mirror(bb)[order], atol=1e-5))
    assert all(same) if flip else not any(same)


def test_flip_changes_the_detections(network):
    net, model = network
    images = tf.constant(_photos(1, seed=1).astype(np.float32) - 120.)
    anchors = net.anchors()
    plain = postprocess.detections_of(model, images, net, anchors)
    flipped = postprocess.detections_of(model, images, net, anchors, test_time_flip=True)
    assert not np.allclose(_sorted(plain, 0)[0][:5], _sorted(flipped, 0)[0][:5])


def test_the_evaluation_and_the_export_detect_alike_with_flip(network):
    """evaluation.keras_detector (eval_ssd.py) and DetectionModule (export, detect.py, tiled
    evaluation) with test_time_flip: the same detections for the same pre-processed input."""
    net, model = network
    pre = prep.image_preprocess_fn(tuple(net.params.img_shape))
    photos = _photos(2, seed=2)                       # already the input size: no resize
    inputs = tf.stack([pre(tf.constant(p))[0] for p in photos])
    ev = evaluation.keras_detector(model, net, test_time_flip=True)(inputs)
    plain = evaluation.keras_detector(model, net)(inputs)
    module = export.DetectionModule(net, model, pre, max_detections=postprocess.KEEP_TOP_K,
                                    test_time_flip=True)
    ex = module.detect_images(tf.constant(photos))
    for i in range(2):
        n = int(ev['num_detections'][i])
        assert n == int(ex['num_detections'][i]) > 0
        np.testing.assert_allclose(ev['scores'][i, :n], ex['detection_scores'][i, :n], atol=1e-6)
        np.testing.assert_allclose(ev['bboxes'][i, :n], ex['detection_boxes'][i, :n], atol=1e-6)
        assert not np.allclose(ev['scores'][i, :5], plain['scores'][i, :5])


def _png(image):
    return tf.io.encode_png(tf.constant(image)).numpy()


def test_with_tiles_every_pass_is_flipped(network):
    """Tiled and flipped: each detection is one of the flipped (untiled) module's on the whole
    image or on one tile, cut out by hand and mapped back (`y = y0 + y' (y1 - y0)`); without
    the flip the tiled module's detections are not all among those."""
    net, model = network
    pre = prep.image_preprocess_fn(tuple(net.params.img_shape))
    image = cv2.resize(_photos(1, size=64, seed=3)[0], (390, 260),
                       interpolation=cv2.INTER_NEAREST)
    h, w = image.shape[:2]
    # 2x2, overlap 1/4 on 260 x 390 (test_tiling's windows): rows 0-149 and 111-260,
    # columns 0-223 and 167-390
    passes = [(0, 0, h, w)] + [(r0, c0, r1, c1) for r0, r1 in ((0, 149), (111, 260))
                               for c0, c1 in ((0, 223), (167, 390))]

    def candidates(module):
        out = []
        for r0, c0, r1, c1 in passes:
            d = module.detect_bytes(tf.constant([_png(image[r0:r1, c0:c1])]))
            k = int(d['num_detections'][0])
            b = d['detection_boxes'][0, :k].numpy().astype(np.float64)
            mapped = np.stack([(r0 + b[:, 0] * (r1 - r0)) / h, (c0 + b[:, 1] * (c1 - c0)) / w,
                               (r0 + b[:, 2] * (r1 - r0)) / h, (c0 + b[:, 3] * (c1 - c0)) / w], 1)
            out += list(zip(mapped, d['detection_scores'][0, :k].numpy(),
                            d['detection_classes'][0, :k].numpy()))
        return out

    def found(out, cands):
        n = int(out['num_detections'][0])
        assert n > 0
        return [any(c == cl and abs(s - sc) < 1e-5 and np.abs(b - box).max() < 1e-4
                    for b, s, c in cands)
                for box, sc, cl in zip(out['detection_boxes'][0, :n].numpy(),
                                       out['detection_scores'][0, :n].numpy(),
                                       out['detection_classes'][0, :n].numpy())]
    flipped = candidates(export.DetectionModule(net, model, pre, max_detections=100,
                                                test_time_flip=True))
    both = export.DetectionModule(net, model, pre, max_detections=100, tiles=(2, 2, .25, 0.),
                                  test_time_flip=True)
    tiles_only = export.DetectionModule(net, model, pre, max_detections=100,
                                        tiles=(2, 2, .25, 0.))
    data = tf.constant([_png(image)])
    assert all(found(both.detect_bytes(data), flipped))
    assert not all(found(tiles_only.detect_bytes(data), flipped))


# ------------------------------------------------------------------ the run's own choice
def test_run_test_time_flip_resolution():
    from ssd_tf import builder
    from ssd_tf import run_config
    flipped = run_config.RunConfig(test_time_flip=True)
    older = run_config.RunConfig.from_dict({'model_name': 'ssd_small'})  # before the field
    assert builder.run_test_time_flip(None, flipped) is True      # unset: the run's
    assert builder.run_test_time_flip(False, flipped) is False    # --notest_time_flip
    assert builder.run_test_time_flip(True, older) is True        # --test_time_flip
    assert builder.run_test_time_flip(None, older) is False
    assert builder.run_test_time_flip(None, run_config.RunConfig()) is False  # no config
    assert builder.run_test_time_flip(None, None) is False


def test_keras_detection_settings_take_the_flip():
    from ssd_tf import keras_detector
    assert keras_detector.detection_settings()['test_time_flip'] is False
    assert keras_detector.detection_settings({'test_time_flip': True})['test_time_flip'] is True
    for bad in ('yes', None, 2):
        with pytest.raises(ValueError, match='test_time_flip'):
            keras_detector.detection_settings({'test_time_flip': bad})


@pytest.fixture(scope='module')
def flip_run(network, tmp_path_factory):
    """A training directory (Trainer checkpoint, config.json) of `network` whose run was
    trained with --test_time_flip."""
    from ssd_tf import run_config
    from ssd_tf import training
    net, model = network
    d = tmp_path_factory.mktemp('flip_run') / 'train'
    trainer = training.Trainer(net, model, training.build_optimizer('adam', 1e-3),
                               tf.distribute.get_strategy(), str(d), 4)
    trainer.save()
    run_config.RunConfig(model_name='ssd_small', num_classes=net.params.num_classes,
                         image_shape=list(net.params.img_shape),
                         label_names=[f'c{i}' for i in range(1, net.params.num_classes)],
                         test_time_flip=True).write(str(d))
    return d


def test_a_flip_run_is_detected_flipped_unless_told_otherwise(flip_run):
    """detect.make_detector and SSDDetector.from_checkpoint take the run's --test_time_flip
    when not told (the detections equal the explicitly flipped ones, not the plain ones)."""
    import ssd_tf
    from ssd_tf import detect
    photos = _photos(1, seed=4)
    data = _png(photos[0])
    got = {flip: detect.make_detector(str(flip_run), test_time_flip=flip)[0](data, photos[0])
           for flip in (None, True, False)}
    np.testing.assert_allclose(got[None]['scores'], got[True]['scores'], atol=1e-6)
    np.testing.assert_allclose(got[None]['boxes'], got[True]['boxes'], atol=1e-6)
    assert not np.allclose(got[None]['scores'][:5], got[False]['scores'][:5])
    assert ssd_tf.SSDDetector.from_checkpoint(str(flip_run)).detection['test_time_flip']
    told = ssd_tf.SSDDetector.from_checkpoint(str(flip_run),
                                              detection={'test_time_flip': False})
    assert told.detection['test_time_flip'] is False


@pytest.mark.slow
def test_train_eval_and_export_share_the_runs_flip(tmp_path):
    """train_ssd.py --test_time_flip: recorded in config.json and the report; eval_ssd.py on
    the run reports the same numbers without being told, --notest_time_flip others; the export
    flips as the run did (export_config.json), and its SavedModel refuses --notest_time_flip
    in eval_ssd.py."""
    import json
    import os
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')

    def run(script, *args):
        return subprocess.run([sys.executable, str(root / script)] + list(args),
                              capture_output=True, text=True, timeout=600, cwd=root, env=env)
    train_dir = tmp_path / 'run'
    r = run('train_ssd.py', f'--train_dir={train_dir}', '--synthetic_num_train=32',
            '--synthetic_num_test=12', '--batch_size=8', '--max_number_of_steps=30',
            '--log_every_n_steps=10', '--warmup_steps=2', '--test_time_flip')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'images, test-time flip): ' in r.stdout
    assert json.loads((train_dir / 'config.json').read_text())['test_time_flip'] is True
    trained = json.loads((train_dir / 'eval' / 'metrics.json').read_text())
    assert trained['test_time_flip'] is True
    for args, flip in (((), True), (('--notest_time_flip',), False)):
        out = tmp_path / f'eval_{flip}'
        r = run('eval_ssd.py', f'--checkpoint_path={train_dir}', f'--eval_dir={out}',
                '--batch_size=16', *args)
        assert r.returncode == 0, r.stderr[-3000:]
        m = json.loads((out / 'metrics.json').read_text())
        assert m['test_time_flip'] is flip
        assert (m['voc07'] == trained['voc07'] and
                m['num_detections'] == trained['num_detections']) is flip
    r = run('export_savedmodel.py', f'--checkpoint_path={train_dir}',
            f'--output_dir={tmp_path / "export"}')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'test-time flip: on, as the run was trained' in r.stderr
    exported = tmp_path / 'export' / '1'
    assert json.loads((exported / 'assets' / 'export_config.json').read_text())[
        'test_time_flip'] is True
    r = run('eval_ssd.py', f'--checkpoint_path={exported}', f'--eval_dir={tmp_path / "e"}',
            '--notest_time_flip')
    assert r.returncode != 0 and '--notest_time_flip does not apply to a SavedModel' in \
        r.stderr, r.stderr[-2000:]
