"""The lab's EWS endpoint, answering what exchangelib 5.6 sends."""

from __future__ import annotations

from probe.lab.ews.server import EwsServer, add_response_observer, remove_response_observer

__all__ = ["EwsServer", "add_response_observer", "remove_response_observer"]
