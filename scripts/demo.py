"""`make demo`: start the local Track API simulator, sync the sample files to it, show the outcome.

The simulator answers like Customer.io's Track API, with 100 ms of latency and a few injected
transient failures (503s) that bulksync retries. Nothing leaves this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from bulksync.fake.process import fake_server_process

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ["samples/customers.csv", "samples/customers.jsonl"]
# The simulator's own credentials: not a real workspace's.
SITE_ID, API_KEY = "demo-site", "demo-key"
EXIT_MEANINGS = {0: "every row ok", 1: "some rows invalid or failed: see the results file"}


def main() -> int:
    with fake_server_process(
        "--latency", "0.1", "--jitter", "0.05", "--fail-503", "0.05", "--seed", "7",
        site_id=SITE_ID, api_key=API_KEY,
    ) as url:  # fmt: skip
        print(f"started the local Track API simulator at {url}\n", flush=True)
        env = {
            **os.environ,
            "CUSTOMERIO_SITE_ID": SITE_ID,
            "CUSTOMERIO_API_KEY": API_KEY,
            "BULKSYNC_BASE_URL": url,
        }
        for sample in SAMPLES:
            print("$ bulksync sync", sample, flush=True)
            command = [sys.executable, "-m", "bulksync", "sync", sample, "--fresh"]
            code = subprocess.run(command, env=env, cwd=ROOT).returncode
            print(f"(exit code {code}: {EXIT_MEANINGS.get(code, 'unexpected')})\n", flush=True)
            if code not in EXIT_MEANINGS:
                return code
        with urllib.request.urlopen(f"{url}/_fake/stats") as answer:
            stats = json.load(answer)
    print(
        f"the simulator received {stats['requests']} requests (answers: {stats['statuses']}),"
        f" accepted {stats['accepted']} people, at most {stats['peak_per_second']}"
        " requests in any one second"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
