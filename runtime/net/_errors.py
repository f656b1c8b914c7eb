"""The socket layer's names for the one error tree (defined in ``runtime/_errors.py``, with the wire codes).

Nothing is defined here: the classes a connection can raise (``Unauthorized``, ``TooLarge``, ``UnknownOp``,
``CommandTimeout``, ``UpstreamUnavailable``, ``ConnectionLost``) and the code -> class translation
(:func:`error_from_wire`) live beside the rest of the tree, so there is one owner. The socket modules
import them from here or from ``.._errors``; both name the same objects.
"""

from __future__ import annotations

from .._errors import WIRE_CODES as WIRE_CODES
from .._errors import CommandTimeout as CommandTimeout
from .._errors import ConnectionLost as ConnectionLost
from .._errors import RemoteError as RemoteError
from .._errors import TooLarge as TooLarge
from .._errors import Unauthorized as Unauthorized
from .._errors import UnknownOp as UnknownOp
from .._errors import UpstreamUnavailable as UpstreamUnavailable
from .._errors import error_from_wire as error_from_wire

__all__ = [
    "WIRE_CODES",
    "CommandTimeout",
    "ConnectionLost",
    "RemoteError",
    "TooLarge",
    "Unauthorized",
    "UnknownOp",
    "UpstreamUnavailable",
    "error_from_wire",
]
