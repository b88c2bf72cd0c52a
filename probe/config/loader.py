"""Load a config file: read it against the field table, build the model, check the rules that span fields."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from probe.config import connector
from probe.config.backends import Backend, backend_named
from probe.config.document import compose, read_text
from probe.config.errors import ConfigError
from probe.config.files import check_signing_key, check_state_file
from probe.config.merges import prepare
from probe.config.model import Config, Defaults, MailboxConfig, MetricsConfig, RouteConfig, SmartHostConfig
from probe.config.nodes import Context, Section, did_you_mean, show, warn_unverified
from probe.config.reader import read_section
from probe.config.table import IMPLICIT_TLS_PORT
from probe.config.values import CONVERTERS
from probe.duration import format_duration
from probe.vocabulary import MailboxFolder


@dataclass(frozen=True)
class LoadedConfig:
    """A configuration and the warnings its loading raised (each ``FILE:LINE: FIELD: message``)."""

    config: Config
    warnings: tuple[str, ...]


def _check_jitter(ctx: Context, section: Section, interval: float, jitter: float) -> None:
    if jitter < interval:
        return
    key = "jitter" if "jitter" in section.items else "interval"
    raise ctx.error(section.node_of(key), section.at(key),
                    f"jitter ({format_duration(jitter)}) must be less than interval ({format_duration(interval)})")


def _build_defaults(ctx: Context, section: Section | None) -> Defaults:
    if section is None:
        return Defaults()
    defaults = Defaults(**section.scalars())
    _check_jitter(ctx, section, defaults.interval, defaults.jitter)
    return defaults


def _backend_of(section: Section) -> Backend:
    """Return the backend of a mailbox section (the reader made sure it has exactly one)."""
    name = next(spec.key for spec in section.specs if spec.one_of == "backend" and spec.key in section.items)
    return backend_named(name)


def _folders(ctx: Context, section: Section, backend: Backend) -> tuple[MailboxFolder | str, ...]:
    """Read the mailbox's ``folders`` as its backend's row says; neutral names become MailboxFolder."""
    item = section.items["folders"]
    read = CONVERTERS[backend.folders.kind](ctx, backend.folders, item.node, section.at("folders"))
    neutral = {str(folder) for folder in MailboxFolder}
    return tuple(MailboxFolder(folder) if folder in neutral else folder for folder in read)


def _check_cleanup(ctx: Context, section: Section, backend: Backend) -> None:
    item = section.items.get("cleanup")
    if item is not None and item.value in backend.refused_cleanups:
        raise ctx.error(item.node, section.at("cleanup"),
                        f"{item.value} is not available with {backend.name}: {backend.refused_cleanups[item.value]}")


def _build_mailbox(ctx: Context, name: str, section: Section) -> MailboxConfig:
    backend = _backend_of(section)
    values = section.scalars()
    if "folders" in values:
        values["folders"] = _folders(ctx, section, backend)
    _check_cleanup(ctx, section, backend)
    return MailboxConfig(name=name, backend=backend.build(ctx, section.items[backend.name].value), **values)


def _build_smart_host(ctx: Context, section: Section) -> SmartHostConfig:
    values = section.scalars()
    if values.get("tls") == "implicit":
        values.setdefault("port", IMPLICIT_TLS_PORT)
    if values.get("tls") == "none" and not values.get("allow_insecure", False):
        raise ctx.error(section.node_of("tls"), section.at("tls"),
                        '"none" sends mail and credentials unencrypted; set allow_insecure: true to allow it')
    if values.get("tls") == "none" and "password" in section.items:
        ctx.warn(section.node_of("tls"), section.at("tls"),
                 '"none" with a username and password: AUTH sends them unencrypted, readable on the network')
    warn_unverified(ctx, section)
    return SmartHostConfig(**values)


def _check_unique(ctx: Context, sections: list[Section], what: str) -> None:
    first: dict[str, int] = {}
    for section in sections:
        item = section.items["name"]
        if item.value in first:
            raise ctx.error(item.node, section.at("name"),
                            f"duplicate {what} name {show(item.value)}; the first is at line {first[item.value]}")
        first[item.value] = item.node.start_mark.line + 1


def _check_mailbox_known(ctx: Context, section: Section, mailboxes: Mapping[str, MailboxConfig],
                         key: str = "mailbox") -> None:
    name = section.items[key].value
    if name not in mailboxes:
        hint = did_you_mean(name, list(mailboxes)) or f"; the mailboxes are: {', '.join(mailboxes)}"
        raise ctx.error(section.node_of(key), section.at(key), f"no mailbox named {show(name)}{hint}")


def _check_bounces_mailbox(ctx: Context, section: Section, mailboxes: Mapping[str, MailboxConfig]) -> None:
    """Refuse an unknown ``bounces_mailbox``; warn when no mailbox will receive the route's NDRs."""
    if "bounces_mailbox" in section.items:
        _check_mailbox_known(ctx, section, mailboxes, "bounces_mailbox")
        return
    sender = str(section.items["sender"].value).casefold()
    if not any(box.address.casefold() == sender for box in mailboxes.values()):
        ctx.warn(section.node_of("sender"), section.at("sender"),
                 "no mailbox has this address and bounces_mailbox is not set: the route's NDRs are not read "
                 "(a probe refused after its 250 reads lost, not bounced)")


def _build_route(ctx: Context, section: Section, defaults: Defaults,
                 mailboxes: Mapping[str, MailboxConfig]) -> RouteConfig:
    values = section.scalars()
    for key in ("interval", "timeout", "jitter"):
        values.setdefault(key, getattr(defaults, key))
    _check_jitter(ctx, section, values["interval"], values["jitter"])
    _check_mailbox_known(ctx, section, mailboxes)
    _check_bounces_mailbox(ctx, section, mailboxes)
    host_sections: list[Section] = section.items["smart_hosts"].value
    _check_unique(ctx, host_sections, "smart host")
    hosts = tuple(_build_smart_host(ctx, host) for host in host_sections)
    connector_item = section.items.get("connector")
    if connector_item is not None:
        values["connector"] = connector.build(ctx, connector_item.value, sender=values["sender"],
                                              mailboxes=mailboxes)
    return RouteConfig(smart_hosts=hosts, **values)


def _warn_unused(ctx: Context, top: Section, routes: tuple[RouteConfig, ...]) -> None:
    used = {route.mailbox for route in routes} | {route.bounces_mailbox for route in routes}
    senders = {route.sender.casefold() for route in routes}
    mailbox_sections: dict[str, Section] = top.items["mailboxes"].value
    for name, section in mailbox_sections.items():
        if name not in used and str(section.items["address"].value).casefold() not in senders:
            ctx.warn(section.node, section.path, "no route sends to this mailbox")


def _build_config(ctx: Context, top: Section, *, uses_state_file: bool) -> Config:
    check_signing_key(ctx, top)
    if uses_state_file:
        check_state_file(ctx, top)
    defaults_item = top.items.get("defaults")
    defaults = _build_defaults(ctx, defaults_item.value if defaults_item else None)
    mailbox_sections: dict[str, Section] = top.items["mailboxes"].value
    mailboxes = {name: _build_mailbox(ctx, name, section) for name, section in mailbox_sections.items()}
    route_sections: list[Section] = top.items["routes"].value
    _check_unique(ctx, route_sections, "route")
    routes = tuple(_build_route(ctx, section, defaults, mailboxes) for section in route_sections)
    metrics_item = top.items.get("metrics")
    metrics = MetricsConfig(**metrics_item.value.scalars()) if metrics_item else MetricsConfig()
    config = Config(defaults=defaults, metrics=metrics, mailboxes=mailboxes, routes=routes, source=ctx.file,
                    **top.scalars())
    _warn_unused(ctx, top, routes)
    return config


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: a load makes millions of objects and no garbage cycles, and the
    collections their number would set off cost more than the load itself (3 of 6 s at 20,000 routes)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_config_with_warnings(path: Path, *, environ: Mapping[str, str] | None = None,
                               uses_state_file: bool = True) -> LoadedConfig:
    """Load and check a config file; return it with its warnings, or raise ConfigError.

    ``uses_state_file=False`` (``check``, which keeps its probes in memory) leaves state_file unchecked.
    """
    with _collector_paused():
        return _load(Path(path), os.environ if environ is None else environ, uses_state_file=uses_state_file)


def _load(path: Path, environ: Mapping[str, str], *, uses_state_file: bool) -> LoadedConfig:
    ctx = Context(file=path, environ=environ)
    text = read_text(ctx.file)
    try:
        root = compose(ctx, text)
        prepare(ctx, root)
        top = read_section(ctx, root, "config", "")
        config = _build_config(ctx, top, uses_state_file=uses_state_file)
    except RecursionError:
        raise ConfigError("nested too deeply", file=ctx.file) from None
    return LoadedConfig(config=config, warnings=tuple(ctx.warnings))


def load_config(path: Path, *, environ: Mapping[str, str] | None = None, uses_state_file: bool = True) -> Config:
    """Load and check a config file, or raise ConfigError naming the file, line and field."""
    return load_config_with_warnings(path, environ=environ, uses_state_file=uses_state_file).config
