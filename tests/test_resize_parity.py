"""One resize for every runtime (`ssd_tf.images.resize_to_input`): a full-size photo scores
the same in MediaPipe's ObjectDetector (which resizes the frame itself), in `ssd_tf.detect`'s
TFLite path and in the SavedModel.

The resize's sampling grid is checked on a hand-made image; the parity runs on full-size
raccoon JPEGs (skipped without ../shared/data or mediapipe)."""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import conftest
from ssd_tf import images

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'
NUM_PHOTOS = 10
# Measured on a trained ssd_small_192 (20 raccoon photos): 0.008 with this resize, 0.18 with
# tf.image.resize; measured here (random-weight ssd_small, 10 photos): 0.0032.
SCORE_TOLERANCE = 0.01


def test_resize_samples_the_corner_aligned_grid():
    """A 4-wide ramp 0, 40, 80, 120 shrunk to 2: output x samples source x * 4 / 2 = 0, 2 ->
    0 and 80 (a half-pixel grid would sample 0.5, 2.5 -> 20, 100). Rows likewise. Enlarged
    to 8: x * 4 / 8 = 0, 0.5, 1, ... -> 0, 20, 40, ..., 120, 120 (the last two clamp at the
    edge)."""
    ramp = np.tile(np.array([0, 40, 80, 120], np.uint8)[None, :, None], (4, 1, 3))
    small = images.resize_to_input(ramp, (4, 2)).numpy()
    assert small.dtype == np.uint8 and small.shape == (4, 2, 3)
    assert small[0, :, 0].tolist() == [0, 80]
    big = images.resize_to_input(ramp, (4, 8)).numpy()
    assert big[2, :, 1].tolist() == [0, 20, 40, 60, 80, 100, 120, 120]
    # Rounded, not truncated: 1/3 of the way from 0 to 10 is 3.33 -> 3; 2/3 -> 6.67 -> 7.
    col = np.array([[0], [10]], np.uint8)[:, :, None].repeat(3, -1)
    assert images.resize_to_input(col, (6, 1)).numpy()[:, 0, 0].tolist() == [0, 3, 7, 10, 10,
                                                                               10]
    # A batch gives the images one by one; the input size is the identity.
    batch = np.stack([ramp, ramp[:, ::-1]])
    np.testing.assert_array_equal(images.resize_to_input(batch, (4, 2)).numpy()[1],
                                  images.resize_to_input(ramp[:, ::-1], (4, 2)).numpy())
    np.testing.assert_array_equal(images.resize_to_input(ramp, (4, 4)).numpy(), ramp)


def _photos():
    root = SHARED_DATA / 'raccoon'
    if not root.is_dir():
        pytest.skip('../shared/data is not present (a user checkout has no ../shared)')
    names = (root / 'ImageSets' / 'Main' / 'test.txt').read_text().split()[:NUM_PHOTOS]
    return [images.decode_image((root / 'JPEGImages' / f'{n}.jpg').read_bytes()).numpy()
            for n in names]


@pytest.mark.slow
def test_mediapipe_detect_and_saved_model_score_a_full_size_photo_alike(tmp_path):
    mp = conftest.import_extra('mediapipe', 'mobile')
    from mediapipe.tasks.python import vision
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf.export import saved_model
    from ssd_tf.export import tflite as export_tflite
    from ssd_tf.export import tflite_runtime
    photos = _photos()
    assert max(p.shape[0] * p.shape[1] for p in photos) > 4 * 128 * 128  # full size
    net, model = conftest.sharpened_network(0, 'ssd_small', 5., 4.)
    names = ['circle', 'cross', 'rectangle', 'triangle']
    preprocess = prep.image_preprocess_fn(net.params.img_shape)
    tfl = export_tflite.export_tflite(net, model, lambda im: preprocess(im)[0],
                                      tmp_path / 'tfl', ['float32'], label_names=names,
                                      metadata='on')['float32']
    sm = saved_model.export_saved_model(net, model, preprocess, tmp_path / 'sm',
                                        label_names=names)
    serve = tf.saved_model.load(sm).signatures[saved_model.IMAGES_SIGNATURE]
    detector = tflite_runtime.TFLiteDetector(tfl)  # what detect.py runs for a .tflite
    options = vision.ObjectDetectorOptions(
        base_options=mp.tasks.BaseOptions(model_asset_path=str(tfl)), score_threshold=0.,
        max_results=5)
    worst = {'detect': 0., 'saved_model': 0.}
    with vision.ObjectDetector.create_from_options(options) as mp_detector:
        for photo in photos:
            res = mp_detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB,
                                              data=np.ascontiguousarray(photo)))
            mp_top = max(c.score for d in res.detections for c in d.categories)
            ours = detector(photo)
            sm_out = serve(images=tf.constant(photo[None]))
            worst['detect'] = max(worst['detect'],
                                  abs(float(ours['detection_scores'][0]) - mp_top))
            worst['saved_model'] = max(worst['saved_model'], abs(
                float(sm_out['detection_scores'][0, 0]) - mp_top))
    print(f"max |top score difference| vs MediaPipe over {len(photos)} photos: {worst}")
    assert worst['detect'] <= SCORE_TOLERANCE, worst
    assert worst['saved_model'] <= SCORE_TOLERANCE, worst
