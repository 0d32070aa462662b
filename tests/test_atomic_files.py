"""Files written whole or not at all (`ssd_tf.atomic_files`), and the writers that use it: a
failure part-way (a full disk, an exception, an object JSON cannot encode) leaves the old file
as it was and no temporary file behind."""
import errno
import json
import os
import stat

import pytest

from ssd_tf import atomic_files


def _full_disk(*_):
    raise OSError(errno.ENOSPC, 'No space left on device')


def test_a_new_file_gets_the_text_and_the_usual_permissions(tmp_path):
    path = tmp_path / 'a.txt'
    assert atomic_files.write_text(path, 'one\ntwo\n') == path
    assert path.read_text() == 'one\ntwo\n'
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(os.listdir(tmp_path)) == ['a.txt']


def test_replacing_keeps_the_old_files_permissions(tmp_path):
    path = tmp_path / 'labels.txt'
    path.write_text('old')
    os.chmod(path, 0o640)
    atomic_files.write_text(path, 'new')
    assert path.read_text() == 'new'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_a_full_disk_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / 'metrics.json'
    path.write_text('{"mAP": 0.5}')
    monkeypatch.setattr(atomic_files.os, 'fsync', _full_disk)
    with pytest.raises(OSError, match='No space left'):
        atomic_files.write_json(path, {'mAP': 0.7})
    assert path.read_text() == '{"mAP": 0.5}'
    assert sorted(os.listdir(tmp_path)) == ['metrics.json']


def test_an_exception_inside_the_block_leaves_the_old_file(tmp_path):
    path = tmp_path / 'x.bin'
    path.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='boom'):
        with atomic_files.replacing(path, 'wb') as f:
            f.write(b'half of the new')
            raise RuntimeError('boom')
    assert path.read_bytes() == b'old'
    assert sorted(os.listdir(tmp_path)) == ['x.bin']


def test_an_object_json_cannot_encode_leaves_the_old_file(tmp_path):
    path = tmp_path / 'c.json'
    path.write_text('[1]')
    with pytest.raises(TypeError):
        atomic_files.write_json(path, {'a': object()})
    assert path.read_text() == '[1]' and sorted(os.listdir(tmp_path)) == ['c.json']


def test_json_is_what_json_dump_writes_and_bytes_round_trip(tmp_path):
    atomic_files.write_json(tmp_path / 'j.json', {'b': 1, 'a': [2]}, indent=1, sort_keys=True)
    assert (tmp_path / 'j.json').read_text() == '{\n "a": [\n  2\n ],\n "b": 1\n}'
    with atomic_files.replacing(tmp_path / 'b.bin', 'wb') as f:
        f.write(b'\x00\xff')
    assert (tmp_path / 'b.bin').read_bytes() == b'\x00\xff'
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_files.replacing(tmp_path / 'c', 'a'):
            pass


def test_a_missing_directory_is_an_error_that_names_nothing_written(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_files.write_text(tmp_path / 'missing' / 'a.txt', 'x')
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- the writers
def test_the_run_config_survives_a_full_disk(tmp_path, monkeypatch):
    from ssd_tf import run_config
    run_config.write_run_config(str(tmp_path), {'model_name': 'ssd_small', 'num_classes': 5})
    monkeypatch.setattr(atomic_files.os, 'fsync', _full_disk)
    with pytest.raises(OSError):
        run_config.write_run_config(str(tmp_path), {'model_name': 'ssd_300_vgg'})
    assert json.loads((tmp_path / 'config.json').read_text())['model_name'] == 'ssd_small'
    assert sorted(os.listdir(tmp_path)) == ['config.json']


def test_a_label_map_file_survives_a_full_disk(tmp_path, monkeypatch):
    from ssd_tf.datasets import labelmap
    old = labelmap.LabelMap(['cat', 'dog'])
    for name in ('labels.txt', 'l.json', 'l.pbtxt'):
        old.write(tmp_path / name)
    before = {n: (tmp_path / n).read_text() for n in os.listdir(tmp_path)}
    assert before['labels.txt'] == '0:none\n1:cat\n2:dog\n'
    monkeypatch.setattr(atomic_files.os, 'fsync', _full_disk)
    for name in before:
        with pytest.raises(OSError):
            labelmap.LabelMap(['bird']).write(tmp_path / name)
    assert {n: (tmp_path / n).read_text() for n in os.listdir(tmp_path)} == before


def test_result_files_and_pictures_survive_a_full_disk(tmp_path, monkeypatch):
    import numpy as np
    from ssd_tf import metrics, visualize
    metrics.write_coco_results(str(tmp_path / 'coco.json'), [{'image_id': 1}])
    visualize.save_png(tmp_path / 'p.png', np.zeros((2, 3, 3), np.uint8))
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    monkeypatch.setattr(atomic_files.os, 'fsync', _full_disk)
    with pytest.raises(OSError):
        metrics.write_coco_results(str(tmp_path / 'coco.json'), [{'image_id': 2}])
    with pytest.raises(OSError, match='could not write'):
        visualize.save_png(tmp_path / 'p.png', np.ones((2, 3, 3), np.uint8))
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before


def test_an_evaluation_report_cut_by_a_full_disk_keeps_the_last_whole_report(tmp_path,
                                                                            monkeypatch):
    from ssd_tf import evaluation, metrics
    ev = metrics.VOCEvaluator(2, ['thing'])
    ev.add_image('i', [[10, 10, 20, 20]], [1], det_boxes=[[10, 10, 20, 20]], det_scores=[.9],
                 det_classes=[1], image_shape=(100, 100), relative=False)
    run = evaluation.EvalRun(evaluator=ev, num_images=1, seconds=1., detect_seconds=0.,
                             detections={}, samples={})
    _, paths = evaluation.write_report(run, str(tmp_path), step=1, num_sample_images=0)

    def everything():
        return {os.path.relpath(os.path.join(d, n), tmp_path): open(os.path.join(d, n), 'rb').read()
                for d, _, names in os.walk(tmp_path) for n in names}
    before = everything()
    assert json.loads(before['metrics.json'])['step'] == 1
    assert {'metrics.txt', 'coco_detections.json', 'coco_groundtruth.json', 'pr_curves.png',
            os.path.join('results', 'comp4_det_test_thing.txt')} <= set(before)
    monkeypatch.setattr(atomic_files.os, 'fsync', _full_disk)
    with pytest.raises(OSError, match='No space left'):
        evaluation.write_report(run, str(tmp_path), step=2, num_sample_images=0)
    assert everything() == before  # no file cut or emptied, no temporary file left


def test_the_exported_label_files_survive_a_full_disk(tmp_path, monkeypatch):
    from ssd_tf.export import saved_model
    saved_model.write_label_files(['cat', 'dog'], str(tmp_path))
    before = {n: (tmp_path / n).read_text() for n in os.listdir(tmp_path)}
    assert before[saved_model.TFLITE_LABELS_FILENAME] == 'cat\ndog\n'
    real_fsync = os.fsync

    def full_for_the_tflite_labels(fd):  # labels.txt is written, then the disk is full
        if saved_model.TFLITE_LABELS_FILENAME in os.readlink(f'/proc/self/fd/{fd}'):
            _full_disk()
        real_fsync(fd)
    monkeypatch.setattr(atomic_files.os, 'fsync', full_for_the_tflite_labels)
    with pytest.raises(OSError, match='No space left'):
        saved_model.write_label_files(['bird'], str(tmp_path))
    assert (tmp_path / 'labels.txt').read_text() == '0:none\n1:bird\n'
    assert (tmp_path / saved_model.TFLITE_LABELS_FILENAME).read_text() == 'cat\ndog\n'
    assert sorted(os.listdir(tmp_path)) == sorted(before)


def test_a_symbolic_link_is_written_through_and_stays_a_link(tmp_path):
    shared = tmp_path / 'shared'
    shared.mkdir()
    target = shared / 'labels.txt'
    target.write_text('old')
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'labels.txt').symlink_to(target)
    atomic_files.write_text(run / 'labels.txt', 'new')
    assert os.path.islink(run / 'labels.txt')
    assert target.read_text() == 'new'
    assert sorted(os.listdir(shared)) == ['labels.txt'] and os.listdir(run) == ['labels.txt']


def test_the_umask_is_read_without_changing_it(tmp_path):
    old = os.umask(0o027)
    try:
        assert atomic_files._umask() == 0o027
        assert os.umask(0o027) == 0o027  # still what was set
        atomic_files.write_text(tmp_path / 'n.txt', 'x')
        assert stat.S_IMODE(os.stat(tmp_path / 'n.txt').st_mode) == 0o640
    finally:
        os.umask(old)


def _tree(root):
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), 'rb').read()
            for d, _, names in os.walk(root) for n in names}


def test_staged_files_replace_their_namesakes_together_the_last_ones_last(tmp_path,
                                                                          monkeypatch):
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'a.txt').write_text('old a')
    (tmp_path / 'b.json').write_text('old z')
    (tmp_path / 'keep.txt').write_text('not written by the block')
    os.chmod(tmp_path / 'a.txt', 0o640)
    moves = []
    real_replace = os.replace
    monkeypatch.setattr(atomic_files.os, 'replace',
                        lambda a, b: (moves.append(os.path.relpath(b, tmp_path)),
                                      real_replace(a, b)))
    with atomic_files.staged(tmp_path, last=['b.json']) as tmp:
        os.mkdir(os.path.join(tmp, 'sub'))
        for name in ('b.json', 'a.txt', os.path.join('sub', 'b.txt'), 'new.txt'):
            atomic_files.write_text(os.path.join(tmp, name), f'new {name}')
        assert _tree(tmp_path)['a.txt'] == b'old a'  # nothing moves before the block ends
    assert _tree(tmp_path) == {'a.txt': b'new a.txt', 'b.json': b'new b.json',
                               'keep.txt': b'not written by the block',
                               os.path.join('sub', 'b.txt'): b'new ' + os.path.join(
                                   'sub', 'b.txt').encode(), 'new.txt': b'new new.txt'}
    moved = [m for m in moves if not m.startswith('.staged-')]  # not the writers' own
    assert moved[-1] == 'b.json' and sorted(moved) == sorted(
        ['a.txt', 'new.txt', os.path.join('sub', 'b.txt'), 'b.json'])
    assert stat.S_IMODE(os.stat(tmp_path / 'a.txt').st_mode) == 0o640
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / 'new.txt').st_mode) == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ['a.txt', 'b.json', 'keep.txt', 'new.txt', 'sub']


def test_a_failure_inside_staged_changes_nothing_and_leaves_no_staging_directory(tmp_path):
    (tmp_path / 'a.txt').write_text('old a')
    with pytest.raises(RuntimeError, match='drawing failed'):
        with atomic_files.staged(tmp_path) as tmp:
            atomic_files.write_text(os.path.join(tmp, 'a.txt'), 'new a')
            atomic_files.write_text(os.path.join(tmp, 'b.txt'), 'new b')
            raise RuntimeError('drawing failed')
    assert _tree(tmp_path) == {'a.txt': b'old a'}
    assert os.listdir(tmp_path) == ['a.txt']


def test_an_evaluation_report_that_fails_part_way_does_not_mix_two_evaluations(tmp_path,
                                                                            monkeypatch):
    from ssd_tf import evaluation, metrics

    def run_of(score):
        ev = metrics.VOCEvaluator(2, ['thing'])
        ev.add_image('i', [[10, 10, 20, 20]], [1], det_boxes=[[10, 10, 20, 20]],
                     det_scores=[score], det_classes=[1], image_shape=(100, 100), relative=False)
        return evaluation.EvalRun(evaluator=ev, num_images=1, seconds=1., detect_seconds=0.,
                                  detections={}, samples={})
    _, paths = evaluation.write_report(run_of(.9), str(tmp_path), step=1, num_sample_images=0)
    assert paths['json'] == os.path.join(str(tmp_path), 'metrics.json')
    assert paths['voc_results'] == {
        'thing': os.path.join(str(tmp_path), 'results', 'comp4_det_test_thing.txt')}
    before = _tree(tmp_path)
    assert ' 0.900000 ' in before[os.path.join('results', 'comp4_det_test_thing.txt')].decode()

    def broken(*_, **__):  # the results files are written; the pictures fail
        raise MemoryError('cannot draw')
    monkeypatch.setattr(evaluation, 'draw_pr_curves', broken)
    with pytest.raises(MemoryError):
        evaluation.write_report(run_of(.4), str(tmp_path), step=2, num_sample_images=0)
    assert _tree(tmp_path) == before  # the step-1 results files, not step 2's
    monkeypatch.undo()
    _, paths = evaluation.write_report(run_of(.4), str(tmp_path), step=2, num_sample_images=0)
    after = _tree(tmp_path)
    assert json.loads(after['metrics.json'])['step'] == 2
    assert ' 0.400000 ' in after[os.path.join('results', 'comp4_det_test_thing.txt')].decode()
    assert set(after) == set(before) and os.path.isfile(paths['pr_curves'])
