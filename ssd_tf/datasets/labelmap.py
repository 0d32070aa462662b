"""Class names <-> integer labels: id 0 is the background 'none', objects are 1..C-1.

A label map travels with the data: the converter writes it beside the TFRecords as
`labels.txt`, one `id:name` line per class (the slim `dataset_utils.write_label_file` format,
including the `0:none` line), and training/export copy it next to their outputs. A `.json`
file (`{"none": 0, "aeroplane": 1, ...}`) is read and written too. Class names become file
names, so a name with path characters is refused when the map is made or read
(`class_name_problem`; errors name the file and line).
"""
import json
import os

BACKGROUND_NAME = 'none'
LABELS_FILENAME = 'labels.txt'

# Class names become file names (VOC results files `comp4_det_<split>_<class>.txt`), so a name
# must not hold path characters: '/' or '\\' (another directory), NUL or other control
# characters, nor start with '.' (hidden files, '.', '..'); ':' and newlines break labels.txt.
_FORBIDDEN_NAME_CHARS = frozenset('/\\:') | frozenset(chr(c) for c in range(32)) | {'\x7f'}


def class_name_problem(name):
    """Why `name` cannot be a class name ('' if it can): empty, leading '.', or a path,
    control or ':' character (the rule above)."""
    if not name:
        return "empty"
    if name.startswith('.'):
        return "starts with '.' (hidden file, '.' or '..' as a file name)"
    bad = sorted({c for c in name if c in _FORBIDDEN_NAME_CHARS})
    if bad:
        return (f"contains {', '.join(repr(c) for c in bad)} (class names become file names: "
                f"no '/', '\\', ':', NUL or control characters)")
    return ''


# Pascal VOC's 20 classes in the original's order (alphabetical): aeroplane = 1 .. tvmonitor = 20.
VOC_CLASSES = (
    'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
    'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor')


class LabelMap:
    """Names of the object classes, label `i` (1-based) being `names[i - 1]`.

    `num_classes` counts the background, as SSDParams.num_classes does (VOC: 21).
    """

    def __init__(self, names):
        names = tuple(str(n) for n in names)
        if not names:
            raise ValueError("a LabelMap needs at least one object class name")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate class names in label map: {dup}")
        if BACKGROUND_NAME in names:
            raise ValueError(f"'{BACKGROUND_NAME}' is reserved for the background (id 0); "
                             f"do not list it among the object classes")
        for n in names:
            problem = class_name_problem(n)
            if problem:
                raise ValueError(f"invalid class name {n!r}: {problem}")
        self._names = names
        self._ids = {n: i + 1 for i, n in enumerate(names)}

    @property
    def names(self):
        """Object class names, ordered by id (1..C-1)."""
        return self._names

    @property
    def num_classes(self):
        """Number of classes including the background."""
        return len(self._names) + 1

    def __len__(self):
        return len(self._names)

    def __contains__(self, name):
        return name in self._ids

    def __eq__(self, other):
        return isinstance(other, LabelMap) and other.names == self.names

    def __repr__(self):
        return f"LabelMap({list(self._names)!r})"

    def id(self, name):
        """Label of `name` (1..C-1); KeyError naming the known classes if unknown."""
        try:
            return self._ids[name]
        except KeyError:
            raise KeyError(f"unknown class name {name!r}; known classes: "
                           f"{list(self._names)}") from None

    def name(self, label):
        """Name of `label`; 0 is 'none' (background)."""
        label = int(label)
        if label == 0:
            return BACKGROUND_NAME
        if not 1 <= label <= len(self._names):
            raise KeyError(f"label {label} out of range 0..{len(self._names)}")
        return self._names[label - 1]

    def to_dict(self):
        """`{name: id}` including `'none': 0`."""
        return {BACKGROUND_NAME: 0, **self._ids}

    # ------------------------------------------------------------------ files
    def write(self, path):
        """Writes `id:name` lines (or JSON if `path` ends with .json); a directory gets
        `labels.txt` inside. Returns the file path."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, LABELS_FILENAME)
        if path.endswith('.json'):
            text = json.dumps(self.to_dict(), indent=1) + '\n'
        else:
            text = ''.join(f'{i}:{n}\n' for n, i in self.to_dict().items())
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
        return path

    @classmethod
    def read(cls, path):
        """Reads a file written by `write` (or slim's labels.txt); a directory is searched
        for `labels.txt`. Ids must be 1..C-1 without gaps; a `0:none` line is optional."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, LABELS_FILENAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"label map file not found: {path} (write one with "
                                    f"LabelMap(names).write(path) or run ssd_tf.datasets.convert)")
        with open(path, encoding='utf-8') as f:
            text = f.read()
        mapping = _read_json(path, text) if path.endswith('.json') else _read_lines(path, text)
        by_id = {i: n for n, i in mapping.items() if i != 0}
        if mapping.get(BACKGROUND_NAME, 0) != 0 or len(by_id) != len(mapping) - (
                BACKGROUND_NAME in mapping):
            raise ValueError(f"{path}: id 0 is reserved for '{BACKGROUND_NAME}' and ids must "
                             f"be unique, got {mapping}")
        if sorted(by_id) != list(range(1, len(by_id) + 1)):
            raise ValueError(f"{path}: object ids must be 1..{len(by_id)} without gaps, got "
                             f"{sorted(by_id)}")
        return cls([by_id[i] for i in range(1, len(by_id) + 1)])


def _check_name(path, lineno, name):
    problem = class_name_problem(name)
    if problem:
        raise ValueError(f"{path}:{lineno}: invalid class name {name!r}: {problem}")


def _read_lines(path, text):
    """`{name: id}` of `id:name` lines; errors name the file and line."""
    mapping = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        idx, sep, name = line.partition(':')
        if not sep or not idx.strip().isdigit():
            raise ValueError(f"{path}:{lineno}: expected 'id:name', got {line!r}")
        _check_name(path, lineno, name.strip())
        mapping[name.strip()] = int(idx)
    return mapping


def _read_json(path, text):
    """`{name: id}` of a JSON label map; a bad name's error gives the line where it is."""
    mapping = {str(k): int(v) for k, v in json.loads(text).items()}
    for name in mapping:
        where = text.find(json.dumps(name)[1:-1])
        _check_name(path, text.count('\n', 0, max(where, 0)) + 1, name)
    return mapping


VOC_LABEL_MAP = LabelMap(VOC_CLASSES)
