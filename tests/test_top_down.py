"""The top-down fusion path (FPN-lite, `nets.ssd_vgg_keras._top_down`) and the network that
uses it, `ssd_small_320_fpn`."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from nets import nets_factory
from nets import ssd_small
from nets import ssd_vgg_keras
from nets.ssd_base import SSDParams


def _ones_conv(x, filters, kernel, layer_name, activation=None, **_):
    """A 1x1 conv whose kernel is all ones and bias zero: the sum over the input channels."""
    return keras.layers.Conv2D(filters, kernel, padding='same', activation=activation,
                               kernel_initializer='ones', bias_initializer='zeros',
                               name=layer_name)(x)


def _params(shapes):
    n = len(shapes)
    return SSDParams(img_shape=(8, 8), num_classes=2, no_annotation_label=2,
                     feat_layers=[f'block{i + 3}' for i in range(n)],
                     feat_shapes=[(s, s) for s in shapes], anchor_size_bounds=[0.1, 0.9],
                     anchor_sizes=[(1., 2.)] * n, anchor_ratios=[[2, .5]] * n,
                     anchor_steps=[8 / s for s in shapes], anchor_offset=0.5,
                     normalizations=[-1] * n, prior_scaling=[0.1, 0.1, 0.2, 0.2])


def _top_down_graph(maps, levels):
    """`_top_down` with sum-of-channels laterals (channels=1) on Keras inputs shaped like the
    `[H, W, C]` arrays `maps` (one per feature map, finest first): (inputs, end points, fused)."""
    params = _params([m.shape[0] for m in maps])
    inputs = [keras.Input(m.shape) for m in maps]
    end_points = {f'block{i + 3}': x for i, x in enumerate(inputs)}
    fused = ssd_vgg_keras._top_down(end_points, params, _ones_conv,
                                    ssd_vgg_keras.TopDown(levels, 1))
    return inputs, end_points, fused


def _fuse(maps, levels):
    """Runs `_top_down_graph` on the arrays `maps`; returns every fused map `[H, W]`."""
    inputs, _, fused = _top_down_graph(maps, levels)
    model = keras.Model(inputs, [fused[f'block{i + 3}'] for i in range(len(maps))])
    out = model([m[None].astype('float32') for m in maps])
    return [np.asarray(o)[0, ..., 0] for o in out]


def test_top_down_golden_even_sizes():
    # fine 4x4 of ones (1 channel), coarse 2x2 [[1, 2], [3, 4]] given as 2 channels that sum
    # to it. Lateral = channel sum; fine = 1 + nearest upsample of the coarse map:
    fine = np.ones((4, 4, 1))
    coarse = np.stack([[[1, 2], [3, 4]], [[0, 0], [0, 0]]], axis=-1)
    p_fine, p_coarse = _fuse([fine, coarse], levels=2)
    np.testing.assert_array_equal(p_coarse, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(p_fine, [[2, 2, 3, 3],
                                           [2, 2, 3, 3],
                                           [4, 4, 5, 5],
                                           [4, 4, 5, 5]])


def test_top_down_golden_odd_size_crops_bottom_right_and_chains_three_levels():
    # 3 levels 3x3 (zeros), 2x2 (zeros), 1x1 (7): the 1x1 reaches every cell of the 2x2,
    # whose 4x4 upsampling is cropped to 3x3 at its bottom/right; then [[1, 2], [3, 4]] on
    # the middle map shows which rows and columns the crop keeps.
    p0, p1, p2 = _fuse([np.zeros((3, 3, 1)), np.zeros((2, 2, 1)), np.full((1, 1, 1), 7.)], 3)
    np.testing.assert_array_equal(p2, [[7]])
    np.testing.assert_array_equal(p1, np.full((2, 2), 7.))
    np.testing.assert_array_equal(p0, np.full((3, 3), 7.))
    p0, p1 = _fuse([np.zeros((3, 3, 1)), np.array([[1., 2.], [3., 4.]])[..., None]], 2)
    np.testing.assert_array_equal(p0, [[1, 1, 2],
                                       [1, 1, 2],
                                       [3, 3, 4]])


def test_top_down_leaves_the_coarser_maps_alone():
    # levels=2 of 3 maps: the third (coarsest) map is the raw end point, not a lateral
    maps = [np.ones((4, 4, 1)), np.ones((2, 2, 2)), np.full((1, 1, 1), 5.)]
    inputs, end_points, fused = _top_down_graph(maps, levels=2)
    assert fused['block5'] is end_points['block5']
    p = keras.Model(inputs, fused['block3'])([m[None].astype('float32') for m in maps])
    np.testing.assert_array_equal(np.asarray(p)[0, ..., 0], np.full((4, 4), 3.))  # 1 + (1+1)


@pytest.mark.parametrize('levels', [0, 1, 4])
def test_top_down_levels_out_of_range(levels):
    params = _params([4, 2, 1])
    end_points = {f'block{i + 3}': keras.Input((s, s, 1)) for i, s in enumerate([4, 2, 1])}
    with pytest.raises(ValueError, match='top_down levels must be 2..3'):
        ssd_vgg_keras._top_down(end_points, params, _ones_conv,
                                ssd_vgg_keras.TopDown(levels, 1))


def test_fpn_network_same_maps_and_anchors_as_ssd_small_320():
    fpn = nets_factory.get_network('ssd_small_320_fpn')()
    plain = nets_factory.get_network('ssd_small_320')()
    assert fpn.params == plain.params
    assert fpn.default_learning_rate == plain.default_learning_rate == 0.006
    model = fpn.keras_model()
    x = tf.random.uniform((1, 320, 320, 3), -120., 130., seed=3)
    out = model(x)
    assert [tuple(t.shape[1:3]) for t in out['logits']] == \
        [(80, 80), (40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    # the block3 heads read the fused map: 64 channels from block3's lateral 1x1
    head = model.get_layer('block3_box_conv_cls')
    assert head.input.shape[-1] == 64
    assert model.get_layer('block3_fpn_add') is not None


def test_fpn_slim_names_and_gradients_reach_the_laterals():
    net = nets_factory.get_network('ssd_small_320_fpn')(
        ssd_small.SSDNetSmallObjectsFPN.default_params._replace(num_classes=3))
    model = net.keras_model()
    vmap = ssd_vgg_keras.slim_variable_map(model)
    for layer in ('block3', 'block4', 'block7'):
        assert vmap[f'ssd_small_320_fpn/{layer}/fpn_lateral/weights'].shape[-1] == 64
    assert len(vmap) == len(model.weights)
    # the finest map's loss moves block7's lateral (through two upsamplings)
    x = tf.random.uniform((1, 320, 320, 3), -120., 130., seed=4)
    lateral7 = model.get_layer('block7_fpn_lateral').kernel
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x)['logits'][0] ** 2)
    grad = tape.gradient(loss, lateral7)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0.


@pytest.mark.slow
def test_fpn_network_exports_to_tflite_float32_and_int8(tmp_path):
    # The upsampling and adds of the top-down path convert (RESIZE_NEAREST_NEIGHBOR, ADD) in
    # float32 and full-integer int8; float32 gives the TensorFlow function's detections.
    from conftest import sharpened_network
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf.datasets import synthetic
    from ssd_tf.export import tflite as export_tflite
    from ssd_tf.export import tflite_runtime
    net, model = sharpened_network(0, 'ssd_small_320_fpn')
    whiten = prep.image_preprocess_fn((320, 320))
    images = [synthetic.synthetic_image(0, synthetic.TEST_FIRST_INDEX + i, 320)[0]
              for i in range(4)]
    calib = export_tflite.representative_images(images, (320, 320))
    paths = export_tflite.export_tflite(net, model, lambda im: whiten(im)[0], tmp_path,
                                        ('float32', 'int8'), calib, metadata='off')
    fn = export_tflite.tflite_detection_function(net, model, lambda im: whiten(im)[0])
    ref = {k: v.numpy() for k, v in fn(tf.constant(images[0][None])).items()}
    n = int(ref['num_detections'][0])
    assert n > 0
    for q in ('float32', 'int8'):
        out = tflite_runtime.TFLiteDetector(str(paths[q])).run_resized(images[0][None])
        scores, count = out['detection_scores'][0], int(out['num_detections'][0])
        assert count > 0 and np.all((scores >= 0) & (scores <= 1))
        if q == 'float32':
            assert count == n
            np.testing.assert_allclose(np.sort(scores[:n]),
                                       np.sort(ref['detection_scores'][0, :n]), atol=1e-4)
