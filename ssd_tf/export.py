"""Export of a trained SSD for serving: a SavedModel for TF Serving and TFLite flatbuffers.

It is not the job of this module to build networks or pre-process images: the network object
(`SSDNet`: `params`, `anchors()`, `bboxes_decode`), the Keras model and a `preprocess_fn` are
arguments (the scripts `export_savedmodel.py` and `python -m ssd_tf.detect` wire them up).

SavedModel (`export_saved_model`), written in TF Serving's versioned layout
`output_dir/<version>/{saved_model.pb, variables/, assets/labels.txt}`:
- `serving_default`: input `image_bytes` `tf.string [None]` (encoded JPEG/PNG/GIF/BMP images of
  any size; in a TF Serving REST request `{"instances": [{"b64": "<base64>"}, ...]}`, the name
  ending in `_bytes` also meets Cloud AI Platform's convention);
- `serving_images`: input `images` `uint8 [None, None, None, 3]` RGB (one size per batch).
Both decode (bytes only, with `ssd_tf.images.decode_image`), pre-process each image with
`preprocess_fn` (the evaluation pre-processing: warp resize to the network input, minus the VGG
means), run the network, decode boxes on the anchors and apply combined NMS
(`postprocess.detected_bboxes_combined`). Request limits, fixed at export and recorded in
export_config.json: at most `max_batch_size` images (default 64), each within
`max_image_pixels` read from its header before decoding (default 200 MP), decoded
`decode_parallelism` (2) at a time; a request over a limit, or with bad bytes, is an
InvalidArgument naming the image index and the limit, and the model serves the next request.
Outputs (TF Object Detection API names and dtypes), K = max_detections:
  `detection_boxes [B, K, 4]` float32 `[ymin, xmin, ymax, xmax]` relative to the ORIGINAL image,
  `detection_scores [B, K]` float32, sorted, `detection_classes [B, K]` float32 class ids
  1..C-1 (labels.txt `id:name`), `num_detections [B]` float32; rows past num_detections are 0.

TFLite (`convert_tflite`): batch 1, fixed input `images` uint8 `[1, H, W, 3]` RGB already resized
to the network's `img_shape` (the app resizes the camera frame; the mean subtraction is in the
model). Outputs in the order of the object-detector task APIs (MediaPipe, TFLite Task Library,
the TF OD API's TFLite_Detection_PostProcess ports), both as output index 0..3 and as
ascending tensor indices (`_order_outputs`): `detection_boxes [1, K, 4]` (yxyx relative to the
input), `detection_classes [1, K]` (float, 0-based: class id - 1, the line of
labels_tflite.txt / the embedded label file; the SavedModel's ids are 1-based),
`detection_scores [1, K]`, `num_detections [1]` (float32); the signature `serving_default`
names them too. With mediapipe installed (`--tflite_metadata`, `ssd_tf.tflite_metadata`) the
file carries the metadata and labels the phone SDKs read. `TFLiteDetector` (LiteRT's
interpreter, `tflite_interpreter`) returns the SavedModel's 1-based ids.
Post-processing (`--tflite_postprocess`, `postprocess.TFLITE_POSTPROCESS_OPTIONS`):
`builtin_nms` uses builtin ops only (TOPK_V2, GATHER, NON_MAX_SUPPRESSION_V4 per class,
unrolled over the C-1 classes, then a TOPK_V2 over all kept boxes): the same semantics as the
SavedModel's combined NMS; `detection_postprocess` is the custom op TFLite_Detection_PostProcess
(decoding and regular per-class NMS in one op, in the default op resolver of TFLite/LiteRT).
Variants: float32, float16 (weights), dynamic (int8 weights, float activations), int8 (the
network's weights and activations in int8, calibrated on representative images; the
pre-processing, box decoding and NMS stay float32 by selective quantisation, since quantising
them cost most of the mAP). Measured on a trained ssd_small (200 synthetic test images, VOC07
mAP): SavedModel 0.832, float32 0.832, float16 0.832, dynamic 0.830, int8 0.830.
"""
import json
import os
import shutil
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from ssd_tf import anchors as anchors_lib
from ssd_tf import boxes as boxes_lib
from ssd_tf import images as images_lib
from ssd_tf import postprocess
# Moved to postprocess (the home of every NMS variant); re-exported for existing callers.
from ssd_tf.postprocess import tflite_postprocess  # noqa: F401
from ssd_tf.run_config import EXPORT_CONFIG_FILENAME  # its home: run_config

# Detection defaults of a deployed model: postprocess's, with MAX_DETECTIONS (100) kept.
SELECT_THRESHOLD = postprocess.SELECT_THRESHOLD
NMS_THRESHOLD = postprocess.NMS_THRESHOLD
MAX_DETECTIONS = postprocess.MAX_DETECTIONS
SELECT_TOP_K = postprocess.SELECT_TOP_K

BYTES_INPUT = 'image_bytes'
IMAGES_INPUT = 'images'
BYTES_SIGNATURE = 'serving_default'
IMAGES_SIGNATURE = 'serving_images'
OUTPUT_KEYS = ('detection_boxes', 'detection_classes', 'detection_scores', 'num_detections')
LABELS_FILENAME = 'labels.txt'          # `id:name` lines, 0:none first (datasets.labelmap)
TFLITE_LABELS_FILENAME = 'labels_tflite.txt'  # one name per line, line i = TFLite class i
TFLITE_QUANTIZATIONS = ('float32', 'float16', 'dynamic', 'int8')

# Request limits of the serving signatures (export_savedmodel.py --max_image_pixels,
# --max_batch_size). Images of one request are decoded and pre-processed DECODE_PARALLELISM at a
# time, so the worst request holds DECODE_PARALLELISM decoded images of max_image_pixels
# (3 bytes a pixel) plus the batch at the network's input size.
MAX_IMAGE_PIXELS = images_lib.DEFAULT_MAX_PIXELS
MAX_BATCH_SIZE = 64
DECODE_PARALLELISM = 2


def _check_model(net, model):
    h, w = net.params.img_shape
    shape = tuple(model.input.shape)
    if len(shape) != 4 or tuple(shape[1:3]) != (h, w) or shape[3] != 3:
        raise ValueError(f"the model input {shape} does not match the network's img_shape "
                         f"{(h, w)}; build the model with net.keras_model()")


def decode_image(data, index, max_pixels=None):
    """Decodes image `index` of a request (scalar string) to uint8 `[H, W, 3]` RGB with
    `ssd_tf.images.decode_image`: bad bytes or an image over `max_pixels` raise
    InvalidArgumentError 'image <index> of the batch (0-based): <reason>'."""
    return images_lib.decode_image(
        data, max_pixels, where=tf.strings.format('image {} of the batch (0-based)', index))


def _check_batch(n, max_batch_size):
    """Assert op: a request of `n` images is within `max_batch_size`."""
    return tf.debugging.Assert(n <= max_batch_size, [tf.strings.format(
        'the request has {} images; this model takes at most {} per request (export_savedmodel.py '
        '--max_batch_size); split the request', (n, max_batch_size))], name='check_batch_size')


class DetectionModule(tf.Module):
    """The exported object: the network plus decode, pre-processing and NMS in the graph.

    Args:
      net: `SSDNet` (params.img_shape, anchors(), bboxes_decode).
      model: its Keras model (`net.keras_model()`, weights restored).
      preprocess_fn: `image uint8 [H, W, 3] -> (image float32 [h, w, 3], bbox_img [4])`, graph
        code; bbox_img is the original image's extent in network-input coordinates
        (`[0, 0, 1, 1]` for a warp resize).
      select_threshold, nms_threshold, max_detections, top_k: post-processing (top_k
        candidates per class before NMS).
      label_file: optional labels.txt path, saved as the asset `labels_file` (copied into
        the SavedModel's assets/).
      max_image_pixels: pixel budget of one image (header checked before decoding; None: no
        limit); max_batch_size: images per request; decode_parallelism: images decoded and
        pre-processed at once. Requests over a limit raise InvalidArgumentError naming it.
    Methods `detect_bytes(image_bytes)` and `detect_images(images)` are the two signatures.
    """

    def __init__(self, net, model, preprocess_fn, select_threshold=SELECT_THRESHOLD,
                 nms_threshold=NMS_THRESHOLD, max_detections=MAX_DETECTIONS,
                 top_k=SELECT_TOP_K, label_file=None, max_image_pixels=MAX_IMAGE_PIXELS,
                 max_batch_size=MAX_BATCH_SIZE, decode_parallelism=DECODE_PARALLELISM):
        super().__init__(name='ssd_detection')
        _check_model(net, model)
        self.model = model
        self._net = net
        self._anchors = net.anchors()
        self._preprocess_fn = preprocess_fn
        self._nms = dict(select_threshold=float(select_threshold),
                         nms_threshold=float(nms_threshold), top_k=int(top_k),
                         keep_top_k=int(max_detections))
        self._max_pixels = None if max_image_pixels is None else int(max_image_pixels)
        self._max_batch = int(max_batch_size)
        self._parallel = int(decode_parallelism)
        h, w = net.params.img_shape
        self._out_spec = (tf.TensorSpec([h, w, 3], tf.float32), tf.TensorSpec([4], tf.float32))
        if label_file is not None:
            self.labels_file = tf.saved_model.Asset(label_file)
        self.detect_bytes = tf.function(
            self._detect_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
        self.detect_images = tf.function(
            self._detect_images,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)])

    def _preprocess(self, image):
        image, bbox_img = self._preprocess_fn(image)
        return tf.cast(image, tf.float32), tf.cast(bbox_img, tf.float32)

    def _detect_bytes(self, image_bytes):
        n = tf.shape(image_bytes)[0]

        def one(args):
            data, index = args
            return self._preprocess(decode_image(data, index, self._max_pixels))

        with tf.control_dependencies([_check_batch(n, self._max_batch)]):
            images, bbox_img = tf.map_fn(one, (image_bytes, tf.range(n)),
                                         fn_output_signature=self._out_spec,
                                         parallel_iterations=self._parallel)
        return self._detect(images, bbox_img)

    def _detect_images(self, images):
        shape = tf.shape(images)
        checks = [_check_batch(shape[0], self._max_batch)]
        if self._max_pixels is not None:
            pixels = tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64)
            checks.append(tf.debugging.Assert(pixels <= self._max_pixels, [tf.strings.format(
                'images of {}x{} pixels are over the limit of {} (export_savedmodel.py '
                '--max_image_pixels)', (shape[2], shape[1], self._max_pixels))],
                name='check_image_pixels'))
        with tf.control_dependencies(checks):
            images, bbox_img = tf.map_fn(self._preprocess, images,
                                         fn_output_signature=self._out_spec,
                                         parallel_iterations=self._parallel)
        return self._detect(images, bbox_img)

    def _detect(self, images, bbox_img):
        """Pre-processed `[B, h, w, 3]`, bbox_img `[B, 4]` -> the output dict (a request of
        zero images gets the outputs of shape [0, ...] without running the network)."""
        k = self._nms['keep_top_k']
        empty = {'detection_boxes': tf.zeros([0, k, 4]), 'detection_scores': tf.zeros([0, k]),
                 'detection_classes': tf.zeros([0, k]), 'num_detections': tf.zeros([0])}
        return tf.cond(tf.shape(images)[0] > 0,
                       lambda: self._detect_nonempty(images, bbox_img), lambda: empty)

    def _detect_nonempty(self, images, bbox_img):
        out = self.model(images, training=False)
        det = postprocess.detections_from_raw(out['predictions'], out['localisations'],
                                              self._net, self._anchors, **self._nms)
        boxes = to_original_relative(det['bboxes'], bbox_img)
        live = tf.range(self._nms['keep_top_k'])[None, :] < det['num_detections'][:, None]
        boxes = tf.where(live[..., None], boxes, 0.)
        return {'detection_boxes': boxes,
                'detection_scores': det['scores'],
                'detection_classes': tf.cast(det['classes'], tf.float32),
                'num_detections': tf.cast(det['num_detections'], tf.float32)}

    def signatures(self):
        """`{'serving_default': ..., 'serving_images': ...}` concrete functions."""
        return {BYTES_SIGNATURE: self.detect_bytes.get_concrete_function(),
                IMAGES_SIGNATURE: self.detect_images.get_concrete_function()}


def to_original_relative(boxes, bbox_img):
    """Boxes `[B, K, 4]` yxyx relative to the network input -> relative to the original image
    (bbox_img `[B, 4]`: the original's extent in network-input coordinates), clipped to [0, 1]."""
    bbox_img = tf.convert_to_tensor(bbox_img)
    return boxes_lib.clip_boxes(boxes_lib.reframe(boxes, bbox_img[:, None, :]))


def version_dir(output_dir, version):
    """`output_dir/<version>` (TF Serving's layout); version must be a positive integer."""
    if int(version) != version or int(version) < 1:
        raise ValueError(f"--version={version} must be a positive integer (TF Serving loads "
                         f"numbered subdirectories)")
    return os.path.join(os.fspath(output_dir), str(int(version)))


def export_saved_model(net, model, preprocess_fn, output_dir, version=1, overwrite=False,
                       label_names=None, select_threshold=SELECT_THRESHOLD,
                       nms_threshold=NMS_THRESHOLD, max_detections=MAX_DETECTIONS,
                       top_k=SELECT_TOP_K, metadata=None, max_image_pixels=MAX_IMAGE_PIXELS,
                       max_batch_size=MAX_BATCH_SIZE, decode_parallelism=DECODE_PARALLELISM,
                       before_publish=None):
    """Writes the SavedModel to `output_dir/<version>/` and returns that path.

    label_names: object class names (ids 1..C-1), written as `assets/labels.txt` (`id:name`
    lines, `0:none` first) and `assets/labels_tflite.txt`; `assets/export_config.json` records
    the thresholds, image shape, request limits (max_image_pixels, max_batch_size,
    decode_parallelism: see `DetectionModule`) and `metadata`. An existing version directory
    is an error unless `overwrite`. before_publish: optional `fn(staged_version_dir)` that adds
    files to the complete version before it is published (export_savedmodel.py writes the
    TFLite models there). The version is written in full to a staging directory inside
    `output_dir` and then moved into place (`publish_version`), so a server watching
    `output_dir` never sees a half-written version and a failure at any point, with
    `overwrite`, leaves the old version in place.
    """
    target = version_dir(output_dir, version)
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to replace it or "
                              f"choose another --version")
    num_classes = net.params.num_classes
    if label_names is not None and len(label_names) != num_classes - 1:
        raise ValueError(f"the label map has {len(label_names)} classes but the network has "
                         f"num_classes={num_classes} (= classes + background); pass the run's "
                         f"labels.txt with --label_map")
    os.makedirs(os.fspath(output_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{int(version)}-tmp-', dir=os.fspath(output_dir))
    try:
        extra = tempfile.mkdtemp(prefix='.assets-', dir=staging)
        label_file = None
        if label_names is not None:
            label_file = write_label_files(label_names, extra)[0]
        config = dict(model_name=getattr(net, 'model_name', None), num_classes=num_classes,
                      image_shape=list(net.params.img_shape), select_threshold=select_threshold,
                      nms_threshold=nms_threshold, max_detections=max_detections, top_k=top_k,
                      label_names=list(label_names) if label_names is not None else None,
                      signatures={BYTES_SIGNATURE: BYTES_INPUT, IMAGES_SIGNATURE: IMAGES_INPUT},
                      max_image_pixels=max_image_pixels, max_batch_size=max_batch_size,
                      decode_parallelism=decode_parallelism, **(metadata or {}))
        module = DetectionModule(net, model, preprocess_fn, select_threshold, nms_threshold,
                                 max_detections, top_k, label_file=label_file,
                                 max_image_pixels=max_image_pixels,
                                 max_batch_size=max_batch_size,
                                 decode_parallelism=decode_parallelism)
        out = os.path.join(staging, 'model')
        tf.saved_model.save(module, out, signatures=module.signatures())
        assets = os.path.join(out, 'assets')
        os.makedirs(assets, exist_ok=True)
        if label_names is not None:
            shutil.copy(os.path.join(extra, TFLITE_LABELS_FILENAME), assets)
        with open(os.path.join(assets, EXPORT_CONFIG_FILENAME), 'w') as f:
            json.dump(config, f, indent=2, sort_keys=True)
        if before_publish is not None:
            before_publish(out)
        if os.path.exists(target) and not overwrite:
            raise FileExistsError(f"{target} appeared during the export; pass --overwrite to "
                                  f"replace it")
        publish_version(out, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def publish_version(staged, target):
    """Moves the complete directory `staged` to `target` (same file system). An existing
    `target` is swapped with it in one atomic rename (Linux renameat2 RENAME_EXCHANGE), or
    where that is missing by two renames that put the old version back if the second fails;
    the old version then ends at `staged` (the caller deletes it)."""
    if not os.path.exists(target):
        os.rename(staged, target)
        return
    if _exchange(staged, target):
        return
    old = f'{staged}-old'
    os.rename(target, old)
    try:
        os.rename(staged, target)
    except BaseException:
        os.rename(old, target)
        raise
    os.rename(old, staged)


def _exchange(a, b):
    """Atomically swaps paths a and b (renameat2 with RENAME_EXCHANGE); False where the C
    library or the file system lacks it."""
    import ctypes
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h>, <linux/fs.h>
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def write_label_files(label_names, directory):
    """Writes `labels.txt` (`id:name`, `0:none` first) and `labels_tflite.txt` (one name per
    line, no background: line i = the 0-based TFLite class i = class id i + 1, as the label
    file embedded in the .tflite metadata) into `directory`; returns both paths."""
    from ssd_tf.datasets import labelmap as labelmap_lib
    path = labelmap_lib.LabelMap(list(label_names)).write(os.path.join(directory,
                                                                       LABELS_FILENAME))
    plain = os.path.join(directory, TFLITE_LABELS_FILENAME)
    with open(plain, 'w', encoding='utf-8') as f:
        f.write('\n'.join(list(label_names)) + '\n')
    return path, plain


# ---------------------------------------------------------------------------- TFLite
def tflite_detection_function(net, model, whiten_fn, select_threshold=SELECT_THRESHOLD,
                              nms_threshold=NMS_THRESHOLD, max_detections=MAX_DETECTIONS,
                              top_k=SELECT_TOP_K, postprocess_op=postprocess.TFLITE_POSTPROCESS):
    """A concrete function `images uint8 [1, H, W, 3] -> dict of the four TFLite outputs`
    (classes 0-based, see the module docstring).

    whiten_fn: `image uint8 [H, W, 3] (already the network's size) -> float32 [H, W, 3]`, the
    pre-processing without the resize (e.g. the eval pre-processing, whose warp resize to the
    same size is the identity). postprocess_op: one of `postprocess.TFLITE_POSTPROCESS_OPTIONS`
    ('detection_postprocess' computes only once converted; `top_k` does not apply to it).
    """
    _check_model(net, model)
    if postprocess_op not in postprocess.TFLITE_POSTPROCESS_OPTIONS:
        raise ValueError(f"--tflite_postprocess={postprocess_op} must be one of "
                         f"{', '.join(postprocess.TFLITE_POSTPROCESS_OPTIONS)}")
    h, w = net.params.img_shape
    anchors = net.anchors()
    num_classes = net.params.num_classes

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.uint8, name=IMAGES_INPUT)])
    def detect(images):
        image = tf.cast(whiten_fn(images[0]), tf.float32)[None]
        out = model(image, training=False)
        scores = tf.concat([tf.reshape(p, [-1, num_classes]) for p in out['predictions']], 0)
        if postprocess_op == 'detection_postprocess':
            # Raw outputs only: the custom op is added after freezing (`_fused_postprocess`).
            offsets = tf.concat([tf.reshape(o, [-1, 4]) for o in out['localisations']], 0)
            return {'offsets': offsets, 'scores': scores}
        decoded = net.bboxes_decode(out['localisations'], anchors)
        boxes = tf.concat([tf.reshape(b, [-1, 4]) for b in decoded], 0)
        b, c, s, n = tflite_postprocess(scores, boxes, num_classes, select_threshold,
                                        nms_threshold, max_detections, top_k)
        c = tf.maximum(c - 1., 0.)  # 0-based; padding rows stay 0
        return _tflite_outputs(b, c, s, n)

    concrete = detect.get_concrete_function()
    if postprocess_op == 'detection_postprocess':
        flat = anchors_lib.anchors_flat(anchors)
        scales = postprocess.detection_postprocess_scales(net.params.prior_scaling,
                                                          net.reference_compat)
        # Freezing the variables (convert_tflite) inlines and constant-folds functions, which
        # would erase the op's composite function: convert_tflite applies this after it.
        concrete._fused_postprocess = lambda raw: _tflite_outputs(  # pylint: disable=protected-access
            *postprocess.tflite_detection_postprocess(
                raw['offsets'], raw['scores'], flat, num_classes, scales, select_threshold,
                nms_threshold, max_detections))
    return concrete


def _tflite_outputs(boxes, classes, scores, count):
    """One image's `[M, 4], [M], [M], []` -> the TFLite output dict (batch 1)."""
    return {'detection_boxes': boxes[None], 'detection_classes': classes[None],
            'detection_scores': scores[None], 'num_detections': count[None]}


def convert_tflite(concrete_fn, quantization='float32', representative_images=None,
                   network_scope=None):
    """Converts a `tflite_detection_function` to a TFLite flatbuffer (bytes).

    quantization: 'float32'; 'float16' (float16 weights); 'dynamic' (int8 weights, float
    activations); 'int8' (int8 weights and activations calibrated on `representative_images`,
    an iterable of uint8 `[1, H, W, 3]` arrays; float kernels where no int8 one exists, e.g.
    NMS). Uses TFLite builtin ops only (no Select TF ops), plus TFLite_Detection_PostProcess
    when the function uses it (any other custom op is refused). network_scope: with 'int8',
    the Keras model's name; only ops whose tensor names contain it are quantised (the network),
    the pre-processing, box decoding and NMS keep float32 (see the comment in the code). The
    outputs come out in the task APIs' order (`_order_outputs`).
    """
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"--tflite_quantization={quantization} must be one of "
                         f"{', '.join(TFLITE_QUANTIZATIONS)}")
    # Keras 3 variables captured by the function are not frozen by the converter (they stay
    # READ_VARIABLE ops without values): freeze them to constants first, then re-wrap the frozen
    # graph so that the TFLite signature keeps the output names (a frozen function's outputs are
    # output_0..), via a variable-free SavedModel.
    from tensorflow.python.framework import convert_to_constants
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete_fn)
    spec = concrete_fn.structured_input_signature[0][0]
    keys = sorted(concrete_fn.structured_outputs)
    fused = getattr(concrete_fn, '_fused_postprocess', None)

    @tf.function(input_signature=[spec], autograph=False)
    def named(images):
        outputs = frozen(images)
        if not isinstance(outputs, dict):
            outputs = dict(zip(keys, tf.nest.flatten(outputs)))
        if fused is not None:
            return fused(outputs)
        return {k: outputs[k] for k in keys}

    holder = tf.Module()
    holder.detect = named
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(holder, tmp, signatures={'serving_default':
                                                     named.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        # TFLite_Detection_PostProcess is a custom op (in the default resolver); _order_outputs
        # refuses any other custom op.
        converter.allow_custom_ops = True
        if quantization != 'float32':
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == 'float16':
            converter.target_spec.supported_types = [tf.float16]
        elif quantization == 'int8':
            if representative_images is None:
                raise ValueError("int8 quantization needs representative images for calibration")
            images = list(representative_images)
            if not images:
                raise ValueError("int8 quantization: the representative data set is empty")
            converter.representative_dataset = lambda: ([np.asarray(im, np.uint8)] for im in images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
            if network_scope:
                # Selective quantisation: int8 inside the network only; box decoding (exp,
                # anchor arithmetic), score flattening and NMS stay float. Quantising them
                # cost ~60% of the mAP of a trained ssd_small (VOC07 0.83 -> 0.33).
                float_converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
                float_converter.allow_custom_ops = True
                nodes = _nodes_outside(float_converter.convert(), network_scope)
                with warnings.catch_warnings():
                    # The debugger (TF's converter tooling) builds tf.lite.Interpreters
                    # internally; its deprecation notice is not about how we run models.
                    warnings.filterwarnings('ignore', message='.*tf.lite.Interpreter is '
                                            'deprecated', category=UserWarning)
                    debugger = tf.lite.experimental.QuantizationDebugger(
                        converter=converter, debug_dataset=converter.representative_dataset,
                        debug_options=tf.lite.experimental.QuantizationDebugOptions(
                            denylisted_nodes=nodes))
                    return _order_outputs(debugger.get_nondebug_quantized_model())
        return _order_outputs(converter.convert())


def _order_outputs(tflite_model, order=OUTPUT_KEYS):
    """The model with its signature outputs `order` as outputs 0..3 AND as the last, ascending
    tensor indices (MediaPipe's metadata writer pairs location, category, score, count with the
    outputs by ascending tensor index; the converter's own order is arbitrary: it put
    num_detections first). Refuses custom ops other than TFLite_Detection_PostProcess."""
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))
    for code in model.operatorCodes:
        name = code.customCode.decode() if code.customCode else None
        if name and name != postprocess.DETECTION_POSTPROCESS_OP:
            raise ValueError(f"the TFLite model needs the custom op {name}, which the TFLite "
                             f"runtimes do not provide")
    sig = model.signatureDefs[0]
    graph = model.subgraphs[sig.subgraphIndex]
    by_name = {t.name.decode(): t.tensorIndex for t in sig.outputs}
    if sorted(by_name) != sorted(order):
        raise ValueError(f"TFLite outputs {sorted(by_name)}, expected {list(order)}")
    outs = [by_name[k] for k in order]
    keep = [i for i in range(len(graph.tensors)) if i not in outs]
    new_index = {old: new for new, old in enumerate(keep + outs)}
    graph.tensors = [graph.tensors[i] for i in keep + outs]
    remap = lambda ids: [new_index[i] if i >= 0 else i for i in ids]  # noqa: E731  (-1: none)
    for op in graph.operators:
        op.inputs = remap(op.inputs)
        op.outputs = remap(op.outputs)
        if op.intermediates is not None:
            op.intermediates = remap(op.intermediates)
    graph.inputs = remap(graph.inputs)
    graph.outputs = remap(outs)
    for t in list(sig.inputs) + list(sig.outputs):
        t.tensorIndex = new_index[t.tensorIndex]
    sig.outputs = sorted(sig.outputs, key=lambda t: order.index(t.name.decode()))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _nodes_outside(tflite_model, scope):
    """Output tensor names of the ops of a TFLite model whose names lack `scope` (the Keras
    model's name): the pre- and post-processing around the network."""
    interp = tflite_interpreter(model_content=tflite_model)
    names = {d['index']: d['name'] for d in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():  # pylint: disable=protected-access
        out.extend(names[i] for i in op['outputs'] if scope not in names[i])
    return out


def export_tflite(net, model, whiten_fn, output_dir, quantizations=('float32',),
                  representative_images=None, select_threshold=SELECT_THRESHOLD,
                  nms_threshold=NMS_THRESHOLD, max_detections=MAX_DETECTIONS,
                  top_k=SELECT_TOP_K, label_names=None,
                  postprocess_op=postprocess.TFLITE_POSTPROCESS, metadata='auto'):
    """Writes `output_dir/model_<quantization>.tflite` for each variant; returns their paths.

    representative_images: needed for 'int8' (uint8 `[1, H, W, 3]` arrays, resized to the
    network input). label_names: also writes labels.txt and labels_tflite.txt beside.
    postprocess_op: `postprocess.TFLITE_POSTPROCESS_OPTIONS`. metadata: 'auto' | 'on' | 'off'
    (`tflite_metadata.resolve_mode`): embed MediaPipe's object-detector metadata and the
    label file (needs label_names and mediapipe; 'on' fails without them, 'auto' says once).
    """
    from ssd_tf import tflite_metadata
    with_metadata = tflite_metadata.resolve_mode(metadata)
    if with_metadata and label_names is None:
        if metadata == 'on':
            raise ValueError("--tflite_metadata=on needs the label names (a label map)")
        with_metadata = False
    os.makedirs(output_dir, exist_ok=True)
    fn = tflite_detection_function(net, model, whiten_fn, select_threshold, nms_threshold,
                                   max_detections, top_k, postprocess_op)
    paths = {}
    for q in quantizations:
        data = convert_tflite(fn, q, representative_images, network_scope=model.name)
        if with_metadata:
            data = tflite_metadata.add_metadata(data, label_names)
        paths[q] = os.path.join(output_dir, f'model_{q}.tflite')
        with open(paths[q], 'wb') as f:
            f.write(data)
    if label_names is not None:
        write_label_files(label_names, output_dir)
    return paths


def representative_images(images, img_shape, limit=100):
    """uint8 `[1, h, w, 3]` arrays (bilinear warp to `img_shape`, as the eval pre-processing)
    from RGB uint8 images of any size, for int8 calibration; at most `limit`."""
    out = []
    for image in images:
        if len(out) >= limit:
            break
        resized = tf.image.resize(tf.convert_to_tensor(image)[None], img_shape)
        out.append(np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8))
    return out


def tflite_interpreter(model_path=None, model_content=None, num_threads=None):
    """LiteRT's interpreter (`ai_edge_litert.interpreter.Interpreter`, PyPI `ai-edge-litert`;
    `tf.lite.Interpreter` is deprecated) on a .tflite file or bytes; its default op resolver
    has TFLite_Detection_PostProcess."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ImportError(f"running a .tflite model needs LiteRT: pip install ai-edge-litert "
                          f"({e})") from e
    if model_path is not None:
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise ValueError(f"{model_path}: no such .tflite file")
    try:
        return Interpreter(model_path=model_path, model_content=model_content,
                           num_threads=num_threads)
    except ValueError as e:
        raise ValueError(f"{model_path or 'the TFLite model'} is not a loadable TFLite "
                         f"model: {e}") from e


class TFLiteDetector:
    """Runs a detection `.tflite` model with LiteRT: `detector(image uint8 [H, W, 3] any size)`
    -> dict of numpy `detection_boxes [K, 4]` (relative yxyx), `detection_classes [K]` int
    (1-based class ids, as the SavedModel: the file's 0-based classes + 1), `scores [K]`,
    `num_detections` int. The image is warp-resized to the model input (bilinear, as the
    SavedModel's pre-processing). `run_resized` gives the file's raw (0-based) outputs."""

    def __init__(self, path, num_threads=None):
        self.interpreter = tflite_interpreter(model_path=path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner()
        detail = self.runner.get_input_details()[IMAGES_INPUT]
        self.input_shape = tuple(int(s) for s in detail['shape'])

    def run_resized(self, images):
        """Raw outputs for uint8 `[1, H, W, 3]` already the model's size."""
        return self.runner(**{IMAGES_INPUT: np.asarray(images, np.uint8)})

    def __call__(self, image):
        h, w = self.input_shape[1:3]
        batch = representative_images([image], (h, w))[0]
        out = self.run_resized(batch)
        n = int(round(float(out['num_detections'][0])))
        return {'detection_boxes': out['detection_boxes'][0, :n],
                'detection_classes': np.round(out['detection_classes'][0, :n]).astype(
                    np.int64) + 1,
                'detection_scores': out['detection_scores'][0, :n],
                'num_detections': n}


# ---------------------------------------------------------------------------- checkpoints
def load_from_checkpoint(checkpoint_path, get_network, model_name=None, num_classes=None,
                         label_map=None, slim_variable_map_fn=None):
    """Builds the network of a training run and restores its weights.

    checkpoint_path: a train_dir (its latest checkpoint) or checkpoint prefix written by
      train_ssd.py (config.json beside it gives model_name, num_classes, image_shape and
      label_names, and the fitted anchors of an --anchors=auto run), or a slim TF1
      checkpoint (pass model_name and num_classes).
    get_network: `name -> SSDNet class` (nets.nets_factory.get_network).
    label_map: a label map file; default the run's labels.txt, else config label_names.
    slim_variable_map_fn: `model -> slim variable map`, needed for slim checkpoints.
    Returns `(net, model, label_names or None, checkpoint prefix)`. A model_name/num_classes
    that contradicts the run config or the checkpoint is a ValueError naming the flag. A run
    trained with --moving_average_decay gives its averaged weights.
    """
    from ssd_tf import run_config
    from ssd_tf.datasets import labelmap as labelmap_lib
    kind, path = run_config.resolve_checkpoint(checkpoint_path)
    if kind == 'saved_model':
        raise ValueError(f"--checkpoint_path={checkpoint_path} is already a SavedModel; "
                         f"export from a training directory or checkpoint")
    config = run_config.read_run_config(checkpoint_path)
    for flag, value, cfg in (('model_name', model_name, config.model_name),
                             ('num_classes', num_classes, config.num_classes)):
        if value is not None and cfg is not None and str(value) != str(cfg):
            raise ValueError(f"--{flag}={value} but the run config beside {checkpoint_path} "
                             f"says {flag}={cfg}; drop the flag or fix it")
    model_name = model_name or config.model_name
    num_classes = num_classes or config.num_classes
    if not model_name or not num_classes:
        raise ValueError(f"{checkpoint_path} has no config.json beside it (a slim or foreign "
                         f"checkpoint): pass --model_name and --num_classes")
    net_cls = get_network(model_name)
    params = net_cls.default_params._replace(num_classes=int(num_classes),
                                             no_annotation_label=int(num_classes))
    if config.image_shape is not None:
        params = params._replace(img_shape=tuple(config.image_shape))
    # The run's fitted anchors (train_ssd.py --anchors=auto) are part of the model.
    params = run_config.run_params(params, config, where=f"the run config beside "
                                                         f"{checkpoint_path}")
    net = net_cls(params, reference_compat=bool(config.reference_compat))
    model = net.keras_model()
    slim_map = slim_variable_map_fn(model) if kind == 'slim' and slim_variable_map_fn else None
    # A run with --moving_average_decay: its averaged weights are the model (the final
    # checkpoint already holds them; an earlier one stores them beside the raw weights).
    averaged = bool(config.moving_average_decay) and run_config.has_moving_average(path)
    run_config.restore_model(model, kind, path, slim_variable_map=slim_map,
                             moving_average=averaged)
    label_names = None
    if label_map:
        label_names = list(labelmap_lib.LabelMap.read(label_map).names)
    else:
        run_dir = checkpoint_path if os.path.isdir(checkpoint_path) else \
            os.path.dirname(checkpoint_path)
        if os.path.isfile(os.path.join(run_dir, LABELS_FILENAME)):
            label_names = list(labelmap_lib.LabelMap.read(run_dir).names)
        elif config.label_names:
            label_names = list(config.label_names)
    if label_names is not None and len(label_names) != net.params.num_classes - 1:
        raise ValueError(f"the label map has {len(label_names)} classes but num_classes="
                         f"{net.params.num_classes} (classes + background); check --label_map")
    return net, model, label_names, path
