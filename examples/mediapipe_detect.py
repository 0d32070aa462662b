import mediapipe as mp
from mediapipe.tasks.python import vision
det = vision.ObjectDetector.create_from_options(vision.ObjectDetectorOptions(
    base_options=mp.tasks.BaseOptions(model_asset_path='model_float32.tflite'),
    score_threshold=0.5))
result = det.detect(mp.Image.create_from_file('raccoon.jpg'))  # boxes in pixels, label names
