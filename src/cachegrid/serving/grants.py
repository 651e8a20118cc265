"""The owner's grant table: which holders may serve copies of which keys, until when.

Owns: the rows (key, holder) -> (version, expiry) an owner records when it grants a read
lease (DESIGN.md §3b), the term it may grant, and the holders that recently timed out.

Invariants:
- S3: a row ends only when it expires by the owner's clock or when ``settle`` is called
  for it after its holder acknowledged dropping the copy. Eviction, flush, release or a
  cache clear never remove a row: rows live apart from the cache.
- No term outlives the owner's own lease: the term sent is at most the owner's slack
  minus the margin, and a row expires at grant time + term + margin, before the owner's
  local deadline (F4 of docs/design/read-leases-review.md). A term shorter than a quarter
  of the configured one is not worth its cost: no grant.
- A full table refuses new rows; it never evicts one (evicting would break S3).
- A holder that let an invalidation time out is refused grants until it acknowledges one
  again or ``timeout_memory`` seconds pass: a liveness rule only (a grant to it would be
  safe, but would make the next write of the key wait out the whole term).
- Pure and synchronous: times are arguments, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachegrid.version import Version

# A holder: (node id, incarnation). Rows belong to one incarnation of a holder.
Holder = tuple[str, str]


@dataclass(slots=True)
class Row:
    version: Version
    expiry: float  # the owner's clock


class GrantTable:
    def __init__(self, *, term: float, margin: float, max_rows: int = 100_000,
                 timeout_memory: float = 30.0) -> None:  # fmt: skip
        self.term = term
        self.margin = margin
        self.max_rows = max_rows
        self.timeout_memory = timeout_memory
        self._rows: dict[str, dict[Holder, Row]] = {}
        self._count = 0
        self._timed_out: dict[Holder, float] = {}  # holder -> refused until (owner's clock)

    def __repr__(self) -> str:
        return f"<GrantTable keys={len(self._rows)} rows={self._count}>"

    def __len__(self) -> int:
        """Rows recorded (some may have expired since)."""
        return self._count

    def grant(self, key: str, holder: Holder, version: Version, now: float,
              slack: float) -> float | str:  # fmt: skip
        """Record a row for ``holder``; the term to send it, or why not (a reason).
        ``slack``: seconds before the owner's local lease deadline."""
        term = min(self.term, slack - self.margin)
        if term < self.term / 4:
            return "deadline"
        if self._timed_out.get(holder, 0.0) > now:
            return "timed_out"
        rows = self._rows.setdefault(key, {})
        if holder not in rows:
            if self._count >= self.max_rows:
                if not rows:
                    del self._rows[key]
                return "full"
            self._count += 1
        rows[holder] = Row(version, now + term + self.margin)
        return term

    def live(self, key: str, now: float) -> dict[Holder, Row]:
        """The rows of ``key`` that have not expired (expired ones are removed)."""
        rows = self._rows.get(key)
        if rows is None:
            return {}
        for holder in [h for h, row in rows.items() if row.expiry <= now]:
            del rows[holder]
            self._count -= 1
        if not rows:
            del self._rows[key]
        return dict(rows)

    def blocks(self, key: str, version: Version, now: float) -> bool:
        """True if a live row holds a version older than ``version``: letting ``version``
        out now could make a later read at a holder go back in time (invariant G)."""
        return any(row.version < version for row in self.live(key, now).values())

    def settle(self, key: str, holders: dict[Holder, Row], acked: set[Holder],
               now: float) -> None:  # fmt: skip
        """End the rows ``holders`` (frozen when their invalidation was published): each
        was acknowledged (in ``acked``) or has expired. A holder that did not acknowledge
        is refused grants for a while. Only those exact rows end (a row re-granted since
        is another row: a stale acknowledgement never ends it)."""
        rows = self._rows.get(key, {})
        for holder, frozen in holders.items():
            if rows.get(holder) is frozen:
                del rows[holder]
                self._count -= 1
            if holder not in acked:
                self._timed_out[holder] = now + self.timeout_memory
        if key in self._rows and not rows:
            del self._rows[key]

    def acknowledged(self, holder: Holder) -> None:
        """The holder acknowledged an invalidation: it may be granted leases again."""
        self._timed_out.pop(holder, None)

    def leased_keys(self, now: float) -> list[str]:
        """Keys with a live row."""
        return [key for key in list(self._rows) if self.live(key, now)]
