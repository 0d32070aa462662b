"""A SavedModel signature for the SSD models, whose nested output the default signature rejects.

The network contract's output `{'predictions': [...], 'localisations': [...], 'logits': [...]}`
(lists per feature layer) is not a valid signature output ("a Tensor, a sequence of Tensors or
a dict from string to Tensor"), so `model.export()` and `tf.saved_model.save(model)` fail
without an explicit signature. `serving_signature(model)` flattens it to
`{'predictions_0', ..., 'localisations_0', ..., 'logits_0', ...}` (index = feature layer).
"""
import tensorflow as tf


def flatten_outputs(outputs):
    """`{'predictions': [t0, t1, ...], ...}` -> `{'predictions_0': t0, 'predictions_1': t1}`."""
    return {f'{key}_{i}': t for key, tensors in outputs.items() for i, t in enumerate(tensors)}


def unflatten_outputs(flat):
    """Inverse of `flatten_outputs`: `{'predictions_0': t0, ...}` -> `{'predictions': [t0]}`."""
    out = {}
    for name in sorted(flat, key=lambda n: (n.rsplit('_', 1)[0], int(n.rsplit('_', 1)[1]))):
        out.setdefault(name.rsplit('_', 1)[0], []).append(flat[name])
    return out


def serving_signature(model):
    """A concrete `tf.function` `image [B, H, W, 3] float32 -> flatten_outputs(model(image))`.

    Use: `tf.saved_model.save(model, path, signatures={'serving_default':
    serving_signature(model)})`; the loaded object's `signatures['serving_default'](image=x)`
    returns the flat dict (`unflatten_outputs` rebuilds the lists).
    """
    _, height, width, channels = model.input.shape
    spec = tf.TensorSpec([None, height, width, channels], tf.float32, name='image')

    @tf.function(input_signature=[spec])
    def serve(image):
        return flatten_outputs(model(image, training=False))

    return serve.get_concrete_function()
