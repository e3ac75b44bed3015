"""Independent checks of medrelay's WhatsApp webhooks with pywa (https://github.com/david-lev/pywa).

  verify FILE SECRET HEADER   exit 0 if pywa accepts HEADER as the X-Hub-Signature-256 of FILE's bytes
  sign FILE SECRET            print the signature header pywa's validator accepts for FILE's bytes
  parse FILE                  parse FILE (a webhook body) with pywa's typed update classes

Used by tests/interop_pywa.rs; installed by .ci/interop.
"""
import hashlib
import hmac
import json
import sys

from pywa import utils


def main() -> int:
    cmd, path = sys.argv[1], sys.argv[2]
    raw = open(path, "rb").read()
    if cmd == "verify":
        ok = utils.webhook_updates_validator(
            app_secret=sys.argv[3], request_body=raw, x_hub_signature=sys.argv[4]
        )
        print("valid" if ok else "invalid")
        return 0 if ok else 1
    if cmd == "sign":
        digest = hmac.new(sys.argv[3].encode(), raw, hashlib.sha256).hexdigest()
        header = "sha256=" + digest
        # Refuse to hand out a header pywa itself would not accept.
        assert utils.webhook_updates_validator(
            app_secret=sys.argv[3], request_body=raw, x_hub_signature=header
        )
        print(header)
        return 0
    if cmd == "parse":
        body = json.loads(raw)
        value = body["entry"][0]["changes"][0]["value"]
        kinds = [m["type"] for m in value.get("messages", [])] + [
            s["status"] for s in value.get("statuses", [])
        ]
        print(" ".join(kinds))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
