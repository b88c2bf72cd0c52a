"""IMAP IDLE (RFC 2177) as the mailbox's push: a connection per searched folder, each in its own thread.

IDLE watches only the selected mailbox, so each searched folder gets a connection of its own (opened
read-only with EXAMINE). An ``EXISTS`` response is new mail. IDLE is renewed every few minutes (RFC 2177
asks clients to within 29); a failed connection is reopened after a pause that doubles up to a minute. A
server without IDLE is not watched (``last_error`` says so) and the daemon polls at ``poll_interval``.

The watch also tells the searches which folders have been quiet: in IDLE the whole time since their last
search began, without any response (new mail, expunges, flag changes). Such a folder's search can reuse what
it found last time instead of sending a UID SEARCH.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from imapclient import IMAPClient

from probe.config import ImapConfig
from probe.mailbox.imap_session import classify, connect, describe, logout, shut

log = logging.getLogger(__name__)

IDLE_RENEW: Final = 300.0  # seconds before IDLE is ended and started again
CHECK_EVERY: Final = 1.0  # seconds each wait for IDLE responses lasts before the stop flag is read again
RETRY_FIRST: Final = 1.0
RETRY_MAX: Final = 60.0


class ImapWatch:
    """Threads holding IDLE open on each folder, reopening after errors; stop() ends them."""

    def __init__(self, *, imap: ImapConfig, folders: list[str], on_new_mail: Callable[[float], None], name: str,
                 resolve: Callable[[], list[str]]) -> None:
        self._imap = imap
        self._folders = folders
        self._resolve = resolve
        self._on_new_mail = on_new_mail
        self._name = name
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._idling: dict[str, IMAPClient] = {}
        self._changed: set[str] = set(folders)  # folders with news (or no IDLE) since their last search began
        self._last_error: str | None = None
        self._threads: list[threading.Thread] = []
        self._starter = threading.Thread(target=self._start_folders, name=f"imap-watch-{name}", daemon=True)

    @property
    def connected(self) -> bool:
        """Say whether every searched folder is in IDLE now."""
        with self._lock:
            return bool(self._folders) and all(folder in self._idling for folder in self._folders)

    @property
    def last_error(self) -> str | None:
        """Return the last error of a watch connection (redacted), if any."""
        return self._last_error

    def quiet(self, folder: str) -> bool:
        """Say whether ``folder`` has been in IDLE, with no news at all, since its last search began."""
        with self._lock:
            return folder in self._idling and folder not in self._changed

    def searching(self, folder: str) -> None:
        """Note that a search of ``folder`` begins now: news from here on makes it changed again."""
        with self._lock:
            self._changed.discard(folder)

    def _news(self, folder: str) -> None:
        with self._lock:
            self._changed.add(folder)

    def start(self) -> None:
        """Start watching (the folders are learned first if they were not known yet)."""
        self._starter.start()

    def _start_folders(self) -> None:
        pause = RETRY_FIRST
        while not self._folders and not self._stopping.is_set():
            try:
                self._folders = self._resolve()
            except Exception as exc:
                self._failed(exc)
                self._stopping.wait(pause)
                pause = min(RETRY_MAX, pause * 2)
        for folder in self._folders:
            thread = threading.Thread(target=self._run, args=(folder,), name=f"imap-idle-{self._name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching: wake every IDLE wait by shutting its socket, and wait for the threads."""
        self._stopping.set()
        with self._lock:
            clients = list(self._idling.values())
        for client in clients:
            shut(client)
        end = time.monotonic() + timeout
        self._starter.join(max(0.0, end - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))

    def _run(self, folder: str) -> None:
        pause = RETRY_FIRST
        while not self._stopping.is_set():
            try:
                self._watch(folder)
                pause = RETRY_FIRST
            except Exception as exc:  # the watch outlives any one failure
                if self._stopping.is_set():
                    return
                self._failed(exc)
            finally:
                with self._lock:
                    client = self._idling.pop(folder, None)
                    self._changed.add(folder)
                if client is not None:
                    shut(client)
            self._stopping.wait(pause)
            pause = min(RETRY_MAX, pause * 2)

    def _failed(self, exc: BaseException) -> None:
        self._last_error = f"{classify(exc)}: {describe(exc)}"
        log.warning("mailbox %s: IDLE watch failed: %s", self._name, self._last_error)

    def _watch(self, folder: str) -> None:
        client = connect(self._imap)
        if not client.has_capability("IDLE"):
            logout(client)
            self._last_error = "the server offers no IDLE; the mailbox is polled"
            self._stopping.wait()  # nothing to watch: the daemon polls
            return
        client.select_folder(folder, readonly=True)
        client.idle()
        with self._lock:
            self._idling[folder] = client
            self._changed.add(folder)  # what arrived while it was not watched is unknown
        renew_at = time.monotonic() + IDLE_RENEW
        while not self._stopping.is_set():
            responses = client.idle_check(timeout=CHECK_EVERY)
            if any(not (len(r) > 1 and r[0] == b"OK") for r in responses):  # EXISTS, EXPUNGE, FETCH...: news
                self._news(folder)
            if any(len(r) > 1 and r[1] == b"EXISTS" for r in responses):
                self._notify()
            if time.monotonic() >= renew_at:
                client.idle_done()
                client.idle()
                renew_at = time.monotonic() + IDLE_RENEW
        logout(client)

    def _notify(self) -> None:
        try:
            self._on_new_mail(time.time())
        except Exception:
            log.exception("mailbox %s: the new-mail callback failed", self._name)
