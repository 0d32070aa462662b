"""Weight import: TF1/slim checkpoints and Keras VGG16 `.h5` files into a `{slim_name: variable}`.

This module knows checkpoint formats and the slim naming, not the networks: every loader takes
a variable map `{slim_name: variable}` (a dict, or a callable returning one), e.g.
`nets.ssd_vgg_keras.slim_variable_map(model)`, whose keys look like
`ssd_300_vgg/conv1/conv1_1/weights`, `.../biases`, `ssd_300_vgg/block4_box/L2Normalization/gamma`.

Slim's `fc6` (7x7x512x4096) and `fc7` (1x1x4096x4096) become SSD's `conv6` (3x3x512x1024,
dilation 6) and `conv7` (1x1x1024x1024) by the SSD paper's subsampling: every 3rd tap of the
7x7 kernel (0, 3, 6) and every 4th filter (0, 4, ..., 4092), the same for biases.
"""
import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from ssd_tf import run_config

_LOG = logging.getLogger(__name__)

# fc6/fc7 of an ImageNet VGG16 that SSD's conv6/conv7 are subsampled from (paper, sec. 3).
_FC_FALLBACK = {'conv6': 'fc6', 'conv7': 'fc7'}

# Keras VGG16 layer names -> slim scopes under the SSD model scope.
_KERAS_VGG16_TO_SLIM = {f'block{b}_conv{i}': f'conv{b}/conv{b}_{i}'
                        for b, n in enumerate((2, 2, 3, 3, 3), start=1)
                        for i in range(1, n + 1)}
_KERAS_VGG16_TO_SLIM.update({'fc1': 'conv6', 'fc2': 'conv7'})
_KERAS_VGG16_LAYER_ORDER = list(_KERAS_VGG16_TO_SLIM) + ['predictions']
# Shapes of the Keras VGG16 fully connected kernels, as the conv kernels slim stored.
_FC_CONV_SHAPES = {'fc1': (7, 7, 512, 4096), 'fc2': (1, 1, 4096, 4096)}


@dataclasses.dataclass
class CheckpointReport:
    """What a loader did.

    restored: `{model variable name: source name (+ how it was converted)}`.
    skipped: `{model variable name: reason}` (excluded scopes, absent with ignore_missing_vars).
    unused: names in the file that no model variable took (e.g. `vgg_16/fc8/weights`).
    """
    source: str
    restored: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)
    unused: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"Restored {len(self.restored)} variables from {self.source}; skipped "
                 f"{len(self.skipped)}; {len(self.unused)} file variables unused."]
        lines += [f"  restored {k} <- {v}" for k, v in sorted(self.restored.items())]
        lines += [f"  skipped  {k}: {v}" for k, v in sorted(self.skipped.items())]
        lines += [f"  unused   {k}" for k in sorted(self.unused)]
        return '\n'.join(lines)


def _resolve_variable_map(variable_map):
    """dict or callable -> dict `{slim_name: variable}`; a Keras model is refused with advice."""
    if hasattr(variable_map, 'layers') and hasattr(variable_map, 'weights'):
        raise TypeError(
            "pass a variable map, not a model: e.g. "
            "`load_slim_checkpoint(nets.ssd_vgg_keras.slim_variable_map(model), path, ...)`")
    if callable(variable_map):
        variable_map = variable_map()
    if not isinstance(variable_map, dict):
        raise TypeError(f"variable_map must be a dict {{slim_name: variable}} or a callable "
                        f"returning one, got {type(variable_map).__name__}")
    return variable_map


def _split_scopes(exclude_scopes):
    """'a,b' or ['a', 'b'] or None -> ['a', 'b'] (slim's --checkpoint_exclude_scopes)."""
    if not exclude_scopes:
        return []
    if isinstance(exclude_scopes, str):
        exclude_scopes = exclude_scopes.split(',')
    return [s.strip() for s in exclude_scopes if s.strip()]


def _in_scope(name, scope):
    return name == scope or name.startswith(scope.rstrip('/') + '/')


def subsample_to_shape(value, shape):
    """Subsamples `value` along every axis whose size differs from `shape`.

    Along such an axis of size n -> m, keeps indices `0, s, 2s, ...` with
    `s = (n - 1) // (m - 1)` (m > 1): 7 -> 3 keeps 0, 3, 6 and 4096 -> 1024 keeps every 4th,
    the SSD paper's conversion of fc6/fc7. Raises ValueError when that cannot give `shape`.
    """
    value = np.asarray(value)
    shape = tuple(shape)
    if value.ndim != len(shape):
        raise ValueError(f"cannot subsample {value.shape} to {shape}: different ranks")
    index = []
    for n, m in zip(value.shape, shape):
        if n == m:
            index.append(slice(None))
        elif 1 < m < n:
            index.append(slice(0, None, (n - 1) // (m - 1)))
        else:
            raise ValueError(f"cannot subsample {value.shape} to {shape}")
    out = value[tuple(index)]
    if out.shape != shape:
        raise ValueError(f"cannot subsample {value.shape} to {shape} by a regular stride")
    return out


def _assign(var, value):
    """Assigns a numpy value to a Keras or tf variable, cast to the variable's dtype."""
    dtype = getattr(var.dtype, 'name', var.dtype)  # tf.DType or a Keras dtype string
    var.assign(np.asarray(value).astype(dtype))


def _mismatch_error(mismatches, source):
    scopes = sorted({name.rsplit('/', 1)[0] for name, _, _ in mismatches})
    details = '\n'.join(f"  {name}: model {tuple(m)} vs {source} {tuple(c)}"
                        for name, m, c in mismatches)
    return ValueError(
        f"{len(mismatches)} variables have a different shape in {source} than in the model "
        f"(e.g. a checkpoint trained with another number of classes):\n{details}\n"
        f"Skip them with --checkpoint_exclude_scopes={','.join(scopes)} (exclude_scopes=...); "
        f"--ignore_missing_vars does not help, it only skips variables absent from the "
        f"checkpoint.")


def load_slim_checkpoint(variable_map, checkpoint_path, model_scope='ssd_300_vgg',
                         checkpoint_model_scope=None, exclude_scopes=None,
                         ignore_missing_vars=False):
    """Restores a TF1/slim checkpoint by variable name, as slim's `train_ssd_network` did.

    Args:
      variable_map: `{slim_name: variable}` or a callable returning it, e.g.
        `nets.ssd_vgg_keras.slim_variable_map(model)` (pass the map, not the model).
      checkpoint_path: a checkpoint prefix (`.../model.ckpt-1234`) or a directory (its latest
        checkpoint).
      model_scope: the model's scope in the variable names ('ssd_300_vgg').
      checkpoint_model_scope: the scope in the checkpoint when it differs, e.g. 'vgg_16' for an
        ImageNet VGG16 (each model name has model_scope replaced by it). Missing `conv6`/
        `conv7` are then taken from `fc6`/`fc7`, subsampled when the shapes differ.
      exclude_scopes: comma-separated string or list of model-name prefixes not to restore
        (slim's --checkpoint_exclude_scopes), e.g. 'ssd_300_vgg/block4_box/conv_cls'.
      ignore_missing_vars: skip model variables absent from the checkpoint instead of raising.

    Returns:
      `CheckpointReport` (also logged). Raises ValueError naming the variables on a shape
      mismatch (and the flag that skips them) or on missing variables.
    """
    variables = _resolve_variable_map(variable_map)
    path = run_config.resolve_checkpoint(checkpoint_path)[1]
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise ValueError(f"cannot read the checkpoint --checkpoint_path={checkpoint_path} "
                         f"({e}); pass a TF checkpoint prefix or a directory") from e
    ckpt_shapes = reader.get_variable_to_shape_map()
    excluded = _split_scopes(exclude_scopes)
    report = CheckpointReport(source=path)
    assignments, mismatches, missing = [], [], []
    used = set()
    for name in sorted(variables):
        var = variables[name]
        scope = next((s for s in excluded if _in_scope(name, s)), None)
        if scope is not None:
            report.skipped[name] = f"excluded by scope {scope}"
            continue
        ckpt_name = name
        if checkpoint_model_scope and model_scope and _in_scope(name, model_scope):
            ckpt_name = checkpoint_model_scope + name[len(model_scope):]
        found = _checkpoint_value(reader, ckpt_shapes, ckpt_name, tuple(var.shape))
        if found[0] == 'missing':
            missing.append((name, ckpt_name))
            continue
        if found[0] == 'mismatch':
            mismatches.append((name, tuple(var.shape), found[1]))
            continue
        _, ckpt_name, value, note = found
        used.add(ckpt_name)
        assignments.append((name, var, value))
        report.restored[name] = note
    if mismatches:
        raise _mismatch_error(mismatches, path)
    if missing:
        if not ignore_missing_vars:
            names = '\n'.join(f"  {n} (looked for {c})" for n, c in missing)
            raise ValueError(
                f"{len(missing)} model variables are not in {path}:\n{names}\n"
                f"Set --checkpoint_model_scope if the checkpoint uses another scope (e.g. "
                f"vgg_16), exclude them with --checkpoint_exclude_scopes, or pass "
                f"--ignore_missing_vars to train them from their initial values.")
        for name, ckpt_name in missing:
            report.skipped[name] = f"not in checkpoint (looked for {ckpt_name})"
    for _, var, value in assignments:
        _assign(var, value)
    report.unused = sorted(set(ckpt_shapes) - used)
    _LOG.info('%s', report)
    return report


def _checkpoint_value(reader, ckpt_shapes, ckpt_name, var_shape):
    """The value for a model variable of shape `var_shape` stored as `ckpt_name`:
    `('ok', name read, value, note)`, `('missing',)` or `('mismatch', stored shape)`. A
    missing conv6/conv7 is read from fc6/fc7, subsampled when the shapes differ."""
    if ckpt_name in ckpt_shapes:
        if tuple(ckpt_shapes[ckpt_name]) != var_shape:
            return ('mismatch', tuple(ckpt_shapes[ckpt_name]))
        return ('ok', ckpt_name, reader.get_tensor(ckpt_name), ckpt_name)
    fc_name = _fc_fallback_name(ckpt_name, ckpt_shapes)
    if fc_name is None:
        return ('missing',)
    value = reader.get_tensor(fc_name)
    try:
        value = subsample_to_shape(value, var_shape)
    except ValueError:
        return ('mismatch', value.shape)
    note = (f"{fc_name}" if tuple(ckpt_shapes[fc_name]) == var_shape else
            f"{fc_name} subsampled {tuple(ckpt_shapes[fc_name])} -> {var_shape}")
    return ('ok', fc_name, value, note)


def _fc_fallback_name(ckpt_name, ckpt_shapes):
    """`<scope>/conv6/weights` -> `<scope>/fc6/weights` when only the latter is stored."""
    parts = ckpt_name.split('/')
    if len(parts) >= 2 and parts[-2] in _FC_FALLBACK:
        parts[-2] = _FC_FALLBACK[parts[-2]]
        fc_name = '/'.join(parts)
        if fc_name in ckpt_shapes:
            return fc_name
    return None


# ---------------------------------------------------------------------------- Keras VGG16 h5
def _read_keras_h5(h5_path):
    """Keras VGG16 weights file -> `{layer_name: (kernel, bias)}` as numpy arrays.

    Supports the legacy Keras 1/2 layout (the ImageNet `vgg16_weights_tf_dim_ordering_tf_kernels
    (_notop).h5`: a group per layer, datasets `<layer>/<layer>_W_1:0`, `.../kernel:0` or
    `.../kernel`) and the Keras 3 `.weights.h5` layout (`layers/<class_name>/vars/{0,1}` with
    the layer name in the `vars` group's `name` attribute).
    """
    import h5py  # noqa: WPS433 (h5py is only needed for this format)

    weights = {}
    with h5py.File(h5_path, 'r') as f:
        root = f['model_weights'] if 'model_weights' in f else f  # a full-model legacy save
        if 'layers' in root and isinstance(root['layers'], h5py.Group) \
                and 'layer_names' not in root.attrs:
            for group in root['layers'].values():
                if 'vars' not in group:
                    continue
                layer_name = group['vars'].attrs.get('name', None)
                if isinstance(layer_name, bytes):
                    layer_name = layer_name.decode('utf8')
                arrays = [group['vars'][k][()] for k in sorted(group['vars'], key=int)]
                if layer_name and arrays:
                    weights[layer_name] = _kernel_and_bias(arrays, h5_path, layer_name)
            return weights
        names = root.attrs.get('layer_names', None)
        names = ([n.decode('utf8') if isinstance(n, bytes) else str(n) for n in names]
                 if names is not None else list(root.keys()))
        for layer_name in names:
            if layer_name not in root:
                continue
            group = root[layer_name]
            arrays = []
            weight_names = group.attrs.get('weight_names', None)
            if weight_names is not None and len(weight_names):
                for w in weight_names:
                    w = w.decode('utf8') if isinstance(w, bytes) else str(w)
                    arrays.append(group[w][()])
            else:
                group.visititems(lambda _, obj: arrays.append(obj[()])
                                 if isinstance(obj, h5py.Dataset) else None)
            if arrays:
                weights[layer_name] = _kernel_and_bias(arrays, h5_path, layer_name)
    return weights


def _kernel_and_bias(arrays, h5_path, layer_name):
    kernels = [a for a in arrays if a.ndim >= 2]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1:
        raise ValueError(f"{h5_path}: layer {layer_name} should hold one kernel and one bias, "
                         f"got shapes {[a.shape for a in arrays]}")
    return kernels[0], biases[0]


def load_keras_vgg16_h5(variable_map, h5_path, model_scope='ssd_300_vgg',
                        ignore_missing_vars=True):
    """Loads Keras `VGG16` ImageNet weights (`.h5`, with or without top) into the backbone.

    `block{b}_conv{i}` -> `<model_scope>/conv{b}/conv{b}_{i}/{weights,biases}`; with the top,
    `fc1` (25088x4096, reshaped to 7x7x512x4096) -> conv6 and `fc2` (4096x4096 -> 1x1) ->
    conv7, subsampled to the model's shapes (module docstring). Model variables the file does
    not provide (the extra blocks, heads, L2Normalization; conv6/conv7 without the top) keep
    their values and are reported as skipped; with `ignore_missing_vars=False` a missing
    backbone layer (conv1..conv5) raises instead.

    Args:
      variable_map: `{slim_name: variable}` or a callable returning it.
      h5_path: the `.h5` file (legacy Keras 1/2 layout or Keras 3 `.weights.h5`).
      model_scope: scope of the model's slim names ('ssd_300_vgg').
    Returns:
      `CheckpointReport`.
    """
    variables = _resolve_variable_map(variable_map)
    if not os.path.exists(h5_path):
        raise ValueError(f"Keras VGG16 weights file {h5_path} does not exist")
    layers = _read_keras_h5(h5_path)
    report = CheckpointReport(source=h5_path)
    assignments, mismatches, missing = [], [], []
    used = set()
    for keras_name, scope in _KERAS_VGG16_TO_SLIM.items():
        for suffix, idx in (('weights', 0), ('biases', 1)):
            name = f'{model_scope}/{scope}/{suffix}'
            if name not in variables:
                continue
            var = variables[name]
            var_shape = tuple(var.shape)
            if keras_name not in layers:
                missing.append((name, keras_name))
                continue
            value = layers[keras_name][idx]
            source_shape = value.shape
            try:
                if keras_name in _FC_CONV_SHAPES and idx == 0:
                    value = value.reshape(_FC_CONV_SHAPES[keras_name])
                value = subsample_to_shape(value, var_shape)
            except ValueError:
                mismatches.append((name, var_shape, source_shape))
                continue
            used.add(keras_name)
            note = f"{keras_name}/{'kernel' if idx == 0 else 'bias'}"
            if tuple(source_shape) != var_shape:
                note += f" {tuple(source_shape)} -> {var_shape}"
            assignments.append((var, value))
            report.restored[name] = note
    if mismatches:
        raise _mismatch_error(mismatches, h5_path)
    backbone_missing = [(n, k) for n, k in missing if k not in _FC_CONV_SHAPES]
    if backbone_missing and not ignore_missing_vars:
        raise ValueError(f"{h5_path} lacks the VGG16 layers "
                         f"{sorted({k for _, k in backbone_missing})}; is it a VGG16 file?")
    for var, value in assignments:
        _assign(var, value)
    for name, keras_name in missing:
        report.skipped[name] = f"{keras_name} not in the file"
    for name in variables:
        if name not in report.restored and name not in report.skipped:
            report.skipped[name] = "no Keras VGG16 counterpart"
    report.unused = sorted(set(layers) - used)
    _LOG.info('%s', report)
    return report
