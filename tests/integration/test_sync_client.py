"""cachegrid.SyncClient against a real cluster: the async client's behaviour, without async,
from several threads at once."""

import threading

import pytest

from cachegrid import SyncClient
from cachegrid.errors import NotFound, VersionMismatch


def test_the_sync_client_reads_writes_and_raises_typed_errors(cluster) -> None:
    with SyncClient(cluster.urls) as client:
        version = client.put("sync-a", {"n": 1})
        item = client.get("sync-a")
        assert item is not None
        assert (item.value, item.version) == ({"n": 1}, version)
        assert client.ring is not None  # it routes by the ring, as Client does
        with pytest.raises(VersionMismatch):
            client.put("sync-a", {"n": 2}, if_absent=True)
        client.put("sync-a", {"n": 3}, if_match=version)
        assert {k: v.value if v else None for k, v in client.batch_get(["sync-a", "none"]).items()
                } == {"sync-a": {"n": 3}, "none": None}  # fmt: skip
        client.delete("sync-a")
        assert client.get("sync-a") is None
        with pytest.raises(NotFound):
            client.delete("sync-a")
    with pytest.raises(RuntimeError, match="closed"):
        client.get("sync-a")


def test_many_threads_share_one_sync_client(cluster) -> None:
    errors: list[BaseException] = []
    with SyncClient(cluster.urls) as client:

        def worker(n: int) -> None:
            try:
                for i in range(20):
                    key = f"sync-t{n}-{i}"
                    version = client.put(key, i)
                    item = client.get(key)
                    assert item is not None
                    assert (item.value, item.version) == (i, version)
            except BaseException as error:  # reported by the test thread
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
