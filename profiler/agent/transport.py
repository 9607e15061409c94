"""Agent side of the socket: a writer thread and a reader thread, so hooks never block on I/O.

Hooks call :meth:`Link.send`, which only puts a dict on a queue. The writer thread encodes and
writes; the reader thread parses the host's commands and hands each (already validated) one to
the agent. A broken connection makes the link report once and go quiet.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from .protocol import HOST_COMMANDS, MAX_LINE_BYTES, decode, encode, validate

_STOP = object()


class Link:
    """A connected, authenticated-on-first-message channel to the host."""

    def __init__(
        self,
        path: str,
        hello: dict[str, Any],
        on_command: Callable[[dict[str, Any]], None],
        on_lost: Callable[[str], None],
        on_bad_command: Callable[[str, str], None],
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._on_command = on_command
        self._on_lost = on_lost
        self._on_bad_command = on_bad_command
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lost = False
        self._closing = False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(connect_timeout_s)
        sock.connect(path)
        sock.settimeout(None)
        # The token goes first, synchronously: nothing else is sent before it.
        sock.sendall(encode(hello))
        self._sock = sock
        self._writer = threading.Thread(target=self._write_loop, name="wattlens-agent-writer",
                                         daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="wattlens-agent-reader",
                                        daemon=True)
        self._writer.start()
        self._reader.start()

    # -- sending ---------------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        if not self._lost:
            self._queue.put(msg)

    def _write_loop(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is _STOP:
                return
            batch = [msg]
            stop = False
            while len(batch) < 256:  # write what is already queued in one go
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._sock.sendall(b"".join(encode(m) for m in batch))
            except (OSError, ValueError, TypeError) as exc:
                self._lose(f"could not send to wattlens ({exc})")
                return
            if stop:
                return

    # -- receiving -------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                if not self._closing:
                    self._lose(f"lost the connection to wattlens ({exc})")
                return
            if not chunk:
                if not self._closing:
                    self._lose("wattlens closed the connection")
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self._handle_line(line)
            if len(buf) > MAX_LINE_BYTES:
                self._on_bad_command("?", "a command line was too long")
                buf = b""

    def _handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            msg = decode(line)
        except (ValueError, UnicodeDecodeError) as exc:
            self._on_bad_command("?", f"malformed command ({exc})")
            return
        reason = validate(msg, HOST_COMMANDS)
        if reason is not None:
            self._on_bad_command(str(msg.get("type")), reason)
            return
        self._on_command(msg)

    # -- lifecycle -------------------------------------------------------------------------
    def _lose(self, why: str) -> None:
        if self._lost:
            return
        self._lost = True
        self._on_lost(why)

    @property
    def lost(self) -> bool:
        return self._lost

    def close(self, timeout_s: float = 2.0) -> None:
        """Flush what is queued (up to ``timeout_s``), then close the socket."""
        self._closing = True
        self._queue.put(_STOP)
        if self._writer.is_alive() and threading.current_thread() is not self._writer:
            self._writer.join(timeout_s)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def abandon(self) -> None:
        """After fork: drop this process's copy of the socket without touching the parent's."""
        self._lost = True
        self._closing = True
        try:
            self._sock.close()
        except OSError:
            pass

