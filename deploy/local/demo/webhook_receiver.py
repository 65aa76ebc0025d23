#!/usr/bin/env python3
"""A webhook receiver for the local stack: verifies dealmesh notify's
signature (X-Dealmesh-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">),
drops repeats by X-Dealmesh-Delivery-Id, and appends one JSON line per
delivery to the log file it is given.

Usage: webhook_receiver.py PORT SECRET LOGFILE
"""
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, SECRET, LOG = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]
TOLERANCE_SECONDS = 300
seen = set()


def verify(header: str, body: bytes) -> bool:
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in parts if k == "t"]
    if not stamps or abs(time.time() - int(stamps[0])) > TOLERANCE_SECONDS:
        return False
    expected = hmac.new(SECRET, stamps[0].encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for k, v in parts if k == "v1")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if not verify(self.headers.get("x-dealmesh-signature", ""), body):
            self.send_response(401)
            self.end_headers()
            return
        delivery = self.headers.get("x-dealmesh-delivery-id", "")
        if delivery not in seen:
            seen.add(delivery)
            payload = json.loads(body)
            with open(LOG, "a", encoding="utf-8") as log:
                log.write(json.dumps({"delivery_id": delivery, "summary": payload.get("summary"),
                                      "trigger": payload.get("trigger")}) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
