"""The shipped presets (`sync --preset mailchimp|hubspot|klaviyo`) on realistic exports: each
platform's real header in its real order, its date format, empty cells and quoted commas, sent
through the CLI to the simulator; every request's exact body is checked. Also: the preset files
themselves (valid, self-describing, documented in docs/presets.md) and `mapping --preset`."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main

from .conftest import ROOT, ServerThread

PRESETS = ("mailchimp", "hubspot", "klaviyo")
REGION_PATH = "/api/v1/accounts/region"
DOCS = (ROOT / "docs" / "presets.md").read_text(encoding="utf-8")
COLUMN_KEYS = {"name", "type", "exclude", "when_filled"}
TYPES = {"int", "float", "bool", "str", "date", "email"}


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def seconds(text: str, zone: str = "UTC") -> int:
    """Unix seconds of a wall time written like the exports ("2024-03-12 09:14[:05]")."""
    fmt = "%Y-%m-%d %H:%M:%S" if text.count(":") == 2 else "%Y-%m-%d %H:%M"
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    return int(datetime.strptime(text, fmt).replace(tzinfo=tz).timestamp())


def sync_preset(
    fake: ServerThread, path: Path, preset: str, *extra: str
) -> dict[str | None, dict[str, Any]]:
    """Sync `path` with `--preset`; the body of each person's request, by identifier."""
    result = invoke("sync", path, "--preset", preset, "--rate", "0", "--quiet", *extra)
    assert result.exit_code == 0, result.output
    requests, _ = fake.snapshot()
    sent = [rec for rec in requests if rec.path != REGION_PATH]
    assert all(rec.method == "PUT" for rec in sent), [(r.method, r.path) for r in sent]
    assert all(rec.path.startswith("/api/v1/customers/") for rec in sent)
    bodies = {rec.identifier: rec.body for rec in sent}
    assert len(bodies) == len(sent), "a person was sent twice"
    return bodies


# --- Mailchimp --------------------------------------------------------------------------------
# An audience with the default merge fields and one of its own ("Company"); Mailchimp quotes a
# header or cell holding a space, a comma or a quote. TAGS cells are "A","B" lists.

MAILCHIMP_FIELDS = (
    '"Email Address","First Name","Last Name",Address,"Phone Number",Birthday,Company'
)
MAILCHIMP_GEO = "LATITUDE,LONGITUDE,GMTOFF,DSTOFF,TIMEZONE,CC,REGION"
MAILCHIMP_OPTIN = "MEMBER_RATING,OPTIN_TIME,OPTIN_IP,CONFIRM_TIME,CONFIRM_IP"

MAILCHIMP_SUBSCRIBED = (
    f"{MAILCHIMP_FIELDS},{MAILCHIMP_OPTIN},{MAILCHIMP_GEO},LAST_CHANGED,LEID,EUID,NOTES,TAGS\n"
    # Signed up through a form, double opt-in: every column filled.
    'ann.lee@example.com,Ann,Lee,"12 Peach St  Apt 4  Atlanta  GA  30301  US",'
    '"+1 404 555 0101",03/14,"Acme, Inc.",4,"2021-03-05 17:05:12",198.51.100.7,'
    '"2021-03-05 17:06:40",198.51.100.7,33.7490000,-84.3880000,-5,-4,America/New_York,US,GA,'
    '"2024-01-10 08:00:00",15403093,fec418fd22,,"""VIP"",""Newsletter"""\n'
    # Imported: no opt-in time, no location; a comma in a name and in the (excluded) notes.
    'bob@example.com,Bob,"Smith, Jr.",,,,,2,,,"2017-07-17 00:00:00",,,,,,,,,'
    '"2017-07-17 00:00:00",15403097,b830edc048,"Met at the fair, call back",\n'
)
MAILCHIMP_UNSUBSCRIBED = (
    f"{MAILCHIMP_FIELDS},{MAILCHIMP_OPTIN},{MAILCHIMP_GEO},UNSUB_TIME,UNSUB_CAMPAIGN_TITLE,"
    "UNSUB_CAMPAIGN_ID,UNSUB_REASON,UNSUB_REASON_OTHER,LEID,EUID,NOTES,TAGS\n"
    'carla@example.com,Carla,Diaz,,,,,3,,,"2020-11-23 08:45:00",,,,,,,,,"2024-03-01 18:40:07",'
    '"March newsletter, part 2",3f2a1b9c0d,NORMAL,,15403101,1a2b3c4d5e,,\n'
    'dan@example.com,Dan,Wu,,,,,1,"2019-02-01 10:00:00",203.0.113.5,"2019-02-01 10:02:00",'
    '203.0.113.5,,,,,,,,"2023-12-31 23:59:59",,,"I no longer want to receive these emails",'
    '"Too many, honestly",15403102,2b3c4d5e6f,,"""Newsletter"""\n'
)
MAILCHIMP_CLEANED = (
    f"{MAILCHIMP_FIELDS},{MAILCHIMP_OPTIN},{MAILCHIMP_GEO},CLEAN_TIME,CLEAN_CAMPAIGN_TITLE,"
    "CLEAN_CAMPAIGN_ID,LEID,EUID,NOTES,TAGS\n"
    'erin@example.com,Erin,Moss,,,12/01,,2,,,"2018-04-13 10:57:02",13.210.204.207,,,,,,,,'
    '"2022-06-30 04:00:00","June sale, last call",9c8b7a6f5e,45967475,3b0a62b412,,\n'
)

MAILCHIMP_CASES = {
    "subscribed": (
        MAILCHIMP_SUBSCRIBED,
        {
            "ann.lee@example.com": {
                "email": "ann.lee@example.com",
                "first_name": "Ann",
                "last_name": "Lee",
                "address": "12 Peach St  Apt 4  Atlanta  GA  30301  US",
                "phone": "+1 404 555 0101",
                "birthday": "03/14",
                "company": "Acme, Inc.",
                "mailchimp_rating": 4,
                "optin_time": seconds("2021-03-05 17:05:12"),
                "optin_ip": "198.51.100.7",
                "created_at": seconds("2021-03-05 17:06:40"),
                "confirm_ip": "198.51.100.7",
                "latitude": 33.749,
                "longitude": -84.388,
                "timezone": "America/New_York",
                "country_code": "US",
                "region": "GA",
                "mailchimp_last_changed": seconds("2024-01-10 08:00:00"),
                "tags": '"VIP","Newsletter"',
                "imported_from": "mailchimp",
            },
            "bob@example.com": {
                "email": "bob@example.com",
                "first_name": "Bob",
                "last_name": "Smith, Jr.",
                "mailchimp_rating": 2,
                "created_at": seconds("2017-07-17 00:00:00"),
                "mailchimp_last_changed": seconds("2017-07-17 00:00:00"),
                "imported_from": "mailchimp",
            },
        },
    ),
    "unsubscribed": (
        MAILCHIMP_UNSUBSCRIBED,
        {
            "carla@example.com": {
                "email": "carla@example.com",
                "first_name": "Carla",
                "last_name": "Diaz",
                "mailchimp_rating": 3,
                "created_at": seconds("2020-11-23 08:45:00"),
                "unsubscribed_at": seconds("2024-03-01 18:40:07"),
                "unsubscribe_campaign": "March newsletter, part 2",
                "unsubscribe_reason": "NORMAL",
                "unsubscribed": True,
                "imported_from": "mailchimp",
            },
            "dan@example.com": {
                "email": "dan@example.com",
                "first_name": "Dan",
                "last_name": "Wu",
                "mailchimp_rating": 1,
                "optin_time": seconds("2019-02-01 10:00:00"),
                "optin_ip": "203.0.113.5",
                "created_at": seconds("2019-02-01 10:02:00"),
                "confirm_ip": "203.0.113.5",
                "unsubscribed_at": seconds("2023-12-31 23:59:59"),
                "unsubscribe_reason": "I no longer want to receive these emails",
                "unsubscribe_reason_other": "Too many, honestly",
                "tags": '"Newsletter"',
                "unsubscribed": True,
                "imported_from": "mailchimp",
            },
        },
    ),
    "cleaned": (
        MAILCHIMP_CLEANED,
        {
            "erin@example.com": {
                "email": "erin@example.com",
                "first_name": "Erin",
                "last_name": "Moss",
                "birthday": "12/01",
                "mailchimp_rating": 2,
                "created_at": seconds("2018-04-13 10:57:02"),
                "confirm_ip": "13.210.204.207",
                "cleaned_at": seconds("2022-06-30 04:00:00"),
                "cleaned_campaign": "June sale, last call",
                "unsubscribed": True,
                "imported_from": "mailchimp",
            },
        },
    ),
}


@pytest.mark.parametrize("status", list(MAILCHIMP_CASES))
def test_mailchimp_exports(status: str, api_env: ServerThread, tmp_path: Path) -> None:
    text, expected = MAILCHIMP_CASES[status]
    path = tmp_path / f"{status}_members_export_0e633f6c70.csv"
    path.write_text(text, encoding="utf-8")
    assert sync_preset(api_env, path, "mailchimp") == expected


def test_mailchimp_subscribed_never_sends_unsubscribed(api_env: ServerThread, tmp_path: Path):
    path = tmp_path / "subscribed_members_export_0e633f6c70.csv"
    path.write_text(MAILCHIMP_SUBSCRIBED, encoding="utf-8")
    for body in sync_preset(api_env, path, "mailchimp").values():
        assert "unsubscribed" not in body


# --- HubSpot ----------------------------------------------------------------------------------
# The default "All contacts" view's columns in their order, then a few more; HubSpot quotes
# every value and writes date-times "YYYY-MM-DD HH:mm" in the account's time zone.

HUBSPOT_CONTACTS = (
    '"Record ID","First Name","Last Name","Email","Phone Number","Contact owner",'
    '"Primary Associated Company ID","Last Activity Date","Lead Status",'
    '"Marketing contact status","Create Date","Associated Company","Lifecycle Stage",'
    '"Postal Code","Unsubscribed from all email","Favorite Color"\r\n'
    '"39779198735","Camille","Durand","camille@example.com","+33 6 12 34 56 78","Inès Moreau",'
    '"9001","2024-04-02 16:20","OPEN","Marketing contact","2024-03-12 09:14",'
    '"Durand, Fils & Cie","lead","02134","","Teal"\r\n'
    '"39779198736","John","Smith","john@example.org","","","","","","Non-marketing contact",'
    '"2023-11-05 23:30","","customer","","true",""\r\n'
)


def test_hubspot_export_in_the_accounts_time_zone(api_env: ServerThread, tmp_path: Path):
    path = tmp_path / "hubspot-crm-exports-all-contacts-2024-05-01.csv"
    path.write_text(HUBSPOT_CONTACTS, encoding="utf-8")
    zone = "America/New_York"
    bodies = sync_preset(api_env, path, "hubspot", "--timezone", zone)
    assert bodies == {
        "camille@example.com": {
            "hubspot_id": "39779198735",
            "first_name": "Camille",
            "last_name": "Durand",
            "email": "camille@example.com",
            "phone": "+33 6 12 34 56 78",
            "contact_owner": "Inès Moreau",
            "hubspot_company_id": "9001",
            "last_activity_at": seconds("2024-04-02 16:20", zone),
            "lead_status": "OPEN",
            "marketing_contact_status": "Marketing contact",
            "created_at": seconds("2024-03-12 09:14", zone),  # EDT: 13:14 UTC
            "company": "Durand, Fils & Cie",
            "lifecycle_stage": "lead",
            "postal_code": "02134",
            "favorite_color": "Teal",
            "imported_from": "hubspot",
        },
        "john@example.org": {
            "hubspot_id": "39779198736",
            "first_name": "John",
            "last_name": "Smith",
            "email": "john@example.org",
            "marketing_contact_status": "Non-marketing contact",
            "created_at": seconds("2023-11-05 23:30", zone),  # EST: 04:30 UTC the next day
            "lifecycle_stage": "customer",
            "unsubscribed": True,
            "imported_from": "hubspot",
        },
    }
    assert bodies["camille@example.com"]["created_at"] == seconds("2024-03-12 13:14")


def test_hubspot_identified_by_record_id(api_env: ServerThread, tmp_path: Path) -> None:
    """--id-column "Record ID" overrides the preset's identifier; a contact without an email
    is then valid. Without --timezone the preset's (UTC) applies."""
    path = tmp_path / "hubspot-crm-exports-all-contacts-2024-05-01.csv"
    no_email = (
        '"39779198737","Lea","Petit","","","","","","","","2024-01-02 03:04","","","","",""\r\n'
    )
    path.write_text(HUBSPOT_CONTACTS + no_email, encoding="utf-8")
    bodies = sync_preset(api_env, path, "hubspot", "--id-column", "Record ID")
    assert set(bodies) == {"39779198735", "39779198736", "39779198737"}
    assert bodies["39779198737"] == {
        "hubspot_id": "39779198737",
        "first_name": "Lea",
        "last_name": "Petit",
        "created_at": seconds("2024-01-02 03:04"),
        "imported_from": "hubspot",
    }
    assert bodies["39779198735"]["email"] == "camille@example.com"
    assert bodies["39779198735"]["created_at"] == seconds("2024-03-12 09:14")


# --- Klaviyo ----------------------------------------------------------------------------------
# A list export with every property chosen, in Klaviyo's order, and one custom property.

KLAVIYO_HEADER = (
    "Email,Klaviyo ID,First Name,Last Name,Organization,Title,Phone Number,Address,Address 2,"
    "City,State / Region,Country,Zip Code,Latitude,Longitude,Source,IP Address,"
    "Email Marketing Consent,Email Marketing Consent Timestamp,"
    "Historic Customer Lifetime Value,Total Customer Lifetime Value,"
    "Predicted Customer Lifetime Value,Average Order Value,Historic Number Of Orders,"
    "First Active,Last Active,Profile Created On,Date Added,Last Open,Last Click,"
    "Average Days Between Orders,Email Suppressions,Shopify Tags\n"
)
KLAVIYO_EXPORT = (
    KLAVIYO_HEADER
    + 'mia@example.com,01HQ3K8Z4W5X6Y7Z8A9B0C1D2E,Mia,Chen,"Chen, Ltd.",Buyer,+14155550123,'
    "1 Market St,Suite 200,San Francisco,California,United States,94105,37.7936,-122.3950,"
    "Shopify,203.0.113.9,SUBSCRIBED,2023-02-01 10:00:00,350.50,420.75,70.25,87.63,4,"
    "2023-02-01 10:00:00,2024-05-01 08:30:00,2023-02-01 09:59:58,2024-01-15 00:00:00,"
    '2024-04-30 19:00:00,2024-04-29 12:00:00,92.5,,"vip, wholesale"\n'
    "noah@example.com,01HQ3K8Z4W5X6Y7Z8A9B0C1D2F,Noah,,,,,,,,,,,,,Manually Initiated,,"
    "UNSUBSCRIBED,2022-05-05 05:05:05,0.00,0.00,,,0,,,2021-12-01 12:00:00,"
    "2024-01-15 00:00:00,,,,UNSUBSCRIBE,\n"
)


def test_klaviyo_export(api_env: ServerThread, tmp_path: Path) -> None:
    path = tmp_path / "List Export 2024-05-01.csv"
    path.write_text(KLAVIYO_EXPORT, encoding="utf-8")
    assert sync_preset(api_env, path, "klaviyo") == {
        "mia@example.com": {
            "email": "mia@example.com",
            "klaviyo_id": "01HQ3K8Z4W5X6Y7Z8A9B0C1D2E",
            "first_name": "Mia",
            "last_name": "Chen",
            "company": "Chen, Ltd.",
            "job_title": "Buyer",
            "phone": "+14155550123",
            "address": "1 Market St",
            "address_2": "Suite 200",
            "city": "San Francisco",
            "region": "California",
            "country": "United States",
            "zip_code": "94105",
            "latitude": 37.7936,
            "longitude": -122.395,
            "signup_source": "Shopify",
            "email_marketing_consent": "SUBSCRIBED",
            "email_consent_at": seconds("2023-02-01 10:00:00"),
            "historic_clv": 350.5,
            "total_clv": 420.75,
            "predicted_clv": 70.25,
            "average_order_value": 87.63,
            "orders_count": 4,
            "first_active_at": seconds("2023-02-01 10:00:00"),
            "last_active_at": seconds("2024-05-01 08:30:00"),
            "created_at": seconds("2023-02-01 09:59:58"),
            "added_to_list_at": seconds("2024-01-15 00:00:00"),
            "last_opened_at": seconds("2024-04-30 19:00:00"),
            "last_clicked_at": seconds("2024-04-29 12:00:00"),
            "average_days_between_orders": 92.5,
            "shopify_tags": "vip, wholesale",
            "imported_from": "klaviyo",
        },
        "noah@example.com": {
            "email": "noah@example.com",
            "klaviyo_id": "01HQ3K8Z4W5X6Y7Z8A9B0C1D2F",
            "first_name": "Noah",
            "signup_source": "Manually Initiated",
            "email_marketing_consent": "UNSUBSCRIBED",
            "email_consent_at": seconds("2022-05-05 05:05:05"),
            "historic_clv": 0.0,
            "total_clv": 0.0,
            "orders_count": 0,
            "created_at": seconds("2021-12-01 12:00:00"),
            "added_to_list_at": seconds("2024-01-15 00:00:00"),
            "email_suppressions": "UNSUBSCRIBE",
            "unsubscribed": True,
            "imported_from": "klaviyo",
        },
    }


# --- the preset files -------------------------------------------------------------------------


def preset_text(name: str) -> str:
    return resources.files("bulksync.presets").joinpath(f"{name}.toml").read_text("utf-8")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_file_is_a_documented_mapping(name: str) -> None:
    text = preset_text(name)
    head = text.split("\n\n", 1)[0].splitlines()
    assert all(line.startswith("#") for line in head), "the file starts with its comment"
    assert f"`bulksync mapping --preset {name} > my.toml`" in text
    table = tomllib.loads(text)
    assert table["kind"] == "people"
    assert table["skip_missing_columns"] is True
    assert table["snake_case"] is True
    assert table["set"] == {"imported_from": name}
    columns: dict[str, Any] = table["columns"]
    assert table["id_column"] in columns
    names = []
    for column, spec in columns.items():
        assert f"`{column}`" in DOCS, f"{name}: {column!r} is not in docs/presets.md"
        if isinstance(spec, str):
            names.append(spec)
            continue
        assert set(spec) <= COLUMN_KEYS, (column, spec)
        assert spec.get("type", "str") in TYPES, (column, spec)
        if spec.get("exclude"):
            assert set(spec) == {"exclude"}, (column, spec)
        else:
            names.append(spec.get("name", column))
    assert len(names) == len(set(names)), f"{name}: two columns sent under one name"
    assert "id" not in names
    for sent_as in names:
        assert f"`{sent_as}`" in DOCS, f"{name}: {sent_as!r} is not in docs/presets.md"


def test_only_mailchimp_unsubscribes_by_when_filled() -> None:
    mailchimp = tomllib.loads(preset_text("mailchimp"))["columns"]
    flagged = {c: s["when_filled"] for c, s in mailchimp.items() if "when_filled" in s}
    assert flagged == {"UNSUB_TIME": {"unsubscribed": True}, "CLEAN_TIME": {"unsubscribed": True}}


@pytest.mark.parametrize("name", PRESETS)
def test_mapping_command_prints_the_preset(name: str) -> None:
    result = invoke("mapping", "--preset", name)
    assert result.exit_code == 0, result.output
    assert result.output == preset_text(name)


def test_a_dumped_preset_is_a_mapping_file(api_env: ServerThread, tmp_path: Path) -> None:
    """`bulksync mapping --preset NAME > my.toml`, then `sync --mapping my.toml`: the same."""
    mapping = tmp_path / "my.toml"
    mapping.write_text(invoke("mapping", "--preset", "klaviyo").output, encoding="utf-8")
    path = tmp_path / "List Export 2024-05-01.csv"
    path.write_text(KLAVIYO_EXPORT, encoding="utf-8")
    result = invoke("sync", path, "--mapping", mapping, "--rate", "0", "--quiet")
    assert result.exit_code == 0, result.output
    requests, _ = api_env.snapshot()
    bodies = {rec.identifier: rec.body for rec in requests if rec.path != REGION_PATH}
    assert bodies["noah@example.com"]["unsubscribed"] is True
    assert bodies["mia@example.com"]["created_at"] == seconds("2023-02-01 09:59:58")
