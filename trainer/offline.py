"""The trainer process never talks to the internet: a guard on its sockets.

Models and tokenizers are read from disk (HF_HUB_OFFLINE=1 is set too), so any outgoing
internet connection would be a library phoning home; the guard turns it into a clear error
instead. Local sockets (AF_UNIX: the queues to the window) stay allowed.
"""

from __future__ import annotations

import socket

INTERNET = (socket.AF_INET, socket.AF_INET6)


class NetworkForbidden(OSError):
    """Something in the trainer process tried to reach the network."""


def forbid_network() -> None:
    """From now on, connecting an internet socket in this process raises NetworkForbidden."""
    real_connect = socket.socket.connect
    if getattr(real_connect, "forbids_network", False):
        return

    def connect(self: socket.socket, address: object) -> None:
        if self.family in INTERNET:
            raise NetworkForbidden(f"the trainer does not use the network; blocked a "
                                   f"connection to {address}")
        return real_connect(self, address)

    def create_connection(address: object, *args: object, **kwargs: object) -> socket.socket:
        raise NetworkForbidden(f"the trainer does not use the network; blocked a connection "
                               f"to {address}")

    connect.forbids_network = True  # type: ignore[attr-defined]
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.create_connection = create_connection  # type: ignore[assignment]
