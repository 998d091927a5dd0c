"""Network faults inside one container's network namespace, done from the host.

A container has a network namespace of its own; ``nsenter --net=/proc/PID/ns/net``
runs ``ip`` and ``tc`` (the host's binaries) in it, so the images need neither
tool nor ``NET_ADMIN``. Only the one container is touched: its peers, HAProxy's
health checks to it and the host's published ports see nothing change.

- ``cut_off(pid, addresses)``: a ``prohibit`` route to each address: every new
  packet to it fails at once in the sender (EACCES: the connect is refused
  locally; an established connection's sends fail and it hangs until the
  application's own timeout gives up). ``reconnect(pid, addresses)`` deletes them.
- ``add_delay(pid, address, ms)``: ``tc qdisc replace dev IF root netem delay``
  on the interface holding ``address`` (all of the container's egress on that
  network); ``remove_delay`` deletes the qdisc. Needs the kernel's ``sch_netem``:
  without it ``tc`` says "Error: Specified qdisc kind is unknown." and the
  error is ``FaultNotSupported`` with that text.

Root is needed (entering another process's namespace, changing its routes).
Every failure says which command ran, in which namespace, and what it answered.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from harness.exceptions import FaultNotSupported

NETNS_TOOLS = {"nsenter": "util-linux", "ip": "iproute2", "tc": "iproute2"}


def _tool(name: str, fault: str, component: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise FaultNotSupported(
            fault,
            component,
            reason=f"`{name}` is not installed on this host",
            instead=f"apt-get install {NETNS_TOOLS[name]}",
        )
    return found


def in_netns(
    pid: int, command: Sequence[str], *, fault: str, component: str
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (``ip ...``/``tc ...``) in the network namespace of ``pid``."""
    nsenter = _tool("nsenter", fault, component)
    binary = _tool(command[0], fault, component)
    return subprocess.run(
        [nsenter, f"--net=/proc/{pid}/ns/net", binary, *command[1:]],
        capture_output=True,
        text=True,
        timeout=15,
    )


def _failed(
    answer: subprocess.CompletedProcess[str], *, fault: str, component: str, pid: int
) -> FaultNotSupported:
    said = (answer.stderr or answer.stdout).strip() or f"exit code {answer.returncode}"
    command = " ".join(answer.args[2:]) if isinstance(answer.args, list) else str(answer.args)
    return FaultNotSupported(
        fault,
        component,
        reason=f"`{command}` in its network namespace (pid {pid}) failed: {said}",
    )


def cut_off(pid: int, addresses: Sequence[str], *, component: str) -> None:
    """A ``prohibit`` route to each of ``addresses`` in ``pid``'s namespace."""
    fault = "isolate"
    for address in addresses:
        answer = in_netns(
            pid,
            ["ip", "route", "replace", "prohibit", f"{address}/32"],
            fault=fault,
            component=component,
        )
        if answer.returncode != 0:
            raise _failed(answer, fault=fault, component=component, pid=pid)


def reconnect(pid: int, addresses: Sequence[str], *, component: str) -> list[str]:
    """Delete the ``prohibit`` routes to ``addresses``; the addresses that had one."""
    removed = []
    for address in addresses:
        answer = in_netns(
            pid,
            ["ip", "route", "del", "prohibit", f"{address}/32"],
            fault="rejoin",
            component=component,
        )
        if answer.returncode == 0:
            removed.append(address)
        elif "No such process" not in answer.stderr:  # what ip says of a missing route
            raise _failed(answer, fault="rejoin", component=component, pid=pid)
    return removed


def prohibited(pid: int, *, component: str) -> list[str]:
    """The addresses ``pid``'s namespace has a ``prohibit`` route to (evidence)."""
    answer = in_netns(pid, ["ip", "route", "show"], fault="inspect", component=component)
    return [
        line.split()[1].removesuffix("/32")
        for line in answer.stdout.splitlines()
        if line.startswith("prohibit ")
    ]


def interface_of(pid: int, address: str, *, fault: str, component: str) -> str:
    """The interface holding ``address`` in ``pid``'s namespace (``eth0``...)."""
    answer = in_netns(pid, ["ip", "-o", "-4", "addr", "show"], fault=fault, component=component)
    if answer.returncode != 0:
        raise _failed(answer, fault=fault, component=component, pid=pid)
    for line in answer.stdout.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3].split("/")[0] == address:
            return fields[1].split("@")[0]
    raise FaultNotSupported(
        fault,
        component,
        reason=f"no interface holds {address} in its network namespace: {answer.stdout!r}",
    )


def add_delay(pid: int, address: str, ms: int, *, component: str) -> str:
    """``netem`` delay of ``ms`` on the egress of the interface holding ``address``;
    the interface. ``FaultNotSupported`` with ``tc``'s own words when it fails."""
    fault = f"delay ({ms} ms)"
    device = interface_of(pid, address, fault=fault, component=component)
    answer = in_netns(
        pid,
        ["tc", "qdisc", "replace", "dev", device, "root", "netem", "delay", f"{ms}ms"],
        fault=fault,
        component=component,
    )
    if answer.returncode != 0:
        error = _failed(answer, fault=fault, component=component, pid=pid)
        if "qdisc kind is unknown" in answer.stderr:
            error.instead = (
                "a host whose kernel has the netem qdisc (`modprobe sch_netem`; "
                "CONFIG_NET_SCH_NETEM): this kernel has none"
            )
        raise error
    return device


def remove_delay(pid: int, device: str, *, component: str) -> bool:
    """Delete the root qdisc of ``device`` (back to the default); whether there was one."""
    answer = in_netns(
        pid, ["tc", "qdisc", "del", "dev", device, "root"], fault="undelay", component=component
    )
    if answer.returncode == 0:
        return True
    # nothing to delete: tc says so in one of these ways, depending on its version
    nothing = ("No such file or directory", "handle of zero", "Invalid handle")
    if any(marker in answer.stderr for marker in nothing):
        return False
    raise _failed(answer, fault="undelay", component=component, pid=pid)


__all__ = [
    "add_delay",
    "cut_off",
    "in_netns",
    "interface_of",
    "prohibited",
    "reconnect",
    "remove_delay",
]
