import os
import pathlib

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


@pytest.fixture
def shared_data():
    """Path of ../shared/data (raccoon, bccd); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip('../shared/data is not present (a user checkout has no ../shared)')
    return SHARED_DATA
