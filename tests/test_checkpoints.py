"""Weight import: slim SSD / vgg_16 checkpoints and Keras VGG16 .h5 files land by name."""
import numpy as np
import pytest
import tensorflow as tf

from nets import ssd_vgg_300
from nets import ssd_vgg_keras
from ssd_tf import checkpoints

NUM_CLASSES = 4  # small heads keep the test fast; the names do not depend on it

# SSD300 slim variable scopes and kernel shapes (SPEC.md "Network"), written out independently
# of nets/ so that a naming error on both sides cannot cancel out.
_VGG = [('conv1/conv1_1', 3, 64), ('conv1/conv1_2', 64, 64), ('conv2/conv2_1', 64, 128),
        ('conv2/conv2_2', 128, 128), ('conv3/conv3_1', 128, 256), ('conv3/conv3_2', 256, 256),
        ('conv3/conv3_3', 256, 256), ('conv4/conv4_1', 256, 512), ('conv4/conv4_2', 512, 512),
        ('conv4/conv4_3', 512, 512), ('conv5/conv5_1', 512, 512), ('conv5/conv5_2', 512, 512),
        ('conv5/conv5_3', 512, 512)]
_EXTRA = [('conv6', (3, 3, 512, 1024)), ('conv7', (1, 1, 1024, 1024)),
          ('block8/conv1x1', (1, 1, 1024, 256)), ('block8/conv3x3', (3, 3, 256, 512)),
          ('block9/conv1x1', (1, 1, 512, 128)), ('block9/conv3x3', (3, 3, 128, 256)),
          ('block10/conv1x1', (1, 1, 256, 128)), ('block10/conv3x3', (3, 3, 128, 256)),
          ('block11/conv1x1', (1, 1, 256, 128)), ('block11/conv3x3', (3, 3, 128, 256))]
# (feature block, input channels, anchors): A = len(sizes) + len(ratios) = 2 + 2 or 2 + 4.
_HEADS = [('block4', 512, 4), ('block7', 1024, 6), ('block8', 512, 6), ('block9', 256, 6),
          ('block10', 256, 4), ('block11', 256, 4)]


def ssd300_slim_shapes(scope='ssd_300_vgg', num_classes=NUM_CLASSES):
    """{slim name: shape} of every SSD300 variable (71 = 2 * 35 convs + gamma)."""
    shapes = {}
    convs = [(s, (3, 3, cin, cout)) for s, cin, cout in _VGG] + _EXTRA
    for block, cin, a in _HEADS:
        convs.append((f'{block}_box/conv_loc', (3, 3, cin, a * 4)))
        convs.append((f'{block}_box/conv_cls', (3, 3, cin, a * num_classes)))
    for s, kshape in convs:
        shapes[f'{scope}/{s}/weights'] = kshape
        shapes[f'{scope}/{s}/biases'] = kshape[-1:]
    shapes[f'{scope}/block4_box/L2Normalization/gamma'] = (512,)
    return shapes


def write_tf1_checkpoint(prefix, tensors):
    """Writes a name-based (TF1/slim-style) checkpoint: `tensors` {name: np.ndarray}."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return prefix


def tagged(shape, tag):
    """A float32 array whose every element is unique within the tensor, offset by `tag`."""
    n = int(np.prod(shape))
    return ((np.arange(n, dtype=np.float64) % 100_000) * 1e-3 + tag).astype(
        np.float32).reshape(shape)


@pytest.fixture(scope='module')
def ssd300():
    net = ssd_vgg_300.SSDNet(ssd_vgg_300.SSDNet.default_params._replace(num_classes=NUM_CLASSES))
    return net.keras_model()


@pytest.mark.slow
def test_variable_map_has_the_slim_names_and_shapes(ssd300):
    vmap = ssd_vgg_keras.slim_variable_map(ssd300)
    expected = ssd300_slim_shapes()
    assert sorted(vmap) == sorted(expected)
    for name, var in vmap.items():
        assert tuple(var.shape) == expected[name], name


@pytest.mark.slow
def test_slim_checkpoint_every_weight_lands_by_name(ssd300, tmp_path):
    shapes = ssd300_slim_shapes()
    names = sorted(shapes)
    values = {n: tagged(shapes[n], tag=i) for i, n in enumerate(names)}
    values['global_step'] = np.array(1234, np.int64)  # extra checkpoint entries are unused
    prefix = write_tf1_checkpoint(str(tmp_path / 'model.ckpt-1234'), values)
    (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "model.ckpt-1234"\n')

    # A directory resolves to its latest checkpoint.
    report = checkpoints.load_slim_checkpoint(ssd_vgg_keras.slim_variable_map(ssd300),
                                              str(tmp_path))
    assert report.source == prefix
    assert len(report.restored) == 71 and not report.skipped
    assert report.unused == ['global_step']
    # Check by Keras layer, independently of slim_variable_map.
    by_layer = lambda name, i: ssd300.get_layer(name).weights[i].numpy()  # noqa: E731
    np.testing.assert_array_equal(by_layer('conv1_1', 0),
                                  values['ssd_300_vgg/conv1/conv1_1/weights'])
    np.testing.assert_array_equal(by_layer('conv4_3', 1),
                                  values['ssd_300_vgg/conv4/conv4_3/biases'])
    np.testing.assert_array_equal(by_layer('block8_conv3x3', 0),
                                  values['ssd_300_vgg/block8/conv3x3/weights'])
    np.testing.assert_array_equal(by_layer('block11_box_conv_cls', 0),
                                  values['ssd_300_vgg/block11_box/conv_cls/weights'])
    np.testing.assert_array_equal(by_layer('block4_box_L2Normalization', 0),
                                  values['ssd_300_vgg/block4_box/L2Normalization/gamma'])
    for name, var in ssd_vgg_keras.slim_variable_map(ssd300).items():
        np.testing.assert_array_equal(var.numpy(), values[name], err_msg=name)


@pytest.mark.slow
def test_class_mismatch_names_variables_and_flag(ssd300, tmp_path):
    shapes = ssd300_slim_shapes(num_classes=21)  # a VOC checkpoint into a 4-class model
    prefix = write_tf1_checkpoint(str(tmp_path / 'voc.ckpt'),
                                  {n: np.zeros(s, np.float32) for n, s in shapes.items()})
    vmap = ssd_vgg_keras.slim_variable_map(ssd300)
    before = vmap['ssd_300_vgg/conv1/conv1_1/weights'].numpy()
    with pytest.raises(ValueError) as err:
        checkpoints.load_slim_checkpoint(vmap, prefix, ignore_missing_vars=True)
    msg = str(err.value)
    assert 'ssd_300_vgg/block4_box/conv_cls/weights' in msg
    assert 'ssd_300_vgg/block11_box/conv_cls/biases' in msg
    assert 'conv_loc' not in msg  # loc heads do not depend on the classes
    assert ('--checkpoint_exclude_scopes=ssd_300_vgg/block10_box/conv_cls,'
            'ssd_300_vgg/block11_box/conv_cls,') in msg
    assert 'ignore_missing_vars does not help' in msg
    # Nothing was assigned before the error.
    np.testing.assert_array_equal(vmap['ssd_300_vgg/conv1/conv1_1/weights'].numpy(), before)

    # Excluding the class heads restores everything else.
    scopes = ','.join(f'ssd_300_vgg/{b}_box/conv_cls' for b, _, _ in _HEADS)
    report = checkpoints.load_slim_checkpoint(vmap, prefix, exclude_scopes=scopes)
    assert len(report.restored) == 71 - 12 and len(report.skipped) == 12
    assert all('excluded' in r for r in report.skipped.values())


@pytest.mark.slow
def test_missing_variables_raise_unless_ignored(ssd300, tmp_path):
    shapes = ssd300_slim_shapes()
    shapes.pop('ssd_300_vgg/block9/conv1x1/biases')
    prefix = write_tf1_checkpoint(str(tmp_path / 'partial.ckpt'),
                                  {n: np.ones(s, np.float32) for n, s in shapes.items()})
    vmap = ssd_vgg_keras.slim_variable_map(ssd300)
    with pytest.raises(ValueError, match='block9/conv1x1/biases.*\n.*ignore_missing_vars'):
        checkpoints.load_slim_checkpoint(vmap, prefix)
    # A callable returning the map is accepted too.
    report = checkpoints.load_slim_checkpoint(lambda: vmap, prefix, ignore_missing_vars=True)
    assert list(report.skipped) == ['ssd_300_vgg/block9/conv1x1/biases']
    assert len(report.restored) == 70


@pytest.mark.slow
def test_model_instead_of_map_is_refused_with_advice(ssd300, tmp_path):
    with pytest.raises(TypeError, match='slim_variable_map'):
        checkpoints.load_slim_checkpoint(ssd300, str(tmp_path / 'x'))


def test_bad_paths_are_explained(tmp_path):
    with pytest.raises(ValueError, match='checkpoint_path'):
        checkpoints.load_slim_checkpoint({}, str(tmp_path))  # empty directory
    with pytest.raises(ValueError, match='checkpoint_path'):
        checkpoints.load_slim_checkpoint({}, str(tmp_path / 'nothing.ckpt'))


def test_subsample_to_shape_keeps_the_papers_indices():
    # 7 -> 3 keeps taps 0, 3, 6; 8 -> 2 keeps 0 and 7 // 1 = 7.
    a = np.arange(7 * 8).reshape(7, 8)
    np.testing.assert_array_equal(checkpoints.subsample_to_shape(a, (3, 2)),
                                  a[[0, 3, 6]][:, [0, 7]])
    # 4096 -> 1024: step (4096 - 1) // (1024 - 1) = 4, so 0, 4, ..., 4092.
    b = np.arange(4096)
    np.testing.assert_array_equal(checkpoints.subsample_to_shape(b, (1024,)), b[::4])
    with pytest.raises(ValueError):
        checkpoints.subsample_to_shape(np.zeros((5,)), (4,))  # 5 -> 4 has no regular stride
    with pytest.raises(ValueError):
        checkpoints.subsample_to_shape(np.zeros((3,)), (6,))


@pytest.mark.slow
def test_vgg16_slim_checkpoint_into_backbone_with_fc_subsampling(ssd300, tmp_path):
    # The real ImageNet shapes once: fc6 7x7x512x4096 (411 MB float32), fc7 1x1x4096x4096.
    rng = np.random.default_rng(0)
    values = {}
    for i, (scope, cin, cout) in enumerate(_VGG):
        values[f'vgg_16/{scope}/weights'] = tagged((3, 3, cin, cout), tag=i)
        values[f'vgg_16/{scope}/biases'] = tagged((cout,), tag=100 + i)
    values['vgg_16/fc6/weights'] = rng.standard_normal((7, 7, 512, 4096), dtype=np.float32)
    values['vgg_16/fc6/biases'] = np.arange(4096, dtype=np.float32)
    values['vgg_16/fc7/weights'] = rng.standard_normal((1, 1, 4096, 4096), dtype=np.float32)
    values['vgg_16/fc7/biases'] = -np.arange(4096, dtype=np.float32)
    values['vgg_16/fc8/weights'] = np.zeros((1, 1, 4096, 1000), np.float32)
    prefix = write_tf1_checkpoint(str(tmp_path / 'vgg_16.ckpt'), values)

    vmap = ssd_vgg_keras.slim_variable_map(ssd300)
    report = checkpoints.load_slim_checkpoint(
        vmap, prefix, checkpoint_model_scope='vgg_16', ignore_missing_vars=True)
    assert len(report.restored) == 2 * (13 + 2)
    assert report.unused == ['vgg_16/fc8/weights']
    assert 'subsampled' in report.restored['ssd_300_vgg/conv6/weights']
    assert 'ssd_300_vgg/block8/conv1x1/weights' in report.skipped
    np.testing.assert_array_equal(ssd300.get_layer('conv5_2').weights[0].numpy(),
                                  values['vgg_16/conv5/conv5_2/weights'])
    conv6 = ssd300.get_layer('conv6').weights[0].numpy()
    # Tap (1, 2) of the 3x3 dilated kernel is fc6's (3, 6); output 5 is fc6's output 20.
    assert conv6[1, 2, 7, 5] == values['vgg_16/fc6/weights'][3, 6, 7, 20]
    np.testing.assert_array_equal(conv6, values['vgg_16/fc6/weights'][::3, ::3, :, ::4])
    np.testing.assert_array_equal(ssd300.get_layer('conv6').weights[1].numpy(),
                                  np.arange(0, 4096, 4))
    np.testing.assert_array_equal(ssd300.get_layer('conv7').weights[0].numpy(),
                                  values['vgg_16/fc7/weights'][:, :, ::4, ::4])
    np.testing.assert_array_equal(ssd300.get_layer('conv7').weights[1].numpy(),
                                  -np.arange(0, 4096, 4))
    # Without ignore_missing_vars the extra blocks are reported missing.
    with pytest.raises(ValueError, match='block8/conv1x1/weights'):
        checkpoints.load_slim_checkpoint(vmap, prefix, checkpoint_model_scope='vgg_16')


def _write_legacy_vgg16_h5(path, include_top, keras1_names=False):
    """A Keras 1/2 legacy weights file with VGG16's layer names and shapes.

    fc1 is a chunked dataset left at its fill value 0 except a few marked entries, so the
    25088x4096 kernel costs little to write.
    """
    import h5py
    layers = [(f'block{b}_conv{i}', (3, 3, cin, cout)) for (b, i), (_, cin, cout) in zip(
        [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3),
         (5, 1), (5, 2), (5, 3)], _VGG)]
    if include_top:
        layers += [('fc1', (25088, 4096)), ('fc2', (4096, 4096)), ('predictions', (4096, 1000))]
    values = {}
    with h5py.File(path, 'w') as f:
        f.attrs['layer_names'] = [n.encode() for n in ['input_1'] + [n for n, _ in layers]]
        f.create_group('input_1').attrs['weight_names'] = []
        for i, (name, kshape) in enumerate(layers):
            g = f.create_group(name)
            if keras1_names:
                wnames = [f'{name}_W_1:0', f'{name}_b_1:0']
            else:
                wnames = [f'{name}/kernel:0', f'{name}/bias:0']
            g.attrs['weight_names'] = [w.encode() for w in wnames]
            if name == 'fc1':
                k = g.create_dataset(wnames[0], shape=kshape, dtype='f4', chunks=(512, 512),
                                     fillvalue=0.)
                # Row of (h, w, c) in the channels-last flatten is (h * 7 + w) * 512 + c.
                k[(3 * 7 + 6) * 512 + 7, 20] = 1.5   # -> conv6[1, 2, 7, 5]
                k[(6 * 7 + 0) * 512 + 2, 4092] = 2.5  # -> conv6[2, 0, 2, 1023]
                k[(1 * 7 + 1) * 512 + 0, 0] = 9.     # tap (1, 1) is dropped
            else:
                k = tagged(kshape, tag=i)
                g.create_dataset(wnames[0], data=k)
                values[name] = k
            b = np.arange(kshape[-1], dtype=np.float32) + 1000 * i
            g.create_dataset(wnames[1], data=b)
            values[name + '_b'] = b
    return values


@pytest.mark.slow
@pytest.mark.parametrize('include_top,keras1_names', [(False, True), (True, False)])
def test_keras_vgg16_h5_into_backbone(ssd300, tmp_path, include_top, keras1_names):
    path = str(tmp_path / 'vgg16.h5')
    values = _write_legacy_vgg16_h5(path, include_top, keras1_names)
    vmap = ssd_vgg_keras.slim_variable_map(ssd300)
    conv6_before = ssd300.get_layer('conv6').weights[0].numpy()
    report = checkpoints.load_keras_vgg16_h5(vmap, path)
    assert len(report.restored) == 2 * (13 + (2 if include_top else 0))
    np.testing.assert_array_equal(ssd300.get_layer('conv1_1').weights[0].numpy(),
                                  values['block1_conv1'])
    np.testing.assert_array_equal(ssd300.get_layer('conv5_3').weights[1].numpy(),
                                  values['block5_conv3_b'])
    np.testing.assert_array_equal(ssd300.get_layer('conv3_2').weights[0].numpy(),
                                  values['block3_conv2'])
    conv6 = ssd300.get_layer('conv6').weights[0].numpy()
    if include_top:
        assert report.unused == ['predictions']
        assert conv6[1, 2, 7, 5] == 1.5 and conv6[2, 0, 2, 1023] == 2.5
        assert np.count_nonzero(conv6) == 2
        np.testing.assert_array_equal(ssd300.get_layer('conv6').weights[1].numpy(),
                                      values['fc1_b'][::4])
        np.testing.assert_array_equal(ssd300.get_layer('conv7').weights[0].numpy()[0, 0],
                                      values['fc2'][::4, ::4])
    else:
        np.testing.assert_array_equal(conv6, conv6_before)
        assert 'fc1 not in the file' in report.skipped['ssd_300_vgg/conv6/weights']


@pytest.mark.slow
def test_keras3_weights_h5_layout(tmp_path):
    """The Keras 3 `.weights.h5` names groups by class (conv2d_3); the layer name is an attr."""
    import keras
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = str(tmp_path / 'vgg16.weights.h5')
    vgg.save_weights(path)
    net = ssd_vgg_300.SSDNet(ssd_vgg_300.SSDNet.default_params._replace(num_classes=2))
    model = net.keras_model()
    report = checkpoints.load_keras_vgg16_h5(ssd_vgg_keras.slim_variable_map(model), path)
    assert len(report.restored) == 26
    for b, i in [(1, 1), (2, 2), (4, 3), (5, 1)]:
        np.testing.assert_array_equal(model.get_layer(f'conv{b}_{i}').weights[0].numpy(),
                                      vgg.get_layer(f'block{b}_conv{i}').weights[0].numpy())


# ---------------------------------------------------------------------------- run config
def test_run_config_round_trips_and_keeps_unknown_keys(tmp_path):
    from ssd_tf import run_config
    written = {'model_name': 'ssd_small', 'num_classes': 5, 'image_shape': [96, 96],
               'label_names': ['a', 'b'], 'trainable_scopes': None, 'logtostderr': False,
               'some_future_key': {'x': 1}}
    cfg = run_config.RunConfig.from_dict(written)
    assert cfg.model_name == 'ssd_small' and cfg.image_shape == [96, 96]
    assert cfg.optimizer is None  # not recorded
    assert cfg.extra == {'logtostderr': False, 'some_future_key': {'x': 1}}
    path = cfg.write(str(tmp_path / 'run'))
    assert path == str(tmp_path / 'run' / run_config.CONFIG_FILENAME)
    back = run_config.RunConfig.read(str(tmp_path / 'run'))
    assert back == cfg
    assert {k: v for k, v in back.to_dict().items() if k in written} == written
    # read_run_config finds it beside a checkpoint prefix; nothing there: an empty config
    assert run_config.read_run_config(str(tmp_path / 'run' / 'ckpt-3')) == cfg
    empty = run_config.read_run_config(str(tmp_path / 'elsewhere' / 'ckpt-3'))
    assert not empty and empty.model_name is None
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'config.json').write_text('{not json')
    with pytest.raises(ValueError, match='bad/config.json'):
        run_config.read_run_config(str(tmp_path / 'bad'))


def test_one_home_for_checkpoint_resolution():
    # no second copy of the checkpoint and run-config helpers: each has one home
    from ssd_tf import builder
    from ssd_tf import checkpoints
    from ssd_tf import evaluation
    from ssd_tf import run_config
    from ssd_tf import training
    from ssd_tf.export import saved_model as export
    for name in ('resolve_checkpoint', 'checkpoint_step', 'read_run_config', 'restore_model',
                 'CONFIG_FILENAME', 'EXPORT_CONFIG_FILENAME'):
        assert not hasattr(evaluation, name), name
    assert not hasattr(training, 'CONFIG_FILE') and not hasattr(training, 'write_config')
    assert not hasattr(checkpoints, 'resolve_checkpoint_path')
    assert not hasattr(run_config, 'restore_model') and callable(builder.restore_model)
    assert export.EXPORT_CONFIG_FILENAME is run_config.EXPORT_CONFIG_FILENAME
    assert not hasattr(export, 'load_from_checkpoint')


def test_load_slim_checkpoint_resolves_like_resolve_checkpoint(tmp_path):
    # load_slim_checkpoint resolves its path with run_config.resolve_checkpoint: a missing
    # prefix is an error naming it, a directory gives its latest checkpoint.
    var = tf.Variable(np.ones(2, np.float32))
    missing = str(tmp_path / 'model.ckpt-5')
    with pytest.raises(ValueError, match='model.ckpt-5 does not exist'):
        checkpoints.load_slim_checkpoint({'w': var}, missing, model_scope=None)
    write_tf1_checkpoint(str(tmp_path / 'model.ckpt-7'), {'w': np.zeros(2, np.float32)})
    (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "model.ckpt-7"\n')
    report = checkpoints.load_slim_checkpoint({'w': var}, str(tmp_path), model_scope=None)
    assert report.source.endswith('model.ckpt-7')
    np.testing.assert_array_equal(var.numpy(), [0., 0.])  # the file's zeros replaced the ones


@pytest.mark.parametrize('key, now', [
    ('label_names', ['b', 'a']),              # same classes, other order
    ('label_names', ['a', 'c']),              # other names
    ('dataset_name', 'voc'), ('dataset_dir', '/data/other'), ('dataset_split_name', 'val'),
    ('optimizer', 'momentum'), ('mixed_precision', 'mixed_float16'),
    ('trainable_scopes', 'ssd_small/block4_box'),
    ('model_name', 'ssd_300_vgg'), ('num_classes', 21), ('batch_size', 4), ('seed', 5),
])
def test_resume_conflicts_name_each_changed_setting(key, now):
    from ssd_tf import run_config
    then = {'model_name': 'ssd_small', 'num_classes': 3, 'batch_size': 8, 'seed': 0,
            'reference_compat': False, 'dataset_name': 'synthetic', 'dataset_dir': None,
            'dataset_split_name': 'train', 'label_names': ['a', 'b'], 'image_shape': [96, 96],
            'optimizer': 'adam', 'mixed_precision': None, 'trainable_scopes': None}
    previous = run_config.RunConfig.from_dict(then)
    assert run_config.resume_conflicts(previous, run_config.RunConfig.from_dict(then)) == []
    current = run_config.RunConfig.from_dict(dict(then, **{key: now}))
    (flag, was, is_now), = run_config.resume_conflicts(previous, current)
    assert flag.startswith('label_map' if key == 'label_names' else key)
    assert (was, is_now) == (then[key], now)
    # a setting an older run did not record is not compared
    older = run_config.RunConfig.from_dict({k: v for k, v in then.items() if k != key})
    assert run_config.resume_conflicts(older, current) == []


@pytest.mark.parametrize('then, now, conflict', [
    (None, 'float32', False),                 # an older float32 run (None) resumed in float32
    (None, 'mixed_bfloat16', False),          # ... on a machine with bfloat16 (auto)
    ('mixed_bfloat16', 'float32', False),     # a bfloat16 run on a machine without it
    ('float32', 'mixed_bfloat16', False),
    ('mixed_bfloat16', 'mixed_float16', True),  # float16 adds a loss scale to the checkpoint
    ('mixed_float16', 'float32', True),
    ('mixed_float16', 'mixed_float16', False),
])
def test_resume_precision_conflicts_only_where_the_checkpoint_differs(then, now, conflict):
    from ssd_tf import run_config
    previous = run_config.RunConfig.from_dict({'model_name': 'ssd_small',
                                               'mixed_precision': then})
    current = run_config.RunConfig.from_dict({'model_name': 'ssd_small',
                                              'mixed_precision': now})
    got = run_config.resume_conflicts(previous, current)
    assert got == ([('mixed_precision', then, now)] if conflict else [])


def test_count_tfrecord_records_reads_headers_only(tmp_path):
    from ssd_tf import training
    for name, n in (('a-0.tfrecord', 3), ('a-1.tfrecord', 2), ('b.tfrecord', 7)):
        with tf.io.TFRecordWriter(str(tmp_path / name)) as w:
            for i in range(n):
                w.write(b'x' * (i * 10))  # includes an empty record
    assert training.count_tfrecord_records(str(tmp_path / 'a-*.tfrecord')) == 5
    assert training.count_tfrecord_records(
        f"{tmp_path / 'a-0.tfrecord'},{tmp_path / 'b.tfrecord'}") == 10
    # the epoch size of the decay schedules: --num_samples, else the records, else the count
    assert training.resolve_num_samples(40, None, str(tmp_path / 'a-*')) == 40
    assert training.resolve_num_samples(None, [1, 2], str(tmp_path / 'a-*')) == 2
    assert training.resolve_num_samples(None, None, str(tmp_path / 'a-*')) == 5
    assert training.steps_per_epoch(5000, 32) == 156  # floor(5000 / 32), not 1000
    # a shard cut inside a record, and a pattern matching nothing, are named
    data = (tmp_path / 'b.tfrecord').read_bytes()
    (tmp_path / 'cut.tfrecord').write_bytes(data[:-3])
    with pytest.raises(ValueError, match='cut.tfrecord: record 6 is truncated'):
        training.count_tfrecord_records(str(tmp_path / 'cut.tfrecord'))
    with pytest.raises(ValueError, match='matches no TFRecord file'):
        training.count_tfrecord_records(str(tmp_path / 'none-*.tfrecord'))
