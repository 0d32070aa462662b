"""TFLite metadata of the detection models: what MediaPipe's ObjectDetector, the TFLite Task
Library and Android Studio's ML model binding read from a `.tflite` to run it without code.

Written with MediaPipe's metadata writer (`mediapipe.tasks.python.metadata.metadata_writers.
object_detector`, PyPI `mediapipe`, the extra `pip install -e '.[mobile]'`):
- input `image`: RGB uint8 `[1, H, W, 3]`, raw pixels 0..255. The mean subtraction is inside
  the graph, so the normalisation recorded is mean 0, std 1 (a reader feeding a float model
  would compute (x - 0) / 1 = x; MediaPipe feeds a uint8 input tensor the raw pixels anyway);
- outputs, in this order: `location [1, K, 4]` ([ymin, xmin, ymax, xmax] relative to the model
  input), `category [1, K]` (float, 0-based: line i of the embedded label file is category i),
  `score [1, K]`, `number of detections [1]`.
The writer pairs the four outputs with their meaning by ascending tensor index (the port order
of TFLite_Detection_PostProcess); `ssd_tf.export.tflite.convert_tflite` orders both the outputs and
their tensor indices that way.

- `resolve_mode(mode)`: the `--tflite_metadata` flag (auto|on|off) -> write or not; `on`
  without mediapipe is a clear error, `auto` says once how to get the metadata.
- `add_metadata(tflite_bytes, label_names)`: the model with metadata and the label file.
- `read_metadata(tflite_bytes)`: the metadata as a dict (the flatbuffer's JSON), for checks.
- `embedded_labels(path)`: the label names packed in a .tflite (a zip of its associated
  files), without mediapipe; None when there are none.
- `minimum_parser_version(metadata_buffer)`: see below.

mediapipe >= 0.10.30 (its C-API rewrite) ships the metadata writer without the compiled helper
`mediapipe.tasks.cc.metadata.python._pywrap_metadata_version` it imports, so the writer fails
to import. `_install_version_helper` provides that one function, `minimum_parser_version`, in
Python: the schema rules of the metadata format (each field added after 1.0.0 raises the
minimum parser version a reader needs), so the written `min_parser_version` is the one the
compiled helper would give.
"""
import json
import logging
import sys
import types
import zipfile

METADATA_MODES = ('auto', 'on', 'off')
INSTALL_HINT = ("pip install -e '.[mobile]' (then see README \"Export and deployment\" to "
                "keep the headless OpenCV)")
# Without metadata, how the outputs map to labels (said once per process).
_SAID_NO_METADATA = []

_HELPER_MODULE = 'mediapipe.tasks.cc.metadata.python._pywrap_metadata_version'


def _version(s):
    return tuple(int(p) for p in s.split('.'))


def minimum_parser_version(metadata_buffer):
    """The smallest metadata parser version that understands every field of a ModelMetadata
    flatbuffer (bytes), e.g. '1.2.0'. Rules of the metadata schema: VOCABULARY files 1.0.1;
    subgraph input/output process units, BERT and SentencePiece tokenizers 1.1.0; tensor
    groups 1.2.0; regex tokenizer 1.2.1; audio properties 1.3.0; ScaNN index files 1.4.0;
    associated file versions 1.4.1; custom metadata 1.5.0; everything else 1.0.0."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(
        bytearray(metadata_buffer), 0))
    found = ['1.0.0']

    def files(items):
        for f in items or []:
            if f.type == fb.AssociatedFileType.VOCABULARY:
                found.append('1.0.1')
            if f.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
                found.append('1.4.0')
            if f.version is not None:
                found.append('1.4.1')

    def units(items):
        for u in items or []:
            if u.optionsType in (fb.ProcessUnitOptions.BertTokenizerOptions,
                                 fb.ProcessUnitOptions.SentencePieceTokenizerOptions):
                found.append('1.1.0')
            if u.optionsType == fb.ProcessUnitOptions.RegexTokenizerOptions:
                found.append('1.2.1')

    def tensors(items):
        for t in items or []:
            files(t.associatedFiles)
            units(t.processUnits)
            if t.content is not None and \
                    t.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                found.append('1.3.0')

    for sg in md.subgraphMetadata or []:
        tensors(sg.inputTensorMetadata)
        tensors(sg.outputTensorMetadata)
        files(sg.associatedFiles)
        for process_units in (sg.inputProcessUnits, sg.outputProcessUnits):
            if process_units is not None:
                found.append('1.1.0')
                units(process_units)
        if sg.inputTensorGroups is not None or sg.outputTensorGroups is not None:
            found.append('1.2.0')
        if sg.customMetadata is not None:
            found.append('1.5.0')
    files(md.associatedFiles)
    return '.'.join(str(p) for p in max(_version(v) for v in found))


def _install_version_helper():
    """Registers `minimum_parser_version` as the compiled helper that mediapipe >= 0.10.30
    imports but does not ship (a no-op when the real one is importable)."""
    try:
        __import__(_HELPER_MODULE)
        return
    except ImportError:
        pass
    parts = _HELPER_MODULE.split('.')
    parent = None
    for i in range(3, len(parts) + 1):  # mediapipe.tasks.cc ... the helper itself
        name = '.'.join(parts[:i])
        module = sys.modules.get(name)
        if module is None:
            module = types.ModuleType(name)
            if i < len(parts):
                module.__path__ = []  # a package (empty) so that its children import
            sys.modules[name] = module
        if parent is not None:
            setattr(parent, parts[i - 1], module)
        parent = module
    parent.GetMinimumMetadataParserVersion = minimum_parser_version


def _writer_modules():
    """(object_detector writer, metadata_writer, metadata) modules; ImportError without
    mediapipe."""
    import mediapipe.tasks.python.metadata  # noqa: F401  (ImportError without mediapipe)
    _install_version_helper()
    from mediapipe.tasks.python.metadata import metadata
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer
    from mediapipe.tasks.python.metadata.metadata_writers import object_detector
    return object_detector, metadata_writer, metadata


def import_problem():
    """None when MediaPipe's metadata writer imports, else why not (a string)."""
    try:
        _writer_modules()
        return None
    except ImportError as e:
        return f"{type(e).__name__}: {e}"


def resolve_mode(mode):
    """`--tflite_metadata` auto|on|off -> True (write metadata) / False. `on` without
    mediapipe is a ValueError naming the flag and the install line; `auto` without it logs
    once that the .tflite files get no metadata and how to get it."""
    if mode not in METADATA_MODES:
        raise ValueError(f"--tflite_metadata={mode} must be one of {', '.join(METADATA_MODES)}")
    if mode == 'off':
        return False
    problem = import_problem()
    if problem is None:
        return True
    if mode == 'on':
        raise ValueError(f"--tflite_metadata=on needs MediaPipe's metadata writer, which does "
                         f"not import here ({problem}): {INSTALL_HINT}")
    if not _SAID_NO_METADATA:
        _SAID_NO_METADATA.append(True)
        logging.warning(
            "the .tflite files get no metadata (MediaPipe's ObjectDetector and the TFLite Task "
            "Library need it; labels are only in labels_tflite.txt beside them): %s, or "
            "--tflite_metadata=off to silence this", INSTALL_HINT)
    return False


def add_metadata(tflite_bytes, label_names, name='ssd-tf SSD detector'):
    """The detection model `tflite_bytes` with its metadata (see the module docstring) and the
    label file `labels.txt` (one name per line, no background: line i = category i)
    embedded. Returns bytes. Raises ImportError without mediapipe."""
    object_detector, metadata_writer, _ = _writer_modules()
    labels = metadata_writer.Labels().add([str(n) for n in label_names])
    writer = object_detector.MetadataWriter.create_for_models_with_nms(
        bytearray(tflite_bytes), input_norm_mean=[0.], input_norm_std=[1.], labels=labels)
    writer.writer.add_general_info(name, (
        "SSD detector exported by ssd-tf. Input: RGB uint8 raw pixels resized to the input "
        "size (the mean subtraction is in the model). Outputs: boxes [ymin, xmin, ymax, "
        "xmax] relative to the input, 0-based categories (line i of labels.txt), scores, "
        "number of detections."))
    model, _ = writer.populate()
    return bytes(model)


def read_metadata(tflite_bytes):
    """The metadata of a .tflite (bytes) as a dict, or None when it has none."""
    _, _, metadata = _writer_modules()
    try:
        displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(tflite_bytes))
    except ValueError:
        return None
    return json.loads(displayer.get_metadata_json())


def embedded_labels(path, max_bytes=10_000_000):
    """The label names of the label file `labels.txt` packed in the .tflite at `path` (a model
    with metadata is also a zip of its associated files), line i = 0-based class i; None when
    the file has none. A label file over `max_bytes` is a ValueError naming the model."""
    try:
        with zipfile.ZipFile(path) as z:
            if 'labels.txt' not in z.namelist():
                return None
            if z.getinfo('labels.txt').file_size > max_bytes:
                raise ValueError(f"{path}: its embedded labels.txt is over {max_bytes} bytes")
            text = z.read('labels.txt').decode('utf-8')
    except zipfile.BadZipFile:
        return None
    return [line for line in text.splitlines() if line.strip()]
