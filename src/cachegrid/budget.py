"""A node-wide budget of the bytes held for requests and answers in progress.

Owns: how many bytes are reserved (request bodies being read or written through, batchGet
answers being built or sent, forwarded batches being parsed), refusing reservations past
the limit, and capping what one answer may hold.

Invariants:
- ``used`` never exceeds ``limit``: a reservation that would pass it is refused with
  ``Overloaded`` (429, Retry-After) and takes nothing.
- One answer counts at most ``cap`` bytes toward its size (``TooLarge``, 413, naming the
  setting), whatever the node's budget.
- A reservation gives back everything it took, once (``close`` is idempotent; use it as a
  context manager). One event loop: no locks.
- A request whose estimate does not fit is refused before it does any work.
"""

from __future__ import annotations

from types import TracebackType

from cachegrid.errors import Overloaded, TooLarge


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reservation(self, cap: int | None = None, cap_name: str = "") -> Reservation:
        """A new, empty reservation; ``cap`` bounds the answer it is for (``cap_name``
        names the setting in the 413)."""
        return Reservation(self, cap, cap_name)


class Reservation:
    """The bytes one request holds: taken up front from an estimate (``expect``), so that
    concurrent requests are admitted whole or refused at once rather than all starved
    half-way; then counted as they are really needed (``need``), taking more only past
    the estimate."""

    def __init__(self, budget: ByteBudget, cap: int | None, cap_name: str) -> None:
        self.budget = budget
        self.cap = cap
        self.cap_name = cap_name
        self.held = 0  # bytes taken from the budget
        self.needed = 0  # bytes really needed so far
        self.answer = 0  # of which count toward the answer's size

    def expect(self, size: int) -> None:
        """Take ``size`` bytes now (Overloaded if the budget cannot hold them)."""
        self._take(size)

    def need(self, size: int, *, answer: bool = True) -> None:
        """``size`` more bytes are needed; ``answer``: they are part of the answer's size."""
        if answer and self.cap is not None and self.answer + size > self.cap:
            raise TooLarge(f"the answer would be over {self.cap} bytes ({self.cap_name}); "
                           "ask for fewer keys at once")  # fmt: skip
        needed = self.needed + size
        if needed > self.held:
            self._take(needed - self.held)  # refused: nothing counted
        self.needed = needed
        if answer:
            self.answer += size

    def close(self) -> None:
        self.budget.used -= self.held
        self.held = 0

    def _take(self, size: int) -> None:
        if self.budget.used + size > self.budget.limit:
            raise Overloaded("the node holds too many bytes for requests in progress "
                             "(node.max_bytes_in_flight); retry")  # fmt: skip
        self.budget.used += size
        self.held += size

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:  # fmt: skip
        self.close()
