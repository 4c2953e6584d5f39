#!/usr/bin/env python3
"""Raw HTTP clients for tests/openresty/run.sh (127.0.0.1 only, bounded in time).

  client.py chunked PORT PATH FILE SEED     the file as a chunked body: random chunk
                                            sizes, hex with leading zeros, extensions,
                                            trailers; prints the status and the body
  client.py raw PORT PATH HEX_OF_BYTES      sends the bytes (a whole request) and
                                            prints the status line's code
  client.py cut PORT PATH FILE NBYTES MODE  sends the headers (MODE: length|chunked)
                                            and NBYTES of the body, then closes
  client.py sendfile PORT PATH FILE         PUT of the file with a Content-Length,
                                            its body by sendfile(2) (the least CPU a
                                            client can spend: bench/openresty); prints
                                            "SECONDS STATUS" (connect to the reply)
  client.py ping PORT PATH STOPFILE MS      GET PATH every MS ms on one keep-alive
                                            connection until STOPFILE exists (at most
                                            600 s); prints "n p50 p99 max" in ms
"""
import http.client
import os
import random
import socket
import sys
import time

HOST = "127.0.0.1"
TIMEOUT = 120


def read_reply(s):
    data = b""
    s.settimeout(TIMEOUT)
    while b"\r\n\r\n" not in data:
        got = s.recv(65536)
        if not got:
            break
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1."):
        return "000", data
    code = head.split(b" ")[1].decode()
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        got = s.recv(65536)
        if not got:
            break
        body += got
    return code, body


def connect(port):
    s = socket.create_connection((HOST, int(port)), timeout=TIMEOUT)
    return s


def chunked(port, path, fname, seed):
    rnd = random.Random(int(seed))
    s = connect(port)
    s.sendall(("PUT %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % path).encode())
    with open(fname, "rb") as f:
        while True:
            n = rnd.choice([1, 7, 100, 4096, 65536, 262144, 1000000])
            data = f.read(n)
            if not data:
                break
            hexs = "0" * rnd.randint(0, 3) + "%x" % len(data)
            if rnd.random() < 0.5:
                hexs = hexs.upper()
            ext = rnd.choice(["", ";a=b", ' ; name="v"', ";x"])
            s.sendall(("%s%s\r\n" % (hexs, ext)).encode() + data + b"\r\n")
    s.sendall(b"0\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n")
    code, body = read_reply(s)
    s.close()
    print(code, body.decode(errors="replace").strip())


def raw(port, path, hexbytes):
    s = connect(port)
    s.sendall(bytes.fromhex(hexbytes).replace(b"@PATH@", path.encode()))
    try:
        code, body = read_reply(s)
    except (ConnectionResetError, socket.timeout):
        code, body = "000", b""
    s.close()
    print(code, body.decode(errors="replace").strip())


def cut(port, path, fname, nbytes, mode):
    size = os.path.getsize(fname)
    s = connect(port)
    if mode == "chunked":
        s.sendall(("PUT %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % path).encode())
    else:
        s.sendall(("PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (path, size)).encode())
    left = int(nbytes)
    with open(fname, "rb") as f:
        while left > 0:
            data = f.read(min(left, 65536))
            if not data:
                break
            if mode == "chunked":
                data = b"%x\r\n" % len(data) + data + b"\r\n"
            s.sendall(data)
            left -= 65536
    time.sleep(0.05)
    s.close()


def sendfile(port, path, fname):
    size = os.path.getsize(fname)
    t0 = time.monotonic()
    s = connect(port)
    s.sendall(("PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
               % (path, HOST, size)).encode())
    with open(fname, "rb") as f:
        s.sendfile(f)
    code, _ = read_reply(s)
    s.close()
    print("%.6f %s" % (time.monotonic() - t0, code))


def ping(port, path, stopfile, ms):
    conn = http.client.HTTPConnection(HOST, int(port), timeout=10)
    lat = []
    end = time.monotonic() + 600
    period = float(ms) / 1000
    nxt = time.monotonic()
    while not os.path.exists(stopfile) and time.monotonic() < end:
        t0 = time.monotonic()
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        lat.append((time.monotonic() - t0) * 1000)
        nxt += period
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
        else:
            nxt = time.monotonic()
    lat.sort()
    if not lat:
        print("0 0 0 0")
        return
    q = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))]
    print("%d %.1f %.1f %.1f" % (len(lat), q(0.5), q(0.99), lat[-1]))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"chunked": chunked, "raw": raw, "cut": cut, "sendfile": sendfile, "ping": ping}[cmd](*args)
