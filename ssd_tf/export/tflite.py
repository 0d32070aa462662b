"""TFLite conversion of a trained SSD: detection function, quantisation, output order.

`export_tflite` writes `model_<variant>.tflite` files (`convert_tflite`): batch 1, fixed input
`images` uint8 `[1, H, W, 3]` RGB already resized to the network's `img_shape` (the app resizes
the camera frame; the mean subtraction is in the model). Outputs in the order of the
object-detector task APIs (MediaPipe, TFLite Task Library, the TF OD API's
TFLite_Detection_PostProcess ports), both as output index 0..3 and as ascending tensor indices
(`_order_outputs`): `detection_boxes [1, K, 4]` (yxyx relative to the input),
`detection_classes [1, K]` (float, 0-based: class id - 1, the line of labels_tflite.txt / the
embedded label file; the SavedModel's ids are 1-based), `detection_scores [1, K]`,
`num_detections [1]` (float32); the signature `serving_default` names them too. With mediapipe
installed (`--tflite_metadata`, `ssd_tf.tflite_metadata`) the file carries the metadata and
labels the phone SDKs read.
`ssd_tf.export.tflite_runtime.TFLiteDetector` runs the files and returns the SavedModel's
1-based ids.
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
import os
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from ssd_tf import anchors as anchors_lib
from ssd_tf import atomic_files
from ssd_tf import postprocess
from ssd_tf.export import saved_model
from ssd_tf.export import tflite_runtime

TFLITE_QUANTIZATIONS = ('float32', 'float16', 'dynamic', 'int8')


def tflite_detection_function(net, model, whiten_fn,
                              select_threshold=saved_model.SELECT_THRESHOLD,
                              nms_threshold=saved_model.NMS_THRESHOLD,
                              max_detections=saved_model.MAX_DETECTIONS,
                              top_k=saved_model.SELECT_TOP_K,
                              postprocess_op=postprocess.TFLITE_POSTPROCESS):
    """A concrete function `images uint8 [1, H, W, 3] -> dict of the four TFLite outputs`
    (classes 0-based, see the module docstring).

    whiten_fn: `image uint8 [H, W, 3] (already the network's size) -> float32 [H, W, 3]`, the
    pre-processing without the resize (e.g. the eval pre-processing, whose warp resize to the
    same size is the identity). postprocess_op: one of `postprocess.TFLITE_POSTPROCESS_OPTIONS`
    ('detection_postprocess' computes only once converted; `top_k` does not apply to it).
    """
    saved_model.check_model(net, model)
    if postprocess_op not in postprocess.TFLITE_POSTPROCESS_OPTIONS:
        raise ValueError(f"--tflite_postprocess={postprocess_op} must be one of "
                         f"{', '.join(postprocess.TFLITE_POSTPROCESS_OPTIONS)}")
    h, w = net.params.img_shape
    anchors = net.anchors()
    num_classes = net.params.num_classes

    spec = tf.TensorSpec([1, h, w, 3], tf.uint8, name=saved_model.IMAGES_INPUT)

    @tf.function(input_signature=[spec])
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
        b, c, s, n = postprocess.tflite_postprocess(scores, boxes, num_classes, select_threshold,
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


def _order_outputs(tflite_model, order=saved_model.OUTPUT_KEYS):
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
    interp = tflite_runtime.tflite_interpreter(model_content=tflite_model)
    names = {d['index']: d['name'] for d in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():  # pylint: disable=protected-access
        out.extend(names[i] for i in op['outputs'] if scope not in names[i])
    return out


def export_tflite(net, model, whiten_fn, output_dir, quantizations=('float32',),
                  representative_images=None, select_threshold=saved_model.SELECT_THRESHOLD,
                  nms_threshold=saved_model.NMS_THRESHOLD,
                  max_detections=saved_model.MAX_DETECTIONS,
                  top_k=saved_model.SELECT_TOP_K, label_names=None,
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
        with atomic_files.replacing(paths[q], 'wb') as f:
            f.write(data)
    if label_names is not None:
        saved_model.write_label_files(label_names, output_dir)
    return paths


def representative_images(images, img_shape, limit=100):
    """uint8 `[1, h, w, 3]` arrays (`images.resize_to_input` to `img_shape`: the resize of
    every runtime) from RGB uint8 images of any size, for int8 calibration; at most `limit`."""
    out = []
    for image in images:
        if len(out) >= limit:
            break
        out.append(tflite_runtime.resize_to_input(image, img_shape))
    return out
