package audio

// MulawEncode encodes 16-bit PCM as G.711 µ-law.
func MulawEncode(pcm []int16) []byte {
	out := make([]byte, len(pcm))
	for i, s := range pcm {
		out[i] = linearToMulaw(s)
	}
	return out
}

// MulawDecode decodes G.711 µ-law to 16-bit PCM.
func MulawDecode(b []byte) []int16 {
	out := make([]int16, len(b))
	for i, v := range b {
		out[i] = mulawTable[v]
	}
	return out
}

// AlawEncode encodes 16-bit PCM as G.711 A-law.
func AlawEncode(pcm []int16) []byte {
	out := make([]byte, len(pcm))
	for i, s := range pcm {
		out[i] = linearToAlaw(s)
	}
	return out
}

// AlawDecode decodes G.711 A-law to 16-bit PCM.
func AlawDecode(b []byte) []int16 {
	out := make([]int16, len(b))
	for i, v := range b {
		out[i] = alawTable[v]
	}
	return out
}

var mulawTable, alawTable [256]int16

func init() {
	for i := range 256 {
		mulawTable[i] = mulawToLinear(byte(i))
		alawTable[i] = alawToLinear(byte(i))
	}
}

const mulawBias = 0x84

func linearToMulaw(s int16) byte {
	v := int(s)
	sign := 0
	if v < 0 {
		v = -v
		sign = 0x80
	}
	if v > 32635 {
		v = 32635
	}
	v += mulawBias
	exp := 7
	for mask := 0x4000; v&mask == 0 && exp > 0; mask >>= 1 {
		exp--
	}
	mant := (v >> (exp + 3)) & 0x0F
	return ^byte(sign | exp<<4 | mant)
}

func mulawToLinear(u byte) int16 {
	u = ^u
	sign := u & 0x80
	exp := int(u>>4) & 7
	mant := int(u & 0x0F)
	v := ((mant << 3) + mulawBias) << exp
	v -= mulawBias
	if sign != 0 {
		return int16(-v)
	}
	return int16(v)
}

func linearToAlaw(s int16) byte {
	v := int(s)
	sign := 0x80
	if v < 0 {
		v = -v - 1
		sign = 0
	}
	if v > 32767 {
		v = 32767
	}
	var out int
	if v < 256 {
		out = v >> 4
	} else {
		exp := 1
		for t := v >> 8; t > 1; t >>= 1 {
			exp++
		}
		out = exp<<4 | (v>>(exp+3))&0x0F
	}
	return byte(out|sign) ^ 0x55
}

func alawToLinear(a byte) int16 {
	a ^= 0x55
	sign := a & 0x80
	exp := int(a>>4) & 7
	mant := int(a & 0x0F)
	var v int
	if exp == 0 {
		v = mant<<4 + 8
	} else {
		v = (mant<<4 + 0x108) << (exp - 1)
	}
	if sign == 0 {
		return int16(-v)
	}
	return int16(v)
}
