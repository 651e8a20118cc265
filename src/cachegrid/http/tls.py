"""TLS contexts for a node: its HTTPS listener, and its connections to other nodes.

Owns: building ``ssl.SSLContext`` objects from the PEM files of the configuration (the
``[security]`` section), with the standard library's secure defaults.

Invariants:
- Servers offer TLS 1.2 or newer; with a client CA, a connection without a certificate
  signed by it fails its handshake (mutual TLS).
- Clients verify the server's certificate against the CA and its host name (the address
  a peer advertises), and present this node's certificate (for peers that require one).
"""

from __future__ import annotations

import ssl


def server_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        context.load_cert_chain(cert, key)
    return context
