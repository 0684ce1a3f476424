"""kmock's in-memory Kubernetes emulator on a loopback port, run in a background event loop so the
synchronous ``kubernetes`` client can talk to it. It stores objects; it runs no controllers, so a
test plays the operator by patching ``status`` itself. (No real API server can run here.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import kmock
from kubernetes import client


@contextmanager
def running_emulator(resources: list[str]) -> Iterator[tuple[kmock.KubernetesEmulator, client.ApiClient]]:
    started = threading.Event()
    state: dict = {}

    async def serve() -> None:
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            for resource in resources:
                emulator.resources[resource] = {}
            state.update(emulator=emulator, url=str(server.url).rstrip("/"), loop=asyncio.get_running_loop())
            state["stop"] = asyncio.Event()
            started.set()
            await state["stop"].wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    if not started.wait(15):
        raise RuntimeError("the kmock emulator did not start")
    configuration = client.Configuration()
    configuration.host = state["url"]
    api_client = client.ApiClient(configuration)
    try:
        yield state["emulator"], api_client
    finally:
        api_client.close()
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
