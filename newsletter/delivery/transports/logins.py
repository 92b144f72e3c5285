"""SMTP logins, once per process for a refused password.

A provider locks an account after a few failed logins.  `send` opens a
connection per worker (and a PIPELINING probe first), and the daemon opens
new ones every pass, so one wrong password used to be tried several times
per command.  Here a permanent refusal (5xx) of a (server, user, password) is
remembered for the life of the process: every later connection fails at once
with the same one-line error, without asking the server.  Until one login
with those credentials has succeeded, logins are made one at a time, so
concurrent workers cannot each try a wrong password before the first answer.
A 4xx reply (454: temporary) is not remembered.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from newsletter.errors import TransportError

Key = tuple[str, int, str, str]


def login_key(host: str, port: int, username: str, password: str) -> Key:
    # Only a digest of the password is kept, so a new password (a fixed
    # environment variable) is a new key and is tried.
    digest = hashlib.sha256(password.encode("utf-8")).hexdigest()
    return (host.lower(), port, username, digest)


class LoginMemo:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refused: dict[Key, TransportError] = {}
        self._accepted: set[Key] = set()
        self._first: dict[Key, threading.Lock] = {}

    def check(self, key: Key) -> None:
        """Raise the remembered refusal of these credentials, if any."""
        with self._lock:
            refused = self._refused.get(key)
        if refused is not None:
            raise TransportError(refused.message, key=refused.key, code=refused.code)

    @contextmanager
    def attempt(self, key: Key) -> Iterator[Callable[[TransportError], None]]:
        """Around one login: yields `refuse(error)` to record a permanent refusal.

        The first login with these credentials holds a lock that later ones
        wait on; once one has succeeded, logins run side by side.
        """
        with self._lock:
            known_good = key in self._accepted
            gate = self._first.setdefault(key, threading.Lock())
        if known_good:
            yield self._refuse(key)
            return
        with gate:
            self.check(key)  # refused while this one waited
            yield self._refuse(key)
            with self._lock:
                self._accepted.add(key)

    def forget(self) -> None:
        """Forget every login (tests: a port number can come back in another test)."""
        with self._lock:
            self._refused.clear()
            self._accepted.clear()
            self._first.clear()

    def _refuse(self, key: Key) -> Callable[[TransportError], None]:
        def refuse(error: TransportError) -> None:
            with self._lock:
                self._refused[key] = error
                self._accepted.discard(key)

        return refuse


LOGINS = LoginMemo()
