"""docker-compose.yml read as Docker Compose reads it, for running its services here.

There is no container engine on this machine, so the compose test runs each
service's command as a process. What the engine would have done is done
here by rule, not by hand: variables are interpolated as Compose does
(`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `$$`),
service host names in URLs are pointed at this machine's stand-ins, a
volume's mount point becomes a directory of the test's, and a published port
becomes a free one.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(KeyError):
    pass


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    def one(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        name, op, arg = found.group("name"), found.group("op"), found.group("arg") or ""
        have = variables.get(name)
        empty = have is None or (have == "" and op is not None and op.startswith(":"))
        if op in (":-", "-") and empty:
            return arg
        if op in (":?", "?") and empty:
            raise MissingVariable(f"{name}: {arg}")
        return have or ""

    return VARIABLE.sub(one, value)


def _walk(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_walk(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _walk(value, variables) for key, value in node.items()}
    return node


def load(path: Path, variables: Mapping[str, str]) -> dict[str, Any]:
    """The compose file with anchors merged and every variable filled in."""
    loaded: dict[str, Any] = _walk(yaml.safe_load(path.read_text()), variables)
    return loaded


@dataclass(frozen=True)
class StandIn:
    """What stands in here for a compose service: an address, and for a database
    server the database of this test run (the compose file names its own)."""

    host: str
    port: int
    path: str | None = None


def point_url(value: str, hosts: Mapping[str, StandIn]) -> str:
    """A URL whose host is a compose service, pointed at that service's stand-in;
    the scheme, user and password stay as the compose file gives them."""
    parts = urlsplit(value)
    if not parts.scheme or parts.hostname is None or parts.hostname not in hosts:
        return value
    to = hosts[parts.hostname]
    creds = parts.netloc.rpartition("@")[0]
    netloc = f"{creds}@{to.host}:{to.port}" if creds else f"{to.host}:{to.port}"
    return urlunsplit(parts._replace(netloc=netloc, path=to.path or parts.path))


@dataclass
class Service:
    """One compose service as a command line and an environment for this machine."""

    name: str
    argv: list[str]
    env: dict[str, str]
    healthcheck: list[str] | None


def executable(argv: list[str]) -> list[str]:
    """The image's programs are this virtualenv's (`mailer`, `celery`, `python`)."""
    name = "python" if argv[0] == "python" else argv[0]
    local = Path(sys.executable).with_name(name)
    return [str(local) if local.exists() else argv[0], *argv[1:]]


def service(
    name: str,
    spec: dict[str, Any],
    *,
    hosts: Mapping[str, StandIn],
    replace: Mapping[str, str],
    ports: Mapping[int, int],
) -> Service:
    """`replace` maps what only exists in a container (a volume's mount point, the data
    dir, the all-interfaces bind address) to its counterpart here, `ports` a container
    port to the free port published for it here."""

    def here(text: str) -> str:
        text = point_url(text, hosts)
        for inside, outside in replace.items():
            text = text.replace(inside, outside)
        for inside_port, outside_port in ports.items():
            text = re.sub(rf"(?<=[:/ ]){inside_port}\b|^{inside_port}$", str(outside_port), text)
        return text

    env = {key: here(str(value)) for key, value in (spec.get("environment") or {}).items()}
    check = (spec.get("healthcheck") or {}).get("test")
    return Service(
        name=name,
        argv=executable([here(arg) for arg in spec["command"]]),
        env=env,
        healthcheck=executable([here(arg) for arg in check[1:]]) if check else None,
    )
