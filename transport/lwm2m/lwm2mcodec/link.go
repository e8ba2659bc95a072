package lwm2mcodec

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Link is one link-value of CoRE link format (RFC 6690): a target URI
// reference and its parameters. A parameter without a value ("obs") maps to
// "". Parameter names are case-insensitive and kept in lower case; quoted
// values are stored unquoted and unescaped.
type Link struct {
	Target string
	Params map[string]string
}

// ParseLinkFormat parses a CoRE link format payload such as an LwM2M
// registration: `</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</5>;ver=1.1`.
// It follows RFC 6690's grammar (link-value *("," link-value), each
// "<" URI-Reference ">" *(";" link-param), a param being parmname
// ["=" (ptoken / quoted-string)]) and tolerates white space around ",", ";"
// and "=" (some clients send "</1/0>, </3/0>"). An empty payload is no
// links. Refused, with errors wrapping ErrMalformed: a missing "<" or ">",
// an empty target or one with white space, quotes, angle brackets or
// non-ASCII bytes, an empty link (",,", a trailing ","), a parameter
// without a name, an empty unquoted value, an unterminated quoted string,
// control characters. A repeated parameter keeps its first value.
func ParseLinkFormat(s string) ([]Link, error) {
	p := linkParser{s: s}
	p.skipWS()
	if p.eof() {
		return nil, nil
	}
	var links []Link
	for {
		l, err := p.link()
		if err != nil {
			return nil, err
		}
		links = append(links, l)
		p.skipWS()
		if p.eof() {
			return links, nil
		}
		if p.s[p.i] != ',' {
			return nil, p.errf("want ',' between links, got %q", p.s[p.i])
		}
		p.i++
		p.skipWS()
	}
}

type linkParser struct {
	s string
	i int
}

func (p *linkParser) eof() bool { return p.i >= len(p.s) }

func (p *linkParser) errf(format string, args ...any) error {
	return fmt.Errorf("%w: link format at offset %d: %s", ErrMalformed, p.i, fmt.Sprintf(format, args...))
}

func (p *linkParser) skipWS() {
	for p.i < len(p.s) && isLinkWS(p.s[p.i]) {
		p.i++
	}
}

func isLinkWS(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func (p *linkParser) link() (Link, error) {
	if p.eof() || p.s[p.i] != '<' {
		return Link{}, p.errf("want '<' starting a link")
	}
	p.i++
	start := p.i
	for p.i < len(p.s) && p.s[p.i] != '>' {
		if !isTargetChar(p.s[p.i]) {
			return Link{}, p.errf("character %q in link target", p.s[p.i])
		}
		p.i++
	}
	if p.eof() {
		return Link{}, p.errf("unterminated link target")
	}
	l := Link{Target: p.s[start:p.i], Params: map[string]string{}}
	if l.Target == "" {
		return Link{}, p.errf("empty link target")
	}
	p.i++ // '>'
	for {
		p.skipWS()
		if p.eof() || p.s[p.i] != ';' {
			return l, nil
		}
		p.i++
		p.skipWS()
		start := p.i
		for p.i < len(p.s) && isParmnameChar(p.s[p.i]) {
			p.i++
		}
		if p.i == start {
			return Link{}, p.errf("want a parameter name after ';'")
		}
		name := strings.ToLower(p.s[start:p.i])
		value := ""
		p.skipWS()
		if !p.eof() && p.s[p.i] == '=' {
			p.i++
			p.skipWS()
			var err error
			if value, err = p.paramValue(); err != nil {
				return Link{}, err
			}
		}
		if _, dup := l.Params[name]; !dup {
			l.Params[name] = value
		}
	}
}

func (p *linkParser) paramValue() (string, error) {
	if p.eof() {
		return "", p.errf("missing parameter value")
	}
	if p.s[p.i] != '"' {
		start := p.i
		for p.i < len(p.s) && isPtokenChar(p.s[p.i]) {
			p.i++
		}
		if p.i == start {
			return "", p.errf("missing parameter value")
		}
		return p.s[start:p.i], nil
	}
	p.i++
	var b strings.Builder
	for {
		if p.eof() {
			return "", p.errf("unterminated quoted string")
		}
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return b.String(), nil
		case c == '\\':
			p.i++
			if p.eof() {
				return "", p.errf("unterminated quoted string")
			}
			c = p.s[p.i]
			if isCtl(c) {
				return "", p.errf("control character %q in quoted string", c)
			}
		case isCtl(c):
			return "", p.errf("control character %q in quoted string", c)
		}
		b.WriteByte(c)
		p.i++
	}
}

// isCtl: controls other than horizontal tab, which quoted strings allow.
func isCtl(c byte) bool { return (c < 0x20 && c != '\t') || c == 0x7f }

// isTargetChar: printable ASCII other than space, '"', '<', '>' (the
// characters a URI reference may contain, loosely).
func isTargetChar(c byte) bool { return c > 0x20 && c < 0x7f && c != '"' && c != '<' && c != '>' }

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// isParmnameChar: RFC 5988 parmname = 1*(ALPHA / DIGIT / "!" / "#" / "$" /
// "&" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~").
func isParmnameChar(c byte) bool {
	return isAlnum(c) || strings.IndexByte("!#$&+-.^_`|~", c) >= 0
}

// isPtokenChar: RFC 5988 ptokenchar.
func isPtokenChar(c byte) bool {
	return isAlnum(c) || strings.IndexByte("!#$%&'()*+-./:<=>?@[]^_`{|}~", c) >= 0
}

// alwaysQuoted lists parameters String writes quoted even when they are
// tokens: RFC 6690 defines rt, if and anchor as quoted strings, and LwM2M
// writes rt="oma.lwm2m".
var alwaysQuoted = map[string]bool{"rt": true, "if": true, "anchor": true, "title": true}

// String formats the link as RFC 6690 text: the target in angle brackets,
// then the parameters sorted by name (for a stable form), a parameter with
// the value "" as its bare name, a value quoted when it is not a token or
// the parameter is rt, if, anchor or title.
func (l Link) String() string {
	var b strings.Builder
	b.WriteByte('<')
	b.WriteString(l.Target)
	b.WriteByte('>')
	names := make([]string, 0, len(l.Params))
	for k := range l.Params {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		v := l.Params[k]
		b.WriteByte(';')
		b.WriteString(k)
		if v == "" {
			continue
		}
		b.WriteByte('=')
		if !alwaysQuoted[k] && isPtoken(v) {
			b.WriteString(v)
			continue
		}
		b.WriteByte('"')
		for i := 0; i < len(v); i++ {
			if v[i] == '"' || v[i] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(v[i])
		}
		b.WriteByte('"')
	}
	return b.String()
}

func isPtoken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isPtokenChar(s[i]) {
			return false
		}
	}
	return s != ""
}

// FormatLinks joins links with "," (no white space).
func FormatLinks(links []Link) string {
	parts := make([]string, len(links))
	for i, l := range links {
		parts[i] = l.String()
	}
	return strings.Join(parts, ",")
}

// ObjectLink is an object or object instance a registration advertises.
type ObjectLink struct {
	Path    Path   // /o or /o/i
	Version string // the "ver" parameter ("1.1"); "" when absent (the object's 1.0 default)
}

// Objects lists the objects and object instances of a registration's links
// in payload order, with their "ver" parameters, and the alternate path
// ("/lwm2m" for `</lwm2m>;rt="oma.lwm2m"`; "" when there is none or it is
// "/"). The root link (rt contains "oma.lwm2m", or the bare target of the
// alternate path) is not an object. Resource-level links (LwM2M 1.2 sends
// them with "dim") are skipped. Errors wrapping ErrMalformed: two root links
// with different targets, an alternate path not starting with "/", and a
// link outside the alternate path or whose target is not a numeric LwM2M
// path.
func Objects(links []Link) (objs []ObjectLink, altPath string, err error) {
	root := ""
	haveRoot := false
	for _, l := range links {
		if !isRootLink(l) {
			continue
		}
		t := strings.TrimSuffix(l.Target, "/")
		if !strings.HasPrefix(l.Target, "/") {
			return nil, "", fmt.Errorf("%w: alternate path %q does not start with /", ErrMalformed, l.Target)
		}
		if haveRoot && t != root {
			return nil, "", fmt.Errorf("%w: two root links, %q and %q", ErrMalformed, root, t)
		}
		root, haveRoot = t, true
	}
	for _, l := range links {
		if isRootLink(l) {
			continue
		}
		t := l.Target
		if t == root || t == root+"/" {
			continue // the root itself, e.g. "</>;ct=11543" without rt
		}
		rest, ok := strings.CutPrefix(t, root+"/")
		if !ok {
			return nil, "", fmt.Errorf("%w: link <%s> is outside the alternate path %q", ErrMalformed, t, root)
		}
		p, err := ParsePath("/" + rest)
		if err != nil {
			return nil, "", fmt.Errorf("%w: link <%s>: %v", ErrMalformed, t, err)
		}
		if p.Resource >= 0 {
			continue
		}
		objs = append(objs, ObjectLink{Path: p, Version: l.Params["ver"]})
	}
	return objs, root, nil
}

// isRootLink reports whether l's rt parameter (a space-separated list)
// holds "oma.lwm2m".
func isRootLink(l Link) bool {
	return slices.Contains(strings.Fields(l.Params["rt"]), "oma.lwm2m")
}

// ContentFormats returns the content formats the root link's "ct"
// parameter lists (LwM2M 1.1: `</>;rt="oma.lwm2m";ct="60 110 112 11543"`,
// or one number unquoted), nil when there is none. A value that is not a
// list of numbers 0..65535 is an error wrapping ErrMalformed.
func ContentFormats(links []Link) ([]uint16, error) {
	for _, l := range links {
		ct, ok := l.Params["ct"]
		if !ok || !(isRootLink(l) || l.Target == "/") {
			continue
		}
		var out []uint16
		for _, f := range strings.Fields(ct) {
			n, err := strconv.ParseUint(f, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("%w: ct=%q: %v", ErrMalformed, ct, err)
			}
			out = append(out, uint16(n))
		}
		return out, nil
	}
	return nil, nil
}
