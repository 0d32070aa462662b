"""SSD512 with a VGG16 backbone: the slim `ssd_512_vgg` parameters and network."""
from nets.ssd_base import SSDNet as _SSDNetBase
from nets.ssd_base import SSDParams

__all__ = ['SSDNet', 'SSDParams']


class SSDNet(_SSDNetBase):
    """SSD512 VGG16 (the slim `ssd_512_vgg`): seven feature maps 64 .. 1; 24564 anchors."""
    model_name = 'ssd_512_vgg'
    default_params = SSDParams(
        img_shape=(512, 512),
        num_classes=21,
        no_annotation_label=21,
        feat_layers=['block4', 'block7', 'block8', 'block9', 'block10', 'block11', 'block12'],
        feat_shapes=[(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)],
        anchor_size_bounds=[0.10, 0.90],
        anchor_sizes=[(20.48, 51.2), (51.2, 133.12), (133.12, 215.04), (215.04, 296.96),
                      (296.96, 378.88), (378.88, 460.8), (460.8, 542.72)],
        anchor_ratios=[[2, .5], [2, .5, 3, 1. / 3], [2, .5, 3, 1. / 3], [2, .5, 3, 1. / 3],
                       [2, .5, 3, 1. / 3], [2, .5], [2, .5]],
        anchor_steps=[8, 16, 32, 64, 128, 256, 512],
        anchor_offset=0.5,
        normalizations=[20, -1, -1, -1, -1, -1, -1],
        prior_scaling=[0.1, 0.1, 0.2, 0.2])

    def keras_model(self, **kwargs):
        """The SSD512 Keras functional model; see `nets.ssd_vgg_keras.build_ssd_vgg_keras`."""
        from nets import ssd_vgg_keras
        return ssd_vgg_keras.build_ssd_vgg_keras(
            self.params, arch=self.model_name, reference_compat=self.reference_compat, **kwargs)
