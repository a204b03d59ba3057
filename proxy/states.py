"""Session states and the protocol message types the session code looks at."""

STARTUP, CONNECT, AUTH, READY, CLOSED = range(5)

_Z, _E, _S, _K, _R, _V = b"ZESKRv"
_X, _Q, _SYNC, _P, _B, _EXEC, _CLOSE, _FUNC, _DESCRIBE = b"XQSPBECFD"
_CC, _EMPTY, _SUSPENDED = b"CIs"
#: Server messages the relay must look at once a session is ready.
RELAY_INTERESTING = b"ZES"
#: ... and when statements are tracked (audit): the answers that end a statement
TRACKED_INTERESTING = b"ZESCIs"
