#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Check MCPFrame test vectors (docs/protocol.md §15) against mcpframe.py.

usage: python3 check_vectors.py PATH/vectors.txt
       python3 check_vectors.py --selftest
"""

import os
import random
import sys

sys.dont_write_bytecode = True  # keep the repo free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mcpframe as m  # noqa: E402

INT_FIELDS = set("""min_version max_version max_data features window boot_nonce version
    heartbeat_ms max_message daemon_nonce chunk reason tokens prompt_tokens ttft_ms
    duration_ms text_bytes text_crc32c code flags next state load queue max_tokens
    temperature seed top_k top_p min_p repeat_penalty deadline_ms context schema extended""".split())
HEX_FIELDS = {"device_id", "data", "text", "backend", "model", "system", "prompt", "new_chat", "sack", "schema_json"}
LIST_FIELDS = {"indexes", "kv_cache", "response_cache"}


class Failure(Exception):
    pass


def parse_line(line):
    words = line.split()
    kind, fields = words[0], {}
    for w in words[1:]:
        if "=" not in w:
            raise Failure(f"field without '=': {w!r}")
        k, v = w.split("=", 1)
        if k in fields:
            raise Failure(f"field {k} repeated")
        fields[k] = v
    return kind, fields


def need(fields, *keys):
    missing = [k for k in keys if k not in fields]
    if missing:
        raise Failure(f"missing field(s) {', '.join(missing)}")
    return [fields[k] for k in keys]


def hexlist(v):
    return [bytes.fromhex(x) for x in v.split(",")] if v else []


def typed(name, v):
    if name in INT_FIELDS:
        return int(v)
    if name in HEX_FIELDS:
        return bytes.fromhex(v)
    if name in LIST_FIELDS:
        return [int(x) for x in v.split(",")] if v else []
    raise Failure(f"unknown message field {name!r}")


def show(v):
    if isinstance(v, (bytes, bytearray)):
        return v.hex() or "(empty)"
    if isinstance(v, list):
        return ",".join(str(x) for x in v) or "(empty)"
    if isinstance(v, m.Frame):
        return f"ver={v.ver} cmd={v.cmd} flags={v.flags} seq={v.seq} data={v.data.hex()}"
    return str(v)


def expect(what, got, want):
    if got != want:
        raise Failure(f"{what}: got {show(got)}, want {show(want)}")


def expect_error(what, fn, err):
    try:
        got = fn()
    except m.ProtocolError as e:
        if e.cls != err:
            raise Failure(f"{what}: error class {e.cls} ({e}), want {err}") from None
        return
    raise Failure(f"{what}: accepted ({show(got)}), want error {err}")


def ok_flag(fields):
    v = need(fields, "ok")[0]
    if v not in ("0", "1"):
        raise Failure(f"ok={v}")
    return v == "1"


# ------------------------------------------------------------------ kinds

def check_crc(f):
    alg, data, out = need(f, "alg", "in", "out")
    if alg == "crc8":
        expect("crc8", f"{m.crc8(bytes.fromhex(data)):02x}", out.lower())
    elif alg == "crc32c":
        expect("crc32c", f"{m.crc32c(bytes.fromhex(data)):08x}", out.lower())
    else:
        raise Failure(f"unknown crc alg {alg}")


def check_frame(f):
    wire = bytes.fromhex(need(f, "hex")[0])
    if not ok_flag(f):
        return expect_error("decode", lambda: m.decode_frame(wire), need(f, "err")[0])
    ver, cmd, flags, seq, data = need(f, "ver", "cmd", "flags", "seq", "data")
    want = m.Frame(int(cmd), int(seq), bytes.fromhex(data), int(flags), int(ver))
    try:
        got = m.decode_frame(wire)
    except m.ProtocolError as e:
        raise Failure(f"decode rejected it: {e}") from None
    for k in m.Frame.__slots__:
        expect(f"decoded {k}", getattr(got, k), getattr(want, k))
    expect("encoded", want.encode(), wire)


def check_stream(f):
    data, frames, skipped, badcrc, toolong = need(f, "hex", "frames", "skipped", "badcrc", "toolong")
    got, stats = m.decode_stream(bytes.fromhex(data))
    expect("frames", [x.hex() for x in got], [x.hex() for x in hexlist(frames)])
    expect("skipped", stats["skipped"], int(skipped))
    expect("badcrc", stats["badcrc"], int(badcrc))
    expect("toolong", stats["toolong"], int(toolong))


def check_msg(f):
    cmd, body = need(f, "cmd", "body")
    if cmd not in m.COMMANDS:
        raise Failure(f"unknown command {cmd}")
    body = bytes.fromhex(body)
    if not ok_flag(f):
        return expect_error("decode", lambda: m.decode_body(cmd, body), need(f, "err")[0])
    want = {k: typed(k, v) for k, v in f.items() if k not in ("name", "cmd", "body", "ok")}
    try:
        got = m.decode_body(cmd, body)
    except m.ProtocolError as e:
        raise Failure(f"decode rejected it: {e}") from None
    for k in sorted(set(got) | set(want)):
        expect(f"decoded {k}", got.get(k, "(absent)"), want.get(k, "(absent)"))
    try:
        enc = m.encode_body(cmd, want)
    except (m.ProtocolError, KeyError, TypeError, ValueError) as e:
        raise Failure(f"encode failed: {e!r}") from None
    expect("encoded body", enc, body)


def check_frag(f):
    cmd, seq, piece, body, frames = need(f, "cmd", "seq", "piece", "body", "frames")
    if cmd not in m.COMMANDS:
        raise Failure(f"unknown command {cmd}")
    body, frames = bytes.fromhex(body), hexlist(frames)
    got = m.fragment(m.COMMANDS[cmd], int(seq), body, int(piece))
    expect("frames", [x.hex() for x in got], [x.hex() for x in frames])
    r, joined = m.Reassembler(max_message=65535), None
    for i, w in enumerate(frames):
        try:
            joined = r.add(m.decode_frame(w))
        except m.ProtocolError as e:
            raise Failure(f"joining frame {i}: {e}") from None
        if joined is not None and i != len(frames) - 1:
            raise Failure(f"message complete after frame {i} of {len(frames)}")
    expect("joined body", joined, body)


def check_sign(f):
    key, d, nonce, signed = need(f, "key", "dir", "nonce", "signed")
    key, d, nonce, signed = bytes.fromhex(key), int(d), bytes.fromhex(nonce), bytes.fromhex(signed)
    if not ok_flag(f):
        windows = {}
        after = [int(x) for x in need(f, "after")[0].split(",") if x]
        if after:
            try:
                fr = m.decode_frame(signed)
                link = fr.data[-m.SIG_BLOCK] if len(fr.data) >= m.SIG_BLOCK else 0
            except m.ProtocolError:
                link = 0
            if "link" in f:
                link = int(f["link"])
            w = windows.setdefault(link, m.ReplayWindow())
            for c in after:
                try:
                    w.accept(c)
                except m.ProtocolError as e:
                    raise Failure(f"building the window from after=: {e}") from None
        return expect_error("verify", lambda: m.verify_frame(signed, key, d, nonce, windows),
                            need(f, "err")[0])
    link, counter, unsigned = need(f, "link", "counter", "unsigned")
    unsigned = bytes.fromhex(unsigned)
    expect("signed", m.sign_frame(unsigned, key, d, nonce, int(link), int(counter)), signed)
    try:
        fr, lk, ctr = m.verify_frame(signed, key, d, nonce, {})
    except m.ProtocolError as e:
        raise Failure(f"verify rejected it: {e}") from None
    expect("verified frame", fr.encode(), unsigned)
    expect("verified link/counter", (lk, ctr), (int(link), int(counter)))


KINDS = {"crc": check_crc, "frame": check_frame, "stream": check_stream,
         "msg": check_msg, "frag": check_frag, "sign": check_sign}


def check_file(path):
    checked = failed = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            checked += 1
            name = f"line {lineno}"
            try:
                kind, fields = parse_line(line)
                name = fields.get("name", name)
                if "name" not in fields:
                    raise Failure("vector has no name=")
                if kind not in KINDS:
                    raise Failure(f"unknown vector kind {kind!r}")
                KINDS[kind](fields)
            except Failure as e:
                failed += 1
                print(f"FAIL {name} (line {lineno}): {e}")
            except Exception as e:  # a crash on a vector is a failure too
                failed += 1
                print(f"FAIL {name} (line {lineno}): {type(e).__name__}: {e}")
    print(f"interop: {checked} vectors checked, {failed} failed")
    return 1 if failed or not checked else 0


# ------------------------------------------------------------------ self-test

SAMPLES = {
    "HELLO": {"min_version": 1, "max_version": 1, "max_data": 128, "features": 0, "window": 2,
              "boot_nonce": 0xDEADBEEF, "device_id": b"esp32-kitchen"},
    "WELCOME": {"version": 1, "max_data": 256, "features": 0, "window": 255, "heartbeat_ms": 5000,
                "max_message": 16384, "daemon_nonce": 0x01020304},
    "PING": {"data": b"ping"}, "PONG": {"data": b""},
    "INFER": {"max_tokens": 16, "seed": 42, "model": "llama3".encode(), "new_chat": b"",
              "prompt": "Hi \u00e9".encode()},
    "TOKEN": {"chunk": 3, "text": "h\u00e9llo".encode()},
    "DONE": {"chunk": 9, "reason": 0, "tokens": 8, "prompt_tokens": 12, "ttft_ms": 140,
             "duration_ms": 900, "text_bytes": 40, "text_crc32c": 0xE3069283},
    "ERROR": {"code": 6, "flags": 1, "chunk": 0, "text": b"busy"},
    "CANCEL": {}, "STATUS": {}, "BYE": {},
    "ACK": {"next": 1, "window": 4, "sack": b"\xa1"},
    "NACK": {"reason": 2, "indexes": [0, 3, 7]},
    "STATUS_REPLY": {"state": 0, "load": 50, "queue": 1, "backend": b"llama.cpp", "model": b"qwen"},
}


def check_exchange(doc, check):
    """§14: every frame of the example exchange decodes and parses, and DONE's
    text_bytes / text_crc32c match the TOKEN text."""
    with open(doc, encoding="utf-8") as fh:
        text = fh.read()
    if "<!-- examples:begin -->" not in text:
        print("note §14 examples not found in docs/protocol.md; not checked")
        return
    block = text.split("<!-- examples:begin -->")[1].split("<!-- examples:end -->")[0]
    frames, title = [], None
    for line in block.splitlines():
        if line[:3] in ("D→M", "M→D"):
            title = line.split()
            frames.append((title[1], int(title[2].split("=")[1]), bytearray()))
        elif line.startswith("    ") and frames:
            frames[-1][2].extend(bytes.fromhex(line.strip()))
    tokens = b""
    for name, seq, wire in frames:
        try:
            f = m.decode_frame(wire)
            data, want_flags = f.data, 0
            if name == "INFER":  # always a message of fragments (§6)
                data, want_flags = m.Reassembler().add(f), m.FRAGMENT
            fields = m.decode_body(name, data)
            ok = m.COMMAND_NAMES.get(f.cmd) == name and f.seq == seq and f.flags == want_flags
            ok = ok and m.encode_body(name, fields) == data
            tokens += fields["text"] if name == "TOKEN" else b""
            if name == "DONE":
                ok = ok and (fields["text_bytes"], fields["text_crc32c"]) == (len(tokens), m.crc32c(tokens))
            check(f"§14 {name} seq={seq}", ok, f"{f} {fields}")
        except m.ProtocolError as e:
            check(f"§14 {name} seq={seq}", False, str(e))
    check("§14 has the frames of a whole exchange", len(frames) >= 9, str(len(frames)))


def selftest():
    results = []

    def check(what, cond, detail=""):
        results.append(bool(cond))
        print(f"{'ok  ' if cond else 'FAIL'} {what}{': ' + detail if detail and not cond else ''}")

    check("CRC-8/AUTOSAR check value 0xDF", m.crc8(b"123456789") == 0xDF, f"{m.crc8(b'123456789'):#04x}")
    check("CRC-32C check value 0xE3069283", m.crc32c(b"123456789") == 0xE3069283,
          f"{m.crc32c(b'123456789'):#010x}")

    # §2.2: the document's PING example, read from docs/protocol.md when the
    # checkout has it. Its crc byte is checked, not trusted.
    ours = m.encode_frame(0x03, 7, b"ping")
    doc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../docs/protocol.md")
    spec = None
    if os.path.exists(doc):
        with open(doc, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("55 01 00 04 03 07 "):
                    spec = bytes.fromhex(line.strip())
    if spec is None:
        print("note §2.2 example not found in docs/protocol.md; not checked")
    else:
        check("§2.2 PING example header and data", spec[:-1] == ours[:-1], spec.hex())
        check(f"§2.2 PING example crc byte {spec[-1]:#04x} = CRC-8/AUTOSAR(01 00 04 03 07 70 69 6e 67)",
              spec[-1] == ours[-1], f"computed {ours[-1]:#04x}")
    if os.path.exists(doc):
        check_exchange(doc, check)
    f = m.decode_frame(ours)
    check("decode our PING", (f.ver, f.cmd, f.flags, f.seq, f.data) == (1, 3, 0, 7, b"ping"))

    # Datagram error classes.
    bad = {"short": ours[:6], "magic": b"\x54" + ours[1:], "crc": ours[:-1] + bytes([ours[-1] ^ 1]),
           "trailing": ours + b"\x00", "length": b"\x55\x01\x01\x01\x03\x07" + bytes(258)}
    bad["short2"] = ours[:-1]
    for cls, wire in bad.items():
        try:
            m.decode_frame(wire)
            check(f"datagram error {cls}", False, "accepted")
        except m.ProtocolError as e:
            check(f"datagram error {cls}", e.cls == cls.rstrip("2"), e.cls)

    # Byte stream with garbage, a false start inside a frame, a too-long header.
    a, b = m.encode_frame(0x0A, 1, b"\x00\x01\x04"), m.encode_frame(0x03, 2, b"\x55\x55")
    stream = b"\x00\x13" + b"\x55\x01\xff\xff" + a + b"\x55\x01\x00\x05\x03" + b + b"\x55\x01"
    frames, st = m.decode_stream(stream)
    check("stream recovers frames", frames == [a, b], str(frames))
    check("stream counters", st["toolong"] == 1 and st["badcrc"] == 1, str(st))
    check("stream skipped = bytes not in frames",
          st["skipped"] == len(stream) - len(a) - len(b), str(st))
    # A false 0x55 whose claimed frame contains a real one.
    inner = m.encode_frame(0x03, 9, b"")
    frames, st = m.decode_stream(b"\x55\x01\x00\x03\x03" + inner + b"\x99")
    check("stream resumes after a false 0x55", frames == [inner], f"{frames} {st}")

    # Every message body round-trips.
    for cmd, fields in SAMPLES.items():
        body = m.encode_body(cmd, fields)
        check(f"{cmd} body round trip", m.decode_body(cmd, body) == fields, body.hex())
    infer = m.encode_body("INFER", SAMPLES["INFER"])
    for what, body, cls in [
        ("INFER unknown hint skipped", b"\x03\x40\x01\x00Hi", None),
        ("INFER unknown critical option", b"\x02\x80\x00Hi", "unsupported_option"),
        ("INFER repeated option", b"\x08\x02\x02\x00\x01\x02\x02\x00\x01Hi", "malformed"),
        ("INFER wrong option length", b"\x03\x02\x01\x00Hi", "malformed"),
        ("INFER empty prompt", b"\x00", "malformed"),
        ("INFER opt_len past the body", b"\x09\x02\x02\x00\x01", "malformed"),
        ("ACK trailing byte", None, "malformed"),
        ("HELLO short", infer[:5], "malformed"),
    ]:
        cmd = "ACK" if what.startswith("ACK") else "HELLO" if what.startswith("HELLO") else "INFER"
        if body is None:
            body = m.encode_body("ACK", SAMPLES["ACK"]) + b"\x00"  # a SACK byte of 0
        try:
            got = m.decode_body(cmd, body)
            check(what, cls is None, f"accepted {got}")
        except m.ProtocolError as e:
            check(what, e.cls == cls, e.cls)

    # Fragmentation: cut, shuffle, duplicate, rejoin; corrupt; too large.
    rnd = random.Random(1)
    for size, piece in [(3, 1), (300, 254), (1000, 37), (64766, 254), (5, 3), (6, 3)]:
        body = bytes(rnd.randrange(256) for _ in range(size))
        wires = m.fragment(m.COMMANDS["INFER"], 5, body, piece)
        order = wires + wires[:2]
        rnd.shuffle(order)
        r, out = m.Reassembler(65535), None
        for w in order:
            out = r.add(m.decode_frame(w)) or out
        check(f"fragment {size} bytes by {piece}: {len(wires)} frames rejoin", out == body)
    wires = m.fragment(m.COMMANDS["INFER"], 5, bytes(600), 200)
    f = m.decode_frame(wires[1])
    corrupted = m.Frame(f.cmd, f.seq, f.data[:-1] + b"\x01", f.flags)
    for what, frames, cls in [
        ("bad CRC-32C", [m.decode_frame(wires[0]), corrupted] + [m.decode_frame(w) for w in wires[2:]],
         "bad_checksum"),
        ("count 1", [m.Frame(5, 1, b"\x00\x01abc", m.FRAGMENT)], "malformed"),
        ("index >= count", [m.Frame(5, 1, b"\x02\x02abc", m.FRAGMENT)], "malformed"),
        ("count changes", [m.Frame(5, 1, b"\x00\x03abc", m.FRAGMENT), m.Frame(5, 1, b"\x01\x04abc", m.FRAGMENT)],
         "malformed"),
        ("piece sizes differ", [m.Frame(5, 1, b"\x00\x03abc", m.FRAGMENT), m.Frame(5, 1, b"\x01\x03ab", m.FRAGMENT)],
         "malformed"),
        ("last piece longer", [m.Frame(5, 1, b"\x00\x03abc", m.FRAGMENT), m.Frame(5, 1, b"\x02\x03abcd", m.FRAGMENT)],
         "malformed"),
        ("too large", [m.Frame(5, 1, bytes([0, 255]) + bytes(100), m.FRAGMENT)], "too_large"),
    ]:
        r = m.Reassembler(16384)
        try:
            for fr in frames:
                r.add(fr)
            check(f"reassembly {what}", False, "accepted")
        except m.ProtocolError as e:
            check(f"reassembly {what}", e.cls == cls, e.cls)

    # Signing, verification and the replay window.
    key, nonce = bytes(range(32)), bytes.fromhex("0102030405060708")
    ping = m.encode_frame(0x03, 7, b"ping")
    s = m.sign_frame(ping, key, 0, nonce, 1, 1000)
    fr, link, ctr = m.verify_frame(s, key, 0, nonce, {})
    check("sign/verify round trip", fr.encode() == ping and (link, ctr) == (1, 1000))
    check("signed length", len(s) == len(ping) + 15 and s[4] & 0x80)
    for what, args, cls in [
        ("wrong dir", (s, key, 1, nonce, {}), "badtag"),
        ("wrong key", (s, bytes(32), 0, nonce, {}), "badtag"),
        ("unsigned frame", (ping, key, 0, nonce, {}), "unsigned"),
    ]:
        try:
            m.verify_frame(*args)
            check(f"verify {what}", False, "accepted")
        except m.ProtocolError as e:
            check(f"verify {what}", e.cls == cls, e.cls)
    w = m.ReplayWindow()
    for c in (100, 50, 37, 99):
        w.accept(c)
    for c, cls in [(100, "replay"), (37, "replay"), (36, "stale"), (38, None), (164, None), (100, "stale"),
                   (101, None), (164, "replay")]:
        try:
            w.accept(c)
            check(f"window counter {c}", cls is None, "accepted")
        except m.ProtocolError as e:
            check(f"window counter {c}", e.cls == cls, e.cls)

    failed = results.count(False)
    print(f"selftest: {len(results)} checks, {failed} failed")
    return 1 if failed else 0


def main(argv):
    if len(argv) == 2 and argv[1] == "--selftest":
        return selftest()
    if len(argv) == 2:
        return check_file(argv[1])
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
