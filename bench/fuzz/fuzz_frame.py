"""Coverage-guided fuzzing of the serial provisioning decoder (edge.provision.protocol): the stream reader,
COBS, the frame header and CRC, and every message type's CBOR body. Only ProtocolError may escape; anything
else (or a hang, or a reader that swallows a good frame) is a finding.

Random bytes almost never carry a good CRC-32, so the first byte picks what the rest goes to:
    0: the stream reader, fed in two pieces at a fuzzer-chosen split, then every frame's body
    1: one frame as it sits between delimiters (decode_frame), then its body
    2: a message body of the chosen type, fed to the CBOR parser directly (behind the CRC)
    3: the same body wrapped into a frame with a good CRC, sent through the reader between noise
usage: python bench/fuzz/fuzz_frame.py -atheris_runs=1000000 [-max_len=4096] [corpus_dir]
       (without atheris: python bench/fuzz/fuzz_frame.py --random N  runs N seeded random inputs)
"""

from __future__ import annotations

import contextlib
import random
import sys
import time

try:
    import atheris
except ImportError:  # the plain loop below still runs
    atheris = None

# instrument the decoder for coverage feedback when atheris is there; plain imports otherwise
with atheris.instrument_imports(include=["edge.provision"]) if atheris else contextlib.nullcontext():
    from edge.provision.errors import ProtocolError
    from edge.provision.protocol import (
        DELIMITER,
        Frame,
        FrameReader,
        MsgType,
        decode_body,
        decode_frame,
        decode_message,
        encode_frame,
    )

TYPES = list(MsgType)


def _bodies(frames: list[object]) -> None:
    for item in frames:
        if isinstance(item, Frame):
            with contextlib.suppress(ProtocolError):
                decode_message(item)


def one(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, pick, rest = data[0] % 4, data[1], data[2:]
    try:
        if mode == 0:
            reader = FrameReader()
            split = pick * len(rest) // 256
            items = [i for i, _ in reader.feed(rest[:split]) + reader.feed(rest[split:])]
            _bodies(items)
        elif mode == 1:
            decode_message(decode_frame(rest))
        elif mode == 2:
            decode_body(TYPES[pick % len(TYPES)], rest)
        else:
            mtype = TYPES[pick % len(TYPES)]
            encoded = encode_frame(Frame(mtype, 7, 1, rest))
            noise = rest[: pick % 8]
            items = [i for i, _ in FrameReader().feed(noise + DELIMITER + encoded + noise)]
            good = [i for i in items if isinstance(i, Frame)]
            if len(good) != 1 or good[0].body != rest:  # a good frame must come through, whole, whatever surrounds it
                raise AssertionError(f"reader lost or changed a good frame: {items!r}")
            _bodies(good)
    except ProtocolError:
        pass


def random_run(n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    t = time.monotonic()
    for _ in range(n):
        one(rng.randbytes(rng.randrange(2, 512)))
    dt = time.monotonic() - t
    print(f"{n} random inputs, 0 crashes, {n / dt:.0f} execs/s")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--random":
        random_run(int(sys.argv[2]))
    elif atheris is None:
        sys.exit("atheris is not installed (pip install -e '.[fuzz]'); use --random N for a plain random run")
    else:
        atheris.Setup(sys.argv, one)
        atheris.Fuzz()
