"""The engine's numbers, for Python code: opcodes, connection states, send and admit verdicts.

One place for each value. The compiled engine modules read them at import into C globals
(each ``.pxd`` declares the ones its module uses as ``cdef int``), so a comparison with a
state or an opcode costs a C compare, not a dictionary lookup; Python code (the hub, the
session, the tests) imports them from here. This module itself is never compiled.
"""

from __future__ import annotations

from typing import Final

# Frame opcodes (RFC 6455 section 5.2) and the first header byte's flag bits.
OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
FIN_BIT: Final = 0x80
RSV1_BIT: Final = 0x40

# Connection.state.
STATE_HANDSHAKE: Final = 0
STATE_OPEN: Final = 1
STATE_CLOSING: Final = 2
STATE_CLOSED: Final = 3
STATE_UPGRADING: Final = 4

# What Connection.send_* return.
SEND_OK: Final = 0
SEND_QUEUED: Final = 1
SEND_DROPPED: Final = 2
SEND_CLOSED: Final = 3
SEND_DROPPED_OLDEST: Final = 4

# What Connection.admit returns: may one more data message be queued?
ADMIT_REFUSED: Final = 0
ADMIT_OK: Final = 1
ADMIT_DROPPED_OLDEST: Final = 2
