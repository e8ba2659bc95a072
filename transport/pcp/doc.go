// Package pcp is the codec of Huawei's Platform Communication Protocol (PCP),
// which carries LwM2M software upgrades (SOTA) over object 19 (spec section
// 4): platform → device frames are written to /19/1/0, device → platform
// frames arrive as notifications of /19/0/0. The package is pure: it performs
// no I/O, reads no clock and is safe for concurrent use. It depends on the
// standard library and on package messages alone, for PCP's vocabulary: the
// message codes (messages.PcpCode), the result codes (messages.PcpResultOK,
// ...) and the field sizes, which the device machine uses too. Mapping to
// and from the engine's messages is the adapter's job.
//
// # Frame
//
// All multi-byte integers are big-endian (spec 4.2):
//
//	 0      1      2      3      4      5      6      7      8 ...
//	+------+------+------+------+------+------+------+------+--------------+
//	|  0xFF  0xFE |  ver | code | checksum    | data length | data[length] |
//	+------+------+------+------+------+------+------+------+--------------+
//	  WORD          BYTE   BYTE   WORD (CRC16)  WORD          BYTE[n]
//
// The version byte is 0x01 (high nibble reserved, 0; low nibble the protocol
// version, 1). The data length is the number of data bytes (0 to 65535); a
// frame holds exactly 8 + length bytes. Encode builds a frame and Decode
// checks one; Decode rejects, with an error wrapping ErrMalformed, a frame
// shorter than 8 bytes, a start marker other than 0xFFFE, a version byte
// other than 0x01, a length field that disagrees with the bytes present and a
// wrong checksum. Decode accepts any message code, so that a frame can be
// checked apart from its meaning; the typed decoders and IsPCP accept only
// the six defined codes.
//
// # Checksum
//
// The checksum (spec 4.3) is a CRC-16 over the whole frame, from the start
// marker to the last data byte, computed with the checksum field set to
// 0x0000 and stored big-endian in bytes 4 and 5. It is not a catalogue
// variant: it uses the MSB-first table of the polynomial 0x1021 (T[1] =
// 0x1021, T[255] = 0x1EF0) with the reflected-style update
//
//	crc = crc>>8 ^ T[byte(crc)^b]
//
// from an initial 0x0000, with no final XOR; CRC("123456789") is 0xB955.
// This is what Huawei's LiteOS client computes and what every published
// frame carries (the one documented exception, a 0x14 example said to carry
// 0x02F7, really carries 0x3AE6; spec 4.3).
//
// # Messages
//
// Every request is answered with the same code (spec 4.4, 4.5):
//
//	code  name                     request         response
//	0x13  query device version     P→D, empty      D→P result(1) version(16)
//	0x14  new version notification P→D, 22 bytes   D→P result(1)
//	0x15  request package segment  D→P, 18 bytes   P→D result(1) no(2) data(n)
//	0x16  report download result   D→P status(1)   P→D result(1)
//	0x17  execute upgrade          P→D, empty      D→P result(1)
//	0x18  report upgrade result    D→P, 17 bytes   P→D result(1)
//
// where the 0x14 request is version(16) segment size(2) segment count(2)
// check code(2), and the 0x15 request is version(16) segment number(2).
// Versions are ASCII, at most 16 bytes, right-padded with 0x00; decoding
// strips the padding. Because the same code travels both ways, a frame's
// meaning depends on its direction: /19/0/0 carries uplinks (DecodeUplink),
// /19/1/0 downlinks (DecodeDownlink). Each of the twelve messages has a type
// and a pair of functions: the platform encodes what it sends (EncodeNotify,
// ...) and decodes what devices send (DecodeVersionResponse, ...), and a
// simulated device does the opposite (DecodeNotify, EncodeVersionResponse,
// ...), so that both ends can be written with this package alone.
//
// The typed codecs are canonical: a frame that decodes re-encodes to the
// same bytes. To keep them so, and because the engine's messages carry
// versions as (UTF-8) strings, a version field is accepted only if it is
// ASCII text (bytes 0x01 to 0x7F) followed by 0x00 padding: a non-ASCII
// byte, or text after a 0x00, makes the frame malformed. The one frame that
// does not re-encode identically is the 1-byte refusal of a 0x15 request
// (result only), which devices must accept (spec 4.5) but this package never
// sends: it always adds the segment number.
//
// # Results, segments and check code
//
// The result codes of spec 4.6 are the messages.PcpResult constants;
// messages.PcpResultText gives their meaning in words, for logs. The engine
// owns the failure reasons.
//
// A package is served in segments of SegmentSize bytes (the package's
// deviceShard, messages.PcpMinSegmentSize to messages.PcpMaxSegmentSize,
// 32 to 500, default 500), numbered from 0; only the last one
// is shorter. SegmentCount and SegmentRange compute them; a package larger
// than 65535 segments cannot be sent over PCP (SegmentCount returns 0).
//
// The check code of the 0x14 notification tells a device whether it may
// resume a download (spec 4.8): a repeated notification with the same version
// and check code continues from the next missing segment, any other starts
// over. IoTDA now sends 0x0000; otafleet sends the package's legacy
// versionCheckCode when one was given and otherwise CheckCode, the first two
// bytes of the package's SHA-256 read big-endian, so that a package
// re-uploaded under the same version is not resumed from the old one's
// segments.
package pcp
