"""The gateway's status page for operators (its HTTP port): chain, devices, queues,
link sessions, recent errors and an H3 map that shows a cell only where discovery would.

``auth.py`` (the operator secret, sessions), ``snapshot.py`` (what is shown),
``hexmap.py`` (the map: discovery's own groups), ``page.py`` (HTML, CSS,
script), ``routes.py`` (aiohttp routes and the guard). :func:`mount` is the
one call the gateway's assembly makes.
"""

from __future__ import annotations


def mount(app, gateway):
    """Guard the gateway's aiohttp ``app`` and add the status page. Options from the node
    config's ``[gateway]`` table: ``status_interval_s`` (how often live views look for
    changes, default 1), ``status_tiles`` (a map tile URL template with {z}/{x}/{y}).
    Returns the OperatorAuth that guards it."""
    from .auth import OperatorAuth
    from .routes import install
    from .snapshot import RecentErrors, StatusSource

    errors = RecentErrors().attach()

    async def detach(_app) -> None:
        errors.detach()

    app.on_cleanup.append(detach)
    opts = gateway.opts
    operator = OperatorAuth.from_keys(gateway.cfg.keys_dir)
    install(app, operator, StatusSource(gateway, errors),
            interval_s=float(opts.get("status_interval_s", 1.0)), tiles=str(opts.get("status_tiles", "")))
    return operator  # /healthz shows fault reasons to the operator alone
