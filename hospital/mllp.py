"""MLLP (HL7's minimal lower layer protocol: \\x0b message \\x1c\\r over TCP) for the station: a client behind a
durable outbox for the reports going to the LIS, and a listener for the orders coming from it.

The outbox (`Outbox`, the file `hl7-outbox.sqlite3`) is a `hospital.outbox.Queue`: durable, private, ordered by case,
one process delivering at a time (see that module). Each message is kept under its control ID (MSH-10,
`hospital.hl7.control_id`), so queueing a report again changes nothing, and it leaves the queue only on the LIS's
answer:
- AA (or CA): delivered, never sent again; only its control ID stays (the identity it carried is dropped);
- AR (or CR): refused, kept with the LIS's reason and not sent again (sending the same message again would earn the
  same refusal): the station says one line, a person decides;
- AE (or CE), a reply that answers another message or none at all within the timeout: sent again later, the wait
  doubling (`hospital.outbox.RETRY_FIRST` up to `RETRY_LONGEST`);
- no connection (refused, unreachable, timed out): the round stops and everything stays queued for the next one.
A later message of a case (its amendment) waits while an earlier one of the same case (OBR-3) is still queued: the
LIS never sees a correction before what it corrects. A message whose ACK was lost is sent again under the same
control ID: the LIS can tell a resend from a new message (MLLP itself cannot promise more than at least once).
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from hospital.hl7 import REJECT, Acknowledgement, HL7Error, Order, Routing, Segments, acknowledgement, answer_order
from hospital.outbox import Outcome, Queue, Round, delivered, refused, retry, unreachable
from slides import SlidestreamError
from slides.errors import one_line, printable

START, END = b"\x0b", b"\x1c\x0d"
FRAME_LIMIT = 4 * 1024 * 1024  # bytes of one message: a report is a few kilobytes
CONNECT_TIMEOUT, ACK_TIMEOUT = 10.0, 30.0  # seconds
IDLE_TIMEOUT = 60.0  # seconds the listener keeps a silent connection open
OUTBOX_FILE = "hl7-outbox.sqlite3"
DELIVERED_CODES, REFUSED_CODES = ("AA", "CA"), ("AR", "CR")


class MLLPError(SlidestreamError, OSError):
    """The LIS could not be reached or did not answer as MLLP says; the message names the endpoint and why."""


@dataclass(frozen=True)
class Endpoint:
    """Where the LIS listens: `parse("mllp://lis.hospital:2575")`."""

    host: str
    port: int
    connect_timeout: float = CONNECT_TIMEOUT
    ack_timeout: float = ACK_TIMEOUT

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        host, _, port = text.removeprefix("mllp://").rstrip("/").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise MLLPError(printable(f"LIS endpoint {text!r}: expected mllp://HOST:PORT"))
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"mllp://{self.host}:{self.port}"


def frame(message: str, encoding: str = "utf-8") -> bytes:
    return START + message.encode(encoding) + END


def read_frame(connection: socket.socket, leftover: bytearray) -> bytes | None:
    """The next MLLP frame's content from `connection` (bytes already read after the last frame in `leftover`);
    None where the peer closed between frames. MLLPError for bytes outside a frame or a frame over FRAME_LIMIT."""
    while END not in leftover:
        if len(leftover) > FRAME_LIMIT:
            raise MLLPError(f"a message of over {FRAME_LIMIT:,} bytes")
        chunk = connection.recv(65536)
        if not chunk:
            if leftover.strip():
                raise MLLPError("the connection closed in the middle of a message")
            return None
        leftover += chunk
    content, _, rest = bytes(leftover).partition(END)
    leftover[:] = rest
    content = content.lstrip(b"\r\n")
    if not content.startswith(START):
        raise MLLPError("bytes outside an MLLP frame (a message starts with \\x0b)")
    return content[1:]


class Unreachable(MLLPError):
    """No connection to the LIS: nothing was sent."""


def exchange(endpoint: Endpoint, message: str) -> str:
    """Sends one message on a connection of its own and returns the LIS's reply. `Unreachable` where no connection
    could be made (nothing was sent), MLLPError where the reply did not come (the LIS may have the message)."""
    try:
        connection = socket.create_connection((endpoint.host, endpoint.port), timeout=endpoint.connect_timeout)
    except OSError as error:
        raise Unreachable(printable(f"LIS {endpoint} unreachable: {error.strerror or one_line(error)}")) from None
    with connection:
        try:
            connection.settimeout(endpoint.ack_timeout)
            connection.sendall(frame(message))
            reply = read_frame(connection, bytearray())
        except (OSError, MLLPError) as error:
            reason = "timed out" if isinstance(error, TimeoutError) else getattr(error, "strerror", None) or one_line(error)
            raise MLLPError(printable(f"LIS {endpoint}: no acknowledgement: {reason}")) from None
    if reply is None:
        raise MLLPError(f"LIS {endpoint}: no acknowledgement: the connection closed without one")
    return reply.decode("utf-8", "replace")


@dataclass(frozen=True)
class Entry:
    """A message in the outbox, as `Outbox.entries` reports it."""

    control_id: str
    state: str
    attempts: int
    reply: str
    message: str


def _thread(message: str) -> str:
    """The case a message belongs to (OBR-3's first component); one message alone where it names none."""
    try:
        segments = Segments(message)
    except HL7Error:
        return ""
    return segments.field("OBR", 3) or segments.field("MSH", 10)


def _send(endpoint: Endpoint, control: str, message: str) -> Outcome:
    """Sends one queued message and reads the LIS's answer as what becomes of it (see the module's docstring)."""
    try:
        reply = exchange(endpoint, message)
    except Unreachable as error:
        return unreachable(str(error))
    except MLLPError as error:
        return retry(str(error), f"HL7 {control}: {error}")
    try:
        answer = Acknowledgement.read(reply)
    except HL7Error as error:
        answer = Acknowledgement("", "", str(error))
    if answer.control_id != control:
        reason = answer.reason if not answer.code else f"the acknowledgement answers {answer.control_id or 'no message'}"
        return retry(reason, f"HL7 {control}: LIS {endpoint}: {reason}")
    if answer.code in DELIVERED_CODES:
        return delivered(answer.code)
    kept, given = f"{answer.code} {answer.reason}".strip(), answer.reason or "no reason given"
    if answer.code in REFUSED_CODES:
        return refused(kept, f"HL7 {control}: REFUSED by LIS {endpoint} ({answer.code}): {given}")
    return retry(kept, f"HL7 {control}: LIS {endpoint} answered {answer.code or '?'}: {given}")


class Outbox(Queue):
    """The durable queue of messages to the LIS (see the module's docstring). One connection per process."""

    def __init__(self, folder: Path) -> None:
        super().__init__(Path(folder) / OUTBOX_FILE, "HL7", "message(s)", MLLPError)

    def enqueue(self, message: str) -> bool:
        """Queues `message` under its control ID (MSH-10); False where that ID is queued or was sent already."""
        try:
            control = Segments(message).field("MSH", 10)
        except HL7Error as error:
            raise MLLPError(f"HL7 outbox: cannot queue it: {error}") from None
        if not control:
            raise MLLPError("HL7 outbox: cannot queue a message without a control ID (MSH-10)")
        return self._add(control, _thread(message), message)

    def entries(self) -> list[Entry]:
        """Every message ever queued, in queue order."""
        return [Entry(*row) for row in self._rows()]

    def deliver(self, endpoint: Endpoint, say: Callable[[str], None], now: float | None = None) -> Round:
        """Sends the queued messages that are due, in order, each on its own connection, and records each answer.
        Says one line per refusal and error, and an outage once until it changes."""
        return self._deliver(lambda control, message: _send(endpoint, control, message), say, now)


# -- the listener for orders ------------------------------------------------------------------------------------
class _Connection(socketserver.StreamRequestHandler):
    """One LIS connection: any number of framed messages, each answered before the next is read."""

    server: _Server

    def handle(self) -> None:
        self.connection.settimeout(self.server.idle_timeout)
        leftover = bytearray()
        while True:
            try:
                content = read_frame(self.connection, leftover)
            except (OSError, MLLPError) as error:
                if not isinstance(error, TimeoutError | ConnectionResetError):
                    self.server.say(printable(f"ORDER connection from {self.client_address[0]} closed: {one_line(error)}"))
                return
            if content is None:
                return
            latin = b"8859/1" in content.split(b"\r", 1)[0]
            try:
                text = content.decode("latin-1" if latin else "utf-8")
            except UnicodeDecodeError:
                text = content.decode("utf-8", "replace")
                ack, line = acknowledgement(text, REJECT, "the message is not UTF-8 and MSH-18 names no other character set",
                                            self.server.routing), "ORDER AR: a message that is not UTF-8"  # fmt: skip
            else:
                with self.server.handler_lock:
                    ack, line = answer_order(text, self.server.handler, self.server.routing)
            self.server.say(line)
            self.connection.sendall(frame(ack, "latin-1" if latin else "utf-8"))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Callable[[Order], None], routing: Routing, say: Callable[[str], None],
                 idle_timeout: float) -> None:  # fmt: skip
        self.handler, self.routing, self.say, self.idle_timeout = handler, routing, say, idle_timeout
        self.handler_lock = threading.Lock()  # one order registered at a time: the registry is one connection
        super().__init__(address, _Connection)


class OrderListener:
    """Listens for the LIS's orders on (host, port) (port 0: any free one, see `port`): each message is read with
    `hospital.hl7.answer_order`, given to `handler` (one at a time) and answered with its ACK; `say` gets one line
    per message. A malformed message earns AE or AR and the listener goes on with the next."""

    def __init__(self, host: str, port: int, handler: Callable[[Order], None], routing: Routing, say: Callable[[str], None],
                 idle_timeout: float = IDLE_TIMEOUT) -> None:  # fmt: skip
        try:
            self._server = _Server((host, port), handler, routing, say, idle_timeout)
        except OSError as error:
            raise MLLPError(printable(f"cannot listen for orders on {host}:{port}: {error.strerror or one_line(error)}")) from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="hl7-orders", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

