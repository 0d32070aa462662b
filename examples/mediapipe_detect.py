"""The README's MediaPipe snippet: run an exported .tflite (with metadata) in MediaPipe's
ObjectDetector on a photo and print every category of every detection. MediaPipe groups the
categories of one box into one detection (`detection.categories`), so read them all; the
`with` block closes the detector."""
import mediapipe as mp
from mediapipe.tasks.python import vision

options = vision.ObjectDetectorOptions(
    base_options=mp.tasks.BaseOptions(model_asset_path='model_float32.tflite'),
    score_threshold=0.5)
with vision.ObjectDetector.create_from_options(options) as detector:
    result = detector.detect(mp.Image.create_from_file('raccoon.jpg'))
for detection in result.detections:
    box = detection.bounding_box  # pixels of the photo
    for category in detection.categories:
        print(f"{category.category_name} {category.score:.2f} "
              f"x={box.origin_x} y={box.origin_y} w={box.width} h={box.height}")
