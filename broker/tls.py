"""TLS server contexts for the MQTT listener and the REST app, from `mqtt.tls` / `http.tls`."""

from __future__ import annotations

import ssl

from broker.config import ConfigError, TlsConfig

__all__ = ["server_context"]


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """TLS 1.2+ server context; with `require_client_cert`, clients must present a cert signed by `cafile`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.certfile, cfg.keyfile)
        if cfg.cafile is not None:
            ctx.load_verify_locations(cafile=cfg.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate/key ({cfg.certfile}, {cfg.keyfile}): {exc}") from exc
    if cfg.require_client_cert:
        if cfg.cafile is None:
            raise ConfigError("tls.require_client_cert needs tls.cafile (the CA that signs client certificates)")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
