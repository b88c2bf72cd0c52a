"""The lab: a two-forest world on loopback (smart hosts, mailboxes, EWS) for tests, benchmarks and demos."""

from __future__ import annotations

from probe.lab.smarthost import LabSmartHost
from probe.lab.topology import (
    FIXED_ADMIN_PORT,
    FIXED_EWS_HTTP_PORT,
    FIXED_EWS_HTTPS_PORT,
    FIXED_SMTP_PORT,
    FIXED_SUBMISSION_PORT,
    Lab,
    LabError,
    LabForest,
    LabRoute,
)

__all__ = [
    "FIXED_ADMIN_PORT",
    "FIXED_EWS_HTTPS_PORT",
    "FIXED_EWS_HTTP_PORT",
    "FIXED_SMTP_PORT",
    "FIXED_SUBMISSION_PORT",
    "Lab",
    "LabError",
    "LabForest",
    "LabRoute",
    "LabSmartHost",
]
