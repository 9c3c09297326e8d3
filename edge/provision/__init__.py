"""Serial provisioning: the wire format (protocol), the signed bundle and token (bundle), the serial link
(link), the device agent (agent) and every failure (errors). docs/serial-protocol.md describes it all."""
