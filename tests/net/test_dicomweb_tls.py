"""DICOMweb over HTTPS: certificates are checked, credentials never shown.

Debian's Orthanc 1.10.1 crashes (SIGSEGV) on its first HTTPS request, so TLS is
terminated by a small proxy in front of the real Orthanc, as a site's reverse proxy
would do; what is tested is the station's client against a real TLS endpoint.
"""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from station.testing.orthanc import OrthancServer, orthanc_executable
from station.core.remote.remotes import RemoteSettings
from station.net.dicomweb.client import DicomWebClient, DicomWebError


class TlsProxy:
    """Accepts TLS on 127.0.0.1 and relays plain bytes to an HTTP server (thread per connection)."""

    def __init__(self, cert: str, key: str, upstream_port: int) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._accept = threading.Thread(target=self._serve, name="tls-proxy", daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self._relay, args=(raw,), name="tls-proxy-conn", daemon=True)
            t.start()
            self._threads.append(t)

    def _relay(self, raw: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # the client refused our certificate: exactly what a test checks
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(upstream, tls), daemon=True)
        back.start()
        pump(tls, upstream)
        back.join(5)
        tls.close()
        upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._accept.join(5)
        self.listener.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture(scope="module")
def tls_store(tmp_path_factory, pki):
    if orthanc_executable() is None:
        pytest.skip("Orthanc not installed")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-auth"), config={
        "AuthenticationEnabled": True, "RegisteredUsers": {"analyst": "s3cret-Pa55"}})
    server.start()
    proxy = TlsProxy(str(pki / "server.crt"), str(pki / "server.key"), server.http_port)
    yield f"https://127.0.0.1:{proxy.port}/dicom-web"
    proxy.close()
    server.stop()


def remote(url: str, **kw) -> RemoteSettings:
    return RemoteSettings(name="pacs", dicomweb=url, auth="basic", username="analyst", timeout=10, **kw)


def test_https_with_the_sites_ca_bundle(tls_store, pki):
    client = DicomWebClient.from_settings(remote(tls_store, password="s3cret-Pa55", ca_bundle=str(pki / "ca.crt")))
    try:
        assert client.search_studies() == []  # an empty archive, reached over verified TLS
    finally:
        client.close()


def test_an_unknown_certificate_is_refused_and_no_credential_leaks(tls_store):
    settings = remote(tls_store, password="s3cret-Pa55")  # system CAs only: the test CA is unknown
    client = DicomWebClient.from_settings(settings)
    try:
        with pytest.raises(DicomWebError) as info:
            client.search_studies()
    finally:
        client.close()
    text = f"{info.value} {info.value!r} {settings!r}"
    assert "certificate" in text.lower() or "ssl" in text.lower()
    assert "s3cret-Pa55" not in text
    assert tls_store.split("//")[1].split("/")[0] in str(info.value)  # names the store it could not reach


def test_a_wrong_password_is_an_authentication_error_without_the_password(tls_store, pki):
    client = DicomWebClient.from_settings(remote(tls_store, password="wrong-Pa55", ca_bundle=str(pki / "ca.crt")))
    try:
        with pytest.raises(DicomWebError) as info:
            client.search_studies()
    finally:
        client.close()
    assert "401" in str(info.value) or "auth" in str(info.value).lower()
    assert "wrong-Pa55" not in f"{info.value} {info.value!r}"
