package pcp

// crcTable is the MSB-first table of the CCITT polynomial 0x1021
// (crcTable[1] = 0x1021, crcTable[16] = 0x1231, crcTable[255] = 0x1EF0).
var crcTable = makeCRCTable()

func makeCRCTable() *[256]uint16 {
	var t [256]uint16
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return &t
}

// crcUpdate continues the PCP checksum crc over p: the MSB-first table with
// the reflected-style update of spec 4.3.
func crcUpdate(crc uint16, p []byte) uint16 {
	for _, b := range p {
		crc = crc>>8 ^ crcTable[byte(crc)^b]
	}
	return crc
}

// CRC returns the PCP checksum (spec 4.3) of frame exactly as given: init
// 0x0000, table of the polynomial 0x1021 built MSB-first, update
// crc = crc>>8 ^ T[byte(crc)^b], no final XOR. For the checksum of a frame,
// bytes 4 and 5 (the checksum field) must be zero; Encode and Decode take
// care of that. CRC([]byte("123456789")) is 0xB955.
func CRC(frame []byte) uint16 {
	return crcUpdate(0, frame)
}

// frameCRC returns the checksum of the frame b (at least HeaderLen bytes)
// as if its checksum field were zero, without changing b.
func frameCRC(b []byte) uint16 {
	crc := crcUpdate(0, b[:4])
	crc = crcUpdate(crc, []byte{0, 0})
	return crcUpdate(crc, b[6:])
}
