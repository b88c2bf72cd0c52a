"""The lab's Microsoft Graph: per forest, an Entra-like authority and the Graph v1.0 mail API over the mailbox store.

``tokens``: OpenID metadata, keys and the client-credentials grant (client secret or certificate), as MSAL
expects them; ``messages``: messages as JSON and the OData options Graph documents for them; ``server``: one
HTTPS listener per forest with the ``graph/FOREST`` faults. The lab may turn MSAL's instance discovery off
for its loopback authority; nothing else does.
"""

from __future__ import annotations

from probe.lab.graph.server import GraphServer
from probe.lab.graph.tokens import AppRegistration, Tenant

__all__ = ["AppRegistration", "GraphServer", "Tenant"]
