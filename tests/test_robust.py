"""Runs and inputs that survive real hands (issue 20): the run-directory lock, damaged
checkpoints, EXIF orientation, special files, TFRecord label texts, defused XML, and a run
killed with `kill -9` that resumes onto the same batches and weights.

Program behaviour is tested through subprocesses as a user runs them (slow); the library
functions behind it have fast unit tests."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1',
           PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
TINY = ['--synthetic_num_train=64', '--synthetic_num_test=16', '--batch_size=8',
        '--log_every_n_steps=1', '--warmup_steps=2', '--eval_split_name=']


def program(name, args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / name)] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def start_program(name, args):
    return subprocess.Popen([sys.executable, str(ROOT / name)] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, cwd=ROOT)


def read_until(proc, prefix, timeout=300):
    """Lines of `proc` up to (and with) the first starting with `prefix`."""
    lines = []
    t0 = time.time()
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return ''.join(lines)
        assert time.time() - t0 < timeout, ''.join(lines)
    raise AssertionError(f"no line starting with {prefix!r}:\n{''.join(lines)}")


# ------------------------------------------------------------------ 1. the run-directory lock
_HOLDER = """
import sys, time
from ssd_tf import run_lock
lock = run_lock.acquire(sys.argv[1])
print('held', flush=True)
time.sleep(600)
"""


def _hold_lock(directory):
    p = subprocess.Popen([sys.executable, '-c', _HOLDER, str(directory)], env=ENV,
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == 'held'
    return p


def test_lock_refuses_a_second_holder_naming_dir_and_pid_and_kill9_frees_it(tmp_path):
    from ssd_tf import run_lock
    holder = _hold_lock(tmp_path / 'run')
    try:
        with pytest.raises(run_lock.RunDirBusy) as e:
            run_lock.acquire(str(tmp_path / 'run'))
        msg = str(e.value)
        assert f'--train_dir={tmp_path / "run"}' in msg
        assert f'pid {holder.pid} on host' in msg and 'started 20' in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the OS released the lock with the process: the directory is usable again
    with run_lock.acquire(str(tmp_path / 'run')) as lock:
        assert json.loads(pathlib.Path(lock.path).read_text())['pid'] == os.getpid()
    # released: taken again in the same process
    run_lock.acquire(str(tmp_path / 'run')).release()


def test_lock_removes_the_directory_it_made_when_the_run_wrote_nothing(tmp_path):
    # A run refused before writing anything (bad data, bad flags) leaves no --train_dir.
    from ssd_tf import run_lock
    fresh = tmp_path / 'fresh'
    run_lock.acquire(str(fresh)).release()
    assert not fresh.exists()
    # A run that wrote into the directory it made keeps it (and its files).
    used = tmp_path / 'used'
    with run_lock.acquire(str(used)):
        (used / 'config.json').write_text('{}')
    assert sorted(p.name for p in used.iterdir()) == ['.train_lock', 'config.json']
    # A directory that existed before is never removed, even when empty but for the lock.
    old = tmp_path / 'old'
    old.mkdir()
    run_lock.acquire(str(old)).release()
    assert old.is_dir()


def test_lock_holder_description_of_a_garbled_file():
    from ssd_tf import run_lock
    assert run_lock.describe_holder('not json') == 'a process that wrote no description'
    assert run_lock.describe_holder('{"pid": 7, "host": "h", "started": "s"}') == \
        'pid 7 on host h, started s'


@pytest.mark.slow
def test_second_train_on_a_live_dir_is_refused_and_kill9_leaves_it_resumable(tmp_path):
    train_dir = tmp_path / 'run'
    args = ['--train_dir', train_dir, '--max_number_of_steps=100000',
            '--save_every_n_steps=2', '--save_interval_secs=100000'] + TINY
    a = start_program('train_ssd.py', args)
    try:
        read_until(a, 'step 3/')
        b = program('train_ssd.py', args[:2] + ['--max_number_of_steps=5',
                                                '--learning_rate=0.01'] + TINY, timeout=300)
        assert b.returncode == 2, b.stderr
        assert f'--train_dir={train_dir} is in use by another run (pid {a.pid} on host' \
            in b.stderr
        assert 'Traceback' not in b.stderr
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=60)
    # the refused run changed nothing: config.json is run A's (the default learning rate)
    from nets import nets_factory
    config = json.loads((train_dir / 'config.json').read_text())
    default_rate = nets_factory.get_network(config['model_name']).default_learning_rate
    assert default_rate != 0.01 and config['learning_rate'] == default_rate
    r = program('train_ssd.py', args[:2] + ['--max_number_of_steps=6', '--save_every_n_steps=2',
                                            '--save_interval_secs=100000'] + TINY)
    assert r.returncode == 0, r.stderr
    assert 'resuming from' in r.stderr


# ------------------------------------------------------------------ 2. damaged checkpoints
def _three_checkpoints(directory):
    """ckpt-1, ckpt-2, ckpt-3 of a 1000-float variable (4000 bytes of data each)."""
    import tensorflow as tf
    v = tf.Variable(tf.zeros([1000]))
    ckpt = tf.train.Checkpoint(v=v)
    manager = tf.train.CheckpointManager(ckpt, str(directory), max_to_keep=None)
    for step in (1, 2, 3):
        v.assign(tf.fill([1000], float(step)))
        manager.save(checkpoint_number=step)
    return [str(directory / f'ckpt-{s}') for s in (1, 2, 3)]


def _cut_data(prefix):
    data = pathlib.Path(prefix + '.data-00000-of-00001')
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])


def test_intact_search_skips_a_missing_index_and_a_cut_data_file(tmp_path):
    from ssd_tf import run_config
    c1, c2, c3 = _three_checkpoints(tmp_path)
    assert run_config.checkpoint_prefixes(str(tmp_path)) == [c3, c2, c1]
    assert run_config.find_intact_checkpoint(str(tmp_path), None) == (c3, [])
    os.remove(c3 + '.index')
    _cut_data(c2)
    seen = []
    latest, damaged = run_config.find_intact_checkpoint(
        str(tmp_path), lambda p, r: seen.append(p))
    assert latest == c1 and seen == [c3, c2]
    assert damaged[0] == (c3, 'its .index file is missing')
    assert damaged[1][0] == c2 and damaged[1][1].startswith('it cannot be read')
    # a directory resolves to ckpt-1; the damaged prefixes themselves are refused by name
    assert run_config.resolve_checkpoint(str(tmp_path)) == ('tf2', c1)
    for bad in (c2, c3):
        with pytest.raises(ValueError, match=f'--checkpoint_path={bad} is damaged'):
            run_config.resolve_checkpoint(bad)


def test_no_intact_checkpoint_is_refused_saying_how_to_start_anew(tmp_path):
    from ssd_tf import run_config
    for prefix in _three_checkpoints(tmp_path):
        _cut_data(prefix)
    with pytest.raises(ValueError) as e:
        run_config.resolve_checkpoint(str(tmp_path))
    assert 'none is intact (ckpt-3: it cannot be read' in str(e.value)
    assert 'use a new --train_dir' in str(e.value)
    with pytest.raises(ValueError, match='--train_dir=.*none is intact'):
        run_config.resume_checkpoint(str(tmp_path))
    # an empty directory is a new run
    (tmp_path / 'new').mkdir()
    assert run_config.resume_checkpoint(str(tmp_path / 'new')) is None


def test_rotation_keeps_the_newest_intact_and_never_deletes_after_a_bad_save(tmp_path):
    from ssd_tf import run_config
    c1, c2, c3 = _three_checkpoints(tmp_path)
    # keep 2: ckpt-1 goes, the state file names ckpt-2, ckpt-3
    assert run_config.prune_checkpoints(str(tmp_path), 2, c3) == [c1]
    assert not os.path.exists(c1 + '.index')
    import tensorflow as tf
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert list(state.all_model_checkpoint_paths) == [c2, c3]
    # the newest save is damaged: nothing is deleted, even with keep=1
    _cut_data(c3)
    assert run_config.prune_checkpoints(str(tmp_path), 1, c3) == []
    assert os.path.exists(c2 + '.index')


@pytest.mark.slow
def test_train_resumes_from_newest_intact_and_refuses_when_none(tmp_path):
    train_dir = tmp_path / 'run'
    args = ['--train_dir', train_dir, '--save_every_n_steps=2',
            '--save_interval_secs=100000'] + TINY
    r = program('train_ssd.py', args + ['--max_number_of_steps=6'])
    assert r.returncode == 0, r.stderr
    os.remove(train_dir / 'ckpt-6.index')
    _cut_data(str(train_dir / 'ckpt-4'))
    # export from the directory: the newest intact checkpoint (ckpt-2), damaged ones named
    r = program('export_savedmodel.py', ['--checkpoint_path', train_dir,
                                         '--output_dir', tmp_path / 'export'])
    assert r.returncode == 0, r.stderr
    assert f'checkpoint {train_dir / "ckpt-6"} is damaged (its .index file is missing)' \
        in r.stderr
    r = program('train_ssd.py', args + ['--max_number_of_steps=8'])
    assert r.returncode == 0, r.stderr
    assert f'checkpoint {train_dir / "ckpt-6"} is damaged (its .index file is missing)' \
        in r.stderr
    assert f'checkpoint {train_dir / "ckpt-4"} is damaged (it cannot be read' in r.stderr
    assert f'resuming from {train_dir / "ckpt-2"} (step 2)' in r.stderr
    from ssd_tf import run_config
    assert run_config.find_intact_checkpoint(str(train_dir), None) == \
        (str(train_dir / 'ckpt-8'), [])
    # every checkpoint damaged: refused, nothing written, the way out said
    for prefix in run_config.checkpoint_prefixes(str(train_dir)):
        _cut_data(prefix)
    before = {p.name: p.stat().st_mtime_ns for p in train_dir.iterdir()}
    r = program('train_ssd.py', args + ['--max_number_of_steps=10'])
    assert r.returncode == 2, r.stderr
    assert f'--train_dir={train_dir} holds checkpoints but none is intact' in r.stderr
    assert 'use a new --train_dir' in r.stderr and 'Traceback' not in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in train_dir.iterdir()
            if p.name != '.train_lock'} == \
        {k: v for k, v in before.items() if k != '.train_lock'}
    r = program('eval_ssd.py', ['--checkpoint_path', train_dir])
    assert r.returncode != 0 and 'none is intact' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr


# ------------------------------------------------------------------ 7. defused VOC XML
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE annotation [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><filename>000001.png</filename><object><name>&lol4;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>
</annotation>
"""


def test_entity_expansion_is_refused_naming_the_file_and_old_voc_files_parse(tmp_path):
    from ssd_tf.datasets import factory
    from ssd_tf.datasets import synthetic
    from ssd_tf.datasets import voc
    root = synthetic.write_synthetic_voc(str(tmp_path / 'voc'), 4, 2)
    old = voc.read_annotation(os.path.join(root, 'Annotations', '000000.xml'))  # still parses
    assert old['filename'] == '000000.png' and old['objects']
    bomb = os.path.join(root, 'Annotations', '000001.xml')
    pathlib.Path(bomb).write_text(BILLION_LAUGHS)
    with pytest.raises(voc.AnnotationError, match="refused: the annotation XML declares "
                                                  "entities"):
        voc.read_annotation(bomb)
    records, _, summary = factory.load_records('voc', root, 'train')
    assert sorted(r.image_id for r in records) == ['000000', '000002', '000003']
    assert '000001.xml' in summary, summary
    with pytest.raises(ValueError, match='000001.xml'):
        factory.load_records('voc', root, 'train', strict=True)


# ------------------------------------------------------------------ 4. detect.py and serving
@pytest.mark.timeout(60)
def test_a_fifo_is_refused_without_being_opened(tmp_path):
    from ssd_tf import images
    fifo = tmp_path / 'x.jpg'
    os.mkfifo(fifo)  # opening it for reading would block: no writer ever comes
    with pytest.raises(ValueError, match=r'not a regular file \(a FIFO\)'):
        images.read_regular_file(str(fifo))
    with pytest.raises(ValueError, match=r'not a regular file \(a directory\)'):
        images.read_regular_file(str(tmp_path))
    (tmp_path / 'a.bin').write_bytes(b'0123456789')
    assert images.read_regular_file(str(tmp_path / 'a.bin')) == b'0123456789'
    assert images.read_regular_file(str(tmp_path / 'a.bin'), limit=3) == b'0123'


def test_unwritable_output_dir_is_refused_naming_the_flag(tmp_path):
    from ssd_tf import detect
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match=f'--output_dir={tmp_path / "file" / "out"} is not a '
                                         'writable directory'):
        detect.check_output_dir(str(tmp_path / 'file' / 'out'))
    detect.check_output_dir(str(tmp_path / 'new' / 'out'))
    assert os.listdir(tmp_path / 'new' / 'out') == []  # the probe file is gone


@pytest.fixture(scope='module')
def saved_model(tmp_path_factory):
    """A SavedModel of a seeded ssd_small (export.saved_model.export_saved_model), 5 classes."""
    from conftest import sharpened_network
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf.export import saved_model as export
    net, model = sharpened_network(0, 'ssd_small')
    root = tmp_path_factory.mktemp('robust_export')
    return export.export_saved_model(net, model, prep.image_preprocess_fn(net.params.img_shape),
                                     root / 'serving', version=1, max_detections=10,
                                     label_names=['a', 'b', 'c', 'd'])


@pytest.mark.slow
def test_zero_images_get_an_empty_answer_from_both_signatures(saved_model):
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(str(saved_model))
    out = loaded.signatures['serving_default'](tf.constant([], tf.string))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        'detection_boxes': (0, 10, 4), 'detection_scores': (0, 10),
        'detection_classes': (0, 10), 'num_detections': (0,)}
    out = loaded.signatures['serving_images'](tf.zeros([0, 50, 60, 3], tf.uint8))
    assert tuple(out['detection_boxes'].shape) == (0, 10, 4)
    # one image still runs the network
    image = tf.io.encode_png(np.full([40, 30, 3], 200, np.uint8))
    out = loaded.signatures['serving_default'](tf.stack([image]))
    assert tuple(out['detection_boxes'].shape) == (1, 10, 4)


@pytest.mark.slow
def test_detect_skips_a_fifo_and_refuses_an_unwritable_output_dir(saved_model, tmp_path):
    import cv2
    import numpy as np
    folder = tmp_path / 'photos'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), np.full([40, 30, 3], 90, np.uint8))
    os.mkfifo(folder / 'x.jpg')
    out = tmp_path / 'out'
    r = program('detect.py', ['--model', saved_model, '--images', folder, '--output_dir', out],
                timeout=300)  # a hang is a TimeoutExpired failure
    assert r.returncode == 0, r.stderr
    assert f'skipped {folder / "x.jpg"}: not a regular file (a FIFO)' in r.stdout
    results = json.loads((out / 'detections.json').read_text())
    assert [pathlib.Path(x['image']).name for x in results] == ['a.png', 'x.jpg']
    assert 'error' not in results[0] and 'FIFO' in results[1]['error']
    # an unwritable --output_dir is refused before the model loads (the model does not exist)
    (tmp_path / 'file').write_text('x')
    r = program('detect.py', ['--model', tmp_path / 'no_model', '--images', folder,
                              '--output_dir', tmp_path / 'file' / 'out'], timeout=120)
    assert r.returncode != 0
    assert f'--output_dir={tmp_path / "file" / "out"} is not a writable directory' in r.stderr
    assert 'Traceback' not in r.stderr


# ------------------------------------------------------------------ 8. kill -9 and resume
def _step_lines(text):
    """`{step: 'loss terms'}` of the progress lines 'step N/M [bar] terms | img/s | ETA'."""
    out = {}
    for line in text.splitlines():
        if line.startswith('step ') and '/' in line and '] ' in line:
            step = int(line.split()[1].split('/')[0])
            out[step] = line.split('] ', 1)[1].split(' | ')[0]
    return out


def _weights(prefix):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(prefix)
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if n != '_CHECKPOINTABLE_OBJECT_GRAPH'}  # weights, optimizer state, step


@pytest.mark.slow
def test_kill9_and_resume_reads_the_same_batches_and_reaches_the_same_weights(tmp_path):
    """A run of 12 steps (batch 8 of 64 images: 1.5 epochs, so the resumed stream crosses
    the epoch boundary and its reshuffle) against the same run killed with SIGKILL after step
    5 and resumed from its last checkpoint (step 4, or 6 if it got that far). The loss of
    every step after the resume point is the loss of the uninterrupted run at that step (it
    depends on the restored weights and on the batch read, so a resumed stream that starts
    again at the first batch fails here), and the final weights agree."""
    import numpy as np
    args = ['--max_number_of_steps=12', '--save_every_n_steps=2',
            '--save_interval_secs=100000', '--seed=3'] + TINY
    a = program('train_ssd.py', ['--train_dir', tmp_path / 'a'] + args)
    assert a.returncode == 0, a.stderr
    losses_a = _step_lines(a.stdout + a.stderr)
    assert sorted(losses_a) == list(range(1, 13))
    b = start_program('train_ssd.py', ['--train_dir', tmp_path / 'b'] + args)
    read_until(b, 'step 5/')
    b.send_signal(signal.SIGKILL)
    assert b.wait(timeout=60) == -signal.SIGKILL
    r = program('train_ssd.py', ['--train_dir', tmp_path / 'b'] + args)
    assert r.returncode == 0, r.stderr
    resumed_at = int(r.stderr.split('resuming from ')[1].split('(step ')[1].split(')')[0])
    assert resumed_at in (4, 6), r.stderr
    losses_b = _step_lines(r.stdout + r.stderr)
    assert sorted(losses_b) == list(range(resumed_at + 1, 13))
    for step, terms in losses_b.items():
        assert terms == losses_a[step], (step, terms, losses_a[step])
    wa, wb = _weights(str(tmp_path / 'a' / 'ckpt-12')), _weights(str(tmp_path / 'b' / 'ckpt-12'))
    assert wa.keys() == wb.keys() and len(wa) > 10
    assert int(wb['global_step/.ATTRIBUTES/VARIABLE_VALUE']) == 12
    for name in wa:
        np.testing.assert_allclose(wa[name], wb[name], rtol=1e-4, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------ 5. TFRecord label texts
def _slim_example(labels, texts, seed=0):
    """A tf.Example with the keys of the original slim `pascalvoc_to_tfrecords` (a 32x32 JPEG,
    one 8..24 px box per label)."""
    import numpy as np
    import tensorflow as tf
    image = np.random.default_rng(seed).integers(0, 255, [32, 32, 3], dtype=np.uint8)
    data = tf.io.encode_jpeg(image).numpy()
    n = len(labels)

    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    def strings(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))
    feature = {
        'image/height': ints([32]), 'image/width': ints([32]), 'image/channels': ints([3]),
        'image/shape': ints([32, 32, 3]),
        'image/object/bbox/xmin': floats([0.25] * n), 'image/object/bbox/xmax': floats([0.75] * n),
        'image/object/bbox/ymin': floats([0.25] * n), 'image/object/bbox/ymax': floats([0.75] * n),
        'image/object/bbox/label': ints(labels),
        'image/object/bbox/label_text': strings([t.encode() for t in texts]),
        'image/object/bbox/difficult': ints([0] * n), 'image/object/bbox/truncated': ints([0] * n),
        'image/format': strings([b'JPEG']), 'image/encoded': strings([data])}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_shard(path, examples):
    import tensorflow as tf
    with tf.io.TFRecordWriter(str(path)) as w:
        for e in examples:
            w.write(e)
    return str(path)


VOC_SUBSET = (1, 2, 3, 5, 6, 7, 10)  # aeroplane bicycle bird bottle bus car cow


def _voc_subset_shard(path, copies=2):
    from ssd_tf.datasets import labelmap
    return _write_shard(path, [_slim_example([label], [labelmap.VOC_CLASSES[label - 1]], i)
                               for i, label in enumerate(VOC_SUBSET * copies)])


def test_label_texts_with_gaps_fill_voc_names_and_check_num_classes(tmp_path):
    from ssd_tf.datasets import factory
    from ssd_tf.datasets import labelmap
    shard = _voc_subset_shard(tmp_path / 'voc_subset.tfrecord')
    m = factory.tfrecord_label_map(shard, num_classes=21)
    assert list(m.names) == list(labelmap.VOC_CLASSES) and m.num_classes == 21
    # named labels keep their text; the gaps (4, 8, 9, 11..20) accept any
    # VOC: 1 aeroplane 2 bicycle 3 bird 4 boat 5 bottle 6 bus 7 car 8 cat 9 chair 10 cow
    assert m.record_texts[:11] == ('none', 'aeroplane', 'bicycle', 'bird', '', 'bottle', 'bus',
                                   'car', '', '', 'cow')
    m = factory.tfrecord_label_map(shard)  # without --num_classes: the largest label + 1
    assert list(m.names) == list(labelmap.VOC_CLASSES[:10])
    with pytest.raises(ValueError, match=r'--num_classes=8 but the records have label 10 '
                                         r"\('cow'\): --num_classes must be at least 11"):
        factory.tfrecord_label_map(shard, num_classes=8)
    # not VOC names: the gaps get class_<label>
    other = _write_shard(tmp_path / 'other.tfrecord',
                         [_slim_example([1], ['raccoon']), _slim_example([3], ['fox'])])
    assert list(factory.tfrecord_label_map(other).names) == ['raccoon', 'class_2', 'fox']


def test_a_record_whose_text_disagrees_is_skipped_and_counted(tmp_path):
    from ssd_tf import data as data_lib
    from ssd_tf.datasets import check
    from ssd_tf.datasets import factory
    # 6 records name label 1 'cat' and label 2 'dog'; records 2 and 5 call label 1 'bird'
    examples = [_slim_example([1, 2], ['cat', 'dog'], i) for i in range(6)]
    examples[2] = _slim_example([1], ['bird'], 2)
    examples[5] = _slim_example([2, 1], ['dog', 'bird'], 5)
    shard = _write_shard(tmp_path / 'mixed.tfrecord', examples)
    m = factory.tfrecord_label_map(shard)
    assert list(m.names) == ['cat', 'dog']
    report = check.DataProblems()
    ok = [bool(ex['ok']) for _, ex in data_lib.checked_tfrecords(
        shard, report, num_classes=3, label_texts=m.record_texts)][:-1]  # last: end marker
    assert ok == [True, True, False, True, True, False]
    assert report.num_skipped == 2
    summary = report.summary()
    assert 'label text disagrees with the other records: 2 records skipped' in summary
    assert f'{shard} record 5' in summary and 'box 1: label 1 is named "bird"' in summary
    # without the texts to check (a label map file given), nothing is skipped
    report = check.DataProblems()
    list(data_lib.checked_tfrecords(shard, report, num_classes=3))
    assert report.num_skipped == 0


# ------------------------------------------------------------------ 6. TFRecord evaluation
def test_split_pattern_replaces_the_training_split_token(tmp_path):
    from ssd_tf.datasets import tfrecord
    for name in ('voc_2007_train_000.tfrecord', 'voc_2007_test_000.tfrecord',
                 'x-train-0.tfrecord'):
        (tmp_path / name).write_bytes(b'')
    train = str(tmp_path / 'voc_2007_train_*.tfrecord')
    assert tfrecord.split_pattern(train, 'train', 'test') == \
        str(tmp_path / 'voc_2007_test_*.tfrecord')
    assert tfrecord.split_pattern(train, 'train', 'val') is None  # no such shards
    assert tfrecord.split_pattern(train, 'train', 'train') is None  # the training split
    assert tfrecord.split_pattern(str(tmp_path / 'x-train-*.tfrecord'), 'train', 'test') \
        is None  # x-test-* does not exist
    assert tfrecord.split_pattern(str(tmp_path / 'voc_2007_trainval_*'), 'train', 'test') \
        is None  # 'train' inside 'trainval' is not the split token
    assert tfrecord.split_pattern(str(tmp_path), 'train', 'test') == \
        str(tmp_path / '*test*.tfrecord*')


def test_warning_when_evaluating_the_training_data():
    import io
    from ssd_tf import evaluation
    from ssd_tf import run_config
    cfg = run_config.RunConfig.from_dict(dict(dataset_name='voc', dataset_dir='/d',
                                              dataset_split_name='trainval'))
    out = io.StringIO()
    assert evaluation.warn_if_training_split(cfg, 'voc', '/d', 'trainval', out)
    assert out.getvalue().startswith("WARNING: evaluating the run's training split 'trainval'")
    assert not evaluation.warn_if_training_split(cfg, 'voc', '/d', 'test', out)
    assert not evaluation.warn_if_training_split(cfg, 'voc', '/other', 'trainval', out)
    rec = run_config.RunConfig.from_dict(dict(dataset_name='tfrecord', dataset_dir='/s/a_*',
                                              dataset_split_name='train'))
    assert evaluation.warn_if_training_split(rec, 'tfrecord', '/s/a_*', 'test', out)
    assert "the run's training shards --dataset_dir=/s/a_*" in out.getvalue()


@pytest.mark.slow
def test_tfrecord_run_evaluates_its_eval_shards_and_eval_warns_on_training_shards(tmp_path):
    from ssd_tf.datasets import synthetic
    from ssd_tf.datasets import tfrecord
    data = tmp_path / 'data'
    tfrecord.write_tfrecords(synthetic.make_synthetic_split('train', 32, 0), str(data), 'syn',
                             'train')
    tfrecord.write_tfrecords(synthetic.make_synthetic_split('test', 12, 0), str(data), 'syn',
                             'test')
    args = ['--dataset_name=tfrecord', f'--dataset_dir={data}/syn_train_*.tfrecord',
            '--max_number_of_steps=2', '--batch_size=8', '--warmup_steps=1',
            '--eval_split_name=test']
    r = program('train_ssd.py', ['--train_dir', tmp_path / 'run'] + args)
    assert r.returncode == 0, r.stderr
    assert f'--eval_split_name=test: evaluating the shards {data}/syn_test_*.tfrecord' \
        in r.stderr
    assert 'VOC07 mAP (test, 12 images)' in r.stdout
    # eval_ssd on the run: the test shards, found the same way; no warning
    r = program('eval_ssd.py', ['--checkpoint_path', tmp_path / 'run'])
    assert r.returncode == 0, r.stderr
    assert 'WARNING: evaluating' not in r.stderr
    # the training shards named explicitly: evaluated, with a WARNING on stderr
    r = program('eval_ssd.py', ['--checkpoint_path', tmp_path / 'run', '--dataset_name',
                                'tfrecord', '--dataset_dir', f'{data}/syn_train_*.tfrecord'])
    assert r.returncode == 0, r.stderr
    assert "WARNING: evaluating the run's training shards" in r.stderr
    # no test shards beside the training ones: said on the console, training still succeeds
    (data / 'syn_test_00000-of-00001.tfrecord').unlink()
    r = program('train_ssd.py', ['--train_dir', tmp_path / 'run2'] + args)
    assert r.returncode == 0, r.stderr
    assert "NO EVALUATION: --eval_split_name=test: no TFRecord shards of split 'test'" \
        in r.stderr


# ------------------------------------------------------------------ 3. EXIF orientation
RED, BLUE = (220, 20, 20), (20, 20, 220)


def _app1(orientation, big_endian=True):
    """The bytes of an Exif APP1 segment whose IFD0 holds one entry, the orientation tag
    0x0112 (type 3 SHORT, count 1), written by hand."""
    order = 'big' if big_endian else 'little'

    def u16(v):
        return v.to_bytes(2, order)

    def u32(v):
        return v.to_bytes(4, order)
    tiff = ((b'MM' if big_endian else b'II') + u16(42) + u32(8) +  # header, IFD0 at 8
            u16(1) + u16(0x0112) + u16(3) + u32(1) + u16(orientation) + b'\0\0' +
            u32(0))  # one entry, no next IFD
    payload = b'Exif\0\0' + tiff
    return b'\xff\xe1' + (len(payload) + 2).to_bytes(2, 'big') + payload


def _turned_jpeg(orientation=6, big_endian=True, after_jfif=True):
    """A JPEG stored turned, shown upright (60 high, 40 wide) by its EXIF orientation 6: the
    displayed top-left quadrant (rows 0..29, columns 0..19) is red, the rest blue.

    Orientation 6 displays the stored image turned 90 degrees clockwise:
    displayed[i, j] = stored[H_s - 1 - j, i] with H_s = 40 (stored 40 high, 60 wide). The red
    displayed i < 30, j < 20 is stored rows 39 - j in 20..39 and columns i in 0..29."""
    import cv2
    import numpy as np
    assert orientation == 6
    stored = np.empty([40, 60, 3], np.uint8)
    stored[:] = BLUE
    stored[20:40, 0:30] = RED
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(stored, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = buf.tobytes()
    assert data[2:4] == b'\xff\xe0'  # cv2 writes a JFIF APP0 first
    at = 4 + int.from_bytes(data[4:6], 'big') if after_jfif else 2
    return data[:at] + _app1(orientation, big_endian) + data[at:]


def _is(pixel, colour):
    return all(abs(int(a) - b) < 40 for a, b in zip(pixel, colour))


@pytest.mark.parametrize('big_endian, after_jfif', [(True, True), (False, False)])
def test_decoder_shows_a_turned_jpeg_upright(big_endian, after_jfif):
    from ssd_tf import images
    data = _turned_jpeg(6, big_endian, after_jfif)
    assert int(images.exif_orientation(data)) == 6
    image = images.decode_image(data).numpy()
    assert image.shape == (60, 40, 3)
    assert _is(image[10, 10], RED) and _is(image[25, 15], RED)
    assert _is(image[10, 30], BLUE) and _is(image[50, 10], BLUE) and _is(image[50, 30], BLUE)


def test_orientation_golden_of_each_value():
    """A 2x3 image with pixel values 0..5 (row-major) displayed for each orientation; the
    goldens are the EXIF definitions written out: 2 mirror, 3 turn 180, 4 flip, 5 transpose,
    6 turn 90 clockwise, 7 transverse, 8 turn 90 counter-clockwise."""
    import numpy as np
    import tensorflow as tf
    from ssd_tf import images
    stored = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)  # [[0 1 2] [3 4 5]]
    goldens = {1: [[0, 1, 2], [3, 4, 5]], 2: [[2, 1, 0], [5, 4, 3]],
               3: [[5, 4, 3], [2, 1, 0]], 4: [[3, 4, 5], [0, 1, 2]],
               5: [[0, 3], [1, 4], [2, 5]], 6: [[3, 0], [4, 1], [5, 2]],
               7: [[5, 2], [4, 1], [3, 0]], 8: [[2, 5], [1, 4], [0, 3]]}
    for o, golden in goldens.items():
        out = images.apply_orientation(tf.constant(stored), tf.constant(o)).numpy()[..., 0]
        assert out.tolist() == golden, o


def test_no_exif_and_other_formats_are_as_stored():
    import cv2
    import numpy as np
    from ssd_tf import images
    img = np.zeros([5, 7, 3], np.uint8)
    for ext in ('.jpg', '.png'):
        data = cv2.imencode(ext, img)[1].tobytes()
        assert int(images.exif_orientation(data)) == 1
        assert images.decode_image(data).shape == (5, 7, 3)
    assert int(images.exif_orientation(b'garbage')) == 1


def _turned_voc(root):
    """A VOC directory of one turned JPEG annotated as displayed: <size> 40 x 60, the box on
    the red displayed quadrant (VOC 1-based pixels 1..20 x 1..30)."""
    for sub in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / 'JPEGImages' / 'phone.jpg').write_bytes(_turned_jpeg())
    (root / 'Annotations' / 'phone.xml').write_text(
        '<annotation><filename>phone.jpg</filename><size><width>40</width><height>60</height>'
        '<depth>3</depth></size><object><name>red</name><difficult>0</difficult><bndbox>'
        '<xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>'
        '</annotation>')
    (root / 'ImageSets' / 'Main' / 'train.txt').write_text('phone\n')
    return root


def test_voc_and_tfrecord_readers_keep_the_box_on_the_displayed_pixels(tmp_path):
    import numpy as np
    from ssd_tf import data as data_lib
    from ssd_tf import images
    from ssd_tf.datasets import check
    from ssd_tf.datasets import factory
    from ssd_tf.datasets import tfrecord
    root = _turned_voc(tmp_path / 'voc')
    records, _, summary = factory.load_records('voc', str(root), 'train')
    assert len(records) == 1 and len(records[0].boxes) == 1, summary
    box = np.asarray(records[0].boxes[0])
    image = images.decode_record_image(records[0])
    assert image.shape == (60, 40, 3)
    y0, x0, y1, x1 = (box * [60, 40, 60, 40]).round().astype(int)
    assert _is(image[(y0 + y1) // 2, (x0 + x1) // 2], RED)
    assert y1 <= 30 and x1 <= 20  # the box is the top-left quadrant, not outside the image
    # the converter keeps the bytes (EXIF included): the TFRecord pipeline shows them upright
    tfrecord.write_tfrecords(records, str(tmp_path / 'rec'), 'p', 'train')
    out = [ex for _, ex in data_lib.checked_tfrecords(
        str(tmp_path / 'rec' / 'p_train_*.tfrecord'), check.DataProblems())][:-1]
    assert len(out) == 1 and bool(out[0]['ok'])
    assert tuple(out[0]['image'].shape) == (60, 40, 3)
    assert _is(out[0]['image'].numpy()[10, 10], RED)


@pytest.mark.slow
def test_a_turned_phone_photo_trains_with_its_box_and_detect_reports_it_upright(
        tmp_path, saved_model):
    root = _turned_voc(tmp_path / 'voc')
    r = program('train_ssd.py', ['--train_dir', tmp_path / 'run', '--dataset_name=voc',
                                 '--dataset_dir', root, '--batch_size=1',
                                 '--max_number_of_steps=1', '--warmup_steps=1',
                                 '--eval_split_name='])
    assert r.returncode == 0, r.stderr
    summary = [line for line in r.stderr.splitlines() if line.startswith('train data:')]
    # before the orientation: '1 boxes dropped' (it "lies entirely outside the image")
    assert summary and '1 records read, 0 skipped, 0 boxes dropped' in summary[0], summary
    assert 'outside' not in r.stderr
    out = tmp_path / 'det'
    r = program('detect.py', ['--model', saved_model, '--images',
                              root / 'JPEGImages' / 'phone.jpg', '--output_dir', out])
    assert r.returncode == 0, r.stderr
    result = json.loads((out / 'detections.json').read_text())[0]
    assert (result['height'], result['width']) == (60, 40)
