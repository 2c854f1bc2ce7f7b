"""Mapping files for exports of other platforms, used by `bulksync sync --preset NAME`.

Each `NAME.toml` here is an ordinary mapping file (see docs/presets.md for what each column
becomes, and where the column names come from); `bulksync mapping --preset NAME` prints one to
edit.
"""
