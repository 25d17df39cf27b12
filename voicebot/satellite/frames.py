"""The ESPHome native API's frames, server side: plaintext, or Noise-encrypted with a pre-shared key.

aioesphomeapi's frame helpers are bound to its client connection, so the server side is written
here from the same pieces: the message classes and type ids of `aioesphomeapi.api_pb2`/`core`, and
the Noise primitives (`noiseprotocol` with aioesphomeapi's ChaCha20-Poly1305 backend). Every frame is
read within a size cap and a time limit; anything else is a `PeerError`, and the connection ends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

from aioesphomeapi.core import MESSAGE_TYPE_TO_PROTO
from google.protobuf import message as protobuf

from voicebot.runtime.net import PeerError, PeerLeft

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
"""One message's payload; Home Assistant's largest (a configuration, an audio chunk) are a few KB."""
HANDSHAKE_TIMEOUT_S = 10.0
"""A new connection must finish its hello (and Noise handshake) within this long."""
FRAME_BODY_TIMEOUT_S = 30.0
"""Once a frame's header has arrived, its body must follow within this long."""
NOISE_PROLOGUE = b"NoiseAPIInit\x00\x00"
NOISE_PROTOCOL = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
MESSAGE_TYPE_OF = {proto: type_id for type_id, proto in MESSAGE_TYPE_TO_PROTO.items()}


def decode_encryption_key(key: str) -> bytes:
    """The 32-byte Noise pre-shared key from its base64 text, or ValueError saying what is wrong."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("satellite.encryption_key: not base64; make one with: openssl rand -base64 32") from None
    if len(raw) != 32:
        raise ValueError(f"satellite.encryption_key: {len(raw)} bytes, not 32; make one with: openssl rand -base64 32")
    return raw


def decode_message(type_id: int, payload: bytes) -> protobuf.Message | None:
    """The message of `type_id`, or None for a type this version of the protocol does not know."""
    proto = MESSAGE_TYPE_TO_PROTO.get(type_id)
    if proto is None:
        return None
    msg = proto()
    try:
        msg.ParseFromString(payload)
    except protobuf.DecodeError:
        raise PeerError(f"a {proto.__name__} that does not decode") from None
    return msg


async def _read_exactly(reader: asyncio.StreamReader, count: int, timeout_s: float = FRAME_BODY_TIMEOUT_S) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):
            return await reader.readexactly(count)
    except asyncio.IncompleteReadError:
        raise PeerLeft() from None
    except ConnectionError:
        raise PeerLeft() from None
    except TimeoutError:
        raise PeerError(f"a frame cut short (nothing more within {timeout_s:.0f} s)") from None


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def _read_varint(reader: asyncio.StreamReader) -> int:
    value = 0
    for shift in range(0, 35, 7):
        byte = (await _read_exactly(reader, 1))[0]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
    raise PeerError("a varint longer than 5 bytes")


class PlaintextFrames:
    """0x00, varint length, varint type, payload: what linux-voice-assistant and ESPHome devices write."""

    encrypted = False

    async def read(self, reader: asyncio.StreamReader, first: bytes | None = None) -> tuple[int, bytes]:
        """The next (type, payload); `first` is the preamble byte if it was already read."""
        preamble = first if first is not None else await _read_exactly(reader, 1, timeout_s=float("inf"))
        if preamble != b"\x00":
            raise PeerError(f"a frame starting with byte 0x{preamble[0]:02x}, not the API's 0x00")
        length = await _read_varint(reader)
        if length > MAX_MESSAGE_BYTES:
            raise PeerError(f"a message of {length} bytes, more than the {MAX_MESSAGE_BYTES // 1024} KiB cap")
        type_id = await _read_varint(reader)
        return type_id, await _read_exactly(reader, length) if length else b""

    def encode(self, type_id: int, payload: bytes) -> bytes:
        """One frame."""
        return b"\x00" + _varint(len(payload)) + _varint(type_id) + payload


class NoiseFrames:
    """0x01, 16-bit length, then a ChaCha20-Poly1305 frame of (16-bit type, 16-bit length, payload).

    The server is the Noise responder: the client's hello and handshake come first, the server answers
    with its name and MAC, then its handshake message; a wrong key fails the client's message's tag.
    """

    encrypted = True

    def __init__(self, encrypt, decrypt) -> None:
        self._encrypt = encrypt
        self._decrypt = decrypt

    @classmethod
    async def handshake(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, psk: bytes, name: str, mac: str
    ) -> NoiseFrames:
        """Answer the client's hello and handshake; the preamble byte 0x01 has been read already."""
        from aioesphomeapi._frame_helper.noise_encryption import (
            ESPHOME_NOISE_BACKEND,
            DecryptCipher,
            EncryptCipher,
        )
        from cryptography.exceptions import InvalidTag
        from noise.connection import NoiseConnection

        hello = await cls._read_body(reader)
        if hello:
            raise PeerError("a Noise hello that is not empty")
        if await _read_exactly(reader, 1) != b"\x01":
            raise PeerError("a Noise handshake frame without its 0x01 preamble")
        handshake = await cls._read_body(reader)
        # The server hello: the protocol chosen (1: Noise), the name and the MAC, each ended by a NUL.
        writer.write(cls._frame(b"\x01" + name.encode() + b"\x00" + mac.encode() + b"\x00"))
        if not handshake or handshake[0] != 0:
            raise PeerError("a Noise handshake frame that is not a handshake")
        proto = NoiseConnection.from_name(NOISE_PROTOCOL, backend=ESPHOME_NOISE_BACKEND)
        proto.set_as_responder()
        proto.set_psks(psk)
        proto.set_prologue(NOISE_PROLOGUE)
        proto.start_handshake()
        try:
            proto.read_message(handshake[1:])
        except InvalidTag:
            writer.write(cls._frame(b"\x01Handshake MAC failure"))
            raise PeerError("a Noise handshake with the wrong encryption key") from None
        except Exception as error:  # noqa: BLE001 - noiseprotocol raises its own kinds for malformed messages
            writer.write(cls._frame(b"\x01Handshake error"))
            raise PeerError(f"a Noise handshake that fails: {type(error).__name__}") from None
        writer.write(cls._frame(b"\x00" + bytes(proto.write_message())))
        state = proto.noise_protocol
        return cls(EncryptCipher(state.cipher_state_encrypt), DecryptCipher(state.cipher_state_decrypt))

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader) -> bytes:
        header = await _read_exactly(reader, 2)
        return await _read_exactly(reader, (header[0] << 8) | header[1])

    @staticmethod
    def _frame(body: bytes) -> bytes:
        return bytes((0x01, len(body) >> 8, len(body) & 0xFF)) + body

    async def read(self, reader: asyncio.StreamReader, first: bytes | None = None) -> tuple[int, bytes]:
        """The next (type, payload), decrypted."""
        from cryptography.exceptions import InvalidTag

        preamble = first if first is not None else await _read_exactly(reader, 1, timeout_s=float("inf"))
        if preamble != b"\x01":
            raise PeerError(f"an encrypted frame starting with byte 0x{preamble[0]:02x}, not 0x01")
        body = await self._read_body(reader)  # 16-bit length: at most 64 KiB by construction
        try:
            plain = self._decrypt.decrypt(body)
        except InvalidTag:
            raise PeerError("an encrypted frame that does not decrypt") from None
        if len(plain) < 4:
            raise PeerError("an encrypted frame shorter than its header")
        return (plain[0] << 8) | plain[1], bytes(plain[4:])

    def encode(self, type_id: int, payload: bytes) -> bytes:
        """One encrypted frame."""
        if len(payload) > 0xFFFF - 4 - 16:
            raise ValueError(f"a message of {len(payload)} bytes is too long for an encrypted frame")
        header = bytes((type_id >> 8, type_id & 0xFF, len(payload) >> 8, len(payload) & 0xFF))
        return self._frame(self._encrypt.encrypt(header + payload))


async def open_frames(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, psk: bytes | None, name: str, mac: str
) -> tuple[PlaintextFrames | NoiseFrames, bytes | None]:
    """Agree on the framing from the peer's first byte; returns it, and the first byte if it is still to be read."""
    first = await _read_exactly(reader, 1, timeout_s=HANDSHAKE_TIMEOUT_S)
    if psk is None:
        if first == b"\x01":
            # aioesphomeapi reads a plaintext frame here as "the device is using plaintext".
            writer.write(b"\x00")
            raise PeerError("an encrypted client, but satellite.encryption_key is not set")
        return PlaintextFrames(), first
    if first == b"\x00":
        writer.write(NoiseFrames._frame(b"\x01"))
        raise PeerError("a plaintext client, but satellite.encryption_key is set")
    if first != b"\x01":
        raise PeerError(f"a first byte 0x{first[0]:02x}, neither of the API's preambles")
    async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
        return await NoiseFrames.handshake(reader, writer, psk, name, mac), None


MAX_WRITE_BUFFER_BYTES = 1024 * 1024
"""A client that leaves this much unread (a stalled Home Assistant while the microphone streams) is dropped."""


class Peer:
    """One connection: Home Assistant (or another client) as the ESPHome API sees it."""

    def __init__(self, writer: asyncio.StreamWriter, frames, address: str) -> None:
        self.writer = writer
        self.frames = frames
        self.address = address
        self.subscribed = False
        """Whether it subscribed to the voice assistant, as Home Assistant does: such a peer is never evicted."""

    def send(self, *messages: protobuf.Message) -> None:
        """Queue messages; a client that does not read is dropped rather than buffered without end."""
        if self.writer.is_closing():
            return
        for msg in messages:
            self.writer.write(self.frames.encode(MESSAGE_TYPE_OF[type(msg)], msg.SerializeToString()))
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES:
            log.warning("satellite: %s reads too slowly; dropping it", self.address)
            self.writer.transport.abort()
