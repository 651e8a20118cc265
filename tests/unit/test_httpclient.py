"""Sessions that carry writes must never re-send them on their own."""

import asyncio

import aiohttp

from cachegrid import httpclient


class DropsSecondRequest:
    """An HTTP server that answers the first request on a connection (keep-alive), then
    reads the next one in full and hangs up without answering: what a node that applied a
    write and died looks like from the client's side."""

    def __init__(self) -> None:
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = False
        while await self._read_request(reader):
            self.requests += 1
            if answered:
                break  # read, maybe applied, never answered
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            answered = True
        writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed the connection
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
        await reader.readexactly(length)
        return True


async def second_put_succeeds(session: aiohttp.ClientSession, url: str) -> bool:
    """Two PUTs on one keep-alive connection; whether the second got an answer."""
    async with session.put(f"{url}/v1/kv/k", json={"value": 1}) as response:
        await response.read()
    try:
        async with session.put(f"{url}/v1/kv/k", json={"value": 2}) as response:
            await response.read()
    except aiohttp.ClientError:
        return False
    return True


async def test_a_broken_keep_alive_connection_never_causes_a_resend() -> None:
    """The second PUT reaches the server, which hangs up: our session reports the failure
    and sends nothing more. A plain aiohttp session, in the same situation, silently sends
    the PUT again on a new connection and reports success (so the test tells them apart:
    the first attempt may have been applied, and the caller never learns it was sent twice)."""
    plain_server, ours_server = DropsSecondRequest(), DropsSecondRequest()
    plain_url, ours_url = await plain_server.start(), await ours_server.start()
    try:
        async with aiohttp.ClientSession() as plain:
            assert await second_put_succeeds(plain, plain_url)
        async with httpclient.session() as ours:
            assert not await second_put_succeeds(ours, ours_url)
    finally:
        await plain_server.close()
        await ours_server.close()
    assert plain_server.requests == 3, "aiohttp no longer resends: revisit httpclient.py"
    assert ours_server.requests == 2
