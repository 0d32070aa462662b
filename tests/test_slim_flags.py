"""The slim scripts' flags that ask for nothing here (`ssd_tf.cli.slim_flags`): a slim command
line parses and runs at their slim defaults (--num_clones=1, --labels_offset=0, ...); another
value is an error naming the flag, in train_ssd.py and eval_ssd.py alike. train_ssd.py runs in
a subprocess: its flags cannot be defined beside eval_ssd.py's."""
import pathlib
import subprocess
import sys

import pytest
from absl import flags

import eval_ssd
from ssd_tf.cli import slim_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Values(dict):
    """flag_values[name].value, as absl's FlagValues gives it."""

    def __getitem__(self, name):
        return type('Flag', (), {'value': dict.__getitem__(self, name)})


def test_the_slim_defaults_pass_and_any_other_value_is_named():
    names = tuple(slim_flags.SLIM_DEFAULT_ONLY)
    defaults = _Values({'num_clones': 1, 'clone_on_cpu': False, 'labels_offset': 0,
                        'train_image_size': None, 'num_readers': 4})
    assert slim_flags.slim_default_only_errors(defaults, names) == []
    other = _Values({'num_clones': 2, 'clone_on_cpu': True, 'labels_offset': 1,
                     'train_image_size': 300, 'num_readers': 4})
    errors = slim_flags.slim_default_only_errors(other, names)
    assert [e.split(' ')[0] for e in errors] == [
        '--num_clones=2', '--clone_on_cpu=True', '--labels_offset=1', '--train_image_size=300']
    assert '--strategy' in errors[0] and 'remove it' in errors[0]


def test_the_preprocessing_names_slim_gave():
    assert slim_flags.preprocessing_name_error(None) is None
    assert slim_flags.preprocessing_name_error('ssd_vgg') is None
    assert slim_flags.preprocessing_name_error('ssd_300_vgg') is None  # a network's name
    assert "--preprocessing_name=inception is unknown" in \
        slim_flags.preprocessing_name_error('inception')


@pytest.fixture
def _eval_flags():
    yield
    flags.FLAGS.unparse_flags()


def test_eval_ssd_takes_labels_offset_at_zero_only(_eval_flags):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['eval_ssd', '--checkpoint_path=x', '--labels_offset=0'])
    assert eval_ssd.check_flags() is None
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['eval_ssd', '--checkpoint_path=x', '--labels_offset=1'])
    with pytest.raises(ValueError, match=r'--labels_offset=1 is not supported \(labels are 0'):
        eval_ssd.check_flags()


_CHECK_TRAIN_FLAGS = """
import sys
sys.path.insert(0, {root!r})
from absl import flags
import train_ssd
flags.FLAGS(['train_ssd.py'] + {args!r})
try:
    train_ssd.check_flags()
    print('OK')
except Exception as e:
    print('ERROR', e)
"""


def _check_train_flags(args):
    p = subprocess.run([sys.executable, '-c', _CHECK_TRAIN_FLAGS.format(root=str(ROOT),
                                                                       args=list(args))],
                       capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout.strip()


@pytest.mark.slow  # a subprocess that imports the networks (for --preprocessing_name)
def test_train_ssd_parses_a_slim_command_and_names_what_it_cannot_do():
    # The slim README's training command, with the slim defaults of the flags it left out.
    slim = ['--dataset_name=pascalvoc_2012', '--dataset_dir=./tfrecords',
            '--dataset_split_name=train', '--model_name=ssd_300_vgg', '--save_summaries_secs=60',
            '--save_interval_secs=600', '--weight_decay=0.0005', '--optimizer=adam',
            '--learning_rate=0.001', '--batch_size=32', '--num_clones=1', '--clone_on_cpu=false',
            '--labels_offset=0', '--num_readers=4', '--preprocessing_name=ssd_300_vgg']
    assert _check_train_flags(slim) == 'OK'
    got = _check_train_flags(slim[:-5] + ['--num_clones=4', '--preprocessing_name=inception'])
    assert got.startswith('ERROR')
    assert '--num_clones=4 is not supported (replicas come from --strategy' in got
    assert '--preprocessing_name=inception is unknown' in got
