"""Connections taken over by another client with our client id: counted, and reported once.

A connection the broker hands to another client with our client id (MQTT 5 reason 0x8E
"Session taken over"; without a reason - MQTT 3.1.1, and mosquitto 2.0 under MQTT 5 too - a
connection the broker closes within ``STABLE_S`` of accepting it with nothing in flight, not
a keepalive timeout, *suspected* until the broker accepts us again at once) counts as a
takeover; ``TAKEOVERS_REPORTED`` of them in a row are reported once with the likely cause.

:class:`Takeovers` has no lock: :class:`~edged.publish.session.MqttSession` calls it under its
own (``report`` outside it).
"""

from __future__ import annotations

import logging

log = logging.getLogger("edged.mqtt")

TAKEOVERS_REPORTED = 2  # takeovers in a row (connections shorter than STABLE_S) -> one warning
TAKEOVER = 0x8E  # MQTT 5 DISCONNECT reason: Session taken over
KEEPALIVE = 0x8D  # paho's reason for a connection it closed itself: Keep alive timeout


class Takeovers:
    def __init__(self) -> None:
        self.total = 0
        self.in_row = 0  # since the last connection that lasted STABLE_S
        self.suspect = False  # a quick close without a reason, to be confirmed
        self._reported = False

    def stable(self) -> None:
        """A connection lasted ``STABLE_S``: takeovers in a row start again from none."""
        self.in_row = 0
        self._reported = False

    def count(self) -> bool:
        """One more takeover; True when the takeovers in a row are to be reported now."""
        self.total += 1
        self.in_row += 1
        if self.in_row >= TAKEOVERS_REPORTED and not self._reported:
            self._reported = True
            return True
        return False

    def confirm(self) -> bool:
        """Accepted again: a suspected takeover was one (:meth:`count`)."""
        report = self.suspect and self.count()
        self.suspect = False
        return report

    def report(self, device_id: str, by_reason: bool, max_delay_s: float) -> None:
        log.warning(
            "another client probably uses client id %s: the broker %s %d times in a row; "
            "reconnecting with growing delays (up to %g s) instead of fighting over it",
            device_id,
            'handed our session to it ("Session taken over")'
            if by_reason
            else "closed our connection within seconds of accepting it",
            self.in_row,
            max_delay_s,
        )
