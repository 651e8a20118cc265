"""A holder's copies of hot keys owned elsewhere, and its read-lease requests in flight.

Owns: the copies this node may serve under read leases (DESIGN.md §3b) and the tickets of
the asks it sent, which decide whether an owner's grant may still be installed.

Invariants:
- A copy is served only before its end, (time the ask was *sent*) + term - margin, on
  the holder's clock, and only under the member lease (session) it was asked under.
- A grant is installed only through the ticket of its own ask, and only if that ticket
  is still the key's current one: applying an invalidation or drop record of the key, a
  ring change, a flush or a re-snapshot since the ask was sent withdraws the ticket, so
  its grant — possibly of a version the owner has meanwhile invalidated — is refused.
- A copy is never replaced by an older version.
- Bounded: at most ``capacity`` copies (the oldest installed go first: dropping a copy is
  always safe) and one ticket per key. A plain dict, not an LRU: a replica hit is a hot
  path, and a copy lives one term anyway.
- Pure and synchronous: times are arguments, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cachegrid.localcache import Entry, entry_version


@dataclass(slots=True)
class Copy:
    entry: Entry
    owner: str  # the node id of the owner that granted it
    end: float  # the holder's clock: serve strictly before
    renew_at: float  # ask again from here on, if the key is still hot
    session: int  # the member lease it was asked under
    installed: float
    hits: int = 0
    renewing: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class Ticket:
    """One ask; compared by identity (a later ask of the same key is another ticket)."""

    key: str
    owner: str
    sent: float
    session: int


# A hot copy is asked again once this share of its term has passed: late enough that
# renewals cost few forwards (1.3 a second per key with a 1 s term), early enough that the
# new grant is back long before the copy ends (the ask is one forwarded read).
RENEW_AT = 0.75


class CopyTable:
    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._copies: dict[str, Copy] = {}
        self._tickets: dict[str, Ticket] = {}

    def __repr__(self) -> str:
        return f"<CopyTable copies={len(self._copies)} asks={len(self._tickets)}>"

    def __len__(self) -> int:
        return len(self._copies)

    def serve(self, key: str, now: float, session: int) -> Copy | None:
        """The live copy of ``key``, or None (an ended copy is dropped)."""
        copy = self._copies.get(key)
        if copy is None:
            return None
        if now >= copy.end or copy.session != session or not session:
            del self._copies[key]
            return None
        return copy

    def holds(self, key: str) -> bool:
        """True if a copy of ``key`` is here (live or not: ``serve`` says)."""
        return key in self._copies

    def asking(self, key: str) -> bool:
        return key in self._tickets

    def ask(self, key: str, owner: str, now: float, session: int) -> Ticket:
        """A ticket for an ask sent now; it replaces any earlier one of the key."""
        ticket = self._tickets[key] = Ticket(key, owner, now, session)
        return ticket

    def install(self, ticket: Ticket, entry: Entry, term: float, margin: float,
                now: float, session: int) -> bool:  # fmt: skip
        """Install the grant answering ``ticket``; False if it may not be."""
        if self._tickets.get(ticket.key) is not ticket:
            return False  # withdrawn: an invalidation, a flush, a ring change... since
        del self._tickets[ticket.key]
        end = ticket.sent + term - margin
        if session != ticket.session or end <= now:
            return False
        current = self._copies.get(ticket.key)
        if current is not None and entry_version(current.entry) > entry_version(entry):
            return False
        renew_at = ticket.sent + RENEW_AT * term
        self._copies.pop(ticket.key, None)
        if len(self._copies) >= self.capacity:
            del self._copies[next(iter(self._copies))]
        self._copies[ticket.key] = Copy(entry, ticket.owner, end, renew_at, session, now)
        return True

    def forget(self, ticket: Ticket) -> None:
        """The ask ended without a grant: withdraw its ticket if it is still current."""
        if self._tickets.get(ticket.key) is ticket:
            del self._tickets[ticket.key]

    def drop(self, keys: Iterable[str]) -> int:
        """Drop the copies and withdraw the asks of ``keys``; how many copies went."""
        dropped = 0
        for key in keys:
            self._tickets.pop(key, None)
            if self._copies.pop(key, None) is not None:
                dropped += 1
        return dropped

    def drop_all(self) -> int:
        dropped = len(self._copies)
        self._copies.clear()
        self._tickets.clear()
        return dropped

    def drop_where(self, doomed: Callable[[str, str], bool]) -> int:
        """Drop copies and asks whose (key, owner) ``doomed`` names (e.g. owner changed)."""
        keys = [k for k, c in self._copies.items() if doomed(k, c.owner)]
        keys += [k for k, t in self._tickets.items() if doomed(k, t.owner)]
        return self.drop(keys)
