"""An independent EHR inbound interface for write-back tests: python-hl7's asyncio MLLP server,
acknowledging every message with python-hl7's own ACK builder (AA), and printing one line per
message received: "<MSH-9> <MSH-10> <ARQ-2>".

usage: python hl7_ack_server.py PORT     prints "listening" once it accepts connections.
Used by tests/interop_hl7.rs; installed by .ci/interop (python-hl7 0.4.5).
"""
import asyncio
import sys

import hl7
from hl7.mllp import start_hl7_server


async def handle(reader, writer):
    try:
        while not writer.is_closing():
            msg = await reader.readmessage()
            arq = str(msg.segment("ARQ")[2]) if any(s[0][0] == "ARQ" for s in msg) else ""
            print(f"{msg.segment('MSH')[9]} {msg.segment('MSH')[10]} {arq}", flush=True)
            writer.writemessage(msg.create_ack(ack_code="AA"))
            await writer.drain()
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()


async def main():
    port = int(sys.argv[1])
    async with await start_hl7_server(handle, host="127.0.0.1", port=port) as server:
        print("listening", flush=True)
        await server.serve_forever()


asyncio.run(main())
