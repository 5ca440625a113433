"""A hospital's store behind its private CA: the station's one store client (`objectstore`) trusts the CA given with
--ca-bundle, for its reads and writes (obstore) and its listings (botocore) alike, and says in one line when the file
cannot serve or when a store's certificate is signed by a CA it was not given.

The real S3 server speaks plain HTTP, so a TLS proxy in front of it presents a certificate signed by a CA made here.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import S3Server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from caseformat.documents import CaseRecord
from caseformat.layout import CASE_RECORD, case_key
from objectstore import EndpointError
from station.registry import Registry
from station.station import SpecimenInfo, Station, Store
from transfer import TransferError

pytestmark = pytest.mark.slow

STATION = "theatre-2"


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, signer: ec.EllipticCurvePrivateKey,
                 ) -> x509.Certificate:  # fmt: skip
    """A CA certificate (no issuer) or a server certificate for 127.0.0.1 signed by `issuer`."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))  # fmt: skip
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    return builder.sign(signer, hashes.SHA256())


@contextlib.contextmanager
def tls_proxy(target: str, folder: Path) -> Iterator[tuple[str, Path]]:
    """An https:// endpoint forwarding to `target`, and the PEM file of the private CA its certificate is signed by."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Hospital private CA", ca_key, None, ca_key)
    server = _certificate("127.0.0.1", server_key, ca, ca_key)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM) + server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem")
    split = urlsplit(target)
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(source: socket.socket, destination: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                destination.sendall(data)
        for end in (source, destination):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def serve(client: socket.socket) -> None:
        try:
            secure = context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError):  # a client that does not trust the CA hangs up during the handshake
            client.close()
            return
        upstream = socket.create_connection((split.hostname or "127.0.0.1", split.port or 80))
        threading.Thread(target=pipe, args=(upstream, secure), daemon=True).start()
        pipe(secure, upstream)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                threading.Thread(target=serve, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", folder / "ca.pem"
    finally:
        listener.close()


def test_a_station_given_its_hospitals_ca_registers_reads_and_lists_through_tls(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    with tls_proxy(s3_server.endpoint_url, tmp_path) as (endpoint, ca_bundle), Registry(tmp_path / "state") as registry:
        store = Store.parse(f"s3://{s3_bucket}/site", endpoint)
        station = Station(store, registry, STATION, str(ca_bundle))
        specimen = station.register(SpecimenInfo("frozen-7", "accession:A7"))  # case.json, create-only
        stored = station.read_bytes(store.key(case_key(specimen.case, CASE_RECORD)))
        assert stored is not None and CaseRecord.read(stored).station == STATION
        assert station.unsent(specimen.case) == ([], [])  # a listing, through botocore's client

        stranger = Station(store, registry, STATION)  # the system's CAs only
        with pytest.raises(TransferError) as refused:
            stranger.read_bytes(store.key(case_key(specimen.case, CASE_RECORD)))
        assert "TLS handshake" in str(refused.value) and "--ca-bundle" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("content", [None, b"not a certificate\n"], ids=["missing", "not PEM"])
def test_a_ca_bundle_that_cannot_serve_is_refused_in_one_line_naming_it(tmp_path: Path, content: bytes | None) -> None:
    ca_bundle = tmp_path / "hospital-ca.pem"
    if content is not None:
        ca_bundle.write_bytes(content)
    with Registry(tmp_path / "state") as registry, pytest.raises(EndpointError) as refused:
        Station(Store.parse("s3://cases/site", "https://store.hospital.example"), registry, STATION, str(ca_bundle))
    assert str(ca_bundle) in str(refused.value) and "--ca-bundle" in str(refused.value) and "\n" not in str(refused.value)
