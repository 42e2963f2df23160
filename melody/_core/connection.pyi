"""The sans-I/O WebSocket connection (RFC 6455 sections 5 to 7, RFC 7692 for compression).

:class:`Connection` parses frames from the bytes it is given and produces events and frames to
send; it never touches a socket. The asyncio protocol (``melody._core.protocol``) subclasses it
and receives the events as direct calls instead of a list.
"""

import sys
from typing import Final, Literal, TypeAlias

from typing_extensions import disjoint_base

from melody._core.deflate import Deflater, Inflater

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

STATE_HANDSHAKE: Final = 0
"""Reading the HTTP upgrade request (the server protocol only)."""
STATE_OPEN: Final = 1
"""Messages flow both ways."""
STATE_CLOSING: Final = 2
"""Our close frame was sent; waiting for the peer's. Received data is no longer delivered."""
STATE_CLOSED: Final = 3
"""The closing handshake finished or the connection failed: nothing more is read or sent."""
STATE_UPGRADING: Final = 4
"""The hub is deciding on the upgrade request (the server protocol only)."""

SEND_OK: Final = 0
"""The frame was handed to the transport (or, on a bare Connection, to ``data_to_send``)."""
SEND_QUEUED: Final = 1
"""The peer is not reading: the frame waits in the connection's queue."""
SEND_DROPPED: Final = 2
"""The queue was full: the data frame was dropped."""
SEND_CLOSED: Final = 3
"""The connection is closing or closed: nothing was sent."""
SEND_DROPPED_OLDEST: Final = 4
"""The queue was full: this frame was queued and the oldest queued data frame dropped."""

ADMIT_REFUSED: Final = 0
"""``admit``: the queue is full and the message must not be sent (it counts as dropped)."""
ADMIT_OK: Final = 1
"""``admit``: the message may be sent."""
ADMIT_DROPPED_OLDEST: Final = 2
"""``admit``: the message may be sent; the oldest queued one was dropped to make room."""

_Event: TypeAlias = (
    tuple[Literal["text"], str]
    | tuple[Literal["binary"], bytes]
    | tuple[Literal["ping"], bytes]
    | tuple[Literal["pong"], bytes]
    | tuple[Literal["close"], int, str]
    | tuple[Literal["fail"], int, str]
)

@disjoint_base
class Connection:
    """A WebSocket connection after its opening handshake, as a pure state machine.

    ``is_server`` decides the masking rules: a server requires masked frames from its peer and
    sends unmasked ones; a client the reverse, with a fresh random key per frame.
    ``max_message_size`` bounds a message's payload (compressed on the wire and inflated
    alike); a larger one fails the connection with 1009 as soon as its frame header shows it.
    ``read_buffer_size`` is the smallest private buffer allocated for an incomplete frame.

    Failing is immediate (section 7.1.7): on a protocol violation a close frame with the code is
    queued, ``state`` becomes ``STATE_CLOSED`` and later input is not parsed.
    Raises ValueError when ``max_message_size`` is below 1.
    """

    @property
    def is_server(self) -> bool:
        """True for the server end (peer frames must be masked, ours are not)."""
    max_message_size: int
    """Largest message payload accepted, in bytes; a larger one fails with 1009."""
    state: int
    """One of the ``STATE_*`` constants; a new Connection is ``STATE_OPEN``."""
    deflater: Deflater | None
    """Compresses outgoing messages (RSV1 set) when permessage-deflate was agreed."""
    inflater: Inflater | None
    """Decompresses incoming RSV1 messages; while None, RSV1 fails the connection with 1002."""
    compress_min_size: int
    """Outgoing messages shorter than this many bytes are sent uncompressed (default 0)."""
    message_size: int
    """Bytes of the message being delivered (after reassembly and decompression)."""
    close_code: int
    """The close code: the peer's, the one we sent, or the failure's; 0 while open."""
    close_reason: str
    """The close reason that goes with ``close_code``; ``""`` while open."""

    def __init__(
        self,
        is_server: bool = True,
        max_message_size: int = 1048576,
        read_buffer_size: int = 16384,
    ) -> None: ...
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next read goes (``asyncio.BufferedProtocol``): a writable view.

        The view is a process-wide scratch buffer when no frame is pending, else the space after
        the pending bytes in the connection's own buffer. Valid until ``buffer_updated``.
        """
    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into the view last returned by ``get_buffer``: parse them.

        On a bare Connection the events this produces are kept until the next
        ``receive_data`` call, which returns them first (``receive_data(b"")`` collects them);
        a subclass (the server protocol) dispatches them as they come.
        """
    def receive_data(self, data: Buffer) -> list[_Event]:
        """Feed received bytes (any bytes-like object); return the events they completed.

        Events are tuples in arrival order: ``("text", str)``, ``("binary", bytes)``,
        ``("ping", bytes)`` (the pong is queued already), ``("pong", bytes)``,
        ``("close", code, reason)`` (the peer closed; our reply, if one is due, is queued) and
        ``("fail", code, reason)`` (a protocol violation; a close with ``code`` is queued).
        Messages received after our own close frame are parsed but not delivered. Costs one
        copy of ``data`` into the read buffer.
        """
    def data_to_send(self) -> bytes:
        """The frames produced since the last call, joined; ``b""`` if none."""
    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed (the start of an incomplete frame)."""
    def send_text(self, text: str) -> int:
        """Send ``text`` as one text frame (compressed if a deflater is set).

        Returns a ``SEND_*`` status: ``SEND_CLOSED`` once the closing handshake started,
        ``SEND_DROPPED`` when a subclass's queue refused the message (never on a bare
        Connection; checked before compressing, so a dropped message costs no compression).
        Raises UnicodeEncodeError for a string with lone surrogates.
        """
    def send_binary(self, data: Buffer) -> int:
        """Send a binary message (any C-contiguous bytes-like object); returns a ``SEND_*``."""
    def send_ping(self, data: Buffer = b"") -> int:
        """Send a ping with up to 125 bytes of payload; returns a ``SEND_*`` status.

        Raises ValueError for a payload over 125 bytes.
        """
    def send_pong(self, data: Buffer = b"") -> int:
        """Send an unsolicited pong (a heartbeat that expects no answer); ValueError over 125."""
    def _send_control(self, opcode: int, data: Buffer) -> int:
        """Send a ping or pong frame with ``opcode`` (the body of send_ping and send_pong)."""
    def send_close(self, code: int = 1000, reason: str = "") -> int:
        """Start the closing handshake: queue a close frame and enter ``STATE_CLOSING``.

        ``code=0`` sends an empty close payload. Returns ``SEND_CLOSED`` (and sends nothing) if
        the handshake had started already or the connection failed.
        """
