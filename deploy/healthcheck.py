"""Container health probe: GET http://127.0.0.1:$RNNSERVE_PORT<path>; exit 0 on a 2xx answer, 1 otherwise.

    python healthcheck.py            /healthz: liveness (the image's HEALTHCHECK)
    python healthcheck.py /readyz    readiness (compose's depends_on waits on this one)

Standard library only, so the image needs no curl; proxies from the environment are ignored.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "/healthz"
    port = os.environ.get("RNNSERVE_PORT", "8000")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return 0 if 200 <= response.status < 300 else 1
    except Exception as exc:  # any failure is "unhealthy"; say why in the health log
        print(f"{path}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
