"""One run at a time per output: ``<output>/lock.json`` holds a lease (holder, run, expiry)
that the running job renews; a second run is refused with the holder named, and a lease that
expired (its holder died) is taken over.

Guarantees: taking a free lock is atomic on local disks and on S3 servers that honour
``If-None-Match`` (AWS S3, Ceph RGW, moto): of two runs starting together exactly one wins.
Taking over an expired lock deletes it and creates a new one; two runs doing that in the same
instant could both delete, and then only one create wins, except that a late delete can remove
the winner's fresh lock. Every renewal reads the lock back first, so a holder that finds
another token there stops within one renewal interval (``lease_s / 3``). On a server that
ignores ``If-None-Match`` the read-back after taking the lock is the only protection.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from pipeline.errors import DscoError
from pipeline.storage import create_exclusive, delete, join, read_json, write_json

LOCK_NAME = "lock.json"


class LockHeld(DscoError):
    """Another live run holds the output's lock."""


class LockLost(RuntimeError):
    """This run's lease was taken over (it was not renewed in time); stop writing."""


@dataclass
class Lease:
    """The content of lock.json."""

    token: str
    run_id: str
    host: str
    pid: int
    acquired: float
    expires: float

    @property
    def holder(self) -> str:
        return f"pid {self.pid} on {self.host} (run {self.run_id})"


def _alive_here(lease: Lease) -> bool:
    """False only when the holder is a process of this host that no longer exists."""
    if lease.host != socket.gethostname():
        return True
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """The lease on one output; use as a context manager around a run."""

    def __init__(self, output_url: str, run_id: str, lease_s: float):
        self.url = join(output_url, LOCK_NAME)
        self.run_id = run_id
        self.lease_s = lease_s
        self.lease: Lease | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def current(self) -> Lease | None:
        """The lease in storage now, if any."""
        found = read_json(self.url)
        return Lease(**found) if found else None

    def acquire(self) -> None:
        """Take the lock (taking over an expired or dead holder's) and start renewing it;
        raise LockHeld naming the holder when a live run has it."""
        now = time.time()
        lease = Lease(uuid.uuid4().hex, self.run_id, socket.gethostname(), os.getpid(), now,
                      now + self.lease_s)
        if not create_exclusive(self.url, _encode(lease)):
            held = self.current()
            if held is not None and held.expires > time.time() and _alive_here(held):
                raise LockHeld(
                    f"the output is locked by {held.holder}, whose lease runs until "
                    f"{time.strftime('%H:%M:%S', time.localtime(held.expires))}: only one run "
                    f"writes an output at a time. Wait for it, or if it is dead, wait until its "
                    f"lease expires (or delete {self.url}).")
            delete(self.url)  # expired, or its holder is a dead process of this host
            if not create_exclusive(self.url, _encode(lease)):
                winner = self.current()
                raise LockHeld(f"another run took over the expired lock {self.url} first: "
                               f"{winner.holder if winner else 'unknown'}.")
        if (self.current() or lease).token != lease.token:
            raise LockHeld(f"the lock {self.url} was taken by another run at the same time.")
        self.lease = lease
        self._renewer = threading.Thread(target=self._renew_loop, name="dsco-lock", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except LockLost:
                self.lost.set()
                return
            except DscoError:  # storage hiccup: the lease has slack, try at the next tick
                continue

    def renew(self) -> None:
        """Push the expiry forward; raise LockLost if another run holds the lock now."""
        held = self.current()
        if held is None or held.token != self.lease.token:
            raise LockLost(f"the lock {self.url} is no longer this run's "
                           f"(now: {held.holder if held else 'nobody'})")
        self.lease.expires = time.time() + self.lease_s
        write_json(self.url, asdict(self.lease))

    def check(self) -> None:
        """Raise LockLost if the renewer found the lease taken over."""
        if self.lost.is_set():
            raise LockLost(f"the lock {self.url} was taken over by another run; this run stops "
                           "without finishing (its committed units are kept).")

    def release(self) -> None:
        """Stop renewing and delete the lock if it is still this run's."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        held = self.current() if self.lease else None
        if held is not None and held.token == self.lease.token:
            delete(self.url)
        self.lease = None


def _encode(lease: Lease) -> bytes:
    return json.dumps(asdict(lease), indent=2, sort_keys=True).encode()


def lock_holder(output_url: str) -> Lease | None:
    """The live lease on ``output_url`` (None if unlocked or expired)."""
    found = read_json(join(output_url, LOCK_NAME))
    if not found:
        return None
    lease = Lease(**found)
    return lease if lease.expires > time.time() and _alive_here(lease) else None
