import pytest

from tests.helpers import start_server

# Real PostgreSQL and redis-server, started once per session when a test asks for them.
pytest_plugins = ["tests.servers"]


@pytest.fixture
async def server(tmp_path):
    handle = await start_server(tmp_path)
    try:
        yield handle
    finally:
        await handle.stop()
