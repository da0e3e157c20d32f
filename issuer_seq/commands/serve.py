"""`issuer-seq serve`: the HTTP scorer over an exported bundle (docs/serving.md)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from issuer_seq.recalibration import RouteRecalibrationSettings, settings_from
from issuer_seq.serve.server import serve
from issuer_seq.serve.service import ServeSettings


def settings(cfg: DictConfig) -> ServeSettings:
    """Flat, typed service settings from the composed config."""
    providers = cfg.providers
    return ServeSettings(
        artifact_dir=Path(cfg.artifact_dir),
        host=str(cfg.host),
        port=int(cfg.port),
        model_file=str(cfg.model_file) if cfg.model_file else None,
        providers=(str(providers),) if isinstance(providers, str) else tuple(map(str, providers)),
        allow_fallback=bool(cfg.allow_fallback),
        threads=int(cfg.threads),
        workers=int(cfg.workers),
        hot_path=bool(cfg.hot_path),
        state=str(cfg.state),
        redis_url=str(cfg.redis_url),
        redis_prefix=str(cfg.redis_prefix),
        redis_ttl_days=int(cfg.redis_ttl_days),
        memory_max_keys=int(cfg.memory_max_keys),
        deadline_ms=float(cfg.deadline_ms),
        store_timeout_ms=float(cfg.store_timeout_ms),
        outcomes_timeout_ms=float(cfg.outcomes_timeout_ms),
        max_batch=int(cfg.max_batch),
        max_pending=int(cfg.max_pending),
        max_body_bytes=int(cfg.max_body_bytes),
        warmup_runs=int(cfg.warmup_runs),
        fallback_prior_weight=float(cfg.fallback_prior_weight),
        route_epsilon=float(cfg.route_epsilon),
        shutdown_delay_s=float(cfg.shutdown_delay_s),
        drain_timeout_s=float(cfg.drain_timeout_s),
        access_log=bool(cfg.access_log),
        log_level=str(cfg.log_level),
        loop=str(cfg.loop),
        http=str(cfg.http),
        debug_model_delay_ms=float(cfg.debug.model_delay_ms),
        recalibration=settings_from(cfg.get("recalibration")),
        route_recalibration=settings_from(
            cfg.get("route_recalibration"), RouteRecalibrationSettings
        ),
    )


def run(cfg: DictConfig) -> None:
    serve(settings(cfg))
