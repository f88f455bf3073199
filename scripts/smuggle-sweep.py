#!/usr/bin/env python3
"""Request-smuggling sweep of fetchproxy's request framing.

Starts a raw origin (a socket server in this script that logs every byte it
receives and answers each request it can parse with a short 200 naming the
request target) and the proxy binary, then sends payloads in the classes of
the published request-smuggling lists through the proxy, each on a fresh
connection:

  te-mutation     defparam/smuggler's Transfer-Encoding configs: a byte before
                  the name, after the name, after the colon, after the value
                  (every control byte and obs-text byte), and its named ones
                  (tabs, vertical tab, form feed, NUL, CR, bare LF, case,
                  quotes, commas, duplicates, spellings of "chunked",
                  Transfer_Encoding, line folding)
  te-permutation  http-request-smuggler's H1 DesyncBox permutations applied
                  to Transfer-Encoding
  cl-permutation  the same permutations and the CL-* ones (+N, -N, padding,
                  N.0, Ne0, "0, N", ...) applied to Content-Length, alone and
                  next to a plain Content-Length (CL.0, CL.CL)
  classic         CL.TE, TE.CL, TE.TE, CL.CL, CL.0 on forwarded methods,
                  Transfer-Encoding in HTTP/1.0, framing fields in Connection
  chunk-size      ChunkSizeScan: leading zeros, hex case, overflow, negative,
                  0x, whitespace, extensions, wrong sizes, last-chunk spellings
  trailers        request lines, obs-fold, NUL, bare LF and framing fields in
                  the trailer section
  line-ends       http-garden / smugglex: bare LF and bare CR line ends,
                  leading empty lines, obs-fold, NUL in the head
  host            more than one Host, empty Host, Host with a path or junk,
                  no Host, absolute-form target against a different Host
  version-expect  Expect: 100-continue, HTTP/1.0 keep-alive, version and
                  request-line spellings, the HTTP/2 preface
  own-answer      bodies of requests the proxy answers itself (GET/HEAD
                  /healthz and /metrics, OPTIONS with Max-Forwards: 0, and
                  errors: 400, 403, 501, 502, 508) under every framing
  upgrade         smugglex's H2C class: Upgrade: h2c / websocket, CONNECT
                  with a body
  pipelined       the follow-up in the same write as the payload, after
                  bodies of every framing, forwarded or answered by the proxy
  split           the payloads of classic, chunk-size, trailers, line-ends,
                  host, pipelined and part of own-answer again, their first
                  600 bytes 1 to 7 per write: the outcome must match the
                  one-write outcome
  control         plain requests that must come out forwarded-consistent

Every payload hides a second request, GET http://ORIGIN/smuggled-<n>, in or
after the first request's body. The client then sends a benign follow-up
request on the same connection. Each exchange is judged against a strict
reading of RFC 9112 (CRLF only, no obs-fold, one Host, no Content-Length next
to Transfer-Encoding, chunked as the only coding: what Apache httpd's
"HttpProtocolOptions Strict" accepts). A generated payload whose strict
reading makes the hidden request one of the client's own (a plain pipelined
request) tests nothing and is dropped before the run.

Outcome classes:
  DESYNC               the origin received a /smuggled- request, or the client
                       got more responses than it had sent requests, or a
                       response that answers a request it did not send
  rejected             the proxy refused the request (4xx, or 501/505/508),
                       nothing reached the origin
  rejected-mid-body    refused after the head and part of a chunked body
                       were forwarded (the upstream connection is closed)
  forwarded-consistent the origin got the first request with the body the
                       strict reading gives, and nothing smuggled
  forwarded-mismatch   the origin got the first request with another body
  answered-by-proxy    the proxy answered itself (own endpoint, OPTIONS);
                       the body was consumed or the connection closed
  proxy-error          another 5xx from the proxy
  closed               the proxy closed the connection without an answer
  timeout              no answer within the exchange's time

Usage:
  scripts/smuggle-sweep.py                      # against target/release/fetchproxy
  scripts/smuggle-sweep.py --proxy-bin PATH --json out.jsonl
  scripts/smuggle-sweep.py --only own-answer,trailers --verbose
  scripts/smuggle-sweep.py --list               # families and payload counts

Exit status: 0 no desync, 1 at least one DESYNC, 2 the sweep could not run
in full (proxy did not start, controls failed, time budget ran out).
Python 3 standard library only. Every address connected to, by the script
or (through --allow-dest 127.0.0.0/8) by the proxy, is on 127.0.0.1.
"""

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from queue import Empty, Queue
from typing import Callable

CRLF = b"\r\n"

# Time bounds. Every socket operation has a timeout; an exchange lasts at most
# FIRST_WAIT + FOLLOW_WAIT plus connect and send time.
CONNECT_TIMEOUT = 3.0
SEND_TIMEOUT = 3.0
FIRST_WAIT = 2.5  # for the answer to the payload
FOLLOW_WAIT = 2.5  # for the answer to the follow-up
QUIET = 0.3  # silence after an answer before the next step
ORIGIN_IDLE = 30.0  # the origin closes a connection silent this long
SETTLE_MAX = 8.0  # waiting for the origin to go quiet after the run
DEFAULT_BUDGET = 280.0  # the whole run, seconds

FAMILIES = [
    "control",
    "classic",
    "te-mutation",
    "te-permutation",
    "cl-permutation",
    "chunk-size",
    "trailers",
    "line-ends",
    "host",
    "version-expect",
    "own-answer",
    "upgrade",
    "pipelined",
    "split",
]

CLASSES = [
    "DESYNC",
    "rejected",
    "rejected-mid-body",
    "forwarded-consistent",
    "forwarded-mismatch",
    "answered-by-proxy",
    "proxy-error",
    "closed",
    "timeout",
]

# Names of the requests of exchange n as the origin sees them.
TAG_RE = re.compile(rb"/(?:s(\d+)-(first|follow)|smuggled-(\d+))")


def escape(data: bytes, limit: int | None = None) -> str:
    """Bytes as printable text: CR, LF, tab, backslash and bytes outside
    printable ASCII escaped as in a Python bytes literal; a run of 32 or more
    of one byte folded as <N x b>, so that 70 KB of padding stays readable."""
    out = []
    i = 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i]:
            j += 1
        if j - i >= 32:
            out.append(f"<{j - i} x {escape(data[i:i + 1])}>")
            i = j
            continue
        b = data[i]
        if b == 0x0D:
            out.append("\\r")
        elif b == 0x0A:
            out.append("\\n")
        elif b == 0x09:
            out.append("\\t")
        elif b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
        i += 1
    text = "".join(out)
    if limit is not None and len(text) > limit:
        return text[:limit] + f"...({len(data)} bytes)"
    return text


# ---------------------------------------------------------------------------
# The strict reading: RFC 9112 as Apache httpd's HttpProtocolOptions Strict
# reads it. It judges payloads; it does not model the proxy.
# ---------------------------------------------------------------------------

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TOKEN_RE = re.compile(TOKEN)
QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# RFC 9112 §7.1.1: chunk-size [ chunk-ext ] CRLF, BWS around ";" and "=".
CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN + rb"|" + QUOTED + rb"))?)*)"
)
# RFC 9110 §7.2 / RFC 3986 §3.2.2: uri-host [ ":" port ].
HOST_RE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::[0-9]*)?")
ABSOLUTE_RE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.S)
VERSION_RE = re.compile(rb"HTTP/1\.([0-9])")
MAX_SIZE = 1 << 63


class Reject(Exception):
    """The strict reading refuses the message."""


@dataclass
class Reading:
    """The strict reading of a payload: accepted (one request, its decoded
    body, and any bytes after it) or rejected with a reason."""

    verdict: str
    reason: str = ""
    method: str = ""
    target: str = ""
    body: bytes = b""
    keep_alive: bool = False
    rest: bytes = b""


def strict_reading(data: bytes) -> Reading:
    try:
        return _read_request(data)
    except Reject as err:
        return Reading("reject", str(err))


def _read_request(data: bytes) -> Reading:
    pos = 0
    # RFC 9112 §2.2: empty lines (CRLF) before the request line are ignored.
    while data.startswith(CRLF, pos):
        pos += 2
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        raise Reject("head does not end in CRLF CRLF")
    lines = data[pos:end].split(CRLF)
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise Reject("bare CR or LF in the head")
    method, target, version = _request_line(lines[0])
    fields = [_field(line, "header") for line in lines[1:]]
    _check_host(method, target, version, fields)
    body, pos = _read_body(data, end + 4, version, fields)
    connection = {e.lower() for v in _values(fields, b"connection") for e in _elements(v)}
    keep_alive = b"close" not in connection and (version == "1.1" or b"keep-alive" in connection)
    return Reading(
        "accept",
        method=method.decode(),
        target=target.decode(),
        body=body,
        keep_alive=keep_alive,
        rest=data[pos:],
    )


def _request_line(line: bytes) -> tuple[bytes, bytes, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Reject("request line is not method SP target SP version")
    method, target, version = parts
    if not TOKEN_RE.fullmatch(method):
        raise Reject("invalid method")
    if not target or any(b < 0x21 or b > 0x7E for b in target):
        raise Reject("invalid byte in the request target")
    if b"#" in target:
        # RFC 9112 §3.2: origin-form and absolute-form carry no fragment.
        raise Reject("fragment in the request target")
    m = VERSION_RE.fullmatch(version)
    if not m:
        raise Reject("not HTTP/1.x")
    # RFC 9110 §2.5: a higher minor version is read as the highest we know.
    return method, target, "1.0" if m.group(1) == b"0" else "1.1"


def _field(line: bytes, where: str) -> tuple[bytes, bytes]:
    # RFC 9112 §5.2 (obs-fold), §5.1 (no whitespace before the colon).
    if line[:1] in (b" ", b"\t"):
        raise Reject(f"obs-fold in the {where}")
    name, colon, value = line.partition(b":")
    if not colon:
        raise Reject(f"{where} line without a colon")
    if not TOKEN_RE.fullmatch(name):
        raise Reject(f"invalid {where} field name")
    value = value.strip(b" \t")
    if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
        raise Reject(f"control byte in a {where} field value")
    return name.lower(), value


def _values(fields, name: bytes) -> list[bytes]:
    return [v for n, v in fields if n == name]


def _elements(value: bytes) -> list[bytes]:
    # RFC 9110 §5.6.1: empty list elements are ignored.
    return [e.strip(b" \t") for e in value.split(b",") if e.strip(b" \t")]


def _check_host(method: bytes, target: bytes, version: str, fields) -> None:
    hosts = _values(fields, b"host")
    absolute = ABSOLUTE_RE.fullmatch(target)
    if not target.startswith(b"/") and target != b"*" and method != b"CONNECT":
        if not absolute or absolute.group(1).lower() not in (b"http", b"https"):
            raise Reject("request target is not origin-form or an http(s) URL")
        authority = absolute.group(2)
        # RFC 9110 §4.2.4: userinfo in an http(s) URL is an error.
        if b"@" in authority or not HOST_RE.fullmatch(authority):
            raise Reject("invalid authority in the request target")
    # RFC 9112 §3.2: exactly one valid Host in HTTP/1.1, at most one in 1.0.
    if len(hosts) > 1:
        raise Reject("more than one Host")
    if not hosts:
        if version == "1.1":
            raise Reject("no Host in an HTTP/1.1 request")
        return
    if hosts[0] == b"":
        if absolute:
            raise Reject("empty Host with a target that names a host")
        return
    if not HOST_RE.fullmatch(hosts[0]):
        raise Reject("invalid Host")


def _read_body(data: bytes, pos: int, version: str, fields) -> tuple[bytes, int]:
    te = _values(fields, b"transfer-encoding")
    cl = _values(fields, b"content-length")
    if te:
        # RFC 9112 §6.1 and §6.3: Transfer-Encoding in 1.0, or next to
        # Content-Length, is faulty framing; chunked must be the final (and,
        # for a proxy that decodes no other coding, the only) coding.
        if version == "1.0":
            raise Reject("Transfer-Encoding in an HTTP/1.0 request")
        if cl:
            raise Reject("both Content-Length and Transfer-Encoding")
        codings = [e for v in te for e in _elements(v)]
        if [c.lower() for c in codings] != [b"chunked"]:
            raise Reject("transfer codings other than a single chunked")
        return _read_chunked(data, pos)
    if cl:
        # RFC 9112 §6.3: a list of identical lengths is one length.
        lengths = {e for v in cl for e in v.split(b",")}
        lengths = {e.strip(b" \t") for e in lengths}
        if len(lengths) != 1:
            raise Reject("differing Content-Length values")
        value = lengths.pop()
        if not value.isdigit() or int(value) >= MAX_SIZE:
            raise Reject("invalid Content-Length")
        n = int(value)
        if len(data) < pos + n:
            raise Reject("body shorter than its Content-Length")
        return data[pos:pos + n], pos + n
    return b"", pos


def _read_chunked(data: bytes, pos: int) -> tuple[bytes, int]:
    body = bytearray()
    while True:
        eol = data.find(CRLF, pos)
        if eol < 0:
            raise Reject("chunk-size line does not end in CRLF")
        line = data[pos:eol]
        m = CHUNK_LINE_RE.fullmatch(line)
        if not m:
            raise Reject("invalid chunk-size line")
        size = int(m.group(1), 16)
        if size >= MAX_SIZE:
            raise Reject("chunk size out of range")
        pos = eol + 2
        if size == 0:
            break
        if len(data) < pos + size + 2:
            raise Reject("chunk data shorter than its size")
        body += data[pos:pos + size]
        pos += size
        if data[pos:pos + 2] != CRLF:
            raise Reject("chunk data not followed by CRLF")
        pos += 2
    # RFC 9112 §7.1.2: the trailer section has the field grammar of a head.
    while True:
        eol = data.find(CRLF, pos)
        if eol < 0:
            raise Reject("trailer section does not end in CRLF")
        line = data[pos:eol]
        pos = eol + 2
        if not line:
            return bytes(body), pos
        if b"\r" in line or b"\n" in line:
            raise Reject("bare CR or LF in the trailer section")
        _field(line, "trailer")


# ---------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ids:
    """The names of exchange n: its first request, the hidden one, the follow-up."""

    n: int
    origin: bytes  # b"127.0.0.1:PORT"
    via: bytes  # the proxy's Via pseudonym, for loop payloads
    dead: bytes = b"127.0.0.1:9"  # a loopback address nothing listens on

    @property
    def first_url(self) -> bytes:
        return b"http://%s/s%d-first" % (self.origin, self.n)

    @property
    def follow_url(self) -> bytes:
        return b"http://%s/s%d-follow" % (self.origin, self.n)

    @property
    def smuggled(self) -> bytes:
        return b"GET http://%s/smuggled-%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (self.origin, self.n, self.origin)

    @property
    def host(self) -> bytes:
        return b"Host: " + self.origin + CRLF

    def follow_up(self) -> bytes:
        return b"GET " + self.follow_url + b" HTTP/1.1\r\n" + self.host + CRLF


@dataclass(frozen=True)
class Case:
    """A payload shape; `build` makes its bytes for one exchange."""

    family: str
    name: str
    build: Callable[[Ids], bytes]
    method: str = "POST"  # of the first request: a HEAD answer has no body
    refused: bool = False  # the proxy is meant to refuse the first request whatever its framing
    pipelined: bool = False  # the follow-up goes out with the payload, in one write
    split: bool = False  # the payload goes out a few bytes per write


def hdr(name: bytes, value) -> bytes:
    if isinstance(value, int):
        value = b"%d" % value
    return name + b": " + value + CRLF


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def request(ids: Ids, fields: bytes = b"", body: bytes = b"", *, method: bytes = b"POST",
            target: bytes | None = None, version: bytes = b"HTTP/1.1", host: bool = True,
            before_host: bytes = b"") -> bytes:
    line = method + b" " + (ids.first_url if target is None else target) + b" " + version
    return line + CRLF + before_host + (ids.host if host else b"") + fields + CRLF + body


def cl_body(ids: Ids, fields: bytes = b"", **kw) -> bytes:
    """The hidden request as a Content-Length body."""
    return request(ids, fields + hdr(b"Content-Length", len(ids.smuggled)), ids.smuggled, **kw)


# Transfer-Encoding gadgets, after defparam/smuggler's configs: (name, header
# bytes without the final CRLF).
NAMED_TE_GADGETS = [
    ("nameprefix", b" Transfer-Encoding: chunked"),
    ("tabprefix1", b"Transfer-Encoding:\tchunked"),
    ("tabprefix2", b"Transfer-Encoding\t:\tchunked"),
    ("spacejoin", b"Transfer Encoding: chunked"),
    ("underjoin", b"Transfer_Encoding: chunked"),
    ("smashed", b"Transfer Encoding:chunked"),
    ("space-before-colon", b"Transfer-Encoding : chunked"),
    ("valueprefix", b"Transfer-Encoding:  chunked"),
    ("vertprefix", b"Transfer-Encoding:\x0bchunked"),
    ("ffprefix", b"Transfer-Encoding:\x0cchunked"),
    ("nulprefix", b"Transfer-Encoding: \x00chunked"),
    ("nulsuffix", b"Transfer-Encoding: chunked\x00"),
    ("chunked-comma-identity", b"Transfer-Encoding: chunked, identity"),
    ("identity-comma-chunked", b"Transfer-Encoding: identity, chunked"),
    ("gzip-comma-chunked", b"Transfer-Encoding: gzip, chunked"),
    ("chunked-comma-chunked", b"Transfer-Encoding: chunked, chunked"),
    ("comma-chunked", b"Transfer-Encoding: ,chunked"),
    ("chunked-comma", b"Transfer-Encoding: chunked,"),
    ("content-encoding", b"Content-Encoding: chunked"),
    ("te-header", b"TE: chunked"),
    ("linewrapped-lf", b"Transfer-Encoding:\n chunked"),
    ("linewrapped-crlf", b"Transfer-Encoding:\r\n chunked"),
    ("quoted", b'Transfer-Encoding: "chunked"'),
    ("aposed", b"Transfer-Encoding: 'chunked'"),
    ("lazygrep", b"Transfer-Encoding: chunk"),
    ("chunke", b"Transfer-Encoding: chunke"),
    ("xchunked", b"Transfer-Encoding: xchunked"),
    ("chunkedx", b"Transfer-Encoding: chunkedx"),
    ("chunked-param", b"Transfer-Encoding: chunked;q=1"),
    ("chunked-space-word", b"Transfer-Encoding: chunked foo"),
    ("sarcasm", b"TrAnSfEr-EnCoDiNg: cHuNkEd"),
    ("yelling", b"TRANSFER-ENCODING: CHUNKED"),
    ("lowercase", b"transfer-encoding: chunked"),
    ("0dsuffix", b"Transfer-Encoding: chunked\r"),
    ("tabsuffix", b"Transfer-Encoding: chunked\t"),
    ("spacesuffix", b"Transfer-Encoding: chunked  "),
    ("nospace", b"Transfer-Encoding:chunked"),
    ("revdualchunk", b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked"),
    ("dualchunk", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity"),
    ("twice-chunked", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
    ("empty-then-chunked", b"Transfer-Encoding:\r\nTransfer-Encoding: chunked"),
    ("0dspam", b"Transfer\r-Encoding: chunked"),
    ("nested", b"Transfer-Encoding: identity, chunked, identity"),
    ("spaceFF", b"Transfer-Encoding:\xffchunked"),
    ("accentCH", b"Transfer-Encoding: ch\x96nked"),
    ("accentTE", b"Transf\x82r-Encoding: chunked"),
    ("utf8-u", b"Transfer-Encoding: ch\xc3\xb9nked"),
    ("x-rout", b"X: X\rTransfer-Encoding: chunked"),
    ("x-nout", b"X: X\nTransfer-Encoding: chunked"),
    ("lf-before", b"\nTransfer-Encoding: chunked"),
    ("crlf-inside-value", b"Transfer-Encoding: \r\nchunked"),
    ("qencode", b"Transfer-Encoding: =?UTF-8?B?Y2h1bmtlZA==?="),
    ("pct-name", b"Transfer-%45ncoding: chunked"),
]

# Bytes tried by the per-character permutations (DesyncBox-style): controls,
# space, DEL, NEL, NBSP and 0xff.
SPECIAL_BYTES = [0x00, 0x01, 0x04, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1F, 0x20, 0x7F, 0x85, 0xA0, 0xFF]


def te_gadgets():
    """smuggler's named gadgets, then one byte at four places, every control
    byte and every obs-text byte."""
    yield from NAMED_TE_GADGETS
    for c in chain(range(0x00, 0x21), range(0x7F, 0x100)):
        ch = bytes([c])
        yield f"midspace-{c:02x}", b"Transfer-Encoding:" + ch + b"chunked"
        yield f"postspace-{c:02x}", b"Transfer-Encoding" + ch + b": chunked"
        yield f"prespace-{c:02x}", ch + b"Transfer-Encoding: chunked"
        yield f"endspace-{c:02x}", b"Transfer-Encoding: chunked" + ch


def permutations(name: bytes):
    """H1 header permutations after DesyncBox: (label, value -> header bytes
    without the final CRLF)."""
    h = name + b": "
    dash = name.replace(b"-", b"_")
    perms = [
        ("vanilla", lambda v: h + v),
        ("underjoin1", lambda v: dash + b": " + v),
        ("spacejoin1", lambda v: name.replace(b"-", b" ") + b": " + v),
        ("space1", lambda v: name + b" : " + v),
        ("nameprefix1", lambda v: b"Foo: bar\r\n " + h + v),
        ("nameprefix2", lambda v: b"Foo: bar\r\n\t" + h + v),
        ("valueprefix1", lambda v: h + b" " + v),
        ("nospace1", lambda v: name + b":" + v),
        ("linewrapped1", lambda v: name + b":\n " + v),
        ("doublewrapped", lambda v: name + b":\r\n \r\n " + v),
        ("gareth1", lambda v: name + b"\n : " + v),
        ("badsetupCR", lambda v: b"Foo: bar\r" + h + v),
        ("badsetupLF", lambda v: b"Foo: bar\n" + h + v),
        ("vertwrap", lambda v: h + b"\n\x0b" + v),
        ("tabwrap", lambda v: h + b"\r\n\t" + v),
        ("multiCase", lambda v: name[:1].lower() + name[1:].upper() + b": " + v),
        ("UPPERCASE", lambda v: name.upper() + b": " + v),
        ("0dwrap", lambda v: b"Foo: bar\r\n\r" + h + v),
        ("0dspam", lambda v: name[:3] + b"\r" + name[3:] + b": " + v),
        ("connection", lambda v: b"Connection: " + name + CRLF + h + v),
        ("spjunk", lambda v: name + b" x: " + v),
        ("backslash", lambda v: name.replace(b"-", b"\\") + b": " + v),
        ("nel", lambda v: name + b"\x85: " + v),
        ("nel-utf8", lambda v: name + b"\xc2\x85: " + v),
        ("nbsp", lambda v: name + b"\xa0: " + v),
        ("shy", lambda v: name.replace(b"-", b"\xad") + b": " + v),
        ("shy2", lambda v: name + b"\xad: " + v),
        ("spaceFF", lambda v: name + b":\xff" + v),
        ("unispace", lambda v: name + b":\xa0" + v),
        ("0dsuffix", lambda v: h + v + b"\r"),
        ("tabsuffix", lambda v: h + v + b"\t"),
        ("badwrap", lambda v: b"X-Blah-Ignore: x\r\n " + h + v),
        ("lookalike-lower", lambda v: dash.lower() + b": " + v),
    ]
    for c in SPECIAL_BYTES:
        ch = bytes([c])
        perms += [
            (f"spacefix1:{c:02x}", lambda v, ch=ch: name + b":" + ch + v),
            (f"prefix1:{c:02x}", lambda v, ch=ch: h + ch + v),
            (f"suffix1:{c:02x}", lambda v, ch=ch: h + v + ch),
            (f"namesuffix1:{c:02x}", lambda v, ch=ch: name + ch + b": " + v),
        ]
    return perms


def te_shapes(family: str, label: str, gadget: Callable[[], bytes], *, before_host: bool):
    """Three ways to frame the hidden request around a Transfer-Encoding gadget."""

    def placed(ids: Ids, fields: bytes, body: bytes) -> bytes:
        g = gadget() + CRLF
        if before_host:
            return request(ids, fields, body, before_host=g)
        return request(ids, g + fields, body)

    def cl_te(ids: Ids) -> bytes:
        # CL covers a chunked body that ends before the hidden request.
        body = b"0\r\n\r\n" + ids.smuggled
        return placed(ids, hdr(b"Content-Length", len(body)), body)

    def te_cl(ids: Ids) -> bytes:
        # The hidden request is chunk data; CL covers the size line only.
        size = b"%x\r\n" % len(ids.smuggled)
        body = size + ids.smuggled + b"\r\n0\r\n\r\n"
        return placed(ids, hdr(b"Content-Length", len(size)), body)

    def te_only(ids: Ids) -> bytes:
        return placed(ids, b"", chunked(ids.smuggled))

    return [
        Case(family, f"{label}/cl-te", cl_te),
        Case(family, f"{label}/te-cl", te_cl),
        Case(family, f"{label}/te-only", te_only),
    ]


def te_mutation_cases():
    for label, gadget in te_gadgets():
        yield from te_shapes("te-mutation", label, lambda g=gadget: g, before_host=True)


def te_permutation_cases():
    te = b"Transfer-Encoding"
    for label, make in permutations(te):
        yield from te_shapes("te-permutation", label, lambda make=make: make(b"chunked"), before_host=False)
    yield Case("te-permutation", "http1.0/te-only",
               lambda ids: request(ids, hdr(te, b"chunked") + hdr(b"Connection", b"keep-alive"),
                                   chunked(ids.smuggled), version=b"HTTP/1.0"))
    yield Case("te-permutation", "bodysplit/te-only",
               lambda ids: request(ids, b"X: y\r\nFoo: barn\n\nTransfer-Encoding: chunked\r\n",
                                   chunked(ids.smuggled)))


CL_VALUE_PERMUTATIONS = [
    ("CL-plus", lambda n: b"+%d" % n),
    ("CL-minus", lambda n: b"-%d" % n),
    ("CL-pad", lambda n: b"0%d" % n),
    ("CL-bigpad", lambda n: b"00000000000%d" % n),
    ("CL-e", lambda n: b"%de0" % n),
    ("CL-dec", lambda n: b"%d.0" % n),
    ("CL-commaprefix", lambda n: b"0, %d" % n),
    ("CL-commasuffix", lambda n: b"%d, 0" % n),
    ("CL-same-list", lambda n: b"%d, %d" % (n, n)),
    ("CL-same-list-nospace", lambda n: b"%d,%d" % (n, n)),
    ("CL-spacepad", lambda n: b"%d " % n),
    ("CL-inner-space", lambda n: b"%d %d" % (n // 10, n % 10)),
    ("CL-hex", lambda n: b"0x%x" % n),
    ("CL-quoted", lambda n: b'"%d"' % n),
    ("CL-overflow", lambda n: b"%d" % (2**64 + n)),
    ("CL-empty", lambda n: b""),
    ("CL-unicode-digit", lambda n: b"%d\xd9\xa0" % n),
]


def cl_permutation_cases():
    cl = b"Content-Length"
    shapes = [(label, make, lambda n: b"%d" % n) for label, make in permutations(cl)]
    shapes += [(label, lambda v: cl + b": " + v, value) for label, value in CL_VALUE_PERMUTATIONS]
    for label, make, value in shapes:
        # CL.0: the permuted Content-Length alone frames the hidden request.
        yield Case("cl-permutation", f"{label}/alone",
                   lambda ids, make=make, value=value: request(
                       ids, make(value(len(ids.smuggled))) + CRLF, ids.smuggled))
        # CL.CL: a plain Content-Length frames it, the permuted one says 0.
        yield Case("cl-permutation", f"{label}/vs-plain",
                   lambda ids, make=make, value=value: request(
                       ids, hdr(cl, len(ids.smuggled)) + make(value(0)) + CRLF, ids.smuggled))
    yield Case("cl-permutation", "CL-expect/alone",
               lambda ids: cl_body(ids, hdr(b"Expect", b"100-continue")))


def classic_cases():
    te, cl = b"Transfer-Encoding", b"Content-Length"

    def cl_te(ids):
        body = b"0\r\n\r\n" + ids.smuggled
        return request(ids, hdr(cl, len(body)) + hdr(te, b"chunked"), body)

    def te_cl(ids):
        size = b"%x\r\n" % len(ids.smuggled)
        return request(ids, hdr(te, b"chunked") + hdr(cl, len(size)), size + ids.smuggled + b"\r\n0\r\n\r\n")

    def cl_zero_te(ids):
        return request(ids, hdr(cl, 0) + hdr(te, b"chunked"), chunked(ids.smuggled))

    def cl_cl(first, second):
        def build(ids):
            n = len(ids.smuggled)
            return request(ids, hdr(cl, first(n)) + hdr(cl, second(n)), ids.smuggled)
        return build

    cases = [
        ("cl-te", cl_te),
        ("te-cl", te_cl),
        ("cl0-te", cl_zero_te),
        ("te-te-identity", lambda ids: request(ids, hdr(te, b"chunked") + hdr(te, b"identity"),
                                               chunked(ids.smuggled))),
        ("te-te-identity-first", lambda ids: request(ids, hdr(te, b"identity") + hdr(te, b"chunked"),
                                                     chunked(ids.smuggled))),
        ("cl-cl-differ", cl_cl(lambda n: n, lambda n: 0)),
        ("cl-cl-differ-zero-first", cl_cl(lambda n: 0, lambda n: n)),
        ("cl-cl-same", cl_cl(lambda n: n, lambda n: n)),
        ("cl-huge", lambda ids: request(ids, hdr(cl, b"99999999999999999999999"), ids.smuggled)),
        ("te-http10", lambda ids: request(ids, hdr(te, b"chunked") + hdr(b"Connection", b"keep-alive"),
                                          chunked(ids.smuggled), version=b"HTTP/1.0")),
        ("connection-lists-cl", lambda ids: cl_body(ids, hdr(b"Connection", cl))),
        ("connection-lists-te", lambda ids: request(ids, hdr(b"Connection", te) + hdr(te, b"chunked"),
                                                    chunked(ids.smuggled))),
        ("lookalike-te-with-cl", lambda ids: cl_body(ids, hdr(b"transfer_encoding", b"chunked"))),
        ("lookalike-cl-with-te", lambda ids: request(ids, hdr(b"content_length", 0) + hdr(te, b"chunked"),
                                                     chunked(ids.smuggled))),
    ]
    for label, build in cases:
        yield Case("classic", label, build)
    for method in (b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"PUT", b"PATCH", b"POST"):
        yield Case("classic", f"cl0-{method.decode().lower()}",
                   lambda ids, m=method: cl_body(ids, method=m), method.decode())
        yield Case("classic", f"te0-{method.decode().lower()}",
                   lambda ids, m=method: request(ids, hdr(te, b"chunked"), chunked(ids.smuggled), method=m),
                   method.decode())


# Chunk sizes, after ChunkSizeScan: (label, size -> spelled size line content).
SIZE_SPELLINGS = [
    ("lower", lambda n: b"%x" % n),
    ("upper", lambda n: b"%X" % n),
    ("leading-zero", lambda n: b"0%x" % n),
    ("zeros-16", lambda n: b"%016x" % n),
    ("zeros-17", lambda n: b"%017x" % n),
    ("zeros-40", lambda n: b"%040x" % n),
    ("overflow-2^64", lambda n: b"%x" % (2**64 + n)),
    ("overflow-2^128", lambda n: b"%x" % (2**128 + n)),
    ("huge-2^40", lambda n: b"%x" % (2**40 + n)),
    ("negative", lambda n: b"-%x" % n),
    ("plus", lambda n: b"+%x" % n),
    ("0x", lambda n: b"0x%x" % n),
    ("space-before", lambda n: b" %x" % n),
    ("space-after", lambda n: b"%x " % n),
    ("tab-after", lambda n: b"%x\t" % n),
    ("ext", lambda n: b"%x;a" % n),
    ("ext-value", lambda n: b"%x;a=b" % n),
    ("ext-bws", lambda n: b"%x ; a = b" % n),
    ("ext-tab-bws", lambda n: b"%x\t;a" % n),
    ("ext-quoted", lambda n: b'%x;a="b c"' % n),
    ("ext-quoted-pair", lambda n: b'%x;a="b\\"c"' % n),
    ("ext-quoted-unterminated", lambda n: b'%x;a="b' % n),
    ("ext-empty", lambda n: b"%x;" % n),
    ("ext-nul", lambda n: b"%x;a\x00" % n),
    ("ext-bare-lf", lambda n: b"%x;a\nb" % n),
    ("ext-bare-cr", lambda n: b"%x;a\rb" % n),
    ("ext-long-4000", lambda n: b"%x;" % n + b"a" * 4000),
    ("ext-long-5000", lambda n: b"%x;" % n + b"a" * 5000),
    ("decimal", lambda n: b"%d" % n),
    ("size-minus-1", lambda n: b"%x" % (n - 1)),
    ("size-plus-1", lambda n: b"%x" % (n + 1)),
    ("size-plus-2", lambda n: b"%x" % (n + 2)),
]

# A first chunk whose size has hex letters, so case and padding show.
PAD = b"p" * 0xAB


def chunk_size_cases():
    te = hdr(b"Transfer-Encoding", b"chunked")
    for label, spell in SIZE_SPELLINGS:
        def build(ids, spell=spell):
            body = spell(len(PAD)) + CRLF + PAD + CRLF
            body += spell(len(ids.smuggled)) + CRLF + ids.smuggled + CRLF + b"0\r\n\r\n"
            return request(ids, te, body)
        yield Case("chunk-size", label, build)
    line_ends = [
        ("size-bare-lf", b"%x\n", CRLF),
        ("size-bare-cr", b"%x\r", CRLF),
        ("size-cr-cr-lf", b"%x\r\r\n", CRLF),
        ("data-bare-lf", b"%x\r\n", b"\n"),
        ("data-no-crlf", b"%x\r\n", b""),
        ("data-lf-cr", b"%x\r\n", b"\n\r"),
    ]
    for label, size_line, after in line_ends:
        yield Case("chunk-size", label,
                   lambda ids, s=size_line, a=after: request(
                       ids, te, s % len(ids.smuggled) + ids.smuggled + a + b"0\r\n\r\n"))
    last_chunks = [
        ("last-00", b"00\r\n\r\n"),
        ("last-zeros-20", b"0" * 20 + b"\r\n\r\n"),
        ("last-ext", b"0;a=b\r\n\r\n"),
        ("last-space", b"0 \r\n\r\n"),
        ("last-negative", b"-0\r\n\r\n"),
        ("last-0x", b"0x0\r\n\r\n"),
        ("last-bare-lf", b"0\n\n"),
        ("last-no-blank-line", b"0\r\n"),
    ]
    for label, last in last_chunks:
        # The hidden request rides in a chunk; what follows the last chunk is
        # the only difference.
        yield Case("chunk-size", label,
                   lambda ids, last=last: request(
                       ids, te, b"%x\r\n" % len(ids.smuggled) + ids.smuggled + CRLF + last))
    yield Case("chunk-size", "data-holds-last-chunk",
               lambda ids: request(ids, te, chunked(b"0\r\n\r\n" + ids.smuggled)))
    yield Case("chunk-size", "split-across-chunks",
               lambda ids: request(ids, te, chunked(ids.smuggled[:7], ids.smuggled[7:20], ids.smuggled[20:])))


def trailer_cases():
    te = hdr(b"Transfer-Encoding", b"chunked")

    def with_trailer(trailer: Callable[[Ids], bytes]):
        # The hidden request is chunk data, and also, where the trailer is a
        # request line, the trailer itself.
        return lambda ids: request(
            ids, te, b"%x\r\n" % len(ids.smuggled) + ids.smuggled + b"\r\n0\r\n" + trailer(ids) + CRLF)

    trailers = [
        ("none", lambda ids: b""),
        ("valid", lambda ids: b"X-Checksum: 1\r\n"),
        ("request-line", lambda ids: ids.smuggled[:-2]),
        ("request-line-only", lambda ids: ids.smuggled.split(CRLF)[0] + CRLF),
        ("obs-fold", lambda ids: b"X: a\r\n b\r\n"),
        ("obs-fold-tab", lambda ids: b"X: a\r\n\tb\r\n"),
        ("nul", lambda ids: b"X: a\x00b\r\n"),
        ("bare-lf", lambda ids: b"X: a\nY: b\r\n"),
        ("bare-cr", lambda ids: b"X: a\rY: b\r\n"),
        ("no-colon", lambda ids: b"NoColon\r\n"),
        ("space-before-colon", lambda ids: b"X : y\r\n"),
        ("empty-name", lambda ids: b": y\r\n"),
        ("content-length", lambda ids: b"Content-Length: 5\r\n"),
        ("transfer-encoding", lambda ids: b"Transfer-Encoding: chunked\r\n"),
        ("host", lambda ids: b"Host: other.example\r\n"),
        ("non-ascii-value", lambda ids: b"X: \xff\xfe\r\n"),
    ]
    for label, trailer in trailers:
        yield Case("trailers", label, with_trailer(trailer))
    yield Case("trailers", "request-instead-of-blank-line",
               lambda ids: request(ids, te, b"5\r\nhello\r\n0\r\n" + ids.smuggled))


def line_end_cases():
    def head(ids, eols: list[bytes], final: bytes, lead: bytes = b"", extra: list[bytes] = ()) -> bytes:
        lines = [b"POST " + ids.first_url + b" HTTP/1.1", b"Host: " + ids.origin, *extra,
                 b"Content-Length: %d" % len(ids.smuggled)]
        out = lead + b"".join(line + eol for line, eol in zip(lines, eols + [CRLF] * len(lines)))
        return out + final + ids.smuggled

    lf, cr = b"\n", b"\r"
    cases = [
        ("lf-request-line", lambda ids: head(ids, [lf], CRLF)),
        ("lf-host", lambda ids: head(ids, [CRLF, lf], CRLF)),
        ("lf-content-length", lambda ids: head(ids, [CRLF, CRLF, lf], CRLF)),
        ("lf-blank-line", lambda ids: head(ids, [], lf)),
        ("lf-everywhere", lambda ids: head(ids, [lf, lf, lf], lf)),
        ("cr-everywhere", lambda ids: head(ids, [cr, cr, cr], cr)),
        ("cr-request-line", lambda ids: head(ids, [cr], CRLF)),
        ("cr-cr-lf-host", lambda ids: head(ids, [CRLF, b"\r\r\n"], CRLF)),
        ("lead-lf", lambda ids: head(ids, [], CRLF, lead=lf)),
        ("lead-crlf", lambda ids: head(ids, [], CRLF, lead=CRLF)),
        ("lead-two-crlf", lambda ids: head(ids, [], CRLF, lead=CRLF * 2)),
        ("lead-space", lambda ids: head(ids, [], CRLF, lead=b" ")),
        ("bodysplit", lambda ids: head(ids, [], CRLF, extra=[b"X: y", b"Foo: barn\n"])),
        ("nul-in-value", lambda ids: head(ids, [], CRLF, extra=[b"X: a\x00b"])),
        ("del-in-value", lambda ids: head(ids, [], CRLF, extra=[b"X: a\x7fb"])),
        ("obs-fold-header", lambda ids: head(ids, [], CRLF, extra=[b"X: a\r\n b"])),
        ("obs-fold-first-header",
         lambda ids: head(ids, [], CRLF).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\n X: y\r\n", 1)),
        ("nul-in-request-line", lambda ids: head(ids, [], CRLF).replace(b"-first", b"-first\x00", 1)),
    ]
    for label, build in cases:
        yield Case("line-ends", label, build)


def host_cases():
    def with_host(value: bytes | None, **kw):
        def build(ids):
            fields = b"" if value is None else hdr(b"Host", value.replace(b"ORIGIN", ids.origin))
            return cl_body(ids, fields, host=False, **kw)
        return build

    cases = [
        ("missing", with_host(None)),
        ("missing-http10-keep-alive", lambda ids: cl_body(ids, hdr(b"Connection", b"keep-alive"),
                                                         host=False, version=b"HTTP/1.0")),
        ("empty", with_host(b"")),
        ("path", with_host(b"ORIGIN/smuggled")),
        ("bad-port", with_host(b"ORIGIN:abc")),
        ("userinfo", with_host(b"user@ORIGIN")),
        ("space-inside", with_host(b"a b")),
        ("trailing-ows", with_host(b"ORIGIN \t")),
        ("ipv6-literal", with_host(b"[::1]")),
        ("nul", with_host(b"ORIGIN\x00x")),
        ("comma-list", with_host(b"ORIGIN, other.example")),
        ("mismatch", with_host(b"other.example")),
        ("mismatch-port", with_host(b"127.0.0.1:1")),
        ("uppercase-name", lambda ids: cl_body(ids, b"HOST: " + ids.origin + CRLF, host=False)),
        ("twice-same", lambda ids: cl_body(ids, ids.host)),
        ("twice-different", lambda ids: cl_body(ids, hdr(b"Host", b"other.example"))),
        ("folded", lambda ids: cl_body(ids, b" Host: other.example\r\n")),
        ("abs-userinfo", lambda ids: cl_body(ids, target=ids.first_url.replace(b"//", b"//user:pw@", 1))),
        ("abs-empty-authority", lambda ids: cl_body(ids, target=b"http:///s%d-first" % ids.n)),
        ("abs-uppercase-scheme", lambda ids: cl_body(ids, target=ids.first_url.replace(b"http:", b"HTTP:", 1))),
        ("abs-fragment", lambda ids: cl_body(ids, target=ids.first_url + b"#frag")),
        ("abs-ftp", lambda ids: cl_body(ids, target=ids.first_url.replace(b"http:", b"ftp:", 1))),
    ]
    for label, build in cases:
        yield Case("host", label, build)
    yield Case("host", "empty-origin-form-healthz",
               lambda ids: request(ids, hdr(b"Host", b"") + hdr(b"Content-Length", len(ids.smuggled)),
                                   ids.smuggled, method=b"GET", target=b"/healthz", host=False), "GET")


def version_expect_cases():
    te = hdr(b"Transfer-Encoding", b"chunked")
    expect = hdr(b"Expect", b"100-continue")
    keep = hdr(b"Connection", b"keep-alive")
    cases = [
        ("http10-keep-alive", lambda ids: cl_body(ids, keep, version=b"HTTP/1.0")),
        ("http10-close", lambda ids: cl_body(ids, version=b"HTTP/1.0")),
        ("http10-expect", lambda ids: cl_body(ids, keep + expect, version=b"HTTP/1.0")),
        ("http10-te", lambda ids: request(ids, keep + te, chunked(ids.smuggled), version=b"HTTP/1.0")),
        ("expect-cl", lambda ids: cl_body(ids, expect)),
        ("expect-chunked", lambda ids: request(ids, expect + te, chunked(ids.smuggled))),
        ("expect-case", lambda ids: cl_body(ids, hdr(b"Expect", b"100-Continue"))),
        ("expect-list", lambda ids: cl_body(ids, hdr(b"Expect", b"100-continue, foo"))),
        ("expect-unknown", lambda ids: cl_body(ids, hdr(b"Expect", b"foo"))),
        ("connection-close", lambda ids: cl_body(ids, hdr(b"Connection", b"close"))),
        ("connection-keep-alive-close", lambda ids: cl_body(ids, hdr(b"Connection", b"keep-alive, close"))),
        ("http12", lambda ids: cl_body(ids, version=b"HTTP/1.2")),
        ("http20", lambda ids: cl_body(ids, version=b"HTTP/2.0")),
        ("http09", lambda ids: cl_body(ids, version=b"HTTP/0.9")),
        ("http-lowercase", lambda ids: cl_body(ids, version=b"http/1.1")),
        ("http-01-1", lambda ids: cl_body(ids, version=b"HTTP/01.1")),
        ("version-trailing-space", lambda ids: cl_body(ids, version=b"HTTP/1.1 ")),
        ("double-space", lambda ids: cl_body(ids, method=b"POST ")),
        ("tab-separator", lambda ids: cl_body(ids).replace(b" ", b"\t", 1)),
        ("method-lowercase", lambda ids: cl_body(ids, method=b"post")),
        ("method-unknown", lambda ids: cl_body(ids, method=b"FOO")),
        ("no-version", lambda ids: cl_body(ids).replace(b" HTTP/1.1", b"", 1)),
        ("h2-preface", lambda ids: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + ids.smuggled),
    ]
    for label, build in cases:
        yield Case("version-expect", label, build)


def own_answer_cases():
    """Bodies of requests the proxy answers itself, under every framing."""
    port25 = lambda ids: b"http://127.0.0.1:25/s%d-first" % ids.n  # a port the proxy refuses
    targets = [
        ("get-healthz", b"GET", lambda ids: b"/healthz", b""),
        ("head-healthz", b"HEAD", lambda ids: b"/healthz", b""),
        ("get-metrics", b"GET", lambda ids: b"/metrics", b""),
        ("head-metrics", b"HEAD", lambda ids: b"/metrics", b""),
        ("options-max-forwards-0", b"OPTIONS", lambda ids: ids.first_url, b"Max-Forwards: 0\r\n"),
        ("post-healthz-400", b"POST", lambda ids: b"/healthz", b""),
        ("unknown-path-400", b"GET", lambda ids: b"/nope", b""),
        ("options-asterisk-400", b"OPTIONS", lambda ids: b"*", b""),
        ("trace-501", b"TRACE", lambda ids: ids.first_url, b""),
        ("port-25-403", b"GET", port25, b""),
        ("via-loop-508", b"GET", lambda ids: ids.first_url, None),
        ("refused-502", b"GET", lambda ids: b"http://%s/s%d-first" % (ids.dead, ids.n), b""),
    ]
    keep = hdr(b"Connection", b"keep-alive")
    expect = hdr(b"Expect", b"100-continue")
    te = hdr(b"Transfer-Encoding", b"chunked")
    big = b"x" * 70_000  # over the 64 KiB the proxy reads and drops
    fill = lambda ids, total: ids.smuggled + b"x" * (total - len(ids.smuggled))

    def cl(body):
        return hdr(b"Content-Length", len(body))

    shapes = [
        ("cl", lambda ids: (b"HTTP/1.1", cl(ids.smuggled), ids.smuggled)),
        ("chunked", lambda ids: (b"HTTP/1.1", te, chunked(ids.smuggled))),
        ("chunked-trailer", lambda ids: (b"HTTP/1.1", te, chunked(ids.smuggled)[:-2] + b"X-T: 1\r\n\r\n")),
        ("expect-cl", lambda ids: (b"HTTP/1.1", expect + cl(ids.smuggled), ids.smuggled)),
        ("expect-chunked", lambda ids: (b"HTTP/1.1", expect + te, chunked(ids.smuggled))),
        ("http10-keep-alive-cl", lambda ids: (b"HTTP/1.0", keep + cl(ids.smuggled), ids.smuggled)),
        ("http10-cl", lambda ids: (b"HTTP/1.0", cl(ids.smuggled), ids.smuggled)),
        ("cl-over-64k", lambda ids: (b"HTTP/1.1", cl(ids.smuggled + big), ids.smuggled + big)),
        ("cl-64k", lambda ids: (b"HTTP/1.1", cl(fill(ids, 65536)), fill(ids, 65536))),
        ("cl-64k-plus-1", lambda ids: (b"HTTP/1.1", cl(fill(ids, 65537)), fill(ids, 65537))),
        ("chunked-64k", lambda ids: (b"HTTP/1.1", te, chunked(fill(ids, 65536)))),
        ("chunked-over-64k", lambda ids: (b"HTTP/1.1", te, chunked(ids.smuggled, big))),
        ("cl-list", lambda ids: (b"HTTP/1.1",
                                 hdr(b"Content-Length", b"%d, %d" % (len(ids.smuggled), len(ids.smuggled))),
                                 ids.smuggled)),
        ("connection-close-cl", lambda ids: (b"HTTP/1.1", hdr(b"Connection", b"close") + cl(ids.smuggled),
                                             ids.smuggled)),
    ]
    for tname, method, target, extra in targets:
        for sname, shape in shapes:
            def build(ids, method=method, target=target, extra=extra, shape=shape):
                version, fields, body = shape(ids)
                more = extra if extra is not None else b"Via: 1.1 " + ids.via + CRLF
                return request(ids, more + fields, body, method=method, target=target(ids), version=version)
            refused = not tname.startswith(("get-", "head-", "options-max"))
            yield Case("own-answer", f"{tname}/{sname}", build, method.decode(), refused)


def upgrade_cases():
    """smugglex's H2C class and its kin: a protocol switch the origin would
    accept must never reach it through the proxy."""
    settings = hdr(b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA")
    h2c = hdr(b"Upgrade", b"h2c") + settings
    cases = [
        ("h2c", lambda ids: cl_body(ids, h2c + hdr(b"Connection", b"Upgrade, HTTP2-Settings"), method=b"GET")),
        ("h2c-keep-alive", lambda ids: cl_body(ids, h2c + hdr(b"Connection", b"keep-alive"), method=b"GET")),
        ("h2c-no-connection", lambda ids: cl_body(ids, h2c, method=b"GET")),
        ("h2c-post", lambda ids: cl_body(ids, h2c + hdr(b"Connection", b"Upgrade, HTTP2-Settings"))),
        ("websocket", lambda ids: cl_body(ids, hdr(b"Upgrade", b"websocket") + hdr(b"Connection", b"Upgrade")
                                          + hdr(b"Sec-WebSocket-Version", b"13")
                                          + hdr(b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                                          method=b"GET")),
    ]
    for label, build in cases:
        yield Case("upgrade", label, build, "GET" if label != "h2c-post" else "POST")
    yield Case("upgrade", "connect-with-body",
               lambda ids: cl_body(ids, method=b"CONNECT", target=ids.origin), "CONNECT", refused=True)


def pipelined_cases():
    """The follow-up in the same write as the payload: whatever reads a body
    must leave the next request's bytes where the next head is parsed."""
    te = hdr(b"Transfer-Encoding", b"chunked")
    fill = lambda ids, total: ids.smuggled + b"x" * (total - len(ids.smuggled))
    cases = [
        ("get", lambda ids: request(ids, method=b"GET"), "GET"),
        ("post-cl", lambda ids: cl_body(ids), "POST"),
        ("post-chunked", lambda ids: request(ids, te, chunked(ids.smuggled)), "POST"),
        ("post-chunked-trailer", lambda ids: request(ids, te, chunked(ids.smuggled)[:-2] + b"X-T: 1\r\n\r\n"),
         "POST"),
        ("post-chunked-ext", lambda ids: request(ids, te, b"%x;a=b\r\n%s\r\n0;c\r\n\r\n"
                                                 % (len(ids.smuggled), ids.smuggled)), "POST"),
        ("post-cl-70k", lambda ids: request(ids, hdr(b"Content-Length", 70_000), fill(ids, 70_000)), "POST"),
        ("post-chunked-70k", lambda ids: request(ids, te, chunked(fill(ids, 70_000))), "POST"),
        ("post-expect-cl", lambda ids: cl_body(ids, hdr(b"Expect", b"100-continue")), "POST"),
        ("post-http10-keep-alive", lambda ids: cl_body(ids, hdr(b"Connection", b"keep-alive"),
                                                       version=b"HTTP/1.0"), "POST"),
        ("get-cl", lambda ids: cl_body(ids, method=b"GET"), "GET"),
        ("head-cl", lambda ids: cl_body(ids, method=b"HEAD"), "HEAD"),
        ("healthz-cl", lambda ids: cl_body(ids, method=b"GET", target=b"/healthz"), "GET"),
        ("healthz-chunked", lambda ids: request(ids, te, chunked(ids.smuggled), method=b"GET",
                                                target=b"/healthz"), "GET"),
        ("healthz-64k", lambda ids: request(ids, hdr(b"Content-Length", 65536), fill(ids, 65536),
                                            method=b"GET", target=b"/healthz"), "GET"),
        ("metrics-chunked-trailer", lambda ids: request(ids, te, chunked(ids.smuggled)[:-2] + b"X-T: 1\r\n\r\n",
                                                        method=b"GET", target=b"/metrics"), "GET"),
        ("options-max-forwards-0-cl", lambda ids: cl_body(ids, hdr(b"Max-Forwards", 0), method=b"OPTIONS"),
         "OPTIONS"),
        ("lead-crlf-post-cl", lambda ids: CRLF + cl_body(ids), "POST"),
        ("unknown-path-400", lambda ids: request(ids, method=b"GET", target=b"/nope"), "GET"),
    ]
    for label, build, method in cases:
        yield Case("pipelined", label, build, method, refused=label.endswith("-400"), pipelined=True)


SPLIT_FAMILIES = ("classic", "chunk-size", "trailers", "line-ends", "host", "own-answer", "pipelined")
SPLIT_OWN_SHAPES = ("/cl", "/chunked", "/chunked-trailer", "/expect-cl", "/http10-keep-alive-cl")


def split_cases():
    """Payloads of other families again, a few bytes per write: the head and
    body readers must reach the same verdict however the bytes arrive."""
    for family in SPLIT_FAMILIES:
        for case in GENERATORS[family]():
            if family == "own-answer" and not case.name.endswith(SPLIT_OWN_SHAPES):
                continue
            yield Case("split", f"{family}/{case.name}", case.build, case.method, case.refused,
                       case.pipelined, split=True)


def control_cases():
    yield Case("control", "get", lambda ids: request(ids, method=b"GET"), "GET")
    yield Case("control", "post-cl", lambda ids: cl_body(ids))
    yield Case("control", "post-chunked",
               lambda ids: request(ids, hdr(b"Transfer-Encoding", b"chunked"), chunked(ids.smuggled)))
    yield Case("control", "get-healthz", lambda ids: request(ids, method=b"GET", target=b"/healthz"), "GET")


GENERATORS = {
    "control": control_cases,
    "classic": classic_cases,
    "te-mutation": te_mutation_cases,
    "te-permutation": te_permutation_cases,
    "cl-permutation": cl_permutation_cases,
    "chunk-size": chunk_size_cases,
    "trailers": trailer_cases,
    "line-ends": line_end_cases,
    "host": host_cases,
    "version-expect": version_expect_cases,
    "own-answer": own_answer_cases,
    "upgrade": upgrade_cases,
    "pipelined": pipelined_cases,
    "split": split_cases,
}


@dataclass
class Payload:
    n: int
    case: Case
    ids: Ids
    data: bytes
    reading: Reading


@dataclass
class Plan:
    payloads: list[Payload]
    generated: Counter
    duplicates: Counter
    own_requests: Counter  # dropped: the strict reading makes the hidden request the client's own


def closed_port() -> bytes:
    """A loopback address where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return b"127.0.0.1:%d" % sock.getsockname()[1]


def plan(families: list[str], origin: bytes, via: bytes) -> Plan:
    """Builds every payload, numbers it, reads it strictly, and drops
    duplicates and those that hide nothing."""
    payloads, seen = [], set()
    generated, duplicates, own = Counter(), Counter(), Counter()
    dead = closed_port()
    for family in families:
        for case in GENERATORS[family]():
            generated[family] += 1
            probe = (case.build(Ids(0, origin, via, dead)), case.pipelined, case.split)
            if probe in seen:
                duplicates[family] += 1
                continue
            seen.add(probe)
            ids = Ids(len(payloads) + 1, origin, via, dead)
            data = case.build(ids)
            reading = strict_reading(data)
            if reading.verdict == "accept" and reading.rest:
                own[family] += 1
                continue
            payloads.append(Payload(ids.n, case, ids, data, reading))
    return Plan(payloads, generated, duplicates, own)


# ---------------------------------------------------------------------------
# The raw origin
# ---------------------------------------------------------------------------


@dataclass
class OriginRequest:
    conn: int
    method: str
    target: str
    headers: list  # (name, value) bytes as received
    raw: bytes
    body: bytes  # decoded
    complete: bool

    @property
    def path(self) -> str:
        m = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/]*(.*)", self.target)
        return (m.group(1) or "/") if m else self.target

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


class OriginParseError(Exception):
    pass


def _origin_chunked(buf: bytes, pos: int):
    """A lenient chunked decoder: (body, end) or None when more is needed."""
    body = bytearray()
    while True:
        eol = buf.find(b"\n", pos)
        if eol < 0:
            return None
        size_text = buf[pos:eol].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as err:
            raise OriginParseError(f"bad chunk size {size_text!r}") from err
        pos = eol + 1
        if size == 0:
            while True:
                eol = buf.find(b"\n", pos)
                if eol < 0:
                    return None
                line, pos = buf[pos:eol], eol + 1
                if line.strip() == b"":
                    return bytes(body), pos
        if len(buf) < pos + size:
            return None
        body += buf[pos:pos + size]
        pos += size
        eol = buf.find(b"\n", pos)
        if eol < 0:
            return None
        pos = eol + 1


def parse_origin_request(buf: bytes, eof: bool):
    """One request from the start of what the origin received, read
    leniently (as a typical backend would, bare LF included) so that any
    request boundary the proxy's bytes imply shows up: (request fields,
    bytes used, complete) or None when more bytes are needed."""
    m = re.search(rb"\n\r?\n", buf)
    if not m:
        if eof or len(buf) > 1 << 20:
            raise OriginParseError("no complete request head")
        return None
    lines = [line.rstrip(b"\r") for line in buf[:m.start()].split(b"\n")]
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise OriginParseError("not a request line")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise OriginParseError("header line without a colon")
        headers.append((name.strip(), value.strip()))
    te = b",".join(v for n, v in headers if n.lower() == b"transfer-encoding").lower()
    cls = [v for n, v in headers if n.lower() == b"content-length"]
    pos = m.end()
    if b"chunked" in te:
        decoded = _origin_chunked(buf, pos)
    elif cls:
        try:
            length = int(cls[0].split(b",")[0])
        except ValueError as err:
            raise OriginParseError("bad content-length") from err
        decoded = (buf[pos:pos + length], pos + length) if len(buf) >= pos + length else None
    else:
        decoded = (b"", pos)
    method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
    if decoded is None:
        if not eof:
            return None
        return (method, target, headers, buf[pos:]), len(buf), False
    body, used = decoded
    return (method, target, headers, body), used, True


class Origin:
    """A raw HTTP/1.1 origin on 127.0.0.1: logs every byte per connection and
    answers each request it can parse with a short 200 naming its target."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.requests: list[OriginRequest] = []
        self.garbage: list[tuple[int, bytes]] = []
        self.last_activity = time.monotonic()
        self.conns: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="origin-accept", daemon=True).start()

    @property
    def authority(self) -> bytes:
        return b"127.0.0.1:%d" % self.port

    def stop(self):
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self):
        cid = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            cid += 1
            with self.lock:
                self.conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, cid), name=f"origin-{cid}", daemon=True).start()

    def _touch(self):
        self.last_activity = time.monotonic()

    def _serve(self, conn: socket.socket, cid: int):
        conn.settimeout(ORIGIN_IDLE)
        buf = b""
        try:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                self._touch()
                eof = not data
                buf += data
                while buf:
                    try:
                        parsed = parse_origin_request(buf, eof)
                    except OriginParseError:
                        with self.lock:
                            self.garbage.append((cid, buf))
                        buf = b""
                        self._send(conn, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        return
                    if parsed is None:
                        break
                    (method, target, headers, body), used, complete = parsed
                    raw, buf = buf[:used], buf[used:]
                    req = OriginRequest(cid, method, target, headers, raw, body, complete)
                    with self.lock:
                        self.requests.append(req)
                    if complete and req.header(b"upgrade") is not None:
                        # As an h2c or websocket origin would: switch, and
                        # speak HTTP/1.1 no more on this connection.
                        self._send(conn, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                                   b"Upgrade: " + req.header(b"upgrade") + b"\r\n\r\n")
                        return
                    if complete:
                        self._send(conn, self._answer(req))
                if eof:
                    return
        finally:
            with self.lock:
                self.conns.discard(conn)
            conn.close()

    @staticmethod
    def _answer(req: OriginRequest) -> bytes:
        visible = lambda text: "".join(c if 0x21 <= ord(c) < 0x7F else "?" for c in text)
        saw = f"{visible(req.method)} {visible(req.path)}"
        body = b"origin saw " + saw.encode() + b"\n"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Origin-Saw: %s\r\nContent-Length: %d\r\n\r\n" % (
            saw.encode(), len(body))
        return head if req.method == "HEAD" else head + body

    @staticmethod
    def _send(conn: socket.socket, data: bytes):
        try:
            conn.sendall(data)
        except OSError:
            pass

    def settle(self):
        """Waits until the origin has been quiet for a second (bounded)."""
        deadline = time.monotonic() + SETTLE_MAX
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_activity > 1.0:
                return
            time.sleep(0.1)

    def by_exchange(self) -> tuple[dict, dict, list]:
        """Requests, and unparseable bytes, grouped by the exchange named in
        them; and the requests that name none (which no payload sent)."""
        requests, garbage, untagged = defaultdict(list), defaultdict(list), []
        with self.lock:
            for req in self.requests:
                tag = tag_of(req.target)
                if tag is None:
                    untagged.append(req)
                else:
                    requests[tag[0]].append((tag[1], req))
            for cid, data in self.garbage:
                for n in {int(m.group(1) or m.group(3)) for m in TAG_RE.finditer(data)}:
                    garbage[n].append((cid, data))
        return requests, garbage, untagged


# ---------------------------------------------------------------------------
# The proxy under test
# ---------------------------------------------------------------------------


# A warning or error line of the proxy's log: level, module, message (after
# the client address and request id, when the line has them).
PROBLEM_RE = re.compile(r"\[(WARN|ERROR)\] \([^)]*\) (\S+): (?:\S+ [0-9a-f]+-[0-9a-f]+: )?(.*)")


class Proxy:
    """The proxy binary on 127.0.0.1:0. Its stderr is drained into a tail,
    and its warnings and errors (a worker panic, say) are counted by kind."""

    def __init__(self, binary: str):
        self.tail: deque[str] = deque(maxlen=300)
        self.problems: Counter = Counter()
        self.addr: tuple[str, int] | None = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--allow-dest", "127.0.0.0/8", "--workers", "8"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: a Ctrl-C at the terminal reaches this script
            # only, which then stops the proxy by its PID.
            start_new_session=True,
        )
        threading.Thread(target=self._drain, name="proxy-stderr", daemon=True).start()
        deadline = time.monotonic() + 15
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the proxy did not start:\n" + "\n".join(self.tail))

    def _drain(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            m = PROBLEM_RE.search(line)
            if m:
                # One kind per message, whatever the client, id or port.
                self.problems[f"[{m.group(1)}] {m.group(2)}: {re.sub(r'[0-9]+', 'N', m.group(3))}"] += 1
            m = re.search(r"listening on (\d+\.\d+\.\d+\.\d+):(\d+)", line)
            if m and self.addr is None:
                self.addr = (m.group(1), int(m.group(2)))
                self._ready.set()

    def stop(self):
        """SIGTERM by PID; a second one (stop at once) if it lingers; then kill."""
        if self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return


# ---------------------------------------------------------------------------
# One exchange, from the client's side
# ---------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    @property
    def saw(self) -> str | None:
        """The request the origin says it answered, when the origin answered."""
        value = self.header(b"x-origin-saw")
        return value.decode("latin-1") if value is not None else None


@dataclass
class ClientView:
    raw: bytes = b""
    responses: list = field(default_factory=list)
    interim: int = 0
    interim_statuses: list = field(default_factory=list)
    before_follow: int = 0
    follow_sent: bool = False
    closed: bool = False
    reset: bool = False
    send_error: str | None = None
    garbage: bytes = b""  # bytes from the proxy that start no response
    cut_short: bytes = b""  # a response the proxy closed before its end
    error: str | None = None


def parse_responses(buf: bytes, methods: list[str], eof: bool):
    """Responses from the start of `buf`: (final responses, interim
    statuses, the bytes after them: a response still arriving, or garbage)."""
    out, interim, pos = [], [], 0
    while pos < len(buf):
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        lines = buf[pos:end].split(CRLF)
        m = re.fullmatch(rb"HTTP/1\.[01] (\d{3})(?: .*)?", lines[0], re.S)
        if not m:
            return out, interim, buf[pos:]
        status = int(m.group(1))
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip(), value.strip()))
        start = end + 4
        if 100 <= status < 200:
            interim.append(status)
            pos = start
            continue
        resp = Response(status, headers, b"")
        method = methods[len(out)] if len(out) < len(methods) else "GET"
        te = (resp.header(b"transfer-encoding") or b"").lower()
        length = resp.header(b"content-length")
        if method == "HEAD" or status in (204, 304):
            pos = start
        elif b"chunked" in te:
            decoded = _origin_chunked(buf, start)
            if decoded is None:
                break
            resp.body, pos = decoded
        elif length is not None and length.isdigit():
            if len(buf) < start + int(length):
                break
            resp.body, pos = buf[start:start + int(length)], start + int(length)
        else:
            if not eof:
                break
            resp.body, pos = buf[start:], len(buf)
        out.append(resp)
    return out, interim, buf[pos:]


class Conversation:
    """Reads the proxy's answers on one connection until a condition, a
    quiet period after an answer, the connection's end or a deadline."""

    def __init__(self, sock: socket.socket, methods: list[str], view: ClientView):
        self.sock, self.methods, self.view = sock, methods, view
        self.buf = bytearray()

    def finals(self) -> int:
        responses, interim, rest = parse_responses(bytes(self.buf), self.methods, self.view.closed)
        self.view.responses, self.view.interim, self.view.interim_statuses = responses, len(interim), interim
        if rest and not b"HTTP/1.".startswith(rest[:7]):
            self.view.garbage = rest
        elif rest and self.view.closed:
            self.view.cut_short = rest
        return len(responses)

    def read(self, want: int, wait: float):
        """Until `want` final responses have arrived and QUIET has passed
        without more bytes, or the connection ends, or `wait` runs out."""
        deadline = time.monotonic() + wait
        last = time.monotonic()
        while not self.view.closed:
            now = time.monotonic()
            have = self.finals()
            if self.view.garbage or now >= deadline:
                return
            if have >= want and now - last >= QUIET:
                return
            timeout = min(deadline - now, QUIET if have >= want else deadline - now)
            self.sock.settimeout(max(timeout, 0.01))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                self.view.closed = self.view.reset = True
                break
            if not data:
                self.view.closed = True
                break
            self.buf += data
            last = time.monotonic()
        self.finals()


SPLIT_BYTES = 600  # how much of a split payload goes out in small writes
SPLIT_PAUSE = 0.002


def send(sock: socket.socket, data: bytes, split: bool):
    """All of `data`; when `split`, its start 1 to 7 bytes per write, with a
    pause between writes so that the proxy reads them one by one."""
    if not split:
        sock.sendall(data)
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pos, step = 0, 1
    while pos < min(len(data), SPLIT_BYTES):
        sock.sendall(data[pos:pos + step])
        pos += step
        step = step % 7 + 1
        time.sleep(SPLIT_PAUSE)
    sock.sendall(data[pos:])


def run_exchange(addr: tuple[str, int], payload: Payload) -> ClientView:
    view = ClientView()
    try:
        sock = socket.create_connection(addr, timeout=CONNECT_TIMEOUT)
    except OSError as err:
        view.error = f"connect: {err}"
        return view
    try:
        sock.settimeout(SEND_TIMEOUT)
        talk = Conversation(sock, [payload.case.method, "GET"], view)
        if payload.case.pipelined:
            try:
                send(sock, payload.data + payload.ids.follow_up(), payload.case.split)
                view.follow_sent = True
            except OSError as err:
                view.send_error = str(err)
            talk.read(2, FIRST_WAIT + FOLLOW_WAIT)
            view.raw = bytes(talk.buf)
            return view
        try:
            send(sock, payload.data, payload.case.split)
        except OSError as err:
            view.send_error = str(err)
        talk.read(1, FIRST_WAIT)
        view.before_follow = len(view.responses)
        if not view.closed and not view.garbage:
            try:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendall(payload.ids.follow_up())
                view.follow_sent = True
            except OSError as err:
                view.send_error = view.send_error or f"follow-up: {err}"
            if view.follow_sent:
                talk.read(view.before_follow + 1, FOLLOW_WAIT)
        view.raw = bytes(talk.buf)
    finally:
        try:
            sock.close()
        except OSError:
            pass
    return view


# ---------------------------------------------------------------------------
# Judging an exchange
# ---------------------------------------------------------------------------

# 5xx statuses that refuse a request rather than report a failure.
REFUSALS = {501, 505, 508}

FRAMING_NAMES = {b"transfer-encoding", b"content-length", b"host", b"connection", b"upgrade", b"te", b"trailer"}


@dataclass
class Verdict:
    payload: Payload
    view: ClientView
    outcome: str
    reasons: list
    notes: list
    origin: list  # (role, OriginRequest)
    origin_garbage: list
    after: str  # what became of the connection after the first answer

    def record(self) -> dict:
        p = self.payload
        return {
            "n": p.n,
            "family": p.case.family,
            "name": p.case.name,
            "outcome": self.outcome,
            "connection_after": self.after,
            "reasons": self.reasons,
            "notes": [f"{c}: {d}" if d else c for c, d in self.notes],
            "strict_reading": p.reading.verdict + (f": {p.reading.reason}" if p.reading.reason else ""),
            "payload": escape(p.data, None if self.outcome == "DESYNC" else 4000),
            "responses": [{"status": r.status, "origin_saw": r.saw, "body": escape(r.body, 200)}
                          for r in self.view.responses],
            "interim_responses": self.view.interim,
            "responses_before_follow_up": self.view.before_follow,
            "follow_up_sent": self.view.follow_sent,
            "closed_by_proxy": self.view.closed,
            "reset_by_proxy": self.view.reset,
            "send_error": self.view.send_error,
            "client_received": escape(self.view.raw, 4000),
            "origin": [{"role": role, "conn": r.conn, "method": r.method, "target": r.target,
                        "complete": r.complete, "raw": escape(r.raw, 4000)} for role, r in self.origin],
        }


def tag_of(text: str) -> tuple[int, str] | None:
    """The exchange number and role (first, follow, smuggled) a path names."""
    m = TAG_RE.search(text.encode("latin-1"))
    if not m:
        return None
    return int(m.group(1) or m.group(3)), (m.group(2) or b"smuggled").decode()


def judge(payload: Payload, view: ClientView, origin: list, garbage: list) -> Verdict:
    n = payload.n
    reasons, notes = [], []
    sent = 1 + view.follow_sent

    for role, req in origin:
        if role == "smuggled":
            reasons.append(f"origin received {req.method} {req.target} on its connection {req.conn}")
    for cid, data in garbage:
        reasons.append(f"origin could not parse bytes on its connection {cid}: {escape(data, 300)}")
    if view.before_follow > 1:
        reasons.append(f"{view.before_follow} responses before the follow-up was sent")
    if len(view.responses) > sent:
        reasons.append(f"{len(view.responses)} responses to {sent} requests")
    if view.garbage:
        reasons.append(f"bytes that start no response: {escape(view.garbage, 300)}")
    expected = [(n, "first"), (n, "follow")]
    for i, resp in enumerate(view.responses):
        if resp.saw is None:
            if i == 1 and resp.status >= 400 and view.follow_sent and view.before_follow <= 1:
                reasons.append(f"the follow-up was answered {resp.status} by the proxy: "
                               "bytes left of the payload were read as part of it")
            continue
        tag = tag_of(resp.saw)
        if tag is not None and tag[1] == "smuggled":
            reasons.append(f"a response to {resp.saw}, which the client never sent as a request")
        elif i >= len(expected) or tag != expected[i]:
            reasons.append(f"response {i + 1} answers {resp.saw}")

    firsts = [r for role, r in origin if role == "first"]
    follows = [r for role, r in origin if role == "follow"]
    if len(firsts) > 1:
        notes.append(("first request reached the origin more than once", f"{len(firsts)} times"))
    if len(follows) > 1:
        notes.append(("follow-up reached the origin more than once", f"{len(follows)} times"))
    for req in firsts:
        for name, _ in req.headers:
            if b"_" in name and name.lower().replace(b"_", b"-") in FRAMING_NAMES:
                notes.append(("look-alike framing header forwarded", escape(name)))
        if f"/s{n}-follow".encode() in req.body:
            notes.append(("follow-up read as body of the first request", ""))
        if req.header(b"upgrade") is not None:
            notes.append(("Upgrade forwarded to the origin", escape(req.header(b"upgrade"))))
        elif req.header(b"http2-settings") is not None:
            notes.append(("HTTP2-Settings forwarded (without Upgrade, so no switch)", ""))
    if view.interim_statuses and any(st == 101 for st in view.interim_statuses):
        notes.append(("101 Switching Protocols relayed to the client", ""))
    if view.cut_short:
        notes.append(("response cut short by the proxy", escape(view.cut_short, 200)))
    if view.error:
        notes.append(("the client could not run the exchange", view.error))

    reading = payload.reading
    first = view.responses[0] if view.responses else None
    if reasons:
        outcome = "DESYNC"
    elif first is None:
        outcome = "closed" if view.closed else "timeout"
    elif first.saw is not None:
        outcome = "forwarded-consistent"
        req = next((r for r in firsts if r.complete), None)
        if req is None:
            outcome = "forwarded-mismatch"
            notes.append(("origin answered, but never got the whole first request", ""))
        elif reading.verdict == "accept" and req.body != reading.body:
            outcome = "forwarded-mismatch"
            notes.append(("origin got another body than the strict reading gives",
                          f"{escape(req.body, 120)} != {escape(reading.body, 120)}"))
    elif first.status >= 500 and first.status not in REFUSALS:
        outcome = "proxy-error"
    elif first.status >= 400:
        outcome = "rejected-mid-body" if firsts else "rejected"
    else:
        outcome = "answered-by-proxy"
        if firsts:
            notes.append(("answered by the proxy, yet the first request reached the origin", ""))

    if reading.verdict == "reject" and first is not None and first.status < 400:
        notes.append(("lax: strict reading rejects, proxy answered " + str(first.status), reading.reason))
    if reading.verdict == "accept" and first is not None and first.status == 400 and not payload.case.refused:
        body = first.body.decode("latin-1").strip()
        notes.append(("strict: 400 for a message the strict reading accepts", escape(body.encode("latin-1"), 120)))
    if view.follow_sent and len(view.responses) < 2 and not view.closed and outcome != "DESYNC":
        notes.append(("follow-up unanswered, connection left open", ""))
    if any(r.saw is not None and tag_of(r.saw) == (n, "follow") for r in view.responses):
        after = "kept, follow-up answered"
    elif view.closed:
        after = "closed"
    else:
        after = "open, follow-up unanswered"
    return Verdict(payload, view, outcome, reasons, notes, origin, garbage, after)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def warm_up(proxy: Proxy, origin: Origin) -> bytes:
    """One plain request through the proxy: checks the setup and learns the
    proxy's Via pseudonym (for the loop payloads)."""
    ids = Ids(0, origin.authority, b"")
    case = Case("control", "warm-up", lambda ids: request(ids, method=b"GET"), "GET")
    payload = Payload(0, case, ids, case.build(ids), Reading("accept"))
    view = run_exchange(proxy.addr, payload)
    if not view.responses or view.responses[0].saw != "GET /s0-first":
        raise RuntimeError(f"a plain GET through the proxy failed: {escape(view.raw, 500)}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with origin.lock:
            via = next((r.header(b"via") for r in origin.requests if r.path == "/s0-first"), None)
        if via is not None:
            parts = via.split()
            return parts[1] if len(parts) > 1 else b"fetchproxy"
        time.sleep(0.05)
    raise RuntimeError("the origin never logged the warm-up request")


def run_all(proxy: Proxy, payloads: list[Payload], jobs: int, budget: float, verbose: bool):
    """Runs the exchanges on `jobs` threads within `budget` seconds: {n: view}."""
    work: Queue = Queue()
    for p in payloads:
        work.put(p)
    views: dict[int, ClientView] = {}
    deadline = time.monotonic() + budget
    stop = threading.Event()
    done = Counter()

    def worker():
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                p = work.get_nowait()
            except Empty:
                return
            try:
                views[p.n] = run_exchange(proxy.addr, p)
            except Exception as err:  # one broken exchange must not end the sweep
                views[p.n] = ClientView(error=f"{type(err).__name__}: {err}")
            done["n"] += 1
            if verbose and done["n"] % 250 == 0:
                print(f"  {done['n']} / {len(payloads)} exchanges", file=sys.stderr)

    threads = [threading.Thread(target=worker, name=f"client-{i}", daemon=True) for i in range(jobs)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        raise
    return views


def compare_split(verdicts: list[Verdict]):
    """Notes a split payload whose outcome differs from its one-write twin's."""
    whole = {f"{v.payload.case.family}/{v.payload.case.name}": v for v in verdicts if not v.payload.case.split}
    for v in verdicts:
        twin = whole.get(v.payload.case.name) if v.payload.case.split else None
        if twin is None:
            continue
        mine = (v.outcome, [r.status for r in v.view.responses], v.after)
        theirs = (twin.outcome, [r.status for r in twin.view.responses], twin.after)
        if mine != theirs:
            v.notes.append(("small writes changed the outcome",
                            f"{mine[0]} {mine[1]} {mine[2]} vs one write: {theirs[0]} {theirs[1]} {theirs[2]}"))


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def report(verdicts: list[Verdict], run_plan: Plan, skipped: int, untagged: list, proxy: Proxy, binary: str,
           verbose: bool):
    print(f"\nproxy: {binary}")
    kept = Counter(v.payload.case.family for v in verdicts)
    print(f"payloads: {sum(run_plan.generated.values())} generated, "
          f"{sum(run_plan.duplicates.values())} duplicates and "
          f"{sum(run_plan.own_requests.values())} whose hidden request is a plain pipelined one dropped, "
          f"{len(verdicts)} exchanges run" + (f", {skipped} not run (time budget)" if skipped else ""))

    by_class = Counter(v.outcome for v in verdicts)
    print("\n## Outcomes\n")
    print(table([[c, by_class[c]] for c in CLASSES if by_class[c] or c == "DESYNC"] + [["total", len(verdicts)]],
                ["outcome", "exchanges"]))

    afters = ["kept, follow-up answered", "closed", "open, follow-up unanswered"]
    by_after = defaultdict(Counter)
    for v in verdicts:
        by_after[v.outcome][v.after] += 1
    print("\n## The connection after the first answer\n")
    print(table([[c] + [by_after[c][a] or "" for a in afters] for c in CLASSES if by_class[c]],
                ["outcome"] + afters))

    present = [c for c in CLASSES if by_class[c]]
    per_family = defaultdict(Counter)
    for v in verdicts:
        per_family[v.payload.case.family][v.outcome] += 1
    rows = [[f, kept[f]] + [per_family[f][c] or "" for c in present] for f in FAMILIES if kept[f]]
    print("\n## Outcomes per family\n")
    print(table(rows, ["family", "exchanges"] + present))

    desyncs = [v for v in verdicts if v.outcome == "DESYNC"]
    if desyncs:
        print(f"\n## DESYNC ({len(desyncs)})")
        for v in desyncs:
            p = v.payload
            print(f"\n### #{p.n} {p.case.family} {p.case.name}")
            print(f"strict reading: {p.reading.verdict} {p.reading.reason}")
            for r in v.reasons:
                print(f"- {r}")
            print(f"sent:     {escape(p.data)}")
            if v.view.follow_sent:
                print(f"then:     {escape(p.ids.follow_up())}")
            print(f"client got: {escape(v.view.raw)}")
            for role, req in v.origin:
                print(f"origin got ({role}, connection {req.conn}): {escape(req.raw)}")
    if untagged:
        print(f"\n## DESYNC: origin requests that no payload named ({len(untagged)})\n")
        for req in untagged:
            print(f"- connection {req.conn}: {escape(req.raw, 2000)}")
    if proxy.problems:
        print("\n## Proxy log: warnings and errors by kind\n")
        print(table([[count, kind] for kind, count in proxy.problems.most_common()], ["lines", "kind"]))

    notes = defaultdict(list)
    for v in verdicts:
        for category, detail in v.notes:
            notes[category].append((v, detail))
    if notes:
        print("\n## Notes (surprising or worth a look)\n")
        for category, items in sorted(notes.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            print(f"- {category}: {len(items)}")
            shown = items if verbose else items[:10]
            for v, detail in shown:
                p = v.payload
                print(f"    #{p.n} {p.case.family} {p.case.name} -> {v.outcome}" + (f": {detail}" if detail else ""))
            if len(shown) < len(items):
                print(f"    ... {len(items) - len(shown)} more (--verbose lists all)")
    if verbose:
        print("\n## Every exchange\n")
        for v in verdicts:
            statuses = ",".join(str(r.status) for r in v.view.responses) or "-"
            print(f"#{v.payload.n} {v.payload.case.family} {v.payload.case.name}: {v.outcome} [{statuses}]"
                  f" strict={v.payload.reading.verdict}")


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxy-bin", default=str(root / "target/release/fetchproxy"),
                        help="the fetchproxy binary (default: target/release/fetchproxy)")
    parser.add_argument("--only", metavar="FAMILY[,FAMILY]", help="run these families only: " + ", ".join(FAMILIES))
    parser.add_argument("--json", metavar="FILE", help="write one JSON line per exchange")
    parser.add_argument("--verbose", action="store_true", help="progress, every exchange and every note")
    parser.add_argument("--jobs", type=int, default=12, help="exchanges at a time (default 12)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"seconds for all exchanges (default {DEFAULT_BUDGET:.0f})")
    parser.add_argument("--list", action="store_true", help="list families and payload counts, run nothing")
    args = parser.parse_args()
    if args.jobs < 1 or args.budget <= 0:
        parser.error("--jobs and --budget must be positive")

    families = FAMILIES
    if args.only:
        families = [f.strip() for f in args.only.split(",") if f.strip()]
        unknown = [f for f in families if f not in GENERATORS]
        if unknown:
            parser.error(f"unknown family {', '.join(unknown)}; families: {', '.join(FAMILIES)}")
    if args.list:
        p = plan(families, b"127.0.0.1:8000", b"fetchproxy")
        kept = Counter(x.case.family for x in p.payloads)
        rows = [[f, p.generated[f], p.duplicates[f], p.own_requests[f], kept[f]] for f in families]
        rows.append(["total", sum(p.generated.values()), sum(p.duplicates.values()),
                     sum(p.own_requests.values()), len(p.payloads)])
        print(table(rows, ["family", "generated", "duplicates", "hide nothing", "run"]))
        return 0
    if not Path(args.proxy_bin).is_file():
        print(f"no proxy binary at {args.proxy_bin} (build it: cargo build --release)", file=sys.stderr)
        return 2

    # Ctrl-C, or SIGTERM to this script's PID, ends the run through the
    # `finally` below, which stops the proxy (also when SIGINT was ignored
    # on the way in, as for a background job).
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    origin = Origin()
    proxy = None
    try:
        proxy = Proxy(args.proxy_bin)
        print(f"origin on {origin.authority.decode()}, proxy {args.proxy_bin} (pid {proxy.proc.pid}) "
              f"on {proxy.addr[0]}:{proxy.addr[1]}", file=sys.stderr)
        via = warm_up(proxy, origin)
        run_plan = plan(families, origin.authority, via)
        started = time.monotonic()
        views = run_all(proxy, run_plan.payloads, args.jobs, args.budget, args.verbose)
        origin.settle()
        elapsed = time.monotonic() - started
        requests, garbage, untagged = origin.by_exchange()
        verdicts = [judge(p, views[p.n], requests.get(p.n, []), garbage.get(p.n, []))
                    for p in run_plan.payloads if p.n in views]
        compare_split(verdicts)
        skipped = len(run_plan.payloads) - len(verdicts)
        report(verdicts, run_plan, skipped, untagged, proxy, args.proxy_bin, args.verbose)
        print(f"\n{len(verdicts)} exchanges in {elapsed:.0f} s", file=sys.stderr)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as out:
                for v in verdicts:
                    out.write(json.dumps(v.record()) + "\n")
        controls = [v for v in verdicts if v.payload.case.family == "control"]
        broken = [v for v in controls if v.outcome not in ("forwarded-consistent", "answered-by-proxy")]
        if broken:
            print("controls failed: the sweep cannot be trusted: "
                  + ", ".join(f"{v.payload.case.name}={v.outcome}" for v in broken), file=sys.stderr)
            return 2
        if any(v.outcome == "DESYNC" for v in verdicts) or untagged:
            return 1
        if proxy.proc.poll() is not None:
            print(f"the proxy exited during the run (status {proxy.proc.returncode})", file=sys.stderr)
            return 2
        return 2 if skipped else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if proxy is not None:
            proxy.stop()
        origin.stop()


if __name__ == "__main__":
    sys.exit(main())
