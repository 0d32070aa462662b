"""The SavedModel export of a trained SSD for TF Serving: the serving module and publishing.

The network (`SSDNet`: `params`, `anchors()`, `bboxes_decode`), its Keras model with weights
(`ssd_tf.builder.load_model`) and a `preprocess_fn` are arguments; `export_savedmodel.py` and
`ssd_tf.detect` wire them up. The TFLite conversion is `ssd_tf.export.tflite`, running a
.tflite file `ssd_tf.export.tflite_runtime`.

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

"""
import json
import os
import shutil
import tempfile

import tensorflow as tf

from ssd_tf import atomic_files
from ssd_tf import boxes as boxes_lib
from ssd_tf import images as images_lib
from ssd_tf import postprocess
from ssd_tf import tiling
from ssd_tf.datasets import labelmap as labelmap_lib
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

# Request limits of the serving signatures (export_savedmodel.py --max_image_pixels,
# --max_batch_size). Images of one request are decoded and pre-processed DECODE_PARALLELISM at a
# time, so the worst request holds DECODE_PARALLELISM decoded images of max_image_pixels
# (3 bytes a pixel) plus the batch at the network's input size.
MAX_IMAGE_PIXELS = images_lib.DEFAULT_MAX_PIXELS
MAX_BATCH_SIZE = 64
DECODE_PARALLELISM = 2


def check_model(net, model):
    """ValueError unless `model` takes the `[B, h, w, 3]` input of `net` (`params.img_shape`)."""
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
      tiles: None, or `tiling.Tiles(rows, cols, overlap, max_box)` (or a tuple of its first
        2-4 fields): each image is also detected on `rows x cols` overlapping tiles
        (`ssd_tf.tiling`; rows * cols + 1 network passes per image), the tiles' detections of
        boxes under `max_box` of the image side kept, and all merged by per-class NMS; 1x1 is
        no tiling.
      test_time_flip: every network pass (the whole image, each tile) also runs on its mirror
        image, averaged in anchor by anchor (`postprocess.detections_of`; twice the network's
        work).
    Methods `detect_bytes(image_bytes)` and `detect_images(images)` are the two signatures.
    """

    def __init__(self, net, model, preprocess_fn, select_threshold=SELECT_THRESHOLD,
                 nms_threshold=NMS_THRESHOLD, max_detections=MAX_DETECTIONS,
                 top_k=SELECT_TOP_K, label_file=None, max_image_pixels=MAX_IMAGE_PIXELS,
                 max_batch_size=MAX_BATCH_SIZE, decode_parallelism=DECODE_PARALLELISM,
                 tiles=None, test_time_flip=False):
        super().__init__(name='ssd_detection')
        check_model(net, model)
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
        self._flip = bool(test_time_flip)
        h, w = net.params.img_shape
        self._windows = None
        self._tiles = None if tiles is None else tiling.Tiles(*tiles)
        if self._tiles is not None:
            tiling.check_tiles(*self._tiles)
            if self._tiles.rows * self._tiles.cols > 1:
                self._windows = tiling.tile_windows(*self._tiles[:3])
        if self._windows is None:
            self._out_spec = (tf.TensorSpec([h, w, 3], tf.float32),
                              tf.TensorSpec([4], tf.float32))
        else:  # the whole image and its tiles: images, bbox_img, the tiles' windows
            n = len(self._windows) + 1
            self._out_spec = (tf.TensorSpec([n, h, w, 3], tf.float32),
                              tf.TensorSpec([n, 4], tf.float32), tf.TensorSpec([n, 4], tf.float32))
        if label_file is not None:
            self.labels_file = tf.saved_model.Asset(label_file)
        self.detect_bytes = tf.function(
            self._detect_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
        self.detect_images = tf.function(
            self._detect_images,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)])

    def _preprocess(self, image):
        if self._windows is not None:
            return tiling.crop_windows(image, self._windows, self._preprocess_fn)
        image, bbox_img = self._preprocess_fn(image)
        return tf.cast(image, tf.float32), tf.cast(bbox_img, tf.float32)

    def _detect_bytes(self, image_bytes):
        n = tf.shape(image_bytes)[0]

        def one(args):
            data, index = args
            return self._preprocess(decode_image(data, index, self._max_pixels))

        with tf.control_dependencies([_check_batch(n, self._max_batch)]):
            inputs = tf.map_fn(one, (image_bytes, tf.range(n)),
                               fn_output_signature=self._out_spec,
                               parallel_iterations=self._parallel)
        return self._detect(*inputs)

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
            inputs = tf.map_fn(self._preprocess, images, fn_output_signature=self._out_spec,
                               parallel_iterations=self._parallel)
        return self._detect(*inputs)

    def _detect(self, images, bbox_img, windows=None):
        """Pre-processed `[B, h, w, 3]`, bbox_img `[B, 4]` -> the output dict (a request of
        zero images gets the outputs of shape [0, ...] without running the network). Tiled:
        `[B, T + 1, h, w, 3]`, `[B, T + 1, 4]` and the windows `[B, T + 1, 4]`."""
        k = self._nms['keep_top_k']
        empty = {'detection_boxes': tf.zeros([0, k, 4]), 'detection_scores': tf.zeros([0, k]),
                 'detection_classes': tf.zeros([0, k]), 'num_detections': tf.zeros([0])}
        def run():
            if windows is None:
                return self._detect_nonempty(images, bbox_img)
            return self._detect_tiled(images, bbox_img, windows)
        return tf.cond(tf.shape(images)[0] > 0, run, lambda: empty)

    def _detections(self, images):
        return postprocess.detections_of(self.model, images, self._net, self._anchors,
                                         test_time_flip=self._flip, **self._nms)

    def _detect_tiled(self, images, bbox_img, windows):
        """Every pass of every image through the network, its detections mapped to the whole
        image, those cut by an inner tile edge dropped, the rest merged per image."""
        b = tf.shape(images)[0]
        n = images.shape[1]                    # passes per image: the whole image + tiles
        k = self._nms['keep_top_k']
        det = self._detections(tf.reshape(images, [-1] + images.shape[2:].as_list()))
        flat_windows = tf.reshape(windows, [-1, 4])
        boxes = tiling.from_window(
            to_original_relative(det['bboxes'], tf.reshape(bbox_img, [-1, 4])), flat_windows)
        live = tf.range(k)[None, :] < det['num_detections'][:, None]  # [B * n, K]
        keep = tf.logical_and(live, tf.logical_not(tiling.cut_by_tile_edge(boxes,
                                                                            flat_windows)))
        if self._tiles.max_box > 0.:  # the tiles keep small boxes, the whole image all
            is_tile = tf.tile(tf.range(n) > 0, [b])[:, None]                # [B * n, 1]
            keep = tf.logical_and(keep, tf.logical_or(
                tf.logical_not(is_tile), tiling.small_enough(boxes, self._tiles.max_box)))
        merged = postprocess.merge_detections(tf.reshape(boxes, [b, n * k, 4]),
                              tf.reshape(det['scores'], [b, n * k]),
                              tf.reshape(det['classes'], [b, n * k]),
                              tf.reshape(keep, [b, n * k]), self._net.params.num_classes,
                              self._nms['nms_threshold'], k)
        return {'detection_boxes': merged['bboxes'],
                'detection_scores': merged['scores'],
                'detection_classes': tf.cast(merged['classes'], tf.float32),
                'num_detections': tf.cast(merged['num_detections'], tf.float32)}

    def _detect_nonempty(self, images, bbox_img):
        det = self._detections(images)
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
                       before_publish=None, tiles=None, test_time_flip=False):
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
    `overwrite`, leaves the old version in place. tiles: None or `tiling.Tiles` (or a tuple of its
    fields), the serving signatures' tiled detection (`DetectionModule`), recorded as `tiles`:
    `{"rows", "cols", "overlap", "max_box"}`. test_time_flip: the signatures' detection also
    runs each image mirrored and averages it in (`DetectionModule`), recorded as
    `test_time_flip`.
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
                      decode_parallelism=decode_parallelism,
                      tiles=None if tiles is None else tiling.Tiles(*tiles)._asdict(),
                      test_time_flip=bool(test_time_flip), **(metadata or {}))
        module = DetectionModule(net, model, preprocess_fn, select_threshold, nms_threshold,
                                 max_detections, top_k, label_file=label_file,
                                 max_image_pixels=max_image_pixels,
                                 max_batch_size=max_batch_size,
                                 decode_parallelism=decode_parallelism, tiles=tiles,
                                 test_time_flip=test_time_flip)
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
    path = labelmap_lib.LabelMap(list(label_names)).write(os.path.join(directory,
                                                                       LABELS_FILENAME))
    plain = os.path.join(directory, TFLITE_LABELS_FILENAME)
    atomic_files.write_text(plain, '\n'.join(list(label_names)) + '\n')
    return path, plain
