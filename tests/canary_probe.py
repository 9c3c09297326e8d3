"""Watches a running process from outside, the way any other local process can, and prints what it sees each
time that changes (one JSON object per line), until the process is gone or a zombie:

    {"core_soft": "0", "core_hard": "0", "owner": [0, 0], "creds": [0, 65534], "state": "S"}

- core_soft / core_hard: "Max core file size" from /proc/PID/limits (RLIMIT_CORE);
- owner: uid and gid owning /proc/PID/status; creds: the process's effective uid and gid (from that file).
  The kernel shows the /proc files of a process as owned by its own credentials while it is dumpable, and
  by root (0, 0) once it has set PR_SET_DUMPABLE 0 (task_dump_owner in fs/proc/base.c). That tells the two
  apart only for a process whose credentials are not (0, 0): tests/canary_node.py runs the node with an
  unprivileged group when the tests run as root.

    python tests/canary_probe.py PID [TIMEOUT_SECONDS]
"""

from __future__ import annotations

import json
import os
import sys
import time


def observe(pid: int) -> dict[str, object] | None:
    """What is visible of the process now; None once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return None
        core = ["?", "?"]
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max core file size"):
                    core = line.split()[4:6]
        creds = [-1, -1]
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    creds[0] = int(line.split()[2])
                elif line.startswith("Gid:"):
                    creds[1] = int(line.split()[2])
        st = os.stat(f"/proc/{pid}/status")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return {"core_soft": core[0], "core_hard": core[1], "owner": [st.st_uid, st.st_gid], "creds": creds,
            "state": state}


def main(argv: list[str]) -> int:
    pid = int(argv[0])
    timeout = float(argv[1]) if len(argv) > 1 else 300.0
    last: dict[str, object] | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = observe(pid)
        if seen is None:
            break
        key = {k: v for k, v in seen.items() if k != "state"}
        if key != last:
            print(json.dumps(seen), flush=True)
            last = key
        time.sleep(0.002)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
