"""The slim scripts' flags that ask for nothing here (train_ssd.py, eval_ssd.py), defined once:
accepted at their slim default, an error naming the flag at any other value; and slim's
--preprocessing_name. No TensorFlow import: the programs define their flags before loading it.
"""


# Flags of the slim scripts that ask for nothing here at their slim default: TF1 deployment
# (model clones), queue readers, ImageNet label offsets, an image size the slim SSD never
# read. Each is defined, so that a slim command line parses; its slim default is accepted; any
# other value is an error naming the flag and what to use instead (never ignored).
SLIM_DEFAULT_ONLY = {
    'num_clones': (1, "replicas come from --strategy (mirrored: every visible GPU)"),
    'clone_on_cpu': (False, "the devices come from --strategy"),
    'labels_offset': (0, "labels are 0 for the background and 1..C-1 for the classes, the "
                         "SSD's own numbering"),
    'train_image_size': (None, "the input size is the network's (--model_name; the slim "
                               "SSD did not read this flag either)"),
    'num_readers': (4, "the pipeline reads TFRecord shards in parallel by itself; the "
                       "decode/augment parallelism is --num_preprocessing_threads"),
}
# The one SSD pre-processing and the names slim's preprocessing_factory gave it (the
# network names).
PREPROCESSING_NAME = 'ssd_vgg'


def define_slim_default_only_flags(flags, names):
    """Defines the `SLIM_DEFAULT_ONLY` flags `names` with their slim defaults."""
    for name in names:
        default, why = SLIM_DEFAULT_ONLY[name]
        text = (f"Slim flag, accepted at its slim default ({default}) only: {why}.")
        if isinstance(default, bool):
            flags.DEFINE_boolean(name, default, text)
        else:
            flags.DEFINE_integer(name, default, text)


def slim_default_only_errors(flag_values, names):
    """One message per flag of `names` (`SLIM_DEFAULT_ONLY`) set to another value than the
    slim default."""
    errors = []
    for name in names:
        default, why = SLIM_DEFAULT_ONLY[name]
        value = flag_values[name].value
        if value != default:
            errors.append(f"--{name}={value} is not supported ({why}); remove it")
    return errors


def preprocessing_name_error(value):
    """None when `value` (--preprocessing_name) names the SSD pre-processing (None,
    'ssd_vgg', or a network name as slim's factory took them), else the message."""
    if value in (None, PREPROCESSING_NAME):
        return None
    from nets import nets_factory  # imports TensorFlow: only for a name to check
    known = (PREPROCESSING_NAME,) + tuple(sorted(nets_factory.networks_map))
    if value in known:
        return None
    return (f"--preprocessing_name={value} is unknown; the SSD pre-processing is "
            f"{PREPROCESSING_NAME!r} (also named {', '.join(known[1:])})")
