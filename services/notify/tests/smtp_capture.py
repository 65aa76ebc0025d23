"""A real SMTP server for the email tests (aiosmtpd), writing every message
it receives to DIR as <n>.eml, with the envelope in <n>.json.

Usage: python smtp_capture.py HOST PORT DIR [CERT KEY]
With CERT and KEY (PEM), the server offers STARTTLS. Prints "ready" once it
accepts connections.
"""

import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.controller import Controller


class Capture:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.directory, f"{self.count:04d}")
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(base + ".json", "w") as f:
            json.dump(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": envelope.rcpt_tos,
                    "tls": session.ssl is not None,
                },
                f,
            )
        # Renamed last: a reader never sees half a message.
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 Message accepted for delivery"


def main():
    host, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tls = {}
    if len(sys.argv) == 6:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[4], sys.argv[5])
        tls = {"tls_context": context}
    controller = Controller(Capture(directory), hostname=host, port=port, **tls)
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
