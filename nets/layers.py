"""Custom Keras layers of the SSD networks: only the L2 normalisation of conv4_3 has weights.

The slim SSD's other custom layers map onto stock Keras layers: `pad2d` is
`keras.layers.ZeroPadding2D(1)` (the same symmetric zero pad of one pixel on H and W) and
`channel_to_last` is the identity under NHWC, the only layout used here.
"""
import keras
from keras import ops

# Slim's `tf.nn.l2_normalize(x, axis=-1, epsilon=1e-12)`: x * rsqrt(max(sum x^2, eps)).
L2_NORM_EPSILON = 1e-12
# The paper (and Caffe SSD) start conv4_3's scale at 20; the slim SSD left it at 1.
GAMMA_INIT_PAPER = 20.
GAMMA_INIT_REFERENCE = 1.


@keras.saving.register_keras_serializable(package='ssd_tf')
class L2Normalization(keras.layers.Layer):
    """`x * rsqrt(max(sum_c x^2, 1e-12)) * gamma` over the channel axis, gamma per channel.

    Input `[B, H, W, C]` (NHWC) -> same shape. The weight is named `gamma`, shape `[C]`, as
    the slim `custom_layers.l2_normalization` variable `.../L2Normalization/gamma`.

    The norm is always computed in float32: the layer's dtype policy defaults to `'float32'`
    even when the global policy is mixed (`mixed_float16` / `mixed_bfloat16`), so the input is
    cast up, `gamma` is a float32 variable, and the next layer casts the result back down.

    Args:
      gamma_init: initial value of every gamma (20 as in the paper; 1 reproduces the slim
        SSD's `reference_compat` initialisation).
      epsilon: lower bound of the squared norm (1e-12 as `tf.nn.l2_normalize`).
    """

    def __init__(self, gamma_init=GAMMA_INIT_PAPER, epsilon=L2_NORM_EPSILON, **kwargs):
        kwargs.setdefault('dtype', 'float32')
        super().__init__(**kwargs)
        self.gamma_init = float(gamma_init)
        self.epsilon = float(epsilon)
        self.gamma = None

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension must be known, got input "
                             f"shape {input_shape}")
        self.gamma = self.add_weight(
            name='gamma', shape=(channels,),
            initializer=keras.initializers.Constant(self.gamma_init), trainable=True)

    def call(self, inputs):
        x = ops.cast(inputs, 'float32')
        sq_sum = ops.sum(ops.square(x), axis=-1, keepdims=True)  # [B, H, W, 1]
        x = x * ops.rsqrt(ops.maximum(sq_sum, self.epsilon))
        return x * ops.cast(self.gamma, 'float32')

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(gamma_init=self.gamma_init, epsilon=self.epsilon)
        return config


def feature_map(end_points, params, i):
    """The network's output for feature layer `i` of `params`, checked against the params.

    end_points: `{block name: tensor [B, H, W, C]}` of the built network. Raises ValueError
    when `params.feat_layers[i]` is not a block of the network or its map is not
    `params.feat_shapes[i]` at `params.img_shape`.
    """
    layer = params.feat_layers[i]
    if layer not in end_points:
        raise ValueError(f"params.feat_layers names {layer!r}, which this network does "
                         f"not have; available: {sorted(end_points)}")
    feat = end_points[layer]
    feat_hw = tuple(feat.shape[1:3])
    if tuple(params.feat_shapes[i]) != feat_hw:
        raise ValueError(f"params.feat_shapes[{i}] is {tuple(params.feat_shapes[i])} but "
                         f"{layer} is {feat_hw} for an input of {params.img_shape}; fix "
                         f"feat_shapes or img_shape")
    return feat
