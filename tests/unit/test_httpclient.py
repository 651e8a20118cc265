"""Sessions that carry writes must never re-send them on their own."""

from cachegrid import httpclient


async def test_sessions_do_not_resend_requests() -> None:
    async with httpclient.session() as session:
        assert session._retry_connection is False
