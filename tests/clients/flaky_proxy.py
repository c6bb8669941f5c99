#!/usr/bin/env python3
"""A TCP proxy that behaves like a bad network path between a gRPC client and musicgw: it cuts
each connection once it is --max-age seconds old or has carried --max-bytes to the client (at
most --max-cuts times in all, then it stays out of the way), so a Watch dies mid-stream and a
download dies after its first chunk, and the clients have to reconnect and resume. Loopback
only.

  flaky_proxy.py --upstream 127.0.0.1:PORT --port-file FILE [--max-age 1.5] [--max-bytes 300000]

Writes its listening port to --port-file and one line per cut to stdout.
"""
import argparse
import asyncio
import signal
import sys


class Proxy:
    def __init__(self, upstream, max_age, max_bytes, max_cuts):
        self.host, port = upstream.rsplit(":", 1)
        self.port = int(port)
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.cuts_left = max_cuts
        self.cuts = 0

    async def pipe(self, reader, writer, limit):
        """Copies until EOF; with a limit, returns "bytes" when the limit would be passed."""
        carried = 0
        try:
            while True:
                data = await reader.read(16384)
                if not data:
                    return "eof"
                if limit and self.cuts_left > 0 and carried + len(data) > limit:
                    return "bytes"
                carried += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return "eof"

    async def handle(self, client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            client_writer.close()
            return
        tasks = [
            asyncio.ensure_future(self.pipe(client_reader, up_writer, 0)),
            asyncio.ensure_future(self.pipe(up_reader, client_writer, self.max_bytes)),
        ]
        done, _ = await asyncio.wait(tasks, timeout=self.max_age if self.cuts_left > 0 else None,
                                     return_when=asyncio.FIRST_COMPLETED)
        why = None
        if not done:
            why = f"{self.max_age} s"
        elif any(t.result() == "bytes" for t in done):
            why = f"{self.max_bytes} bytes"
        if why and self.cuts_left > 0:
            self.cuts_left -= 1
            self.cuts += 1
            print(f"flaky_proxy: cut a connection after {why} (cut {self.cuts})", flush=True)
        elif not done:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # An abrupt close, as when a NAT or load balancer drops the flow.
        for w in (client_writer, up_writer):
            if w.transport is not None:
                w.transport.abort()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--max-age", type=float, default=1.5)
    parser.add_argument("--max-bytes", type=int, default=300_000, help="to the client, per connection")
    parser.add_argument("--max-cuts", type=int, default=4)
    parser.add_argument("--lifetime", type=float, default=300, help="exit after this long")
    args = parser.parse_args()
    proxy = Proxy(args.upstream, args.max_age, args.max_bytes, args.max_cuts)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    with open(args.port_file, "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.lifetime)
    except asyncio.TimeoutError:
        pass
    server.close()
    print(f"flaky_proxy: {proxy.cuts} cuts", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
