"""The audit chain: every audit event is a link of one SHA-256 hash chain, so a change made to the
audit trail behind the service's back (an edit, a deletion, a reordering, a truncation, a forged
row) is found by ``hlml-approvals audit verify``.

- :mod:`.chain`: the canonical content and hash of an event, :func:`~.chain.append` (the only way
  events are written) and :func:`~.chain.verify`.
- :mod:`.export`: a JSON Lines export of the chain, verified offline, and the check that the
  database still holds an exported head.
- :mod:`.cli`: the ``hlml-approvals audit`` commands.
"""
