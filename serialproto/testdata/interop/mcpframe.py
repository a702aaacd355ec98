# SPDX-License-Identifier: MIT
"""Clean-room MCPFrame v1 implementation, written from docs/protocol.md only.

It exists to prove that the specification alone is enough to interoperate
with the Go reference implementation; check_vectors.py runs it against
serialproto/testdata/vectors.txt (§15). Python 3 standard library only.
"""

import hashlib
import hmac
import struct

MAGIC = 0x55
VERSION = 1
MAX_DATA = 256
HEADER = 6  # magic, version, length(2), cmd, seq
FRAGMENT = 0x40  # cmd bit 6 (§6)
SIGNED = 0x80  # cmd bit 7 (§9)
SIG_BLOCK = 15  # link_id u8, counter u48, tag 8 (§9.1)

COMMANDS = {
    "HELLO": 0x01, "WELCOME": 0x02, "PING": 0x03, "PONG": 0x04, "INFER": 0x05,
    "TOKEN": 0x06, "DONE": 0x07, "ERROR": 0x08, "CANCEL": 0x09, "ACK": 0x0A,
    "NACK": 0x0B, "STATUS": 0x0C, "STATUS_REPLY": 0x0D, "BYE": 0x0E,
}
COMMAND_NAMES = {v: k for k, v in COMMANDS.items()}


class ProtocolError(ValueError):
    """An input rejected by the protocol; .cls is the §15 error class."""

    def __init__(self, cls, detail=""):
        super().__init__(f"{cls}: {detail}" if detail else cls)
        self.cls = cls


# ---------------------------------------------------------------- CRCs (§2.3)

def _crc8_table():
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = ((c << 1) ^ 0x2F) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


def _crc32c_table():
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # 0x1EDC6F41 reflected
        table.append(c)
    return table


_CRC8 = _crc8_table()
_CRC32C = _crc32c_table()


def crc8(data):
    """CRC-8/AUTOSAR: poly 0x2F, init 0xFF, not reflected, xorout 0xFF."""
    c = 0xFF
    for b in data:
        c = _CRC8[c ^ b]
    return c ^ 0xFF


def crc32c(data):
    """CRC-32C (Castagnoli): reflected, init and xorout 0xFFFFFFFF."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# ---------------------------------------------------------------- frames (§2)

class Frame:
    """A decoded frame. cmd is the low 6 bits, flags the high 2 bits."""

    __slots__ = ("ver", "cmd", "flags", "seq", "data")

    def __init__(self, cmd, seq, data=b"", flags=0, ver=VERSION):
        self.ver, self.cmd, self.flags, self.seq, self.data = ver, cmd, flags, seq, bytes(data)

    def encode(self):
        return encode_frame(self.cmd | self.flags, self.seq, self.data, self.ver)

    def __repr__(self):
        return (f"Frame(ver={self.ver}, cmd={self.cmd:#04x}, flags={self.flags:#04x}, "
                f"seq={self.seq}, data={self.data.hex()})")


def encode_frame(cmd_byte, seq, data, ver=VERSION):
    """Wire bytes of one frame; cmd_byte includes the FRAGMENT/SIGNED flags."""
    if len(data) > MAX_DATA:
        raise ProtocolError("length", f"{len(data)} data bytes > {MAX_DATA}")
    body = struct.pack(">BHBB", ver, len(data), cmd_byte, seq) + bytes(data)
    return bytes([MAGIC]) + body + bytes([crc8(body)])


def decode_frame(buf):
    """Decode exactly one frame from a datagram (§7.2).

    Error classes, checked in this order: short (< 7 bytes), magic, length
    (> 256), short (fewer than 7 + length bytes), trailing (more), crc.
    """
    buf = bytes(buf)
    if len(buf) < HEADER + 1:
        raise ProtocolError("short", f"{len(buf)} bytes < 7")
    if buf[0] != MAGIC:
        raise ProtocolError("magic", f"first byte {buf[0]:#04x}")
    ver, length, cmd_byte, seq = struct.unpack_from(">BHBB", buf, 1)
    if length > MAX_DATA:
        raise ProtocolError("length", f"length {length} > {MAX_DATA}")
    if len(buf) < HEADER + length + 1:
        raise ProtocolError("short", f"{len(buf)} bytes < 7 + {length}")
    if len(buf) > HEADER + length + 1:
        raise ProtocolError("trailing", f"{len(buf) - HEADER - length - 1} bytes after the crc")
    want = crc8(buf[1:HEADER + length])
    if buf[-1] != want:
        raise ProtocolError("crc", f"crc {buf[-1]:#04x}, computed {want:#04x}")
    return Frame(cmd_byte & 0x3F, seq, buf[HEADER:HEADER + length], cmd_byte & 0xC0, ver)


def decode_stream(buf):
    """Decode a serial byte stream with the resync rule (§7.1).

    The end of buf is the end of the stream: a candidate frame still
    incomplete there is abandoned like an idle line (rule 5) and scanning
    resumes after its 0x55. Returns (frames as wire bytes, stats) where
    stats counts skipped bytes (every byte not delivered inside a frame,
    including the 0x55 of a rejected or abandoned candidate), badcrc and
    toolong candidates.
    """
    buf = bytes(buf)
    frames, stats = [], {"skipped": 0, "badcrc": 0, "toolong": 0}
    i, n = 0, len(buf)
    while i < n:
        if buf[i] != MAGIC:  # rule 1
            stats["skipped"] += 1
            i += 1
            continue
        end = None
        if n - i >= HEADER:  # rule 2: the whole 6-byte header is read first
            length = struct.unpack_from(">H", buf, i + 2)[0]
            if length > MAX_DATA:
                stats["toolong"] += 1
            elif n - i >= HEADER + length + 1:  # rule 3
                if crc8(buf[i + 1:i + HEADER + length]) == buf[i + HEADER + length]:
                    end = i + HEADER + length + 1
                else:
                    stats["badcrc"] += 1
        if end is None:  # rejected or incomplete: resume after this 0x55
            stats["skipped"] += 1
            i += 1
            continue
        frames.append(buf[i:end])  # rule 4
        i = end
    return frames, stats


# ------------------------------------------------------ message bodies (§11)

def _utf8(b, what):
    try:
        bytes(b).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError("malformed", f"{what} is not UTF-8: {e}") from None
    return bytes(b)


def _need(cond, detail):
    if not cond:
        raise ProtocolError("malformed", detail)


# Fixed leading fields of each body: (name, struct code).
_FIXED = {
    "HELLO": [("min_version", "B"), ("max_version", "B"), ("max_data", "H"),
              ("features", "H"), ("window", "B"), ("boot_nonce", "I")],
    "WELCOME": [("version", "B"), ("max_data", "H"), ("features", "H"), ("window", "B"),
                ("heartbeat_ms", "H"), ("max_message", "H"), ("daemon_nonce", "I")],
    "TOKEN": [("chunk", "H")],
    "DONE": [("chunk", "H"), ("reason", "B"), ("tokens", "I"), ("prompt_tokens", "I"),
             ("ttft_ms", "I"), ("duration_ms", "I"), ("text_bytes", "I"), ("text_crc32c", "I")],
    "ERROR": [("code", "B"), ("flags", "B"), ("chunk", "H")],
    "ACK": [("next", "H"), ("window", "B")],
    "NACK": [("reason", "B")],
    "STATUS_REPLY": [("state", "B"), ("load", "B"), ("queue", "B")],
    "PING": [], "PONG": [], "CANCEL": [], "STATUS": [], "BYE": [],
}

# INFER options (§11.4): name -> (type, kind); kind is a struct code for
# fixed-size integers, (lo, hi) for a UTF-8 string, or "" for an empty value.
INFER_OPTIONS = {
    "model": (0x01, (1, 128)), "max_tokens": (0x02, "H"), "temperature": (0x03, "H"),
    "seed": (0x04, "I"), "top_k": (0x05, "H"), "top_p": (0x06, "H"), "min_p": (0x07, "H"),
    "repeat_penalty": (0x08, "H"), "new_chat": (0x09, ""), "system": (0x0A, (1, 255)),
    "deadline_ms": (0x0B, "I"), "context": (0x0C, "I"),
    # Critical (§11.4.1): a daemon that does not know them refuses the INFER.
    "schema": (0x81, "B"), "schema_json": (0x82, (1, 253)),
}
_OPTION_BY_TYPE = {t: (name, kind) for name, (t, kind) in INFER_OPTIONS.items()}

DEVICE_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


def _fixed_fmt(cmd):
    return ">" + "".join(code for _, code in _FIXED[cmd])


def decode_body(cmd, body):
    """Parse a §11 body of command `cmd` (a name) into a dict of fields.

    Integers are ints, strings and byte strings are bytes, NACK indexes a
    list, INFER options appear by lowercase name (new_chat as b"") in body
    order, followed by "prompt". Raises ProtocolError("malformed") or, for
    an unknown critical INFER option, ProtocolError("unsupported_option").
    """
    body = bytes(body)
    if cmd == "INFER":
        return _decode_infer(body)
    fmt = _fixed_fmt(cmd)
    size = struct.calcsize(fmt)
    _need(len(body) >= size, f"{cmd} body of {len(body)} bytes < {size}")
    f = dict(zip([name for name, _ in _FIXED[cmd]], struct.unpack_from(fmt, body)))
    rest = body[size:]
    if cmd == "HELLO":
        _need(1 <= len(rest) <= 64, f"device_id of {len(rest)} bytes, not 1..64")
        _need(set(rest) <= DEVICE_ID_CHARS, "device_id outside [A-Za-z0-9._:-]")
        _need(32 <= f["max_data"] <= 256, f"max_data {f['max_data']} not 32..256")
        _need(1 <= f["window"] <= 255, f"window {f['window']} not 1..255")
        _need(not f["features"] & 1 or f["max_data"] >= 48, "SIGN needs max_data >= 48")
        _need(1 <= f["min_version"] <= f["max_version"], "need 1 <= min_version <= max_version")
        f["device_id"] = rest
    elif cmd in ("PING", "PONG"):
        _need(len(rest) <= 8, f"{len(rest)} bytes > 8")
        f["data"] = rest
    elif cmd == "TOKEN":
        _need(len(rest) >= 1, "empty TOKEN text")
        f["text"] = _utf8(rest, "text")
    elif cmd == "ERROR":
        _need(len(rest) <= 64, f"text of {len(rest)} bytes > 64")
        f["text"] = _utf8(rest, "text")
    elif cmd == "NACK":
        _need(1 <= f["reason"] <= 3, f"unknown NACK reason {f['reason']}")
        _need(len(rest) <= 64, f"{len(rest)} indexes > 64")
        _need(rest or f["reason"] != 2, "MISSING without indexes")
        _need(not rest or f["reason"] == 2, "indexes after a reason other than MISSING")
        _need(all(a < b for a, b in zip(rest, rest[1:])), "indexes not ascending")
        f["indexes"] = list(rest)
    elif cmd == "STATUS_REPLY" and rest and rest[0] == STATUS_EXT_MARKER:
        _need(f["load"] <= 100, f"load {f['load']} > 100")
        f.update(_decode_status_ext(rest[1:]))
    elif cmd == "STATUS_REPLY":
        _need(f["load"] <= 100, f"load {f['load']} > 100")
        n = rest[0] if rest else 0
        _need(len(rest) >= 1 + n, f"backend_len {n} past the body")
        f["backend"] = _utf8(rest[1:1 + n], "backend")
        f["model"] = _utf8(rest[1 + n:], "model")
    elif cmd == "ACK":  # the SACK bitmap (§11.9): 0..32 bytes, the last nonzero
        _need(len(rest) <= 32, f"SACK of {len(rest)} bytes > 32")
        _need(not rest or rest[-1] != 0, "SACK bitmap ends in a zero byte")
        f["sack"] = rest
    else:  # fixed-size bodies: WELCOME, DONE, CANCEL, STATUS, BYE
        _need(not rest, f"{len(rest)} trailing bytes after {cmd}")
    return f


# The extended STATUS_REPLY (§11.11): a 0xFF marker where the basic
# layout has backend_len, both names with a length byte, then fields
# (type, len, value); unknown types are skipped, known ones have 20 bytes
# (hits, misses, evictions as u32, bytes as u64) and come at most once.
STATUS_EXT_MARKER = 0xFF
STATUS_FIELDS = {0x01: "kv_cache", 0x02: "response_cache"}


def _decode_status_ext(rest):
    f, i = {"extended": 1}, 0
    for what in ("backend", "model"):
        _need(i < len(rest), f"{what}_len past the body")
        n = rest[i]
        _need(i + 1 + n <= len(rest), f"{what} of {n} bytes past the body")
        f[what] = _utf8(rest[i + 1:i + 1 + n], what)
        i += 1 + n
    while i < len(rest):
        _need(i + 2 <= len(rest), "field header past the body")
        typ, ln = rest[i], rest[i + 1]
        _need(i + 2 + ln <= len(rest), f"field {typ:#04x} past the body")
        val = rest[i + 2:i + 2 + ln]
        i += 2 + ln
        name = STATUS_FIELDS.get(typ)
        if name is None:
            continue  # a newer daemon's field
        _need(name not in f, f"field {name} repeated")
        _need(ln == 20, f"field {name} of {ln} bytes, not 20")
        f[name] = list(struct.unpack(">IIIQ", val))
    return f


def _decode_infer(body):
    _need(len(body) >= 1, "empty INFER body")
    opt_len = body[0]
    _need(len(body) >= 1 + opt_len, f"opt_len {opt_len} past the body")
    opts, prompt = body[1:1 + opt_len], body[1 + opt_len:]
    f, seen, critical, i = {}, set(), None, 0
    while i < len(opts):
        _need(i + 2 <= len(opts), "option header past opt_len")
        typ, ln = opts[i], opts[i + 1]
        _need(i + 2 + ln <= len(opts), f"option {typ:#04x} value past opt_len")
        val = opts[i + 2:i + 2 + ln]
        i += 2 + ln
        if typ not in _OPTION_BY_TYPE:
            if typ >= 0x80 and critical is None:
                critical = typ
            continue  # unknown hints (< 0x80) are skipped
        _need(typ not in seen, f"option {typ:#04x} repeated")  # known types only (§11.4)
        seen.add(typ)
        name, kind = _OPTION_BY_TYPE[typ]
        if kind == "":
            _need(ln == 0, f"{name} with {ln} value bytes")
            f[name] = b""
        elif isinstance(kind, tuple):
            _need(kind[0] <= ln <= kind[1], f"{name} of {ln} bytes, not {kind[0]}..{kind[1]}")
            f[name] = _utf8(val, name)
        else:
            _need(ln == struct.calcsize(kind), f"{name} of {ln} bytes")
            f[name] = struct.unpack(">" + kind, val)[0]
    _need(len(prompt) >= 1, "empty prompt")
    f["prompt"] = _utf8(prompt, "prompt")
    # The whole body is parsed first: a malformed body is MALFORMED even if it
    # also carries an unknown critical option.
    if critical is not None:
        raise ProtocolError("unsupported_option", f"unknown critical option {critical:#04x}")
    return f


def encode_body(cmd, fields):
    """Encode a §11 body from a dict shaped like decode_body's result.

    For INFER the options are written in the dict's order; the result is
    parsed back so only valid bodies are produced.
    """
    if cmd == "INFER":
        opts = b""
        for name, val in fields.items():
            if name == "prompt":
                continue
            typ, kind = INFER_OPTIONS[name]
            v = bytes(val) if kind == "" or isinstance(kind, tuple) else struct.pack(">" + kind, val)
            opts += bytes([typ, len(v)]) + v
        _need(len(opts) <= 255, f"options block of {len(opts)} bytes > 255")
        body = bytes([len(opts)]) + opts + bytes(fields["prompt"])
    else:
        body = struct.pack(_fixed_fmt(cmd), *(fields[name] for name, _ in _FIXED[cmd]))
        if cmd == "HELLO":
            body += bytes(fields["device_id"])
        elif cmd in ("PING", "PONG"):
            body += bytes(fields.get("data", b""))
        elif cmd in ("TOKEN", "ERROR"):
            body += bytes(fields["text"])
        elif cmd == "NACK":
            body += bytes(fields.get("indexes", []))
        elif cmd == "ACK":
            body += bytes(fields.get("sack", b""))
        elif cmd == "STATUS_REPLY" and fields.get("extended"):
            backend, model = bytes(fields["backend"]), bytes(fields["model"])
            body += bytes([STATUS_EXT_MARKER, len(backend)]) + backend + bytes([len(model)]) + model
            for typ, name in sorted(STATUS_FIELDS.items()):
                if name in fields:
                    body += bytes([typ, 20]) + struct.pack(">IIIQ", *fields[name])
        elif cmd == "STATUS_REPLY":
            backend = bytes(fields["backend"])
            _need(len(backend) <= 255, "backend longer than 255 bytes")
            body += bytes([len(backend)]) + backend + bytes(fields["model"])
    decode_body(cmd, body)
    return body


# ---------------------------------------------------------- fragmentation (§6)

def fragment(cmd_byte, seq, body, piece, ver=VERSION):
    """Cut a message body into frames (wire bytes) with piece size `piece`.

    Every message — even a short one — is body ‖ crc32c(body) cut into
    pieces of `piece` bytes, the last holding the rest, each behind an
    (index, count) header with FRAGMENT set (§6). cmd_byte may carry SIGNED; the caller then
    signs each frame and must have chosen piece 15 bytes smaller.
    """
    body = bytes(body)
    if not 1 <= piece <= MAX_DATA - 2:
        raise ValueError(f"piece size {piece} not 1..254")
    blob = body + struct.pack(">I", crc32c(body))
    pieces = [blob[i:i + piece] for i in range(0, len(blob), piece)]
    if len(pieces) > 255:
        raise ProtocolError("too_large", f"{len(pieces)} fragments > 255")
    return [encode_frame(cmd_byte | FRAGMENT, seq, bytes([i, len(pieces)]) + p, ver)
            for i, p in enumerate(pieces)]


class Reassembler:
    """Collects fragments by (command, seq) (§6).

    add() returns the complete body, or None while pieces are missing, and
    raises ProtocolError with class malformed, too_large or bad_checksum
    (the message is then discarded). Timeouts, NACK MISSING and memory
    bounds are left to the caller; missing() lists the missing indexes.
    """

    def __init__(self, max_message=16384):
        self.max_message = max_message
        self.pending = {}  # (cmd, seq) -> {"count", "size", "pieces"}

    def add(self, frame):
        if not frame.flags & FRAGMENT:
            return frame.data
        key = (frame.cmd, frame.seq)
        try:
            return self._add(key, frame.data)
        except ProtocolError:
            self.pending.pop(key, None)
            raise

    def _add(self, key, data):
        _need(len(data) >= 3, "fragment without a piece")
        index, count, piece = data[0], data[1], data[2:]
        _need(count >= 1, "fragment count 0")
        _need(index < count, f"fragment index {index} >= count {count}")
        m = self.pending.setdefault(key, {"count": count, "size": None, "last": None, "pieces": {}})
        _need(count == m["count"], f"fragment count {count}, first said {m['count']}")
        if index in m["pieces"]:
            return None  # duplicate
        if index < count - 1:
            _need(m["size"] in (None, len(piece)), "non-last pieces of different sizes")
            m["size"] = len(piece)
        else:
            m["last"] = len(piece)
        _need(None in (m["size"], m["last"]) or m["last"] <= m["size"], "last piece longer than the others")
        if m["size"] is not None and (count - 1) * m["size"] + 1 - 4 > self.max_message:
            raise ProtocolError("too_large", f"message of {count} x {m['size']} bytes")
        m["pieces"][index] = piece
        if len(m["pieces"]) < count:
            return None
        del self.pending[key]
        blob = b"".join(m["pieces"][i] for i in range(count))
        _need(len(blob) >= 4, "reassembled message shorter than its CRC-32C")
        body, crc = blob[:-4], struct.unpack(">I", blob[-4:])[0]
        if crc32c(body) != crc:
            raise ProtocolError("bad_checksum", f"CRC-32C {crc:#010x}, computed {crc32c(body):#010x}")
        if len(body) > self.max_message:
            raise ProtocolError("too_large", f"message of {len(body)} bytes")
        return body

    def missing(self, cmd, seq):
        m = self.pending.get((cmd, seq))
        return [] if m is None else [i for i in range(m["count"]) if i not in m["pieces"]][:64]


# ---------------------------------------------------------- authentication (§9)

DIR_DEVICE_TO_DAEMON, DIR_DAEMON_TO_DEVICE = 0, 1


def _tag(key, direction, nonce, signed_without_tag):
    """First 8 bytes of HMAC-SHA256 over mac_input (§9.1).

    signed_without_tag is the wire frame up to and including the counter,
    magic included (it is stripped here).
    """
    if len(nonce) != 8:
        raise ValueError("session nonce must be 8 bytes")
    mac_input = b"MCPF" + bytes([direction]) + bytes(nonce) + bytes(signed_without_tag[1:])
    return hmac.new(bytes(key), mac_input, hashlib.sha256).digest()[:8]


def sign_frame(wire, key, direction, nonce, link_id, counter):
    """Sign an unsigned frame (wire bytes): set SIGNED, append the block, redo the crc."""
    f = decode_frame(wire)
    if f.flags & SIGNED:
        raise ValueError("frame is already signed")
    if not 0 <= counter < 1 << 48:
        raise ValueError("counter is a u48")
    data = f.data + bytes([link_id]) + counter.to_bytes(6, "big")
    if len(data) + 8 > MAX_DATA:
        raise ProtocolError("length", "signed data would exceed 256 bytes")
    head = struct.pack(">BBHBB", MAGIC, f.ver, len(data) + 8, f.cmd | f.flags | SIGNED, f.seq)
    unsealed = head + data
    return encode_frame(f.cmd | f.flags | SIGNED, f.seq, data + _tag(key, direction, nonce, unsealed), f.ver)


class ReplayWindow:
    """Highest accepted counter H and a 64-bit map of H-63..H (§9.2)."""

    def __init__(self):
        self.high, self.seen = None, 0  # bit i of seen: counter H - i

    def check(self, counter):
        if self.high is None or counter > self.high:
            return
        d = self.high - counter
        if d >= 64:
            raise ProtocolError("stale", f"counter {counter} below {self.high} - 63")
        if self.seen >> d & 1:
            raise ProtocolError("replay", f"counter {counter} already seen")

    def accept(self, counter):
        self.check(counter)
        if self.high is None or counter > self.high:
            shift = 64 if self.high is None else counter - self.high
            self.seen = ((self.seen << shift) | 1) & (2**64 - 1) if shift < 64 else 1
            self.high = counter
        else:
            self.seen |= 1 << (self.high - counter)


def verify_frame(wire, key, direction, nonce, windows):
    """Verify a signed frame (§9.2); windows maps link_id -> ReplayWindow.

    Returns (Frame without the signature block and SIGNED flag, link_id,
    counter). Raises ProtocolError: a frame class (crc, ...), unsigned,
    badtag, replay or stale.
    """
    f = decode_frame(wire)
    if not f.flags & SIGNED or len(f.data) < SIG_BLOCK:
        raise ProtocolError("unsigned", "SIGNED not set or data shorter than 15 bytes")
    wire = bytes(wire)
    want = _tag(key, direction, nonce, wire[:-9])
    if not hmac.compare_digest(want, wire[-9:-1]):
        raise ProtocolError("badtag", "tag mismatch")
    block = f.data[-SIG_BLOCK:]
    link_id, counter = block[0], int.from_bytes(block[1:7], "big")
    windows.setdefault(link_id, ReplayWindow()).accept(counter)
    return Frame(f.cmd, f.seq, f.data[:-SIG_BLOCK], f.flags & ~SIGNED, f.ver), link_id, counter
