"""A durable JetStream consumer as its own process, for tests and benches:

    python tests/jsconsume.py OUT SERVERS DURABLE [STREAM]

appends one JSON line per frame to OUT (flushed at once, so a SIGKILL loses
nothing written) and stops cleanly on SIGTERM (acknowledging the last frame).
"""

from __future__ import annotations

import json
import signal
import sys
import time

from feedsup.ipc.jetstream import JetStreamConsumer


def main() -> None:
    out, servers, durable = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
    stream = sys.argv[4] if len(sys.argv) > 4 else "FEEDSUP"
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    consumer = JetStreamConsumer(servers, durable=durable, stream=stream)
    with open(out, "a") as f:
        f.write(json.dumps({"started": True}) + "\n")
        f.flush()
        while not stop:
            frame = consumer.next(timeout=0.2)
            if frame is None:
                continue
            data = frame.get("data") or {}
            f.write(json.dumps({
                "topic": frame["topic"], "js_seq": frame["js_seq"], "source": frame.get("source"),
                "redelivered": frame.get("redelivered", False), "gap": frame.get("gap"),
                "agg_id": data.get("agg_id"), "open_time": data.get("open_time"), "closed": data.get("closed"),
                "ohlcv": [data.get(k) for k in ("open", "high", "low", "close", "volume")],
                "price": data.get("price"), "qty": data.get("qty"), "recv_ns": frame.get("recv_ns"),
                "t": time.time_ns(),
            }) + "\n")
            f.flush()
    consumer.close()


if __name__ == "__main__":
    main()
