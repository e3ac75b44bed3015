"""python-hl7's MLLP client over TLS (Python's own ssl module, OpenSSL), against medrelay's listener.

  hl7_tls.py FILE PORT CA [CERT KEY]

Sends the first message of FILE with python-hl7's MLLPClient on a socket wrapped by ssl (server
certificate checked against CA for the name "localhost"; CERT/KEY: the client certificate for
mutual TLS). Prints one JSON object: {"msa": "AA", "control": "..."} for an answer, or
{"refused": "<what failed>"} when the TLS session or the answer did not happen.

Used by tests/interop_hl7.rs; installed by .ci/interop (python-hl7 0.4.5).
"""
import json
import socket
import ssl
import sys

import hl7
from hl7.client import MLLPClient


def first_message(path):
    raw = open(path, "rb").read().decode("utf-8")
    lines = [l for l in raw.replace("\r\n", "\n").replace("\n", "\r").split("\r") if l.strip()]
    out = []
    for line in lines:
        if line.startswith("MSH") and out:
            break
        out.append(line)
    return "\r".join(out) + "\r"


def main() -> int:
    path, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if len(sys.argv) > 5:
        ctx.load_cert_chain(certfile=sys.argv[4], keyfile=sys.argv[5])
    try:
        client = MLLPClient("127.0.0.1", port)
        client.socket.settimeout(10)
        client.socket = ctx.wrap_socket(client.socket, server_hostname="localhost")
        reply = client.send_message(first_message(path))
    except (ssl.SSLError, ConnectionError, socket.timeout, OSError) as e:
        print(json.dumps({"refused": type(e).__name__}))
        return 0
    text = reply.decode("utf-8") if isinstance(reply, bytes) else reply
    if not text:
        print(json.dumps({"refused": "connection closed without an answer"}))
        return 0
    ack = hl7.parse(text.strip("\x0b\x1c\r") + "\r")
    print(json.dumps({"msa": str(ack.segment("MSA")[1]), "control": str(ack.segment("MSA")[2])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
