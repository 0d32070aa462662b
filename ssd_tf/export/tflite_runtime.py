"""Running a detection `.tflite` file with LiteRT: the interpreter and `TFLiteDetector`.

`TFLiteDetector` warp-resizes an image of any size to the model input (bilinear, as the
SavedModel's pre-processing) and returns the SavedModel's 1-based class ids; the files are
written by `ssd_tf.export.tflite`.
"""
import os

import numpy as np
import tensorflow as tf

from ssd_tf.export import saved_model

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
        detail = self.runner.get_input_details()[saved_model.IMAGES_INPUT]
        self.input_shape = tuple(int(s) for s in detail['shape'])

    def run_resized(self, images):
        """Raw outputs for uint8 `[1, H, W, 3]` already the model's size."""
        return self.runner(**{saved_model.IMAGES_INPUT: np.asarray(images, np.uint8)})

    def __call__(self, image):
        h, w = self.input_shape[1:3]
        batch = resize_to_input(image, (h, w))
        out = self.run_resized(batch)
        n = int(round(float(out['num_detections'][0])))
        return {'detection_boxes': out['detection_boxes'][0, :n],
                'detection_classes': np.round(out['detection_classes'][0, :n]).astype(
                    np.int64) + 1,
                'detection_scores': out['detection_scores'][0, :n],
                'num_detections': n}


def resize_to_input(image, img_shape):
    """RGB uint8 `[H, W, 3]` of any size -> uint8 `[1, h, w, 3]`, a bilinear warp to
    `img_shape` rounded back to uint8 (the eval pre-processing's resize)."""
    resized = tf.image.resize(tf.convert_to_tensor(image)[None], img_shape)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
