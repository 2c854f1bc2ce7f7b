"""`make demo`: start the local Track API simulator, run a migration's steps against it, show what
it holds at the end.

The steps are those of a team leaving Braze and Mailchimp, in the order a migration runs: the
companies (objects), the people, the duplicates merged, who belongs to which company
(relationships), push devices, purchase events, and the Mailchimp unsubscribes (marked
unsubscribed with the Mailchimp preset, or suppressed). Then the nightly import that follows a
migration: a job file of four steps (`bulksync run`), run on two nights.
Some sample rows are deliberately bad, so a step can end with exit code 1 and their reasons in
its results file.

The simulator answers like Customer.io's Track API, with 100 ms of latency and a few injected
transient failures (503s) that bulksync retries. Nothing leaves this machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulksync.fake.process import fake_server_process

ROOT = Path(__file__).resolve().parent.parent
# The simulator's own credentials: not a real workspace's.
SITE_ID, API_KEY = "demo-site", "demo-key"
EXIT_MEANINGS = {0: "every row ok", 1: "some rows invalid or failed: see the results file"}
OBJECTS = ("--object-type-id", "1", "--object-id-column", "company_id")
EVENT_COLUMNS = ("--event-column", "event_name", "--timestamp-column", "time")


@dataclass(frozen=True)
class Step:
    what: str  # what the step sends, one line
    input: str
    options: tuple[str, ...] = ()
    bad_rows: str = ""  # the sample's deliberately bad rows, if any


STEPS = [
    Step(
        "companies first, so people can be related to them: one object per row",
        "samples/companies.csv",
        ("--kind", "objects", *OBJECTS, "--type", "employees=int"),
    ),
    Step(
        "people from the CRM: one person per row, the other columns their attributes",
        "samples/customers.csv",
        bad_rows="4 bad rows: two invalid emails, an impossible date, an empty id",
    ),
    Step(
        "the same people from the app's database (user ids), in batches: POST /api/v2/batch",
        "samples/customers.jsonl",
        ("--batch",),
        bad_rows="5 bad rows: as in customers.csv, and a line that is not JSON",
    ),
    Step(
        "merge the app's duplicates (user-...) into the CRM's people (cust-...)",
        "samples/merges.csv",
        ("--kind", "merges", "--yes"),
        bad_rows="1 bad row: a person merged into themself",
    ),
    Step(
        "who belongs to which company, with their role",
        "samples/memberships.csv",
        ("--kind", "relationships", *OBJECTS),
    ),
    Step(
        "Braze push devices: platform iOS/Android sent as ios/android",
        "samples/devices.csv",
        ("--kind", "devices", "--id-column", "external_id"),
        bad_rows="2 bad rows: a 'windows' device and one without a token",
    ),
    Step(
        "Braze purchases and custom events in batches; a purchase exported twice counts once",
        "samples/purchases.jsonl",
        ("--kind", "events", "--id-column", "external_id", *EVENT_COLUMNS, "--batch"),
        bad_rows="1 bad row: an event without a name",
    ),
    Step(
        "Mailchimp's unsubscribed export as it is: each person kept, unsubscribed: true",
        "samples/unsubscribes.csv",
        ("--preset", "mailchimp"),
    ),
    Step(
        "or delete and suppress each of those addresses instead (cannot be undone: --yes)",
        "samples/unsubscribes.csv",
        (
            "--kind",
            "suppressions",
            "--id-column",
            "Email Address",
            "--yes",
            "--results",
            "samples/unsubscribes.suppressions.results.jsonl",
        ),
    ),
]
# The nightly import after the migration: four files, in order, from one job file; run twice,
# as two nights with nothing changed in between.
JOB = "samples/nightly.toml"
NIGHTS = [
    (
        "the nightly job: companies, people, memberships, events, in order (bulksync run)",
        ("--fresh",),
    ),
    ("the next night, the same files: every row unchanged, nothing sent", ()),
]


def fetch(url: str) -> dict[str, Any] | None:
    """GET a simulator inspection route; None if this simulator does not have it (a route it
    does not know is answered 404, or 401 as an API request without credentials)."""
    try:
        with urllib.request.urlopen(url) as answer:
            data: dict[str, Any] = json.load(answer)
            return data
    except urllib.error.HTTPError as error:
        if error.code in (401, 404):
            return None
        raise


def describe_workspace(counts: dict[str, int]) -> str:
    """GET /_fake/workspace's counts, as a sentence (counts of 0 left out)."""
    held = [
        f"{counts['people']} people",
        f"{counts['objects']} objects (companies)",
        f"{counts['relationships']} relationships",
        f"{counts['devices']} devices",
        f"{counts['events']} events",
    ]
    text = "the workspace now holds " + ", ".join(held)
    if counts.get("events_deduplicated"):
        text += f" ({counts['events_deduplicated']} more dropped: an event id already accepted)"
    done = [
        (counts.get("merged", 0), "people merged into another"),
        (counts.get("deleted", 0), "people deleted"),
        (counts.get("suppressed", 0), "identifiers suppressed"),
    ]
    return text + "".join(f"; {n} {what}" for n, what in done if n)


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
        commands = [
            (step.what, ["sync", step.input, *step.options, "--fresh"], step.bad_rows)
            for step in STEPS
        ]
        shutil.rmtree(ROOT / "samples" / "nightly-state", ignore_errors=True)  # a first night
        commands += [(what, ["run", JOB, *options], "") for what, options in NIGHTS]
        for number, (what, arguments, bad_rows) in enumerate(commands, 1):
            print(f"{number}. {what}", flush=True)
            if bad_rows:
                print(f"   (the sample has {bad_rows}: exit code 1 is expected)")
            print("$", shlex.join(["bulksync", *arguments]), flush=True)
            command = [sys.executable, "-m", "bulksync", *arguments]
            code = subprocess.run(command, env=env, cwd=ROOT).returncode
            print(f"(exit code {code}: {EXIT_MEANINGS.get(code, 'unexpected')})\n", flush=True)
            if code not in EXIT_MEANINGS:
                return code
        workspace = fetch(f"{url}/_fake/workspace")
        stats = fetch(f"{url}/_fake/stats")
    if workspace is None:
        print("(this simulator has no GET /_fake/workspace: no workspace summary)")
    else:
        print(describe_workspace(workspace))
    assert stats is not None
    print(
        f"the simulator received {stats['requests']} requests (answers: {stats['statuses']}),"
        f" at most {stats['peak_per_second']} in any one second"
    )
    operations = {op: n for op, n in stats.get("operations", {}).items() if n}
    if operations:
        print("accepted operations:", ", ".join(f"{n} {op}" for op, n in operations.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
