"""Local Customer.io Track API simulator (aiohttp.web), for tests, benchmarks and demos."""

from bulksync.fake.server import FakeConfig, FakeTrackAPI, Recorded, peak_in_window, run_fake_server

__all__ = ["FakeConfig", "FakeTrackAPI", "Recorded", "peak_in_window", "run_fake_server"]
