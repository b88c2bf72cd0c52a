"""The submit step's ways into mail flow other than straight to a smart host (that one is probe.smtp).

A route's connector probe is submitted into the source forest as a user would send it (DESIGN.md, "Two kinds
of probe"): ``ews`` from the sender's own mailbox (probe.submit.ews), ``smtp`` by authenticated client
submission (probe.smtp, to the source forest's submission server). Both give a ``probe.smtp.SubmitResult``,
so the ledger, metrics and report treat a connector probe as any other probe. Nothing here reads a mailbox:
the confirm step (probe.mailbox) finds the probe at the target as it finds every other.
"""
