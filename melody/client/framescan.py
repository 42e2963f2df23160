"""Frame boundaries in the bytes a client reads, found before the core parses them.

The core's ``Connection`` parses all it is given and cannot be told to stop after ``n``
messages, so a client with a bounded receive queue (``max_queue``) finds where messages end
itself, and hands the core only the bytes that complete no more messages than the queue has
room for. This walks the frame headers (never the payloads) that the core then reads again; it
goes once the core can stop at a message budget of its own.
"""

from __future__ import annotations

__all__: list[str] = []


class _FrameScanner:
    """The frame boundaries of one connection's incoming bytes, carried from read to read.

    ``_skip`` is how many bytes of the current frame are still to come, ``_completes`` whether
    that frame completes a message, ``_header_tail`` the start of a header the end of a read
    cut short.
    """

    __slots__ = ("_completes", "_header_tail", "_skip")

    def __init__(self) -> None:
        self._skip = 0
        self._completes = False
        self._header_tail = b""

    def cut(self, data: bytearray | memoryview, pos: int, end: int,
            room: int) -> tuple[int, bool]:
        """How much of ``data[pos:end]`` the core may parse and complete at most ``room``
        messages: ``(where to cut, whether the cut stops short for want of room)``.

        The cut falls before the last byte of the first message-completing frame there is no
        room for; the bytes up to it are counted as seen, so the next call starts there. One
        cheap pass per frame; the core still judges every frame.
        """
        skip = self._skip
        completes = self._completes
        blocked = False
        while pos < end:
            if skip == 0:
                tail = self._header_tail
                if tail:
                    # The last read ended inside this header: read it joined to what follows.
                    buf: bytes | bytearray | memoryview = (
                        tail + bytes(data[pos:min(end, pos + 14 - len(tail))]))
                    at = 0
                    back = len(tail)
                    stop = len(buf)
                else:
                    buf = data
                    at = pos
                    stop = end
                    back = 0
                # RFC 6455 5.2: the 7-bit length, or 126 and 16 bits, or 127 and 64 bits, then
                # the 4-byte key if masked. ``head`` stays 0 while the header is cut short.
                avail = stop - at
                head = 0
                if avail >= 2:
                    b1 = buf[at + 1]
                    length = b1 & 0x7F
                    if length < 126:
                        head = 2
                    elif length == 126:
                        if avail >= 4:
                            length = (buf[at + 2] << 8) | buf[at + 3]
                            head = 4
                    elif avail >= 10:
                        length = int.from_bytes(buf[at + 2:at + 10], "big")
                        head = 10
                if head == 0:
                    self._header_tail = bytes(buf[at:stop])
                    pos = end
                    break
                if b1 & 0x80:
                    head += 4
                skip = head + length - back
                completes = (buf[at] & 0x88) == 0x80
                if back:
                    self._header_tail = b""
            avail = end - pos
            if avail < skip:
                skip -= avail
                pos = end
                break
            if completes:
                if room <= 0:
                    # Everything but the frame's last byte: the core holds the rest, complete
                    # nothing, and the message is delivered when there is room.
                    pos += skip - 1
                    skip = 1
                    blocked = True
                    break
                room -= 1
            pos += skip
            skip = 0
        self._skip = skip
        self._completes = completes
        return pos, blocked
