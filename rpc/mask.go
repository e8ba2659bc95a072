package rpc

import (
	"net/url"
	"strings"
)

// tokenMask stands for a download token the timeline does not reveal.
const tokenMask = "***"

// maskToken returns uri with the download token replaced by tokenMask. It is
// the one place that masks a token in a URI. It needs the token (a
// DownloadOffered journals it beside the URI) and no knowledge of the
// transport's URI layout, so it masks the token in every form a device is
// given it:
//
//   - the query form of LwM2M package URIs and of HTTP URLs that carry a
//     token, "coap://host/fw/PKG?t=TOKEN": the token inside any query
//     parameter's value (or a parameter without a value);
//   - the path form, where the token (a short handle) is a path segment or
//     part of one, "coap://host/fw/TOKEN" or "coap://host/fw/PKG/TOKEN.bin":
//     the token inside any path segment, percent-encoded or not;
//   - the same in a fragment.
//
// The scheme and host, parameter names and everything else stay as they
// are, so that the reader sees where the device downloads from. An empty
// token masks nothing. Masking an already masked URI changes nothing.
func maskToken(uri, token string) string {
	rest, frag, hasFrag := strings.Cut(uri, "#")
	path, query, hasQuery := strings.Cut(rest, "?")
	authority := ""
	if i := strings.Index(path, "://"); i >= 0 {
		j := strings.IndexByte(path[i+3:], '/')
		if j < 0 {
			j = len(path) - i - 3
		}
		authority, path = path[:i+3+j], path[i+3+j:]
	}
	segs := strings.Split(path, "/")
	for i, s := range segs {
		segs[i] = maskIn(s, token, url.PathUnescape)
	}
	var b strings.Builder
	b.WriteString(authority)
	b.WriteString(strings.Join(segs, "/"))
	if hasQuery {
		params := strings.Split(query, "&")
		for i, p := range params {
			if k, v, ok := strings.Cut(p, "="); ok {
				params[i] = k + "=" + maskIn(v, token, url.QueryUnescape)
			} else {
				params[i] = maskIn(p, token, url.QueryUnescape)
			}
		}
		b.WriteByte('?')
		b.WriteString(strings.Join(params, "&"))
	}
	if hasFrag {
		b.WriteByte('#')
		b.WriteString(maskIn(frag, token, url.PathUnescape))
	}
	return b.String()
}

// maskIn masks token inside one URI component s, as written or once
// unescaped with unescape (a component holding the token is shown
// unescaped, with the token masked).
func maskIn(s, token string, unescape func(string) (string, error)) string {
	if token == "" {
		return s
	}
	if strings.Contains(s, token) {
		return strings.ReplaceAll(s, token, tokenMask)
	}
	if u, err := unescape(s); err == nil && strings.Contains(u, token) {
		return strings.ReplaceAll(u, token, tokenMask)
	}
	return s
}
