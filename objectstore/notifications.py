"""Store events: the store tells the hub of a station's new arrival within milliseconds, so the hub need not LIST
every station's `_arrivals/` every second to learn of it.

Ceph RGW pushes S3 event records to an HTTP endpoint through its SNS-compatible topics (`subscribe`; AWS S3 and MinIO
configure event targets their own ways, and a store without them is polled as before). An event is a hint, never a
document: all the hub takes from it is which station's `_arrivals/` to LIST now, and what it then lists is read as
from any poll. Nothing in an event is trusted: it is parsed with bounds, a malformed one is dropped, and anyone who can
reach the endpoint can cause at most one LIST per event. Events are lost while the endpoint is down (and a persistent
topic lost one in a trial here), so readers keep a slow reconciliation LIST: events make an arrival quick, the LIST
makes it certain.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote_plus

from caseformat.layout import arrivals_pattern, station_of_arrival
from objectstore.errors import StorageError

EVENT_LIMIT = 256 * 1024  # bytes of one POST: RGW sends one record per request (about 1.5 KB)
RECORDS_LIMIT = 100  # records read of one POST


def subscribe(client: Any, sns: Any, bucket: str, root: str, push_url: str, name: str) -> str:
    """Have the store push an event to `push_url` for every new `_arrivals/` key under `root` of `bucket`, through
    a topic and a bucket notification both called `name` (made again, not added, when they exist: a restarted hub
    subscribes the same way). `client` is a botocore S3 client, `sns` one for the same endpoint's topics. Other
    notification configurations of the bucket are kept. Returns the topic's ARN; `StorageError` naming what the store
    refused (a store without topics: run the hub with polling only)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        topic = sns.create_topic(Name=name, Attributes={"push-endpoint": push_url, "persistent": "false"})["TopicArn"]
        current = client.get_bucket_notification_configuration(Bucket=bucket)
        others = [entry for entry in current.get("TopicConfigurations", []) if entry.get("Id") != name]
        ours = {"Id": name, "TopicArn": topic, "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "regex", "Value": arrivals_pattern(root)}]}}}
        client.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"TopicConfigurations": [*others, ours]})
    except (BotoCoreError, ClientError) as error:
        raise StorageError(f"s3://{bucket}: the store refused an event subscription ({str(error).splitlines()[0]}); "
                           "poll without --events") from None  # fmt: skip
    return str(topic)


def stations_in(body: bytes, root: str) -> set[str]:
    """The stations whose `_arrivals/` an S3 event body names (keys under `root`); empty for anything else."""
    if len(body) > EVENT_LIMIT:
        return set()
    try:
        records = json.loads(body).get("Records")
    except (ValueError, AttributeError):
        return set()
    if not isinstance(records, list):
        return set()
    base = f"{root.strip('/')}/" if root.strip("/") else ""
    found = set()
    for record in records[:RECORDS_LIMIT]:
        try:
            key = unquote_plus(record["s3"]["object"]["key"])
        except (KeyError, TypeError):
            continue
        if isinstance(key, str) and key.startswith(base) and (station := station_of_arrival(key[len(base):])) is not None:
            found.add(station)
    return found


class EventListener:
    """An HTTP endpoint the store pushes events to; `on_station(station)` is called (from its thread) for each station
    an event says has a new arrival. Every POST is answered 200 at once, whatever it holds (a store that gets errors
    retries, which would only repeat the hint)."""

    def __init__(self, host: str, port: int, root: str, on_station: Callable[[str], None]) -> None:
        root_prefix, notify = root, on_station

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, EVENT_LIMIT + 1)) if 0 < length <= EVENT_LIMIT else b""
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                for station in sorted(stations_in(body, root_prefix)):
                    notify(station)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                """Quiet: an event is news only through what the hub then finds."""

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="store-events", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> EventListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
