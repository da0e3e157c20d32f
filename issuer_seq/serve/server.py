"""Running the app under uvicorn, with a shutdown that load balancers can follow.

On SIGTERM (what Kubernetes, Docker and systemd send) the service first stops being ready
(/v2/health/ready answers 503), keeps serving for `shutdown_delay_s` so that load balancers
polling readiness stop routing to it, then stops accepting connections and lets in-flight
requests finish (at most `drain_timeout_s`), and the process exits with status 0. A second
signal skips the delay; a second SIGINT (Ctrl-C twice) also skips the drain.

The event loop and the HTTP parser are uvicorn's `auto` choices by default: uvloop and
httptools, which `uvicorn[standard]` installs (0.3 to 0.5 ms less per request than asyncio and
h11, docs/serving.md); the log says which ones run.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from types import FrameType

import uvicorn

from issuer_seq.errors import IssuerSeqError
from issuer_seq.serve.app import create_app
from issuer_seq.serve.service import ServeSettings, Service

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, shutdown_delay_s: float):
        super().__init__(config)
        self.service = service
        self.shutdown_delay_s = shutdown_delay_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's captured signals on purpose: uvicorn re-raises those after
        # a graceful shutdown, which would turn a clean drain into death by SIGTERM (exit 143).
        self.service.stop_ready()
        if self.should_exit:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        if self._draining or self.shutdown_delay_s <= 0:
            self.should_exit = True
            return
        self._draining = True
        log.info(
            "%s: not ready any more; draining after %.1f s",
            signal.Signals(sig).name,
            self.shutdown_delay_s,
        )
        timer = threading.Timer(self.shutdown_delay_s, self._exit)
        timer.daemon = True
        timer.start()

    def _exit(self) -> None:
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = type(asyncio.get_running_loop())
        log.info(
            "event loop %s.%s, HTTP protocol %s",
            loop.__module__,
            loop.__qualname__,
            self.config.http_protocol_class.__name__,
        )
        await super().startup(sockets)


def serve(settings: ServeSettings) -> None:
    """Serve until a signal; raises IssuerSeqError if the bundle could not be loaded."""
    server: DrainingServer | None = None

    def fatal() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=fatal)
    service: Service = app.state.service
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        # Keep the logging that the command line set up (Hydra's, to stdout).
        log_config=None,
        lifespan="on",
        loop=settings.loop,
        http=settings.http,
    )
    server = DrainingServer(config, service, settings.shutdown_delay_s)
    log.info(
        "serving %s on http://%s:%d (deadline %.0f ms, %d workers x %d threads, state %s)",
        settings.artifact_dir,
        settings.host,
        settings.port,
        settings.deadline_ms,
        settings.workers,
        settings.threads,
        settings.state,
    )
    server.run()
    if service.load_error is not None:
        raise IssuerSeqError(f"could not serve {settings.artifact_dir}: {service.load_error}")
    if not server.started:
        raise IssuerSeqError(f"could not listen on {settings.host}:{settings.port}")
