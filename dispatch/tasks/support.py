"""What every task body asks of its app: the deployment it runs in (built once per app and process)."""
from __future__ import annotations

from typing import Any

from dispatch.config import Settings
from dispatch.store import Deployment, ride_out_outages


def deployment_of(app: Any) -> Deployment:
    deployment = getattr(app, "_dispatch_deployment", None)
    if deployment is None:
        settings = getattr(app, "dispatch_settings", None) or Settings.from_env()
        if not settings.embedded:
            ride_out_outages(app.backend.client, settings.reconnect_timeout_s)
        deployment = Deployment(settings, app.backend.client)
        app._dispatch_deployment = deployment
    return deployment

