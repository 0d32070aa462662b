"""SSDDetector (ssd_tf.keras_detector): compile/fit/evaluate on the data pipeline, predict,
.keras round trip, export against export_savedmodel.py, a train_ssd.py checkpoint against
ssd_tf.detect, distribution, mixed precision, steps_per_execution, callbacks, bad inputs.

Tiny: ssd_small (128x128), synthetic images, batches of 4, a few steps each."""
import ast
import json
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import ssd_tf
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import data as data_lib
from ssd_tf import keras_detector
from ssd_tf import postprocess
from ssd_tf import run_config
from ssd_tf import training
from ssd_tf.datasets import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMES = list(synthetic.SYNTHETIC_LABEL_MAP.names)  # circle, cross, rectangle, triangle
IMG = 128
BATCH = 4
# Non-default settings, so that a round trip that lost them would show.
DETECTION = {'keep_top_k': postprocess.MAX_DETECTIONS, 'nms_threshold': 0.5}
LOSS = dict(negative_ratio=2.5, label_smoothing=0.05)


def _eval_prep(image, labels, bboxes):
    return prep.preprocess_for_eval(image, labels, bboxes, out_shape=(IMG, IMG))[:3]


def _dataset(detector, records, repeat=True):
    """Encoded batches of the data pipeline (eval pre-processing: no randomness)."""
    return data_lib.build_dataset(records, _eval_prep, detector.encode_targets, batch_size=BATCH,
                                  is_training=repeat, repeat=repeat, drop_remainder=True,
                                  seed=0)


def _detector(**kwargs):
    return ssd_tf.SSDDetector.from_network('ssd_small', label_names=NAMES,
                                           detection=DETECTION, **kwargs)


@pytest.fixture(scope='module')
def records():
    return synthetic.make_synthetic_examples(16, seed=5, image_size=IMG)


@pytest.fixture(scope='module')
def images(records):
    return np.stack([np.asarray(r.image, np.uint8) for r in records[:BATCH]])


@pytest.fixture(scope='module')
def trained(records):
    """A detector fitted for 12 steps, with the loss on fixed batches before and after."""
    keras.utils.set_random_seed(0)
    det = _detector()
    det.compile(optimizer=keras.optimizers.Adam(2e-3), **LOSS)
    fixed = _dataset(det, records, repeat=False)
    before = det.evaluate(fixed, verbose=0, return_dict=True)
    history = det.fit(_dataset(det, records), steps_per_epoch=6, epochs=2, verbose=0)
    after = det.evaluate(fixed, verbose=0, return_dict=True)
    return dict(detector=det, before=before, after=after, history=history.history, fixed=fixed)


@pytest.fixture(scope='module')
def train_dir(trained, tmp_path_factory):
    """A training directory as train_ssd.py writes it (Trainer checkpoint, config.json,
    labels.txt) holding the trained detector's weights."""
    d = tmp_path_factory.mktemp('keras_run') / 'train'
    det = trained['detector']
    model = det.net.keras_model()
    model.set_weights(det.network.get_weights())
    trainer = training.Trainer(det.net, model, training.build_optimizer('adam', 1e-3),
                               tf.distribute.get_strategy(), str(d), BATCH)
    trainer.save()
    run_config.RunConfig(model_name='ssd_small', num_classes=5, image_shape=[IMG, IMG],
                         label_names=NAMES).write(str(d))
    synthetic.SYNTHETIC_LABEL_MAP.write(str(d / 'labels.txt'))
    return d


def _png(image):
    return tf.io.encode_png(image).numpy()


def _assert_same_detections(a, b, atol=1e-5):
    """Detections `(boxes [N, 4], classes [N], scores [N])` equal up to float noise; rows of
    equal scores may come in either order (a batch of 4 and a batch of 1 differ in the last
    bits), so each row of `a` is matched to a free row of `b`."""
    free = list(range(len(b[2])))
    assert len(a[2]) == len(free)
    for box, cls, score in zip(*a):
        match = [j for j in free if b[1][j] == cls and abs(b[2][j] - score) <= atol and
                 np.abs(b[0][j] - box).max() <= atol]
        assert match, f"no match for class {cls} score {score} box {box}"
        free.remove(match[0])


# ---------------------------------------------------------------------------- fit
@pytest.mark.slow
def test_fit_lowers_the_loss_and_reports_its_terms(trained):
    before, after, history = trained['before'], trained['after'], trained['history']
    assert set(history) == {'loss', 'cls_loss', 'loc_loss'}
    assert all(np.isfinite(v) for k in history for v in history[k])
    assert after['loss'] < 0.85 * before['loss']
    # loss = cls_loss + loc_loss + weight decay (train_ssd.py's 0.0005 by default)
    reg = after['loss'] - after['cls_loss'] - after['loc_loss']
    assert reg > 0
    det = trained['detector']
    expected = tf.add_n([tf.cast(l, tf.float32) for l in det.network.losses]).numpy()
    np.testing.assert_allclose(reg, expected, rtol=1e-4)


@pytest.mark.slow
def test_evaluate_runs_the_one_training_loss(trained):
    """test_step's terms equal training.replica_losses on the same batch (what train_ssd.py's
    DistributedStep computes) with the compiled options."""
    det = trained['detector']
    images, targets = next(iter(trained['fixed']))
    got = det.evaluate(images, targets, batch_size=BATCH, verbose=0, return_dict=True)
    out = det.network(images, training=False)
    cfg = training.LossConfig(negative_ratio=2.5, label_smoothing=0.05)
    n_pos = training.count_positives(det.net, targets, cfg)
    ref = training.replica_losses(det.net, out, targets, cfg, n_pos, 1., det.network.losses)
    np.testing.assert_allclose(got['loss'], ref['total'].numpy(), rtol=1e-5)
    np.testing.assert_allclose(got['loc_loss'], ref['localization'].numpy(), rtol=1e-5)
    np.testing.assert_allclose(got['cls_loss'], (ref['cross_entropy_pos'] +
                                                 ref['cross_entropy_neg']).numpy(), rtol=1e-5)


@pytest.mark.slow
def test_compile_defaults_are_train_ssd_defaults():
    """Read from train_ssd.py's flag definitions (without importing its flags here)."""
    tree = ast.parse((REPO / 'train_ssd.py').read_text())
    defaults = {c.args[0].value: ast.literal_eval(c.args[1]) for c in ast.walk(tree)
                if isinstance(c, ast.Call) and getattr(c.func, 'attr', '').startswith('DEFINE')
                and len(c.args) > 1 and isinstance(c.args[0], ast.Constant)}
    det = _detector()
    det.compile()
    cfg = det.loss_config
    assert (cfg.match_threshold, cfg.negative_ratio, cfg.alpha, cfg.label_smoothing) == (
        defaults['match_threshold'], defaults['negative_ratio'], defaults['loss_alpha'],
        defaults['label_smoothing'])
    assert det.weight_decay == keras_detector.DEFAULT_WEIGHT_DECAY == defaults['weight_decay']
    assert det.network.losses  # weight decay on the kernels, as train_ssd.py builds them
    assert isinstance(det.optimizer, keras.optimizers.Adam)
    assert keras_detector.SSDDetector(det.net, weight_decay=0).network.losses == []


# ---------------------------------------------------------------------------- save / export
@pytest.mark.slow
def test_keras_round_trip_gives_identical_predictions(trained, images, tmp_path):
    det = trained['detector']
    path = tmp_path / 'ssd.keras'
    det.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ssd_tf.SSDDetector)
    assert loaded.net.model_name == 'ssd_small' and type(loaded.net) is type(det.net)
    assert loaded.net.params == det.net.params and loaded.net.params.num_classes == 5
    assert loaded.label_names == tuple(NAMES)
    assert loaded.detection == det.detection == keras_detector.detection_settings(DETECTION)
    assert loaded.loss_config == det.loss_config == training.LossConfig(**{
        'negative_ratio': 2.5, 'label_smoothing': 0.05})
    assert loaded.weight_decay == det.weight_decay
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    a, b = det.predict(images, verbose=0), loaded.predict(images, verbose=0)
    assert set(a) == {'boxes', 'classes', 'scores', 'num_detections'}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a['boxes'].shape == (BATCH, DETECTION['keep_top_k'], 4)
    assert int(a['num_detections'].min()) > 0


@pytest.mark.slow
def test_predict_equals_ssd_tf_detect_on_a_train_ssd_checkpoint(train_dir, trained, images):
    from ssd_tf import detect
    from nets import nets_factory
    # ssd_tf.detect's settings: export_savedmodel.py's defaults (100 detections an image)
    det = ssd_tf.SSDDetector.from_checkpoint(
        str(train_dir), detection={'keep_top_k': postprocess.MAX_DETECTIONS})
    assert det.label_names == tuple(NAMES)
    for a, b in zip(det.network.get_weights(), trained['detector'].network.get_weights()):
        np.testing.assert_array_equal(a, b)
    got = det.predict(images, verbose=0)
    fn, labels = detect.make_detector(str(train_dir))
    assert labels == NAMES
    for i, image in enumerate(images):
        ref = fn(_png(image), image)
        n = int(got['num_detections'][i])
        assert n == len(ref['scores']) > 0
        _assert_same_detections((got['boxes'][i, :n], got['classes'][i, :n],
                                 got['scores'][i, :n]),
                                (ref['boxes'], ref['classes'], ref['scores']))
    # float32 images are taken as pre-processed (the pipeline's): the same detections
    whitened = np.stack([_eval_prep(im, [], np.zeros((0, 4), np.float32))[0] for im in images])
    again = det.predict(whitened, verbose=0)
    np.testing.assert_allclose(again['scores'], got['scores'], atol=1e-6)


@pytest.mark.slow
def test_export_equals_export_savedmodel_script(train_dir, images, tmp_path):
    det = ssd_tf.SSDDetector.from_checkpoint(str(train_dir))
    ours = det.export(str(tmp_path / 'keras'), verbose=False)
    assert ours == str(tmp_path / 'keras' / '1')
    script = tmp_path / 'script'
    subprocess.run([sys.executable, str(REPO / 'export_savedmodel.py'),
                    f'--checkpoint_path={train_dir}', f'--output_dir={script}'],
                   check=True, cwd=REPO, capture_output=True)
    payload = tf.constant([_png(im) for im in images])
    a = tf.saved_model.load(ours).signatures['serving_default'](image_bytes=payload)
    b = tf.saved_model.load(str(script / '1')).signatures['serving_default'](
        image_bytes=payload)
    assert set(a) == set(b) == {'detection_boxes', 'detection_classes', 'detection_scores',
                                'num_detections'}
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
    assert int(a['num_detections'][0]) > 0
    for name in ('labels.txt', 'labels_tflite.txt'):
        assert (pathlib.Path(ours) / 'assets' / name).read_text() == \
            (script / '1' / 'assets' / name).read_text()
    with pytest.raises(FileExistsError, match='already exists'):
        det.export(str(tmp_path / 'keras'), verbose=False)


# ---------------------------------------------------------------------------- execution
# Run in a fresh process: two logical CPU devices must be set before TensorFlow starts.
_MIRRORED = """
import json, os
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import keras, numpy as np, tensorflow as tf
from ssd_tf import training
training.make_strategy('mirrored', num_logical_cpus=2)
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import SSDDetector, data
from ssd_tf.datasets import synthetic
records = synthetic.make_synthetic_examples(8, seed=1, image_size=128)
prep_fn = lambda i, l, b: prep.preprocess_for_eval(i, l, b, out_shape=(128, 128))[:3]
out = {}
for mode in ('single', 'mirrored'):
    strategy = tf.distribute.get_strategy() if mode == 'single' else \\
        tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        det = SSDDetector.from_network('ssd_small')
        det.compile(optimizer=keras.optimizers.SGD(0.05))
    ds = data.build_dataset(records, prep_fn, det.encode_targets, batch_size=8,
                            is_training=False, repeat=False, with_gt=False)
    history = det.fit(ds, epochs=1, verbose=0, shuffle=False).history
    out[mode] = dict(replicas=strategy.num_replicas_in_sync,
                     loss=[history[k][0] for k in ('loss', 'cls_loss', 'loc_loss')],
                     weights=[float(np.abs(w).sum()) for w in det.network.get_weights()])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_fit_under_a_mirrored_strategy_equals_one_replica():
    """One step on 8 images over two replicas (4 each): the same loss terms and updated
    weights as one replica on the 8 (the loss is normalised by the global batch's
    positives, the gradients summed)."""
    run = subprocess.run([sys.executable, '-c', _MIRRORED], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    single, mirrored = out['single'], out['mirrored']
    assert (single['replicas'], mirrored['replicas']) == (1, 2)
    assert all(np.isfinite(single['loss']))
    np.testing.assert_allclose(mirrored['loss'], single['loss'], rtol=1e-5)
    np.testing.assert_allclose(mirrored['weights'], single['weights'], rtol=1e-5)


@pytest.mark.slow
def test_fit_with_a_mixed_precision_policy(records):
    # float16: Keras' LossScaleOptimizer and the loss in float32 (bfloat16 takes the same
    # path without the loss scaling)
    policy = 'mixed_float16'
    keras.mixed_precision.set_global_policy(policy)
    try:
        det = _detector()
        det.compile(optimizer=keras.optimizers.Adam(1e-3))
        assert isinstance(det.optimizer, keras.optimizers.LossScaleOptimizer) == \
            (policy == 'mixed_float16')
        assert det.network.get_layer('conv1_1').compute_dtype == policy.split('_')[1]
        history = det.fit(_dataset(det, records), steps_per_epoch=2, epochs=1, verbose=0)
        out = det.predict(np.zeros((1, IMG, IMG, 3), np.uint8), verbose=0)
    finally:
        keras.mixed_precision.set_global_policy('float32')
    assert np.isfinite(history.history['loss'][0])
    assert out['scores'].dtype == np.float32


@pytest.mark.slow
def test_steps_per_execution_gives_the_same_training(records):
    runs = []
    for steps in (1, 3):
        keras.utils.set_random_seed(1)
        det = _detector()
        det.compile(optimizer=keras.optimizers.SGD(1e-3), steps_per_execution=steps)
        history = det.fit(_dataset(det, records), steps_per_epoch=3, epochs=1, verbose=0)
        runs.append((history.history['loss'][0], det.network.get_weights()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_keras_callbacks(records, trained, tmp_path):
    keras.utils.set_random_seed(2)
    det = _detector()
    det.compile(optimizer=keras.optimizers.Adam(1e-3))
    best = tmp_path / 'best.keras'
    logs = tmp_path / 'logs'
    callbacks = [
        # a min_delta no epoch can beat: training stops after the second epoch
        keras.callbacks.EarlyStopping(monitor='val_loss', patience=0, min_delta=1e9),
        keras.callbacks.ModelCheckpoint(str(best), monitor='val_loss', save_best_only=True),
        keras.callbacks.TensorBoard(str(logs), write_graph=False)]
    history = det.fit(_dataset(det, records), steps_per_epoch=2, epochs=5, verbose=0,
                      validation_data=trained['fixed'].take(1), callbacks=callbacks)
    assert len(history.history['val_loss']) == 2
    assert {'val_loss', 'val_cls_loss', 'val_loc_loss'} <= set(history.history)
    assert isinstance(keras.saving.load_model(best), ssd_tf.SSDDetector)
    assert list((logs / 'train').glob('events.out.tfevents.*'))
    assert list((logs / 'validation').glob('events.out.tfevents.*'))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.slow
def test_bad_inputs_give_clear_errors(trained, train_dir, records):
    det = trained['detector']
    with pytest.raises(ValueError, match=r'\[2, 96, 96, 3\].*\[batch, 128, 128, 3\]'):
        det.predict(np.zeros((2, 96, 96, 3), np.uint8), verbose=0)
    with pytest.raises(ValueError, match='dtype int32'):
        det.predict(np.zeros((1, IMG, IMG, 3), np.int32), verbose=0)
    with pytest.raises(ValueError, match=r'--num_classes=3 .*num_classes=5'):
        ssd_tf.SSDDetector.from_checkpoint(str(train_dir), num_classes=3)
    with pytest.raises(ValueError, match='does not exist'):
        ssd_tf.SSDDetector.from_checkpoint(str(train_dir / 'nope'))
    with pytest.raises(ValueError, match='3 label_names for num_classes=5'):
        ssd_tf.SSDDetector.from_network('ssd_small', num_classes=5, label_names=NAMES[:3])
    with pytest.raises(ValueError, match='unknown network .*ssd_small'):
        ssd_tf.SSDDetector.from_network('ssd_tiny')
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['iou'\]"):
        _detector().__class__.from_network('ssd_small', detection={'iou': 0.5})
    with pytest.raises(ValueError, match='loss= is not taken'):
        _detector().compile(loss='mse')
    with pytest.raises(ValueError, match='label_smoothing=1.5'):
        _detector().compile(label_smoothing=1.5)
    with pytest.raises(ValueError, match='class_balance=1.5'):
        _detector().compile(class_balance=1.5)
    with pytest.raises(ValueError, match='weight_decay=0.0005 but the model was built without'):
        ssd_tf.SSDDetector(det.net, model=det.net.keras_model())
    with pytest.raises(TypeError, match='takes an SSDNet'):
        ssd_tf.SSDDetector('ssd_small')
    unencoded = data_lib.build_dataset(records, _eval_prep, None, batch_size=BATCH,
                                       is_training=False, with_gt=True)
    with pytest.raises(ValueError, match='encode_fn=detector.encode_targets'):
        det.evaluate(unencoded, verbose=0)
    with pytest.raises(ValueError, match="format='onnx'"):
        det.export('/nonexistent', format='onnx')
