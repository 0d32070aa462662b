"""The slim SSD's data set names (`--dataset_name=pascalvoc_2007|pascalvoc_2012|pascalvoc`):
one meaning for train_ssd.py, eval_ssd.py and ssd-anchors (`factory.resolve_slim_name`).
The slim SSD read them as its converter's TFRecords (`voc_2007_<split>_*.tfrecord`);
eval_ssd.py also took a Pascal VOC root, which keeps working, with Pascal VOC's class ids."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from ssd_tf.datasets import factory, labelmap, synthetic, tfrecord

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Pascal VOC names for the four synthetic shapes, and their VOC ids (the 20 classes in
# alphabetical order: aeroplane 1, bicycle 2, bird 3, ..., car 7, cat 8, ..., dog 12).
VOC_NAME = {'circle': 'cat', 'cross': 'dog', 'rectangle': 'car', 'triangle': 'bird'}
VOC_ID = {'bird': 3, 'car': 7, 'cat': 8, 'dog': 12}


@pytest.fixture
def slim_shards(tmp_path):
    """A directory as the slim converter leaves it: voc_2007_train_* and voc_2007_test_*."""
    d = tmp_path / 'tfrecords'
    tfrecord.write_tfrecords(synthetic.make_synthetic_examples(4, seed=0, image_size=48),
                             str(d), 'voc_2007', 'train', num_shards=2)
    tfrecord.write_tfrecords(synthetic.make_synthetic_examples(3, seed=1, image_size=48),
                             str(d), 'voc_2007', 'test')
    return d


@pytest.fixture
def voc_root(tmp_path):
    """A Pascal VOC root whose objects carry Pascal VOC class names (no labels.txt)."""
    root = synthetic.write_synthetic_voc(str(tmp_path / 'VOC2007'), 3, 3, seed=2, image_size=48)
    os.remove(os.path.join(root, 'labels.txt'))
    ann = pathlib.Path(root) / 'Annotations'
    for xml in ann.iterdir():
        text = xml.read_text()
        for shape, name in VOC_NAME.items():
            text = text.replace(f'<name>{shape}</name>', f'<name>{name}</name>')
        xml.write_text(text)
    return root


def test_a_slim_name_on_the_slim_converters_directory_is_its_tfrecords_of_the_split(
        slim_shards):
    d = str(slim_shards)
    assert factory.resolve_slim_name('pascalvoc_2007', d, 'train') == (
        'tfrecord', os.path.join(d, 'voc_2007_train_*.tfrecord'))
    assert factory.resolve_slim_name('pascalvoc_2007', d, 'test') == (
        'tfrecord', os.path.join(d, 'voc_2007_test_*.tfrecord'))
    assert factory.resolve_slim_name('pascalvoc', d, 'train') == (
        'tfrecord', os.path.join(d, 'voc_*_train_*.tfrecord'))
    assert len(tfrecord.match_files(os.path.join(d, 'voc_2007_train_*.tfrecord'))) == 2


def test_a_slim_name_on_a_voc_root_a_pattern_or_nothing(voc_root, slim_shards):
    assert factory.resolve_slim_name('pascalvoc_2007', voc_root, 'test') == ('voc', voc_root)
    pattern = str(slim_shards / 'voc_2007_*_00000-of-*.tfrecord')
    assert factory.resolve_slim_name('pascalvoc_2012', pattern, 'train') == ('tfrecord', pattern)
    with pytest.raises(ValueError, match=r'--dataset_name=pascalvoc_2012 --dataset_dir=.*'
                                         r'voc_2012_train_\*\.tfrecord.*no Pascal VOC root'):
        factory.resolve_slim_name('pascalvoc_2012', str(slim_shards), 'train')
    with pytest.raises(ValueError, match='needs --dataset_dir'):
        factory.resolve_slim_name('pascalvoc_2007', None, 'train')
    # other names are left alone, whatever the directory holds
    assert factory.resolve_slim_name('voc', voc_root, 'test') == ('voc', voc_root)
    assert factory.resolve_slim_name('tfrecord', str(slim_shards), 'x') == (
        'tfrecord', str(slim_shards))


def test_a_voc_root_under_a_slim_name_gets_the_pascal_voc_class_ids(voc_root):
    records, label_map, _ = factory.load_records('pascalvoc_2007', voc_root, 'test')
    assert label_map == labelmap.VOC_LABEL_MAP
    got = {int(l) for r in records for l in r.labels}
    names = {t for r in records for t in r.label_text}
    assert got == {VOC_ID[n] for n in names}
    # --dataset_name=voc numbers the names it finds instead: bird 1, car 2, cat 3, dog 4.
    _, plain, _ = factory.load_records('voc', voc_root, 'test')
    assert list(plain.names) == sorted(VOC_ID)
    with pytest.raises(ValueError, match='TFRecords, streamed'):
        factory.load_records('pascalvoc_2007', os.path.join(voc_root, 'x_*.tfrecord'), 'test')


def test_eval_reads_the_slim_tfrecords_of_its_split_and_a_voc_root_as_before(
        slim_shards, voc_root):
    import eval_ssd
    files, label_map = eval_ssd.load_eval_source('pascalvoc_2007', str(slim_shards), 'test')
    assert [os.path.basename(f) for f in files] == ['voc_2007_test_00000-of-00001.tfrecord']
    assert label_map == labelmap.VOC_LABEL_MAP
    records, label_map = eval_ssd.load_eval_source('pascalvoc_2007', voc_root, 'test',
                                                   num_images=10)
    assert label_map == labelmap.VOC_LABEL_MAP and len(records) == 3
    assert {int(l) for r in records for l in r.labels} <= set(VOC_ID.values())


_RESOLVE_IN_TRAIN_SSD = """
import json, sys
sys.path.insert(0, {root!r})
import train_ssd
from ssd_tf import run_config
out = {{}}
for name, where in (('pascalvoc_2007', {shards!r}), ('pascalvoc_2007', {voc!r}),
                    ('pascalvoc_2012', {shards!r})):
    cfg = run_config.RunConfig.from_dict({{'dataset_name': name, 'dataset_dir': where,
                                          'dataset_split_name': 'train'}})
    try:
        got = train_ssd.resolve_slim_dataset(cfg)
        out[name + ' ' + where] = [got.dataset_name, got.dataset_dir]
    except train_ssd.UserError as e:
        out[name + ' ' + where] = ['UserError', str(e)]
print(json.dumps(out))
"""


@pytest.mark.slow  # a subprocess: train_ssd.py's flags cannot live beside eval_ssd.py's
def test_train_reads_the_slim_tfrecords_as_tfrecord_data_and_keeps_a_voc_root(slim_shards,
                                                                             voc_root):
    shards = str(slim_shards)
    script = _RESOLVE_IN_TRAIN_SSD.format(root=str(ROOT), shards=shards, voc=voc_root)
    p = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       timeout=300, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out[f'pascalvoc_2007 {shards}'] == [
        'tfrecord', os.path.join(shards, 'voc_2007_train_*.tfrecord')]
    assert "the slim converter's TFRecords" in p.stderr
    # a VOC root keeps its slim name: the VOC reader gives it the Pascal VOC ids
    assert out[f'pascalvoc_2007 {voc_root}'] == ['pascalvoc_2007', voc_root]
    kind, message = out[f'pascalvoc_2012 {shards}']
    assert kind == 'UserError' and 'no Pascal VOC root' in message


def test_the_anchors_command_offers_the_same_names(capsys):
    from ssd_tf.cli import anchors
    with pytest.raises(SystemExit):
        anchors.main(['--dataset_name', 'bogus'])
    err = capsys.readouterr().err  # argparse lists the choices
    assert "invalid choice: 'bogus'" in err
    assert all(f"'{n}'" in err for n in factory.SLIM_VOC_NAMES)


@pytest.mark.slow
def test_train_ssd_with_the_slim_flags_on_slim_tfrecords_trains_and_evaluates(
        slim_shards, tmp_path):
    run = tmp_path / 'run'
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    p = subprocess.run(
        [sys.executable, str(ROOT / 'train_ssd.py'), '--dataset_name=pascalvoc_2007',
         f'--dataset_dir={slim_shards}', '--dataset_split_name=train', f'--train_dir={run}',
         '--batch_size=2', '--max_number_of_steps=2', '--log_every_n_steps=1'],
        capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'VOC07 mAP (test, 3 images)' in p.stdout  # the voc_2007_test shards
    cfg = json.loads((run / 'config.json').read_text())
    assert (cfg['dataset_name'], cfg['dataset_dir']) == (
        'tfrecord', os.path.join(str(slim_shards), 'voc_2007_train_*.tfrecord'))
