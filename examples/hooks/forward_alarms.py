"""Forward alarmed bags only: when a machine TDR says ALARM, send that bag's whole study
(the images and the reports, including those still arriving) to a supervisor's archive.

Everything else stays on the station. The forwarding goes through the station's
persistent outbox, so it survives a PACS outage and a restart, and shows in the routing
panel. Configuration::

    [[remotes]]
    name = "supervisor"
    aet = "SUPERVISOR"
    host = "10.0.0.9"
    port = 104

    [hooks]
    scripts = ["forward_alarms.py"]

    [hooks.options.forward_alarms]
    to = "supervisor"      # a [[remotes]] name (default "supervisor")
    # via = "stowrs"       # default: DIMSE C-STORE when the remote has aet/host/port

(A routing rule ``match = { alarm = "ALARM" }`` does the same without a script; this
example is the starting point for site logic a rule cannot express.)
"""

from __future__ import annotations


def register(api):
    to = api.options.get("to", "supervisor")
    via = api.options.get("via")
    if to not in api.remotes:
        # Fail at start, not at the first alarm.
        raise ValueError(f"forward_alarms: no remote named {to!r} in [[remotes]] ({', '.join(api.remotes) or 'none'})")

    @api.alert_did_raise
    def forward(alert):
        queued = api.forward(alert, to=to, via=via)
        api.log.info("alarm on %s (%s): study %s forwarded to %s (%d scan(s) queued now)",
                     alert.patient_id, ", ".join(alert.categories) or "no category", alert.study_uid, to, queued)
