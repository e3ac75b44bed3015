"""Independent HL7v2 peers against medrelay's MLLP listener.

  send FILE PORT   send every message of FILE (CR-separated segments, one message per line break
                   between them, as samples/hl7/*.hl7) with python-hl7's MLLPClient, then parse each
                   ACK with python-hl7 and with hl7apy in STRICT validation; print one JSON object per
                   message: control id, MSA-1, MSA-2, ERR-3.1, and hl7apy's verdict.

Used by tests/interop_hl7.rs; installed by .ci/interop (python-hl7 0.4.5, hl7apy 1.3.5).
"""
import json
import sys

import hl7
from hl7.client import MLLPClient
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message


def messages(path):
    raw = open(path, "rb").read().decode("utf-8")
    out, current = [], []
    for line in raw.replace("\r\n", "\n").replace("\n", "\r").split("\r"):
        if not line.strip():
            continue
        if line.startswith("MSH") and current:
            out.append("\r".join(current) + "\r")
            current = []
        current.append(line)
    if current:
        out.append("\r".join(current) + "\r")
    return out


def main() -> int:
    cmd, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    assert cmd == "send"
    results = []
    with MLLPClient("127.0.0.1", port) as client:
        for msg in messages(path):
            sent = hl7.parse(msg)
            reply = client.send_message(msg)
            text = reply.decode("utf-8") if isinstance(reply, bytes) else reply
            # MLLPClient returns the whole frame: drop the start block and the end block + CR.
            assert text.startswith("\x0b") and text.endswith("\x1c\r"), repr(text)
            text = text[1:-2]
            ack = hl7.parse(text)
            err3 = ""
            try:
                err3 = str(ack.segment("ERR")[3][0][0])
            except KeyError:
                pass
            version = str(ack.segment("MSH")[12])
            # hl7apy's STRICT mode has no v2.3 ACK structure (it derives ACK_<trigger> from MSH-9,
            # and v2.3's MSH-9 has no third component), so v2.3 ACKs are checked TOLERANT.
            level = VALIDATION_LEVEL.TOLERANT if version == "2.3" else VALIDATION_LEVEL.STRICT
            try:
                parsed = parse_message(text, validation_level=level, find_groups=False)
                if level == VALIDATION_LEVEL.STRICT:
                    parsed.validate()
                    verdict = "valid"
                else:
                    # Without a structure there is nothing to validate against: read MSA back.
                    assert parsed.msa.msa_1.value == str(ack.segment("MSA")[1])
                    verdict = "parsed-tolerant"
            except Exception as e:  # hl7apy raises its own exception types per rule
                verdict = f"invalid: {type(e).__name__}: {e}"
            results.append(
                {
                    "control_id": str(sent.segment("MSH")[10]),
                    "msa1": str(ack.segment("MSA")[1]),
                    "msa2": str(ack.segment("MSA")[2]),
                    "err3": err3,
                    "hl7apy": verdict,
                }
            )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
