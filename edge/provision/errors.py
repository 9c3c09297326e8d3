"""Every way serial provisioning can fail, one class each. The device agent sends the class name as the
`code` of an ERROR frame and the technician tool prints it with the message, so both ends name the same
failure in the same words (docs/serial-protocol.md, "Faults")."""

from __future__ import annotations


class ProvisionError(Exception):
    """Base of every serial-provisioning failure."""


# --- the line: bytes that are not a good frame -------------------------------------------------------------
class ProtocolError(ProvisionError):
    """Bytes on the line that are not a valid frame or message (names the frame and field at fault)."""


class FrameError(ProtocolError):
    """A frame that cannot be decoded; it is dropped whole (the receiver resynchronises on the next 0x00)."""


class FrameCOBSError(FrameError):
    """The bytes between two 0x00 delimiters are not valid COBS."""


class FrameCRCError(FrameError):
    """The frame's CRC-32 does not match its bytes: damaged on the line."""


class FrameTooLargeError(FrameError):
    """More bytes than the maximum frame size before a delimiter, or a body over the cap."""


class FrameLengthError(FrameError):
    """The frame is shorter than its header, or its length field disagrees with its size."""


class UnsupportedVersionError(FrameError):
    """A protocol version this side does not speak."""


class UnknownMessageTypeError(FrameError):
    """A message type byte that no version-1 message has."""


class MessageFieldError(ProtocolError):
    """A message body that is not the CBOR map its type requires: a field missing, extra or wrong."""


class LineNoiseError(ProtocolError):
    """Every try of a request reached the other end damaged (a bad cable, a loose contact, a wrong baud rate)."""


class SequenceError(ProtocolError):
    """A request out of order: not the last sequence number (a retry) nor the next one."""


class SessionStateError(ProtocolError):
    """A message the session cannot take in its current state (e.g. CONFIRM before PROVISION)."""


class NoSessionError(ProtocolError):
    """A request for a session the device does not have open (it ended, or expired after silence)."""


# --- the link and the other party ----------------------------------------------------------------------
class LineBusyError(ProvisionError):
    """Another technician tool holds the line: the port is locked, or the device is in another session."""


class LinkLostError(ProvisionError):
    """The serial port went away (cable pulled, device reset)."""


class ProvisionTimeoutError(ProvisionError):
    """No answer in time (after every retry), or a session waited too long for the technician."""


class ConfirmTimeoutError(ProvisionTimeoutError):
    """The technician's yes did not come within the device's confirm window (PENDING.confirm_within): the tool
    sends no CONFIRM, registers and certifies nothing, and the device throws the bundle away."""


class DeviceRefusedError(ProvisionError):
    """The device answered with an ERROR frame; `code` is the device's error class name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.device_message = message


class TranscriptMismatchError(ProvisionError):
    """The device's transcript hash differs from the tool's: something on the line changed a message."""


class DeviceIdMismatchError(ProvisionError):
    """The device has another id than the one asked for, or its keys are not the ones registered."""


class NotInProvisioningModeError(ProvisionError):
    """The device is provisioned and holds no valid re-provisioning token: it only answers status queries."""


class TechnicianAbortError(ProvisionError):
    """The technician did not confirm the code (said no, or the input ended)."""


# --- what the fleet sends --------------------------------------------------------------------------------
class BundleError(ProvisionError):
    """The provisioning bundle was refused (the subclass says which check failed)."""


class BundleFormatError(BundleError):
    """Not a bundle envelope, or a field missing, extra or of the wrong type (names the field)."""


class WrongFleetRootError(BundleError):
    """The bundle (or its roots) does not come from the fleet whose root this device trusts."""


class BundleSignatureError(BundleError):
    """The bundle's signatures are not a valid threshold of the fleet's command keys."""


class NonceMismatchError(BundleError):
    """The bundle answers another session's nonce: replayed or stale."""


class HelloMismatchError(BundleError):
    """The bundle was made for a different HELLO (other keys, CSR or device id)."""


class BundleContentError(BundleError):
    """Signed and fresh, but its certificate, configuration or operator key is unusable here (names which)."""


class NoFleetRootError(ProvisionError):
    """The device trusts no fleet root, so it cannot check anything it is sent."""


class ReprovisionTokenError(ProvisionError):
    """A re-provisioning token that is not valid for this device (signature, fleet, device, expiry, reuse)."""


class DeviceStateError(ProvisionError):
    """The device's own files are unusable or cannot be written (names the file)."""


class CommitError(ProvisionError):
    """Writing the provisioned state failed; the device keeps what it had (or finishes at the next start)."""


# --- the technician tool's verdict ------------------------------------------------------------------------
class ToolError(Exception):
    """A provisioning run of the technician tool that failed: the cause and what state the device is in."""

    def __init__(self, cause: Exception, device_state: str) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.device_state = device_state
