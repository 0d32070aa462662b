"""`ssdlite_mobilenet_v2`: SSDLite on a Keras MobileNetV2 backbone, for mobile/TFLite export.

Network (as the SSDLite of the MobileNetV2 paper, sec. 6.2):
- Input 300x300 (or 320x320, any multiple that keeps the 6 maps) preprocessed as every network
  here (RGB 0..255 minus the VGG means 123, 117, 104); a `Rescaling` layer maps it back to the
  [-1, 1] range `keras.applications.MobileNetV2` expects.
- Backbone `keras.applications.MobileNetV2(include_top=False)` built on that tensor (its layers
  are part of this model): feature maps `block_13_expand_relu` (stride 16, 576 channels at
  alpha 1, the "layer_15 expansion output" of the TF OD API) and `out_relu` (stride 32, 1280).
- Four extra blocks `extra{1..4}`: 1x1 conv -> 3x3 depthwise stride 2 -> 1x1 conv, each with
  BatchNorm + ReLU6, out channels 512, 256, 256, 128: 300 -> maps 19, 10, 5, 3, 2, 1.
- SSDLite heads per feature map: 3x3 depthwise + BatchNorm + ReLU6, then 1x1 conv (with bias) to
  `A*4` (`{layer}_box_conv_loc`) and `A*C` (`{layer}_box_conv_cls`).
Only Conv2D, DepthwiseConv2D, BatchNormalization, ReLU6, ZeroPadding, Add, Reshape and Softmax:
builtin TFLite ops, no custom ops. Output dict as the VGG nets (float32 per-layer lists).

Feature layer names in `SSDParams.feat_layers`: 'block13' (stride 16), 'block16' (stride 32,
after the last 1x1 conv), 'extra1'..'extra4'.
"""
import keras

from nets.layers import feature_map
from nets.ssd_base import SSDNet as _SSDNetBase
from nets.ssd_base import SSDParams

__all__ = ['SSDNet', 'SSDParams', 'build_ssdlite_mobilenet_v2']

# Contract input = RGB - VGG means; MobileNetV2 wants RGB / 127.5 - 1.
_VGG_MEANS = (123., 117., 104.)
_EXTRA_CHANNELS = ((256, 512), (128, 256), (128, 256), (64, 128))  # (1x1 mid, out)
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99
_BACKBONE_FEATURES = {'block13': 'block_13_expand_relu', 'block16': 'out_relu'}
_SLIM_L2_FACTOR = 0.5  # slim's l2_regularizer(scale) = scale * sum(w^2) / 2


def build_ssdlite_mobilenet_v2(params, backbone_weights=None, alpha=1.0, weight_decay=0.0,
                               name='ssdlite_mobilenet_v2', batch_size=None):
    """Builds SSDLite-MobileNetV2 as a Keras functional model.

    Args:
      params: `SSDParams` (img_shape, num_classes, feat_layers, feat_shapes, anchor_sizes,
        anchor_ratios are used; feat_shapes are checked against the network).
      backbone_weights: None (random), a path to Keras `MobileNetV2(include_top=False)`
        weights for the same alpha, or 'imagenet' (downloaded by Keras).
      alpha: MobileNetV2 width multiplier.
      weight_decay: `L2(weight_decay / 2)` on the kernels of the extra blocks and heads (the
        Keras backbone takes no regulariser; use a decoupled weight decay for it).
    Returns:
      keras.Model: `[B, H, W, 3]` -> `{'predictions', 'localisations', 'logits'}` lists of
      `[B, H, W, A, C]`, `[B, H, W, A, 4]`, `[B, H, W, A, C]` float32.
    """
    reg = keras.regularizers.L2(weight_decay * _SLIM_L2_FACTOR) if weight_decay else None
    height, width = params.img_shape
    inputs = keras.Input(shape=(height, width, 3), batch_size=batch_size, name='image')
    x = keras.layers.Rescaling(1. / 127.5, offset=[m / 127.5 - 1. for m in _VGG_MEANS],
                               name='input_scale')(inputs)
    backbone = keras.applications.MobileNetV2(
        input_tensor=x, alpha=alpha, include_top=False, weights=None)
    if backbone_weights is not None:
        if backbone_weights == 'imagenet':
            reference = keras.applications.MobileNetV2(
                input_shape=(224, 224, 3), alpha=alpha, include_top=False, weights='imagenet')
            backbone.set_weights(reference.get_weights())
        else:
            backbone.load_weights(backbone_weights)
    end_points = {k: backbone.get_layer(v).output for k, v in _BACKBONE_FEATURES.items()}

    def bn_relu6(t, prefix):
        t = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM,
                                            name=f'{prefix}_bn')(t)
        return keras.layers.ReLU(6., name=f'{prefix}_relu6')(t)

    net = end_points['block16']
    for i, (mid, out) in enumerate(_EXTRA_CHANNELS, start=1):
        block = f'extra{i}'
        net = keras.layers.Conv2D(mid, 1, use_bias=False, kernel_regularizer=reg,
                                  name=f'{block}_conv1x1')(net)
        net = bn_relu6(net, f'{block}_conv1x1')
        net = keras.layers.DepthwiseConv2D(3, strides=2, padding='same', use_bias=False,
                                           name=f'{block}_depthwise')(net)
        net = bn_relu6(net, f'{block}_depthwise')
        net = keras.layers.Conv2D(out, 1, use_bias=False, kernel_regularizer=reg,
                                  name=f'{block}_pointwise')(net)
        net = bn_relu6(net, f'{block}_pointwise')
        end_points[block] = net

    num_classes = params.num_classes
    predictions, localisations, logits = [], [], []
    for i, layer in enumerate(params.feat_layers):
        feat = feature_map(end_points, params, i)
        feat_hw = tuple(params.feat_shapes[i])  # checked equal to the map's H, W
        n_anchors = len(params.anchor_sizes[i]) + len(params.anchor_ratios[i])
        box = f'{layer}_box'
        outs = {}
        for kind, depth in (('loc', 4), ('cls', num_classes)):
            t = keras.layers.DepthwiseConv2D(3, padding='same', use_bias=False,
                                             name=f'{box}_{kind}_depthwise')(feat)
            t = bn_relu6(t, f'{box}_{kind}_depthwise')
            t = keras.layers.Conv2D(n_anchors * depth, 1, kernel_regularizer=reg,
                                    name=f'{box}_conv_{kind}')(t)
            # [B, H, W, A*X] -> [B, H, W, A, X]: channel index a*X + x.
            outs[kind] = keras.layers.Reshape(feat_hw + (n_anchors, depth), dtype='float32',
                                              name=f'{box}_{kind}_reshape')(t)
        predictions.append(keras.layers.Softmax(axis=-1, dtype='float32',
                                                name=f'{box}_softmax')(outs['cls']))
        localisations.append(outs['loc'])
        logits.append(outs['cls'])
    outputs = {'predictions': predictions, 'localisations': localisations, 'logits': logits}
    return keras.Model(inputs, outputs, name=name)


class SSDNet(_SSDNetBase):
    """SSDLite-MobileNetV2, 300x300: feature maps 19, 10, 5, 3, 2, 1; 2268 anchors (A = 4 or 6)."""
    model_name = 'ssdlite_mobilenet_v2'
    # Scales 0.1 (first map), then 0.2 .. 0.95 as the TF OD API's ssdlite config; each layer k
    # uses (s_k, s_k+1) * 300 like the slim SSD params.
    default_params = SSDParams(
        img_shape=(300, 300),
        num_classes=21,
        no_annotation_label=21,
        feat_layers=['block13', 'block16', 'extra1', 'extra2', 'extra3', 'extra4'],
        feat_shapes=[(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)],
        anchor_size_bounds=[0.10, 0.95],
        anchor_sizes=[(30., 60.), (60., 105.), (105., 150.), (150., 195.), (195., 240.),
                      (240., 285.)],
        anchor_ratios=[[2, .5], [2, .5, 3, 1. / 3], [2, .5, 3, 1. / 3], [2, .5, 3, 1. / 3],
                       [2, .5], [2, .5]],
        anchor_steps=[16, 32, 64, 100, 150, 300],
        anchor_offset=0.5,
        normalizations=[-1, -1, -1, -1, -1, -1],
        prior_scaling=[0.1, 0.1, 0.2, 0.2])

    def keras_model(self, **kwargs):
        """The Keras model; kwargs as `build_ssdlite_mobilenet_v2` (e.g. backbone_weights)."""
        kwargs.setdefault('name', self.model_name)
        return build_ssdlite_mobilenet_v2(self.params, **kwargs)
