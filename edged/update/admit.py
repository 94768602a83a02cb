"""Which offers a device receives: checks made from an offer alone, before anything is reserved.

:func:`authenticate` (the offer is for this device or one of its groups, and signed by a
trusted key unless unsigned offers are allowed) runs first; :func:`screen` (not answered yet,
not the version running, not over the size limit, above the highest version accepted) runs
when the receiver is about to start the transfer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edged.errors import OfferError, Refused
from edged.update.store import State
from edged.update.transfer import Offer, verify_offer
from edged.update.wire import clip

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger("edged.update")


def authenticate(
    offer: Offer, target: str, keys: list[Ed25519PublicKey], *, allow_unsigned: bool
) -> None:
    """Raise :class:`OfferError` unless the offer may be received: meant for ``target``,
    signed by a trusted key when keys are configured; unsigned only with no keys and
    ``allow_unsigned``."""
    if offer.target != target:
        raise OfferError(f"it is for {clip(repr(offer.target), 80)}, not {target!r}")
    if keys:
        verify_offer(offer, keys)
    elif not allow_unsigned:
        raise OfferError("no trusted keys configured (update.trusted_keys)")


def screen(state: State, offer: Offer, limit: int) -> bool:
    """False to ignore ``offer`` quietly (answered, or its version runs now); raises
    :class:`Refused` for one over ``limit`` bytes or not above the highest accepted version."""
    if offer.transfer_id in state.answered:
        return False
    if state.active is not None and state.active.version == offer.version:
        log.debug("offer %s: version %d is already active", offer.transfer_id, offer.version)
        return False
    if offer.size > limit:
        raise Refused(
            f"bundle is {offer.size} bytes, over the {limit}-byte limit (update.max_bundle_bytes)"
        )
    if offer.version <= state.highest_version:
        raise Refused(
            f"version {offer.version} is not above the highest accepted version "
            f"{state.highest_version} (replay or downgrade refused)"
        )
    return True
