"""SSD300 with a VGG16 backbone: the slim `ssd_300_vgg` parameters and network."""
from nets.ssd_base import SSDNet as _SSDNetBase
from nets.ssd_base import SSDParams

__all__ = ['SSDNet', 'SSDParams']


class SSDNet(_SSDNetBase):
    """SSD300 VGG16 (the slim `ssd_300_vgg`): six feature maps 38, 19, 10, 5, 3, 1; 8732 anchors."""
    model_name = 'ssd_300_vgg'
    default_params = SSDParams(
        img_shape=(300, 300),
        num_classes=21,
        no_annotation_label=21,
        feat_layers=['block4', 'block7', 'block8', 'block9', 'block10', 'block11'],
        feat_shapes=[(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)],
        anchor_size_bounds=[0.15, 0.90],
        anchor_sizes=[(21., 45.), (45., 99.), (99., 153.), (153., 207.), (207., 261.),
                      (261., 315.)],
        anchor_ratios=[[2, .5], [2, .5, 3, 1. / 3], [2, .5, 3, 1. / 3], [2, .5, 3, 1. / 3],
                       [2, .5], [2, .5]],
        anchor_steps=[8, 16, 32, 64, 100, 300],
        anchor_offset=0.5,
        normalizations=[20, -1, -1, -1, -1, -1],
        prior_scaling=[0.1, 0.1, 0.2, 0.2])

    def keras_model(self, **kwargs):
        """The SSD300 Keras functional model; see `nets.ssd_vgg_keras.build_ssd_vgg_keras`."""
        from nets import ssd_vgg_keras
        return ssd_vgg_keras.build_ssd_vgg_keras(
            self.params, arch=self.model_name, reference_compat=self.reference_compat, **kwargs)
