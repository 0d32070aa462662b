"""Networks: output contract, SSD300 layer for layer, custom layers, serialisation, registry."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from nets import layers as nets_layers
from nets import nets_factory
from nets import serving
from nets import ssd_mobilenet_v2
from nets import ssd_small
from nets import ssd_vgg_300
from nets import ssd_vgg_keras

NAMES = sorted(nets_factory.networks_map)


def _net(name, num_classes=3, **param_changes):
    cls = nets_factory.get_network(name)
    return cls(cls.default_params._replace(num_classes=num_classes, **param_changes))


# ---------------------------------------------------------------------------- output contract
@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_output_shapes_match_params_and_anchors(name):
    net = _net(name)
    model = net.keras_model()
    h, w = net.params.img_shape
    x = tf.random.uniform((1, h, w, 3), -120., 130., seed=1)
    out = model(x)
    assert sorted(out) == ['localisations', 'logits', 'predictions']
    anchors = net.anchors()
    n_layers = len(net.params.feat_layers)
    assert all(len(out[k]) == n_layers for k in out)
    for i, (fh, fw) in enumerate(net.params.feat_shapes):
        a = anchors[i][2].shape[0]  # anchors per location from the anchor generator
        assert tuple(out['predictions'][i].shape) == (1, fh, fw, a, 3)
        assert tuple(out['logits'][i].shape) == (1, fh, fw, a, 3)
        assert tuple(out['localisations'][i].shape) == (1, fh, fw, a, 4)
        assert all(out[k][i].dtype == tf.float32 for k in out)
        np.testing.assert_allclose(tf.reduce_sum(out['predictions'][i], -1), 1., rtol=1e-5)
        np.testing.assert_allclose(out['predictions'][i], tf.nn.softmax(out['logits'][i]),
                                   rtol=1e-5, atol=1e-7)


def test_ssd300_has_the_originals_parameter_count():
    # 26,285,486 with 21 classes (SPEC.md): VGG16 conv1-5 14,714,688; conv6 3*3*512*1024+1024
    # = 4,719,616; conv7 1,049,600; blocks 8-11 2,459,520 (262,400 + 1,180,160 + 65,664 +
    # 295,168 + 2 * (32,896 + 295,168)); gamma 512; heads 3*3*Cin*A*(4+21) + A*25:
    # 460,900 + 1,382,550 + 691,350 + 345,750 + 2 * 230,500 = 3,341,550.
    model = ssd_vgg_300.SSDNet().keras_model()
    assert 14_714_688 + 4_719_616 + 1_049_600 + 2_459_520 + 512 + 3_341_550 == 26_285_486
    assert model.count_params() == 26_285_486


def test_head_channel_index_is_anchor_major():
    # The head's channel a*X + x must become [..., a, x] (slim's reshape), for loc and cls.
    model = _net('ssd_small').keras_model()
    raw = keras.Model(model.input, [model.get_layer('block8_box_conv_loc').output,
                                    model.get_layer('block8_box_conv_cls').output])
    x = tf.random.uniform((1, 128, 128, 3), -100., 100., seed=2)
    loc_raw, cls_raw = raw(x)
    out = model(x)
    i = ['block4', 'block7', 'block8', 'block9', 'block10'].index('block8')
    a, c = out['logits'][i].shape[3:]
    assert loc_raw[0, 1, 2, 2 * 4 + 3] == out['localisations'][i][0, 1, 2, 2, 3]
    assert cls_raw[0, 3, 0, 1 * c + 2] == out['logits'][i][0, 3, 0, 1, 2]
    np.testing.assert_array_equal(tf.reshape(cls_raw, out['logits'][i].shape),
                                  out['logits'][i])


def test_ssd300_layers_follow_the_original():
    model = ssd_vgg_300.SSDNet().keras_model()
    conv6 = model.get_layer('conv6')
    assert conv6.dilation_rate == (6, 6) and conv6.kernel_size == (3, 3)
    assert model.get_layer('pool5').pool_size == (3, 3) and model.get_layer('pool5').strides \
        == (1, 1)
    assert model.get_layer('pool1').padding == 'same'
    assert model.get_layer('block8_pad').padding == ((1, 1), (1, 1))
    assert model.get_layer('block8_conv3x3').strides == (2, 2)
    assert model.get_layer('block8_conv3x3').padding == 'valid'
    assert model.get_layer('block10_conv3x3').strides == (1, 1)
    with pytest.raises(ValueError):
        model.get_layer('block10_pad')  # blocks 10 and 11 have no pad
    assert all(layer.use_bias for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert model.get_layer('block4_box_conv_cls').activation is keras.activations.linear
    # Feature maps 38, 19, 10, 5, 3, 1 (SPEC.md).
    assert model.get_layer('conv4_3').output.shape[1:3] == (38, 38)
    assert model.get_layer('block11_conv3x3').output.shape[1:3] == (1, 1)


@pytest.mark.slow
def test_ssd512_block12_and_no_dropout():
    model = _net('ssd_512_vgg').keras_model()
    assert model.get_layer('block12_conv4x4').kernel_size == (4, 4)
    assert model.get_layer('block11_conv3x3').strides == (2, 2)
    model_ref = nets_factory.get_network('ssd_512_vgg')(reference_compat=True).keras_model()
    assert not any(isinstance(l, keras.layers.Dropout) for l in model_ref.layers)


def test_reference_compat_gamma_and_dropout():
    default = _net('ssd_300_vgg').keras_model()
    ref = ssd_vgg_300.SSDNet(ssd_vgg_300.SSDNet.default_params._replace(num_classes=3),
                             reference_compat=True).keras_model()
    np.testing.assert_array_equal(
        default.get_layer('block4_box_L2Normalization').gamma.numpy(), np.full(512, 20.))
    np.testing.assert_array_equal(
        ref.get_layer('block4_box_L2Normalization').gamma.numpy(), np.ones(512))
    assert [l.name for l in ref.layers if isinstance(l, keras.layers.Dropout)] == \
        ['dropout6', 'dropout7']
    assert ref.get_layer('dropout6').rate == 0.5
    assert not any(isinstance(l, keras.layers.Dropout) for l in default.layers)


def test_weight_decay_equals_slims_l2_regularizer():
    params = ssd_small.SSDNet.default_params
    model = ssd_small.SSDNet(params).keras_model(weight_decay=4e-4)
    kernels = [l.kernel for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(model.losses) == len(kernels) == 2 * 3 + 3 * 2 + 2 + 5 * 2  # 1+1+1+2+1 convs
    # slim: sum over kernels of 4e-4 * sum(w^2) / 2 (tf.nn.l2_loss); biases not regularised.
    expected = sum(4e-4 * np.sum(np.square(k.numpy())) / 2 for k in kernels)
    np.testing.assert_allclose(float(tf.add_n(model.losses)), expected, rtol=1e-5)
    assert not ssd_small.SSDNet().keras_model().losses


def test_feat_shapes_are_checked():
    net = ssd_vgg_300.SSDNet(ssd_vgg_300.SSDNet.default_params._replace(img_shape=(320, 320)))
    with pytest.raises(ValueError, match=r'feat_shapes\[0\].*\(40, 40\)'):
        net.keras_model()


@pytest.mark.slow
def test_mobilenet_320_input():
    net = ssd_mobilenet_v2.SSDNet(ssd_mobilenet_v2.SSDNet.default_params._replace(
        img_shape=(320, 320), num_classes=2,
        feat_shapes=[(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]))
    out = net.keras_model()(tf.zeros((1, 320, 320, 3)))
    assert [tuple(t.shape[1:3]) for t in out['localisations']] == net.params.feat_shapes


@pytest.mark.slow
def test_mobilenet_backbone_weights_file(tmp_path):
    backbone = keras.applications.MobileNetV2(input_shape=(300, 300, 3), include_top=False,
                                              weights=None)
    path = str(tmp_path / 'mnv2.weights.h5')
    backbone.save_weights(path)
    model = _net('ssdlite_mobilenet_v2').keras_model(backbone_weights=path)
    for layer in ('Conv1', 'block_13_expand', 'Conv_1'):
        np.testing.assert_array_equal(model.get_layer(layer).weights[0].numpy(),
                                      backbone.get_layer(layer).weights[0].numpy())


@pytest.mark.slow
def test_mobilenet_uses_only_builtin_layers():
    model = _net('ssdlite_mobilenet_v2').keras_model()
    allowed = (keras.layers.InputLayer, keras.layers.Rescaling, keras.layers.Conv2D,
               keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization,
               keras.layers.ReLU, keras.layers.ZeroPadding2D, keras.layers.Add,
               keras.layers.Reshape, keras.layers.Softmax)
    assert all(isinstance(l, allowed) for l in model.layers), \
        {type(l).__name__ for l in model.layers if not isinstance(l, allowed)}
    assert {l.max_value for l in model.layers if isinstance(l, keras.layers.ReLU)} == {6.}


# ---------------------------------------------------------------------------- ssd_small
def test_ssd_small_is_small_and_gradients_flow():
    net = ssd_small.SSDNet()
    model = net.keras_model()
    assert model.count_params() < 1_000_000
    anchors = net.anchors()
    # One image, four boxes (yxyx relative) of 15%-90% of the side, so that every feature
    # layer has positives (a layer with neither positives nor mined negatives gets no gradient).
    labels = tf.constant([1, 2, 3, 4], tf.int64)
    bboxes = tf.constant([[0.6, 0.1, 0.75, 0.25], [0.1, 0.1, 0.4, 0.4], [0.5, 0.45, 0.95, 0.9],
                          [0.04, 0.05, 0.96, 0.93]], tf.float32)
    gcls, gloc, gscores = net.bboxes_encode(labels, bboxes, anchors)
    batch = lambda ts: [t[None] for t in ts]  # noqa: E731  [H, W, A, ...] -> [1, H, W, A, ...]
    x = tf.random.uniform((1, 128, 128, 3), -120., 130., seed=3)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = net.losses(out['logits'], out['localisations'], batch(gcls), batch(gloc),
                          batch(gscores))['total']
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(float(loss)) and float(loss) > 0
    for var, grad in zip(model.trainable_variables, grads):
        assert grad is not None, var.path
        assert float(tf.reduce_max(tf.abs(grad))) > 0, var.path


def test_ssd_small_initial_outputs_are_moderate():
    # Well initialised: on pixel-scale inputs the initial logits and offsets stay O(1), so
    # training starts neither saturated nor with far-flung boxes.
    model = ssd_small.SSDNet().keras_model()
    out = model(tf.random.uniform((4, 128, 128, 3), -120., 130., seed=4))
    for t in out['logits'] + out['localisations']:
        assert 0. < float(tf.math.reduce_std(t)) < 3.


# ---------------------------------------------------------------------------- layers
def test_l2_normalization_golden_and_zero_vector():
    layer = nets_layers.L2Normalization(gamma_init=2.)
    # [3, 4] has norm 5 -> [0.6, 0.8] * 2; the zero vector stays 0 (eps bound, no NaN).
    x = np.array([[[[3., 4.]], [[0., 0.]]]], np.float32)  # [1, 2, 1, 2]
    np.testing.assert_allclose(layer(x), [[[[1.2, 1.6]], [[0., 0.]]]], rtol=1e-6)
    assert layer.gamma.shape == (2,) and layer.gamma.path.endswith('gamma')
    assert nets_layers.L2Normalization().gamma_init == 20.


def test_l2_normalization_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy('mixed_float16')
    try:
        layer = nets_layers.L2Normalization()
        y = layer(tf.constant(np.full((1, 1, 1, 4), 300., np.float16)))  # sum x^2 > fp16 max
        assert y.dtype == tf.float32 and layer.gamma.dtype == 'float32'
        np.testing.assert_allclose(y, np.full((1, 1, 1, 4), 10.), rtol=1e-6)
        out = ssd_small.SSDNet().keras_model()(tf.zeros((1, 128, 128, 3)))
        assert all(t.dtype == tf.float32 for k in out for t in out[k])
    finally:
        keras.mixed_precision.set_global_policy('float32')


def test_l2_normalization_config_round_trip():
    layer = nets_layers.L2Normalization(gamma_init=3., epsilon=1e-6, name='l2n')
    clone = nets_layers.L2Normalization.from_config(layer.get_config())
    assert (clone.gamma_init, clone.epsilon, clone.name) == (3., 1e-6, 'l2n')
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, nets_layers.L2Normalization)


def _tiny_vgg_with_l2norm():
    """A two-map VGG-style SSD with an L2Normalization, to exercise serialisation cheaply."""
    spec = ssd_vgg_keras.VGGSpec(
        blocks=((1, 4), (1, 4), (1, 8), (1, 8), (1, 8)), conv6=(8, 3, 2), conv7=8,
        extras=(ssd_vgg_keras.ExtraBlock('block8', 4, 8, 3, 2, 1),), dropout=False,
        input_scale=1. / 64)
    params = ssd_small.SSDNet.default_params._replace(
        img_shape=(32, 32), feat_layers=['block4', 'block8'], feat_shapes=[(4, 4), (1, 1)],
        anchor_sizes=[(4., 8.), (16., 30.)], anchor_ratios=[[2, .5], [2]],
        normalizations=[20, -1])
    return ssd_vgg_keras.build_ssd_vgg_keras(params, arch=spec, name='tiny')


@pytest.mark.slow
def test_model_config_keras_file_and_savedmodel_round_trip(tmp_path):
    model = _tiny_vgg_with_l2norm()
    gamma = model.get_layer('block4_box_L2Normalization').gamma
    gamma.assign(np.linspace(1., 5., 8).astype(np.float32))  # not the initial value
    x = tf.random.uniform((2, 32, 32, 3), -120., 130., seed=5)
    expected = model(x)

    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    tf.nest.map_structure(np.testing.assert_array_equal, clone(x), expected)

    path = str(tmp_path / 'tiny.keras')
    model.save(path)
    loaded = keras.saving.load_model(path)
    tf.nest.map_structure(np.testing.assert_array_equal, loaded(x), expected)

    export_dir = str(tmp_path / 'saved_model')
    tf.saved_model.save(model, export_dir,
                        signatures={'serving_default': serving.serving_signature(model)})
    reloaded = tf.saved_model.load(export_dir)
    got = serving.unflatten_outputs(reloaded.signatures['serving_default'](image=x))
    assert sorted(got) == sorted(expected) and len(got['logits']) == 2
    for key in expected:
        for a, b in zip(got[key], expected[key]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_slim_scope_names_are_reversible():
    model = ssd_vgg_300.SSDNet().keras_model()
    for layer in model.layers:
        scope = ssd_vgg_keras.keras_to_slim_scope(layer.name)
        assert ssd_vgg_keras.slim_to_keras_name(scope) == layer.name
    assert ssd_vgg_keras.keras_to_slim_scope('conv3_2') == 'conv3/conv3_2'
    assert ssd_vgg_keras.keras_to_slim_scope('block10_conv1x1') == 'block10/conv1x1'
    assert ssd_vgg_keras.keras_to_slim_scope('block7_box_conv_loc') == 'block7_box/conv_loc'
    vmap = ssd_vgg_keras.slim_variable_map(model)
    assert vmap['ssd_300_vgg/block4_box/L2Normalization/gamma'].shape == (512,)
    assert 'ssd_300_vgg/conv6/weights' in vmap and 'ssd_300_vgg/conv7/biases' in vmap
    assert len(vmap) == len(model.weights) == 71


# ---------------------------------------------------------------------------- factory
def test_factory_names_and_unknown_name():
    assert NAMES == ['ssd_300_vgg', 'ssd_512_vgg', 'ssd_small', 'ssd_small_192',
                     'ssd_small_320', 'ssd_small_320_fpn', 'ssdlite_mobilenet_v2']
    for name in NAMES:
        assert nets_factory.get_network(name).model_name == name
    with pytest.raises(ValueError, match='ssd_300_vgg, ssd_512_vgg, ssd_small, '
                                         'ssd_small_192, ssd_small_320, '
                                         'ssd_small_320_fpn, ssdlite_mobilenet_v2'):
        nets_factory.get_network('ssd_300')


def test_small_params_scale_with_the_input():
    from nets import ssd_small
    # 192: ceil(192 / 8) = 24, then halved rounding up: 12, 6, 3, 2; steps 192 / map
    p = ssd_small.small_params(192)
    assert p.feat_shapes == [(24, 24), (12, 12), (6, 6), (3, 3), (2, 2)]
    assert p.anchor_steps == [8., 16., 32., 64., 96.]
    # anchor sizes are the same fractions of the side at any size: 0.10 * 192 = 19.2
    assert p.anchor_sizes[0] == (19.2, 38.4)
    assert ssd_small.small_params(128) == ssd_small.SSDNet.default_params


# ---------------------------------------------------------------------------- README table
# The README's network table, figure for figure. Anchors = sum over feature maps of
# H * W * (anchors per location), A = 2 sizes + number of ratios:
#  ssd_300_vgg: 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 1*4
#             = 5776 + 2166 + 600 + 150 + 36 + 4 = 8732
#  ssd_512_vgg: 64^2*4 + 32^2*6 + 16^2*6 + 8^2*6 + 4^2*6 + 2^2*4 + 1*4
#             = 16384 + 6144 + 1536 + 384 + 96 + 16 + 4 = 24564
#  ssdlite_mobilenet_v2: 19^2*4 + 10^2*6 + 5^2*6 + 3^2*6 + 2^2*4 + 1*4
#             = 1444 + 600 + 150 + 54 + 16 + 4 = 2268
#  ssd_small (A = 4: ratios 2, 1/2): (16^2 + 8^2 + 4^2 + 2^2 + 1) * 4 = 341 * 4 = 1364
#  ssd_small_192: (24^2 + 12^2 + 6^2 + 3^2 + 2^2) * 4 = 769 * 4 = 3076
#  ssd_small_320: (80^2 + 40^2 + 20^2 + 10^2 + 5^2 + 3^2) * 4 = 8534 * 4 = 34136
README_TABLE = {  # name: (feature maps, anchors per location, anchors, parameters)
    'ssd_300_vgg': ([38, 19, 10, 5, 3, 1], [4, 6, 6, 6, 4, 4], 8732, 26_285_486),
    'ssd_512_vgg': ([64, 32, 16, 8, 4, 2, 1], [4, 6, 6, 6, 6, 4, 4], 24564, 27_188_676),
    'ssdlite_mobilenet_v2': ([19, 10, 5, 3, 2, 1], [4, 6, 6, 6, 4, 4], 2268, 3_401_710),
    'ssd_small': ([16, 8, 4, 2, 1], [4] * 5, 1364, 594_500),
    'ssd_small_192': ([24, 12, 6, 3, 2], [4] * 5, 3076, 594_500),
    'ssd_small_320': ([80, 40, 20, 10, 5, 3], [4] * 6, 34136, 615_272),
    # FPN-lite: 615,272 - 20,736 (the block7 heads' 3x3 convs read 64 fewer channels:
    # 9 * 64 * (4 * 5 + 4 * 4)) + 16,576 (the three 1x1 laterals to 64 channels, with biases).
    'ssd_small_320_fpn': ([80, 40, 20, 10, 5, 3], [4] * 6, 34136, 611_112),
}


def test_readme_table_lists_every_network():
    assert sorted(README_TABLE) == NAMES


@pytest.mark.parametrize('name', sorted(README_TABLE))
def test_readme_table_feature_maps_and_anchor_counts(name):
    maps, per_location, total, _ = README_TABLE[name]
    net = nets_factory.get_network(name)()
    anchors = net.anchors()
    assert [s[0] for s in net.params.feat_shapes] == maps
    assert [s[1] for s in net.params.feat_shapes] == maps  # square maps
    assert [h.shape[0] for _, _, h, _ in anchors] == per_location
    assert sum(y.shape[0] * y.shape[1] * h.shape[0] for y, _, h, _ in anchors) == total


@pytest.mark.parametrize('name', [
    # SSD300 is counted in test_ssd300_has_the_originals_parameter_count.
    pytest.param('ssd_512_vgg', marks=pytest.mark.slow),
    pytest.param('ssdlite_mobilenet_v2', marks=pytest.mark.slow),
    'ssd_small', 'ssd_small_192', 'ssd_small_320', 'ssd_small_320_fpn'])
def test_readme_table_parameter_counts(name):
    # With the default classes: 21 (VOC) for the VGG and MobileNet networks, 5 for ssd_small*
    # (the synthetic shapes); ssd_small and ssd_small_192 differ only in the input size, which
    # convolutions do not count.
    net = nets_factory.get_network(name)()
    assert net.params.num_classes == (5 if name.startswith('ssd_small') else 21)
    assert net.keras_model().count_params() == README_TABLE[name][3]
