"""ssd_tf.builder (one way from a run to a model) and datasets.labelmap.resolve_label_map (one
way to the class names): the same resolution for every command, and an original slim SSD
checkpoint taken by detect.py, export_savedmodel.py and eval_ssd.py alike."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ssd_tf import builder
from ssd_tf import run_config
from ssd_tf.datasets import labelmap
from ssd_tf.datasets import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- network
def test_a_flag_against_the_run_config_is_one_message():
    cfg = run_config.RunConfig(model_name='ssd_small', num_classes=5)
    with pytest.raises(ValueError) as a:
        builder.check_overrides(cfg, 'runs/x', model_name='ssd_300_vgg')
    assert str(a.value) == ("--model_name=ssd_300_vgg but the run config beside runs/x says "
                            "model_name=ssd_small; drop the flag or fix it")
    with pytest.raises(ValueError, match='--num_classes=21 but the run config beside runs/x '
                                         'says num_classes=5; drop the flag or fix it'):
        builder.resolve_network(cfg, 'runs/x', num_classes=21)
    builder.check_overrides(cfg, 'runs/x', 'ssd_small', 5)  # agreeing flags are fine


def test_a_checkpoint_without_config_needs_model_name_and_num_classes():
    for kwargs in ({}, {'model_name': 'ssd_small'}, {'num_classes': 21}):
        with pytest.raises(ValueError, match='pass --model_name and --num_classes'):
            builder.resolve_network(run_config.RunConfig(), 'vgg.ckpt', **kwargs)
    with pytest.raises(ValueError, match='--model_name=no_such_net'):
        builder.resolve_network(run_config.RunConfig(), 'vgg.ckpt', 'no_such_net', 21)


def test_image_size_override_then_config_then_network():
    cfg = run_config.RunConfig(model_name='ssd_small', num_classes=5, image_shape=[96, 96])
    # ssd_small's own input is 128x128 (nets/ssd_small.py); the run says 96; the flag 64
    assert builder.resolve_network(run_config.RunConfig(), 'p', 'ssd_small', 5) \
        .params.img_shape == (128, 128)
    assert builder.resolve_network(cfg, 'p').params.img_shape == (96, 96)
    assert builder.resolve_network(cfg, 'p', image_size=64).params.img_shape == (64, 64)
    net = builder.resolve_network(cfg, 'p')
    assert net.params.num_classes == net.params.no_annotation_label == 5


# ---------------------------------------------------------------------------- precision
def test_float32_network_of_a_bfloat16_model_computes_as_a_float32_build():
    """A model trained in mixed_bfloat16 is evaluated as eval_ssd.py builds it: in float32,
    with the same weights. The float32 copy's outputs equal those of a float32 build given
    the weights (what eval_ssd.py restores), and differ from the bfloat16 model's own."""
    import keras
    from nets import ssd_small
    net = ssd_small.SSDNet()
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_dtype_policy('mixed_bfloat16')  # as train_ssd.py sets it
    try:
        trained = net.keras_model()
        copy = builder.float32_network(trained, net)
        assert keras.mixed_precision.dtype_policy().name == 'mixed_bfloat16'  # put back
    finally:
        keras.mixed_precision.set_dtype_policy('float32')
    assert trained.compute_dtype == 'bfloat16'
    assert copy is not trained and copy.compute_dtype == 'float32'
    reference = net.keras_model()  # eval_ssd.py's build
    reference.set_weights(trained.get_weights())
    h, w = net.params.img_shape
    images = tf.random.stateless_uniform([2, h, w, 3], [1, 2], -100., 100.)
    want = reference(images, training=False)
    got = copy(images, training=False)
    for key in ('predictions', 'localisations'):
        for g, w in zip(got[key], want[key]):
            np.testing.assert_array_equal(g.numpy(), w.numpy())
    bf16 = trained(images, training=False)['localisations'][0]
    assert np.abs(tf.cast(bf16, tf.float32).numpy() - want['localisations'][0].numpy()).max() > 0
    # a refresh copies the current weights into the same copy
    trained.set_weights([w + 1. for w in trained.get_weights()])
    assert builder.float32_network(trained, net, copy=copy) is copy
    for a, b in zip(copy.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_float32_network_of_a_float32_model_is_the_model():
    from nets import ssd_small
    net = ssd_small.SSDNet()
    model = net.keras_model()
    assert builder.float32_network(model, net) is model


def test_resolve_source_kinds(tmp_path):
    weights = tmp_path / 'w.weights.h5'
    with pytest.raises(ValueError, match='no such Keras weights file'):
        builder.resolve_source(str(weights))
    weights.write_bytes(b'')
    assert builder.resolve_source(str(weights)) == ('keras_h5', str(weights))
    with pytest.raises(ValueError, match='no such .tflite file'):
        builder.resolve_source(str(tmp_path / 'model.tflite'))
    (tmp_path / 'model.tflite').write_bytes(b'')
    assert builder.resolve_source(str(tmp_path / 'model.tflite'))[0] == 'tflite'
    with pytest.raises(ValueError, match='is already a TFLite model'):
        builder.load_model(str(tmp_path / 'model.tflite'))
    with pytest.raises(ValueError, match='does not exist'):
        builder.resolve_source(str(tmp_path / 'model.ckpt-3'))


def test_slim_variable_map_refuses_networks_without_slim_names():
    net = builder.resolve_network(run_config.RunConfig(), 'p', 'ssdlite_mobilenet_v2', 3)
    with pytest.raises(ValueError, match='--model_name=ssdlite_mobilenet_v2 has no slim'):
        builder.slim_variable_map(net, net.keras_model())


# ---------------------------------------------------------------------------- label names
def test_label_map_resolution_order(tmp_path):
    run = tmp_path / 'run'
    (run / 'assets').mkdir(parents=True)
    labelmap.LabelMap(['x', 'y']).write(str(run / 'assets' / 'labels.txt'))
    flag_file = labelmap.LabelMap(['f1', 'f2']).write(str(tmp_path / 'flag.txt'))
    resolve = labelmap.resolve_label_map
    # 1. the flag's file, 2. the recorded names (with their ids), 3. labels.txt beside (or in
    # assets/), 4. the fallback (names embedded in a .tflite), 5. nothing
    assert resolve(flag_file, ['r1', 'r2'], beside=[str(run)]).names == ('f1', 'f2')
    got = resolve(None, ['r1', 'r2'], [3, 7], beside=[str(run)])
    assert got.names == ('r1', 'r2') and got.dataset_ids == (3, 7)
    assert resolve(None, None, beside=[str(tmp_path), str(run)]).names == ('x', 'y')
    assert resolve(None, None, beside=[str(tmp_path)], fallback=lambda: ['e']).names == ('e',)
    assert resolve(None, None, beside=[str(tmp_path)], fallback=lambda: None) is None
    with pytest.raises(ValueError, match='--labels=.*nope.txt'):
        resolve(str(tmp_path / 'nope.txt'), flag='--labels')
    with pytest.raises(ValueError, match='the label map has 2 classes but the network has '
                                         'num_classes=5'):
        resolve(flag_file, num_classes=5)
    assert resolve(flag_file, num_classes=3).num_classes == 3  # 2 classes + background


# ---------------------------------------------------------------------------- slim checkpoints
def _write_slim_checkpoint(prefix, model_name, num_classes, seed=0):
    """An original-SSD-style (name-based TF1) checkpoint of `model_name`: the slim variable
    names of `builder.slim_variable_map`, seeded random weights. Returns the Keras weights."""
    import keras
    keras.utils.set_random_seed(seed)
    net = builder.resolve_network(run_config.RunConfig(), prefix, model_name, num_classes)
    model = net.keras_model()
    variables = builder.slim_variable_map(net, model)
    names = sorted(variables) + ['global_step']
    values = [tf.constant(variables[n].numpy()) for n in names[:-1]] + \
        [tf.constant(0, tf.int64)]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                      tensors=values)
    return model.get_weights()


def _script(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, name)] + list(args),
                          capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3'))


def test_load_model_restores_a_slim_checkpoint_like_the_network_that_wrote_it(tmp_path):
    prefix = str(tmp_path / 'model.ckpt-5')
    want = _write_slim_checkpoint(prefix, 'ssd_small', 21)
    with pytest.raises(ValueError, match='pass --model_name and --num_classes'):
        builder.load_model(prefix)
    built = builder.load_model(prefix, 'ssd_small', 21)
    assert built.kind == 'slim' and built.path == prefix and built.label_map is None
    for a, b in zip(built.model.get_weights(), want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_detect_export_and_eval_take_an_original_slim_checkpoint(tmp_path):
    """detect.py --model=<slim ssd_300_vgg checkpoint> --model_name --num_classes finds the
    detections that detect.py finds on the SavedModel export_savedmodel.py exports from the
    same checkpoint; eval_ssd.py evaluates it."""
    prefix = str(tmp_path / 'VGG_VOC0712_SSD_300x300.ckpt')
    _write_slim_checkpoint(prefix, 'ssd_300_vgg', 21)
    images = tmp_path / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        pixels = rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)
        (images / f'{i}.png').write_bytes(tf.io.encode_png(pixels).numpy())
    flags = ['--model_name=ssd_300_vgg', '--num_classes=21']
    # score_threshold 0: every kept detection (random weights score about 1/21 per class)
    r = _script('detect.py', f'--model={prefix}', f'--images={images}',
                f'--output_dir={tmp_path / "from_ckpt"}', '--score_threshold=0', *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _script('export_savedmodel.py', f'--checkpoint_path={prefix}',
                f'--output_dir={tmp_path / "serving"}', *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _script('detect.py', f'--model={tmp_path / "serving" / "1"}', f'--images={images}',
                f'--output_dir={tmp_path / "from_sm"}', '--score_threshold=0')
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.load(open(tmp_path / d / 'detections.json')) for d in ('from_ckpt', 'from_sm'))
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert 'error' not in ra and len(ra['detections']) == len(rb['detections']) > 0
        for da, db in zip(ra['detections'], rb['detections']):
            assert da['class_id'] == db['class_id']
            np.testing.assert_allclose(da['score'], db['score'], atol=1e-5)
            np.testing.assert_allclose(da['box'], db['box'], atol=1e-4)
    # eval_ssd.py on the same checkpoint: a VOC directory whose 4 classes are among 20 names
    voc = synthetic.write_synthetic_voc(str(tmp_path / 'voc'), 1, 3, seed=1, image_size=96)
    names = list(synthetic.SYNTHETIC_CLASSES) + [f'other{i}' for i in range(16)]
    label_file = labelmap.LabelMap(names).write(str(tmp_path / 'labels20.txt'))
    r = _script('eval_ssd.py', f'--checkpoint_path={prefix}', f'--eval_dir={tmp_path / "ev"}',
                '--dataset_name=voc', f'--dataset_dir={voc}', f'--label_map={label_file}',
                '--num_sample_images=0', *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.load(open(tmp_path / 'ev' / 'metrics.json'))
    assert metrics['num_images'] == 3 and metrics['model_name'] == 'ssd_300_vgg'
