"""The VGG-style SSD networks (SSD300, SSD512 and smaller variants) as Keras functional models.

Layer for layer the slim `ssd_vgg_300` / `ssd_vgg_512` nets (NHWC only): VGG16 conv1..conv5
(3x3 SAME convs + ReLU, 2x2/2 SAME max-pools after blocks 1-4, pool5 3x3/1 SAME), conv6 3x3
dilation 6, conv7 1x1, then the extra blocks (1x1 conv, optional zero pad, 3x3 or 4x4 conv),
an L2 normalisation on conv4_3, and per feature layer two 3x3 SAME heads without activation:
`conv_loc` to `A*4` and `conv_cls` to `A*C` channels. Every conv has a bias.

Keras 3 layer names cannot contain '/', so a slim scope `conv1/conv1_1` becomes the layer
`conv1_1`, `block8/conv1x1` becomes `block8_conv1x1`, `block4_box/conv_loc` becomes
`block4_box_conv_loc` (see `keras_to_slim_scope` / `slim_to_keras_name`, inverse of each other);
`slim_variable_map` gives every weight its full slim name (`<scope>/weights|biases|gamma`).

The backbone is described by a `VGGSpec`, so `nets.ssd_small` reuses this code with fewer
channels. Model output: a dict with lists per feature layer of `predictions [B, H, W, A, C]`
(softmax), `localisations [B, H, W, A, 4]` (raw `[x, y, w, h]` offsets) and
`logits [B, H, W, A, C]`, float32 even under a mixed-precision policy.
"""
import collections
import re

import keras

from nets.layers import GAMMA_INIT_REFERENCE, L2Normalization, feature_map

# One extra feature block after conv7: `1x1 conv (mid) -> [zero pad] -> kxk conv (out)`.
ExtraBlock = collections.namedtuple(
    'ExtraBlock', ['name', 'mid_channels', 'out_channels', 'kernel', 'stride', 'pad'])

# A VGG-style SSD backbone.
#   blocks: (number of 3x3 convs, channels) of conv1..conv5; max-pool 2x2/2 after blocks 1-4.
#   conv6: (channels, kernel, dilation); conv7: channels of the 1x1 conv.
#   extras: ExtraBlock list (block8, block9, ...).
#   dropout: whether the original applied dropout (rate 0.5) after conv6 and conv7 in training.
#   input_scale: None, or a factor the (mean-subtracted 0..255) input is multiplied by first
#     (a `Rescaling` layer); networks trained from scratch use it to see inputs of unit scale.
VGGSpec = collections.namedtuple('VGGSpec',
                                 ['blocks', 'conv6', 'conv7', 'extras', 'dropout', 'input_scale'],
                                 defaults=(None,))

# A top-down fusion path (FPN-lite) over the `levels` finest feature maps, `channels` wide.
TopDown = collections.namedtuple('TopDown', ['levels', 'channels'])

_VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))

ARCH_SPECS = {
    'ssd_300_vgg': VGGSpec(
        blocks=_VGG16_BLOCKS, conv6=(1024, 3, 6), conv7=1024,
        extras=(ExtraBlock('block8', 256, 512, 3, 2, 1),
                ExtraBlock('block9', 128, 256, 3, 2, 1),
                ExtraBlock('block10', 128, 256, 3, 1, 0),
                ExtraBlock('block11', 128, 256, 3, 1, 0)),
        dropout=True),
    'ssd_512_vgg': VGGSpec(
        blocks=_VGG16_BLOCKS, conv6=(1024, 3, 6), conv7=1024,
        extras=(ExtraBlock('block8', 256, 512, 3, 2, 1),
                ExtraBlock('block9', 128, 256, 3, 2, 1),
                ExtraBlock('block10', 128, 256, 3, 2, 1),
                ExtraBlock('block11', 128, 256, 3, 2, 1),
                ExtraBlock('block12', 128, 256, 4, 1, 1)),
        dropout=False),
}

# The slim SSD's dropout after conv6/conv7 (`tf.layers.dropout(rate=dropout_keep_prob=0.5)`).
DROPOUT_RATE = 0.5
# Slim's l2_regularizer(scale) is scale * sum(w^2) / 2; Keras' L2(l2) is l2 * sum(w^2).
_SLIM_L2_FACTOR = 0.5

_SLIM_VARIABLE_NAMES = {'kernel': 'weights', 'bias': 'biases', 'gamma': 'gamma'}


def num_anchors_per_location(params):
    """Anchors per feature-map cell of each layer, `A = len(sizes) + len(ratios)` (slim).

    Not `ssd_tf.anchors.num_boxes_per_layer`, which counts all `H * W * A` boxes of a layer.
    """
    return [len(s) + len(r) for s, r in zip(params.anchor_sizes, params.anchor_ratios)]


def build_ssd_vgg_keras(params, arch='ssd_300_vgg', reference_compat=False, weight_decay=0.0,
                        dropout=None, name=None, kernel_initializer='glorot_uniform',
                        head_initializer=None, batch_size=None, top_down=None):
    """Builds a VGG-style SSD as a Keras functional model.

    Args:
      params: `SSDParams`; uses img_shape, num_classes, feat_layers, feat_shapes (checked
        against the built network), anchor_sizes/anchor_ratios (anchors per location) and
        normalizations (> 0: L2 normalisation on that layer, gamma initialised to the value).
      arch: 'ssd_300_vgg', 'ssd_512_vgg' or a `VGGSpec`.
      reference_compat: gamma initialised to 1 (slim) instead of the normalizations value, and
        dropout after conv6/conv7 when the architecture had it (unless `dropout` is given).
      weight_decay: slim's weight decay; adds `keras.regularizers.L2(weight_decay / 2)` on
        every conv kernel (slim's `l2_regularizer` is `scale * sum(w^2) / 2`). 0 adds none.
      dropout: None (follow reference_compat) or a bool.
      name: model name; defaults to the arch name (also the default slim model scope).
      kernel_initializer: conv kernel initialiser (slim: Xavier uniform = glorot_uniform).
      head_initializer: kernel initialiser of the conv_loc/conv_cls heads (default: the same).
      batch_size: optional static batch size of the input.
      top_down: None, or `TopDown(levels, channels)`: a top-down fusion path (FPN-lite)
        over the `levels` finest feature maps before the heads (`_top_down`); None keeps the
        original's heads on the raw maps.

    Returns:
      keras.Model: input float32 `[B, H, W, 3]` (H, W = params.img_shape, preprocessed
      pixels), output dict `{'predictions', 'localisations', 'logits'}` of per-layer lists
      `[B, H, W, A, C]`, `[B, H, W, A, 4]`, `[B, H, W, A, C]`.
    """
    spec, default_name = _arch_spec(arch)
    if dropout is None:
        dropout = bool(reference_compat and spec.dropout)
    regularizer = (keras.regularizers.L2(weight_decay * _SLIM_L2_FACTOR)
                   if weight_decay else None)
    conv = _conv_builder(regularizer, kernel_initializer)
    height, width = params.img_shape
    inputs = keras.Input(shape=(height, width, 3), batch_size=batch_size, name='image')
    end_points = _vgg_trunk(inputs, spec, conv, dropout)
    if top_down is not None:
        end_points = _top_down(end_points, params, conv, top_down)
    outputs = _multibox_heads(end_points, params, conv, reference_compat,
                              head_initializer or kernel_initializer)
    return keras.Model(inputs, outputs, name=name or default_name)


def _arch_spec(arch):
    """`(VGGSpec, default model name)` of an architecture name or a VGGSpec."""
    if isinstance(arch, str):
        if arch not in ARCH_SPECS:
            raise ValueError(f"arch must be one of {sorted(ARCH_SPECS)} or a VGGSpec, "
                             f"got {arch!r}")
        return ARCH_SPECS[arch], arch
    if isinstance(arch, VGGSpec):
        return arch, 'ssd_vgg'
    raise TypeError(f"arch must be an architecture name or a VGGSpec, got {arch!r}")


def _conv_builder(regularizer, kernel_initializer):
    """`conv(x, filters, kernel, layer_name, ...)`: a biased Conv2D (ReLU by default) with the
    model's regulariser and initialiser, applied to x."""
    def conv(x, filters, kernel, layer_name, strides=1, padding='same', dilation=1,
             activation='relu', initializer=kernel_initializer):
        return keras.layers.Conv2D(
            filters, kernel, strides=strides, padding=padding, dilation_rate=dilation,
            activation=activation, use_bias=True, kernel_initializer=initializer,
            bias_initializer='zeros', kernel_regularizer=regularizer, name=layer_name)(x)
    return conv


def _vgg_trunk(inputs, spec, conv, dropout):
    """VGG conv1..conv5, conv6/conv7 and the extra blocks on `inputs`; returns the end points
    `{'block1': ..., 'block7': ..., <extra block name>: ...}`."""
    end_points = {}
    net = inputs
    if spec.input_scale is not None:
        net = keras.layers.Rescaling(spec.input_scale, name='input_scale')(net)
    # VGG conv1..conv5.
    for b, (n_convs, channels) in enumerate(spec.blocks, start=1):
        for i in range(1, n_convs + 1):
            net = conv(net, channels, 3, f'conv{b}_{i}')
        end_points[f'block{b}'] = net
        if b < len(spec.blocks):
            net = keras.layers.MaxPooling2D(2, strides=2, padding='same', name=f'pool{b}')(net)
        else:
            net = keras.layers.MaxPooling2D(3, strides=1, padding='same', name=f'pool{b}')(net)
    # conv6 (the paper's dilated fc6) and conv7 (fc7).
    c6_channels, c6_kernel, c6_dilation = spec.conv6
    net = conv(net, c6_channels, c6_kernel, 'conv6', dilation=c6_dilation)
    end_points['block6'] = net
    if dropout:
        net = keras.layers.Dropout(DROPOUT_RATE, name='dropout6')(net)
    net = conv(net, spec.conv7, 1, 'conv7')
    end_points['block7'] = net
    if dropout:
        net = keras.layers.Dropout(DROPOUT_RATE, name='dropout7')(net)
    # Extra feature blocks.
    for block in spec.extras:
        net = conv(net, block.mid_channels, 1, f'{block.name}_conv1x1')
        if block.pad:
            net = keras.layers.ZeroPadding2D(block.pad, name=f'{block.name}_pad')(net)
        suffix = f'conv{block.kernel}x{block.kernel}'
        net = conv(net, block.out_channels, block.kernel, f'{block.name}_{suffix}',
                   strides=block.stride, padding='valid')
        end_points[block.name] = net
    return end_points


def _top_down(end_points, params, conv, top_down):
    """The end points with the `top_down.levels` finest feature maps of `params` replaced by
    their top-down fusion (FPN, Lin et al. 2017, without its 3x3 smoothing convs: the heads
    are 3x3 convs already): from the coarsest of them down, `p_k = lateral_k(c_k) +
    nearest_upsample(p_{k+1})`, every lateral a linear 1x1 conv to `channels`
    (`<layer>_fpn_lateral`, slim scope `<layer>/fpn_lateral`); an upsampled map larger than
    the finer one (odd sizes) is cropped at its bottom/right, the cells SAME convs padded.
    So the finest maps, only a few convs deep, see the deeper maps' features. `[B, H, W, C]`
    maps in, `[B, H, W, channels]` for the fused ones."""
    levels, channels = top_down
    if not 2 <= levels <= len(params.feat_layers):
        raise ValueError(f"top_down levels must be 2..{len(params.feat_layers)} (the feature "
                         f"maps), got {levels}")
    feats = [feature_map(end_points, params, i) for i in range(levels)]
    fused = dict(end_points)
    upper = None
    for i in reversed(range(levels)):
        layer = params.feat_layers[i]
        p = conv(feats[i], channels, 1, f'{layer}_fpn_lateral', activation=None)
        if upper is not None:
            up = keras.layers.UpSampling2D(2, interpolation='nearest',
                                           name=f'{layer}_fpn_upsample')(upper)
            h, w = feats[i].shape[1:3]
            extra_h, extra_w = up.shape[1] - h, up.shape[2] - w
            if extra_h or extra_w:
                up = keras.layers.Cropping2D(((0, extra_h), (0, extra_w)),
                                             name=f'{layer}_fpn_crop')(up)
            p = keras.layers.Add(name=f'{layer}_fpn_add')([p, up])
        fused[layer] = p
        upper = p
    return fused


def _multibox_heads(end_points, params, conv, reference_compat, head_init):
    """The per-feature-map box and class heads: `{'predictions', 'localisations', 'logits'}`,
    lists of `[B, H, W, A, C]`, `[B, H, W, A, 4]`, `[B, H, W, A, C]`."""
    anchors_per_layer = num_anchors_per_location(params)
    num_classes = params.num_classes
    predictions, localisations, logits = [], [], []
    for i, layer in enumerate(params.feat_layers):
        feat = feature_map(end_points, params, i)
        feat_hw = tuple(params.feat_shapes[i])  # checked equal to the map's H, W
        box = f'{layer}_box'
        if params.normalizations[i] > 0:
            gamma = (GAMMA_INIT_REFERENCE if reference_compat
                     else float(params.normalizations[i]))
            feat = L2Normalization(gamma_init=gamma, name=f'{box}_L2Normalization')(feat)
        n_anchors = anchors_per_layer[i]
        loc = conv(feat, n_anchors * 4, 3, f'{box}_conv_loc', activation=None,
                   initializer=head_init)
        cls = conv(feat, n_anchors * num_classes, 3, f'{box}_conv_cls', activation=None,
                   initializer=head_init)
        # [B, H, W, A*X] -> [B, H, W, A, X]: channel index a*X + x, as slim's reshape.
        loc = keras.layers.Reshape(feat_hw + (n_anchors, 4), dtype='float32',
                                   name=f'{box}_loc_reshape')(loc)
        cls = keras.layers.Reshape(feat_hw + (n_anchors, num_classes), dtype='float32',
                                   name=f'{box}_cls_reshape')(cls)
        prob = keras.layers.Softmax(axis=-1, dtype='float32', name=f'{box}_softmax')(cls)
        predictions.append(prob)
        localisations.append(loc)
        logits.append(cls)
    return {'predictions': predictions, 'localisations': localisations, 'logits': logits}


# ---------------------------------------------------------------------------- slim names
_CONV_RE = re.compile(r'^conv(\d+)_(\d+)$')
_BLOCK_RE = re.compile(r'^(block\d+(?:_box)?)_(.+)$')
_SLIM_CONV_RE = re.compile(r'^conv(\d+)/conv(\d+)_(\d+)$')


def keras_to_slim_scope(layer_name):
    """Keras layer name -> slim scope: `conv1_1` -> `conv1/conv1_1`, `block8_conv1x1` ->
    `block8/conv1x1`, `block4_box_conv_loc` -> `block4_box/conv_loc`, `conv6` -> `conv6`."""
    m = _CONV_RE.match(layer_name)
    if m:
        return f'conv{m.group(1)}/{layer_name}'
    m = _BLOCK_RE.match(layer_name)
    if m:
        return f'{m.group(1)}/{m.group(2)}'
    return layer_name


def slim_to_keras_name(scope):
    """Inverse of `keras_to_slim_scope`: `conv1/conv1_1` -> `conv1_1`, `block4_box/conv_loc`
    -> `block4_box_conv_loc`."""
    m = _SLIM_CONV_RE.match(scope)
    if m and m.group(1) == m.group(2):
        return f'conv{m.group(2)}_{m.group(3)}'
    return scope.replace('/', '_')


def slim_variable_map(model, model_scope=None):
    """`{slim_name: keras variable}` for every weight of a VGG SSD model.

    Slim names are `<model_scope>/<scope>/weights` (HWIO, as Keras), `/biases` and
    `block4_box/L2Normalization/gamma`; model_scope defaults to `model.name` (the arch name,
    e.g. 'ssd_300_vgg'). Pass the result to `ssd_tf.checkpoints.load_slim_checkpoint`.
    """
    model_scope = model.name if model_scope is None else model_scope
    variables = {}
    for layer in model.layers:
        for var in layer.weights:
            suffix = _SLIM_VARIABLE_NAMES.get(var.name)
            if suffix is None:
                raise ValueError(f"layer {layer.name} has a weight {var.name!r} with no slim "
                                 f"name")
            key = f'{model_scope}/{keras_to_slim_scope(layer.name)}/{suffix}'
            if key in variables:
                raise ValueError(f"two weights map to the slim name {key}")
            variables[key] = var
    return variables
