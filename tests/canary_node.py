"""Starts `edge-node run` for tests/test_canary.py the way a service manager that allows core dumps would:

- the core file size limit is raised to the hard maximum (unlimited when running as root) before any of the
  node's code runs, so a limit of 0 seen in the running node can only come from the node itself;
- when running as root, the group becomes an unprivileged one (nogroup, 65534) while the user stays root
  (so every file is still reachable): a process whose credentials are not root:root lets an outside
  observer see PR_SET_DUMPABLE 0, which shows as its /proc files turning root:root (tests/canary_probe.py).

Then it execs `python -m edge.cli ARGS...` in place: same process id, nothing between the test and the node.

    python tests/canary_node.py run --config node.toml --verbose
"""

from __future__ import annotations

import os
import resource
import sys

UNPRIVILEGED_GID = 65534


def main(argv: list[str]) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):  # not privileged: as far as the hard limit allows
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(UNPRIVILEGED_GID)
    os.execv(sys.executable, [sys.executable, "-m", "edge.cli", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
