"""Class names <-> integer labels: id 0 is the background 'none', objects are 1..C-1.

A label map travels with the data: the converter writes it beside the TFRecords as
`labels.txt`, one `id:name` line per class (the slim `dataset_utils.write_label_file` format,
including the `0:none` line), and training/export copy it next to their outputs. A `.json`
file (`{"none": 0, "aeroplane": 1, ...}`) is read and written too, and so is the TF Object
Detection API's `label_map.pbtxt` (`item { id: 1 name: 'x' display_name: 'y' }`; read by
`parse_pbtxt`, a small parser of that text format, without the OD API package). Class names
become file names, so a name with path characters is refused when the map is made or read
(`class_name_problem`; errors name the file and line).

Ids may skip numbers (the OD API's `mscoco_label_map.pbtxt`: 80 classes, ids 1..90): the
classes then get contiguous training labels 1..C-1 in id order and the LabelMap keeps each
one's dataset id (`dataset_ids`, `label_ids`); the TFRecord reader maps record ids to
training labels (`tfrecord.check_features`), the COCO results report the dataset ids.
"""
import json
import os
import re

from ssd_tf import atomic_files

BACKGROUND_NAME = 'none'
MAX_ID = 2**31 - 1  # dataset ids are int64 in records; larger ones are refused as absurd
LABELS_FILENAME = 'labels.txt'
PBTXT_FILENAME = 'label_map.pbtxt'  # the TF Object Detection API's name for its label map

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
    `ids`: the data set's id of each class (the id its records carry), increasing, >= 1;
    default 1..C-1. With gaps, training label `i` stands for dataset id `ids[i - 1]`.
    """

    def __init__(self, names, ids=None):
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
        ids = tuple(range(1, len(names) + 1)) if ids is None else tuple(int(i) for i in ids)
        if len(ids) != len(names) or ids[0] < 1 or ids[-1] > MAX_ID or \
                any(b <= a for a, b in zip(ids, ids[1:])):
            raise ValueError(f"dataset ids must be one per class, 1..{MAX_ID} and increasing, got "
                             f"{list(ids)[:20]} for {len(names)} classes")
        self._dataset_ids = ids

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

    @property
    def dataset_ids(self):
        """The data set's id of each class, in training-label order (1..C-1 if contiguous)."""
        return self._dataset_ids

    @property
    def is_contiguous(self):
        return self._dataset_ids[-1] == len(self._names)

    @property
    def label_ids(self):
        """`dataset_ids` as a list when they have gaps, else None (what a run's config.json
        records as `label_ids`)."""
        return None if self.is_contiguous else list(self._dataset_ids)

    def dataset_id(self, label):
        """The data set's id of training label `label` (1..C-1)."""
        self.name(label)  # range check
        return self._dataset_ids[int(label) - 1]

    def mapping_description(self):
        """One log line on how dataset ids become training labels ('' when they are equal)."""
        if self.is_contiguous:
            return ''
        return (f"label map has {len(self)} classes with ids {self._dataset_ids[0]}.."
                f"{self._dataset_ids[-1]} (gaps): mapped to training labels 1..{len(self)}")

    def training_label_map(self):
        """The same classes with ids 1..C-1 (what the network predicts; an export's or a
        run's labels.txt)."""
        return LabelMap(self._names)

    def __eq__(self, other):
        return isinstance(other, LabelMap) and other.names == self.names and \
            other.dataset_ids == self.dataset_ids

    def __repr__(self):
        if self.is_contiguous:
            return f"LabelMap({list(self._names)!r})"
        return f"LabelMap({list(self._names)!r}, ids={list(self._dataset_ids)!r})"

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
        """`{name: dataset id}` including `'none': 0`."""
        return {BACKGROUND_NAME: 0, **dict(zip(self._names, self._dataset_ids))}

    # ------------------------------------------------------------------ files
    def write(self, path):
        """Writes `id:name` lines (JSON if `path` ends with .json, the OD API's `item { id
        name }` text if it ends with .pbtxt), the ids being the dataset ids; a directory gets
        `labels.txt` inside. Returns the file path."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, LABELS_FILENAME)
        if path.endswith('.json'):
            text = json.dumps(self.to_dict(), indent=1) + '\n'
        elif path.endswith('.pbtxt'):
            text = ''.join(f"item {{\n  id: {i}\n  name: {_quote(n)}\n}}\n"
                           for i, n in zip(self._dataset_ids, self._names))
        else:
            text = ''.join(f'{i}:{n}\n' for n, i in self.to_dict().items())
        return atomic_files.write_text(path, text)

    @classmethod
    def read(cls, path):
        """Reads a file written by `write` (slim's labels.txt, .json, or an OD API
        `.pbtxt`, see `parse_pbtxt`); a directory is searched for `labels.txt`. Ids must be
        unique and >= 1, gaps allowed (see `dataset_ids`); a `0:none` line is optional (not
        in a .pbtxt)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, LABELS_FILENAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"label map file not found: {path} (write one with "
                                    f"LabelMap(names).write(path) or run ssd_tf.datasets.convert)")
        if path.endswith('.pbtxt') and os.path.getsize(path) > MAX_PBTXT_BYTES:
            raise ValueError(f"{path}: {os.path.getsize(path)} bytes is over the "
                             f"{MAX_PBTXT_BYTES}-byte limit of a label map")
        with open(path, encoding='utf-8') as f:
            text = f.read()
        if path.endswith('.pbtxt'):
            return cls._from_pbtxt(path, text)
        mapping = _read_json(path, text) if path.endswith('.json') else _read_lines(path, text)
        by_id = {i: n for n, i in mapping.items() if i != 0}
        if mapping.get(BACKGROUND_NAME, 0) != 0 or len(by_id) != len(mapping) - (
                BACKGROUND_NAME in mapping):
            raise ValueError(f"{path}: id 0 is reserved for '{BACKGROUND_NAME}' and ids must "
                             f"be unique, got {mapping}")
        if by_id and min(by_id) < 1:
            raise ValueError(f"{path}: object ids must be >= 1, got {sorted(by_id)[:20]}")
        try:
            return cls([by_id[i] for i in sorted(by_id)], sorted(by_id))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    @classmethod
    def _from_pbtxt(cls, path, text):
        by_id = {}
        for item in parse_pbtxt(text, path):
            if item['id'] in by_id:
                raise ValueError(f"{path}:{item['line']}: id {item['id']} is used twice "
                                 f"(also by {by_id[item['id']]!r})")
            by_id[item['id']] = item['class_name']
        if not by_id:
            raise ValueError(f"{path}: no 'item {{ id: ... name: ... }}' entries")
        return cls([by_id[i] for i in sorted(by_id)], sorted(by_id))


def resolve_label_map(label_map=None, recorded_names=None, recorded_ids=None, beside=(),
                      fallback=None, num_classes=None, flag='--label_map'):
    """The class names of a model, found the same way by every command and the serving client:
    the file `label_map` (the flag `flag`: labels.txt, .json or .pbtxt), else the names a run or
    an export recorded (`recorded_names`, with their dataset ids `recorded_ids`: config.json,
    export_config.json), else the first `labels.txt` in a directory of `beside` or its
    `assets/` (a training directory, a SavedModel, the folder of a .tflite), else
    `fallback()` (names, e.g. those embedded in a .tflite file), else None.

    Returns a LabelMap or None. A file that cannot be read is a ValueError naming the flag;
    with `num_classes` (classes + background) a map of another size is a ValueError.
    """
    found = None
    if label_map:
        try:
            found = LabelMap.read(label_map)
        except (OSError, ValueError) as e:
            raise ValueError(f"{flag}={label_map}: {e}") from e
    elif recorded_names:
        try:
            found = LabelMap(list(recorded_names), recorded_ids)
        except ValueError as e:
            raise ValueError(f"the recorded label_names/label_ids: {e}") from e
    else:
        found = _label_map_beside(beside)
        if found is None and fallback is not None:
            names = fallback()
            found = LabelMap(list(names)) if names else None
    if found is not None and num_classes is not None and found.num_classes != num_classes:
        raise ValueError(f"the label map has {len(found)} classes but the network has "
                         f"num_classes={num_classes} (= classes + background); check {flag}")
    return found


def _label_map_beside(directories):
    """The LabelMap of the first `labels.txt` in `directories` (or their `assets/`), or None."""
    for directory in directories:
        for d in (directory, os.path.join(directory, 'assets')):
            if os.path.isfile(os.path.join(d, LABELS_FILENAME)):
                return LabelMap.read(d)
    return None


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


def _quote(name):
    """A name as a double-quoted text-format string."""
    return '"' + name.replace('\\', '\\\\').replace('"', '\\"') + '"'


# Tokens of the protobuf text format, as the OD API's label maps use it: comments, quoted
# strings (either quote, backslash escapes), braces/brackets/separators, and bare words
# (field names, numbers, enum values). Anything else is a syntax error.
_PBTXT_TOKEN = re.compile(r"""\s+|\#[^\n]*|(?P<str>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|"""
                          r"""(?P<punct>[{}\[\]:,;<>])|(?P<word>[-+.\w]+)""")
_PBTXT_ESCAPES = {'n': '\n', 't': '\t', 'r': '\r', "'": "'", '"': '"', '\\': '\\'}
# An untrusted label map is read whole; beyond this it is refused rather than parsed.
MAX_PBTXT_BYTES = 10_000_000


def _pbtxt_tokens(text, path):
    """`(kind, value, line)` tokens; a character that starts no token is a ValueError
    naming the file and line."""
    pos, line = 0, 1
    while pos < len(text):
        m = _PBTXT_TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"{path}:{line}: syntax error at {text[pos:pos + 20]!r} (an "
                             f"unterminated string or a stray character)")
        kind = m.lastgroup
        if kind == 'str':
            raw = m.group(kind)[1:-1]
            value = re.sub(r'\\(.)', lambda e: _PBTXT_ESCAPES.get(e.group(1), e.group(1)), raw)
            yield 'str', value, line
        elif kind:
            yield kind, m.group(kind), line
        line += m.group(0).count('\n')
        pos = m.end()


def parse_pbtxt(text, path='label_map.pbtxt'):
    """The items of a TF Object Detection API label map (`StringIntLabelMap` text format):

        item {            # comments, 'single' or "double" quotes, `item: {` or `item <>`
          id: 1
          name: 'dog'       # e.g. '/m/0bt9lr' in the OD API's own maps
          display_name: "Dog"
        }

    Returns `[{'id', 'name', 'display_name' (or None), 'class_name', 'line'}]`; `class_name`
    is the display_name when given (the OD API's `use_display_name`), else the name, and
    must pass `class_name_problem`. Other fields (keypoints, frequency, ...) are skipped.
    Every error is a ValueError naming `path` and the line: bad syntax, an item without id
    or name, an id that is not an integer >= 1.
    """
    if len(text) > MAX_PBTXT_BYTES:
        raise ValueError(f"{path}: {len(text)} bytes is over the {MAX_PBTXT_BYTES}-byte "
                         f"limit of a label map")
    parser = _PbtxtParser(list(_pbtxt_tokens(text, path)), path)
    items = []
    while not parser.done():
        fields, line = parser.item()
        items.append(_pbtxt_item(fields, line, path))
    return items


class _PbtxtParser:
    """Reads `item { ... }` blocks from the tokens of `_pbtxt_tokens` (kind, value, line)."""

    def __init__(self, tokens, path):
        self.tokens, self.path, self.i = tokens, path, 0

    def done(self):
        return self.i >= len(self.tokens)

    def _next_is(self, value):
        return not self.done() and self.tokens[self.i][1] == value

    def expect(self, kind, what):
        """The next token, which must be of `kind` (a token kind, punctuation or a tuple of
        them); ValueError naming the line and `what` was expected."""
        if self.done():
            raise ValueError(f"{self.path}:{self.tokens[-1][2] if self.tokens else 1}: the file "
                             f"ends where {what} was expected")
        tok = self.tokens[self.i]
        kinds = (kind,) if isinstance(kind, str) else kind
        if not (tok[0] in kinds if tok[0] != 'punct' else tok[1] in kinds):
            raise ValueError(f"{self.path}:{tok[2]}: expected {what}, got {tok[1]!r}")
        self.i += 1
        return tok

    def skip_value(self):
        """Skips one field value: a scalar, a list `[...]` or a message `{...}`/`<...>`."""
        _, value, line = self.expect(('str', 'word', '{', '[', '<'), 'a value')
        if value in ('{', '[', '<'):
            depth = 1
            while depth:
                kind, v, _ = self.expect(('str', 'word') + tuple('{}[]<>:,;'),
                                         f"the end of the block opened on line {line}")
                depth += (kind == 'punct' and v in '{[<') - (kind == 'punct' and v in '}]>')

    def item(self):
        """One `item { ... }`: `({'id'|'name'|'display_name': (value, line)}, item line)`."""
        _, key, line = self.expect('word', "'item'")
        if key != 'item':
            raise ValueError(f"{self.path}:{line}: expected 'item {{', got {key!r}")
        if self._next_is(':'):
            self.i += 1
        close = {'{': '}', '<': '>'}[self.expect(('{', '<'), "'{' after item")[1]]
        fields = {}
        while True:
            if self._next_is(close):
                self.i += 1
                return fields, line
            _, field, fline = self.expect('word', f"a field name or {close!r} (the item "
                                                  f"opened on line {line})")
            has_colon = self._next_is(':')
            self.i += has_colon
            if field in ('id', 'name', 'display_name'):
                _, value, _ = self.expect(('word',) if field == 'id' else ('str',),
                                          'an integer' if field == 'id' else
                                          'a quoted string')
                if not has_colon:
                    raise ValueError(f"{self.path}:{fline}: expected ':' after {field}")
                if field in fields:
                    raise ValueError(f"{self.path}:{fline}: {field} is given twice in one item")
                fields[field] = (value, fline)
            else:
                self.skip_value()
            if self._next_is(',') or self._next_is(';'):
                self.i += 1


def _pbtxt_item(fields, line, path):
    """The checked item dict of `parse_pbtxt` from an item's fields."""
    if 'id' not in fields or 'name' not in fields and 'display_name' not in fields:
        raise ValueError(f"{path}:{line}: an item needs an id and a name")
    value, fline = fields['id']
    if not re.fullmatch(r'\+?\d{1,12}', value) or not 1 <= int(value) <= MAX_ID:
        raise ValueError(f"{path}:{fline}: id must be an integer 1..{MAX_ID} (0 is the "
                         f"background), got {value}")
    name = fields.get('name', (None,))[0]
    display = fields.get('display_name', (None,))[0]
    class_name = display if display is not None else name
    name_line = fields['display_name' if display is not None else 'name'][1]
    _check_name(path, name_line, class_name)
    return {'id': int(value), 'name': name, 'display_name': display,
            'class_name': class_name, 'line': line}

VOC_LABEL_MAP = LabelMap(VOC_CLASSES)
