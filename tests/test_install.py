"""The installed environment: `pip check` is clean and exactly one OpenCV distribution owns
`cv2` (the core and mediapipe both require opencv-contrib-python; a second build installed
over it would make cv2's files belong to two distributions). In CI this runs after .ci/run's
`pip install -e '.[dev,tfds,serving,mobile]'`, with no other install step."""
import importlib.metadata
import subprocess
import sys

import pytest


def _requirement_names(dist):
    import re
    return {re.split(r'[ ;<>=!~\[(]', r, maxsplit=1)[0].lower()
            for r in (importlib.metadata.distribution(dist).requires or [])}


@pytest.mark.slow
def test_pip_check_is_clean():
    out = subprocess.run([sys.executable, '-m', 'pip', 'check'], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_exactly_one_opencv_distribution_and_it_is_the_required_one():
    opencv = sorted({d.metadata['Name'].lower() for d in importlib.metadata.distributions()
                     if (d.metadata['Name'] or '').lower().startswith('opencv')})
    assert len(opencv) == 1, f"several OpenCV distributions installed: {opencv}"
    try:
        required = _requirement_names('ssd-tf')
    except importlib.metadata.PackageNotFoundError:
        pytest.skip('ssd-tf is not installed (run from a checkout without pip install)')
    assert opencv[0] in required, (opencv, sorted(r for r in required if 'opencv' in r))
    try:
        assert opencv[0] in _requirement_names('mediapipe')  # the build mediapipe requires
    except importlib.metadata.PackageNotFoundError:
        pass  # without the mobile extra, ours is the only requirement
