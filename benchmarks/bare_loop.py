"""W3's bare verifying loop: the least a Python client that verifies a download does.

``python benchmarks/bare_loop.py DATA_URL CHECKSUM_URL TARGET`` fetches the ``.checksum``,
then the file with ``http.client``: ``readinto`` straight into three reused 8 MiB buffers,
each block written with ``os.write`` and then CRC-32'd and SHA-1'd on a second thread
(zlib and hashlib release the GIL).  It compares the sums with the ``.checksum`` and exits
1 if they differ.  No retries, resumes, redirects, locks or manifest; nothing imported from
``astroquery_casda_ext`` (it is the yardstick, not a copy of the package), and run as a
script so that it pays no import beyond the standard library's.
"""
import hashlib
import http.client
import os
import queue
import sys
import threading
import zlib
from urllib.parse import urlsplit

BLOCK = 8 << 20


def get(url):
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("GET", parts.path, headers={"Accept-Encoding": "identity"})
    response = connection.getresponse()
    if response.status != 200:
        sys.exit(f"bare loop: HTTP {response.status} from {url}")
    return response


def main(data_url, checksum_url, target):
    crc, sha1_hex, size = get(checksum_url).read().decode("ascii").split()
    sums = {"crc": 0, "sha1": hashlib.sha1(), "size": 0}
    free, full = queue.SimpleQueue(), queue.SimpleQueue()
    for _ in range(3):
        free.put(memoryview(bytearray(BLOCK)))

    def hasher():
        while (view := full.get()) is not None:
            sums["crc"] = zlib.crc32(view, sums["crc"])
            sums["sha1"].update(view)
            sums["size"] += len(view)
            free.put(memoryview(view.obj))

    thread = threading.Thread(target=hasher)
    thread.start()
    response = get(data_url)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        while True:
            block, filled = free.get(), 0
            while filled < BLOCK and (count := response.readinto(block[filled:])):
                filled += count
            written = 0
            while written < filled:
                written += os.write(fd, block[written:filled])
            full.put(block[:filled])
            if filled < BLOCK:
                break
    finally:
        full.put(None)
        thread.join()
        os.close(fd)
    got = (f"{sums['crc'] & 0xFFFFFFFF:08x}", sums["sha1"].hexdigest(), sums["size"])
    if got != (crc, sha1_hex, int(size, 16)):
        sys.exit(f"bare loop: {got} differs from the .checksum {crc} {sha1_hex} {size}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
