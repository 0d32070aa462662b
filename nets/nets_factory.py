"""Network registry: model name -> `SSDNet` class (the slim `nets_factory`, for SSD)."""
from nets import ssd_mobilenet_v2
from nets import ssd_small
from nets import ssd_vgg_300
from nets import ssd_vgg_512

networks_map = {
    'ssd_300_vgg': ssd_vgg_300.SSDNet,
    'ssd_512_vgg': ssd_vgg_512.SSDNet,
    'ssdlite_mobilenet_v2': ssd_mobilenet_v2.SSDNet,
    'ssd_small': ssd_small.SSDNet,
    'ssd_small_192': ssd_small.SSDNet192,
    'ssd_small_320': ssd_small.SSDNetSmallObjects,
    'ssd_small_320_fpn': ssd_small.SSDNetSmallObjectsFPN,
}


def get_network(name):
    """The `SSDNet` class of `name` (e.g. 'ssd_300_vgg'); instantiate it with
    `(params=None, reference_compat=False)`. Raises ValueError naming the choices."""
    if name not in networks_map:
        raise ValueError(f"unknown network {name!r} (--model_name); choose one of "
                         f"{', '.join(sorted(networks_map))}")
    return networks_map[name]
