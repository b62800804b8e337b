"""The trainer process never talks to the internet: a guard on its sockets.

Models and tokenizers are read from disk (HF_HUB_OFFLINE=1 is set too), so any outgoing
internet connection would be a library phoning home; the guard turns it into a clear error
instead. Local sockets (AF_UNIX: the queues to the window) stay allowed.
"""

from __future__ import annotations

import socket
from typing import Callable, NoReturn

INTERNET = (socket.AF_INET, socket.AF_INET6)


class NetworkForbidden(OSError):
    """Something in the trainer process tried to reach the network."""


def blocking(real_connect: Callable, error: type[Exception] = NetworkForbidden,
             ) -> tuple[Callable, Callable]:
    """Replacements for `socket.socket.connect` and `socket.create_connection` that raise
    `error` for internet addresses and leave local sockets to `real_connect`. The tests'
    guard uses them with an error no library catches as a failed connection."""

    def refuse(address: object) -> NoReturn:
        raise error(f"the trainer does not use the network; blocked a connection to {address}")

    def connect(self: socket.socket, address: object) -> None:
        if self.family in INTERNET:
            refuse(address)
        return real_connect(self, address)

    def create_connection(address: object, *args: object, **kwargs: object) -> socket.socket:
        refuse(address)

    connect.forbids_network = True  # type: ignore[attr-defined]
    return connect, create_connection


def forbid_network() -> None:
    """From now on, connecting an internet socket in this process raises NetworkForbidden."""
    if getattr(socket.socket.connect, "forbids_network", False):
        return
    socket.socket.connect, socket.create_connection = blocking(  # type: ignore[method-assign]
        socket.socket.connect)
