// Package serialproto implements MCPFrame, the wire protocol microcontrollers
// use to talk to mcpd over serial/UART and UDP.
//
// A frame on the wire is
//
//	magic 0x55 | version u8 | length u16 BE | cmd u8 | seq u8 | data[length] | crc u8
//
// with length ≤ 256 and a CRC-8/AUTOSAR over every byte between the magic
// and the crc. docs/protocol.md is the normative specification; this package
// is the reference implementation and serialproto/testdata holds the test
// vectors every other implementation is checked against.
//
// The package is a leaf: it imports nothing of mcpd's, does no I/O beyond
// io.Reader and io.Writer, starts no goroutines and keeps no package-level
// mutable state. Encoding appends to caller-owned buffers and decoding
// returns frames that alias the decoder's buffer, so the hot path allocates
// nothing per frame.
//
// The name says where the frame was born, a UART, not where it is used:
// the same frames travel in UDP datagrams, one per datagram. The name is
// kept (it is in the project's layout and in every device vendor's code);
// importers use it as it is, without an alias.
package serialproto
