"""Over-the-air model updates: bundles pushed over MQTT, verified, validated, swapped in.

Topics (``<scope>`` is ``<prefix>/<device_id>`` or ``<prefix>/group/<group>`` for the groups
in ``[update] groups``):

=========================================  ==========  =========================================
topic                                      direction   payload
=========================================  ==========  =========================================
``<scope>/update/offer``                   in, kept    JSON offer (:mod:`edged.update.transfer`)
``<scope>/update/chunk/<transfer_id>/<i>`` in, kept    raw bundle bytes of chunk ``i``
``<prefix>/<device_id>/update/command``    in          signed JSON command
                                                       (:mod:`edged.update.command`)
``<prefix>/<device_id>/update/result``     out         JSON result of an offer or a command
``<prefix>/<device_id>/model``             out, kept   JSON: active model, models kept for a
                                                       rollback, last update, transfer in
                                                       progress, update groups
=========================================  ==========  =========================================

("kept" = retained.) The payloads' models are in :mod:`edged.protocol` (``UpdateOffer``,
``UpdateCommand``, ``UpdateResult``, ``ModelState``); every topic is in ``docs/mqtt-api.yaml``.
A result::

    {"schema": 1, "device": "cam-1", "transfer_id": "9f2c...", "name": "digits", "version": 2,
     "status": "accepted" | "confirmed" | "rejected" | "rolled_back", "reason": "...",
     "ts": "...Z"}

(command results add ``"command": "rollback"`` and ``"issued"``, with ``transfer_id`` null;
``confirmed`` follows ``accepted`` once the new model passed its probation). An offer for the
version already active, or for a transfer already answered (the retained offer is delivered
again at every reconnect), is ignored without a result. Anything refused before it is
authenticated (a malformed or unsigned offer, a bad command) is answered with ``transfer_id``
null, at most once a second (:data:`~edged.update.report.REFUSALS_PER_S`).

The path of a bundle: offer authenticated (its Ed25519 signature by a trusted key, its
``target``, its ``issued`` time: :mod:`edged.update.transfer`) -> offer checked (size limit,
version above the highest accepted one) ->
chunks received into ``<state_dir>/models/.<transfer_id>.part``, each checked against its
SHA-256 -> whole-file SHA-256 -> :func:`~edged.model.bundle.read_bundle` with the trusted keys
(signature, every member's digest, size) -> manifest name/version must match the offer ->
``python -m edged.update.validate`` in a resource-limited subprocess -> loaded on the update
thread -> renamed to ``<version>-<sha12>.edgb`` -> ``state.json`` committed atomically ->
swapped in by the frame loop between two frames -> result ``accepted`` and the model topic. Any
failure leaves the running model and the saved state as they were and reports ``rejected``
with the reason. A new model is watched in service (:mod:`edged.update.monitor`) and rolled
back automatically (``rolled_back``) or ``confirmed``; a signed ``rollback`` command returns to
any model the device keeps (``[update] keep_models``; the configured ``model.path``, a plain
``.tflite`` being version 0, included) on request.
"""
