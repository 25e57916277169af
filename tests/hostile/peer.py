"""A scripted hostile helper for barge's tests.

Usage: python3 peer.py FEATURES SCENARIO.py [ARGS...]

It answers HELLO with a WELCOME offering FEATURES (an integer, e.g. 0x2
for trees), then runs SCENARIO.py with the helpers below in scope. A
scenario reads the client's requests with read_frame() and answers with
whatever a compromised server might send. SCENARIO's extra arguments are
in ARGS.
"""
import os
import struct
import sys
import time

inp = sys.stdin.buffer
out = sys.stdout.buffer

# Frame types (docs/PROTOCOL.md).
HELLO, WELCOME = 0x01, 0x02
STAT, LIST, MKDIR, REMOVE, RENAME, PUT, GET, SHUTDOWN = range(0x10, 0x18)
DATA, END, CANCEL, STOP, SOURCE_INFO = 0x20, 0x21, 0x22, 0x23, 0x24
OK, ERROR, STAT_INFO, DIRENTS = 0x30, 0x31, 0x32, 0x33
TREE_IN, TREE_OUT, TREE_DIR, TREE_LINK, TREE_FILE = 0x50, 0x51, 0x52, 0x53, 0x54
TREE_FILE_WHOLE, TREE_SKIP, TREE_FAIL, TREE_TOTALS, TREE_DONE = 0x55, 0x56, 0x57, 0x58, 0x59
PUT_PARTIAL, PARTIAL_AT, PREFIX_SUM, RESUME_AT, GET_PARTIAL = 0x5A, 0x5B, 0x5C, 0x5D, 0x5E

S_IFDIR, S_IFREG, S_IFLNK = 0o040000, 0o100000, 0o120000


def frame(kind, serial, body=b""):
    return struct.pack(">IBBHQ", len(body), kind, 0, 0, serial) + body


def send(*frames):
    """Write whole frames; a client that hung up ends the scenario."""
    try:
        out.write(b"".join(frames))
        out.flush()
    except (BrokenPipeError, ConnectionResetError):
        sys.exit(0)


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = inp.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame():
    """The next frame from the client as (kind, serial, body); None at EOF."""
    head = read_exact(16)
    if head is None:
        return None
    n, kind, _, _, serial = struct.unpack(">IBBHQ", head)
    body = read_exact(n)
    if body is None:
        return None
    return kind, serial, body


def until(*kinds):
    """Read frames until one of `kinds` (a request); exit at EOF."""
    while True:
        f = read_frame()
        if f is None:
            sys.exit(0)
        if f[0] in kinds:
            return f


def pstr(b):
    """A length-prefixed byte string."""
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b


def stat_record(size=0, mode=S_IFREG | 0o644, uid=0, gid=0, nlink=1, mtime=0):
    return struct.pack(">QIIIQqI", size, mode, uid, gid, nlink, mtime, 0)


def ok(serial):
    return frame(OK, serial)


def error(serial, errno, message):
    return frame(ERROR, serial, struct.pack(">i", errno) + pstr(message))


def dirents(serial, entries):
    """entries: [(name, stat_record bytes)]"""
    body = struct.pack(">I", len(entries))
    for name, st in entries:
        body += st + pstr(name)
    return frame(DIRENTS, serial, body)


def meta(mode, mtime=0):
    return struct.pack(">IqI", mode, mtime, 0)


def tree_dir(serial, path, mode=S_IFDIR | 0o755):
    return frame(TREE_DIR, serial, meta(mode) + pstr(path))


def tree_file_whole(serial, path, data, mode=S_IFREG | 0o644):
    return frame(TREE_FILE_WHOLE, serial, meta(mode) + struct.pack(">Q", crc64(data)) + pstr(path) + pstr(data))


def tree_fail(serial, path, errno=5, message="failed"):
    return frame(TREE_FAIL, serial, struct.pack(">i", errno) + pstr(path) + pstr(message))


def tree_totals(serial, files, nbytes):
    return frame(TREE_TOTALS, serial, struct.pack(">QQ", files, nbytes))


def tree_done(serial):
    return frame(TREE_DONE, serial)


def end(serial, data):
    return frame(END, serial, struct.pack(">QQ", len(data), crc64(data)))


def source_info(serial, size, mode=S_IFREG | 0o644):
    return frame(SOURCE_INFO, serial, struct.pack(">QI", size, mode))


_CRC_TABLE = []


def crc64(data):
    """CRC-64/NVME, as END frames carry it."""
    if not _CRC_TABLE:
        poly = 0x9A6C9329AC4BC9B5  # 0xad93d23594c93659 reflected
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ poly if c & 1 else c >> 1
            _CRC_TABLE.append(c)
    c = 0xFFFFFFFFFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFFFFFFFFFF


def serve_shutdown():
    """Answer requests with ERROR until SHUTDOWN, then OK and exit."""
    while True:
        f = read_frame()
        if f is None:
            sys.exit(0)
        kind, serial, _ = f
        if kind == SHUTDOWN:
            send(ok(serial))
            sys.exit(0)
        if kind < 0x20 or kind >= 0x50 and kind not in (TREE_DIR, TREE_LINK, TREE_FILE,
                                                        TREE_FILE_WHOLE, TREE_SKIP, TREE_DONE):
            send(error(serial, 95, "not supported by this scripted helper"))


assert crc64(b"123456789") == 0xAE8B14860A799888

FEATURES = int(sys.argv[1], 0)
ARGS = sys.argv[3:]
if read_frame() is None:  # HELLO
    sys.exit(0)
send(frame(WELCOME, 0, b"BARGE\0\r\n" + struct.pack(">HQI", 1, FEATURES, os.getpid())))
with open(sys.argv[2]) as f:
    exec(compile(f.read(), sys.argv[2], "exec"))
