package download

import (
	"strings"
	"unicode/utf8"
)

// contentDisposition returns the Content-Disposition value that names the
// downloaded file (RFC 6266). A name that is an RFC 7230 token is given bare,
// because a device SDK keeps quotes as part of the saved file name (project
// decision 7, as issue 20 amends its example); any other name is given as a
// quoted filename parameter (quotes and backslashes escaped). A name that is
// not plain ASCII is also given in full in an RFC 8187 filename* parameter,
// and the plain one then holds a quoted ASCII fallback in which each other
// character is '_':
//
//	attachment; filename=fw-2.0.bin
//	attachment; filename="fw 2.0.bin"
//	attachment; filename="____.bin"; filename*=UTF-8''%D0%BF%D1%80%D0%BE%D1%88.bin
//
// Control characters and invalid UTF-8 never reach the header: they become
// '_' and U+FFFD.
func contentDisposition(name string) string {
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '_'
		}
		return r
	}, strings.ToValidUTF8(name, string(utf8.RuneError)))

	if isToken(name) {
		return "attachment; filename=" + name
	}
	ascii := true
	var b strings.Builder
	b.WriteString(`attachment; filename="`)
	for _, r := range name {
		switch {
		case r >= utf8.RuneSelf:
			ascii = false
			b.WriteByte('_')
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	if !ascii {
		b.WriteString("; filename*=UTF-8''")
		const hex = "0123456789ABCDEF"
		for i := 0; i < len(name); i++ {
			if c := name[i]; isAttrChar(c) {
				b.WriteByte(c)
			} else {
				b.WriteByte('%')
				b.WriteByte(hex[c>>4])
				b.WriteByte(hex[c&0xf])
			}
		}
	}
	return b.String()
}

// isToken reports whether s is an RFC 7230 token: one or more tchar, which
// are the RFC 8187 attr-chars and "%", "'" and "*".
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAttrChar(c) && strings.IndexByte("%'*", c) < 0 {
			return false
		}
	}
	return true
}

// isAttrChar reports whether c may appear unencoded in an RFC 8187
// ext-value: ALPHA / DIGIT / "!" / "#" / "$" / "&" / "+" / "-" / "." / "^" /
// "_" / "`" / "|" / "~".
func isAttrChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$&+-.^_`|~", c) >= 0
}
