"""Store events (objectstore.notifications) against the real Ceph RGW: an arrival under the hub's prefix wakes the
listener within a second, naming its station; nothing else does; and what anyone may POST to the listener is at most
a hint, never a crash."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from typing import Any

import boto3
import pytest
from conftest import S3Server
from support import wait_for

from caseformat.layout import arrivals_folder, case_key
from objectstore.notifications import EVENT_LIMIT, EventListener, stations_in, subscribe


def _rgw(s3_server: S3Server) -> None:
    if not s3_server.name.startswith("ceph-rgw"):
        pytest.skip(f"store events are Ceph RGW's topics; this server is {s3_server.name}")


def _record(key: str) -> dict[str, Any]:
    return {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": key, "size": 1}}}


def test_an_arrival_wakes_the_listener_with_its_station_and_nothing_else_does(s3_server: S3Server, s3_bucket: str) -> None:
    _rgw(s3_server)
    heard: list[tuple[float, str]] = []
    lock = threading.Lock()

    def on_station(station: str) -> None:
        with lock:
            heard.append((time.monotonic(), station))

    listener = EventListener("127.0.0.1", 0, "alliance", on_station).start()
    try:
        client = s3_server.client()
        sns = boto3.client("sns", endpoint_url=s3_server.endpoint_url, region_name="default")
        subscribe(client, sns, s3_bucket, "alliance", f"http://127.0.0.1:{listener.port}", f"hub-{uuid.uuid4().hex[:8]}")
        for key in (f"alliance/{case_key('h2.c1', 'case.json')}", f"other/{arrivals_folder('h3')}20261205T100000Z_h3.c_s1_v1",
                    f"alliance/{arrivals_folder('h4')}x/y"):  # a case document; another prefix; not an arrival's shape
            client.put_object(Bucket=s3_bucket, Key=key, Body=b"{}")
        put = time.monotonic()
        client.put_object(Bucket=s3_bucket, Key=f"alliance/{arrivals_folder('h1')}20261205T100000Z_h1.c1_s1_v1", Body=b"")
        wait_for(lambda: heard, "the arrival's event", timeout=10)
        time.sleep(1)  # any event for the other keys would have come by now
    finally:
        listener.stop()
    assert [station for _, station in heard] == ["h1"]
    assert heard[0][0] - put < 1.0, f"the event came {heard[0][0] - put:.2f} s after the PUT"


def test_what_anyone_posts_is_a_hint_at_most(s3_server: S3Server) -> None:
    """Malformed bodies, oversized ones, keys of other prefixes or of no station: nothing; a URL-encoded arrival key
    (S3 events encode keys) names its station; the listener keeps answering throughout."""
    heard: list[str] = []
    listener = EventListener("127.0.0.1", 0, "alliance", heard.append).start()

    def post(body: bytes) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{listener.port}/", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)

    try:
        bodies = [b"not json", b"[]", json.dumps({"Records": "x"}).encode(), json.dumps({"Records": [{"s3": None}, 7]}).encode(),
                  json.dumps({"Records": [_record("alliance/stations/H1!/_arrivals/x")]}).encode(),
                  json.dumps({"Records": [_record("elsewhere/stations/h1/_arrivals/x")]}).encode(),
                  json.dumps({"Records": [_record("alliance/stations/h1/_arrivals/x")], "pad": "x" * EVENT_LIMIT}).encode()]
        assert [post(body) for body in bodies] == [200] * len(bodies)
        assert heard == []
        assert post(json.dumps({"Records": [_record("alliance/stations/h9/_arrivals/20261205T1000Z_h9.c%2B1_s1_v1")]}).encode()) == 200
        wait_for(lambda: heard, "the encoded arrival's station", timeout=5)
    finally:
        listener.stop()
    assert heard == ["h9"]
    assert stations_in(json.dumps({"Records": [_record("stations/h5/_arrivals/k")] * 3}).encode(), "") == {"h5"}


def test_two_hubs_each_get_the_events(s3_server: S3Server, s3_bucket: str) -> None:
    """Two hubs on one prefix (two machines) subscribe each under their own name: the second does not take the first's
    events away."""
    _rgw(s3_server)
    from hub.hub import _topic

    heard: list[list[str]] = [[], []]
    listeners = [EventListener("127.0.0.1", 0, "alliance", heard[index].append).start() for index in range(2)]
    try:
        client = s3_server.client()
        sns = boto3.client("sns", endpoint_url=s3_server.endpoint_url, region_name="default")
        for listener in listeners:
            url = f"http://127.0.0.1:{listener.port}"
            subscribe(client, sns, s3_bucket, "alliance", url, f"hub-{_topic(f's3://{s3_bucket}/alliance', url)}")
        client.put_object(Bucket=s3_bucket, Key=f"alliance/{arrivals_folder('h7')}20261205T100000Z_h7.c1_s1_v1", Body=b"")
        wait_for(lambda: all(heard), "both hubs to hear the arrival", timeout=10)
    finally:
        for listener in listeners:
            listener.stop()
    assert heard == [["h7"], ["h7"]]
