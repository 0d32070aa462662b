"""`SSDDetector`: the SSD as a Keras model that compiles, fits, predicts, saves and exports.

It is not the job of this module to hold any SSD maths: it binds the homes of each job to the
Keras `Model` API. `train_step`/`test_step` run the one training loss
(`training.count_positives` + `training.replica_losses`, what train_ssd.py's step runs) on
batches of `data.build_dataset` with an `encode_fn` (`detector.encode_targets`);
`predict_step` runs `postprocess.detections_of`; `export` writes the SavedModel of
`export.saved_model.export_saved_model` (the `DetectionModule` of export_savedmodel.py);
`from_checkpoint` loads a run or a checkpoint with `builder.load_model`, as every command does.

Inputs: `call()` and the training batches take pre-processed float images `[B, h, w, 3]` (RGB
minus the VGG means, what the pipeline's `preprocess_fn` gives). `predict` takes uint8 RGB
images at the network size `[B, h, w, 3]` (the evaluation pre-processing runs in the graph, as
in the export) or such float pre-processed images, or a dataset of either, and returns
`{'boxes' [B, K, 4] yxyx relative, 'classes' [B, K] int32 1..C-1, 'scores' [B, K],
'num_detections' [B] int32}` (K = keep_top_k; rows past num_detections are zero).

The network is rebuilt from its name by `nets.nets_factory` when a `.keras` file is loaded
(Keras' `load_model` can only pass a config) and the eval pre-processing comes from
`preprocessing`.
"""
import dataclasses

import keras
import tensorflow as tf

from nets import nets_factory
from preprocessing import ssd_vgg_preprocessing as prep
from ssd_tf import builder
from ssd_tf import postprocess
from ssd_tf import training as training_lib
from ssd_tf.export import saved_model as export_lib

# train_ssd.py --weight_decay (slim's L2 scale on every conv kernel).
DEFAULT_WEIGHT_DECAY = 0.0005
METRIC_NAMES = ('loss', 'cls_loss', 'loc_loss')
TARGET_KEYS = ('gclasses', 'glocalisations', 'gscores')
# SSDParams fields stored as lists of pairs in a config, turned back into tuples on load.
_TUPLE_FIELDS = ('img_shape',)
_TUPLE_LIST_FIELDS = ('feat_shapes', 'anchor_sizes')


def _network_class(name):
    """`nets.nets_factory.get_network(name)` (ValueError naming the choices)."""
    return nets_factory.get_network(name)


def _eval_preprocess(img_shape):
    """The evaluation pre-processing of export_savedmodel.py: `image uint8 [H, W, 3] ->
    (float32 [h, w, 3] warped to img_shape minus the VGG means, bbox_img [4])`."""
    return prep.image_preprocess_fn(img_shape)


def detection_settings(detection=None):
    """`postprocess.DETECTION_DEFAULTS` and `test_time_flip` (False) updated by `detection`
    (select_threshold, nms_threshold, top_k, keep_top_k, test_time_flip); ValueError naming an
    unknown or out-of-range one."""
    settings = dict(postprocess.DETECTION_DEFAULTS, test_time_flip=False)
    given = dict(detection or {})
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise ValueError(f"detection: unknown setting(s) {unknown}; the settings are "
                         f"{sorted(settings)}")
    settings.update(given)
    for key in ('select_threshold', 'nms_threshold'):
        settings[key] = float(settings[key])
        if not 0. <= settings[key] <= 1.:
            raise ValueError(f"detection: {key}={settings[key]} must be in [0, 1]")
    for key in ('top_k', 'keep_top_k'):
        if int(settings[key]) != settings[key] or int(settings[key]) < 1:
            raise ValueError(f"detection: {key}={settings[key]} must be a positive integer")
        settings[key] = int(settings[key])
    flip = settings['test_time_flip']
    if isinstance(flip, str) or flip not in (True, False):
        raise ValueError(f"detection: test_time_flip={settings['test_time_flip']!r} must be "
                         f"True or False")
    settings['test_time_flip'] = bool(settings['test_time_flip'])
    return settings


def _params_to_config(params):
    """SSDParams -> a JSON-friendly dict (tuples become lists)."""
    def plain(v):
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v
    return {k: plain(v) for k, v in params._asdict().items()}


def _params_from_config(net_cls, values):
    """A config's params dict -> the network's SSDParams (field names checked)."""
    fields = type(net_cls.default_params)._fields
    if set(values) != set(fields):
        raise ValueError(f"the saved SSDDetector params have fields {sorted(values)}; "
                         f"{net_cls.__name__} needs {sorted(fields)}")
    values = dict(values)
    for k in _TUPLE_FIELDS:
        values[k] = tuple(values[k])
    for k in _TUPLE_LIST_FIELDS:
        values[k] = [tuple(x) for x in values[k]]
    return type(net_cls.default_params)(**values)


@keras.saving.register_keras_serializable(package='ssd_tf')
class SSDDetector(keras.Model):
    """An SSD network of `nets.nets_factory` as a Keras model (see the module docstring).

    Args:
      net: the `SSDNet` object (params, anchors, encoding, loss, decoding), e.g.
        `nets_factory.get_network('ssd_small')(params)`; or use `from_network`.
      label_names: the C-1 object class names (ids 1..C-1), saved and exported with the model.
      detection: overrides of `postprocess.DETECTION_DEFAULTS` for `predict` (select_threshold,
        nms_threshold, top_k candidates per class, keep_top_k detections per image) and
        `test_time_flip` (each image also detected mirrored, averaged in; default False);
        `export` uses the same settings and keeps `max_detections`.
      weight_decay: slim's L2 weight decay on every conv kernel, added to the loss
        (train_ssd.py's default 0.0005; 0 for none).
      model: the Keras network to wrap (default `net.keras_model(weight_decay=...)`); its
        input must be the network's img_shape and it must be built with `weight_decay`.
    """

    def __init__(self, net, label_names=None, detection=None,
                 weight_decay=DEFAULT_WEIGHT_DECAY, model=None, **kwargs):
        super().__init__(**kwargs)
        if not (hasattr(net, 'params') and hasattr(net, 'keras_model')):
            raise TypeError(f"SSDDetector takes an SSDNet (nets.nets_factory), got "
                            f"{type(net).__name__}; or use SSDDetector.from_network(name)")
        num_classes = int(net.params.num_classes)
        if label_names is not None:
            label_names = tuple(str(n) for n in label_names)
            if len(label_names) != num_classes - 1:
                raise ValueError(f"{len(label_names)} label_names for num_classes={num_classes} "
                                 f"(the object classes + background): give {num_classes - 1}")
        self.net = net
        self.label_names = label_names
        self.detection = detection_settings(detection)
        self.weight_decay = float(weight_decay or 0.)
        self.network = model if model is not None else \
            net.keras_model(weight_decay=self.weight_decay)
        export_lib.check_model(net, self.network)
        if bool(self.network.losses) != bool(self.weight_decay):
            raise ValueError(f"SSDDetector: weight_decay={self.weight_decay} but the model was "
                             f"built {'with' if self.network.losses else 'without'} weight "
                             f"decay; build it with net.keras_model(weight_decay=...) of the "
                             f"same value")
        self.loss_config = training_lib.LossConfig()
        self.loss_trackers = [keras.metrics.Mean(name=n) for n in METRIC_NAMES]
        self.built = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_network(cls, name, num_classes=None, label_names=None, reference_compat=False,
                     **kwargs):
        """The detector of network `name` (`nets_factory`, e.g. 'ssd_small'): its default
        params with `num_classes` (default: len(label_names) + 1, else the network's).
        kwargs: as the constructor (detection, weight_decay, name)."""
        net_cls = _network_class(name)
        if num_classes is None:
            num_classes = len(label_names) + 1 if label_names is not None \
                else net_cls.default_params.num_classes
        params = net_cls.default_params._replace(num_classes=int(num_classes),
                                                 no_annotation_label=int(num_classes))
        return cls(net_cls(params, reference_compat=reference_compat), label_names=label_names,
                   **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint_path, model_name=None, num_classes=None, label_map=None,
                        **kwargs):
        """The detector of a train_ssd.py run (a train_dir or checkpoint prefix; config.json
        beside it gives the network, classes and labels; a run with --moving_average_decay
        gives its averaged weights, a run with --test_time_flip detects so unless `detection`
        says `test_time_flip`) or of a slim checkpoint (pass model_name, num_classes).
        `model_name`/`num_classes` that contradict the run are a ValueError naming both."""
        try:
            built = builder.load_model(checkpoint_path, model_name, num_classes,
                                       label_map=label_map)
        except ValueError as e:
            raise ValueError(f"SSDDetector.from_checkpoint({checkpoint_path!r}): {e}") from None
        detection = dict(kwargs.pop('detection', None) or {})
        detection.setdefault('test_time_flip',
                             builder.run_test_time_flip(None, built.config))
        detector = cls(built.net, label_names=built.label_names, detection=detection, **kwargs)
        detector.network.set_weights(built.model.get_weights())
        return detector

    def get_config(self):
        return {'name': self.name, 'trainable': self.trainable,
                'network': self.net.model_name, 'params': _params_to_config(self.net.params),
                'reference_compat': bool(self.net.reference_compat),
                'label_names': None if self.label_names is None else list(self.label_names),
                'detection': dict(self.detection), 'weight_decay': self.weight_decay}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        net_cls = _network_class(config.pop('network'))
        params = _params_from_config(net_cls, config.pop('params'))
        net = net_cls(params, reference_compat=config.pop('reference_compat', False))
        return cls(net, **config)

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer='adam', match_threshold=training_lib.LossConfig.match_threshold,
                negative_ratio=training_lib.LossConfig.negative_ratio,
                alpha=training_lib.LossConfig.alpha,
                label_smoothing=training_lib.LossConfig.label_smoothing,
                class_balance=training_lib.LossConfig.class_balance, **kwargs):
        """Keras `compile` with the multibox loss options of train_ssd.py (same defaults:
        --match_threshold, --negative_ratio, --loss_alpha, --label_smoothing,
        --class_balance). Other keyword
        arguments go to Keras (steps_per_execution, jit_compile, run_eagerly, ...); `loss` and
        `metrics` are not taken (the loss is the SSD's; it reports loss, cls_loss, loc_loss).
        For train_ssd.py's optimizer pass `training.build_optimizer(...)`; under a
        mixed_float16 policy Keras wraps the optimizer in a LossScaleOptimizer."""
        for key in ('loss', 'loss_weights', 'metrics', 'weighted_metrics'):
            if kwargs.pop(key, None) is not None:
                raise ValueError(f"SSDDetector.compile: {key}= is not taken; the detector "
                                 f"trains with the SSD multibox loss (match_threshold, "
                                 f"negative_ratio, alpha, label_smoothing) and reports "
                                 f"{', '.join(METRIC_NAMES)}")
        if not 0. < match_threshold <= 1.:
            raise ValueError(f"SSDDetector.compile: match_threshold={match_threshold} must be "
                             f"in (0, 1]")
        if negative_ratio < 0. or alpha < 0.:
            raise ValueError(f"SSDDetector.compile: negative_ratio={negative_ratio} and "
                             f"alpha={alpha} must be >= 0")
        if not 0. <= label_smoothing < 1.:
            raise ValueError(f"SSDDetector.compile: label_smoothing={label_smoothing} must be "
                             f"in [0, 1)")
        if label_smoothing and self.net.reference_compat:
            raise ValueError("SSDDetector.compile: label_smoothing with reference_compat: the "
                             "slim loss ignores it; drop one of them")
        if not 0. <= class_balance <= 1.:
            raise ValueError(f"SSDDetector.compile: class_balance={class_balance} must be "
                             f"in [0, 1]")
        if class_balance and self.net.reference_compat:
            raise ValueError("SSDDetector.compile: class_balance with reference_compat: the "
                             "slim loss has no class weights; drop one of them")
        self.loss_config = training_lib.LossConfig(float(match_threshold),
                                                   float(negative_ratio), float(alpha),
                                                   float(label_smoothing), float(class_balance))
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config['ssd_loss'] = dataclasses.asdict(self.loss_config)
        return config

    def compile_from_config(self, config):
        config = dict(config)
        loss_options = config.pop('ssd_loss', {})
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config, **loss_options)
        if self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    # ------------------------------------------------------------------ training
    @property
    def metrics(self):
        return list(self.loss_trackers)

    def call(self, inputs, training=None):
        """Pre-processed images `[B, h, w, 3]` -> the network's raw dict of per-layer lists
        `predictions`/`logits` `[B, H, W, A, C]`, `localisations` `[B, H, W, A, 4]`."""
        return self.network(inputs, training=training)

    def encode_targets(self, labels, bboxes):
        """One image's ground truth (labels `[N]`, bboxes `[N, 4]` yxyx relative) -> the
        per-layer targets, with the compiled match_threshold: the `encode_fn` of
        `data.build_dataset` for `fit`/`evaluate`."""
        return self.net.bboxes_encode(labels, bboxes, self.net.anchors(),
                                      match_threshold=self.loss_config.match_threshold)

    def _training_batch(self, data, where):
        """`(images, targets)` of a `data.build_dataset` batch; ValueError when the targets
        are not the encoded ones of this network."""
        if not (isinstance(data, (tuple, list)) and len(data) >= 2 and
                isinstance(data[1], dict) and all(k in data[1] for k in TARGET_KEYS)):
            raise ValueError(
                f"SSDDetector.{where} takes batches (images, targets) of ssd_tf.data."
                f"build_dataset with encode_fn=detector.encode_targets (targets "
                f"{', '.join(TARGET_KEYS)}); got {tf.nest.map_structure(lambda t: t.shape, data)}")
        images, targets = data[0], data[1]
        self._check_images(images, where)
        want = len(self.net.params.feat_layers)
        for key in TARGET_KEYS:
            if len(targets[key]) != want:
                raise ValueError(f"SSDDetector.{where}: targets[{key!r}] has "
                                 f"{len(targets[key])} layers, {self.net.model_name} has {want}: "
                                 f"encode with this detector's encode_targets")
        return images, targets

    def _check_images(self, images, where):
        h, w = (int(s) for s in self.net.params.img_shape)
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[3] != 3 or \
                any(s is not None and s != want for s, want in zip(shape[1:3], (h, w))):
            raise ValueError(f"SSDDetector.{where}: images of shape {list(shape)}; "
                             f"{self.net.model_name} takes [batch, {h}, {w}, 3] (resize them to "
                             f"the network input, or use export() / ssd_tf.detect, which take "
                             f"images of any size)")

    def _loss_terms(self, images, targets, training):
        """The loss terms of this replica's batch (`training.replica_losses`), normalised by
        the positives and the size of the global batch."""
        outputs = self(images, training=training)
        ctx = tf.distribute.get_replica_context()
        local = tf.cast(tf.shape(images)[0], tf.float32)
        n_pos, batch = ctx.all_reduce(
            tf.distribute.ReduceOp.SUM,
            [training_lib.count_positives(self.net, targets, self.loss_config), local])
        return training_lib.replica_losses(
            self.net, outputs, targets, self.loss_config, n_pos, local / tf.maximum(batch, 1.),
            self.network.losses,
            training_lib.global_class_positives(self.net, targets, self.loss_config))

    def _update_metrics(self, losses):
        # Each replica holds its share of the global loss; the trackers average over the
        # replicas, so each adds num_replicas x its share (one replica: the loss itself).
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        values = (losses['total'], losses['cross_entropy_pos'] + losses['cross_entropy_neg'],
                  losses['localization'])
        for tracker, value in zip(self.loss_trackers, values):
            tracker.update_state(value * replicas)
        return {m.name: m.result() for m in self.loss_trackers}

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose='auto', callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=None, **kwargs):
        """`keras.Model.fit`, with `shuffle` defaulting to False for a `tf.data.Dataset` (the
        batches of `data.build_dataset` are shuffled there; Keras ignores shuffle=True for a
        dataset and warns on every call) and to Keras's True for anything else."""
        if shuffle is None:
            shuffle = not isinstance(x, tf.data.Dataset)
        return super().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                           callbacks=callbacks, validation_split=validation_split,
                           validation_data=validation_data, shuffle=shuffle, **kwargs)

    def train_step(self, data):
        images, targets = self._training_batch(data, 'fit')
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            losses = self._loss_terms(images, targets, training=True)
            scaled = self.optimizer.scale_loss(losses['total'])
        grads = tape.gradient(scaled, variables)
        summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                                losses['total'])
        grads = training_lib.poison_gradients(grads, summed)
        self.optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables)
                                        if g is not None])
        return self._update_metrics(losses)

    def test_step(self, data):
        images, targets = self._training_batch(data, 'evaluate')
        return self._update_metrics(self._loss_terms(images, targets, training=False))

    # ------------------------------------------------------------------ inference
    def predict(self, x, *args, **kwargs):
        """Keras `predict`; images of the wrong size or dtype are a ValueError up front."""
        spec = x.element_spec if isinstance(x, tf.data.Dataset) else x
        if isinstance(spec, (tuple, list)) and spec:
            spec = spec[0]
        if hasattr(spec, 'shape') and hasattr(spec, 'dtype'):
            self._check_images(spec, 'predict')
            self._check_dtype(tf.as_dtype(spec.dtype))
        return super().predict(x, *args, **kwargs)

    @staticmethod
    def _check_dtype(dtype):
        if dtype != tf.uint8 and not dtype.is_floating:
            raise ValueError(f"SSDDetector.predict: images of dtype {dtype.name}; give "
                             f"uint8 RGB images or float32 pre-processed ones")

    def _network_input(self, images):
        """uint8 images -> the eval pre-processing (in the graph); float images are taken as
        pre-processed (cast to float32)."""
        images = tf.convert_to_tensor(images)
        self._check_images(images, 'predict')
        self._check_dtype(images.dtype)
        h, w = (int(s) for s in self.net.params.img_shape)
        # a traced predict function may have relaxed the static shape: check it at run time
        tf.debugging.assert_equal(
            tf.shape(images)[1:3], tf.constant([h, w]),
            message=f"SSDDetector.predict: {self.net.model_name} takes images of {h}x{w}")
        if images.dtype == tf.uint8:
            preprocess = _eval_preprocess((h, w))
            return tf.map_fn(lambda im: tf.cast(preprocess(im)[0], tf.float32), images,
                             fn_output_signature=tf.TensorSpec([h, w, 3], tf.float32))
        return tf.cast(images, tf.float32)

    def predict_step(self, data):
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        det = postprocess.detections_of(self, self._network_input(images), self.net,
                                        self.net.anchors(), **self.detection)
        return {'boxes': det['bboxes'], 'classes': det['classes'], 'scores': det['scores'],
                'num_detections': det['num_detections']}

    def make_predict_function(self, force=False):
        # Combined NMS has no XLA kernel: predict runs without XLA even when training uses it.
        jit, self._jit_compile = self._jit_compile, False
        try:
            return super().make_predict_function(force)
        finally:
            self._jit_compile = jit

    def export(self, filepath, format='tf_saved_model', verbose=True, input_signature=None,
               version=1, overwrite=False, max_detections=postprocess.MAX_DETECTIONS,
               max_image_pixels=export_lib.MAX_IMAGE_PIXELS,
               max_batch_size=export_lib.MAX_BATCH_SIZE):
        """Writes the SavedModel of export_savedmodel.py to `filepath/<version>/` (TF
        Serving's layout; signatures `serving_default` on encoded image bytes of any size and
        `serving_images` on uint8 images, labels in assets/) and returns that path. The
        detection thresholds and top_k are this detector's, `max_detections` per image;
        an existing version is an error unless `overwrite`."""
        if format != 'tf_saved_model':
            raise ValueError(f"SSDDetector.export: format={format!r}; only 'tf_saved_model' "
                             f"(for TFLite, run export_savedmodel.py --tflite on a checkpoint)")
        if input_signature is not None:
            raise ValueError("SSDDetector.export: the signatures are fixed (serving_default: "
                             "image_bytes string [None]; serving_images: uint8 [None, None, "
                             "None, 3]); input_signature is not taken")
        det = self.detection
        target = export_lib.export_saved_model(
            self.net, self.network, _eval_preprocess(self.net.params.img_shape), filepath,
            version=version, overwrite=overwrite, label_names=self.label_names,
            select_threshold=det['select_threshold'], nms_threshold=det['nms_threshold'],
            max_detections=max_detections, top_k=det['top_k'],
            metadata={'exported_by': 'SSDDetector.export'}, max_image_pixels=max_image_pixels,
            max_batch_size=max_batch_size, test_time_flip=det['test_time_flip'])
        if verbose:
            print(f"SavedModel: {target}")
        return target
