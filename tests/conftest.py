import pytest

from tests.helpers import start_server


@pytest.fixture
async def server(tmp_path):
    handle = await start_server(tmp_path)
    try:
        yield handle
    finally:
        await handle.stop()
