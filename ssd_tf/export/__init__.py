"""Export of a trained SSD, one module per job: `saved_model` (the TF Serving SavedModel and its
publishing), `tflite` (conversion to TFLite flatbuffers and their output order) and
`tflite_runtime` (running a .tflite file with LiteRT). Import the module you need.
"""
